"""The catalog schema: raw files, observations, calibration, references, differences, candidates.

Adapted from the AstrID models (Survey, Observation, PreprocessRun, DifferenceRun,
Candidate) plus what a landing-folder pipeline needs (RawDataFile,
CalibrationMaster, ReferenceImage). Invariants live in the database (CHECK,
UNIQUE, FK, partial unique indexes) so that every writer — sensor, Dagster run
workers, CLI, a human with psql — is held to them. Status columns change only
through :func:`dagster_project.catalog.states.transition`.
"""

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dagster_project.catalog.healpix import healpix_index
from dagster_project.catalog.schema.base import (
    Base,
    StandardColumns,
    enum_type,
    night_check,
    ra_dec_checks,
    utcnow,
)

class ObservationStatus(enum.StrEnum):
    INGESTED = "ingested"
    PREPROCESSING = "preprocessing"
    PREPROCESSED = "preprocessed"
    DIFFERENCING = "differencing"
    DIFFERENCED = "differenced"
    FAILED = "failed"
    BLOCKED = "blocked"
    ARCHIVED = "archived"


class RawFileStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"


class FrameType(enum.StrEnum):
    BIAS = "bias"
    DARK = "dark"
    FLAT = "flat"
    SCIENCE = "science"
    UNKNOWN = "unknown"


class MasterKind(enum.StrEnum):
    BIAS = "bias"
    FLAT = "flat"


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"


class CandidateStatus(enum.StrEnum):
    NEW = "new"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ARCHIVED = "archived"


RUN_STATUS = enum_type(RunStatus, "run_status")  # one PostgreSQL type shared by both run tables


class Survey(StandardColumns, Base):
    __tablename__ = "surveys"

    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    description: Mapped[str | None] = mapped_column(sa.Text)
    base_url: Mapped[str | None] = mapped_column(sa.String(512))
    api_endpoint: Mapped[str | None] = mapped_column(sa.String(512))
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())

    def __repr__(self) -> str:
        return f"Survey({self.name!r})"


class RawDataFile(StandardColumns, Base):
    """Every file that arrived in the landing folder, including rejected and repeated ones."""

    __tablename__ = "raw_data_files"
    __table_args__ = (
        sa.UniqueConstraint("original_name", "version"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        # Portable CHECKs cannot test "hex", so each dialect gets its own spelling.
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex").ddl_if(dialect="postgresql"),
        sa.CheckConstraint("length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'",
                           name="sha256_hex").ddl_if(dialect="sqlite"),
        sa.CheckConstraint("status != 'quarantined' OR quarantine_reason IS NOT NULL",
                           name="quarantine_has_reason"),
        sa.CheckConstraint("status != 'duplicate' OR duplicate_of_id IS NOT NULL", name="duplicate_has_original"),
        night_check(),
        # The same bytes are stored once; duplicates only point at them.
        sa.Index("uq_raw_data_files_sha256", "sha256", unique=True,
                 sqlite_where=sa.text("status != 'duplicate'"), postgresql_where=sa.text("status != 'duplicate'")),
    )

    original_name: Mapped[str] = mapped_column(sa.String(255))
    version: Mapped[int]
    landing_path: Mapped[str] = mapped_column(sa.String(1024))
    stored_path: Mapped[str | None] = mapped_column(sa.String(1024))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[RawFileStatus] = mapped_column(enum_type(RawFileStatus, "raw_file_status"), index=True)
    quarantine_reason: Mapped[str | None] = mapped_column(sa.Text)
    duplicate_of_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("raw_data_files.id", ondelete="RESTRICT"), index=True)
    frame_type: Mapped[FrameType] = mapped_column(
        enum_type(FrameType, "frame_type"), default=FrameType.UNKNOWN, server_default=FrameType.UNKNOWN.value)
    instrument: Mapped[str | None] = mapped_column(sa.String(64))
    filter_band: Mapped[str | None] = mapped_column(sa.String(32))
    night: Mapped[str | None] = mapped_column(sa.String(10))
    observation_time: Mapped[datetime | None]
    header: Mapped[dict[str, Any]] = mapped_column(default=dict)
    arrival_time: Mapped[datetime] = mapped_column(default=utcnow)
    survey_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("surveys.id", ondelete="RESTRICT"), index=True)
    # The raw file outlives a deleted observation: it is the archive's ledger.
    observation_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="SET NULL"), unique=True)

    survey: Mapped[Survey | None] = relationship()
    observation: Mapped["Observation | None"] = relationship(back_populates="raw_file")
    duplicate_of: Mapped["RawDataFile | None"] = relationship(remote_side="RawDataFile.id")

    def __repr__(self) -> str:
        return f"RawDataFile({self.original_name!r} v{self.version}, {self.status})"


