"""The mirror of Dagster runs into the operations ledger and provenance (the ledger sensor's library).

Dagster's instance knows what ran; the catalog must say so too, even when runs fail, are
canceled or their process dies. Each tick of the ledger sensor (``sensors/ledger.py``):

1. reads the run-status events (start, success, failure, cancel) after its cursor — the
   event log's storage id — (:func:`run_status_changes`) and mirrors each of those runs into
   the provenance tables (:func:`mirror_run`: run, ordered steps, artifacts with checksums,
   input links). A run that failed or was canceled also closes the catalog attempts it left running;
2. brings every queued or running operation up to date (:func:`sync_operation`): counts and
   failures from its runs (found by the ``astro/operation_id`` tag, or by run key for a sensor's
   wave), and completion once its backfill or wave is over, or once the process that ran it is
   gone (its unfinished runs are then marked failed in Dagster).

Mirroring is incremental and idempotent (steps are keyed by event storage id), so the CLI's
``runs tail`` and the runner use the same functions while a run is live; the runner and
``process`` run their own operations through :func:`owned_operation`. Only Dagster's public
API is used: the names Dagster defines in its private modules are written out below.
"""

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    EventLogRecord,
    MarkdownMetadataValue,
    RunsFilter,
    RunStatusChangeRecordsFilter,
)

from dagster_project.catalog import Catalog, queries, schema
from dagster_project.catalog.queries import ArtifactRecord, InputRecord, OperationActive, StepRecord
from dagster_project.catalog.schema import OperationOutcome, OperationRun, OperationType, ProcessingRunStatus, StepType
from dagster_project.ingest.landing import sha256_of
from dagster_project.operations.recording import OPERATION_TAG, current_initiator, owner_context, owner_is_gone

# --- names Dagster defines in its private modules -------------------------------------------------------------------
# Dagster 1.13 exports none of these from ``dagster``: they are written here, each with where Dagster defines it
# (tests/test_house.py checks they still match).

#: run tags, in ``dagster._core.storage.tags``
PARTITION_NAME_TAG = "dagster/partition"
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
#: the two tags of a run over a partition range
RANGE_TAGS = (ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG)
RUN_KEY_TAG = "dagster/run_key"
#: materialization tags, in ``dagster._core.definitions.data_version``
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
#: ``FINISHED_STATUSES`` and ``NOT_FINISHED_STATUSES`` of ``dagster._core.storage.dagster_run`` (MANAGED is neither)
FINISHED_STATUSES = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
NOT_FINISHED_STATUSES = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.SUSPENDED,
                         DagsterRunStatus.CANCELING, DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED)
#: values of ``dagster._core.execution.backfill.BulkActionStatus`` (a backfill's ``status``), by name:
#: ``BULK_ACTION_TERMINAL_STATUSES``, and the statuses of a backfill being or having been canceled
BACKFILL_TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELED", "COMPLETED_SUCCESS", "COMPLETED_FAILED"})
BACKFILL_CANCELED_STATUSES = frozenset({"CANCELING", "CANCELED"})


class ErrorInfo(Protocol):
    """What is read of the error a failed step carries (Dagster's ``SerializableErrorInfo``)."""

    cls_name: str | None
    message: str
    cause: "ErrorInfo | None"


#: run-status events the sensor follows (one cursor over all four: the event log's storage id)
RUN_STATUS_EVENTS = (DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE,
                     DagsterEventType.RUN_CANCELED)
#: events of each kind read per tick, so that a tick stays well inside the sensor time-out
EVENTS_PER_TICK = 25
#: a file whose mtime is later than the event that named it (by more than this) was rewritten since
CLOCK_TOLERANCE_S = 1.0
#: where a run's partition range is looked up (runs over a range come from batched backfills): the names of
#: the dynamic partition sets of ``pipeline/partitions.py``, which this layer does not import
#: (tests/operations/test_dagster_names.py checks they agree)
DYNAMIC_PARTITIONS = ("observations", "results", "field_bands")
#: metadata keys naming files, as ``pipeline/metadata.py`` writes them: ``artifact_<role>`` for files a
#: materialization wrote, ``input_<role>`` for files it read (checked against it like the names above)
ARTIFACT_PREFIX, INPUT_PREFIX = "artifact_", "input_"
#: a sensor wave whose run keys still have no run after this long is closed, the missing ones skipped
WAVE_PATIENCE = timedelta(hours=1)

