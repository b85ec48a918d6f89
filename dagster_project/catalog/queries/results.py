"""Lifecycle of ObservationResults: expansion, fulfillment, and the revision-driven rebuild engine.

Two state machines, each changed only through :func:`~dagster_project.catalog.states.transition`
(``field=FULFILLMENT`` or ``field=PRODUCTS``; an illegal change raises :class:`IllegalTransition`);
their tables are in ``catalog/states.py``, with those of requests, tasks and processing runs.

Fulfillment (is the deliverable obtained?)::

    pending_dispatch ─► dispatched ─► partially_fulfilled ─► fulfilled
           └────────────────┴──────────────┴──► canceled

*partially_fulfilled* means: a frame for this cell has arrived and is registered,
but the deliverable — that frame reduced through its difference image and
candidates — does not exist yet (processing under way, blocked or failed).
*fulfilled* (with ``fulfilled_on``) means the deliverable exists.

Data products (are the products up to date?)::

    PENDING ─► BUILDING ─► READY ─► STALE ─► BUILDING ...
                  ├─► STALE   (revision moved during the build: it rebuilds)
                  ├─► BLOCKED (required upstream missing or failed)
                  ├─► FAILED  (error; retried with exponential backoff)
                  ├─► SKIPPED (nothing to build, e.g. canceled)
                  └─► PENDING / STALE (its Dagster run died: re-queued)

A *bump* (a contributing per-observation materialization) adds one to
``assets_revision`` on the locked row (no lost increments under concurrency),
marks the result dirty and pushes ``next_eligible_run_at`` to ``now + quiet``,
capped at ``dirty_since + max_delay``. Its status edges are those of
:data:`BUMP_EDGES`: READY, BLOCKED, FAILED → STALE (or PENDING if never built);
PENDING, STALE, BUILDING and SKIPPED stay as they are.
"""

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from dagster_project.catalog.healpix import angular_separation_deg
from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.observations import Observation, ObservationStatus, Survey
from dagster_project.catalog.schema.results import (
    CopiesMode,
    DataProductStatus,
    FulfillmentStatus,
    Instrument,
    ObservationRequest,
    ObservationResult,
    ObservationResultProcessingRun,
    ObservationResultProcessingRunOutput,
    ObservationTask,
    RequestStatus,
    ResultProcessingRunStatus,
    TaskState,
)
from dagster_project.catalog.queries.observations import NotFound
from dagster_project.catalog.states import FULFILLMENT, PRODUCTS, IllegalTransition, transition

FS, DP = FulfillmentStatus, DataProductStatus

#: status after a bump, for results built before / never built
BUMP_EDGES: dict[DataProductStatus, tuple[DataProductStatus, DataProductStatus]] = {
    DP.PENDING: (DP.PENDING, DP.PENDING),
    DP.BUILDING: (DP.BUILDING, DP.BUILDING),
    DP.READY: (DP.STALE, DP.STALE),
    DP.STALE: (DP.STALE, DP.STALE),
    DP.BLOCKED: (DP.STALE, DP.PENDING),
    DP.FAILED: (DP.STALE, DP.PENDING),
    DP.SKIPPED: (DP.SKIPPED, DP.SKIPPED),
}

#: statuses from which a build may start (when a revision is waiting and the debounce has passed)
BUILDABLE = (DP.PENDING, DP.STALE, DP.BLOCKED, DP.FAILED)
#: results whose frame has arrived have something to build from
WITH_FRAME = (FS.PARTIALLY_FULFILLED, FS.FULFILLED)


@dataclass(frozen=True)
class RebuildPolicy:
    """Debounce and retry settings of the rebuild engine (their defaults: ``Settings.product_*``)."""

    quiet: timedelta  # wait this long after the last bump
    max_delay: timedelta  # ... but no longer than this after the first one
    retry_base: timedelta  # FAILED: retry after base * 2**(attempts-1)
    max_attempts: int
    build_timeout: timedelta  # BUILDING longer than this is presumed dead


# --- requests -------------------------------------------------------------------------------------------------------

def get_or_create_instrument(session: Session, name: str, filter_bands: Sequence[str] = (),
                             telescope: str | None = None) -> Instrument:
    instrument = session.scalar(sa.select(Instrument).where(Instrument.name == name))
    if instrument is None:
        instrument = Instrument(name=name, telescope=telescope, filter_bands=list(filter_bands))
        session.add(instrument)
        session.flush()
    elif set(filter_bands) - set(instrument.filter_bands):
        instrument.filter_bands = sorted(set(instrument.filter_bands) | set(filter_bands))
    return instrument


def find_request(session: Session, name: str) -> ObservationRequest | None:
    return session.scalar(sa.select(ObservationRequest).where(ObservationRequest.name == name))


def request_snapshot(request: ObservationRequest) -> dict[str, Any]:
    """The request as it is now, JSON-safe (frozen into each result's ``spec_snapshot``)."""
    fields = ("name", "program", "target_name", "ra", "dec", "filter_band", "exposure_time", "n_epochs",
              "cadence_seconds", "samples_per_epoch", "copies_mode", "copies_count", "match_radius_deg", "priority")
    snapshot = {f: getattr(request, f) for f in fields}
    snapshot["copies_mode"] = str(request.copies_mode)
    for f in ("window_start", "window_end"):
        value = getattr(request, f)
        snapshot[f] = value.isoformat() if value else None
    return snapshot


def eligible_instruments(session: Session, filter_band: str) -> list[Instrument]:
    instruments = session.scalars(sa.select(Instrument).where(Instrument.is_active).order_by(Instrument.name))
    return [i for i in instruments if filter_band in i.filter_bands]


def expand_request(session: Session, request: ObservationRequest) -> list[ObservationResult]:
    """Materialize the request's leaf cells (epoch × sample × copy); existing cells are left untouched.

    ``not_before`` is ``window_start + epoch × cadence``. ``all_eligible`` makes one copy per
    active instrument that has the band (each cell bound to its instrument).
    """
    if request.copies_mode is CopiesMode.ALL_ELIGIBLE:
        instruments: list[Instrument | None] = list(eligible_instruments(session, request.filter_band))
        if not instruments:
            raise ValueError(f"request {request.name!r}: no active instrument has band {request.filter_band!r}")
    elif request.copies_mode is CopiesMode.COUNT:
        instruments = [None] * int(request.copies_count or 0)
    else:
        instruments = [None]
    existing = {(r.epoch_index, r.sample_index, r.copy_index) for r in request.results}
    snapshot = request_snapshot(request)
    created = []
    for epoch in range(request.n_epochs):
        not_before = (request.window_start + timedelta(seconds=epoch * request.cadence_seconds)
                      if request.window_start else None)
        for sample in range(request.samples_per_epoch):
            for copy, instrument in enumerate(instruments):
                if (epoch, sample, copy) in existing:
                    continue
                result = ObservationResult(
                    request=request, epoch_index=epoch, sample_index=sample, copy_index=copy,
                    instrument=instrument, copies_mode=request.copies_mode, not_before=not_before,
                    spec_snapshot=snapshot)
                session.add(result)
                created.append(result)
    session.flush()
    return created


def add_request(session: Session, survey: Survey, **fields: Any) -> ObservationRequest:
    """Store a validated request and expand it into its results."""
    request = ObservationRequest(survey=survey, **fields)
    session.add(request)
    session.flush()
    expand_request(session, request)
    return request


