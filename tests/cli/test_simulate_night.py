"""`simulate-night`: a fresh call writes a new night, and only FITS frames go into the (landing) folder."""

import json
import shutil
from datetime import date, timedelta

from dagster_project.simulation.night import load_truth
from tests.cli.conftest import run_cli

TINY = ["--fields", "1", "--epochs", "2", "--size", "64", "--bias", "0", "--flats", "0", "--transients", "2"]


def _simulate(capsys, *argv: str) -> dict:
    code, out, err = run_cli(["simulate-night", *argv, *TINY], capsys)
    assert code == 0, err
    return json.loads(out)


def test_each_call_writes_a_new_night_and_keeps_the_truth_out_of_the_folder(home, tmp_path, capsys):
    landing = tmp_path / "landing"
    first = _simulate(capsys, "--out", str(landing))
    second = _simulate(capsys, "--out", str(landing))
    assert first["night"] == date.today().isoformat()
    assert second["night"] == (date.today() + timedelta(days=1)).isoformat()
    assert first["seed"] != second["seed"]
    names = sorted(p.name for p in landing.iterdir())
    assert len(names) == 4 and all(n.endswith(".fits") for n in names)  # 2 + 2 frames, nothing else
    assert len({n.split("_")[1] for n in names}) == 2  # two nights, no name written twice
    for summary in (first, second):
        truth = tmp_path / "truth" / f"landing-{summary['night']}-seed{summary['seed']}.csv"
        assert summary["truth"] == str(truth)
        assert len(load_truth(truth)) == 2  # epoch 1 of one field, 2 transients


def test_a_night_already_archived_is_not_written_again(home, tmp_path, capsys):
    """The sensor moves frames out of the landing folder into the raw archive: they still count."""
    landing = tmp_path / "landing"
    first = _simulate(capsys, "--out", str(landing))
    archive = home / "store" / "raw" / first["night"]
    archive.mkdir(parents=True)
    for frame in landing.iterdir():
        shutil.move(frame, archive / frame.name)
    again = _simulate(capsys, "--out", str(landing))
    assert again["night"] > first["night"]


def test_night_and_seed_given_write_the_same_bytes(home, tmp_path, capsys):
    a = _simulate(capsys, "--out", str(tmp_path / "a"), "--night", "2026-11-21", "--seed", "7",
                  "--truth", str(tmp_path / "a.csv"))
    b = _simulate(capsys, "--out", str(tmp_path / "b"), "--night", "2026-11-21", "--seed", "7",
                  "--truth", str(tmp_path / "b.csv"))
    assert (a["night"], a["seed"]) == (b["night"], b["seed"]) == ("2026-11-21", 7)
    for frame in (tmp_path / "a").iterdir():
        assert frame.read_bytes() == (tmp_path / "b" / frame.name).read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
