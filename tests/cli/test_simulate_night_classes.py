"""`simulate-night --artifacts --variable-fraction`: artifacts and variable stars on demand, bad values refused."""

import json

import pytest

from dagster_project.simulation.night import TRUTH_COLUMNS, load_artifacts, load_truth
from tests.cli.conftest import run_cli

TINY = ["--fields", "1", "--epochs", "2", "--size", "128", "--bias", "0", "--flats", "0", "--transients", "4",
        "--night", "2026-11-21", "--seed", "3"]


def test_artifacts_rich_and_variables_write_both_truth_tables(home, tmp_path, capsys):
    truth = tmp_path / "truth" / "night.csv"
    code, out, err = run_cli(["simulate-night", "--out", str(tmp_path / "landing"), *TINY, "--truth", str(truth),
                              "--artifacts", "rich", "--variable-fraction", "1"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    rows = load_truth(truth)
    assert list(rows[0]) == list(TRUTH_COLUMNS) and len(rows) == 4
    # every transient goes to a star when one is eligible; never to a galaxy with the whole share taken
    assert {row["kind"] for row in rows} <= {"variable", "transient"}
    assert summary["transient_kinds"] == {k: sum(r["kind"] == k for r in rows) for k in {r["kind"] for r in rows}}
    artifacts = load_artifacts(tmp_path / "truth" / "night-artifacts.csv")  # beside the truth, not in the landing
    assert sum(summary["artifacts"].values()) == len(artifacts) > 0
    assert all(p.suffix == ".fits" for p in (tmp_path / "landing").iterdir())


def test_defaults_are_a_night_without_artifacts_or_variables(home, tmp_path, capsys):
    truth = tmp_path / "truth.csv"
    code, out, err = run_cli(["simulate-night", "--out", str(tmp_path / "landing"), *TINY, "--truth", str(truth)],
                             capsys)
    assert code == 0, err
    assert "artifacts" not in json.loads(out) and not (tmp_path / "truth-artifacts.csv").exists()
    assert "variable" not in {row["kind"] for row in load_truth(truth)}


@pytest.mark.parametrize("flag, value", [("--variable-fraction", "1.5"), ("--variable-fraction", "-0.2"),
                                         ("--variable-fraction", "half"), ("--artifacts", "some")])
def test_a_bad_value_is_one_line_and_exit_2(home, tmp_path, capsys, flag, value):
    landing = tmp_path / "landing"
    code, out, err = run_cli(["simulate-night", "--out", str(landing), *TINY, flag, value], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not landing.exists() or not list(landing.iterdir())  # refused before anything is written