def cancel_request(session: Session, request: ObservationRequest, reason: str = "request canceled") -> int:
    """Cancel the request and every result not yet fulfilled; their products are SKIPPED."""
    transition(request, RequestStatus.CANCELED)
    n = 0
    for result in request.results:
        if result.fulfillment_status in (FS.FULFILLED, FS.CANCELED):
            continue
        transition(result, FS.CANCELED, field=FULFILLMENT, reason=reason)
        if result.data_product_status is not DP.BUILDING:
            transition(result, DP.SKIPPED, field=PRODUCTS, reason=reason)
        n += 1
    return n


# --- fulfillment ----------------------------------------------------------------------------------------------------

#: FITS keywords a scheduler may write so frames match their result exactly
SCHEDULER_KEYWORDS = {"result": "REQ_UID", "request": "REQ_NAME", "epoch": "REQ_EPOC", "sample": "REQ_SAMP",
                      "copy": "REQ_COPY"}


def dispatch_due(session: Session, now: datetime) -> int:
    """Results of active requests whose ``not_before`` has come are dispatched (a task is opened)."""
    due = session.scalars(
        sa.select(ObservationResult).join(ObservationResult.request)
        .where(ObservationResult.fulfillment_status == FS.PENDING_DISPATCH,
               ObservationRequest.status == RequestStatus.ACTIVE,
               sa.or_(ObservationResult.not_before.is_(None), ObservationResult.not_before <= now))
    ).all()
    for result in due:
        _dispatch(session, result, now, reason=None)
    return len(due)


def _dispatch(session: Session, result: ObservationResult, now: datetime, reason: str | None) -> ObservationTask:
    transition(result, FS.DISPATCHED, field=FULFILLMENT, reason=reason)
    task = ObservationTask(result=result, instrument_id=result.instrument_id, state=TaskState.DISPATCHED,
                           started_at=now)
    session.add(task)
    return task


def _by_header(session: Session, cards: dict[str, Any]) -> ObservationResult | None:
    if cards.get(SCHEDULER_KEYWORDS["result"]):
        return session.scalar(sa.select(ObservationResult)
                              .where(ObservationResult.uid == _uuid(cards[SCHEDULER_KEYWORDS["result"]])))
    if cards.get(SCHEDULER_KEYWORDS["request"]):
        return session.scalar(
            sa.select(ObservationResult).join(ObservationResult.request)
            .where(ObservationRequest.name == str(cards[SCHEDULER_KEYWORDS["request"]]),
                   ObservationResult.epoch_index == int(cards.get(SCHEDULER_KEYWORDS["epoch"], 0)),
                   ObservationResult.sample_index == int(cards.get(SCHEDULER_KEYWORDS["sample"], 0)),
                   ObservationResult.copy_index == int(cards.get(SCHEDULER_KEYWORDS["copy"], 0))))
    return None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _by_position(session: Session, observation: Observation) -> ObservationResult | None:
    """The earliest open cell whose target lies in this frame's footprint, band and time window."""
    candidates = session.scalars(
        sa.select(ObservationResult).join(ObservationResult.request)
        .options(selectinload(ObservationResult.request), selectinload(ObservationResult.instrument))
        .where(ObservationRequest.status == RequestStatus.ACTIVE,
               ObservationRequest.filter_band == observation.filter_band,
               ObservationResult.observation_id.is_(None),
               ObservationResult.fulfillment_status.in_((FS.PENDING_DISPATCH, FS.DISPATCHED)),
               sa.or_(ObservationResult.not_before.is_(None),
                      ObservationResult.not_before <= observation.observation_time + timedelta(minutes=5)),
               sa.or_(ObservationRequest.window_start.is_(None),
                      ObservationRequest.window_start <= observation.observation_time),
               sa.or_(ObservationRequest.window_end.is_(None),
                      ObservationRequest.window_end >= observation.observation_time))
        .order_by(ObservationRequest.priority.desc(), ObservationResult.epoch_index, ObservationResult.sample_index,
                  ObservationResult.copy_index)
    ).all()
    for result in candidates:
        request = result.request
        if result.instrument is not None and result.instrument.name != observation.instrument:
            continue
        if angular_separation_deg(request.ra, request.dec, observation.ra, observation.dec) <= request.match_radius_deg:
            return result
    return None