RUN_STATUS = {
    DagsterRunStatus.QUEUED: ProcessingRunStatus.PENDING, DagsterRunStatus.NOT_STARTED: ProcessingRunStatus.PENDING,
    DagsterRunStatus.STARTING: ProcessingRunStatus.PENDING, DagsterRunStatus.MANAGED: ProcessingRunStatus.PENDING,
    DagsterRunStatus.STARTED: ProcessingRunStatus.RUNNING, DagsterRunStatus.CANCELING: ProcessingRunStatus.RUNNING,
    DagsterRunStatus.SUCCESS: ProcessingRunStatus.COMPLETED, DagsterRunStatus.FAILURE: ProcessingRunStatus.FAILED,
    DagsterRunStatus.CANCELED: ProcessingRunStatus.CANCELLED,
}
_STEP_TYPES = {
    DagsterEventType.RUN_START: StepType.RUN_START, DagsterEventType.STEP_START: StepType.STEP_START,
    DagsterEventType.ASSET_MATERIALIZATION: StepType.MATERIALIZATION,
    DagsterEventType.ASSET_CHECK_EVALUATION: StepType.CHECK_RESULT, DagsterEventType.STEP_SUCCESS: StepType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE: StepType.FAILURE, DagsterEventType.RUN_SUCCESS: StepType.RUN_END,
    DagsterEventType.RUN_FAILURE: StepType.RUN_END, DagsterEventType.RUN_CANCELED: StepType.RUN_END,
}
_RUN_END_STATUS = {DagsterEventType.RUN_SUCCESS: "success", DagsterEventType.RUN_FAILURE: "failure",
                   DagsterEventType.RUN_CANCELED: "canceled"}
_MEDIA_TYPES = {".fits": "image/fits", ".fit": "image/fits", ".fts": "image/fits", ".png": "image/png",
                ".ecsv": "text/x-ecsv", ".csv": "text/csv", ".json": "application/json"}
# Dagster's wrappers around the error user code raised
_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}


# --- events → provenance records ------------------------------------------------------------------------------------

def store_relative(path: str | Path, store_root: Path) -> str:
    """``path`` relative to the store root (POSIX), or as given when it lies outside the store."""
    try:
        return Path(path).resolve().relative_to(store_root.resolve()).as_posix()
    except ValueError:
        return str(path)


class _Digests:
    """The sha256 of files this process already read, by what ``stat`` says of them (device, inode, size, mtime,
    ctime): a file left as it was is not read again. The mirror meets the same files again and again (the
    calibrated image an artifact of one run and an input of the next, a reference an input of every difference
    of its field), each up to hundreds of MB; any write to a file changes its key."""

    def __init__(self, size: int = 4096):
        self._size = size
        self._known: dict[tuple, str] = {}

    @staticmethod
    def key(path: Path, stat) -> tuple:
        return str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns

    def get(self, key: tuple) -> str | None:
        return self._known.get(key)

    def put(self, key: tuple, digest: str) -> None:
        if len(self._known) >= self._size:
            self._known.pop(next(iter(self._known)))  # the oldest first
        self._known[key] = digest


_DIGESTS = _Digests()


def fingerprint(path: Path, as_of: float) -> tuple[int | None, str | None]:
    """(size, sha256) of ``path`` if it still holds what it held at ``as_of`` (epoch seconds), else (None, None)."""
    try:
        before = path.stat()
        if before.st_mtime > as_of + CLOCK_TOLERANCE_S:
            return None, None  # rewritten since: these bytes are not the ones the event named
        key = _Digests.key(path, before)
        digest = _DIGESTS.get(key)
        if digest is not None:
            return before.st_size, digest
        digest = sha256_of(path)
        after = path.stat()
    except FileNotFoundError:
        return None, None
    if _Digests.key(path, after) != key:
        return None, None  # rewritten while we read it
    _DIGESTS.put(key, digest)
    return before.st_size, digest


