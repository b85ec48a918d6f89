"""`backfill` from the command line, run by a real `dagster-daemon`, followed to the end, in the ledger."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dagster_project.catalog import operations
from dagster_project.catalog.operations import OperationOutcome, OperationType
from dagster_project.catalog.provenance import ProcessingRun, ProcessingRunStatus
from dagster_project.cli import main as cli_main
from dagster_project.operations import OPERATION_TAG
from dagster_project.resources import CatalogResource
from dagster_project.runner import process_folder
from dagster_project.settings import Settings
from dagster_project.simulator import simulate_night

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DAEMON = Path(sys.executable).parent / "dagster-daemon"


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def platform(tmp_path, monkeypatch):
    """A processed night on an instance configured like deploy/dagster.yaml (queued runs, 2 at a time)."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for name, value in {"ASTRO_HOME": str(tmp_path), "DAGSTER_HOME": str(home), "ASTRO_SURVEY": "test",
                        "DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.sqlite'}", "ASTRO_SENSOR_INTERVAL": "1",
                        "ASTRO_SETTLE_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)
    night = tmp_path / "night"
    simulate_night(night, n_fields=1, n_epochs=2, size=640, n_bias=2, n_flats=2, transients_per_frame=2, seed=5)
    settings = Settings.from_env()
    instance = DagsterInstance.get()
    assert not process_folder(night, settings, instance=instance, progress=lambda _: None).failed
    return settings, instance


def test_backfill_launched_from_the_cli_is_run_by_the_daemon(platform, tmp_path):
    settings, instance = platform
    assert cli_main(["backfill", "--field", "F001", "--stage", "difference", "--detach"]) == 0
    catalog = CatalogResource(database_url=settings.database_url).catalog()
    with catalog.session() as s:
        (backfill_op,) = operations.list_operations(s, operation_type=OperationType.BACKFILL_OBSERVATIONS)
    backfill_id = backfill_op.context["backfill_id"]
    backfill = instance.get_backfill(backfill_id)
    assert backfill.status is BulkActionStatus.REQUESTED and backfill.is_asset_backfill
    targeted = backfill.asset_backfill_data.target_subset
    assert {key.to_user_string() for key in targeted.asset_keys} == {"difference_image", "candidates"}
    observations = sorted(instance.get_dynamic_partitions("observations"))
    assert sorted(targeted.get_partitions_subset(AssetKey("candidates")).get_partition_keys()) == observations
    assert backfill.tags[OPERATION_TAG] == str(backfill_op.id)

    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([str(DAEMON), "run", "-w", str(REPO / "workspace.yaml")], cwd=REPO,
                              env=os.environ, stdout=log, stderr=subprocess.STDOUT)
    try:
        follow = subprocess.run([sys.executable, "-m", "dagster_project", "operations", "show", str(backfill_op.id),
                                 "--follow"], capture_output=True, text=True, timeout=150)
        assert follow.returncode == 0, follow.stdout + follow.stderr
        assert "[------------------------------] 0/2 done" in follow.stdout  # live progress, line by line
        assert "2/2 done (2 ok, 0 failed)" in follow.stdout
        assert f"operation #{backfill_op.id} succeeded" in follow.stdout

        # both observations in one run (ASTRO_BACKFILL_BATCH defaults to 4), both assets in it
        (run,) = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert run.status is DagsterRunStatus.SUCCESS and run.job_name == "__ASSET_JOB"
        assert (run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
            observations[0], observations[-1])
        for asset in ("difference_image", "candidates"):
            events = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
            assert sorted(e.asset_materialization.partition for e in events
                          if e.asset_key == AssetKey(asset)) == observations

        def mirrored_by_the_daemon() -> bool:  # the ledger sensor runs in the daemon, too
            with catalog.session() as s:
                row = s.scalar(sa.select(ProcessingRun).where(ProcessingRun.dagster_run_id == run.run_id))
                return (row is not None and row.status is ProcessingRunStatus.COMPLETED
                        and sorted(row.partition_keys) == observations)

        wait_for(mirrored_by_the_daemon, 60, "the ledger sensor to mirror the backfill's runs")
        wait_for(lambda: instance.get_backfill(backfill_id).status is BulkActionStatus.COMPLETED_SUCCESS, 60,
                 "the daemon to close the backfill")
    finally:
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
    with catalog.session() as s:
        done = operations.get_operation(s, backfill_op.id)
        assert done.outcome is OperationOutcome.SUCCEEDED
        assert done.summary_counts == {"total": 2, "success": 2, "failed": 0, "skipped": 0}
        assert s.scalar(sa.select(ProcessingRun.operation_run_id).where(
            ProcessingRun.dagster_run_id == run.run_id)) == done.id
