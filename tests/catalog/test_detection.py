"""The detection domain on both backends: the model registry (one active version per name, held by the database),
model runs and their detections (replaced in place on a re-score, deleted with their run), the CHECKs, and the
state machines of runs and detections."""

import itertools
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dagster_project.catalog import Base, Candidate, IllegalTransition, NotFound, RunStatus, queries, transition
from dagster_project.catalog.queries import detection as dq
from dagster_project.catalog.schema import (
    Detection,
    DetectionStatus,
    DetectionType,
    Model,
    ModelRun,
    ModelRunStatus,
    ModelType,
)
from dagster_project.catalog.states import DETECTION_TRANSITIONS, MODEL_RUN_TRANSITIONS
from tests.catalog import calibrated

D, MR = DetectionStatus, ModelRunStatus
DEPLOYED = datetime(2026, 1, 8, 4, 0, tzinfo=UTC)


def register(session, version: str, name: str = "real-bogus", **fields):
    fields = {"model_path": f"models/{name}/{version}.joblib", "precision": 0.9, "recall": 0.8, "f1_score": 0.85,
              **fields}
    return dq.register_model(session, name, version, ModelType.CLASSIFIER,
                             architecture={"family": "gradient_boosting", "library": "lightgbm"},
                             hyperparameters={"n_estimators": 500}, training_dataset={"source": "injections"},
                             training_metrics={"auc": 0.97}, **fields)


@pytest.fixture
def scored(catalog):
    """A differenced observation with 3 candidates, and two versions of a model (none active)."""
    with catalog.session() as s:
        ref_obs, obs = calibrated(s, 1), calibrated(s, 2)
        ref = queries.record_reference(s, "F001", "r", ref_obs, "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, obs, ref, {}, "diff-1")
        run = queries.finish_difference_run(s, run, status=RunStatus.COMPLETED)
        queries.record_candidates(s, run, [dict(ra=10.0 + i * 1e-3, dec=20.0, pixel_x=float(i), pixel_y=5.0)
                                           for i in range(3)])
        candidates = queries.candidates_of_run(s, run)
        return {"observation": obs, "reference": ref, "candidates": candidates, "other": ref_obs,
                "v1": register(s, "1.0"), "v2": register(s, "2.0", f1_score=0.9)}


def score_rows(candidates, scores) -> list[dict]:
    return [{"candidate_id": c.id, "confidence_score": score, "detection_type": "transient",
             "prediction_metadata": {"features": 12}} for c, score in zip(candidates, scores, strict=False)]


def scored_run(catalog, scored, scores=(0.95, 0.2, 0.7), model="v1") -> ModelRun:
    with catalog.session() as s:
        run = dq.start_model_run(s, scored[model], scored["observation"].id, dagster_run_id="rb-1")
        return dq.finish_model_run(s, run, score_rows(scored["candidates"], scores), 12.5, 80.0, 0.5)


def count(session, model) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model))


# --- the model registry ---------------------------------------------------------------------------------------------

def test_one_active_version_per_name_is_held_by_the_database(catalog, scored):
    with catalog.session() as s:
        dq.activate_model(s, "real-bogus", "1.0", now=DEPLOYED)
        register(s, "1.0", name="other-model")
        dq.activate_model(s, "other-model", "1.0")  # another name has its own active version
    models = Base.metadata.tables["models"]
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:  # raw SQL: no query code involved
        connection.execute(sa.update(models).where(models.c.name == "real-bogus")
                           .values(is_active=True, deployment_date=DEPLOYED))
    with catalog.session() as s:
        assert [m.version for m in dq.list_models(s, "real-bogus") if m.is_active] == ["1.0"]
        assert dq.active_model(s, "other-model").version == "1.0"


def test_an_active_version_has_a_deployment_date(catalog, scored):
    models = Base.metadata.tables["models"]
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(sa.update(models).where(models.c.version == "1.0").values(is_active=True))


