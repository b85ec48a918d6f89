"""Every status change in the catalog goes through :func:`transition`.

Nothing else assigns a status column (``status``, ``state``, ``fulfillment_status``,
``data_product_status``); the lifecycle functions in ``queries`` call this. Each
(entity class, status column) has one :class:`Machine`: its enum, its table, where a
reason goes and what else a transition records. A transition not in the tables below
raises :class:`IllegalTransition` and leaves the entity untouched. Staying in the same
state is a transition too, and none of the tables allows one.

Observation (``status_reason`` says why it failed or is blocked)::

    ingested ─► preprocessing ─► preprocessed ─► differencing ─► differenced
                     │                               │
                     └─────► failed | blocked ◄──────┘
    preprocessed, differenced, failed, blocked ─► preprocessing   (reprocess)
    differenced, failed, blocked ─► differencing                  (re-difference)

    ingested       -> preprocessing
    preprocessing  -> preprocessed | failed | blocked
    preprocessed   -> differencing | preprocessing
    differencing   -> differenced | failed | blocked
    differenced    -> differencing | preprocessing
    failed         -> preprocessing | differencing
    blocked        -> preprocessing | differencing
    any but archived -> archived              (archived is terminal)

RunStatus, for PreprocessRun and DifferenceRun (``error_message`` says why)::

    pending ──► running ──► completed | failed | blocked | skipped ──► pending
       └──► blocked | skipped                       (a re-materialization: a new attempt)

RawFileStatus (``quarantine_reason``)::

    accepted ──► superseded | quarantined     (quarantined, duplicate: also initial states)

CandidateStatus::

    new ──► promoted | rejected | archived;   promoted | rejected ──► archived

OperationStatus and OperationOutcome, for OperationRun (they change together: :func:`complete`)::

    queued ──► running ──► completed
    pending ──► succeeded | partially_succeeded | failed | cancelled    (only when completed)

ProcessingRunStatus, for ProcessingRun (follows its Dagster run)::

    pending ──► running ──► completed | failed | cancelled
       └──────────────────► completed | failed | cancelled   (a run first seen finished)

The observation results (``queries.results`` says what each state means). ObservationResult has
two status columns, so its transitions name the column: ``transition(result, new, field=FULFILLMENT)``.

RequestStatus, for ObservationRequest::

    active ──► completed | canceled

FulfillmentStatus, ObservationResult.fulfillment_status (``fulfillment_note`` keeps the last reason
given; ``fulfilled_on`` is stamped on fulfilled)::

    pending_dispatch ─► dispatched ─► partially_fulfilled ─► fulfilled
           └────────────────┴──────────────┴──► canceled

DataProductStatus, ObservationResult.data_product_status (``status_reason``)::

    PENDING ─► BUILDING | SKIPPED
    BUILDING ─► READY | STALE | BLOCKED | FAILED | SKIPPED | PENDING
    READY ─► STALE | SKIPPED | BUILDING            (BUILDING: a rebuild asked for by hand)
    STALE ─► BUILDING | SKIPPED
    BLOCKED, FAILED ─► BUILDING | STALE | PENDING | SKIPPED

TaskState, ObservationTask.state (leaving for an end stamps ``finished_at`` and records ``error``)::

    dispatched ──► observed ──► succeeded | failed
        └──► canceled

ResultProcessingRunStatus, for ObservationResultProcessingRun (its end stamps ``finished_at``, ``error``)::

    running ──► succeeded | blocked | failed | skipped | abandoned

The observatory domain (what the operations API records; ``status_reason`` says why)::

    ExecutedObsUnitStatus:  started ──► succeeded | failed | aborted
    PackageStatus:          building ──► complete      (only when every file arrived and was verified)
    RegisteredFileStatus:   registered ──► arrived | mismatched | missing;   missing ──► arrived | mismatched
    StagingStatus:          requested ──► staging ──► completed | failed | cancelled;
                            requested ──► cancelled | failed

The detection domain (real/bogus scoring and its human vetting).

ModelRunStatus, for ModelRun (``error_message`` says why it failed)::

    pending ──► running ──► completed | failed ──► pending
                                               (a retry after a failure, a re-score of the same version)

    pending    -> running
    running    -> completed | failed        (failed too when a new attempt finds it abandoned)
    completed  -> pending                   (a re-score: the candidates changed, or scoring is asked for again)
    failed     -> pending                   (a retry)

``completed -> pending`` is this platform's addition: a run is one row per (model version, observation), so
scoring the same version again (after a re-difference made new candidates) restarts that row; its detections
are replaced in place when it completes.

DetectionStatus, for Detection (no reason field: the verdict is ``is_validated``, ``human_label``,
``validation_confidence``)::

    pending ──► validating ──► validated | rejected;   validated ──► confirmed
                    │  ▲
                    │  └── rejected | validated      (a second opinion)
                    └──► pending                     (a reviewer's lease that lapsed)
    validated ──► rejected                           (the verdict overturned)
    pending, validated, rejected, confirmed ──► archived   (archived is terminal)

    pending     -> validating | archived
    validating  -> validated | rejected | pending      (pending: a reviewer's lease that lapsed)
    validated   -> confirmed | rejected | archived | validating
    rejected    -> validating | archived              (validating: a second opinion)
    confirmed   -> archived
    archived    (terminal)

``validated -> validating`` is this platform's addition: a second opinion on a validated detection before it
is confirmed, as ``rejected -> validating`` gives one on a rejected detection. Without it a reviewer who
doubts a validated detection could only reject it outright; with it the doubt is a review like any other, and
the new verdict replaces the label (``is_validated`` stays True: a verdict was recorded).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.observations import (
    Candidate,
    CandidateStatus,
    DifferenceRun,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    RunStatus,
)
from dagster_project.catalog.schema.detection import Detection, DetectionStatus, ModelRun, ModelRunStatus
from dagster_project.catalog.schema.observatory import (
    ExecutedObsUnit,
    ExecutedObsUnitStatus,
    PackageStatus,
    RawDataPackage,
    RegisteredFileStatus,
    RegisteredRawFile,
    StagingRequest,
    StagingStatus,
)
from dagster_project.catalog.schema.operations import (
    OperationOutcome,
    OperationRun,
    OperationStatus,
    ProcessingRun,
    ProcessingRunStatus,
)
from dagster_project.catalog.schema.results import (
    DataProductStatus,
    FulfillmentStatus,
    ObservationRequest,
    ObservationResult,
    ObservationResultProcessingRun,
    ObservationTask,
    RequestStatus,
    ResultProcessingRunStatus,
    TaskState,
)

O, R, F, C = ObservationStatus, RunStatus, RawFileStatus, CandidateStatus

_ARCHIVE = frozenset({O.ARCHIVED})
OBSERVATION_TRANSITIONS: dict[ObservationStatus, frozenset[ObservationStatus]] = {
    O.INGESTED: frozenset({O.PREPROCESSING}) | _ARCHIVE,
    O.PREPROCESSING: frozenset({O.PREPROCESSED, O.FAILED, O.BLOCKED}) | _ARCHIVE,
    O.PREPROCESSED: frozenset({O.DIFFERENCING, O.PREPROCESSING}) | _ARCHIVE,
    O.DIFFERENCING: frozenset({O.DIFFERENCED, O.FAILED, O.BLOCKED}) | _ARCHIVE,
    O.DIFFERENCED: frozenset({O.DIFFERENCING, O.PREPROCESSING}) | _ARCHIVE,
    O.FAILED: frozenset({O.PREPROCESSING, O.DIFFERENCING}) | _ARCHIVE,
    O.BLOCKED: frozenset({O.PREPROCESSING, O.DIFFERENCING}) | _ARCHIVE,
    O.ARCHIVED: frozenset(),
}

RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    R.PENDING: frozenset({R.RUNNING, R.BLOCKED, R.SKIPPED}),
    R.RUNNING: frozenset({R.COMPLETED, R.FAILED, R.BLOCKED, R.SKIPPED}),
    R.COMPLETED: frozenset({R.PENDING}),
    R.FAILED: frozenset({R.PENDING}),
    R.BLOCKED: frozenset({R.PENDING}),
    R.SKIPPED: frozenset({R.PENDING}),
}

RAW_FILE_TRANSITIONS: dict[RawFileStatus, frozenset[RawFileStatus]] = {
    F.ACCEPTED: frozenset({F.SUPERSEDED, F.QUARANTINED}),
    F.QUARANTINED: frozenset(),
    F.DUPLICATE: frozenset(),
    F.SUPERSEDED: frozenset(),
}

CANDIDATE_TRANSITIONS: dict[CandidateStatus, frozenset[CandidateStatus]] = {
    C.NEW: frozenset({C.PROMOTED, C.REJECTED, C.ARCHIVED}),
    C.PROMOTED: frozenset({C.ARCHIVED}),
    C.REJECTED: frozenset({C.ARCHIVED}),
    C.ARCHIVED: frozenset(),
}

#: what a transition records besides the new status: (entity, new status, reason, now) -> None
Effect = Callable[[Any, Enum, str | None, datetime], None]


@dataclass(frozen=True)
class Machine:
    """The state machine of one status column of one entity class."""

    enum: type[Enum]
    table: Mapping[Enum, frozenset[Enum]]
    #: the attribute a reason is recorded in (set, or cleared when None); None: passing a reason is an error
    reason_field: str | None = None
    #: the status column
    field: str = "status"
    #: instead of recording the reason as above: what the transition records (reason, timestamps)
    effect: Effect | None = None


#: (entity class, status column) -> its machine; :func:`machine_for` looks them up
_MACHINES: dict[tuple[type, str], Machine] = {}


def register(model: type, machine: Machine) -> None:
    """Make ``machine`` the one that changes ``model``'s column ``machine.field``."""
    _MACHINES[(model, machine.field)] = machine


