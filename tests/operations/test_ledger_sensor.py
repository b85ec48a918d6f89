"""The ledger sensor keeps operations and attempts true when runs succeed, fail, are canceled or lose
their process; it mirrors each run once."""

import queue
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from dagster import DagsterEvent, DagsterEventType, DagsterRunStatus, instance_for_test, job, op
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster_project.operations.mirror import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dagster_project.catalog import queries
from dagster_project.catalog.schema import ObservationStatus, RunStatus
from dagster_project.catalog.schema import OperationOutcome, OperationStatus, OperationType
from dagster_project.catalog.schema import ProcessingRun, ProcessingRunStatus, ProcessingStep, StepType
from dagster_project.operations.recording import OPERATION_TAG, owner_context, start_wave
from dagster_project.definitions import defs
from tests.catalog import observation
from tests.platform import make_platform

operations_ledger_sensor = defs.resolve_sensor_def("operations_ledger_sensor")


@op
def noop() -> None:
    pass


@job
def tiny_job():
    noop()


@pytest.fixture
def platform(tmp_path, sqlite_url):
    with instance_for_test() as instance:
        yield make_platform(tmp_path, sqlite_url, instance)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def start_operation(platform, operation_type: OperationType, **context) -> int:
    with platform.catalog.session() as s:
        operation, _ = queries.start_operation(
            s, survey=queries.get_or_create_survey(s, "test"), operation_type=operation_type,
            identity={"test": operation_type.value}, initiator="alice", context=context)
        return queries.mark_running(s, operation).id


def run(platform, operation_id: int | None, *events: DagsterEventType, partition: str | None = "p1",
        **tags: str) -> str:
    """A Dagster run of the operation that went through ``events`` (RUN_START, RUN_SUCCESS, ...);
    ``partition=None``: a run over a range (give its range tags)."""
    tags = {**tags, **({"dagster/partition": partition} if partition else {})}
    if operation_id is not None:
        tags[OPERATION_TAG] = str(operation_id)
    dagster_run = platform.instance.create_run_for_job(tiny_job, tags=tags)
    for event_type in events:
        platform.instance.report_dagster_event(DagsterEvent(event_type.value, job_name=tiny_job.name),
                                               run_id=dagster_run.run_id)
    return dagster_run.run_id


def attempt_running_in(platform, run_id: str, n: int = 1) -> str:
    """An observation whose calibration attempt belongs to the Dagster run ``run_id``."""
    with platform.catalog.session() as s:
        obs = observation(s, n)
        queries.start_preprocess_run(s, obs, {}, run_id)
        return obs.observation_id


def processing_run(platform, run_id: str) -> ProcessingRun:
    with platform.catalog.session() as s:
        found = s.scalars(sa.select(ProcessingRun).where(ProcessingRun.dagster_run_id == run_id)).one()
        found.steps  # noqa: B018 - loaded while the session is open
        return found


def test_a_run_whose_process_died_is_failed_and_its_operation_completed(platform):
    operation_id = start_operation(platform, OperationType.PROCESS_FOLDER, **{**owner_context(), "pid": dead_pid()})
    done = run(platform, operation_id, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, partition="p1")
    stuck = run(platform, operation_id, DagsterEventType.RUN_START, partition="p2")
    key = attempt_running_in(platform, stuck)

    result, cursor = platform.tick(operations_ledger_sensor)
    assert "1 completed now" in result.skip_message
    assert platform.instance.get_run_by_id(stuck).status is DagsterRunStatus.FAILURE  # said so in Dagster too
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert (operation.status, operation.outcome) == (OperationStatus.COMPLETED,
                                                         OperationOutcome.PARTIALLY_SUCCEEDED)
        assert operation.summary_counts == {"total": 2, "success": 1, "failed": 1, "skipped": 0}
        assert [f["code"] for f in operation.failure_summary] == ["run.failed", "process.exited"]
        assert operation.context["failed_run_ids"] == [stuck]

    platform.tick(operations_ledger_sensor, cursor)  # the next tick mirrors the failure it reported
    assert processing_run(platform, done).status is ProcessingRunStatus.COMPLETED
    failed = processing_run(platform, stuck)
    assert failed.status is ProcessingRunStatus.FAILED and failed.operation_run_id == operation_id
    assert failed.steps[-1].type is StepType.RUN_END and failed.steps[-1].content["status"] == "failure"
    with platform.catalog.session() as s:
        obs = queries.get_observation(s, key)
        assert obs.preprocess_run.status is RunStatus.FAILED and obs.status is ObservationStatus.FAILED
        assert stuck in obs.status_reason