def test_activate_switches_in_one_transaction(catalog, scored):
    with catalog.session() as s:
        assert dq.active_model(s, "real-bogus") is None
        assert dq.get_model(s, "real-bogus").version == "2.0"  # none active: the newest
        first = dq.activate_model(s, "real-bogus", "1.0", now=DEPLOYED)
        assert (first.is_active, first.deployment_date) == (True, DEPLOYED)
    with catalog.session() as s:
        second = dq.activate_model(s, "real-bogus", "2.0")
        assert second.deployment_date > DEPLOYED
    with catalog.session() as s:
        v1, v2 = dq.list_models(s, "real-bogus")
        assert (v1.is_active, v2.is_active) == (False, True)
        assert v1.deployment_date == DEPLOYED  # when it was last deployed
        assert dq.active_model(s, "real-bogus").id == v2.id == dq.get_model(s, "real-bogus").id
        assert dq.get_model(s, "real-bogus", "1.0").id == v1.id
    with pytest.raises(RuntimeError), catalog.session() as s:  # the transaction fails after the switch...
        dq.activate_model(s, "real-bogus", "1.0")
        raise RuntimeError("the deployment step after it failed")
    with catalog.session() as s:  # ...and neither half of it stays
        assert dq.active_model(s, "real-bogus").version == "2.0"
        assert not dq.get_model(s, "real-bogus", "1.0").is_active


def test_activating_the_active_version_changes_nothing(catalog, scored):
    with catalog.session() as s:
        dq.activate_model(s, "real-bogus", "1.0", now=DEPLOYED)
        assert dq.activate_model(s, "real-bogus", "1.0").deployment_date == DEPLOYED


def test_unknown_names_and_versions_are_clear_errors(catalog, scored):
    with catalog.session() as s:
        with pytest.raises(NotFound, match=r"model 'real-bogus' has no version '3.0' \(versions: 1.0, 2.0\)"):
            dq.activate_model(s, "real-bogus", "3.0")
        with pytest.raises(NotFound, match="no model named 'nope'"):
            dq.activate_model(s, "nope", "1.0")
        with pytest.raises(NotFound, match="no model named 'nope'"):
            dq.get_model(s, "nope")
        with pytest.raises(NotFound, match="no version '3.0'"):
            dq.get_model(s, "real-bogus", "3.0")
        assert dq.active_model(s, "real-bogus") is None


def test_a_version_is_registered_once(catalog, scored):
    with pytest.raises(dq.DuplicateModelVersion, match="'real-bogus' version '1.0'"), catalog.session() as s:
        register(s, "1.0")
    with catalog.session() as s:
        assert [m.version for m in dq.list_models(s)] == ["1.0", "2.0"]
        row = {c.name: getattr(scored["v1"], c.name) for c in Model.__table__.columns}
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:  # and the database refuses it too
        connection.execute(sa.insert(Model.__table__), {**row, "id": uuid.uuid4()})


def test_a_model_keeps_what_it_was_registered_with(catalog, scored):
    with catalog.session() as s:
        model = dq.get_model(s, "real-bogus", "1.0")
        assert (model.model_type, model.architecture, model.training_dataset, model.training_metrics) == (
            ModelType.CLASSIFIER, {"family": "gradient_boosting", "library": "lightgbm"}, {"source": "injections"},
            {"auc": 0.97})
        assert (model.precision, model.recall, model.f1_score, model.accuracy) == (0.9, 0.8, 0.85, None)
        assert (model.is_active, model.deployment_date, model.mlflow_run_id) == (False, None, None)


# --- CHECK constraints, proven by the database (Core inserts: no ORM code sees the values) --------------------------

@pytest.fixture
def parents(catalog, scored):
    """A running model run (no detections yet) and the candidates its detection rows may score."""
    with catalog.session() as s:
        run = dq.start_model_run(s, scored["v1"], scored["observation"].id)
    return {"run_id": run.id, "observation_id": run.observation_id, "candidate_ids": [c.id for c in
                                                                                       scored["candidates"]]}


def valid_row(catalog, table: str, parents: dict, n: int) -> dict:
    """A row of ``table`` the database accepts (a detection of candidate ``n``); unique keys are fresh."""
    new = uuid.uuid4()
    if table == "models":
        return dict(id=new, name=f"m-{new.hex}", version="1", model_type="classifier", architecture={},
                    hyperparameters={}, training_dataset={}, training_metrics={}, model_path="models/m.joblib")
    if table == "model_runs":  # one run per model version and observation: a version of its own
        with catalog.session() as s:
            model_id = register(s, new.hex).id
        return dict(id=new, model_id=model_id, observation_id=parents["observation_id"])
    return dict(id=new, model_run_id=parents["run_id"], observation_id=parents["observation_id"],
                candidate_id=parents["candidate_ids"][n], ra=10.0, dec=20.0, healpix_index=1, pixel_x=1.0,
                pixel_y=2.0, confidence_score=0.5, model_version="1.0", prediction_metadata={})


