"""Metadata helpers: what a person wants to see on an asset in the Dagster UI."""

import base64
import importlib.metadata
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from dagster import FreshnessPolicy, MetadataValue

#: Recorded with every materialization (Dagster code_version) and in provenance.
CODE_VERSION = importlib.metadata.version("dagster_project")

#: Observing runs are nightly: a stage not materialized for a day is worth a look, two days is a failure.
NIGHTLY_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=48), warn_window=timedelta(hours=24))


def png_markdown(png: bytes, title: str) -> MetadataValue:
    """An inline PNG the UI renders in the materialization's metadata."""
    return MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


#: Metadata keys naming files: ``artifact_<role>`` for files this materialization wrote,
#: ``input_<role>`` for files it read. The provenance layer reads them back from the event log.
ARTIFACT_PREFIX, INPUT_PREFIX = "artifact_", "input_"


def artifacts(**paths: Path | str) -> dict:
    """Files written, by role: ``artifacts(calibrated_image=path)``."""
    return {f"{ARTIFACT_PREFIX}{role}": MetadataValue.path(str(path)) for role, path in paths.items()}


def inputs(**paths: Path | str | None) -> dict:
    """Files read, by role; ``None`` entries are left out."""
    return {f"{INPUT_PREFIX}{role}": MetadataValue.path(str(path)) for role, path in paths.items() if path}


def size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def rounded(values: Mapping[str, float | int | None], digits: int = 3) -> dict:
    """Numbers for the UI: floats rounded, None dropped."""
    return {k: (round(float(v), digits) if isinstance(v, float) else v) for k, v in values.items() if v is not None}


class Stopwatch:
    """Named step timings, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 3)

    def as_metadata(self) -> dict:
        return {f"time_{k}_s": v for k, v in self.seconds.items()} | {"time_total_s": self.total}