def machines() -> dict[tuple[type, str], Machine]:
    """Every registered machine, by (entity class, status column)."""
    return dict(_MACHINES)


register(Observation, Machine(ObservationStatus, OBSERVATION_TRANSITIONS, "status_reason"))
register(RawDataFile, Machine(RawFileStatus, RAW_FILE_TRANSITIONS, "quarantine_reason"))
register(PreprocessRun, Machine(RunStatus, RUN_TRANSITIONS, "error_message"))
register(DifferenceRun, Machine(RunStatus, RUN_TRANSITIONS, "error_message"))
register(Candidate, Machine(CandidateStatus, CANDIDATE_TRANSITIONS))


class IllegalTransition(ValueError):
    """A status change the entity's state machine does not allow."""

    def __init__(self, entity: Any, from_status: Enum | None, to_status: Enum, field: str = "status") -> None:
        self.entity, self.from_status, self.to_status = entity, from_status, to_status
        before = None if from_status is None else from_status.value
        super().__init__(f"{entity!r}: illegal {field} transition {before!r} -> {to_status.value!r}")


def machine_for(entity: Any, field: str | None = None) -> Machine:
    """The machine of ``entity``'s status column ``field`` (None: its only one); TypeError when there is none."""
    model = type(entity)
    if field is not None:
        found = _MACHINES.get((model, field))
        if found is None:
            raise TypeError(f"{model.__name__}.{field} has no state machine")
        return found
    found = [m for (cls, _), m in _MACHINES.items() if cls is model]
    if not found:
        raise TypeError(f"{model.__name__} has no status state machine")
    if len(found) > 1:
        raise TypeError(f"{model.__name__} has {len(found)} status columns "
                        f"({', '.join(m.field for m in found)}): name one with field=")
    return found[0]


