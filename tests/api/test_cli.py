"""The API's command line: tokens made, listed and revoked; a bad argument is one line and exit code 2."""

import subprocess
import sys


def run(tmp_path, *args):
    env = {"ASTRO_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "dagster_project", "api", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_tokens_are_made_once_listed_without_the_token_and_revoked(tmp_path):
    made = run(tmp_path, "token", "create", "telescope-1", "--scope", "telescope")
    assert made.returncode == 0 and made.stdout.startswith("astro_")
    token = made.stdout.strip()
    listed = run(tmp_path, "token", "list")
    assert "telescope-1" in listed.stdout and "telescope" in listed.stdout and token not in listed.stdout
    again = run(tmp_path, "token", "create", "telescope-1", "--scope", "reader")
    assert again.returncode == 2 and "exists already" in again.stderr
    assert run(tmp_path, "token", "revoke", "telescope-1").returncode == 0
    assert "revoked" in run(tmp_path, "token", "list").stdout
    assert token not in (tmp_path / "api" / "journal.sqlite").read_bytes().decode("latin-1")


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    for args in (("--port", "70000"), ("--port", "x"), ("token", "create", "n", "--scope", "root"),
                 ("token", "revoke", "nobody")):
        answer = run(tmp_path, *args)
        assert answer.returncode == 2, args
        assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr
