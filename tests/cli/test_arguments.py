"""Every bad argument is one line on stderr and exit code 2, never a traceback or a silent wrong answer."""

import pytest

from tests.cli.conftest import run_cli

NEEDS_NO_CATALOG = [
    ["requests", "add", "/nonexistent.yaml"],
    ["backfill", "--night-from", "yesterday"],
    ["backfill", "--night-to", "2026-13-01"],
    ["backfill", "--night-from", "2026-11-22", "--night-to", "2026-11-21"],
    ["backfill", "--stage", "everything"],
    ["operations", "show", "abc"],
    ["operations", "list", "--limit", "0"],
    ["simulate-night", "--out", "{tmp}/night", "--size", "-5"],
    ["simulate-night", "--out", "{tmp}/night", "--size", "32"],
    ["simulate-night", "--out", "{tmp}/night", "--fields", "0"],
    ["simulate-night", "--out", "{tmp}/night", "--bands", "zz"],
    ["simulate-night", "--out", "{tmp}/night", "--night", "tomorrow"],
    ["simulate-night", "--out", "{tmp}/night", "--transients", "-1"],
    ["simulate-night"],
    ["demo", "--size", "10"],
    ["demo", "--debounce", "-1"],
    ["process", "/nonexistent"],
    ["nosuchcommand"],
    [],
    ["status", "--bogus"],
    ["runs", "tail", "0123abcd", "--interval", "0"],
]

NEEDS_A_CATALOG = [
    ["requests", "add", "{tmp}"],  # a folder
    ["requests", "add", "{tmp}/bad.yaml"],
    ["requests", "cancel", "nobody"],
    ["references", "rebuild", "F999-r"],
    ["provenance", "/nonexistent/difference.fits"],
    ["backfill", "--status", "bogus"],
    ["results", "backfill", "--status", "BOGUS"],
    ["results", "backfill", "--request", "nobody"],
    ["operations", "show", "999"],
    ["runs", "tail", "0123abcd"],
]


def _assert_one_line_error(code: int, err: str, argv: list[str]) -> None:
    assert code == 2, (argv, code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (argv, err)
    assert "error" in lines[0] and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize("argv", NEEDS_NO_CATALOG, ids=lambda a: " ".join(a) or "(nothing)")
def test_a_bad_argument_is_one_line_and_exit_2(argv, home, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, argv)
    assert not (tmp_path / "night").exists()  # nothing written before the refusal


@pytest.mark.parametrize("argv", NEEDS_A_CATALOG, ids=lambda a: " ".join(a))
def test_a_bad_argument_against_a_catalog_is_one_line_and_exit_2(argv, home, tmp_path, capsys):
    assert run_cli(["migrate"], capsys)[0] == 0
    (tmp_path / "bad.yaml").write_text("requests: [\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = run_cli(argv, capsys)
    _assert_one_line_error(code, err, argv)


def test_a_bad_setting_is_one_line_and_exit_2(home, monkeypatch, capsys):
    monkeypatch.setenv("ASTRO_BACKFILL_BATCH", "0")
    code, _, err = run_cli(["status"], capsys)
    _assert_one_line_error(code, err, ["status"])
    assert "ASTRO_BACKFILL_BATCH" in err


@pytest.mark.parametrize("value, named", [('{"thresold": 4}', "'thresold' is not a field"),
                                          ('{"min_matches": "six"}', "min_matches")])
def test_a_bad_difference_parameter_is_one_line_and_exit_2(home, monkeypatch, capsys, value, named):
    monkeypatch.setenv("ASTRO_DIFFERENCE_PARAMS", value)
    code, _, err = run_cli(["status"], capsys)
    _assert_one_line_error(code, err, ["status"])
    assert "ASTRO_DIFFERENCE_PARAMS" in err and named in err


def test_backfill_dates_are_checked_before_anything_runs(home, capsys):
    code, out, err = run_cli(["backfill", "--night-from", "yesterday", "--dry-run"], capsys)
    assert code == 2 and "YYYY-MM-DD" in err and "no observation matches" not in out