def check_transition(entity: Any, new_status: Enum, *, reason: str | None = None,
                     field: str | None = None) -> Machine:
    """Raise what :func:`transition` would raise, changing nothing; returns the column's machine.

    Lets a caller that moves two entities together (a run and its observation)
    check both before touching either.
    """
    machine = machine_for(entity, field)
    name = type(entity).__name__
    if not isinstance(new_status, machine.enum):
        raise TypeError(f"{name} {machine.field} must be a {machine.enum.__name__}, not {new_status!r}")
    if machine.reason_field is None and reason is not None:
        raise TypeError(f"{name} has no field to record a reason for its {machine.field} in")
    value = getattr(entity, machine.field)
    current = None if value is None else machine.enum(value)
    if current is None or new_status not in machine.table[current]:
        raise IllegalTransition(entity, current, new_status, machine.field)
    return machine


def transition(entity: Any, new_status: Enum, *, reason: str | None = None, field: str | None = None,
               now: datetime | None = None) -> None:
    """Move ``entity`` to ``new_status`` or raise :class:`IllegalTransition`, leaving it untouched.

    ``field`` names the status column of an entity that has several (ObservationResult:
    :data:`FULFILLMENT`, :data:`PRODUCTS`); the others have one. ``reason`` is recorded in
    the entity's reason field (Observation.status_reason, run error_message,
    RawDataFile.quarantine_reason, ObservationResult.status_reason for its products) and
    clears it when None, so a stale failure message never outlives the state it explained.
    A few machines record more, or otherwise (their :attr:`Machine.effect`): a result's
    fulfillment keeps its last note and stamps ``fulfilled_on``, a task's or a result
    processing run's end stamps ``finished_at`` (``now``, default the current time) and
    records the reason as its ``error``. Candidates and requests have no reason field:
    passing one is an error.
    """
    machine = check_transition(entity, new_status, reason=reason, field=field)
    setattr(entity, machine.field, new_status)
    if machine.effect is not None:
        machine.effect(entity, new_status, reason, utcnow() if now is None else now)
    elif machine.reason_field is not None:
        setattr(entity, machine.reason_field, reason)