#: a result a frame can still fulfil (both ways of matching look only at these)
_OPEN_RESULT = (ObservationResult.observation_id.is_(None),
                ObservationResult.fulfillment_status.in_((FS.PENDING_DISPATCH, FS.DISPATCHED)))


def _any_open_result(session: Session) -> bool:
    """Whether any result waits for a frame: one indexed EXISTS, so unrequested frames cost little."""
    return bool(session.scalar(sa.select(sa.exists().where(*_OPEN_RESULT))))


def match_observation(session: Session, observation: Observation, cards: dict[str, Any],
                      now: datetime | None = None) -> ObservationResult | None:
    """Attach a newly registered frame to the result it fulfils, if any (None: the frame matches nothing).

    By the scheduler's header keywords (:data:`SCHEDULER_KEYWORDS`) when present,
    otherwise by target position (within the request's ``match_radius_deg`` of the
    frame centre), band, observing window and ``not_before``.
    """
    return match_observations(session, [(observation, cards)], now)[0]


def match_observations(session: Session, frames: list[tuple[Observation, dict[str, Any]]],
                       now: datetime | None = None) -> list[ObservationResult | None]:
    """:func:`match_observation` for each (observation, cards) of frames registered together, in order; whether
    any result waits at all is asked once (one indexed EXISTS: unrequested frames cost little)."""
    now = now or utcnow()
    if not frames or not _any_open_result(session):  # no survey has requests: no frame can match
        return [None] * len(frames)
    return [_match(session, observation, cards, now) for observation, cards in frames]


def _match(session: Session, observation: Observation, cards: dict[str, Any], now: datetime
           ) -> ObservationResult | None:
    result = _by_header(session, cards) or _by_position(session, observation)
    if result is None or result.observation_id is not None or result.fulfillment_status not in (
            FS.PENDING_DISPATCH, FS.DISPATCHED):
        return None
    task = next((t for t in result.tasks if t.state is TaskState.DISPATCHED), None)
    if result.fulfillment_status is FS.PENDING_DISPATCH:
        task = _dispatch(session, result, now, reason="frame arrived before dispatch")
    result.observation = observation
    transition(result, FS.PARTIALLY_FULFILLED, field=FULFILLMENT, reason=f"frame {observation.observation_id} arrived")
    transition(task, TaskState.OBSERVED, now=now)
    task.observations.append(observation)
    session.flush()
    return result


def settle_fulfillment(session: Session, observation: Observation, now: datetime | None = None) -> int:
    """Results waiting on this frame become fulfilled once it is reduced (differenced)."""
    now = now or utcnow()
    results = session.scalars(sa.select(ObservationResult).where(
        ObservationResult.observation_id == observation.id,
        ObservationResult.fulfillment_status == FS.PARTIALLY_FULFILLED)).all()
    for result in results:
        task = next((t for t in result.tasks if t.state is TaskState.OBSERVED), None)
        if observation.status is ObservationStatus.DIFFERENCED:
            transition(result, FS.FULFILLED, field=FULFILLMENT, now=now)
            if task:
                transition(task, TaskState.SUCCEEDED, now=now)
        elif observation.status is ObservationStatus.FAILED and task:
            transition(task, TaskState.FAILED, reason=observation.status_reason, now=now)
    return len(results)


def unmatched_observations(session: Session) -> list[Observation]:
    """Science frames that fulfil no result (kept, and reported)."""
    matched = sa.select(ObservationResult.observation_id).where(ObservationResult.observation_id.is_not(None))
    return list(session.scalars(sa.select(Observation).where(Observation.id.not_in(matched))
                                .order_by(Observation.observation_time)))


# --- the rebuild engine ---------------------------------------------------------------------------------------------