def _scalar(value: Any) -> Any:
    """A JSON-safe scalar from a metadata value, or None for what provenance does not keep (previews, tables)."""
    raw = getattr(value, "value", None)
    if isinstance(raw, bool | int | str):
        return raw if not isinstance(raw, str) or len(raw) <= 500 else None
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else None  # PostgreSQL's JSONB has no NaN
    return None


def _figures(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The materialization's figures: files are recorded apart, previews (markdown) are left to the UI."""
    kept = ((k, _scalar(m)) for k, m in metadata.items()
            if not k.startswith((ARTIFACT_PREFIX, INPUT_PREFIX)) and not isinstance(m, MarkdownMetadataValue))
    return {k: v for k, v in kept if v is not None}


def _snake(name: str) -> str:
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)).lower()


def describe_error(error: ErrorInfo | None, fallback: str) -> tuple[str, str]:
    """(code, message) of the error user code raised, unwrapped from Dagster's wrappers, without its stack."""
    if error is None:
        return "run.failed", fallback
    while error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    message = (error.message or "").strip()
    head, sep, tail = message.partition(": ")
    if sep and head.split(".")[-1] == error.cls_name:  # "package.module.PSFError: only 3 stars ..."
        message = tail
    return f"step.{_snake(error.cls_name or 'error')}", message.splitlines()[0] if message else fallback


def _step_record(record: EventLogRecord, step_started: dict[str, float], run_started: float | None,
                 store_root: Path) -> StepRecord:
    entry = record.event_log_entry
    event = entry.dagster_event
    kind = _STEP_TYPES[event.event_type]
    content: dict[str, Any] = {"step_key": event.step_key} if event.step_key else {}
    since = step_started.get(event.step_key or "") if kind is not StepType.RUN_END else run_started
    latency = None if since is None or kind in (StepType.RUN_START, StepType.STEP_START) else \
        max(0.0, (entry.timestamp - since) * 1000)
    artifacts: tuple[ArtifactRecord, ...] = ()
    inputs: tuple[InputRecord, ...] = ()
    if kind is StepType.MATERIALIZATION:
        artifacts, inputs = _files(event.step_materialization_data.materialization, entry.timestamp, store_root,
                                   content)
    elif kind is StepType.CHECK_RESULT:
        evaluation = event.asset_check_evaluation_data
        content.update(asset_key=evaluation.asset_key.to_user_string(), check_name=evaluation.check_name,
                       passed=evaluation.passed, severity=evaluation.severity.value,
                       metadata=_figures(evaluation.metadata))
    elif kind is StepType.FAILURE:
        code, message = describe_error(event.step_failure_data.error, entry.message or "step failed")
        content.update(code=code, message=message)
    elif kind is StepType.RUN_END:
        content.update(status=_RUN_END_STATUS[event.event_type], message=event.message or entry.message)
    return StepRecord(record.storage_id, kind, datetime.fromtimestamp(entry.timestamp, UTC), content, latency,
                      artifacts, inputs)


def _files(materialization: Any, at: float, store_root: Path,
           content: dict[str, Any]) -> tuple[tuple[ArtifactRecord, ...], tuple[InputRecord, ...]]:
    """The files a materialization names (``artifact_<role>`` written, ``input_<role>`` read), fingerprinted;
    its asset, partition, versions and figures go into ``content``."""
    tags = materialization.tags or {}
    asset_key, partition, code_version = (materialization.asset_key.to_user_string(), materialization.partition,
                                          tags.get(CODE_VERSION_TAG))
    content.update(asset_key=asset_key, partition=partition, code_version=code_version,
                   data_version=tags.get(DATA_VERSION_TAG), metadata=_figures(materialization.metadata))
    artifacts, inputs = [], []
    for key, value in materialization.metadata.items():
        path = Path(value.path) if key.startswith((ARTIFACT_PREFIX, INPUT_PREFIX)) else None
        if path is None:
            continue
        size, digest = fingerprint(path, at)
        if key.startswith(ARTIFACT_PREFIX):
            artifacts.append(ArtifactRecord(
                role=key.removeprefix(ARTIFACT_PREFIX), path=store_relative(path, store_root),
                mime_type=_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"), size_bytes=size,
                sha256=digest, asset_key=asset_key, partition_key=partition, code_version=code_version))
        else:
            inputs.append(InputRecord(key.removeprefix(INPUT_PREFIX), store_relative(path, store_root), digest))
    return tuple(artifacts), tuple(inputs)


