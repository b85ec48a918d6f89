"""The operations ledger in the catalog: state machine, idempotency (also under concurrency), counts,
sanitized failures and the database's own checks, on SQLite and PostgreSQL."""

import itertools
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dagster_project.catalog import Catalog, IllegalTransition, queries, transition
from dagster_project.catalog.queries import (
    MAX_FAILURE_ENTRIES,
    complete_operation,
    get_operation,
    list_operations,
    mark_running,
    observations_for_backfill,
    record_failure,
    record_progress,
    run_identity_hash,
    sanitize_message,
    start_operation,
    update_context,
)
from dagster_project.catalog.schema import OperationOutcome, OperationRun, OperationStatus, OperationType, Operator
from dagster_project.catalog.schema import ObservationStatus, RunStatus, utcnow
from dagster_project.catalog.schema import ProcessingRun, ProcessingRunStatus
from dagster_project.catalog.states import (
    OPERATION_OUTCOME_TRANSITIONS,
    OPERATION_TRANSITIONS,
    PROCESSING_RUN_TRANSITIONS,
    complete,
)
from tests.catalog import calibrated, observation

S, O, P = OperationStatus, OperationOutcome, ProcessingRunStatus

# The seed's rules, restated independently of states.py.
SEED_STATUS = {(S.QUEUED, S.RUNNING), (S.RUNNING, S.COMPLETED)}
SEED_OUTCOME = {(O.PENDING, o) for o in (O.SUCCEEDED, O.PARTIALLY_SUCCEEDED, O.FAILED, O.CANCELLED)}
RUN_ENDS = (P.COMPLETED, P.FAILED, P.CANCELLED)
SEED_RUN = {(P.PENDING, P.RUNNING), *((P.PENDING, e) for e in RUN_ENDS), *((P.RUNNING, e) for e in RUN_ENDS)}


def pairs(table: dict) -> set:
    return {(a, b) for a, targets in table.items() for b in targets}


def test_transition_tables_are_the_seeds():
    assert pairs(OPERATION_TRANSITIONS) == SEED_STATUS and set(OPERATION_TRANSITIONS) == set(S)
    assert pairs(OPERATION_OUTCOME_TRANSITIONS) == SEED_OUTCOME and set(OPERATION_OUTCOME_TRANSITIONS) == set(O)
    assert pairs(PROCESSING_RUN_TRANSITIONS) == SEED_RUN and set(PROCESSING_RUN_TRANSITIONS) == set(P)


@pytest.mark.parametrize(("model", "before", "after"),
                         [(OperationRun, a, b) for a, b in itertools.product(S, S)]
                         + [(ProcessingRun, a, b) for a, b in itertools.product(P, P)])
def test_status_transitions(model, before, after):
    entity = model(status=before)
    if (before, after) in SEED_STATUS | SEED_RUN:
        transition(entity, after)
        assert entity.status is after
    else:
        with pytest.raises(IllegalTransition):
            transition(entity, after)
        assert entity.status is before


@pytest.mark.parametrize(("status", "outcome", "to"), list(itertools.product(S, O, O)))
def test_complete_moves_status_and_outcome_together_or_not_at_all(status, outcome, to):
    operation = OperationRun(status=status, outcome=outcome)
    if status is S.RUNNING and outcome is O.PENDING and to is not O.PENDING:
        complete(operation, to)
        assert (operation.status, operation.outcome) == (S.COMPLETED, to)
    else:
        with pytest.raises(IllegalTransition, match="illegal (status|outcome) transition"):
            complete(operation, to)
        assert (operation.status, operation.outcome) == (status, outcome)


@pytest.fixture
def survey(catalog):
    with catalog.session() as s:
        return queries.get_or_create_survey(s, "test")


def start(catalog, survey, identity=None, **kwargs):
    with catalog.session() as s:
        return start_operation(s, survey=survey, operation_type=OperationType.BACKFILL_OBSERVATIONS,
                               identity=identity or {"partitions": ["a", "b"]}, **kwargs)


