"""Co-added references: each reference version's inputs (reference_inputs), and on reference_images the
number of inputs, the digest of their set, the co-add's PSF FWHM and its labelled limiting magnitude.

Frozen on purpose (no imports from the models). On SQLite the new CHECKs of reference_images need the
table rebuilt (batch mode); its partial unique index of the current version is rebuilt with it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("reference_images", recreate="auto") as batch:
        batch.add_column(sa.Column("n_inputs", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("inputs_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("psf_fwhm_px", sa.Double(), nullable=True))
        batch.add_column(sa.Column("limit_mag_5sigma", sa.Double(), nullable=True))
        batch.add_column(sa.Column("mag_system", sa.String(16), nullable=True))
        batch.create_check_constraint(op.f("ck_reference_images_n_inputs_positive"), "n_inputs >= 1")
        batch.create_check_constraint(op.f("ck_reference_images_mag_system_known"),
                                      "mag_system IS NULL OR mag_system IN ('instrumental', 'calibrated')")
    op.create_table(
        "reference_inputs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("reference_id", sa.Uuid(), sa.ForeignKey("reference_images.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("observation_id", sa.Uuid(), sa.ForeignKey("observations.id", ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("weight", sa.Double(), nullable=False),
        sa.Column("flux_scale", sa.Double(), nullable=False),
        sa.Column("flux_scale_err", sa.Double(), nullable=True),
        sa.Column("registration_rms_px", sa.Double(), nullable=True),
        sa.Column("fwhm_px", sa.Double(), nullable=True),
        sa.Column("n_rejected", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_anchor", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.UniqueConstraint("reference_id", "observation_id"),
        sa.CheckConstraint("weight >= 0 AND weight <= 1", name="weight_range"),
        sa.CheckConstraint("flux_scale > 0", name="flux_scale_positive"),
        sa.CheckConstraint("n_rejected >= 0", name="n_rejected_non_negative"),
    )
    op.create_index(op.f("ix_reference_inputs_reference_id"), "reference_inputs", ["reference_id"])
    op.create_index(op.f("ix_reference_inputs_observation_id"), "reference_inputs", ["observation_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_reference_inputs_observation_id"), table_name="reference_inputs")
    op.drop_index(op.f("ix_reference_inputs_reference_id"), table_name="reference_inputs")
    op.drop_table("reference_inputs")
    with op.batch_alter_table("reference_images", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_reference_images_mag_system_known"), type_="check")
        batch.drop_constraint(op.f("ck_reference_images_n_inputs_positive"), type_="check")
        for column in ("mag_system", "limit_mag_5sigma", "psf_fwhm_px", "inputs_digest", "n_inputs"):
            batch.drop_column(column)