def step_records(records: Sequence[EventLogRecord], after_storage_id: int, store_root: Path) -> Iterator[StepRecord]:
    """The provenance steps among a run's event records, those after ``after_storage_id`` only.

    All records are read, the earlier ones too: latencies are measured from step and run starts.
    """
    step_started: dict[str, float] = {}
    run_started: float | None = None
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.event_type not in _STEP_TYPES:
            continue
        if event.event_type is DagsterEventType.RUN_START:
            run_started = record.event_log_entry.timestamp
        elif event.event_type is DagsterEventType.STEP_START:
            step_started[event.step_key] = record.event_log_entry.timestamp
        if record.storage_id > after_storage_id:
            yield _step_record(record, step_started, run_started, store_root)


def run_partition_keys(instance: DagsterInstance, tags: Mapping[str, str]) -> list[str]:
    """The partitions a run materializes: its partition, or every key of its partition range (a backfill batch)."""
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None:
        return []
    for name in DYNAMIC_PARTITIONS:
        keys = instance.get_dynamic_partitions(name)
        if start in keys and end in keys and keys.index(start) <= keys.index(end):
            return keys[keys.index(start):keys.index(end) + 1]
    return [start, end]  # its partitions were deleted since: the range's two ends are all that is known


def _timestamp(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _operation_id(tags: Mapping[str, str]) -> int | None:
    value = tags.get(OPERATION_TAG, "")
    return int(value) if value.isdigit() else None


# --- mirroring a run ------------------------------------------------------------------------------------------------

def mirror_run(instance: DagsterInstance, catalog: Catalog, store_root: Path, run_id: str) -> ProcessingRunStatus:
    """Bring the provenance of one Dagster run up to date; returns its status.

    The run's status is read before its events: a finished status means its last
    events are stored already, so a finished run is mirrored completely.
    """
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise LookupError(f"no Dagster run {run_id} in this instance")
    run = record.dagster_run
    status = RUN_STATUS[run.status]
    with catalog.session() as session:
        after = queries.mirrored_up_to(session, run_id)
    events = instance.get_records_for_run(run_id, ascending=True).records
    steps = list(step_records(events, after, store_root))  # files are hashed outside any transaction
    operation_id = _operation_id(run.tags)
    with catalog.session() as session:
        if operation_id is not None and not queries.operation_exists(session, operation_id):
            operation_id = None  # tagged by another catalog (e.g. a copied instance)
        mirrored = queries.record_processing_run(
            session, dagster_run_id=run_id, job_name=run.job_name, status=status, partition_keys=run_partition_keys(instance, run.tags),
            run_config=dict(run.run_config), run_metadata=dict(run.tags), operation_run_id=operation_id,
            started_at=_timestamp(record.start_time), finished_at=_timestamp(record.end_time))
        queries.append_steps(session, mirrored, steps)
        if status in (ProcessingRunStatus.FAILED, ProcessingRunStatus.CANCELLED):
            ended = "was canceled" if status is ProcessingRunStatus.CANCELLED else "failed"
            queries.abandon_running_attempts(session, run_id,
                                                f"Dagster run {run_id} {ended} before this attempt finished")
        if operation_id is not None:
            _link_run(session, operation_id, run_id)
    return status


def _link_run(session, operation_id: int, run_id: str) -> None:
    """Name the run in its operation's context (a backfill's runs are found through the backfill id)."""
    operation = queries.get_operation(session, operation_id)
    context = operation.context or {}
    if "backfill_id" not in context and run_id not in context.get("dagster_run_ids", []):
        queries.update_context(session, operation, dagster_run_ids=[*context.get("dagster_run_ids", []), run_id])


# --- keeping operations true ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OperationProgress:
    """An operation after :func:`sync_operation`, with its runs still under way."""

    operation: OperationRun
    running: int
    queued: int


def run_failure(instance: DagsterInstance, run_id: str, status: DagsterRunStatus) -> tuple[str, str]:
    """(code, message) saying why a finished run did not succeed: its first failed step, else the run's end."""
    if status is DagsterRunStatus.CANCELED:
        return "run.canceled", "the run was canceled"
    failures = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1).records
    if failures:
        event = failures[0].event_log_entry.dagster_event
        return describe_error(event.step_failure_data.error, "step failed")
    ends = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE, limit=1).records
    message = ends[0].event_log_entry.dagster_event.message if ends else None
    return "run.failed", message or "the run failed before any step did"


