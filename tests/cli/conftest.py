"""A command line with its own state: ASTRO_HOME and DAGSTER_HOME in the test's tmp_path."""

import pytest

from dagster_project.cli.main import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty ASTRO_HOME (not created yet) and a DAGSTER_HOME inside it."""
    root = tmp_path / "astro"
    monkeypatch.setenv("ASTRO_HOME", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster"))
    for name in ("DATABASE_URL", "ASTRO_LANDING_DIR", "ASTRO_STORE_DIR", "ASTRO_QUARANTINE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return root


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` as the shell sees it: (exit code, stdout, stderr); argparse's SystemExit included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