def test_an_operation_goes_queued_running_completed(catalog, survey):
    operation, created = start(catalog, survey, initiator="alice", context={"job": "calibrate_job"})
    assert created and (operation.status, operation.outcome) == (S.QUEUED, O.PENDING)
    assert operation.summary_counts == {"total": 0, "success": 0, "failed": 0, "skipped": 0}
    with catalog.session() as s:
        with pytest.raises(IllegalTransition):
            complete_operation(s, operation)  # queued → completed is not a transition
    with catalog.session() as s:
        mark_running(s, operation)
        record_progress(s, operation, total=3, success=2)
        record_failure(s, operation, "step.psf_error", "only 3 stars")
        update_context(s, operation, backfill_id="abc")
        done = complete_operation(s, operation)
    assert (done.status, done.outcome) == (S.COMPLETED, O.PARTIALLY_SUCCEEDED)
    assert done.started_at <= done.completed_at
    with catalog.session() as s:
        stored = get_operation(s, operation.id)
        assert stored.initiator_name == "alice" and stored.operator.name == "alice"
        assert stored.context == {"job": "calibrate_job", "backfill_id": "abc"}
        assert stored.survey.name == "test"
        with pytest.raises(IllegalTransition):
            complete_operation(s, stored, OperationOutcome.SUCCEEDED)  # completed is final
    with catalog.session() as s, pytest.raises(ValueError, match="final"):
        record_progress(s, operation, success=3)


@pytest.mark.parametrize(("counts", "failures", "outcome"), [
    ({"total": 2, "success": 2}, [], O.SUCCEEDED),
    ({"total": 0}, [], O.SUCCEEDED),
    ({"total": 2, "success": 1, "failed": 1}, [("step.x", "boom")], O.PARTIALLY_SUCCEEDED),
    ({"total": 2, "failed": 2}, [("step.x", "boom")], O.FAILED),
    ({"total": 2, "success": 2}, [("process.exited", "gone")], O.PARTIALLY_SUCCEEDED),  # errors without failed runs
])
def test_outcome_follows_counts_and_failures(catalog, survey, counts, failures, outcome):
    operation, _ = start(catalog, survey)
    with catalog.session() as s:
        mark_running(s, operation)
        record_progress(s, operation, **counts)
        for code, message in failures:
            record_failure(s, operation, code, message)
        assert complete_operation(s, operation).outcome is outcome


def test_starting_the_same_operation_again_returns_the_active_one(catalog, survey):
    first, created = start(catalog, survey, identity={"partitions": ["b", "a"]}, initiator="alice")
    again, created_again = start(catalog, survey, identity={"partitions": ["b", "a"]}, initiator="bob")
    assert created and not created_again and again.id == first.id
    other, created_other = start(catalog, survey, identity={"partitions": ["c"]})
    assert created_other and other.id != first.id
    with catalog.session() as s:
        mark_running(s, first)
        complete_operation(s, first)
    after, created_after = start(catalog, survey, identity={"partitions": ["b", "a"]})
    assert created_after and after.id not in (first.id, other.id)  # a completed one does not block



def test_operation_exists(catalog, survey):
    operation, _ = start(catalog, survey)
    with catalog.session() as s:
        assert queries.operation_exists(s, operation.id) and not queries.operation_exists(s, operation.id + 1000)

def test_identity_hash_is_deterministic_and_type_specific():
    a = run_identity_hash(OperationType.INGEST_SCAN, {"x": [1, 2], "y": "z"})
    assert a == run_identity_hash(OperationType.INGEST_SCAN, {"y": "z", "x": [1, 2]})
    assert a != run_identity_hash(OperationType.PROCESS_FOLDER, {"x": [1, 2], "y": "z"})
    assert len(a) == 64 and set(a) <= set("0123456789abcdef")