@dataclass(frozen=True)
class _Scope:
    """An operation's units of work with the latest run of each, how many units there are, whether it is over.

    A unit is a partition for backfills (a run over a range is the latest run of each of
    its partitions, until a later run covers one of them again), a run key for sensor
    waves, a run otherwise.
    """

    runs: dict[Any, DagsterRun]
    total: int
    over: bool
    cancelled: bool = False


def _latest(runs: Sequence[DagsterRun], units: Callable[[DagsterRun], Iterable[Any]]) -> dict[Any, DagsterRun]:
    latest: dict[Any, DagsterRun] = {}
    for run in reversed(runs):  # newest first from the instance: a re-run replaces the earlier attempt
        for unit in units(run):
            latest[unit] = run
    return latest


def _scope(instance: DagsterInstance, operation: OperationRun) -> _Scope:
    """A backfill's partitions; a sensor wave's run keys; otherwise whatever runs carry the operation's tag."""
    context = operation.context or {}
    tagged = RunsFilter(tags={OPERATION_TAG: str(operation.id)})
    if context.get("backfill_id"):
        backfill = instance.get_backfill(context["backfill_id"])
        runs = _latest(instance.get_runs(tagged), lambda r: run_partition_keys(instance, r.tags) or [r.run_id])
        total = context.get("partition_count") or len(backfill.partition_names or [])
        finished = sum(r.status in FINISHED_STATUSES for r in runs.values())
        # the daemon marks a backfill over up to 30 s after its last run: when every partition ran, it is over
        over = finished == len(runs) and (finished >= total or backfill.status.value in BACKFILL_TERMINAL_STATUSES)
        return _Scope(runs, total, over, backfill.status.value in BACKFILL_CANCELED_STATUSES)
    if "run_keys" in context:
        keys = context["run_keys"]
        runs = _latest(instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: keys})), lambda r: [r.tags[RUN_KEY_TAG]])
        all_ended = all(r.status in FINISHED_STATUSES for r in runs.values())
        # a key Dagster never launched (its tick failed for good) must not keep the wave open forever
        given_up = operation.started_at < datetime.now(UTC) - WAVE_PATIENCE
        return _Scope(runs, len(keys), all_ended and (len(runs) == len(keys) or given_up))
    runs = _latest(instance.get_runs(tagged), lambda r: [(r.job_name, r.tags.get(PARTITION_NAME_TAG) or r.run_id)])
    return _Scope(runs, len(runs), over=False)  # its owner completes it (owned_operation)