def bump_results(session: Session, where: sa.ColumnElement[bool], now: datetime, policy: RebuildPolicy) -> int:
    """Revision + 1, dirty marks, debounce and status (:data:`BUMP_EDGES`) for the matching results.

    The rows are locked first (SELECT ... FOR UPDATE on PostgreSQL; SQLite
    transactions take the write lock at BEGIN), so concurrent bumps serialize
    and no increment is lost.
    """
    rows = session.scalars(sa.select(ObservationResult).where(where).with_for_update()
                           .execution_options(populate_existing=True)).all()
    for result in rows:
        result.assets_revision += 1
        if result.dirty_from_revision is None:
            result.dirty_from_revision = result.assets_revision
        if result.dirty_since is None:
            result.dirty_since = now
        # the debounce moves with every bump, but never past max_delay after the result first became dirty
        result.next_eligible_run_at = min(now + policy.quiet, result.dirty_since + policy.max_delay)
        result.build_attempts = 0
        built, never_built = BUMP_EDGES[result.data_product_status]
        target = never_built if result.last_built_revision is None else built
        if target is not result.data_product_status:
            transition(result, target, field=PRODUCTS, reason=f"revision {result.assets_revision}: upstream changed")
    session.flush()
    return len(rows)


def observation_materialized(session: Session, observation_key: str, policy: RebuildPolicy,
                             now: datetime | None = None) -> int:
    """A per-observation asset was materialized: settle fulfillment, bump the results it feeds."""
    now = now or utcnow()
    observation = session.scalar(sa.select(Observation).where(Observation.observation_id == observation_key))
    settle_fulfillment(session, observation, now)
    return bump_results(session, ObservationResult.observation_id == observation.id, now, policy)


def _needs_build(policy: RebuildPolicy) -> sa.ColumnElement[bool]:
    """A revision not yet built, a frame to build from, a buildable status and retries left."""
    return sa.and_(ObservationResult.fulfillment_status.in_(WITH_FRAME),
                   ObservationResult.data_product_status.in_(BUILDABLE),
                   ObservationResult.assets_revision > sa.func.coalesce(ObservationResult.last_built_revision, 0),
                   ObservationResult.build_attempts < policy.max_attempts)


def due_for_rebuild(session: Session, now: datetime, policy: RebuildPolicy) -> list[ObservationResult]:
    """Results needing a build whose debounce (or retry backoff) has passed."""
    return list(session.scalars(
        sa.select(ObservationResult)
        .where(_needs_build(policy),
               sa.or_(ObservationResult.next_eligible_run_at.is_(None), ObservationResult.next_eligible_run_at <= now))
        .order_by(ObservationResult.next_eligible_run_at)))


def awaiting_debounce(session: Session, now: datetime, policy: RebuildPolicy) -> list[ObservationResult]:
    """Results needing a build that must still wait (debounce or backoff)."""
    return list(session.scalars(sa.select(ObservationResult).where(
        _needs_build(policy), ObservationResult.next_eligible_run_at > now)))


def note_lost_attempt(session: Session, result: ObservationResult, now: datetime, policy: RebuildPolicy) -> None:
    """A build run ended before it could even claim the result: count it as a failed attempt (backoff)."""
    result.build_attempts += 1
    result.next_eligible_run_at = now + policy.retry_base * 2 ** (result.build_attempts - 1)
    session.flush()


def get_result(session: Session, uid) -> ObservationResult:
    result = session.scalar(sa.select(ObservationResult).where(ObservationResult.uid == _uuid(uid))
                            .with_for_update())
    if result is None:
        raise NotFound(f"no observation result with uid {uid}")
    return result


def get_result_processing_run(session: Session, run_id) -> ObservationResultProcessingRun:
    """One build of a result's products (its ObservationResultProcessingRun), by id."""
    run = session.get(ObservationResultProcessingRun, run_id)
    if run is None:
        raise NotFound(f"no observation result processing run with id {run_id}")
    return run