class Observation(StandardColumns, Base):
    """One science exposure; ``observation_id`` is also its Dagster partition key."""

    __tablename__ = "observations"
    __table_args__ = (
        *ra_dec_checks(),
        sa.CheckConstraint("exposure_time > 0", name="exposure_time_positive"),
        sa.CheckConstraint("pixel_scale IS NULL OR pixel_scale > 0", name="pixel_scale_positive"),
        sa.CheckConstraint("airmass IS NULL OR airmass > 0", name="airmass_positive"),
        sa.CheckConstraint("seeing IS NULL OR seeing > 0", name="seeing_positive"),
        sa.CheckConstraint("naxis1 IS NULL OR naxis1 > 0", name="naxis1_positive"),
        sa.CheckConstraint("naxis2 IS NULL OR naxis2 > 0", name="naxis2_positive"),
        night_check(),
        sa.Index("ix_observations_field_band_night", "field_name", "filter_band", "night"),
    )

    survey_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("surveys.id", ondelete="RESTRICT"), index=True)
    observation_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    field_name: Mapped[str] = mapped_column(sa.String(64))
    instrument: Mapped[str | None] = mapped_column(sa.String(64))
    ra: Mapped[float] = mapped_column(sa.Double)
    dec: Mapped[float] = mapped_column(sa.Double)
    healpix_index: Mapped[int] = mapped_column(sa.BigInteger, index=True)  # see _sync_healpix_index
    observation_time: Mapped[datetime]
    mjd: Mapped[float | None] = mapped_column(sa.Double)
    night: Mapped[str] = mapped_column(sa.String(10))
    filter_band: Mapped[str] = mapped_column(sa.String(32))
    exposure_time: Mapped[float] = mapped_column(sa.Double)
    fits_url: Mapped[str] = mapped_column(sa.String(1024))
    pixel_scale: Mapped[float | None] = mapped_column(sa.Double)
    airmass: Mapped[float | None] = mapped_column(sa.Double)
    seeing: Mapped[float | None] = mapped_column(sa.Double)
    naxis1: Mapped[int | None]
    naxis2: Mapped[int | None]
    status: Mapped[ObservationStatus] = mapped_column(
        enum_type(ObservationStatus, "observation_status"), default=ObservationStatus.INGESTED,
        server_default=ObservationStatus.INGESTED.value, index=True)
    status_reason: Mapped[str | None] = mapped_column(sa.Text)

    survey: Mapped[Survey] = relationship()
    raw_file: Mapped[RawDataFile | None] = relationship(back_populates="observation")
    # Runs are derived state: the database's ON DELETE CASCADE removes them with the observation.
    preprocess_run: Mapped["PreprocessRun | None"] = relationship(
        back_populates="observation", cascade="all, delete-orphan", passive_deletes=True)
    difference_run: Mapped["DifferenceRun | None"] = relationship(
        back_populates="observation", foreign_keys="DifferenceRun.observation_id",
        cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Observation({self.observation_id!r}, {self.status})"


class CalibrationMaster(StandardColumns, Base):
    """A master bias or flat per instrument and night (and band, for flats)."""

    __tablename__ = "calibration_masters"
    __table_args__ = (
        sa.UniqueConstraint("instrument", "kind", "night", "filter_band"),
        # '' rather than NULL for bias, so the unique key above has no NULLs to slip through.
        sa.CheckConstraint("(kind = 'bias') = (filter_band = '')", name="band_iff_flat"),
        sa.CheckConstraint("n_frames > 0", name="n_frames_positive"),
        night_check(),
    )

    kind: Mapped[MasterKind] = mapped_column(enum_type(MasterKind, "master_kind"))
    instrument: Mapped[str] = mapped_column(sa.String(64))
    night: Mapped[str] = mapped_column(sa.String(10))
    filter_band: Mapped[str] = mapped_column(sa.String(32), default="", server_default="")
    path: Mapped[str] = mapped_column(sa.String(1024))
    n_frames: Mapped[int]
    input_file_ids: Mapped[list[Any]] = mapped_column(default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)

    def __repr__(self) -> str:
        return f"CalibrationMaster({self.kind} {self.instrument} {self.night} {self.filter_band!r})"


class RunFields:
    """What PreprocessRun and DifferenceRun share: one attempt's lifecycle and outcome."""

    status: Mapped[RunStatus] = mapped_column(RUN_STATUS, default=RunStatus.PENDING,
                                              server_default=RunStatus.PENDING.value, index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    quality: Mapped[dict[str, Any]] = mapped_column(default=dict)
    processing_time_seconds: Mapped[float | None] = mapped_column(sa.Double)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    retry_count: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    dagster_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


def run_checks() -> tuple[sa.CheckConstraint, ...]:
    return (sa.CheckConstraint("retry_count >= 0", name="retry_count_non_negative"),
            sa.CheckConstraint("processing_time_seconds IS NULL OR processing_time_seconds >= 0",
                               name="processing_time_non_negative"))


class PreprocessRun(RunFields, StandardColumns, Base):
    """The current calibration attempt of one observation (reset, never duplicated, on re-runs)."""

    __tablename__ = "preprocess_runs"
    __table_args__ = run_checks()

    observation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="CASCADE"), unique=True)
    calibration_applied: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    wcs_aligned: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    registration_quality: Mapped[float | None] = mapped_column(sa.Double)
    processed_fits_path: Mapped[str | None] = mapped_column(sa.String(1024))
    wcs_info: Mapped[dict[str, Any] | None]
    # Masters are upserted in place, so these ids stay valid across rebuilds.
    master_bias_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("calibration_masters.id", ondelete="SET NULL"), index=True)
    master_flat_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("calibration_masters.id", ondelete="SET NULL"), index=True)
    calibration_note: Mapped[str | None] = mapped_column(sa.Text)

    observation: Mapped[Observation] = relationship(back_populates="preprocess_run")
    master_bias: Mapped[CalibrationMaster | None] = relationship(foreign_keys=[master_bias_id])
    master_flat: Mapped[CalibrationMaster | None] = relationship(foreign_keys=[master_flat_id])

    def __repr__(self) -> str:
        return f"PreprocessRun({self.observation_id}, {self.status}, retry {self.retry_count})"