def test_parallel_starters_get_exactly_one_active_operation(catalog_url, catalog, survey):
    """Eight starters at once, each in its own connection: the partial unique index lets one in."""
    n = 8
    barrier = threading.Barrier(n)
    results, errors = [], []

    def starter(i: int) -> None:
        own = Catalog(catalog_url)
        try:
            barrier.wait()
            results.append(start(own, survey, identity={"night": "2026-11-21"}, initiator=f"user{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.engine.dispose()

    threads = [threading.Thread(target=starter, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({op.id for op, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(OperationRun)) == 1
        assert s.scalar(sa.select(sa.func.count()).select_from(Operator)) == n  # every starter is known


def test_the_database_allows_one_active_row_per_identity(catalog, survey):
    row = dict(survey_id=survey.id, initiator_name="System", type="ingest.scan", run_identity_hash="a" * 64)
    with catalog.session() as s:
        s.add(OperationRun(**row, status=S.COMPLETED, outcome=O.SUCCEEDED, started_at=utcnow(),
                           completed_at=utcnow()))
        s.add(OperationRun(**row, status=S.COMPLETED, outcome=O.FAILED, started_at=utcnow(),
                           completed_at=utcnow()))
        s.add(OperationRun(**row, status=S.QUEUED, outcome=O.PENDING))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(OperationRun(**row, status=S.RUNNING, outcome=O.PENDING, started_at=utcnow()))


@pytest.mark.parametrize("assignments", [
    "status = 'completed', completed_at = started_at",  # completed, outcome still pending
    "outcome = 'succeeded'",  # an outcome while running
    "status = 'queued'",  # queued with a start time
    "completed_at = started_at",  # a completion time while running
    "run_identity_hash = 'not-hex'",
    "type = 'Backfill Observations'",  # not <domain>.<action>
    "type = 'backfill.'",
])
def test_database_checks_reject_inconsistent_rows(catalog, survey, assignments):
    operation, _ = start(catalog, survey)
    with catalog.session() as s:
        mark_running(s, operation)
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.execute(sa.text(f"UPDATE operation_runs SET {assignments} WHERE id = :id"), {"id": operation.id})


def test_counts_are_validated(catalog, survey):
    operation, _ = start(catalog, survey)
    with catalog.session() as s:
        mark_running(s, operation)
        with pytest.raises(TypeError, match="errors"):
            record_progress(s, operation, errors=1)
        with pytest.raises(ValueError, match="non-negative"):
            record_progress(s, operation, total=-1)
        with pytest.raises(ValueError, match="exceed total"):
            record_progress(s, operation, total=2, success=2, failed=1)
        record_progress(s, operation, total=4)
        assert record_progress(s, operation, success=1, skipped=3).summary_counts == {
            "total": 4, "success": 1, "failed": 0, "skipped": 3}


@pytest.mark.parametrize(("message", "kept", "gone"), [
    ("FileNotFoundError: /data/store/raw/2026-11-21/frame.fits is missing", "<path> is missing", "/data"),
    ("cannot read raw/2026-11-21/frame_001.fits: truncated", "<path>: truncated", "frame_001"),
    ("could not connect to postgresql://astro:hunter2@db.internal:5432/catalog", "<redacted>@", "hunter2"),
    ("login failed: password=hunter2 user=alice", "password=<redacted>", "hunter2"),
    ("upstream said Authorization: Bearer abc.def.ghi", "Authorization: <redacted>", "abc.def"),
    ("api_key: sk-12345 rejected", "api_key: <redacted> rejected", "sk-12345"),
    ("Traceback (most recent call last):\n  File \"/x/y.py\", line 3\nValueError: boom", "ValueError: boom", "File"),
    ("ValueError: boom\n  File \"/x/y.py\", line 3, in f\n    raise", "ValueError: boom", "line 3"),
    ("sha mismatch 5012d0195f4cad1adbe301813f9efc2a249a1e3a for F001", "sha mismatch <hash> for F001", "5012d"),
    ("only 3 stars fitted (need 5) at S/N > 10", "only 3 stars fitted (need 5) at S/N > 10", "<path>"),
    ("the token expired; password incorrect", "the token expired; password incorrect", "<redacted>"),
])
def test_sanitize_message(message, kept, gone):
    clean = sanitize_message(message)
    assert kept in clean and gone not in clean
    assert "\n" not in clean


def test_sanitize_message_is_short():
    assert len(sanitize_message("x" * 5000)) <= 200


def test_failures_are_sanitized_counted_and_bounded(catalog, survey):
    operation, _ = start(catalog, survey)
    with catalog.session() as s:
        mark_running(s, operation)
        record_failure(s, operation, "step.psf_error", "PSF failed for /store/products/a/calibrated.fits")
        record_failure(s, operation, "step.psf_error", "PSF failed for /store/products/b/calibrated.fits")
        record_failure(s, operation, "run.canceled", "the run was canceled", count=3)
        with pytest.raises(ValueError, match="dotted lower-case"):
            record_failure(s, operation, "Bad Code", "x")
        for i in range(MAX_FAILURE_ENTRIES + 5):
            record_failure(s, operation, f"step.error_{i}", "boom")
        summary = get_operation(s, operation.id).failure_summary
    assert summary[0] == {"code": "step.psf_error", "message": "PSF failed for <path>", "count": 2}
    assert summary[1] == {"code": "run.canceled", "message": "the run was canceled", "count": 3}
    assert len(summary) == MAX_FAILURE_ENTRIES + 1
    assert summary[-1] == {"code": "other", "message": "further distinct errors", "count": 7}


def test_list_operations_newest_first_and_filtered(catalog, survey):
    first, _ = start(catalog, survey, identity={"n": 1})
    second, _ = start(catalog, survey, identity={"n": 2})
    with catalog.session() as s:
        scan, _ = start_operation(s, survey=survey, operation_type=OperationType.INGEST_SCAN, identity={"n": 3})
        assert [o.id for o in list_operations(s)] == [scan.id, second.id, first.id]
        assert [o.id for o in list_operations(s, operation_type=OperationType.INGEST_SCAN)] == [scan.id]
        assert [o.id for o in list_operations(s, status=OperationStatus.QUEUED, limit=2)] == [scan.id, second.id]


def test_observations_for_backfill(catalog):
    with catalog.session() as s:
        fresh = observation(s, 1, field_name="F001")
        other_field = observation(s, 2, field_name="F002")
        later = observation(s, 3, field_name="F001", night="2026-11-23")
        done = calibrated(s, 4, field_name="F001")
        failed = observation(s, 5, field_name="F001", filter_band="g")
        run = queries.start_preprocess_run(s, failed, {}, "run-5")
        queries.finish_preprocess_run(s, run, status=RunStatus.FAILED, error_message="boom")
        archived = observation(s, 6, field_name="F001")
        queries.set_status(s, archived, ObservationStatus.ARCHIVED, reason="replaced")

        def keys(**filters):
            return [o.observation_id for o in observations_for_backfill(s, **filters)]

        ids = {o: o.observation_id for o in (fresh, other_field, later, done, failed)}
        assert keys() == [ids[fresh], ids[other_field], ids[later], ids[done], ids[failed]]  # time order
        assert keys(field_name="F001", filter_band="r") == [ids[fresh], ids[later], ids[done]]
        assert keys(night_from="2026-11-22") == [ids[later]]
        assert keys(night_to="2026-11-21", field_name="F001") == [ids[fresh], ids[done], ids[failed]]
        assert keys(statuses=["never-processed"]) == [ids[fresh], ids[other_field], ids[later]]
        assert keys(statuses=["failed"]) == [ids[failed]]
        assert keys(statuses=["failed", "never-processed"], field_name="F002") == [ids[other_field]]
        assert keys(calibrated_only=True) == [ids[done]]
        with pytest.raises(ValueError, match="unknown status"):
            keys(statuses=["archived"])
