"""The schema of the detection domain: the real/bogus model registry, its inference runs and their detections.

Adapted from the AstrID detection models (Model, ModelRun, Detection):

* :class:`Model`: one version of a named model (``name``, ``version``: UNIQUE together). A gradient-boosting
  real/bogus model and a CNN on cutout triplets are both a ``classifier``; ``architecture`` says which. At most
  one version of a name is active (a partial unique index): the one the pipeline scores with.
* :class:`ModelRun`: one model version applied to one observation's candidates (UNIQUE per model version and
  observation: a re-score of the same version reuses the row and replaces its detections in place).
* :class:`Detection`: the score of one candidate by one run (UNIQUE per run and candidate), and its human vetting
  (``status`` pending → validating → validated | rejected → confirmed | archived, see ``catalog.states``).

Detections are derived from candidates: deleting a candidate (a re-difference replaces them), a run or an
observation deletes its detections in the database (ON DELETE CASCADE). A model with runs cannot be deleted.
"""

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dagster_project.catalog.healpix import healpix_index
from dagster_project.catalog.schema.base import Base, StandardColumns, enum_type, ra_dec_checks
from dagster_project.catalog.schema.observations import Candidate, Observation

__all__ = [
    "Detection",
    "DetectionStatus",
    "DetectionType",
    "Model",
    "ModelRun",
    "ModelRunStatus",
    "ModelType",
]


class ModelType(enum.StrEnum):
    UNET = "unet"
    ANOMALY_DETECTOR = "anomaly_detector"
    CLASSIFIER = "classifier"
    SEGMENTATION = "segmentation"


class ModelRunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class DetectionType(enum.StrEnum):
    SUPERNOVA = "supernova"
    VARIABLE = "variable"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"
    ARTIFACT = "artifact"


class DetectionStatus(enum.StrEnum):
    PENDING = "pending"
    VALIDATING = "validating"
    VALIDATED = "validated"
    REJECTED = "rejected"
    CONFIRMED = "confirmed"
    ARCHIVED = "archived"


def unit_interval(column: str) -> sa.CheckConstraint:
    """``column`` is NULL or between 0 and 1 (a NOT NULL column says so itself)."""
    return sa.CheckConstraint(f"{column} IS NULL OR ({column} >= 0 AND {column} <= 1)", name=f"{column}_range")


def non_negative(column: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IS NULL OR {column} >= 0", name=f"{column}_non_negative")


#: a path relative to the store: not empty, not absolute, no ``..`` component
MODEL_PATH_RELATIVE = ("model_path <> '' AND model_path NOT LIKE '/%' AND model_path <> '..' "
                       "AND model_path NOT LIKE '../%' AND model_path NOT LIKE '%/..' AND model_path NOT LIKE '%/../%'")


class Model(StandardColumns, Base):
    """One version of a named model, with what it was trained on and how well it did."""

    __tablename__ = "models"
    __table_args__ = (
        sa.UniqueConstraint("name", "version"),
        *(unit_interval(metric) for metric in ("precision", "recall", "f1_score", "accuracy")),
        sa.CheckConstraint("name <> '' AND version <> ''", name="name_version_not_empty"),
        sa.CheckConstraint(MODEL_PATH_RELATIVE, name="model_path_relative"),
        sa.CheckConstraint("deployment_date IS NOT NULL OR NOT is_active", name="active_is_deployed"),
        # One active version per name: the database refuses a second, whoever writes it.
        sa.Index("uq_models_active_name", "name", unique=True,
                 sqlite_where=sa.text("is_active"), postgresql_where=sa.text("is_active")),
    )

    name: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[str] = mapped_column(sa.String(64))
    model_type: Mapped[ModelType] = mapped_column(enum_type(ModelType, "model_type"))
    #: e.g. {"family": "gradient_boosting", "library": "lightgbm", "n_estimators": 500, "inputs": "features"}
    architecture: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: what it was trained on: e.g. {"source": "simulated injections", "n_real": ..., "n_bogus": ..., "nights": [...]}
    training_dataset: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    precision: Mapped[float | None] = mapped_column(sa.Double)
    recall: Mapped[float | None] = mapped_column(sa.Double)
    f1_score: Mapped[float | None] = mapped_column(sa.Double)
    accuracy: Mapped[float | None] = mapped_column(sa.Double)
    is_active: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: when it was last made the active version (kept when it is deactivated)
    deployment_date: Mapped[datetime | None]
    #: relative to the store
    model_path: Mapped[str] = mapped_column(sa.String(1024))
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(64))

    runs: Mapped[list["ModelRun"]] = relationship(back_populates="model")

    def __repr__(self) -> str:
        return f"Model({self.name!r} {self.version!r}{', active' if self.is_active else ''})"


