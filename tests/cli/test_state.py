"""Where the command line finds the platform's state, and what it says when there is none."""

import uuid
from pathlib import Path

import pytest
from dagster import instance_for_test, job, op

import dagster_project
from dagster_project.settings import Settings
from tests.cli.conftest import run_cli

CHECKOUT = Path(dagster_project.__file__).resolve().parent.parent


def test_without_astro_home_the_source_checkout_state_is_used_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("ASTRO_HOME", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env()
    assert settings.home == CHECKOUT / "var"
    assert settings.database_url == f"sqlite:///{CHECKOUT / 'var' / 'catalog.sqlite'}"
    assert str(CHECKOUT) in settings.home_source


@pytest.mark.parametrize("argv", [["status"], ["results", "status"], ["operations", "list"],
                                  ["candidates", "export", "--out", "c.csv"], ["runs", "tail", "abc"]])
def test_a_read_only_command_without_state_says_where_it_looked_and_creates_nothing(argv, home, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert f"no catalog at {home / 'catalog.sqlite'}" in err and f"ASTRO_HOME={home}" in err
    assert len(err.strip().splitlines()) == 1
    assert not home.exists() and not (tmp_path / "var").exists() and not (tmp_path / "c.csv").exists()


def test_status_with_state_names_the_catalog(home, capsys):
    assert run_cli(["migrate"], capsys)[0] == 0
    code, out, _ = run_cli(["status"], capsys)
    assert code == 0 and f"catalog: sqlite:///{home / 'catalog.sqlite'}" in out


@op
def _noop():
    return None


@job
def _tiny():
    _noop()


def test_runs_tail_takes_a_unique_prefix_and_refuses_an_ambiguous_one(home, capsys):
    assert run_cli(["migrate"], capsys)[0] == 0
    with instance_for_test() as instance:  # DAGSTER_HOME points at it meanwhile
        ids = [f"35bd0131-{part}-4000-8000-{uuid.uuid4().hex[:12]}" for part in ("aaaa", "bbbb")]
        for run_id in ids:
            assert _tiny.execute_in_process(instance=instance, run_id=run_id).success
        code, out, err = run_cli(["runs", "tail", ids[0][:13], "--interval", "0.1"], capsys)
        assert code == 0, err
        assert out.strip().splitlines()[-1] == f"run {ids[0]} completed"
        code, out, err = run_cli(["runs", "tail", "35bd0131"], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "35bd0131 is the start of 2 run ids" in err