class ReferenceImage(StandardColumns, Base):
    """Versioned template per field and band; exactly one version is current.

    A single frozen frame (``n_inputs`` = 1) or the proper co-add of several (:class:`ReferenceInput`
    lists them; ``source_observation`` is the anchor whose grid and flux scale it has). A new version
    is made when the set of inputs changes (``inputs_digest``).
    """

    __tablename__ = "reference_images"
    __table_args__ = (
        sa.UniqueConstraint("field_name", "filter_band", "version"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.CheckConstraint("seeing IS NULL OR seeing > 0", name="seeing_positive"),
        sa.CheckConstraint("n_inputs >= 1", name="n_inputs_positive"),
        sa.CheckConstraint("mag_system IS NULL OR mag_system IN ('instrumental', 'calibrated')",
                           name="mag_system_known"),
        sa.Index("uq_reference_images_current", "field_name", "filter_band", unique=True,
                 sqlite_where=sa.text("is_current"), postgresql_where=sa.text("is_current")),
    )

    field_name: Mapped[str] = mapped_column(sa.String(64))
    filter_band: Mapped[str] = mapped_column(sa.String(32))
    version: Mapped[int]
    source_observation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="RESTRICT"), index=True)
    path: Mapped[str] = mapped_column(sa.String(1024))
    seeing: Mapped[float | None] = mapped_column(sa.Double)
    depth: Mapped[float | None] = mapped_column(sa.Double)
    selection_reason: Mapped[str | None] = mapped_column(sa.Text)
    is_current: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    dagster_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    n_inputs: Mapped[int] = mapped_column(default=1, server_default="1")
    #: sha256 of the sorted input observation keys: a new version when the set changes
    inputs_digest: Mapped[str | None] = mapped_column(sa.String(64))
    psf_fwhm_px: Mapped[float | None] = mapped_column(sa.Double)
    #: 5-sigma point-source limiting magnitude, in ``mag_system`` (instrumental: -2.5 log10(e-/s))
    limit_mag_5sigma: Mapped[float | None] = mapped_column(sa.Double)
    mag_system: Mapped[str | None] = mapped_column(sa.String(16))

    source_observation: Mapped[Observation] = relationship()
    inputs: Mapped[list["ReferenceInput"]] = relationship(
        back_populates="reference", cascade="all, delete-orphan", order_by="ReferenceInput.weight.desc()")

    def __repr__(self) -> str:
        return f"ReferenceImage({self.field_name!r}, {self.filter_band!r}, v{self.version})"


