"""ObservationResult products: instruments, requests, results, tasks, processing runs and outputs.

Frozen on purpose (no imports from the models). ``observation_results`` and
``observation_result_processing_runs`` reference each other: the result's
``current_processing_run_id`` foreign key is added once both tables exist.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "copies_mode": ("single", "all_eligible", "count"),
    "request_status": ("active", "completed", "canceled"),
    "fulfillment_status": ("pending_dispatch", "dispatched", "partially_fulfilled", "fulfilled", "canceled"),
    "data_product_status": ("PENDING", "BUILDING", "READY", "BLOCKED", "FAILED", "SKIPPED", "STALE"),
    "task_state": ("dispatched", "observed", "succeeded", "failed", "canceled"),
    "result_processing_status": ("running", "succeeded", "blocked", "failed", "skipped", "abandoned"),
}
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def enum(name: str) -> sa.Enum:
    # PostgreSQL types are created once up front (copies_mode serves two tables); SQLite gets CHECKs.
    values = ENUMS[name]
    return sa.Enum(*values, name=name, create_constraint=True).with_variant(
        postgresql.ENUM(*values, name=name, create_type=False), "postgresql")


def standard_columns() -> tuple[sa.Column, sa.Column, sa.Column]:
    return (sa.Column("id", sa.Uuid(), primary_key=True),
            sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
            sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False))


def fk(column: str, target: str, ondelete: str, nullable: bool = True) -> sa.Column:
    return sa.Column(column, sa.Uuid(), sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)


def index(table: str, *columns: str, name: str | None = None) -> None:
    op.create_index(name or op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).create(op.get_bind(), checkfirst=False)

    op.create_table(
        "instruments",
        *standard_columns(),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("telescope", sa.String(64)),
        sa.Column("filter_bands", JSON, nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.create_table(
        "observation_requests",
        *standard_columns(),
        fk("survey_id", "surveys.id", "RESTRICT", nullable=False),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("target_name", sa.String(128), nullable=False),
        sa.Column("ra", sa.Double(), nullable=False),
        sa.Column("dec", sa.Double(), nullable=False),
        sa.Column("filter_band", sa.String(32), nullable=False),
        sa.Column("exposure_time", sa.Double(), nullable=False),
        sa.Column("n_epochs", sa.Integer(), nullable=False),
        sa.Column("cadence_seconds", sa.Double(), nullable=False),
        sa.Column("samples_per_epoch", sa.Integer(), nullable=False),
        sa.Column("copies_mode", enum("copies_mode"), nullable=False),
        sa.Column("copies_count", sa.Integer()),
        sa.Column("window_start", TIMESTAMP),
        sa.Column("window_end", TIMESTAMP),
        sa.Column("match_radius_deg", sa.Double(), server_default=sa.text("0.25"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", enum("request_status"), nullable=False),
        sa.CheckConstraint("ra >= 0 AND ra < 360", name="ra_range"),
        sa.CheckConstraint("dec >= -90 AND dec <= 90", name="dec_range"),
        sa.CheckConstraint("exposure_time > 0", name="exposure_time_positive"),
        sa.CheckConstraint("n_epochs >= 1", name="n_epochs_positive"),
        sa.CheckConstraint("samples_per_epoch >= 1", name="samples_positive"),
        sa.CheckConstraint("cadence_seconds >= 0", name="cadence_non_negative"),
        sa.CheckConstraint("match_radius_deg > 0 AND match_radius_deg <= 10", name="match_radius_range"),
        sa.CheckConstraint("(copies_mode = 'count' AND copies_count >= 1) OR "
                           "(copies_mode != 'count' AND copies_count IS NULL)", name="copies_count_matches_mode"),
        sa.CheckConstraint("window_end IS NULL OR window_start IS NULL OR window_end > window_start",
                           name="window_ordered"),
    )
    index("observation_requests", "survey_id")
    index("observation_requests", "status")

    op.create_table(
        "observation_results",
        *standard_columns(),
        sa.Column("uid", sa.Uuid(), nullable=False, unique=True),
        fk("observation_id", "observations.id", "SET NULL"),
        fk("request_id", "observation_requests.id", "CASCADE", nullable=False),
        sa.Column("epoch_index", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("copy_index", sa.Integer(), nullable=False),
        fk("instrument_id", "instruments.id", "RESTRICT"),
        sa.Column("copies_mode", enum("copies_mode"), nullable=False),
        sa.Column("not_before", TIMESTAMP),
        sa.Column("spec_snapshot", JSON),
        sa.Column("fulfillment_status", enum("fulfillment_status"), nullable=False),
        sa.Column("fulfilled_on", TIMESTAMP),
        sa.Column("fulfillment_note", sa.Text()),
        sa.Column("data_product_status", enum("data_product_status"), nullable=False),
        sa.Column("status_reason", sa.Text()),
        sa.Column("assets_revision", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("dirty_from_revision", sa.Integer()),
        sa.Column("dirty_since", TIMESTAMP),
        sa.Column("next_eligible_run_at", TIMESTAMP),
        sa.Column("last_built_revision", sa.Integer()),
        sa.Column("build_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("current_processing_run_id", sa.Uuid()),
        sa.UniqueConstraint("request_id", "epoch_index", "sample_index", "copy_index"),
        sa.CheckConstraint("epoch_index >= 0 AND sample_index >= 0 AND copy_index >= 0", name="indices_non_negative"),
        sa.CheckConstraint("assets_revision >= 0", name="assets_revision_non_negative"),
        sa.CheckConstraint("last_built_revision IS NULL OR last_built_revision <= assets_revision",
                           name="built_revision_not_ahead"),
        sa.CheckConstraint("dirty_from_revision IS NULL OR dirty_from_revision <= assets_revision",
                           name="dirty_revision_not_ahead"),
        sa.CheckConstraint("(fulfillment_status = 'fulfilled') = (fulfilled_on IS NOT NULL)",
                           name="fulfilled_on_iff_fulfilled"),
        sa.CheckConstraint("build_attempts >= 0", name="build_attempts_non_negative"),
    )
    for column in ("observation_id", "request_id", "instrument_id", "fulfillment_status"):
        index("observation_results", column)
    index("observation_results", "data_product_status", "next_eligible_run_at",
          name="ix_observation_results_rebuild_due")

    op.create_table(
        "observation_result_processing_runs",
        *standard_columns(),
        fk("result_id", "observation_results.id", "CASCADE", nullable=False),
        sa.Column("built_from_revision", sa.Integer(), nullable=False),
        sa.Column("status", enum("result_processing_status"), nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.Column("error", sa.Text()),
        sa.CheckConstraint("built_from_revision >= 0", name="revision_non_negative"),
    )
    for column in ("result_id", "status", "dagster_run_id"):
        index("observation_result_processing_runs", column)
    with op.batch_alter_table("observation_results") as batch:
        batch.create_foreign_key(
            op.f("fk_observation_results_current_processing_run_id_observation_result_processing_runs"),
            "observation_result_processing_runs", ["current_processing_run_id"], ["id"], ondelete="SET NULL")

    op.create_table(
        "observation_tasks",
        *standard_columns(),
        fk("result_id", "observation_results.id", "CASCADE", nullable=False),
        fk("instrument_id", "instruments.id", "RESTRICT"),
        sa.Column("state", enum("task_state"), nullable=False),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("finished_at", TIMESTAMP),
        sa.Column("error", sa.Text()),
        sa.CheckConstraint("finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at",
                           name="finished_after_started"),
    )
    for column in ("result_id", "instrument_id", "state"):
        index("observation_tasks", column)

    op.create_table(
        "observation_task_observations",
        sa.Column("task_id", sa.Uuid(), sa.ForeignKey("observation_tasks.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("observation_id", sa.Uuid(), sa.ForeignKey("observations.id", ondelete="CASCADE"),
                  primary_key=True),
    )
    index("observation_task_observations", "observation_id")

    op.create_table(
        "observation_result_processing_run_outputs",
        *standard_columns(),
        fk("processing_run_id", "observation_result_processing_runs.id", "CASCADE", nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.UniqueConstraint("processing_run_id", "kind"),
        sa.CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        sa.CheckConstraint("length(checksum) = 64", name="checksum_is_sha256"),
    )
    index("observation_result_processing_run_outputs", "processing_run_id")


def downgrade() -> None:
    with op.batch_alter_table("observation_results") as batch:
        batch.drop_constraint(
            op.f("fk_observation_results_current_processing_run_id_observation_result_processing_runs"),
            type_="foreignkey")
    for table in ("observation_result_processing_run_outputs", "observation_task_observations", "observation_tasks",
                  "observation_result_processing_runs", "observation_results", "observation_requests", "instruments"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).drop(op.get_bind(), checkfirst=False)