# --- the operations ledger and provenance ---------------------------------------------------------------------------

OS, OO, P = OperationStatus, OperationOutcome, ProcessingRunStatus

OPERATION_TRANSITIONS: dict[OperationStatus, frozenset[OperationStatus]] = {
    OS.QUEUED: frozenset({OS.RUNNING}),
    OS.RUNNING: frozenset({OS.COMPLETED}),
    OS.COMPLETED: frozenset(),
}

OPERATION_OUTCOME_TRANSITIONS: dict[OperationOutcome, frozenset[OperationOutcome]] = {
    OO.PENDING: frozenset({OO.SUCCEEDED, OO.PARTIALLY_SUCCEEDED, OO.FAILED, OO.CANCELLED}),
    OO.SUCCEEDED: frozenset(),
    OO.PARTIALLY_SUCCEEDED: frozenset(),
    OO.FAILED: frozenset(),
    OO.CANCELLED: frozenset(),
}

_RUN_ENDS = frozenset({P.COMPLETED, P.FAILED, P.CANCELLED})
PROCESSING_RUN_TRANSITIONS: dict[ProcessingRunStatus, frozenset[ProcessingRunStatus]] = {
    P.PENDING: frozenset({P.RUNNING}) | _RUN_ENDS,
    P.RUNNING: _RUN_ENDS,
    P.COMPLETED: frozenset(),
    P.FAILED: frozenset(),
    P.CANCELLED: frozenset(),
}

register(OperationRun, Machine(OperationStatus, OPERATION_TRANSITIONS))
register(ProcessingRun, Machine(ProcessingRunStatus, PROCESSING_RUN_TRANSITIONS))


def complete(operation: OperationRun, outcome: OperationOutcome) -> None:
    """running → completed with its final ``outcome``: both change, or neither (and it raises)."""
    current = None if operation.outcome is None else OperationOutcome(operation.outcome)
    if not isinstance(outcome, OperationOutcome):
        raise TypeError(f"an operation's outcome must be an OperationOutcome, not {outcome!r}")
    if current is None or outcome not in OPERATION_OUTCOME_TRANSITIONS[current]:
        raise IllegalTransition(operation, current, outcome, field="outcome")
    transition(operation, OperationStatus.COMPLETED)
    operation.outcome = outcome