class ReferenceInput(StandardColumns, Base):
    """One calibrated observation co-added into a reference version, with what the co-add made of it."""

    __tablename__ = "reference_inputs"
    __table_args__ = (
        sa.UniqueConstraint("reference_id", "observation_id"),
        sa.CheckConstraint("weight >= 0 AND weight <= 1", name="weight_range"),
        sa.CheckConstraint("flux_scale > 0", name="flux_scale_positive"),
        sa.CheckConstraint("n_rejected >= 0", name="n_rejected_non_negative"),
    )

    reference_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("reference_images.id", ondelete="CASCADE"), index=True)
    observation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="RESTRICT"), index=True)
    #: share of the co-add's information, (F_j^2 / sigma_j^2) / sum
    weight: Mapped[float] = mapped_column(sa.Double)
    #: electrons in this frame per electron of the anchor, for the same source
    flux_scale: Mapped[float] = mapped_column(sa.Double)
    flux_scale_err: Mapped[float | None] = mapped_column(sa.Double)
    registration_rms_px: Mapped[float | None] = mapped_column(sa.Double)
    fwhm_px: Mapped[float | None] = mapped_column(sa.Double)
    n_rejected: Mapped[int] = mapped_column(default=0, server_default="0")
    is_anchor: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    reference: Mapped[ReferenceImage] = relationship(back_populates="inputs")
    observation: Mapped[Observation] = relationship()

    def __repr__(self) -> str:
        return f"ReferenceInput({self.reference_id}, {self.observation_id}, weight={self.weight:.3f})"