BAD_VALUES = {
    "detections": [{"confidence_score": 1.0001}, {"confidence_score": -0.01}, {"ra": 360.0}, {"ra": -0.001},
                   {"dec": 90.5}, {"dec": -90.01}, {"validation_confidence": 1.5}, {"inference_time_ms": -1.0},
                   {"status": "validated"}, {"status": "confirmed"}],
    "models": [{"precision": 1.2}, {"recall": -0.1}, {"f1_score": 2.0}, {"accuracy": -1.0},
               {"model_path": "/abs/m.joblib"}, {"model_path": "../outside.joblib"}, {"model_path": "a/../../b"},
               {"model_path": ""}, {"version": ""}, {"is_active": True}],
    "model_runs": [{"memory_usage_mb": -1.0}, {"inference_time_ms": -0.5}, {"total_predictions": -1},
                   {"total_predictions": 2, "high_confidence_predictions": 3}, {"high_confidence_threshold": 1.5},
                   {"status": "failed", "finished_at": DEPLOYED}, {"status": "completed"},
                   {"status": "running", "finished_at": DEPLOYED}],
}


def insert(catalog, table: str, row: dict) -> None:
    """A Core insert: column types convert values, but no ORM code sees them; only the database can refuse."""
    with catalog.engine.begin() as connection:
        connection.execute(sa.insert(Base.metadata.tables[table]), row)


@pytest.mark.parametrize("table", BAD_VALUES)
def test_database_check_rejects(catalog, parents, table):
    insert(catalog, table, valid_row(catalog, table, parents, 0))  # control: a valid row goes in...
    for bad in BAD_VALUES[table]:  # ...the same with one bad value does not (candidate 1: no UNIQUE in the way)
        row = {**valid_row(catalog, table, parents, 1), **bad}
        with pytest.raises(IntegrityError):
            insert(catalog, table, row)
            pytest.fail(f"{table} accepted {bad}")  # pragma: no cover - says which one when it does


def test_one_run_per_model_version_and_observation(catalog, scored):
    run = scored_run(catalog, scored)
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(sa.insert(ModelRun.__table__), dict(id=uuid.uuid4(), model_id=run.model_id,
                                                               observation_id=run.observation_id))
    with catalog.session() as s:  # another version scores the same observation in a run of its own
        dq.start_model_run(s, scored["v2"], scored["observation"].id)
        assert count(s, ModelRun) == 2


def test_a_candidate_is_scored_once_per_run(catalog, scored):
    scored_run(catalog, scored)
    with catalog.session() as s:
        row = {c.name: getattr(s.scalars(sa.select(Detection)).first(), c.name) for c in Detection.__table__.columns}
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(sa.insert(Detection.__table__), {**row, "id": uuid.uuid4()})
    with pytest.raises(ValueError, match="scored twice"), catalog.session() as s:
        run = dq.start_model_run(s, scored["v1"], scored["observation"].id)
        dq.finish_model_run(s, run, score_rows(scored["candidates"][:1] * 2, (0.5, 0.6)))


# --- model runs and their detections --------------------------------------------------------------------------------

def test_a_finished_run_stores_its_detections_and_counts(catalog, scored):
    run = scored_run(catalog, scored)
    with catalog.session() as s:
        run = s.get(ModelRun, run.id)
        assert (run.status, run.error_message, run.dagster_run_id) == (MR.COMPLETED, None, "rb-1")
        assert (run.total_predictions, run.high_confidence_predictions, run.high_confidence_threshold) == (3, 2, 0.5)
        assert (run.inference_time_ms, run.memory_usage_mb) == (12.5, 80.0)
        assert run.started_at <= run.finished_at
        found = dq.detections_of_observation(s, scored["observation"].id)
        assert [d.confidence_score for d in found] == [0.95, 0.7, 0.2]
        by_candidate = {c.id: c for c in scored["candidates"]}
        for d in found:
            candidate = by_candidate[d.candidate_id]
            assert (d.ra, d.dec, d.pixel_x, d.pixel_y) == (candidate.ra, candidate.dec, candidate.pixel_x,
                                                           candidate.pixel_y)
            assert d.healpix_index == candidate.healpix_index
            assert (d.model_version, d.detection_type, d.status, d.is_validated) == (
                "1.0", DetectionType.TRANSIENT, D.PENDING, False)
            assert d.prediction_metadata == {"features": 12}
        assert dq.detections_of_observation(s, scored["observation"].id, model_name="other") == []
        assert len(dq.detections_of_observation(s, scored["observation"].id, model_name="real-bogus")) == 3


