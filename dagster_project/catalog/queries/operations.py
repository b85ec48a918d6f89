"""The operations ledger: one OperationRun per long-running operation, and who started it.

Its tables, :class:`~dagster_project.catalog.models_operations.OperationRun` and
:class:`~dagster_project.catalog.models_operations.Operator`, are in
:mod:`~dagster_project.catalog.models_operations`; this module records and reads them.

Adapted from the unified operation-runs model (``shared/seeds/operation-runs-data-model.txt``):
the seed's tenant is our :class:`~dagster_project.catalog.models.Survey` (``survey_id``), its
user is an ``Operator`` — the person or system that started the operation — with
``initiator_name`` a snapshot of the name ("System" for sensors and the daemon).

* ``status``: queued → running → completed; ``outcome``: pending until completed, then
  succeeded, partially_succeeded, failed or cancelled. Both change only through
  :mod:`~dagster_project.catalog.states`; the database checks that they agree.
* ``run_identity_hash`` is unique per survey while the operation is queued or running
  (a partial unique index, on SQLite and PostgreSQL): :func:`start_operation` returns the
  active operation instead of starting a duplicate, also when starters race.
* ``summary_counts`` ({total, success, failed, skipped}) and ``failure_summary``
  ([{code, message, count}], messages sanitized) are kept up to date while it runs.
* ``context`` links it to Dagster: ``backfill_id``, ``dagster_run_ids``, the selection, etc.

Like :mod:`~dagster_project.catalog.queries`, every function takes a session first,
flushes but never commits, and re-reads the row locked for update before changing it.
"""

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dagster_project.catalog import states
from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.observations import (
    Observation,
    ObservationStatus,
    PreprocessRun,
    RunStatus,
    Survey,
)
from dagster_project.catalog.schema.operations import (
    ACTIVE,
    OperationOutcome,
    OperationRun,
    OperationStatus,
    OperationType,
    Operator,
)

#: initiator_name of operations nobody in particular started (sensors, the daemon)
SYSTEM = "System"
COUNT_KEYS = ("total", "success", "failed", "skipped")
#: distinct failure entries kept per operation; further ones are folded into one "other" entry
MAX_FAILURE_ENTRIES = 20
MAX_MESSAGE_CHARS = 200


class OperationActive(RuntimeError):
    """The operation asked for is already running (under another owner)."""

    def __init__(self, operation: OperationRun, detail: str = "") -> None:
        self.operation_id = operation.id
        super().__init__(f"operation #{operation.id} ({operation.type}) is already {operation.status}{detail}")


# --- sanitizing what goes into failure_summary ---------------------------------------------------------------------

_TRACEBACK = "Traceback (most recent call last):"
_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@]+@", re.I)
_SECRET = re.compile(r"\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization|credentials?)"
                     r"(\s*[=:]\s*)(bearer\s+)?[^\s,;]+", re.I)