def claim_build(session: Session, result: ObservationResult, dagster_run_id: str | None,
                now: datetime) -> ObservationResultProcessingRun:
    """Start a build of the result's current revision: BUILDING, with a processing run recording the revision."""
    transition(result, DP.BUILDING, field=PRODUCTS)
    run = ObservationResultProcessingRun(result=result, built_from_revision=result.assets_revision,
                                         dagster_run_id=dagster_run_id, started_at=now,
                                         status=ResultProcessingRunStatus.RUNNING)
    session.add(run)
    session.flush()
    result.current_processing_run = run
    session.flush()
    return run


def add_output(session: Session, run: ObservationResultProcessingRun, *, kind: str, path: str, size_bytes: int,
               checksum: str, metadata: dict[str, Any]) -> ObservationResultProcessingRunOutput:
    output = ObservationResultProcessingRunOutput(processing_run=run, kind=kind, path=path, size_bytes=size_bytes,
                                                  checksum=checksum, product_metadata=metadata)
    session.add(output)
    return output


_RUN_OUTCOME = {DP.READY: ResultProcessingRunStatus.SUCCEEDED, DP.BLOCKED: ResultProcessingRunStatus.BLOCKED,
                DP.FAILED: ResultProcessingRunStatus.FAILED, DP.SKIPPED: ResultProcessingRunStatus.SKIPPED}


def finish_build(session: Session, run: ObservationResultProcessingRun, outcome: DataProductStatus, now: datetime,
                 reason: str | None = None, *, policy: RebuildPolicy) -> ObservationResult:
    """End a build: READY (or STALE if bumped meanwhile), BLOCKED, FAILED (retry with backoff) or SKIPPED."""
    session.refresh(run)
    result = session.scalar(sa.select(ObservationResult).where(ObservationResult.id == run.result_id)
                            .with_for_update().execution_options(populate_existing=True))
    if run.status is not ResultProcessingRunStatus.RUNNING or result.current_processing_run_id != run.id:
        raise IllegalTransition(run, run.status, _RUN_OUTCOME[outcome])  # abandoned meanwhile: nothing to record
    transition(run, _RUN_OUTCOME[outcome], reason=reason, now=now)
    result.current_processing_run = None
    if outcome is DP.FAILED:
        result.build_attempts += 1
        result.next_eligible_run_at = now + policy.retry_base * 2 ** (result.build_attempts - 1)
        transition(result, DP.FAILED, field=PRODUCTS, reason=reason)
        return result
    # READY, BLOCKED and SKIPPED all settle this revision: only a new bump rebuilds
    result.last_built_revision = run.built_from_revision
    result.build_attempts = 0
    if result.assets_revision == run.built_from_revision:
        result.dirty_from_revision = result.dirty_since = None
        if outcome is DP.READY:
            result.next_eligible_run_at = None
        transition(result, outcome, field=PRODUCTS, reason=reason)
    else:  # bumped while building: dirty from the first revision this build did not see
        result.dirty_from_revision = run.built_from_revision + 1
        result.dirty_since = now
        transition(result, DP.STALE if outcome is DP.READY else outcome, field=PRODUCTS,
                   reason=reason or f"revision {result.assets_revision} arrived during the build")
    return result


def requeue_abandoned(session: Session, run_is_alive: Callable[[str | None], bool], now: datetime,
                      policy: RebuildPolicy) -> list[ObservationResult]:
    """BUILDING results whose Dagster run died (or ran past the timeout) go back in the queue."""
    requeued = []
    building = session.scalars(sa.select(ObservationResult)
                               .where(ObservationResult.data_product_status == DP.BUILDING)
                               .options(selectinload(ObservationResult.current_processing_run))).all()
    for result in building:
        run = result.current_processing_run
        if run is not None and run_is_alive(run.dagster_run_id) and now - run.started_at < policy.build_timeout:
            continue
        if run is not None:
            transition(run, ResultProcessingRunStatus.ABANDONED, now=now,
                       reason="its Dagster run ended without finishing the build")
        result.current_processing_run = None
        result.next_eligible_run_at = now
        transition(result, DP.STALE if result.last_built_revision is not None else DP.PENDING, field=PRODUCTS,
                   reason="re-queued: the previous build's run died")
        requeued.append(result)
    session.flush()
    return requeued


