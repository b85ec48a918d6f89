"""The state machines: every allowed transition works, every other one raises and changes nothing."""

import itertools
import re
from pathlib import Path

import pytest

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
from dagster_project.catalog.states import (
    CANDIDATE_TRANSITIONS,
    OBSERVATION_TRANSITIONS,
    RAW_FILE_TRANSITIONS,
    RUN_TRANSITIONS,
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


def test_no_code_assigns_status_outside_states():
    """The rule 'only states.transition sets .status', checked over the whole package."""
    package = Path(dagster_project.__file__).parent
    offenders = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py")
                 if path.name != "states.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\.status\s*=(?!=)", line)]
    assert offenders == []