def test_a_rescore_of_the_same_version_replaces_its_detections_in_place(catalog, scored):
    first = scored_run(catalog, scored)
    with catalog.session() as s:
        kept = s.scalars(sa.select(Detection).where(Detection.candidate_id == scored["candidates"][0].id)).one()
        dq.start_validation(s, kept)
        dq.record_validation(s, kept, True, "real", 0.9)
    again = scored_run(catalog, scored, scores=(0.6, 0.1))  # the third candidate is no longer scored
    with catalog.session() as s:
        assert again.id == first.id and count(s, ModelRun) == 1
        rows = s.scalars(sa.select(Detection).order_by(Detection.pixel_x)).all()
        assert [d.candidate_id for d in rows] == [c.id for c in scored["candidates"][:2]]  # no duplicate rows
        assert rows[0].id == kept.id and rows[0].confidence_score == 0.6
        assert (rows[0].status, rows[0].is_validated, rows[0].human_label) == (D.VALIDATED, True, "real")
        run = s.get(ModelRun, first.id)
        assert (run.total_predictions, run.high_confidence_predictions) == (2, 1)


def test_deleting_a_run_deletes_its_detections_in_the_database(catalog, scored):
    run = scored_run(catalog, scored)
    with catalog.engine.begin() as connection:  # Core: only the database's ON DELETE CASCADE can do it
        connection.execute(sa.delete(ModelRun.__table__).where(ModelRun.__table__.c.id == run.id))
    with catalog.session() as s:
        assert count(s, Detection) == 0 and count(s, Candidate) == 3


def test_a_re_difference_takes_the_old_candidates_scores_with_them(catalog, scored):
    scored_run(catalog, scored)
    with catalog.session() as s:
        obs = queries.get_observation(s, scored["observation"].observation_id)
        queries.start_difference_run(s, obs, scored["reference"], {}, "diff-2")  # drops the old candidates
        assert count(s, Candidate) == 0 and count(s, Detection) == 0


def test_a_model_with_runs_cannot_be_deleted(catalog, scored):
    run = scored_run(catalog, scored)
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(sa.delete(Model.__table__).where(Model.__table__.c.id == run.model_id))


def test_a_run_scores_only_its_own_observations_candidates(catalog, scored):
    with catalog.session() as s:
        run = dq.start_model_run(s, scored["v1"], scored["other"].id)
        with pytest.raises(ValueError, match="1 candidate.* not of the run's observation"):
            dq.finish_model_run(s, run, score_rows(scored["candidates"], (0.5,)))
        run = dq.start_model_run(s, scored["v1"], scored["observation"].id)
        good, bad = score_rows(scored["candidates"], (0.5, 0.6))
        with pytest.raises(TypeError, match=r"no field\(s\) \['score'\]"):
            dq.finish_model_run(s, run, [good, {**bad, "score": 1}])
        with pytest.raises(ValueError, match="'comet' is not a valid DetectionType"):
            dq.finish_model_run(s, run, [good, {**bad, "detection_type": "comet"}])
        assert run.detections == [] and run.status is MR.RUNNING  # refused before anything changed
    with catalog.session() as s:  # the session committed: nothing half-built was left in it
        assert count(s, Detection) == 0


def test_an_out_of_range_score_is_refused_by_the_database(catalog, scored):
    with pytest.raises(IntegrityError), catalog.session() as s:
        run = dq.start_model_run(s, scored["v1"], scored["observation"].id)
        dq.finish_model_run(s, run, score_rows(scored["candidates"], (1.5,)))
    with catalog.session() as s:
        assert count(s, Detection) == 0 and count(s, ModelRun) == 0


def test_a_failed_run_keeps_its_reason_until_it_is_retried(catalog, scored):
    first = scored_run(catalog, scored)
    with catalog.session() as s:
        run = dq.start_model_run(s, scored["v1"], scored["observation"].id, dagster_run_id="rb-2")
        run = dq.fail_model_run(s, run, "CUDA out of memory")
        assert (run.status, run.error_message) == (MR.FAILED, "CUDA out of memory")
        assert count(s, Detection) == 3  # the last completed attempt's detections stay
        with pytest.raises(IllegalTransition):
            dq.fail_model_run(s, run, "twice")
    with catalog.session() as s:
        run = dq.start_model_run(s, scored["v1"], scored["observation"].id, dagster_run_id="rb-3")
        assert (run.id, run.status, run.error_message, run.finished_at) == (first.id, MR.RUNNING, None, None)
        again = dq.start_model_run(s, scored["v1"], scored["observation"].id, dagster_run_id="rb-4")
        assert again.status is MR.RUNNING and again.dagster_run_id == "rb-4"  # the abandoned attempt is replaced