class ModelRun(StandardColumns, Base):
    """The scoring of one observation's candidates by one model version (reset, never duplicated, on re-runs)."""

    __tablename__ = "model_runs"
    __table_args__ = (
        sa.UniqueConstraint("model_id", "observation_id"),
        non_negative("inference_time_ms"),
        non_negative("memory_usage_mb"),
        sa.CheckConstraint("total_predictions >= 0", name="total_predictions_non_negative"),
        sa.CheckConstraint("high_confidence_predictions >= 0 AND high_confidence_predictions <= total_predictions",
                           name="high_confidence_predictions_range"),
        unit_interval("high_confidence_threshold"),
        sa.CheckConstraint("status <> 'failed' OR error_message IS NOT NULL", name="failed_has_reason"),
        sa.CheckConstraint("(status IN ('completed', 'failed')) = (finished_at IS NOT NULL)",
                           name="finished_at_iff_finished"),
    )

    model_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    observation_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("observations.id", ondelete="CASCADE"),
                                                      index=True)
    input_image_path: Mapped[str | None] = mapped_column(sa.String(1024))
    output_mask_path: Mapped[str | None] = mapped_column(sa.String(1024))
    confidence_map_path: Mapped[str | None] = mapped_column(sa.String(1024))
    inference_time_ms: Mapped[float | None] = mapped_column(sa.Double)
    memory_usage_mb: Mapped[float | None] = mapped_column(sa.Double)
    #: the stored detections of the last completed attempt, and how many scored at least the threshold
    total_predictions: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    high_confidence_predictions: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    high_confidence_threshold: Mapped[float | None] = mapped_column(sa.Double)
    status: Mapped[ModelRunStatus] = mapped_column(
        enum_type(ModelRunStatus, "model_run_status"), default=ModelRunStatus.PENDING,
        server_default=ModelRunStatus.PENDING.value, index=True)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    dagster_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    model: Mapped[Model] = relationship(back_populates="runs")
    observation: Mapped[Observation] = relationship()
    detections: Mapped[list["Detection"]] = relationship(
        back_populates="model_run", cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return f"ModelRun({self.model_id}, {self.observation_id}, {self.status})"


class Detection(StandardColumns, Base):
    """One candidate as a model run scored it, and its human vetting (pixel coordinates are 0-based)."""

    __tablename__ = "detections"
    __table_args__ = (
        sa.UniqueConstraint("model_run_id", "candidate_id"),
        *ra_dec_checks(),
        sa.CheckConstraint("confidence_score >= 0 AND confidence_score <= 1", name="confidence_score_range"),
        unit_interval("validation_confidence"),
        non_negative("inference_time_ms"),
        # A human verdict precedes these states (archived may come straight from pending).
        sa.CheckConstraint("status NOT IN ('validated', 'rejected', 'confirmed') OR is_validated",
                           name="verdict_is_recorded"),
    )

    model_run_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("model_runs.id", ondelete="CASCADE"))
    observation_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("observations.id", ondelete="CASCADE"),
                                                      index=True)
    candidate_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"), index=True)
    ra: Mapped[float] = mapped_column(sa.Double)
    dec: Mapped[float] = mapped_column(sa.Double)
    healpix_index: Mapped[int] = mapped_column(sa.BigInteger, index=True)  # see _sync_healpix_index
    pixel_x: Mapped[float] = mapped_column(sa.Double)
    pixel_y: Mapped[float] = mapped_column(sa.Double)
    confidence_score: Mapped[float] = mapped_column(sa.Double)
    detection_type: Mapped[DetectionType] = mapped_column(
        enum_type(DetectionType, "detection_type"), default=DetectionType.UNKNOWN,
        server_default=DetectionType.UNKNOWN.value)
    #: the model version that scored it (a snapshot of its run's Model.version)
    model_version: Mapped[str] = mapped_column(sa.String(64))
    inference_time_ms: Mapped[float | None] = mapped_column(sa.Double)
    prediction_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[DetectionStatus] = mapped_column(
        enum_type(DetectionStatus, "detection_status"), default=DetectionStatus.PENDING,
        server_default=DetectionStatus.PENDING.value, index=True)
    #: a human verdict was recorded (it stays True through a second opinion)
    is_validated: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    validation_confidence: Mapped[float | None] = mapped_column(sa.Double)
    #: the last verdict's label, e.g. "real" or "bogus"
    human_label: Mapped[str | None] = mapped_column(sa.String(64))

    model_run: Mapped[ModelRun] = relationship(back_populates="detections")
    observation: Mapped[Observation] = relationship()
    candidate: Mapped[Candidate] = relationship()

    def __repr__(self) -> str:
        return f"Detection({self.id}, {self.confidence_score}, {self.status})"


@sa.event.listens_for(Detection, "before_insert")
@sa.event.listens_for(Detection, "before_update")
def _sync_healpix_index(_mapper, _connection, target: Detection) -> None:
    # As for candidates: derived from ra/dec on every ORM write, never stale.
    target.healpix_index = healpix_index(target.ra, target.dec)
