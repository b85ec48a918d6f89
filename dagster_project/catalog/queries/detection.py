"""Named reads and writes of the detection domain: the model registry (versions registered, one activated, looked
up), model runs (started, finished with their detections, failed) and the human vetting of detections.

As in every query module, a function takes a session first, flushes (the database checks its constraints at once)
and never commits. Lifecycle functions accept entities loaded in an earlier session: they re-read the row (locked
``FOR UPDATE`` on PostgreSQL) and return the current instance. The rules are the database's (one active version
per name, scores and metrics between 0 and 1, consistent counts) and the state machines' (``catalog.states``).
"""

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dagster_project.catalog.queries.observations import NotFound, current_row, set_status
from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.detection import (
    Detection,
    DetectionStatus,
    DetectionType,
    Model,
    ModelRun,
    ModelRunStatus,
    ModelType,
)
from dagster_project.catalog.schema.observations import Candidate
from dagster_project.catalog.states import check_transition, transition

__all__ = [
    "DETECTION_FIELDS",
    "DuplicateModelVersion",
    "activate_model",
    "active_model",
    "archive_detection",
    "confirm_detection",
    "detections_of_observation",
    "fail_model_run",
    "finish_model_run",
    "get_model",
    "list_models",
    "record_validation",
    "register_model",
    "release_validation",
    "start_model_run",
    "start_validation",
]

#: what a detection row given to :func:`finish_model_run` may hold (``candidate_id`` and ``confidence_score``
#: are required; position defaults to the candidate's, ``detection_type`` to unknown)
DETECTION_FIELDS = frozenset({"candidate_id", "confidence_score", "detection_type", "ra", "dec", "pixel_x",
                              "pixel_y", "inference_time_ms", "prediction_metadata"})


class DuplicateModelVersion(ValueError):
    """A model version registered twice."""


# --- the model registry ---------------------------------------------------------------------------------------------

def register_model(session: Session, name: str, version: str, model_type: ModelType | str,
                   architecture: dict[str, Any] | None = None, hyperparameters: dict[str, Any] | None = None,
                   training_dataset: dict[str, Any] | None = None, training_metrics: dict[str, Any] | None = None,
                   *, model_path: str, precision: float | None = None, recall: float | None = None,
                   f1_score: float | None = None, accuracy: float | None = None,
                   mlflow_run_id: str | None = None) -> Model:
    """A new, inactive version of the model ``name``; DuplicateModelVersion if that version is registered."""
    if session.scalar(sa.select(Model.id).where(Model.name == name, Model.version == version)) is not None:
        raise DuplicateModelVersion(f"model {name!r} version {version!r} is registered already: "
                                    "a changed model is a new version")
    model = Model(name=name, version=version, model_type=ModelType(model_type), architecture=architecture or {},
                  hyperparameters=hyperparameters or {}, training_dataset=training_dataset or {},
                  training_metrics=training_metrics or {}, precision=precision, recall=recall, f1_score=f1_score,
                  accuracy=accuracy, model_path=model_path, mlflow_run_id=mlflow_run_id, is_active=False)
    session.add(model)
    session.flush()
    return model


