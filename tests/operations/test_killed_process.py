"""`process` killed (SIGKILL) in the middle of a run: the ledger sensor sets everything straight."""

import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from dagster_project.catalog import queries
from dagster_project.catalog.schema import ObservationStatus, PreprocessRun, RunStatus
from dagster_project.catalog.schema import OperationOutcome, OperationStatus, OperationType
from dagster_project.cli.main import main as cli_main
from dagster_project.operations.recording import OPERATION_TAG
from dagster_project.definitions import defs
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

operations_ledger_sensor = defs.resolve_sensor_def("operations_ledger_sensor")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """1024 px frames: a calibration lasts long enough to be killed in the middle."""
    night = tmp_path_factory.mktemp("night")
    simulate_night(night, n_fields=1, n_epochs=2, size=1024, n_bias=2, n_flats=2, transients_per_frame=2, seed=9)
    return night


def calibrating(platform) -> bool:
    with platform.catalog.session() as s:
        return bool(s.scalar(sa.select(sa.func.count()).where(PreprocessRun.status == RunStatus.RUNNING)))


def test_killed_process_leaves_a_true_ledger(night, tmp_path, monkeypatch, capsys):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    for name, value in {"ASTRO_HOME": str(tmp_path), "DAGSTER_HOME": str(home), "DATABASE_URL": url,
                        "ASTRO_SURVEY": "test", "ASTRO_SETTLE_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)
    worker = subprocess.Popen([sys.executable, "-m", "dagster_project", "process", str(night)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = DagsterInstance.from_config(str(home))
    platform = make_platform(tmp_path, url, instance)
    deadline = time.monotonic() + 120
    while not calibrating(platform):  # kill it inside calibrated_image, while its attempt is running
        assert worker.poll() is None, "`process` ended before any calibration started"
        assert time.monotonic() < deadline, "no calibration started in time"
        time.sleep(0.05)
    worker.kill()
    worker.wait()
    (killed,) = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))  # Dagster cannot know

    _, cursor = platform.tick(operations_ledger_sensor)
    platform.tick(operations_ledger_sensor, cursor)

    assert instance.get_run_by_id(killed.run_id).status is DagsterRunStatus.FAILURE
    with platform.catalog.session() as s:
        (process,) = queries.list_operations(s, operation_type=OperationType.PROCESS_FOLDER)
        assert killed.tags[OPERATION_TAG] == str(process.id)
        assert process.status is OperationStatus.COMPLETED and process.context["pid"] == worker.pid
        assert process.outcome in (OperationOutcome.FAILED, OperationOutcome.PARTIALLY_SUCCEEDED)
        assert {f["code"] for f in process.failure_summary} == {"run.failed", "process.exited"}
        counts = process.summary_counts
        assert counts["failed"] == 1 and counts["success"] + counts["failed"] == counts["total"]
        assert s.scalar(sa.select(sa.func.count()).where(PreprocessRun.status == RunStatus.RUNNING)) == 0
        attempt = s.scalars(sa.select(PreprocessRun).where(PreprocessRun.dagster_run_id == killed.run_id)).one()
        assert attempt.status is RunStatus.FAILED and attempt.observation.status is ObservationStatus.FAILED
        failed_key = attempt.observation.observation_id
    assert not instance.get_run_ids(RunsFilter(tags={OPERATION_TAG: str(process.id)},
                                               statuses=[DagsterRunStatus.STARTED]))

    capsys.readouterr()
    assert cli_main(["backfill", "--status", "failed", "--dry-run"]) == 0  # what to run again
    assert failed_key in capsys.readouterr().out