# --- the state machines ---------------------------------------------------------------------------------------------

# The brief's tables, restated independently of states.py (validated -> validating and completed -> pending: the
# platform's additions, documented there).
EXPECTED = {
    DetectionStatus: {(D.PENDING, D.VALIDATING), (D.PENDING, D.ARCHIVED), (D.VALIDATING, D.VALIDATED),
                      (D.VALIDATING, D.REJECTED), (D.VALIDATING, D.PENDING), (D.VALIDATED, D.CONFIRMED),
                      (D.VALIDATED, D.REJECTED), (D.VALIDATED, D.ARCHIVED), (D.VALIDATED, D.VALIDATING),
                      (D.REJECTED, D.VALIDATING), (D.REJECTED, D.ARCHIVED), (D.CONFIRMED, D.ARCHIVED)},
    ModelRunStatus: {(MR.PENDING, MR.RUNNING), (MR.RUNNING, MR.COMPLETED), (MR.RUNNING, MR.FAILED),
                     (MR.FAILED, MR.PENDING), (MR.COMPLETED, MR.PENDING)},
}
TABLES = {DetectionStatus: DETECTION_TRANSITIONS, ModelRunStatus: MODEL_RUN_TRANSITIONS}
PAIRS = [(model, a, b) for model, enum in ((Detection, D), (ModelRun, MR)) for a, b in itertools.product(enum, enum)]


@pytest.mark.parametrize("enum", TABLES)
def test_tables_are_the_specified_ones(enum):
    assert {(a, b) for a, targets in TABLES[enum].items() for b in targets} == EXPECTED[enum]
    assert set(TABLES[enum]) == set(enum)


@pytest.mark.parametrize(("model", "before", "after"), PAIRS, ids=[f"{m.__name__}-{a}-{b}" for m, a, b in PAIRS])
def test_transition(model, before, after):
    entity = model(status=before)
    if (before, after) in EXPECTED[type(before)]:
        transition(entity, after)
        assert entity.status is after
    else:
        with pytest.raises(IllegalTransition):
            transition(entity, after)
        assert entity.status is before


def test_the_vetting_lifecycle(catalog, scored):
    scored_run(catalog, scored)
    with catalog.session() as s:
        best, worst = (s.scalars(sa.select(Detection).order_by(Detection.confidence_score.desc())).all()[i]
                       for i in (0, -1))
        best = dq.start_validation(s, best)
        assert best.status is D.VALIDATING
        best = dq.release_validation(s, best)  # the reviewer's lease lapsed
        dq.start_validation(s, best)
        best = dq.record_validation(s, best, True, "real", 0.95)
        assert (best.status, best.is_validated, best.human_label, best.validation_confidence) == (
            D.VALIDATED, True, "real", 0.95)
        assert dq.confirm_detection(s, best).status is D.CONFIRMED
        dq.start_validation(s, worst)
        worst = dq.record_validation(s, worst, False, "bogus")
        assert (worst.status, worst.is_validated, worst.human_label, worst.validation_confidence) == (
            D.REJECTED, True, "bogus", None)
        dq.start_validation(s, worst)  # a second opinion overturns it
        worst = dq.record_validation(s, worst, True, "real", 0.6)
        assert (worst.status, worst.human_label) == (D.VALIDATED, "real")
        assert dq.archive_detection(s, best).status is D.ARCHIVED


def test_an_illegal_vetting_step_leaves_the_detection_untouched(catalog, scored):
    scored_run(catalog, scored)
    with catalog.session() as s:
        detection = s.scalars(sa.select(Detection)).first()
        for step in (dq.confirm_detection, lambda s_, d: dq.record_validation(s_, d, True, "real", 1.0)):
            with pytest.raises(IllegalTransition):  # pending: neither confirmed nor given a verdict unreviewed
                step(s, detection)
            assert (detection.status, detection.is_validated, detection.human_label) == (D.PENDING, False, None)
        dq.archive_detection(s, detection)
        with pytest.raises(IllegalTransition):  # archived is terminal
            dq.start_validation(s, detection)
    with catalog.session() as s:
        assert s.get(Detection, detection.id).status is D.ARCHIVED
