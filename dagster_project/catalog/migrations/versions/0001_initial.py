"""Initial catalog schema.

Surveys, raw data files, observations, calibration masters, preprocess runs,
reference images, difference runs and candidates, with their CHECK / UNIQUE /
FK constraints and partial unique indexes.

Written against ``models.py`` but frozen here on purpose (no imports from the
models): later model changes need their own revision. Constraint names not
spelled out come from the naming convention of the target metadata that env.py
passes (``ck_<table>_<name>``, ``uq_<table>_<columns>``, ``fk_...``, ``pk_<table>``).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "observation_status": ("ingested", "preprocessing", "preprocessed", "differencing", "differenced", "failed",
                           "blocked", "archived"),
    "raw_file_status": ("accepted", "quarantined", "duplicate", "superseded"),
    "frame_type": ("bias", "dark", "flat", "science", "unknown"),
    "master_kind": ("bias", "flat"),
    "run_status": ("pending", "running", "completed", "failed", "blocked", "skipped"),
    "candidate_status": ("new", "promoted", "rejected", "archived"),
}

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def enum(name: str) -> sa.Enum:
    # PostgreSQL types are created once up front (run_status serves two tables); SQLite gets CHECKs.
    values = ENUMS[name]
    return sa.Enum(*values, name=name, create_constraint=True).with_variant(
        postgresql.ENUM(*values, name=name, create_type=False), "postgresql")


def uuid_pk() -> sa.Column:
    return sa.Column("id", sa.Uuid(), primary_key=True)


def timestamps() -> tuple[sa.Column, sa.Column]:
    return (sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
            sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False))


def fk(column: str, target: str, ondelete: str, nullable: bool = True) -> sa.Column:
    return sa.Column(column, sa.Uuid(), sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)


def ra_dec() -> tuple[sa.Column, sa.Column, sa.CheckConstraint, sa.CheckConstraint]:
    return (sa.Column("ra", sa.Double(), nullable=False),
            sa.Column("dec", sa.Double(), nullable=False),
            sa.CheckConstraint("ra >= 0 AND ra < 360", name="ra_range"),
            sa.CheckConstraint("dec >= -90 AND dec <= 90", name="dec_range"))


def night_format() -> sa.CheckConstraint:
    return sa.CheckConstraint("night LIKE '____-__-__'", name="night_format")


def run_columns() -> tuple:
    """Columns and CHECKs shared by preprocess_runs and difference_runs."""
    return (
        sa.Column("status", enum("run_status"), server_default="pending", nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("quality", JSON, nullable=False),
        sa.Column("processing_time_seconds", sa.Double()),
        sa.Column("error_message", sa.Text()),
        sa.Column("retry_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("finished_at", TIMESTAMP),
        sa.CheckConstraint("retry_count >= 0", name="retry_count_non_negative"),
        sa.CheckConstraint("processing_time_seconds IS NULL OR processing_time_seconds >= 0",
                           name="processing_time_non_negative"),
    )


def index(table: str, *columns: str, unique: bool = False, where: str | None = None, name: str | None = None):
    extra = {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)} if where else {}
    op.create_index(name or op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns), unique=unique, **extra)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).create(op.get_bind(), checkfirst=False)

    op.create_table(
        "surveys",
        uuid_pk(),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text()),
        sa.Column("base_url", sa.String(512)),
        sa.Column("api_endpoint", sa.String(512)),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        *timestamps(),
    )

    op.create_table(
        "observations",
        uuid_pk(),
        fk("survey_id", "surveys.id", "RESTRICT", nullable=False),
        sa.Column("observation_id", sa.String(128), nullable=False, unique=True),
        sa.Column("field_name", sa.String(64), nullable=False),
        sa.Column("instrument", sa.String(64)),
        *ra_dec(),
        sa.Column("healpix_index", sa.BigInteger(), nullable=False),
        sa.Column("observation_time", TIMESTAMP, nullable=False),
        sa.Column("mjd", sa.Double()),
        sa.Column("night", sa.String(10), nullable=False),
        sa.Column("filter_band", sa.String(32), nullable=False),
        sa.Column("exposure_time", sa.Double(), nullable=False),
        sa.Column("fits_url", sa.String(1024), nullable=False),
        sa.Column("pixel_scale", sa.Double()),
        sa.Column("airmass", sa.Double()),
        sa.Column("seeing", sa.Double()),
        sa.Column("naxis1", sa.Integer()),
        sa.Column("naxis2", sa.Integer()),
        sa.Column("status", enum("observation_status"), server_default="ingested", nullable=False),
        sa.Column("status_reason", sa.Text()),
        *timestamps(),
        sa.CheckConstraint("exposure_time > 0", name="exposure_time_positive"),
        sa.CheckConstraint("pixel_scale IS NULL OR pixel_scale > 0", name="pixel_scale_positive"),
        sa.CheckConstraint("airmass IS NULL OR airmass > 0", name="airmass_positive"),
        sa.CheckConstraint("seeing IS NULL OR seeing > 0", name="seeing_positive"),
        sa.CheckConstraint("naxis1 IS NULL OR naxis1 > 0", name="naxis1_positive"),
        sa.CheckConstraint("naxis2 IS NULL OR naxis2 > 0", name="naxis2_positive"),
        night_format(),
    )
    index("observations", "survey_id")
    index("observations", "healpix_index")
    index("observations", "status")
    index("observations", "field_name", "filter_band", "night", name="ix_observations_field_band_night")

    sha256_hex = (
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex") if dialect == "postgresql"
        else sa.CheckConstraint("length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'", name="sha256_hex"))
    op.create_table(
        "raw_data_files",
        uuid_pk(),
        sa.Column("original_name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("landing_path", sa.String(1024), nullable=False),
        sa.Column("stored_path", sa.String(1024)),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", enum("raw_file_status"), nullable=False),
        sa.Column("quarantine_reason", sa.Text()),
        fk("duplicate_of_id", "raw_data_files.id", "RESTRICT"),
        sa.Column("frame_type", enum("frame_type"), server_default="unknown", nullable=False),
        sa.Column("instrument", sa.String(64)),
        sa.Column("filter_band", sa.String(32)),
        sa.Column("night", sa.String(10)),
        sa.Column("observation_time", TIMESTAMP),
        sa.Column("header", JSON, nullable=False),
        sa.Column("arrival_time", TIMESTAMP, nullable=False),
        fk("survey_id", "surveys.id", "RESTRICT"),
        fk("observation_id", "observations.id", "SET NULL"),
        *timestamps(),
        sa.UniqueConstraint("original_name", "version"),
        sa.UniqueConstraint("observation_id"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        sha256_hex,
        sa.CheckConstraint("status != 'quarantined' OR quarantine_reason IS NOT NULL", name="quarantine_has_reason"),
        sa.CheckConstraint("status != 'duplicate' OR duplicate_of_id IS NOT NULL", name="duplicate_has_original"),
        night_format(),
    )
    index("raw_data_files", "duplicate_of_id")
    index("raw_data_files", "status")
    index("raw_data_files", "survey_id")
    index("raw_data_files", "sha256", unique=True, where="status != 'duplicate'", name="uq_raw_data_files_sha256")

    op.create_table(
        "calibration_masters",
        uuid_pk(),
        sa.Column("kind", enum("master_kind"), nullable=False),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("night", sa.String(10), nullable=False),
        sa.Column("filter_band", sa.String(32), server_default="", nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("n_frames", sa.Integer(), nullable=False),
        sa.Column("input_file_ids", JSON, nullable=False),
        sa.Column("stats", JSON, nullable=False),
        *timestamps(),
        sa.UniqueConstraint("instrument", "kind", "night", "filter_band"),
        sa.CheckConstraint("(kind = 'bias') = (filter_band = '')", name="band_iff_flat"),
        sa.CheckConstraint("n_frames > 0", name="n_frames_positive"),
        night_format(),
    )

    op.create_table(
        "preprocess_runs",
        uuid_pk(),
        fk("observation_id", "observations.id", "CASCADE", nullable=False),
        sa.Column("calibration_applied", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("wcs_aligned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("registration_quality", sa.Double()),
        sa.Column("processed_fits_path", sa.String(1024)),
        sa.Column("wcs_info", JSON),
        fk("master_bias_id", "calibration_masters.id", "SET NULL"),
        fk("master_flat_id", "calibration_masters.id", "SET NULL"),
        sa.Column("calibration_note", sa.Text()),
        *run_columns(),
        *timestamps(),
        sa.UniqueConstraint("observation_id"),
    )
    index("preprocess_runs", "master_bias_id")
    index("preprocess_runs", "master_flat_id")
    index("preprocess_runs", "status")

    op.create_table(
        "reference_images",
        uuid_pk(),
        sa.Column("field_name", sa.String(64), nullable=False),
        sa.Column("filter_band", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        fk("source_observation_id", "observations.id", "RESTRICT", nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("seeing", sa.Double()),
        sa.Column("depth", sa.Double()),
        sa.Column("selection_reason", sa.Text()),
        sa.Column("is_current", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        *timestamps(),
        sa.UniqueConstraint("field_name", "filter_band", "version"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.CheckConstraint("seeing IS NULL OR seeing > 0", name="seeing_positive"),
    )
    index("reference_images", "source_observation_id")
    index("reference_images", "field_name", "filter_band", unique=True, where="is_current",
          name="uq_reference_images_current")

    op.create_table(
        "difference_runs",
        uuid_pk(),
        fk("observation_id", "observations.id", "CASCADE", nullable=False),
        fk("reference_observation_id", "observations.id", "RESTRICT"),
        fk("reference_image_id", "reference_images.id", "RESTRICT"),
        sa.Column("reference_version", sa.Integer()),
        sa.Column("algorithm", sa.String(32), server_default="zogy", nullable=False),
        sa.Column("difference_image_path", sa.String(1024)),
        sa.Column("significance_map_path", sa.String(1024)),
        sa.Column("noise_level", sa.Double()),
        sa.Column("detection_threshold", sa.Double()),
        sa.Column("candidates_found", sa.Integer(), server_default=sa.text("0"), nullable=False),
        *run_columns(),
        *timestamps(),
        sa.UniqueConstraint("observation_id"),
        sa.CheckConstraint("reference_version IS NULL OR reference_version >= 1", name="reference_version_positive"),
        sa.CheckConstraint("candidates_found >= 0", name="candidates_found_non_negative"),
    )
    index("difference_runs", "reference_image_id")
    index("difference_runs", "reference_observation_id")
    index("difference_runs", "status")

    op.create_table(
        "candidates",
        uuid_pk(),
        fk("difference_run_id", "difference_runs.id", "CASCADE", nullable=False),
        fk("observation_id", "observations.id", "CASCADE", nullable=False),
        *ra_dec(),
        sa.Column("healpix_index", sa.BigInteger(), nullable=False),
        sa.Column("pixel_x", sa.Double(), nullable=False),
        sa.Column("pixel_y", sa.Double(), nullable=False),
        sa.Column("flux", sa.Double()),
        sa.Column("flux_error", sa.Double()),
        sa.Column("significance", sa.Double()),
        sa.Column("snr", sa.Double()),
        sa.Column("fwhm", sa.Double()),
        sa.Column("ellipticity", sa.Double()),
        sa.Column("position_angle", sa.Double()),
        sa.Column("is_saturated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("is_blended", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("is_edge", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("is_negative", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("features", JSON, nullable=False),
        sa.Column("status", enum("candidate_status"), server_default="new", nullable=False),
        *timestamps(),
        sa.CheckConstraint("flux_error IS NULL OR flux_error >= 0", name="flux_error_non_negative"),
        sa.CheckConstraint("fwhm IS NULL OR fwhm > 0", name="fwhm_positive"),
        sa.CheckConstraint("ellipticity IS NULL OR (ellipticity >= 0 AND ellipticity <= 1)",
                           name="ellipticity_range"),
    )
    index("candidates", "difference_run_id")
    index("candidates", "healpix_index")
    index("candidates", "observation_id")
    index("candidates", "status")


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    for table in ("candidates", "difference_runs", "reference_images", "preprocess_runs", "calibration_masters",
                  "raw_data_files", "observations", "surveys"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for name, values in ENUMS.items():
            postgresql.ENUM(*values, name=name).drop(op.get_bind(), checkfirst=False)