def _versions(session: Session, name: str, lock: bool = False) -> list[Model]:
    """Every version of ``name``, oldest first (locked: two activations of one name take turns)."""
    stmt = sa.select(Model).where(Model.name == name).order_by(Model.created_at, Model.id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return list(session.scalars(stmt))


def _unknown(name: str, version: str | None, versions: Sequence[Model]) -> NotFound:
    if not versions:
        return NotFound(f"no model named {name!r}")
    return NotFound(f"model {name!r} has no version {version!r} (versions: "
                    f"{', '.join(m.version for m in versions)})")


def activate_model(session: Session, name: str, version: str, *, now: datetime | None = None) -> Model:
    """Make ``version`` the active one of ``name`` and stamp its deployment date; the version active before is
    deactivated in the same transaction. NotFound for an unknown name or version; already active: unchanged."""
    versions = _versions(session, name, lock=True)
    model = next((m for m in versions if m.version == version), None)
    if model is None:
        raise _unknown(name, version, versions)
    if model.is_active:
        return model
    for other in versions:
        other.is_active = False
    session.flush()  # the old one off before the new one on: the unique index is checked row by row
    model.is_active, model.deployment_date = True, now or utcnow()
    session.flush()
    return model


def active_model(session: Session, name: str) -> Model | None:
    return session.scalar(sa.select(Model).where(Model.name == name, Model.is_active))


def list_models(session: Session, name: str | None = None) -> list[Model]:
    """Every model version (or those of ``name``), by name, then oldest first."""
    stmt = sa.select(Model).order_by(Model.name, Model.created_at, Model.id)
    return list(session.scalars(stmt if name is None else stmt.where(Model.name == name)))


def get_model(session: Session, name: str, version: str | None = None) -> Model:
    """That version of ``name``; without a version the active one, else the newest registered. NotFound if none."""
    versions = _versions(session, name)
    if version is None:
        found = next((m for m in versions if m.is_active), versions[-1] if versions else None)
    else:
        found = next((m for m in versions if m.version == version), None)
    if found is None:
        raise _unknown(name, version, versions)
    return found


# --- model runs -----------------------------------------------------------------------------------------------------

def start_model_run(session: Session, model: Model, observation_id: uuid.UUID, *,
                    input_image_path: str | None = None, dagster_run_id: str | None = None,
                    now: datetime | None = None) -> ModelRun:
    """Start (or restart) the scoring of an observation (its row's UUID) by ``model``: the one run of that model
    version and observation goes to running. A run left running by a dead worker is first marked failed
    ("abandoned"). The detections and counts of an earlier attempt stay until this one finishes."""
    run = session.scalar(sa.select(ModelRun).where(ModelRun.model_id == model.id,
                                                   ModelRun.observation_id == observation_id)
                       .with_for_update().execution_options(populate_existing=True))
    if run is None:
        run = ModelRun(model_id=model.id, observation_id=observation_id, status=ModelRunStatus.PENDING)
        session.add(run)
    elif run.status is ModelRunStatus.RUNNING:
        transition(run, ModelRunStatus.FAILED, reason=f"abandoned: superseded by Dagster run {dagster_run_id}")
    if run.status is not ModelRunStatus.PENDING:
        transition(run, ModelRunStatus.PENDING)
    run.input_image_path, run.dagster_run_id = input_image_path, dagster_run_id
    run.started_at, run.finished_at = now or utcnow(), None
    transition(run, ModelRunStatus.RUNNING)
    session.flush()
    return run


def finish_model_run(session: Session, run: ModelRun, detections: Sequence[Mapping[str, Any]],
                     inference_time_ms: float | None = None, memory_usage_mb: float | None = None,
                     high_confidence_threshold: float = 0.5, *, output_mask_path: str | None = None,
                     confidence_map_path: str | None = None, now: datetime | None = None) -> ModelRun:
    """End the attempt as completed: ``detections`` (rows of :data:`DETECTION_FIELDS`, one per scored candidate
    of the run's observation) become the run's detections, and the counts follow.

    Replaced in place: the detection of a candidate scored before is updated (its id and human vetting kept),
    a new candidate's is added, and one whose candidate is no longer scored is deleted.
    """
    run = current_row(session, run)
    check_transition(run, ModelRunStatus.COMPLETED)
    _replace_detections(session, run, detections)
    run.total_predictions = len(run.detections)
    run.high_confidence_predictions = sum(d.confidence_score >= high_confidence_threshold for d in run.detections)
    run.high_confidence_threshold = high_confidence_threshold
    run.inference_time_ms, run.memory_usage_mb = inference_time_ms, memory_usage_mb
    run.output_mask_path, run.confidence_map_path = output_mask_path, confidence_map_path
    run.finished_at = now or utcnow()
    transition(run, ModelRunStatus.COMPLETED)
    session.flush()
    return run


def _replace_detections(session: Session, run: ModelRun, rows: Sequence[Mapping[str, Any]]) -> None:
    candidates = {c.id: c for c in session.scalars(sa.select(Candidate)
                                                   .where(Candidate.observation_id == run.observation_id))}
    unknown = set().union(*rows) - DETECTION_FIELDS if rows else set()
    if unknown:
        raise TypeError(f"a detection has no field(s) {sorted(unknown)}")
    ids = [uuid.UUID(str(row["candidate_id"])) for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{run!r}: a candidate is scored twice")
    strangers = [str(i) for i in ids if i not in candidates]
    if strangers:
        raise ValueError(f"{run!r}: {len(strangers)} candidate(s) not of the run's observation: "
                         f"{', '.join(strangers[:5])}")
    scores = [_score(row, candidates[i], run.model.version) for row, i in zip(rows, ids, strict=True)]
    existing = {d.candidate_id: d for d in run.detections}  # every row was checked: now the changes
    for candidate_id, fields in zip(ids, scores, strict=True):
        detection = existing.pop(candidate_id, None)
        if detection is None:
            run.detections.append(Detection(candidate_id=candidate_id, observation_id=run.observation_id,
                                            status=DetectionStatus.PENDING, **fields))
        else:
            for name, value in fields.items():
                setattr(detection, name, value)
    for stale in existing.values():
        run.detections.remove(stale)  # delete-orphan


def _score(row: Mapping[str, Any], candidate: Candidate, version: str) -> dict[str, Any]:
    """A detection's score columns from its row (position: the candidate's unless given)."""
    time_ms = row.get("inference_time_ms")
    return {"confidence_score": float(row["confidence_score"]),
            "detection_type": DetectionType(row.get("detection_type", DetectionType.UNKNOWN)),
            **{name: float(row.get(name, getattr(candidate, name))) for name in ("ra", "dec", "pixel_x", "pixel_y")},
            "inference_time_ms": None if time_ms is None else float(time_ms),
            "prediction_metadata": dict(row.get("prediction_metadata") or {}), "model_version": version}


def fail_model_run(session: Session, run: ModelRun, reason: str, *, now: datetime | None = None) -> ModelRun:
    """running → failed with its reason; the detections of an earlier completed attempt stay."""
    run = current_row(session, run)
    transition(run, ModelRunStatus.FAILED, reason=reason)
    run.finished_at = now or utcnow()
    session.flush()
    return run


def detections_of_observation(session: Session, observation_id: uuid.UUID,
                              model_name: str | None = None) -> list[Detection]:
    """The detections of an observation (its row's UUID), of every model or of ``model_name``'s versions: by model
    name, version (oldest first), then most confident first."""
    stmt = (sa.select(Detection).join(ModelRun, Detection.model_run_id == ModelRun.id)
            .join(Model, ModelRun.model_id == Model.id).where(Detection.observation_id == observation_id)
            .order_by(Model.name, Model.created_at, Model.id, Detection.confidence_score.desc(), Detection.id))
    return list(session.scalars(stmt if model_name is None else stmt.where(Model.name == model_name)))


# --- vetting --------------------------------------------------------------------------------------------------------

def start_validation(session: Session, detection: Detection) -> Detection:
    """A reviewer takes the detection: pending (or validated, rejected: a second opinion) → validating."""
    return set_status(session, detection, DetectionStatus.VALIDATING)


def release_validation(session: Session, detection: Detection) -> Detection:
    """The reviewer's lease lapsed without a verdict: validating → pending."""
    return set_status(session, detection, DetectionStatus.PENDING)


def record_validation(session: Session, detection: Detection, is_valid: bool, label: str | None = None,
                      confidence: float | None = None) -> Detection:
    """The reviewer's verdict: validating → validated (``is_valid``) or rejected, with its label and confidence
    (0–1); they replace those of an earlier verdict."""
    detection = current_row(session, detection)
    transition(detection, DetectionStatus.VALIDATED if is_valid else DetectionStatus.REJECTED)
    detection.is_validated, detection.human_label, detection.validation_confidence = True, label, confidence
    session.flush()
    return detection


def confirm_detection(session: Session, detection: Detection) -> Detection:
    """validated → confirmed."""
    return set_status(session, detection, DetectionStatus.CONFIRMED)


def archive_detection(session: Session, detection: Detection) -> Detection:
    """pending, validated, rejected or confirmed → archived (terminal)."""
    return set_status(session, detection, DetectionStatus.ARCHIVED)