def sync_operation(instance: DagsterInstance, catalog: Catalog, operation_id: int) -> OperationProgress:
    """Bring an operation up to date with its Dagster runs, completing it when they are over.

    An operation whose process is gone is over too: its unfinished runs are marked failed
    in Dagster, since nothing else ever will.
    """
    with catalog.session() as session:
        operation = queries.get_operation(session, operation_id)
    if not operation.is_active:
        return OperationProgress(operation, 0, 0)
    context = operation.context or {}
    owner_gone = owner_is_gone(operation)
    if owner_gone:
        for run in instance.get_runs(RunsFilter(tags={OPERATION_TAG: str(operation_id)},
                                                statuses=list(NOT_FINISHED_STATUSES))):
            instance.report_run_failed(run, f"its process (pid {context.get('pid')}) exited before the run ended")
    scope = _scope(instance, operation)
    over = scope.over or owner_gone
    ended = [r for r in scope.runs.values() if r.status in FINISHED_STATUSES]
    failed = [r for r in ended if r.status is not DagsterRunStatus.SUCCESS]
    counted = set(context.get("failed_run_ids", []))
    new_failures = [(run_id, *run_failure(instance, run_id, run.status))  # a batch's run once, not per partition
                    for run_id, run in {r.run_id: r for r in failed}.items() if run_id not in counted]
    with catalog.session() as session:
        operation = queries.get_operation(session, operation_id)
        if not operation.is_active or operation.status == schema.OperationStatus.QUEUED:
            return OperationProgress(operation, 0, 0)  # finished by another syncer, or not started yet
        queries.record_progress(session, operation, total=scope.total, success=len(ended) - len(failed),
                                   failed=len(failed), skipped=max(scope.total - len(ended), 0) if over else 0)
        for _, code, message in new_failures:
            queries.record_failure(session, operation, code, message)
        if new_failures:
            queries.update_context(session, operation,
                                      failed_run_ids=sorted(counted | {run_id for run_id, _, _ in new_failures}))
        if owner_gone:
            queries.record_failure(session, operation, "process.exited",
                                      f"the process running it (pid {context.get('pid')}) exited before it finished")
        if over:
            operation = queries.complete_operation(
                session, operation, OperationOutcome.CANCELLED if scope.cancelled else None)
    in_flight = list({r.run_id: r for r in scope.runs.values() if r.status not in FINISHED_STATUSES}.values())
    started = sum(r.status in (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING) for r in in_flight)
    return OperationProgress(operation, running=started, queued=len(in_flight) - started)


@contextmanager
def owned_operation(instance: DagsterInstance, catalog: Catalog, *, survey: str, operation_type: OperationType,
                    identity: Mapping[str, Any]) -> Iterator[int]:
    """An operation this process runs itself (e.g. ``process``); yields its id for tagging runs.

    Started here by the person running the command; completed when the block ends (its
    outcome from its runs), cancelled on Ctrl-C, failed when the block raises. If the same
    operation is already running in a live process, :class:`OperationActive` is raised; if
    that process died, the operation is closed as such and a new one starts.
    """
    def start() -> tuple[OperationRun, bool]:
        with catalog.session() as session:
            operation, created = queries.start_operation(
                session, survey=queries.get_or_create_survey(session, survey), operation_type=operation_type,
                identity=identity, initiator=current_initiator(), context={**identity, **owner_context()})
            return (queries.mark_running(session, operation) if created else operation), created

    operation, created = start()
    if not created and owner_is_gone(operation):
        sync_operation(instance, catalog, operation.id)  # closes it: its process is gone
        operation, created = start()
    if not created:
        raise OperationActive(operation, f" in process {(operation.context or {}).get('pid')}")
    try:
        yield operation.id
    except BaseException as exc:
        _finish(instance, catalog, operation.id, exc)
        raise
    _finish(instance, catalog, operation.id, None)


def _finish(instance: DagsterInstance, catalog: Catalog, operation_id: int, error: BaseException | None) -> None:
    sync_operation(instance, catalog, operation_id)
    with catalog.session() as session:
        if isinstance(error, KeyboardInterrupt):
            queries.record_failure(session, operation_id, "operation.interrupted", "interrupted (Ctrl-C)")
            queries.complete_operation(session, operation_id, OperationOutcome.CANCELLED)
            return
        if error is not None:
            queries.record_failure(session, operation_id, f"operation.{_snake(type(error).__name__)}", str(error))
        queries.complete_operation(session, operation_id)


# --- what the sensor reads ------------------------------------------------------------------------------------------

def run_status_changes(instance: DagsterInstance, after_storage_id: int | None,
                       limit: int) -> tuple[list[EventLogRecord], int | None]:
    """Run-status events after the cursor, oldest first, and the cursor to continue from.

    One query per event type; when one of them is cut short by ``limit``, the others
    are not taken past its last record, so that no event is ever skipped.
    """
    batches = [instance.fetch_run_status_changes(
        RunStatusChangeRecordsFilter(event_type, after_storage_id=after_storage_id), limit=limit, ascending=True)
        for event_type in RUN_STATUS_EVENTS]
    horizon = min((b.records[-1].storage_id for b in batches if b.has_more), default=math.inf)
    records = sorted((r for b in batches for r in b.records if r.storage_id <= horizon), key=lambda r: r.storage_id)
    return records, records[-1].storage_id if records else after_storage_id
