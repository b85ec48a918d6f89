"""Every status change in the catalog goes through :func:`transition`.

Nothing else assigns ``.status``; the lifecycle functions in ``queries`` call
this. A transition not in the tables below raises :class:`IllegalTransition`
and leaves the entity untouched. Staying in the same state is a transition
too, and none of the tables allows one.

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
"""

from enum import Enum
from typing import Any

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
from dagster_project.catalog.schema.operations import (
    OperationOutcome,
    OperationRun,
    OperationStatus,
    ProcessingRun,
    ProcessingRunStatus,
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

#: entity class -> (its status enum, its transition table, the attribute recording why; None: none)
_MACHINES: dict[type, tuple[type[Enum], dict, str | None]] = {
    Observation: (ObservationStatus, OBSERVATION_TRANSITIONS, "status_reason"),
    RawDataFile: (RawFileStatus, RAW_FILE_TRANSITIONS, "quarantine_reason"),
    PreprocessRun: (RunStatus, RUN_TRANSITIONS, "error_message"),
    DifferenceRun: (RunStatus, RUN_TRANSITIONS, "error_message"),
    Candidate: (CandidateStatus, CANDIDATE_TRANSITIONS, None),
}


class IllegalTransition(ValueError):
    """A status change the entity's state machine does not allow."""

    def __init__(self, entity: Any, from_status: Enum | None, to_status: Enum, field: str = "status") -> None:
        self.entity, self.from_status, self.to_status = entity, from_status, to_status
        before = None if from_status is None else from_status.value
        super().__init__(f"{entity!r}: illegal {field} transition {before!r} -> {to_status.value!r}")


def check_transition(entity: Any, new_status: Enum, *, reason: str | None = None) -> str | None:
    """Raise what :func:`transition` would raise, changing nothing; returns the entity's reason field.

    Lets a caller that moves two entities together (a run and its observation)
    check both before touching either.
    """
    try:
        status_enum, table, reason_field = _MACHINES[type(entity)]
    except KeyError:
        raise TypeError(f"{type(entity).__name__} has no status state machine") from None
    if not isinstance(new_status, status_enum):
        raise TypeError(f"{type(entity).__name__} status must be a {status_enum.__name__}, not {new_status!r}")
    if reason_field is None and reason is not None:
        raise TypeError(f"{type(entity).__name__} has no field to record a reason in")
    current = None if entity.status is None else status_enum(entity.status)
    if current is None or new_status not in table[current]:
        raise IllegalTransition(entity, current, new_status)
    return reason_field


def transition(entity: Any, new_status: Enum, *, reason: str | None = None) -> None:
    """Move ``entity`` to ``new_status`` or raise :class:`IllegalTransition`, leaving it untouched.

    ``reason`` is recorded in the entity's reason field (Observation.status_reason,
    run error_message, RawDataFile.quarantine_reason) and clears it when None, so
    a stale failure message never outlives the state it explained. Candidates
    have no reason field: passing one is an error.
    """
    reason_field = check_transition(entity, new_status, reason=reason)
    entity.status = new_status
    if reason_field is not None:
        setattr(entity, reason_field, reason)


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

_MACHINES[OperationRun] = (OperationStatus, OPERATION_TRANSITIONS, None)
_MACHINES[ProcessingRun] = (ProcessingRunStatus, PROCESSING_RUN_TRANSITIONS, None)


def complete(operation: OperationRun, outcome: OperationOutcome) -> None:
    """running → completed with its final ``outcome``: both change, or neither (and it raises)."""
    current = None if operation.outcome is None else OperationOutcome(operation.outcome)
    if not isinstance(outcome, OperationOutcome):
        raise TypeError(f"an operation's outcome must be an OperationOutcome, not {outcome!r}")
    if current is None or outcome not in OPERATION_OUTCOME_TRANSITIONS[current]:
        raise IllegalTransition(operation, current, outcome, field="outcome")
    transition(operation, OperationStatus.COMPLETED)
    operation.outcome = outcome