# --- observation requests and results -------------------------------------------------------------------------------

RS, FS, DP, TS, PS = RequestStatus, FulfillmentStatus, DataProductStatus, TaskState, ResultProcessingRunStatus

#: ObservationResult's two status columns, for ``transition(result, ..., field=...)``
FULFILLMENT, PRODUCTS = "fulfillment_status", "data_product_status"

REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RS.ACTIVE: frozenset({RS.COMPLETED, RS.CANCELED}),
    RS.COMPLETED: frozenset(),
    RS.CANCELED: frozenset(),
}

FULFILLMENT_TRANSITIONS: dict[FulfillmentStatus, frozenset[FulfillmentStatus]] = {
    FS.PENDING_DISPATCH: frozenset({FS.DISPATCHED, FS.CANCELED}),
    FS.DISPATCHED: frozenset({FS.PARTIALLY_FULFILLED, FS.CANCELED}),
    FS.PARTIALLY_FULFILLED: frozenset({FS.FULFILLED, FS.CANCELED}),
    FS.FULFILLED: frozenset(),
    FS.CANCELED: frozenset(),
}

PRODUCT_TRANSITIONS: dict[DataProductStatus, frozenset[DataProductStatus]] = {
    DP.PENDING: frozenset({DP.BUILDING, DP.SKIPPED}),
    DP.BUILDING: frozenset({DP.READY, DP.STALE, DP.BLOCKED, DP.FAILED, DP.SKIPPED, DP.PENDING}),
    DP.READY: frozenset({DP.STALE, DP.SKIPPED, DP.BUILDING}),  # BUILDING: a rebuild asked for by hand
    DP.STALE: frozenset({DP.BUILDING, DP.SKIPPED}),
    DP.BLOCKED: frozenset({DP.BUILDING, DP.STALE, DP.PENDING, DP.SKIPPED}),
    DP.FAILED: frozenset({DP.BUILDING, DP.STALE, DP.PENDING, DP.SKIPPED}),
    DP.SKIPPED: frozenset(),
}

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TS.DISPATCHED: frozenset({TS.OBSERVED, TS.CANCELED}),
    TS.OBSERVED: frozenset({TS.SUCCEEDED, TS.FAILED}),
    TS.SUCCEEDED: frozenset(),
    TS.FAILED: frozenset(),
    TS.CANCELED: frozenset(),
}

RESULT_PROCESSING_RUN_TRANSITIONS: dict[ResultProcessingRunStatus, frozenset[ResultProcessingRunStatus]] = {
    PS.RUNNING: frozenset({PS.SUCCEEDED, PS.BLOCKED, PS.FAILED, PS.SKIPPED, PS.ABANDONED}),
    **{s: frozenset() for s in PS if s is not PS.RUNNING},
}


def _fulfillment_recorded(result: ObservationResult, new: FulfillmentStatus, reason: str | None,
                          now: datetime) -> None:
    """The note is the last reason given (a transition without one keeps it); fulfilled stamps ``fulfilled_on``."""
    if reason is not None:
        result.fulfillment_note = reason
    if new is FS.FULFILLED:
        result.fulfilled_on = now


def _task_recorded(task: ObservationTask, new: TaskState, reason: str | None, now: datetime) -> None:
    """Every state but observed ends the task: when, and the error (the reason) if any."""
    if new is not TS.OBSERVED:
        task.finished_at, task.error = now, reason


def _run_end_recorded(run: ObservationResultProcessingRun, new: ResultProcessingRunStatus, reason: str | None,
                      now: datetime) -> None:
    run.finished_at, run.error = now, reason


register(ObservationRequest, Machine(RequestStatus, REQUEST_TRANSITIONS))
register(ObservationResult, Machine(FulfillmentStatus, FULFILLMENT_TRANSITIONS, "fulfillment_note", FULFILLMENT,
                                    _fulfillment_recorded))