def results_dirty_longer_than(session: Session, since: datetime) -> list[ObservationResult]:
    """Results with frames that have been waiting for a rebuild since before ``since``."""
    return list(session.scalars(
        sa.select(ObservationResult)
        .where(ObservationResult.fulfillment_status.in_(WITH_FRAME),
               ObservationResult.dirty_since.is_not(None), ObservationResult.dirty_since < since,
               ObservationResult.data_product_status != DP.SKIPPED)))


def results_with_frames(session: Session) -> list[ObservationResult]:
    return list(session.scalars(sa.select(ObservationResult)
                                .where(ObservationResult.fulfillment_status.in_(WITH_FRAME))))


#: product statuses a results backfill may (re)build: not one being built, not one that is SKIPPED for good
REBUILDABLE_BY_HAND = (DP.PENDING, DP.STALE, DP.BLOCKED, DP.FAILED, DP.READY)


def results_for_backfill(session: Session, *, request_name: str | None = None,
                         statuses: Iterable[str] = ()) -> list[tuple[ObservationResult, str, str]]:
    """Results a ``results backfill`` would build, with their request name and observation key.

    Only results whose frame has arrived (there is something to build from) and whose
    products are in :data:`REBUILDABLE_BY_HAND`; ``statuses`` narrows these (product
    statuses, case-insensitive; none: all of them), ``request_name`` to one request.
    """
    wanted = {s.upper() for s in statuses}
    allowed = {status.value for status in REBUILDABLE_BY_HAND}
    if unknown := wanted - allowed:
        raise ValueError(f"unknown or unbuildable product status {sorted(unknown)}: choose from {', '.join(sorted(allowed))}")
    stmt = (sa.select(ObservationResult, ObservationRequest.name, Observation.observation_id)
            .join(ObservationResult.request).join(Observation, ObservationResult.observation_id == Observation.id)
            .where(ObservationResult.fulfillment_status.in_(WITH_FRAME),
                   ObservationResult.data_product_status.in_([DP(s) for s in wanted] or REBUILDABLE_BY_HAND))
            .order_by(ObservationRequest.name, ObservationResult.epoch_index, ObservationResult.sample_index,
                      ObservationResult.copy_index))
    if request_name is not None:
        stmt = stmt.where(ObservationRequest.name == request_name)
    return [tuple(row) for row in session.execute(stmt)]


def results_status_table(session: Session) -> list[dict[str, Any]]:
    """One row per result, for ``results status``."""
    rows = session.execute(
        sa.select(ObservationResult, ObservationRequest.name, Observation.observation_id)
        .join(ObservationResult.request)
        .outerjoin(Observation, ObservationResult.observation_id == Observation.id)
        .order_by(ObservationRequest.name, ObservationResult.epoch_index, ObservationResult.sample_index,
                  ObservationResult.copy_index))
    return [
        {"request": name, "cell": r.cell, "uid": str(r.uid), "fulfillment": r.fulfillment_status.value,
         "products": r.data_product_status.value, "revision": r.assets_revision, "built": r.last_built_revision,
         "observation": obs_key, "reason": r.status_reason or r.fulfillment_note}
        for r, name, obs_key in rows
    ]


def results_for_observations(session: Session, observation_ids: Iterable) -> list[ObservationResult]:
    return list(session.scalars(sa.select(ObservationResult)
                                .where(ObservationResult.observation_id.in_(list(observation_ids)))))
