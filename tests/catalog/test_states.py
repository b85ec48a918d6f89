"""The state machines: every allowed transition works, every other one raises and changes nothing."""

import ast
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

import dagster_project
from dagster_project.catalog import (
    Candidate,
    CandidateStatus,
    DifferenceRun,
    IllegalTransition,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    RunStatus,
    transition,
)
from dagster_project.catalog.schema import (
    Base,
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
from dagster_project.catalog.states import (
    CANDIDATE_TRANSITIONS,
    FULFILLMENT,
    FULFILLMENT_TRANSITIONS,
    OBSERVATION_TRANSITIONS,
    PRODUCT_TRANSITIONS,
    PRODUCTS,
    RAW_FILE_TRANSITIONS,
    REQUEST_TRANSITIONS,
    RESULT_PROCESSING_RUN_TRANSITIONS,
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    machines,
)

O, R, F, C = ObservationStatus, RunStatus, RawFileStatus, CandidateStatus

# The brief's rules, restated independently of states.py.
EXPECTED = {
    ObservationStatus: {
        (O.INGESTED, O.PREPROCESSING), (O.PREPROCESSING, O.PREPROCESSED), (O.PREPROCESSING, O.FAILED),
        (O.PREPROCESSING, O.BLOCKED), (O.PREPROCESSED, O.DIFFERENCING), (O.PREPROCESSED, O.PREPROCESSING),
        (O.DIFFERENCING, O.DIFFERENCED), (O.DIFFERENCING, O.FAILED), (O.DIFFERENCING, O.BLOCKED),
        (O.DIFFERENCED, O.DIFFERENCING), (O.DIFFERENCED, O.PREPROCESSING), (O.FAILED, O.PREPROCESSING),
        (O.FAILED, O.DIFFERENCING), (O.BLOCKED, O.PREPROCESSING), (O.BLOCKED, O.DIFFERENCING),
        *((s, O.ARCHIVED) for s in O if s is not O.ARCHIVED),
    },
    RunStatus: {
        (R.PENDING, R.RUNNING), (R.PENDING, R.BLOCKED), (R.PENDING, R.SKIPPED), (R.RUNNING, R.COMPLETED),
        (R.RUNNING, R.FAILED), (R.RUNNING, R.BLOCKED), (R.RUNNING, R.SKIPPED),
        *((s, R.PENDING) for s in (R.COMPLETED, R.FAILED, R.BLOCKED, R.SKIPPED)),
    },
    RawFileStatus: {(F.ACCEPTED, F.SUPERSEDED), (F.ACCEPTED, F.QUARANTINED)},
    CandidateStatus: {(C.NEW, C.PROMOTED), (C.NEW, C.REJECTED), (C.NEW, C.ARCHIVED), (C.PROMOTED, C.ARCHIVED),
                      (C.REJECTED, C.ARCHIVED)},
}
TABLES = {ObservationStatus: OBSERVATION_TRANSITIONS, RunStatus: RUN_TRANSITIONS, RawFileStatus: RAW_FILE_TRANSITIONS,
          CandidateStatus: CANDIDATE_TRANSITIONS}
ENTITIES = [(Observation, ObservationStatus), (PreprocessRun, RunStatus), (DifferenceRun, RunStatus),
            (RawDataFile, RawFileStatus), (Candidate, CandidateStatus)]
ALL_PAIRS = [(model, a, b) for model, enum in ENTITIES for a, b in itertools.product(enum, enum)]


@pytest.mark.parametrize("enum", TABLES)
def test_tables_are_the_specified_ones(enum):
    assert {(a, b) for a, targets in TABLES[enum].items() for b in targets} == EXPECTED[enum]
    assert set(TABLES[enum]) == set(enum)


@pytest.mark.parametrize(("model", "before", "after"), ALL_PAIRS,
                         ids=[f"{m.__name__}-{a}-{b}" for m, a, b in ALL_PAIRS])
def test_transition(model, before, after):
    entity = model(status=before)
    if (before, after) in EXPECTED[type(before)]:
        transition(entity, after)
        assert entity.status is after
    else:
        with pytest.raises(IllegalTransition) as raised:
            transition(entity, after)
        assert entity.status is before
        assert (raised.value.entity, raised.value.from_status, raised.value.to_status) == (entity, before, after)
        assert model.__name__ in str(raised.value) and f"{before.value!r} -> {after.value!r}" in str(raised.value)


def test_illegal_transition_is_a_value_error():
    assert issubclass(IllegalTransition, ValueError)


def test_reasons_are_recorded_and_cleared():
    obs = Observation(status=O.PREPROCESSING)
    transition(obs, O.FAILED, reason="no flat for band r")
    assert obs.status_reason == "no flat for band r"
    transition(obs, O.PREPROCESSING)
    assert obs.status_reason is None

    run = PreprocessRun(status=R.RUNNING)
    transition(run, R.FAILED, reason="cosmic-ray cleaning diverged")
    assert run.error_message == "cosmic-ray cleaning diverged"

    raw = RawDataFile(status=F.ACCEPTED)
    transition(raw, F.QUARANTINED, reason="truncated")
    assert raw.quarantine_reason == "truncated"


def test_illegal_transition_leaves_the_reason_alone():
    obs = Observation(status=O.FAILED, status_reason="boom")
    with pytest.raises(IllegalTransition):
        transition(obs, O.DIFFERENCED, reason="other")
    assert (obs.status, obs.status_reason) == (O.FAILED, "boom")


def test_candidates_have_no_reason_field():
    candidate = Candidate(status=C.NEW)
    with pytest.raises(TypeError):
        transition(candidate, C.REJECTED, reason="bogus")
    assert candidate.status is C.NEW


def test_wrong_enum_or_entity_is_a_type_error():
    with pytest.raises(TypeError):
        transition(Observation(status=O.INGESTED), RunStatus.RUNNING)
    with pytest.raises(TypeError):
        transition(Observation(status=O.INGESTED), "preprocessing")
    with pytest.raises(TypeError):
        transition(object(), O.ARCHIVED)


def test_an_entity_without_a_status_cannot_transition():
    with pytest.raises(IllegalTransition):
        transition(Observation(), O.PREPROCESSING)


def _status_columns() -> set[tuple[type, str]]:
    """(model, attribute) of every enum column of the schema named like a status (``*status*``, ``state``)."""
    return {(mapper.class_, prop.key) for mapper in Base.registry.mappers for prop in mapper.column_attrs
            if isinstance(prop.columns[0].type, sa.Enum) and ("status" in prop.key or prop.key == "state")}


def test_every_status_column_has_a_machine():
    columns = _status_columns()
    assert (ObservationResult, "fulfillment_status") in columns and (ObservationTask, "state") in columns
    assert set(machines()) == columns
    for (model, field), machine in machines().items():
        column = getattr(model, field).property.columns[0]
        assert machine.enum is column.type.enum_class, (model, field)
        assert set(machine.table) == set(machine.enum), (model, field)


def bypasses(source: str, fields: set[str]) -> list[int]:
    """Lines of ``source`` that change a status column without :func:`transition`: an assignment to it
    (``x.status = ...``, ``x.a, x.state = ...``, ``x.status += ...``), a ``setattr`` naming it, or a
    transition table of its own (a name ending in ``TRANSITIONS`` assigned at module level)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and part.attr in fields and isinstance(part.ctx, ast.Store):
                    found.append(node.lineno)
                if isinstance(part, ast.Name) and part.id.endswith("TRANSITIONS") and isinstance(part.ctx, ast.Store):
                    found.append(node.lineno)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and any(isinstance(a, ast.Constant) and a.value in fields for a in node.args)):
            found.append(node.lineno)
    return found


def test_no_code_assigns_status_outside_states():
    """The rule 'only states.transition sets a status column', checked over the whole package."""
    package = Path(dagster_project.__file__).parent
    fields = {field for _, field in machines()}
    offenders = [f"{path.relative_to(package)}:{n}" for path in sorted(package.rglob("*.py"))
                 if path.name != "states.py" for n in bypasses(path.read_text(), fields)]
    assert offenders == []


@pytest.mark.parametrize(("source", "caught"), [
    ("result.fulfillment_status = FS.CANCELED", True), ("task.state = TaskState.OBSERVED", True),
    ("run.finished_at, run.status = now, PS.ABANDONED", True), ("r.data_product_status: DP = DP.READY", True),
    ('setattr(result, "data_product_status", DP.READY)', True), ("PRODUCT_TRANSITIONS = {}", True),
    ("queries.list_operations(session, status=args.status, limit=args.limit)", False),
    ("ok = result.state == TaskState.OBSERVED", False), ("x.status_reason = None", False)])
def test_the_bypass_check_sees_a_bypass(source, caught):
    assert bool(bypasses(source, {field for _, field in machines()})) is caught


# --- the observation results' machines --------------------------------------------------------------------------

RS, FS, DP, TS, PS = RequestStatus, FulfillmentStatus, DataProductStatus, TaskState, ResultProcessingRunStatus

# The tables result_lifecycle.py had, restated independently of states.py.
RESULT_EXPECTED = {
    RequestStatus: {(RS.ACTIVE, RS.COMPLETED), (RS.ACTIVE, RS.CANCELED)},
    FulfillmentStatus: {(FS.PENDING_DISPATCH, FS.DISPATCHED), (FS.PENDING_DISPATCH, FS.CANCELED),
                        (FS.DISPATCHED, FS.PARTIALLY_FULFILLED), (FS.DISPATCHED, FS.CANCELED),
                        (FS.PARTIALLY_FULFILLED, FS.FULFILLED), (FS.PARTIALLY_FULFILLED, FS.CANCELED)},
    DataProductStatus: {(DP.PENDING, DP.BUILDING), (DP.PENDING, DP.SKIPPED),
                        *((DP.BUILDING, s) for s in (DP.READY, DP.STALE, DP.BLOCKED, DP.FAILED, DP.SKIPPED,
                                                     DP.PENDING)),
                        (DP.READY, DP.STALE), (DP.READY, DP.SKIPPED), (DP.READY, DP.BUILDING),
                        (DP.STALE, DP.BUILDING), (DP.STALE, DP.SKIPPED),
                        *((b, a) for b in (DP.BLOCKED, DP.FAILED)
                          for a in (DP.BUILDING, DP.STALE, DP.PENDING, DP.SKIPPED))},
    TaskState: {(TS.DISPATCHED, TS.OBSERVED), (TS.DISPATCHED, TS.CANCELED), (TS.OBSERVED, TS.SUCCEEDED),
                (TS.OBSERVED, TS.FAILED)},
    ResultProcessingRunStatus: {(PS.RUNNING, s) for s in (PS.SUCCEEDED, PS.BLOCKED, PS.FAILED, PS.SKIPPED,
                                                          PS.ABANDONED)},
}
RESULT_TABLES = {RequestStatus: REQUEST_TRANSITIONS, FulfillmentStatus: FULFILLMENT_TRANSITIONS,
                 DataProductStatus: PRODUCT_TRANSITIONS, TaskState: TASK_TRANSITIONS,
                 ResultProcessingRunStatus: RESULT_PROCESSING_RUN_TRANSITIONS}
RESULT_ENTITIES = [(ObservationRequest, "status", RequestStatus), (ObservationResult, FULFILLMENT, FulfillmentStatus),
                   (ObservationResult, PRODUCTS, DataProductStatus), (ObservationTask, "state", TaskState),
                   (ObservationResultProcessingRun, "status", ResultProcessingRunStatus)]
RESULT_PAIRS = [(model, field, a, b) for model, field, enum in RESULT_ENTITIES for a, b in itertools.product(enum, enum)]
NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize("enum", RESULT_TABLES)
def test_result_tables_are_the_specified_ones(enum):
    assert {(a, b) for a, targets in RESULT_TABLES[enum].items() for b in targets} == RESULT_EXPECTED[enum]
    assert set(RESULT_TABLES[enum]) == set(enum)


@pytest.mark.parametrize(("model", "field", "before", "after"), RESULT_PAIRS,
                         ids=[f"{m.__name__}.{f}-{a}-{b}" for m, f, a, b in RESULT_PAIRS])
def test_result_transition(model, field, before, after):
    entity = model(**{field: before})
    kwargs = {"field": field} if model is ObservationResult else {}
    if (before, after) in RESULT_EXPECTED[type(before)]:
        transition(entity, after, now=NOW, **kwargs)
        assert getattr(entity, field) is after
    else:
        with pytest.raises(IllegalTransition) as raised:
            transition(entity, after, now=NOW, **kwargs)
        assert getattr(entity, field) is before
        assert (raised.value.entity, raised.value.from_status, raised.value.to_status) == (entity, before, after)
        assert f"illegal {field} transition {before.value!r} -> {after.value!r}" in str(raised.value)


def test_a_result_names_the_column_it_moves():
    result = ObservationResult(fulfillment_status=FS.PENDING_DISPATCH, data_product_status=DP.PENDING)
    with pytest.raises(TypeError, match="field="):
        transition(result, FS.DISPATCHED)
    with pytest.raises(TypeError):  # the enum of the other column
        transition(result, DP.BUILDING, field=FULFILLMENT)
    with pytest.raises(TypeError):
        transition(result, FS.DISPATCHED, field="copies_mode")
    assert (result.fulfillment_status, result.data_product_status) == (FS.PENDING_DISPATCH, DP.PENDING)


def test_fulfillment_keeps_its_note_and_stamps_fulfilled_on():
    result = ObservationResult(fulfillment_status=FS.DISPATCHED)
    transition(result, FS.PARTIALLY_FULFILLED, field=FULFILLMENT, reason="frame F001 arrived")
    transition(result, FS.FULFILLED, field=FULFILLMENT, now=NOW)
    assert (result.fulfillment_note, result.fulfilled_on) == ("frame F001 arrived", NOW)
    before = datetime.now(UTC)
    other = ObservationResult(fulfillment_status=FS.PARTIALLY_FULFILLED)
    transition(other, FS.FULFILLED, field=FULFILLMENT)  # now: the current time
    assert other.fulfilled_on >= before


def test_product_reasons_are_recorded_and_cleared():
    result = ObservationResult(data_product_status=DP.BUILDING, status_reason="old")
    transition(result, DP.FAILED, field=PRODUCTS, reason="PSFError: 3 stars")
    assert result.status_reason == "PSFError: 3 stars"
    transition(result, DP.BUILDING, field=PRODUCTS)
    assert result.status_reason is None


def test_task_and_run_ends_are_stamped():
    task = ObservationTask(state=TS.DISPATCHED)
    transition(task, TS.OBSERVED, now=NOW)
    assert (task.finished_at, task.error) == (None, None)
    transition(task, TS.FAILED, reason="no flat for r", now=NOW)
    assert (task.finished_at, task.error) == (NOW, "no flat for r")
    run = ObservationResultProcessingRun(status=PS.RUNNING)
    transition(run, PS.ABANDONED, reason="its run died", now=NOW)
    assert (run.status, run.finished_at, run.error) == (PS.ABANDONED, NOW, "its run died")


def test_requests_have_no_reason_field():
    request = ObservationRequest(status=RS.ACTIVE)
    with pytest.raises(TypeError):
        transition(request, RS.CANCELED, reason="bogus")
    assert request.status is RS.ACTIVE