register(ObservationResult, Machine(DataProductStatus, PRODUCT_TRANSITIONS, "status_reason", PRODUCTS))
register(ObservationTask, Machine(TaskState, TASK_TRANSITIONS, "error", "state", _task_recorded))
register(ObservationResultProcessingRun, Machine(ResultProcessingRunStatus, RESULT_PROCESSING_RUN_TRANSITIONS,
                                                 "error", effect=_run_end_recorded))


# --- the observatory domain -----------------------------------------------------------------------------------------

EU, PK, RF = ExecutedObsUnitStatus, PackageStatus, RegisteredFileStatus

EXECUTED_OBS_UNIT_TRANSITIONS: dict[ExecutedObsUnitStatus, frozenset[ExecutedObsUnitStatus]] = {
    EU.STARTED: frozenset({EU.SUCCEEDED, EU.FAILED, EU.ABORTED}),
    **{s: frozenset() for s in EU if s is not EU.STARTED},
}

PACKAGE_TRANSITIONS: dict[PackageStatus, frozenset[PackageStatus]] = {
    PK.BUILDING: frozenset({PK.COMPLETE}),
    PK.COMPLETE: frozenset(),
}

_LANDED = frozenset({RF.ARRIVED, RF.MISMATCHED})
REGISTERED_FILE_TRANSITIONS: dict[RegisteredFileStatus, frozenset[RegisteredFileStatus]] = {
    RF.REGISTERED: _LANDED | {RF.MISSING},
    RF.MISSING: _LANDED,
    RF.ARRIVED: frozenset(),
    RF.MISMATCHED: frozenset(),
}

ST = StagingStatus
_STAGING_ENDS = frozenset({ST.COMPLETED, ST.FAILED, ST.CANCELLED})
STAGING_TRANSITIONS: dict[StagingStatus, frozenset[StagingStatus]] = {
    ST.REQUESTED: frozenset({ST.STAGING, ST.CANCELLED, ST.FAILED}),
    ST.STAGING: _STAGING_ENDS,
    **{s: frozenset() for s in _STAGING_ENDS},
}

register(StagingRequest, Machine(StagingStatus, STAGING_TRANSITIONS, "status_reason"))
register(ExecutedObsUnit, Machine(ExecutedObsUnitStatus, EXECUTED_OBS_UNIT_TRANSITIONS, "status_reason"))
register(RawDataPackage, Machine(PackageStatus, PACKAGE_TRANSITIONS))
register(RegisteredRawFile, Machine(RegisteredFileStatus, REGISTERED_FILE_TRANSITIONS, "status_reason"))


# --- the detection domain -------------------------------------------------------------------------------------------

MR, D = ModelRunStatus, DetectionStatus

MODEL_RUN_TRANSITIONS: dict[ModelRunStatus, frozenset[ModelRunStatus]] = {
    MR.PENDING: frozenset({MR.RUNNING}),
    MR.RUNNING: frozenset({MR.COMPLETED, MR.FAILED}),
    MR.COMPLETED: frozenset({MR.PENDING}),
    MR.FAILED: frozenset({MR.PENDING}),
}

DETECTION_TRANSITIONS: dict[DetectionStatus, frozenset[DetectionStatus]] = {
    D.PENDING: frozenset({D.VALIDATING, D.ARCHIVED}),
    D.VALIDATING: frozenset({D.VALIDATED, D.REJECTED, D.PENDING}),
    D.VALIDATED: frozenset({D.CONFIRMED, D.REJECTED, D.ARCHIVED, D.VALIDATING}),
    D.REJECTED: frozenset({D.VALIDATING, D.ARCHIVED}),
    D.CONFIRMED: frozenset({D.ARCHIVED}),
    D.ARCHIVED: frozenset(),
}

register(ModelRun, Machine(ModelRunStatus, MODEL_RUN_TRANSITIONS, "error_message"))
register(Detection, Machine(DetectionStatus, DETECTION_TRANSITIONS))