def test_a_live_process_keeps_its_operation_running(platform):
    operation_id = start_operation(platform, OperationType.PROCESS_FOLDER, **owner_context())  # this process
    stuck = run(platform, operation_id, DagsterEventType.RUN_START)
    platform.tick(operations_ledger_sensor)
    assert platform.instance.get_run_by_id(stuck).status is DagsterRunStatus.STARTED
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert operation.status is OperationStatus.RUNNING
        assert operation.summary_counts == {"total": 1, "success": 0, "failed": 0, "skipped": 0}


def add_backfill(platform, backfill_id: str, status: BulkActionStatus, partitions: list[str]) -> None:
    platform.instance.add_backfill(PartitionBackfill(
        backfill_id=backfill_id, status=status, from_failure=False, tags={}, backfill_timestamp=0.0,
        partition_names=partitions))


def test_a_canceled_backfill_completes_its_operation_as_cancelled(platform):
    add_backfill(platform, "bf1", BulkActionStatus.CANCELED, ["p1", "p2", "p3"])
    operation_id = start_operation(platform, OperationType.BACKFILL_OBSERVATIONS, backfill_id="bf1")
    run(platform, operation_id, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, partition="p1")
    canceled = run(platform, operation_id, DagsterEventType.RUN_START, partition="p2")
    key = attempt_running_in(platform, canceled)
    platform.instance.report_run_canceled(platform.instance.get_run_by_id(canceled))  # canceled mid-way

    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert operation.outcome is OperationOutcome.CANCELLED
        # p3 never got a run: skipped
        assert operation.summary_counts == {"total": 3, "success": 1, "failed": 1, "skipped": 1}
        assert operation.failure_summary == [{"code": "run.canceled", "message": "the run was canceled", "count": 1}]
        assert "dagster_run_ids" not in operation.context  # a backfill's runs are found by its id
        obs = queries.get_observation(s, key)
        assert obs.preprocess_run.status is RunStatus.FAILED and "canceled" in obs.preprocess_run.error_message
    assert processing_run(platform, canceled).status is ProcessingRunStatus.CANCELLED


def test_a_backfill_completes_when_every_partition_ran(platform):
    """The daemon marks a backfill done up to 30 s after its last run; the ledger need not wait."""
    add_backfill(platform, "bf2", BulkActionStatus.REQUESTED, ["p1", "p2"])
    operation_id = start_operation(platform, OperationType.BACKFILL_OBSERVATIONS, backfill_id="bf2")
    run(platform, operation_id, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, partition="p1")
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        assert queries.get_operation(s, operation_id).status is OperationStatus.RUNNING
    run(platform, operation_id, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, partition="p2")
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert operation.outcome is OperationOutcome.SUCCEEDED
        assert operation.summary_counts == {"total": 2, "success": 2, "failed": 0, "skipped": 0}


def batch(platform, operation_id: int, first: str, last: str, *events: DagsterEventType) -> str:
    return run(platform, operation_id, *events, partition=None, **{
        ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last})


def test_a_batched_backfill_counts_partitions_and_a_retry_replaces_the_failed_batch(platform):
    platform.instance.add_dynamic_partitions("observations", ["p1", "p2", "p3", "p4"])
    add_backfill(platform, "bf3", BulkActionStatus.REQUESTED, ["p1", "p2", "p3", "p4"])
    operation_id = start_operation(platform, OperationType.BACKFILL_OBSERVATIONS, backfill_id="bf3")
    failed = batch(platform, operation_id, "p1", "p2", DagsterEventType.RUN_START, DagsterEventType.RUN_FAILURE)
    second = batch(platform, operation_id, "p3", "p4", DagsterEventType.RUN_START)
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert operation.summary_counts == {"total": 4, "success": 0, "failed": 2, "skipped": 0}
        assert [f["count"] for f in operation.failure_summary] == [1]  # the batch's run once, not per partition
    assert processing_run(platform, failed).partition_keys == ["p1", "p2"]

    # Dagster retries the failed batch while the other one runs: each partition counts its latest run only
    batch(platform, operation_id, "p1", "p2", DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS)
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert operation.summary_counts == {"total": 4, "success": 2, "failed": 0, "skipped": 0}
        assert operation.is_active
    platform.instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_SUCCESS.value, job_name=tiny_job.name),
                                           run_id=second)
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, operation_id)
        assert operation.summary_counts == {"total": 4, "success": 4, "failed": 0, "skipped": 0}
        # every partition is done, but a run failed on the way: it stays in the failure summary
        assert operation.outcome is OperationOutcome.PARTIALLY_SUCCEEDED


