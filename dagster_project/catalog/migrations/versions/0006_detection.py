"""The detection domain, and each frame's measured depth: models (the real/bogus model registry, one active version per name), model_runs (one
model version applied to one observation) and detections (the score of one candidate by one run, and its human
vetting); difference_runs gain the depth measured by injected fakes (depth_snr50, its error, depth_mag50 in
depth_mag_system, depth_n_fakes).

Frozen on purpose (no imports from the models).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "model_type": ("unet", "anomaly_detector", "classifier", "segmentation"),
    "model_run_status": ("pending", "running", "completed", "failed"),
    "detection_type": ("supernova", "variable", "transient", "unknown", "artifact"),
    "detection_status": ("pending", "validating", "validated", "rejected", "confirmed", "archived"),
}
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
MODEL_PATH_RELATIVE = ("model_path <> '' AND model_path NOT LIKE '/%' AND model_path <> '..' "
                       "AND model_path NOT LIKE '../%' AND model_path NOT LIKE '%/..' AND model_path NOT LIKE '%/../%'")


def enum(name: str) -> sa.Enum:
    values = ENUMS[name]
    return sa.Enum(*values, name=name, create_constraint=True).with_variant(
        postgresql.ENUM(*values, name=name, create_type=False), "postgresql")


def standard_columns() -> tuple[sa.Column, sa.Column, sa.Column]:
    return (sa.Column("id", sa.Uuid(), primary_key=True),
            sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
            sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False))


def fk(column: str, target: str, ondelete: str) -> sa.Column:
    return sa.Column(column, sa.Uuid(), sa.ForeignKey(target, ondelete=ondelete), nullable=False)


def unit_interval(column: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IS NULL OR ({column} >= 0 AND {column} <= 1)", name=f"{column}_range")


def non_negative(column: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IS NULL OR {column} >= 0", name=f"{column}_non_negative")


def create_models() -> None:
    op.create_table(
        "models",
        *standard_columns(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("model_type", enum("model_type"), nullable=False),
        *(sa.Column(name, JSON, nullable=False)
          for name in ("architecture", "hyperparameters", "training_dataset", "training_metrics")),
        *(sa.Column(name, sa.Double()) for name in ("precision", "recall", "f1_score", "accuracy")),
        sa.Column("is_active", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("deployment_date", TIMESTAMP),
        sa.Column("model_path", sa.String(1024), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.UniqueConstraint("name", "version"),
        *(unit_interval(name) for name in ("precision", "recall", "f1_score", "accuracy")),
        sa.CheckConstraint("name <> '' AND version <> ''", name="name_version_not_empty"),
        sa.CheckConstraint(MODEL_PATH_RELATIVE, name="model_path_relative"),
        sa.CheckConstraint("deployment_date IS NOT NULL OR NOT is_active", name="active_is_deployed"),
    )
    op.create_index("uq_models_active_name", "models", ["name"], unique=True,
                    sqlite_where=sa.text("is_active"), postgresql_where=sa.text("is_active"))


def create_model_runs() -> None:
    op.create_table(
        "model_runs",
        *standard_columns(),
        fk("model_id", "models.id", "RESTRICT"),
        fk("observation_id", "observations.id", "CASCADE"),
        *(sa.Column(name, sa.String(1024)) for name in ("input_image_path", "output_mask_path",
                                                        "confidence_map_path")),
        sa.Column("inference_time_ms", sa.Double()),
        sa.Column("memory_usage_mb", sa.Double()),
        sa.Column("total_predictions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("high_confidence_predictions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("high_confidence_threshold", sa.Double()),
        sa.Column("status", enum("model_run_status"), server_default="pending", nullable=False),
        sa.Column("error_message", sa.Text()),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("finished_at", TIMESTAMP),
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
    for column in ("model_id", "observation_id", "status"):
        op.create_index(op.f(f"ix_model_runs_{column}"), "model_runs", [column])


def create_detections() -> None:
    op.create_table(
        "detections",
        *standard_columns(),
        fk("model_run_id", "model_runs.id", "CASCADE"),
        fk("observation_id", "observations.id", "CASCADE"),
        fk("candidate_id", "candidates.id", "CASCADE"),
        sa.Column("ra", sa.Double(), nullable=False),
        sa.Column("dec", sa.Double(), nullable=False),
        sa.Column("healpix_index", sa.BigInteger(), nullable=False),
        sa.Column("pixel_x", sa.Double(), nullable=False),
        sa.Column("pixel_y", sa.Double(), nullable=False),
        sa.Column("confidence_score", sa.Double(), nullable=False),
        sa.Column("detection_type", enum("detection_type"), server_default="unknown", nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("inference_time_ms", sa.Double()),
        sa.Column("prediction_metadata", JSON, nullable=False),
        sa.Column("status", enum("detection_status"), server_default="pending", nullable=False),
        sa.Column("is_validated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("validation_confidence", sa.Double()),
        sa.Column("human_label", sa.String(64)),
        sa.UniqueConstraint("model_run_id", "candidate_id"),
        sa.CheckConstraint("ra >= 0 AND ra < 360", name="ra_range"),
        sa.CheckConstraint("dec >= -90 AND dec <= 90", name="dec_range"),
        sa.CheckConstraint("confidence_score >= 0 AND confidence_score <= 1", name="confidence_score_range"),
        unit_interval("validation_confidence"),
        non_negative("inference_time_ms"),
        sa.CheckConstraint("status NOT IN ('validated', 'rejected', 'confirmed') OR is_validated",
                           name="verdict_is_recorded"),
    )
    for column in ("observation_id", "candidate_id", "healpix_index", "status"):
        op.create_index(op.f(f"ix_detections_{column}"), "detections", [column])


DEPTH_COLUMNS = (("depth_snr50", sa.Double()), ("depth_snr50_err", sa.Double()), ("depth_mag50", sa.Double()),
                 ("depth_mag_system", sa.String(16)), ("depth_n_fakes", sa.Integer()))
DEPTH_CHECKS = {
    "depth_snr50_positive": "depth_snr50 IS NULL OR depth_snr50 > 0",
    "depth_n_fakes_non_negative": "depth_n_fakes IS NULL OR depth_n_fakes >= 0",
    "depth_mag_system_known": "depth_mag_system IS NULL OR depth_mag_system IN ('instrumental', 'calibrated')",
}


def add_depth_columns() -> None:
    with op.batch_alter_table("difference_runs", recreate="auto") as batch:
        for column, kind in DEPTH_COLUMNS:
            batch.add_column(sa.Column(column, kind, nullable=True))
        for name, condition in DEPTH_CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_difference_runs_{name}"), condition)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).create(op.get_bind(), checkfirst=False)
    create_models()
    create_model_runs()
    create_detections()
    add_depth_columns()


def downgrade() -> None:
    with op.batch_alter_table("difference_runs", recreate="auto") as batch:
        for name in DEPTH_CHECKS:
            batch.drop_constraint(op.f(f"ck_difference_runs_{name}"), type_="check")
        for column, _ in DEPTH_COLUMNS:
            batch.drop_column(column)
    # Dropping a table drops its indexes and constraints with it.
    for table in ("detections", "model_runs", "models"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for name in ENUMS:
            postgresql.ENUM(name=name).drop(op.get_bind(), checkfirst=False)
