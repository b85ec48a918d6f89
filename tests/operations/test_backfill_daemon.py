"""`backfill` from the command line, run by a real `dagster-daemon`, followed to the end, in the ledger."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_project.operations.mirror import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dagster_project.catalog import queries
from dagster_project.catalog.schema import OperationOutcome, OperationType
from dagster_project.catalog.schema import ProcessingRun, ProcessingRunStatus
from dagster_project.catalog.schema import DataProductStatus, ObservationResult, ObservationResultProcessingRun
from dagster_project.cli.main import main as cli_main
from dagster_project.operations.recording import OPERATION_TAG
from dagster_project.resources import CatalogResource
from dagster_project.cli.runner import process_folder
from dagster_project.settings import Settings
from dagster_project.products.requests import RequestSpec, submit_requests
from dagster_project.simulation.night import simulate_night

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
                        "ASTRO_SETTLE_SECONDS": "0", "ASTRO_PRODUCT_QUIET": "0",
                        "ASTRO_BOOKKEEPING_INTERVAL": "1",  # the tests follow the backfill in the ledger
                        # one-frame references, as these backfill figures were written for
                        "ASTRO_REFERENCE_FRAMES": "1"}.items():
        monkeypatch.setenv(name, value)
    night = tmp_path / "night"
    summary = simulate_night(night, n_fields=1, n_epochs=2, size=640, n_bias=2, n_flats=2, transients_per_frame=2,
                             seed=5).summary
    settings = Settings.from_env()
    field = summary["fields"]["F001"]
    submit_requests(CatalogResource(database_url=settings.database_url).catalog(), [RequestSpec(
        name="f001", target_name="F001 centre", ra=field["ra"], dec=field["dec"], filter_band="r", exposure_time=60,
        n_epochs=2, cadence_hours=1.0)], "test")
    instance = DagsterInstance.get()
    assert not process_folder(night, settings, instance=instance, progress=lambda _: None).failed
    return settings, instance


@contextmanager
def running_daemon(log_path: Path) -> Iterator[None]:
    """A real `dagster-daemon` on the test's instance (its backfill, run queue and sensor loops)."""
    log = log_path.open("w")
    daemon = subprocess.Popen([str(DAEMON), "run", "-w", str(REPO / "workspace.yaml")], cwd=REPO,
                              env=os.environ, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        daemon.terminate()
        with suppress(subprocess.TimeoutExpired):
            daemon.wait(60)
        daemon.kill()  # does nothing once it has exited
        daemon.wait()
        log.close()


def follow_operation(operation_id: int) -> str:
    """`operations show ID --follow` until the operation completes; its output."""
    follow = subprocess.run([sys.executable, "-m", "dagster_project", "operations", "show", str(operation_id),
                             "--follow"], capture_output=True, text=True, timeout=150)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    return follow.stdout


def test_backfill_launched_from_the_cli_is_run_by_the_daemon(platform, tmp_path):
    settings, instance = platform
    assert cli_main(["backfill", "--field", "F001", "--stage", "difference", "--detach"]) == 0
    catalog = CatalogResource(database_url=settings.database_url).catalog()
    with catalog.session() as s:
        (backfill_op,) = queries.list_operations(s, operation_type=OperationType.BACKFILL_OBSERVATIONS)
    backfill_id = backfill_op.context["backfill_id"]
    backfill = instance.get_backfill(backfill_id)
    assert backfill.status.value == "REQUESTED" and backfill.is_asset_backfill
    targeted = backfill.asset_backfill_data.target_subset
    assert {key.to_user_string() for key in targeted.asset_keys} == {"difference_image", "candidates"}
    observations = sorted(instance.get_dynamic_partitions("observations"))
    assert sorted(targeted.get_partitions_subset(AssetKey("candidates")).get_partition_keys()) == observations
    assert backfill.tags[OPERATION_TAG] == str(backfill_op.id)

    with running_daemon(tmp_path / "daemon.log"):
        followed = follow_operation(backfill_op.id)
        assert "[------------------------------] 0/2 done" in followed  # live progress, line by line
        assert "2/2 done (2 ok, 0 failed)" in followed
        assert f"operation #{backfill_op.id} succeeded" in followed

        # both observations in one run (ASTRO_BACKFILL_BATCH defaults to 8), both assets in it
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
        wait_for(lambda: instance.get_backfill(backfill_id).status.value == "COMPLETED_SUCCESS", 60,
                 "the daemon to close the backfill")
    with catalog.session() as s:
        done = queries.get_operation(s, backfill_op.id)
        assert done.outcome is OperationOutcome.SUCCEEDED
        assert done.summary_counts == {"total": 2, "success": 2, "failed": 0, "skipped": 0}
        assert s.scalar(sa.select(ProcessingRun.operation_run_id).where(
            ProcessingRun.dagster_run_id == run.run_id)) == done.id


def test_results_backfill_rebuilds_products_through_the_daemon(platform, tmp_path, capsys):
    settings, instance = platform
    catalog = CatalogResource(database_url=settings.database_url).catalog()
    with catalog.session() as s:
        ready = {str(r.uid): r.assets_revision for r in s.scalars(sa.select(ObservationResult)).all()
                 if r.data_product_status is DataProductStatus.READY}
        builds_before = s.scalar(sa.select(sa.func.count()).select_from(ObservationResultProcessingRun))
    assert len(ready) == 1  # the other frame is the field's reference: its result is SKIPPED, not rebuildable

    assert cli_main(["results", "backfill", "--status", "bogus"]) == 2
    assert cli_main(["results", "backfill", "--request", "nope"]) == 2
    assert "no request named 'nope'" in capsys.readouterr().err
    assert cli_main(["results", "backfill", "--request", "f001", "--status", "failed", "--dry-run"]) == 0
    assert "no result matches: nothing to backfill" in capsys.readouterr().out
    assert cli_main(["results", "backfill", "--request", "f001", "--dry-run"]) == 0
    assert list(ready)[0] in capsys.readouterr().out
    assert instance.get_backfills() == []  # a dry run launches nothing

    assert cli_main(["results", "backfill", "--request", "f001", "--detach"]) == 0
    with catalog.session() as s:
        (operation,) = queries.list_operations(s, operation_type=OperationType.BACKFILL_RESULTS)
    backfill = instance.get_backfill(operation.context["backfill_id"])
    assert {k.to_user_string() for k in backfill.asset_backfill_data.target_subset.asset_keys} == {
        "observation_products"}
    with running_daemon(tmp_path / "daemon.log"):
        assert f"operation #{operation.id} succeeded" in follow_operation(operation.id)
    with catalog.session() as s:
        done = queries.get_operation(s, operation.id)
        assert done.outcome is OperationOutcome.SUCCEEDED
        assert done.summary_counts == {"total": 1, "success": 1, "failed": 0, "skipped": 0}
        assert s.scalar(sa.select(sa.func.count()).select_from(ObservationResultProcessingRun)) == builds_before + 1
        for uid, revision in ready.items():
            result = s.scalar(sa.select(ObservationResult).where(ObservationResult.uid == uuid.UUID(uid)))
            assert result.data_product_status is DataProductStatus.READY
            assert result.last_built_revision == revision  # built again from the same revision
            latest = max(result.result_processing_runs, key=lambda run: run.started_at)
            assert latest.built_from_revision == revision and latest.dagster_run_id in {
                r.run_id for r in instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))}