def test_each_run_is_mirrored_once_and_the_cursor_moves_on(platform):
    operation_id = start_operation(platform, OperationType.INGEST_SCAN)
    run_ids = [run(platform, operation_id, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS,
                   partition=f"p{i}") for i in range(3)]

    def counts():
        with platform.catalog.session() as s:
            return (s.scalar(sa.select(sa.func.count()).select_from(ProcessingRun)),
                    s.scalar(sa.select(sa.func.count()).select_from(ProcessingStep)))

    first, cursor = platform.tick(operations_ledger_sensor)
    assert "mirrored 3 run(s)" in first.skip_message and counts() == (3, 6)  # run start and end of each
    again, same_cursor = platform.tick(operations_ledger_sensor, cursor)
    assert "mirrored 0 run(s)" in again.skip_message and same_cursor == cursor
    platform.tick(operations_ledger_sensor, None)  # a lost cursor: everything is read again, nothing added
    assert counts() == (3, 6)
    with platform.catalog.session() as s:
        assert queries.get_operation(s, operation_id).context["dagster_run_ids"] == run_ids


def test_a_sensor_wave_completes_when_each_run_key_has_run(platform, monkeypatch):
    wave = start_wave(platform.catalog, "test", OperationType.PRODUCT_REBUILD_WAVE, ["k2", "k1", "k3"])
    assert start_wave(platform.catalog, "test", OperationType.PRODUCT_REBUILD_WAVE, ["k1", "k2", "k3"]) == wave
    run(platform, wave, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, **{"dagster/run_key": "k1"})
    # k2's run was launched by an earlier tick (Dagster de-duplicates run keys): it counts all the same
    run(platform, None, DagsterEventType.RUN_START, DagsterEventType.RUN_FAILURE, **{"dagster/run_key": "k2"})
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, wave)
        assert operation.status is OperationStatus.RUNNING  # k3 has no run yet
        assert operation.summary_counts == {"total": 3, "success": 1, "failed": 1, "skipped": 0}
    monkeypatch.setattr("dagster_project.operations.mirror.WAVE_PATIENCE", timedelta(0))  # k3 never came
    platform.tick(operations_ledger_sensor)
    with platform.catalog.session() as s:
        operation = queries.get_operation(s, wave)
        assert operation.outcome is OperationOutcome.PARTIALLY_SUCCEEDED
        assert operation.summary_counts == {"total": 3, "success": 1, "failed": 1, "skipped": 1}


def test_runs_tail_follows_a_live_run_until_it_ends(platform, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", platform.settings.database_url)  # DAGSTER_HOME: set by instance_for_test
    monkeypatch.setenv("ASTRO_STORE_DIR", str(platform.settings.store_dir))
    run_id = run(platform, None, DagsterEventType.RUN_START)
    tail = subprocess.Popen([sys.executable, "-m", "dagster_project", "runs", "tail", run_id, "--interval", "0.2"],
                            stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout], daemon=True).start()
    try:
        assert "run_start" in lines.get(timeout=60)
        platform.instance.report_dagster_event(
            DagsterEvent(DagsterEventType.STEP_START.value, job_name=tiny_job.name, step_key="noop"), run_id=run_id)
        assert "step_start" in lines.get(timeout=30) and tail.poll() is None  # shown while the run goes on
        platform.instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_SUCCESS.value,
                                                            job_name=tiny_job.name), run_id=run_id)
        assert "run_end" in lines.get(timeout=30)
        assert tail.wait(timeout=30) == 0
        assert lines.get(timeout=5).strip() == f"run {run_id} completed"
    finally:
        tail.kill()
        tail.wait()
