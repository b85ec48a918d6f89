"""Operations ledger (operators, operation_runs) and processing provenance (processing_runs,
processing_steps, artifacts, step_inputs).

Frozen on purpose (no imports from the models). The partial unique index
``uq_operation_runs_active_identity`` makes an operation idempotent while it is queued
or running, on SQLite and PostgreSQL alike.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "operation_status": ("queued", "running", "completed"),
    "operation_outcome": ("pending", "succeeded", "partially_succeeded", "failed", "cancelled"),
    "processing_run_status": ("pending", "running", "completed", "failed", "cancelled"),
    "processing_step_type": ("run_start", "step_start", "materialization", "check_result", "step_success", "failure",
                             "run_end"),
}
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
#: SQLite auto-increments only a column declared exactly INTEGER PRIMARY KEY
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ACTIVE = "status IN ('queued', 'running')"


def enum(name: str) -> sa.Enum:
    # PostgreSQL types are created up front; SQLite gets CHECKs.
    values = ENUMS[name]
    return sa.Enum(*values, name=name, create_constraint=True).with_variant(
        postgresql.ENUM(*values, name=name, create_type=False), "postgresql")


def uuid_pk() -> sa.Column:
    return sa.Column("id", sa.Uuid(), primary_key=True)


def timestamps() -> tuple[sa.Column, sa.Column]:
    return (sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
            sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False))


def fk(column: str, target: str, ondelete: str, nullable: bool = True, type_: sa.types.TypeEngine = sa.Uuid()):
    return sa.Column(column, type_, sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)


def hex64(column: str, nullable: bool) -> sa.CheckConstraint:
    """``column`` holds 64 lower-case hex digits (or NULL), spelled for the dialect at hand."""
    null_ok = f"{column} IS NULL OR " if nullable else ""
    if op.get_bind().dialect.name == "postgresql":
        return sa.CheckConstraint(f"{null_ok}{column} ~ '^[0-9a-f]{{64}}$'", name=f"{column}_hex")
    test = f"length({column}) = 64 AND {column} NOT GLOB '*[^0-9a-f]*'"
    return sa.CheckConstraint(f"{null_ok}({test})" if nullable else test, name=f"{column}_hex")


def index(table: str, *columns: str, unique: bool = False, where: str | None = None, name: str | None = None):
    extra = {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)} if where else {}
    op.create_index(name or op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns), unique=unique, **extra)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).create(op.get_bind(), checkfirst=False)

    op.create_table(
        "operators",
        uuid_pk(),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        *timestamps(),
    )

    type_taxonomy = (
        sa.CheckConstraint("type ~ '^[a-z_]+(\\.[a-z_]+)+$'", name="type_taxonomy") if postgres
        else sa.CheckConstraint("type GLOB '[a-z_]*.[a-z_]*' AND type NOT GLOB '*[^a-z_.]*' AND type NOT GLOB '*.' "
                                "AND type NOT GLOB '*..*'", name="type_taxonomy"))
    op.create_table(
        "operation_runs",
        sa.Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
        fk("survey_id", "surveys.id", "RESTRICT", nullable=False),
        fk("operator_id", "operators.id", "SET NULL"),
        sa.Column("initiator_name", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("status", enum("operation_status"), server_default="queued", nullable=False),
        sa.Column("outcome", enum("operation_outcome"), server_default="pending", nullable=False),
        sa.Column("run_identity_hash", sa.String(64), nullable=False),
        sa.Column("summary_counts", JSON),
        sa.Column("failure_summary", JSON),
        sa.Column("context", JSON),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("completed_at", TIMESTAMP),
        *timestamps(),
        sa.CheckConstraint("(status = 'completed') = (outcome != 'pending')", name="outcome_final_iff_completed"),
        sa.CheckConstraint("(status = 'completed') = (completed_at IS NOT NULL)", name="completed_at_iff_completed"),
        sa.CheckConstraint("(status = 'queued') = (started_at IS NULL)", name="started_at_unless_queued"),
        sa.CheckConstraint("completed_at IS NULL OR completed_at >= started_at", name="completed_after_started"),
        hex64("run_identity_hash", nullable=False),
        type_taxonomy,
    )
    index("operation_runs", "operator_id")
    index("operation_runs", "survey_id", "run_identity_hash", unique=True, where=ACTIVE,
          name="uq_operation_runs_active_identity")
    index("operation_runs", "survey_id", "type", "created_at", name="ix_operation_runs_survey_type_created")
    index("operation_runs", "survey_id", "created_at", name="ix_operation_runs_survey_created")

    op.create_table(
        "processing_runs",
        uuid_pk(),
        sa.Column("dagster_run_id", sa.String(64), nullable=False, unique=True),
        sa.Column("job_name", sa.String(128), nullable=False),
        sa.Column("partition_keys", JSON, nullable=False),
        sa.Column("status", enum("processing_run_status"), nullable=False),
        sa.Column("run_config", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        fk("operation_run_id", "operation_runs.id", "SET NULL", type_=sa.BigInteger()),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("finished_at", TIMESTAMP),
        *timestamps(),
        sa.CheckConstraint("finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at",
                           name="finished_after_started"),
        sa.CheckConstraint("status IN ('completed', 'failed', 'cancelled') OR finished_at IS NULL",
                           name="finished_at_only_when_finished"),
    )
    index("processing_runs", "job_name")
    index("processing_runs", "operation_run_id")
    index("processing_runs", "status")

    op.create_table(
        "processing_steps",
        uuid_pk(),
        fk("processing_run_id", "processing_runs.id", "CASCADE", nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("type", enum("processing_step_type"), nullable=False),
        sa.Column("content", JSON, nullable=False),
        sa.Column("timestamp", TIMESTAMP, nullable=False),
        sa.Column("latency_ms", sa.Double()),
        sa.Column("event_storage_id", sa.BigInteger(), nullable=False),
        *timestamps(),
        sa.UniqueConstraint("processing_run_id", "sequence"),
        sa.UniqueConstraint("processing_run_id", "event_storage_id"),
        sa.CheckConstraint("sequence >= 0", name="sequence_non_negative"),
        sa.CheckConstraint("latency_ms IS NULL OR latency_ms >= 0", name="latency_non_negative"),
    )

    op.create_table(
        "artifacts",
        uuid_pk(),
        fk("step_id", "processing_steps.id", "CASCADE", nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("mime_type", sa.String(128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("asset_key", sa.String(255), nullable=False),
        sa.Column("partition_key", sa.String(128)),
        sa.Column("code_version", sa.String(64)),
        *timestamps(),
        sa.CheckConstraint("size_bytes IS NULL OR size_bytes >= 0", name="size_non_negative"),
        hex64("sha256", nullable=True),
    )
    index("artifacts", "step_id")
    index("artifacts", "path")
    index("artifacts", "asset_key", "partition_key", name="ix_artifacts_asset_partition")

    op.create_table(
        "step_inputs",
        uuid_pk(),
        fk("step_id", "processing_steps.id", "CASCADE", nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64)),
        fk("input_artifact_id", "artifacts.id", "SET NULL"),
        fk("raw_data_file_id", "raw_data_files.id", "SET NULL"),
        *timestamps(),
        hex64("sha256", nullable=True),
    )
    index("step_inputs", "step_id")
    index("step_inputs", "input_artifact_id")
    index("step_inputs", "raw_data_file_id")


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    for table in ("step_inputs", "artifacts", "processing_steps", "processing_runs", "operation_runs", "operators"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).drop(op.get_bind(), checkfirst=False)
