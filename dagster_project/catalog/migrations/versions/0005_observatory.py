"""The observatory domain, what the operations API records: executed_obs_units, raw_data_packages,
registered_raw_files (files declared before they land), staging_requests (copies to a staging folder) and
applied_writes (each critical write of the
API applied once, by its idempotency key).

Frozen on purpose (no imports from the models).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "executed_obs_unit_status": ("started", "succeeded", "failed", "aborted"),
    "raw_data_package_status": ("building", "complete"),
    "registered_file_status": ("registered", "arrived", "mismatched", "missing"),
    "staging_status": ("requested", "staging", "completed", "failed", "cancelled"),
}
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
WAITING = "status IN ('registered', 'missing')"


def enum(name: str) -> sa.Enum:
    values = ENUMS[name]
    return sa.Enum(*values, name=name, create_constraint=True).with_variant(
        postgresql.ENUM(*values, name=name, create_type=False), "postgresql")


def standard_columns() -> tuple[sa.Column, sa.Column, sa.Column]:
    return (sa.Column("id", sa.Uuid(), primary_key=True),
            sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
            sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False))


def fk(column: str, target: str, unique: bool = False) -> sa.Column:
    return sa.Column(column, sa.Uuid(), sa.ForeignKey(target, ondelete="RESTRICT"), nullable=True, unique=unique)


def sha256_hex() -> sa.CheckConstraint:
    if op.get_bind().dialect.name == "postgresql":
        return sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex")
    return sa.CheckConstraint("length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'", name="sha256_hex")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).create(op.get_bind(), checkfirst=False)

    op.create_table(
        "executed_obs_units",
        *standard_columns(),
        sa.Column("obs_unit_id", sa.BigInteger(), nullable=False),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("telescope", sa.String(64)),
        sa.Column("operator", sa.String(128)),
        sa.Column("start_time", TIMESTAMP, nullable=False),
        sa.Column("end_time", TIMESTAMP),
        sa.Column("status", enum("executed_obs_unit_status"), nullable=False),
        sa.Column("status_reason", sa.Text()),
        sa.Column("obs_metadata", JSON, nullable=False),
        sa.CheckConstraint("obs_unit_id >= 0", name="obs_unit_id_non_negative"),
        sa.CheckConstraint("end_time IS NULL OR end_time >= start_time", name="ends_after_start"),
        sa.CheckConstraint("(status = 'started') = (end_time IS NULL)", name="finished_has_end"),
    )
    op.create_index(op.f("ix_executed_obs_units_obs_unit_id"), "executed_obs_units", ["obs_unit_id"])
    op.create_index(op.f("ix_executed_obs_units_status"), "executed_obs_units", ["status"])

    op.create_table(
        "raw_data_packages",
        *standard_columns(),
        sa.Column("name", sa.String(255), nullable=False),
        fk("executed_obs_unit_id", "executed_obs_units.id"),
        sa.Column("status", enum("raw_data_package_status"), nullable=False),
        sa.Column("size_limit_bytes", sa.BigInteger(), nullable=False),
        sa.Column("finalized_at", TIMESTAMP),
        sa.CheckConstraint("size_limit_bytes > 0", name="size_limit_positive"),
        sa.CheckConstraint("(status = 'complete') = (finalized_at IS NOT NULL)", name="complete_is_finalized"),
    )
    op.create_index(op.f("ix_raw_data_packages_executed_obs_unit_id"), "raw_data_packages", ["executed_obs_unit_id"])

    op.create_table(
        "registered_raw_files",
        *standard_columns(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", enum("registered_file_status"), nullable=False),
        sa.Column("status_reason", sa.Text()),
        fk("executed_obs_unit_id", "executed_obs_units.id"),
        fk("raw_data_package_id", "raw_data_packages.id"),
        fk("raw_data_file_id", "raw_data_files.id", unique=True),
        sa.Column("registered_at", TIMESTAMP, nullable=False),
        sa.Column("arrived_at", TIMESTAMP),
        sa.CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        sha256_hex(),
        sa.CheckConstraint("(status IN ('arrived', 'mismatched')) = (raw_data_file_id IS NOT NULL)",
                           name="landed_has_file"),
        sa.CheckConstraint("status NOT IN ('mismatched', 'missing') OR status_reason IS NOT NULL",
                           name="mismatch_has_reason"),
    )
    for column in ("status", "executed_obs_unit_id", "raw_data_package_id"):
        op.create_index(op.f(f"ix_registered_raw_files_{column}"), "registered_raw_files", [column])
    op.create_index("uq_registered_raw_files_waiting_name", "registered_raw_files", ["name"], unique=True,
                    sqlite_where=sa.text(WAITING), postgresql_where=sa.text(WAITING))

    op.create_table(
        "staging_requests",
        *standard_columns(),
        sa.Column("destination", sa.String(255), nullable=False),
        sa.Column("package_ids", JSON, nullable=False),
        sa.Column("file_ids", JSON, nullable=False),
        sa.Column("status", enum("staging_status"), nullable=False),
        sa.Column("status_reason", sa.Text()),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("files_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("files_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("operation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("operation_runs.id", ondelete="SET NULL")),
        sa.Column("requested_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("finished_at", TIMESTAMP),
        sa.CheckConstraint("files_done >= 0 AND files_done <= files_total", name="files_done_range"),
        sa.CheckConstraint("bytes_done >= 0 AND bytes_done <= bytes_total", name="bytes_done_range"),
        sa.CheckConstraint("status NOT IN ('failed') OR status_reason IS NOT NULL", name="failed_has_reason"),
        sa.CheckConstraint("(status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)",
                           name="finished_at_iff_finished"),
    )
    op.create_index(op.f("ix_staging_requests_status"), "staging_requests", ["status"])

    op.create_table(
        "applied_writes",
        *standard_columns(),
        sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.Column("journal_seq", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("length(content_sha256) = 64", name="content_sha256_length"),
    )


def downgrade() -> None:
    op.drop_table("applied_writes")
    op.drop_table("staging_requests")
    op.drop_index("uq_registered_raw_files_waiting_name", table_name="registered_raw_files")
    op.drop_table("registered_raw_files")
    op.drop_table("raw_data_packages")
    op.drop_table("executed_obs_units")
    if op.get_bind().dialect.name == "postgresql":
        for name in ENUMS:
            postgresql.ENUM(name=name).drop(op.get_bind(), checkfirst=False)