# absolute, home or dot-relative paths (not a URL's //host/...), and relative ones ending in a file name
_PATH = re.compile(r"(?<![\w<:/])(?:~|\.{1,2})?/[^\s\"'(),;]*|\b[\w.-]+(?:/[\w.-]+)*/[\w-]+\.[A-Za-z]\w*\b")
_HEX = re.compile(r"\b[0-9a-fA-F]{16,}\b")
_CODE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def sanitize_message(message: str) -> str:
    """One short line fit for failure_summary: no traceback, paths, credentials or long hashes.

    The first line of the message; for a traceback, its last line (the exception itself).
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    line = (lines[-1] if lines[0].startswith(_TRACEBACK) else lines[0]) if lines else ""
    text = _URL_CREDENTIALS.sub(r"\1<redacted>@", line)
    text = _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    text = _PATH.sub("<path>", text)
    text = _HEX.sub("<hash>", text)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 1] + "…"
    return text or "(no message)"


# --- identity ---------------------------------------------------------------------------------------------------------

def run_identity_hash(operation_type: OperationType, identity: Mapping[str, Any]) -> str:
    """Deterministic sha256 of the operation's type and what makes it the same operation."""
    canonical = json.dumps({"type": str(operation_type), "identity": identity}, sort_keys=True, default=str,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def get_or_create_operator(session: Session, name: str) -> Operator:
    """The operator called ``name``, created if new (concurrent creators are fine: one row wins)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    session.execute(insert(Operator).values(id=uuid.uuid4(), name=name, created_at=now, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(sa.select(Operator).where(Operator.name == name)).one()


# --- lifecycle ----------------------------------------------------------------------------------------------------

def _locked(session: Session, operation: OperationRun | int) -> OperationRun:
    """The operation as it is now, locked for update on PostgreSQL (SQLite: the transaction holds the lock)."""
    operation_id = operation if isinstance(operation, int) else operation.id
    session.flush()
    found = session.get(OperationRun, operation_id, populate_existing=True, with_for_update=True)
    if found is None:
        raise LookupError(f"no operation #{operation_id}")
    return found


def _active(session: Session, survey_id: uuid.UUID, identity_hash: str) -> OperationRun | None:
    return session.scalar(sa.select(OperationRun).where(
        OperationRun.survey_id == survey_id, OperationRun.run_identity_hash == identity_hash,
        OperationRun.status.in_(ACTIVE)))


def find_operation(session: Session, *, survey: Survey, operation_type: OperationType,
                   identity: Mapping[str, Any]) -> OperationRun | None:
    """The newest operation of this type and identity in the survey, whatever its status (None: none)."""
    return session.scalar(sa.select(OperationRun).where(
        OperationRun.survey_id == survey.id,
        OperationRun.run_identity_hash == run_identity_hash(OperationType(operation_type), identity))
        .order_by(OperationRun.id.desc()).limit(1))


def start_operation(session: Session, *, survey: Survey, operation_type: OperationType,
                    identity: Mapping[str, Any], initiator: str | None = None,
                    context: Mapping[str, Any] | None = None) -> tuple[OperationRun, bool]:
    """Queue a new operation; or, if one with the same identity is queued or running, return that.

    Returns ``(operation, created)``. ``initiator``: the person's name, None for the
    system. Two starters racing on PostgreSQL both try the INSERT; the partial
    unique index lets one through and the other reads the winner's row.
    """
    operation_type = OperationType(operation_type)
    identity_hash = run_identity_hash(operation_type, identity)
    operator = None if initiator is None else get_or_create_operator(session, initiator)
    for _ in range(3):  # the winner could complete between our failed INSERT and the SELECT
        active = _active(session, survey.id, identity_hash)
        if active is not None:
            return active, False
        operation = OperationRun(
            survey_id=survey.id, operator=operator, initiator_name=initiator or SYSTEM, type=operation_type.value,
            status=OperationStatus.QUEUED, outcome=OperationOutcome.PENDING, run_identity_hash=identity_hash,
            summary_counts=dict.fromkeys(COUNT_KEYS, 0), failure_summary=[], context=dict(context or {}))
        try:
            with session.begin_nested():
                session.add(operation)
            return operation, True
        except IntegrityError:
            continue  # a concurrent starter's row won the index (the savepoint dropped ours): read it
    raise RuntimeError(f"could not start or find the active {operation_type} operation {identity_hash[:12]}")


def mark_running(session: Session, operation: OperationRun | int, started_at: datetime | None = None) -> OperationRun:
    """queued → running."""
    operation = _locked(session, operation)
    states.transition(operation, OperationStatus.RUNNING)
    operation.started_at = started_at or utcnow()
    session.flush()
    return operation


def _require_active(operation: OperationRun, what: str) -> None:
    if not operation.is_active:
        raise ValueError(f"{operation!r} is completed: its {what} are final")


def record_progress(session: Session, operation: OperationRun | int, **counts: int) -> OperationRun:
    """Set some of the counts (total, success, failed, skipped) of a queued or running operation."""
    unknown = set(counts) - set(COUNT_KEYS)
    if unknown:
        raise TypeError(f"summary_counts has no {sorted(unknown)} (only {', '.join(COUNT_KEYS)})")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in counts.values()):
        raise ValueError(f"counts must be non-negative integers, got {counts}")
    operation = _locked(session, operation)
    _require_active(operation, "counts")
    merged = {**dict.fromkeys(COUNT_KEYS, 0), **(operation.summary_counts or {}), **counts}
    if merged["success"] + merged["failed"] + merged["skipped"] > merged["total"]:
        raise ValueError(f"success + failed + skipped exceed total in {merged}")
    operation.summary_counts = merged
    session.flush()
    return operation


def record_failure(session: Session, operation: OperationRun | int, code: str, message: str,
                   count: int = 1) -> OperationRun:
    """Add ``count`` occurrences of a sanitized error to the operation's failure_summary.

    ``code`` is a stable dotted name (``step.psf_error``, ``run.canceled``); the same code
    and (sanitized) message are counted in one entry.
    """
    if not _CODE.match(code):
        raise ValueError(f"failure code {code!r} is not a dotted lower-case name like 'run.canceled'")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    operation = _locked(session, operation)
    _require_active(operation, "failures")
    entries = [dict(e) for e in operation.failure_summary or []]
    message = sanitize_message(message)
    match = next((e for e in entries if (e["code"], e["message"]) == (code, message)), None)
    if match is None and len(entries) >= MAX_FAILURE_ENTRIES:
        code, message = "other", "further distinct errors"
        match = next((e for e in entries if e["code"] == code), None)
    if match is None:
        entries.append({"code": code, "message": message, "count": count})
    else:
        match["count"] += count
    operation.failure_summary = entries
    session.flush()
    return operation


def update_context(session: Session, operation: OperationRun | int, **entries: Any) -> OperationRun:
    """Merge ``entries`` into the operation's context (allowed after completion too: links found later)."""
    operation = _locked(session, operation)
    operation.context = {**(operation.context or {}), **entries}
    session.flush()
    return operation


def outcome_from(counts: Mapping[str, int], failures: Sequence[Mapping[str, Any]] = ()) -> OperationOutcome:
    """succeeded when nothing failed; failed when nothing succeeded but something failed; else partially."""
    failed = counts.get("failed", 0) > 0 or bool(failures)
    if not failed:
        return OperationOutcome.SUCCEEDED
    return OperationOutcome.PARTIALLY_SUCCEEDED if counts.get("success", 0) > 0 else OperationOutcome.FAILED


def complete_operation(session: Session, operation: OperationRun | int,
                       outcome: OperationOutcome | None = None) -> OperationRun:
    """running → completed with ``outcome`` (by default derived from the counts and failures)."""
    operation = _locked(session, operation)
    if outcome is None:
        outcome = outcome_from(operation.summary_counts or {}, operation.failure_summary or [])
    states.complete(operation, OperationOutcome(outcome))
    operation.completed_at = utcnow()
    session.flush()
    return operation


# --- queries --------------------------------------------------------------------------------------------------------

def operation_exists(session: Session, operation_id: int) -> bool:
    """Whether this catalog has operation #``operation_id``."""
    return session.get(OperationRun, operation_id) is not None


def get_operation(session: Session, operation_id: int) -> OperationRun:
    operation = session.get(OperationRun, operation_id)
    if operation is None:
        raise LookupError(f"no operation #{operation_id}")
    return operation


def list_operations(session: Session, *, survey: Survey | None = None, operation_type: OperationType | None = None,
                    status: OperationStatus | None = None, limit: int = 50) -> list[OperationRun]:
    """The newest operations first, filtered by survey, type and status."""
    stmt = sa.select(OperationRun).order_by(OperationRun.created_at.desc(), OperationRun.id.desc()).limit(limit)
    for column, value in ((OperationRun.survey_id, survey.id if survey else None),
                          (OperationRun.type, operation_type), (OperationRun.status, status)):
        if value is not None:
            stmt = stmt.where(column == value)
    return list(session.scalars(stmt))


def active_operations(session: Session) -> list[OperationRun]:
    """Queued and running operations, oldest first (what the ledger sensor keeps true)."""
    return list(session.scalars(sa.select(OperationRun).where(OperationRun.status.in_(ACTIVE))
                                .order_by(OperationRun.id)))


# --- choosing what a backfill runs ------------------------------------------------------------------------------------

#: --status value meaning "no calibration attempt ever"
NEVER_PROCESSED = "never-processed"
#: --status value meaning "not differenced yet, whatever the reason": waiting, interrupted, failed or blocked
UNFINISHED = "unfinished"
#: the observation statuses UNFINISHED stands for: every state but differenced (done) and archived (replaced);
#: an observation a killed run left behind stays ingested, preprocessing, preprocessed or differencing
UNFINISHED_STATUSES = tuple(s for s in ObservationStatus
                            if s not in (ObservationStatus.DIFFERENCED, ObservationStatus.ARCHIVED))
BACKFILL_STATUSES = (NEVER_PROCESSED, UNFINISHED,
                     *(s.value for s in ObservationStatus if s is not ObservationStatus.ARCHIVED))


def observations_for_backfill(session: Session, *, field_name: str | None = None, filter_band: str | None = None,
                              night_from: str | None = None, night_to: str | None = None,
                              statuses: Iterable[str] = (), calibrated_only: bool = False) -> list[sa.Row]:
    """Observations to (re)process, in time order; archived ones (their raw file was replaced) never: rows of
    their ``observation_id``, ``field_name``, ``filter_band``, ``night`` and ``status`` (what a backfill lists and
    launches; no ORM objects, which took most of a 100,000-observation dry run).

    ``statuses``: observation statuses, ``never-processed`` and/or ``unfinished`` (every status but
    differenced: :data:`UNFINISHED_STATUSES`); any of them; none: all.
    ``calibrated_only``: only those with a completed calibration, which differencing needs.
    Nights are ``YYYY-MM-DD`` and inclusive.
    """
    stmt = (sa.select(Observation.observation_id, Observation.field_name, Observation.filter_band, Observation.night,
                      Observation.status)
            .outerjoin(PreprocessRun, PreprocessRun.observation_id == Observation.id)
            .where(Observation.status != ObservationStatus.ARCHIVED)
            .order_by(Observation.observation_time, Observation.observation_id))
    if field_name is not None:
        stmt = stmt.where(Observation.field_name == field_name)
    if filter_band is not None:
        stmt = stmt.where(Observation.filter_band == filter_band)
    if night_from is not None:  # 'YYYY-MM-DD' sorts chronologically
        stmt = stmt.where(Observation.night >= night_from)
    if night_to is not None:
        stmt = stmt.where(Observation.night <= night_to)
    statuses = set(statuses)
    unknown = statuses - set(BACKFILL_STATUSES)
    if unknown:
        raise ValueError(f"unknown status {sorted(unknown)}: choose from {', '.join(BACKFILL_STATUSES)}")
    if statuses:
        wanted = [PreprocessRun.id.is_(None)] if NEVER_PROCESSED in statuses else []
        observation_statuses = {ObservationStatus(s) for s in statuses - {NEVER_PROCESSED, UNFINISHED}}
        if UNFINISHED in statuses:
            observation_statuses |= set(UNFINISHED_STATUSES)
        if observation_statuses := sorted(observation_statuses):
            wanted.append(Observation.status.in_(observation_statuses))
        stmt = stmt.where(sa.or_(*wanted))
    if calibrated_only:
        stmt = stmt.where(PreprocessRun.status == RunStatus.COMPLETED)
    return list(session.execute(stmt))
