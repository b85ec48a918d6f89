"""Argument parsing shared by the command line's modules: a bad argument is one line and exit code 2.

Nothing here imports Dagster or the catalog, so ``--help`` and argument errors stay fast.
"""

import argparse
import sys
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster_project.catalog import Catalog
    from dagster_project.settings import Settings

#: the name the command line goes by in messages (``python -m dagster_project`` is the same program)
PROG = "astro-platform"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr, ``<prog>: error: ... (see <prog> --help)``, exit 2.

    argparse's own error prints the usage block first; with a dozen options that hides the one line
    that matters. Subcommand parsers are made of this class too (argparse uses the parent's class).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see: {self.prog} --help)\n")


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(message).split())


def fail(message: object) -> int:
    """Print ``error: message`` as one line on stderr; returns 2, the exit code of a bad argument."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2


def _number(kind, text: str, minimum, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    value = _number(float, text, 0.0, "a number > 0")
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    return _number(float, text, 0.0, "a number >= 0")


def image_size(text: str) -> int:
    """Pixels on a side of a simulated frame: the simulated detector needs at least 64."""
    return _number(int, text, 64, "a size in pixels >= 64")


def iso_date(text: str) -> str:
    """A ``YYYY-MM-DD`` date, returned as given (checked to be a real date)."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def catalog_of(settings: "Settings") -> "Catalog":
    """The settings' catalog, migrated on first use (imported here, by the commands that need it: the command
    line starts fast)."""
    from dagster_project.catalog import migrated_catalog

    return migrated_catalog(settings.database_url)