class DifferenceRun(RunFields, StandardColumns, Base):
    """The current image subtraction of one observation against a reference version."""

    __tablename__ = "difference_runs"
    __table_args__ = (
        *run_checks(),
        sa.CheckConstraint("reference_version IS NULL OR reference_version >= 1", name="reference_version_positive"),
        sa.CheckConstraint("candidates_found >= 0", name="candidates_found_non_negative"),
        sa.CheckConstraint("depth_snr50 IS NULL OR depth_snr50 > 0", name="depth_snr50_positive"),
        sa.CheckConstraint("depth_n_fakes IS NULL OR depth_n_fakes >= 0", name="depth_n_fakes_non_negative"),
        sa.CheckConstraint("depth_mag_system IS NULL OR depth_mag_system IN ('instrumental', 'calibrated')",
                           name="depth_mag_system_known"),
    )

    observation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="CASCADE"), unique=True)
    # Nullable: a run blocked or skipped for want of a reference has none.
    reference_observation_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="RESTRICT"), index=True)
    reference_image_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("reference_images.id", ondelete="RESTRICT"), index=True)
    reference_version: Mapped[int | None]  # snapshot: the reference may move on later
    algorithm: Mapped[str] = mapped_column(sa.String(32), default="zogy", server_default="zogy")
    difference_image_path: Mapped[str | None] = mapped_column(sa.String(1024))
    significance_map_path: Mapped[str | None] = mapped_column(sa.String(1024))
    noise_level: Mapped[float | None] = mapped_column(sa.Double)
    detection_threshold: Mapped[float | None] = mapped_column(sa.Double)
    candidates_found: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    #: the frame's depth, measured by fakes injected into the new frame and put through the same subtraction and
    #: detection (science/depth.py): the ideal-difference S/N at which half of them are found (5 for the ideal
    #: detector), its standard error, that S/N's flux as a magnitude in ``depth_mag_system``, and the fakes used
    depth_snr50: Mapped[float | None] = mapped_column(sa.Double)
    depth_snr50_err: Mapped[float | None] = mapped_column(sa.Double)
    depth_mag50: Mapped[float | None] = mapped_column(sa.Double)
    depth_mag_system: Mapped[str | None] = mapped_column(sa.String(16))
    depth_n_fakes: Mapped[int | None]

    observation: Mapped[Observation] = relationship(back_populates="difference_run", foreign_keys=[observation_id])
    reference_observation: Mapped[Observation | None] = relationship(foreign_keys=[reference_observation_id])
    reference_image: Mapped[ReferenceImage | None] = relationship()
    candidates: Mapped[list["Candidate"]] = relationship(
        back_populates="difference_run", cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return f"DifferenceRun({self.observation_id}, {self.status}, ref v{self.reference_version})"


class Candidate(StandardColumns, Base):
    """A source on a difference image (pixel coordinates are 0-based)."""

    __tablename__ = "candidates"
    __table_args__ = (
        *ra_dec_checks(),
        sa.CheckConstraint("flux_error IS NULL OR flux_error >= 0", name="flux_error_non_negative"),
        sa.CheckConstraint("fwhm IS NULL OR fwhm > 0", name="fwhm_positive"),
        sa.CheckConstraint("ellipticity IS NULL OR (ellipticity >= 0 AND ellipticity <= 1)",
                           name="ellipticity_range"),
    )

    difference_run_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("difference_runs.id", ondelete="CASCADE"), index=True)
    observation_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("observations.id", ondelete="CASCADE"),
                                                      index=True)
    ra: Mapped[float] = mapped_column(sa.Double)
    dec: Mapped[float] = mapped_column(sa.Double)
    healpix_index: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    pixel_x: Mapped[float] = mapped_column(sa.Double)
    pixel_y: Mapped[float] = mapped_column(sa.Double)
    flux: Mapped[float | None] = mapped_column(sa.Double)
    flux_error: Mapped[float | None] = mapped_column(sa.Double)
    significance: Mapped[float | None] = mapped_column(sa.Double)
    snr: Mapped[float | None] = mapped_column(sa.Double)
    fwhm: Mapped[float | None] = mapped_column(sa.Double)
    ellipticity: Mapped[float | None] = mapped_column(sa.Double)
    position_angle: Mapped[float | None] = mapped_column(sa.Double)
    is_saturated: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    is_blended: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    is_edge: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    is_negative: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[CandidateStatus] = mapped_column(
        enum_type(CandidateStatus, "candidate_status"), default=CandidateStatus.NEW,
        server_default=CandidateStatus.NEW.value, index=True)

    difference_run: Mapped[DifferenceRun] = relationship(back_populates="candidates")
    observation: Mapped[Observation] = relationship()

    def __repr__(self) -> str:
        return f"Candidate({self.id}, ra={self.ra}, dec={self.dec}, {self.status})"


@sa.event.listens_for(Observation, "before_insert")
@sa.event.listens_for(Observation, "before_update")
@sa.event.listens_for(Candidate, "before_insert")
@sa.event.listens_for(Candidate, "before_update")
def _sync_healpix_index(_mapper, _connection, target: Observation | Candidate) -> None:
    # Derived from ra/dec on every ORM write, so a moved position can never leave a stale index
    # (bulk inserts bypass this: queries.replace_candidates computes it itself).
    target.healpix_index = healpix_index(target.ra, target.dec)
