"""Queries that decide what the pipeline should run next (used by sensors and the CLI)."""

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from dagster_project.catalog.models import (
    DifferenceRun,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    ReferenceImage,
    RunStatus,
)
from dagster_project.keys import field_band_key

#: observations whose calibrated image exists
CALIBRATED = (ObservationStatus.PREPROCESSED, ObservationStatus.DIFFERENCING, ObservationStatus.DIFFERENCED)


@dataclass(frozen=True)
class PlannedRun:
    """A run the pipeline wants: which job, which partition, and a key that makes it happen once."""

    job_name: str
    partition_key: str
    run_key: str
    reason: str


def observations_awaiting_calibration(session: Session) -> list[PlannedRun]:
    """Registered observations never calibrated (e.g. the sensor stopped before requesting their run)."""
    rows = session.scalars(
        select(Observation)
        .where(Observation.status == ObservationStatus.INGESTED)
        .options(selectinload(Observation.raw_file))
        .order_by(Observation.observation_time)
    )
    return [
        PlannedRun("calibrate_job", obs.observation_id, f"calibrate:{obs.observation_id}:{obs.raw_file.sha256}",
                   "new observation")
        for obs in rows
    ]


def field_bands_awaiting_reference(session: Session) -> list[PlannedRun]:
    """Fields and bands with calibrated frames but no current reference image."""
    current = {(r.field_name, r.filter_band) for r in session.scalars(select(ReferenceImage).where(ReferenceImage.is_current))}
    counts: dict[tuple[str, str], int] = {}
    for field_name, band in session.execute(
        select(Observation.field_name, Observation.filter_band).where(Observation.status.in_(CALIBRATED))
    ):
        if (field_name, band) not in current:
            counts[(field_name, band)] = counts.get((field_name, band), 0) + 1
    return [
        PlannedRun("reference_job", field_band_key(f, b), f"reference:{field_band_key(f, b)}:n{n}",
                   f"no reference yet; {n} calibrated frame(s)")
        for (f, b), n in sorted(counts.items())
    ]


def observations_awaiting_difference(session: Session) -> list[PlannedRun]:
    """Calibrated observations with a reference whose difference is missing, blocked or built on an older reference."""
    references = {(r.field_name, r.filter_band): r for r in session.scalars(select(ReferenceImage).where(ReferenceImage.is_current))}
    planned = []
    rows = session.execute(
        select(Observation, PreprocessRun, DifferenceRun)
        .join(PreprocessRun, PreprocessRun.observation_id == Observation.id)
        .outerjoin(DifferenceRun, DifferenceRun.observation_id == Observation.id)
        .where(Observation.status.in_(CALIBRATED + (ObservationStatus.BLOCKED,)))
        .where(PreprocessRun.status == RunStatus.COMPLETED)
        .order_by(Observation.observation_time)
    )
    for obs, pre, diff in rows:
        ref = references.get((obs.field_name, obs.filter_band))
        if ref is None:
            continue
        up_to_date = (diff is not None and diff.reference_version == ref.version
                      and diff.status in (RunStatus.COMPLETED, RunStatus.SKIPPED, RunStatus.RUNNING, RunStatus.FAILED))
        if up_to_date:
            continue
        reason = "no difference yet" if diff is None else (
            f"reference v{diff.reference_version} -> v{ref.version}" if diff.reference_version != ref.version
            else f"previous attempt {diff.status.value}")
        planned.append(PlannedRun(
            "difference_job", obs.observation_id,
            f"difference:{obs.observation_id}:p{pre.retry_count}:ref{ref.version}", reason))
    return planned


def plan_next_runs(session: Session) -> list[PlannedRun]:
    return observations_awaiting_calibration(session) + field_bands_awaiting_reference(session) + \
        observations_awaiting_difference(session)


def get_preprocess_run(session: Session, run_id) -> PreprocessRun:
    return session.get_one(PreprocessRun, run_id)


def get_difference_run(session: Session, run_id) -> DifferenceRun:
    return session.get_one(DifferenceRun, run_id)


def record_seeing(session: Session, observation_key: str, seeing_arcsec: float | None) -> None:
    """Store the measured seeing (arcsec, PSF FWHM) on the observation."""
    if seeing_arcsec is not None and seeing_arcsec > 0:
        session.scalar(select(Observation).where(Observation.observation_id == observation_key)).seeing = seeing_arcsec


@dataclass(frozen=True)
class CalibratedFrame:
    observation_key: str
    field_name: str
    filter_band: str
    path: str
    quality: dict


def calibrated_frames_of_field_band(session: Session, field_band: str) -> list[CalibratedFrame]:
    """Calibrated frames whose ``<field>-<band>`` key is ``field_band``, oldest first."""
    rows = session.execute(
        select(Observation, PreprocessRun)
        .join(PreprocessRun, PreprocessRun.observation_id == Observation.id)
        .where(Observation.status.in_(CALIBRATED), PreprocessRun.status == RunStatus.COMPLETED)
        .order_by(Observation.observation_time)
    )
    return [
        CalibratedFrame(obs.observation_id, obs.field_name, obs.filter_band, pre.processed_fits_path, dict(pre.quality))
        for obs, pre in rows
        if field_band_key(obs.field_name, obs.filter_band) == field_band
    ]


def raw_file_arrived_from(session: Session, sha256: str, landing_path: str) -> bool:
    """Whether this content was already taken from this path (and its stored copy still exists)."""
    rows = session.scalars(select(RawDataFile).where(RawDataFile.sha256 == sha256,
                                                     RawDataFile.landing_path == landing_path))
    return any(row.stored_path and Path(row.stored_path).exists() for row in rows)
