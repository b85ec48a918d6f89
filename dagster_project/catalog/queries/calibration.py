"""Named catalog queries of the calibration stage: the calibration frames of a night, master bias and flat
frames (found, borrowed from another night, recorded), and the astrometric anchors and solved position of a
science frame written without a WCS (``dagster_project/calibration/``)."""

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.observations import (
    CalibrationMaster,
    FrameType,
    MasterKind,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    RunStatus,
)
from dagster_project.catalog.queries.observations import NotFound

# --- calibration frames and masters ---------------------------------------------------------------------------------

def calibration_frames(session: Session, instrument: str, night: str, frame_type: FrameType | str,
                       filter_band: str | None = None) -> list[RawDataFile]:
    """Accepted raw frames of one type, instrument and night (and band, if given), in time order."""
    stmt = (sa.select(RawDataFile)
            .where(RawDataFile.status == RawFileStatus.ACCEPTED, RawDataFile.instrument == instrument,
                   RawDataFile.night == night, RawDataFile.frame_type == FrameType(frame_type))
            .order_by(RawDataFile.observation_time, RawDataFile.original_name))
    if filter_band is not None:
        stmt = stmt.where(RawDataFile.filter_band == filter_band)
    return list(session.scalars(stmt))


def _master_band(kind: MasterKind, filter_band: str | None) -> str:
    return "" if kind is MasterKind.BIAS else (filter_band or "")


def latest_master(session: Session, instrument: str, kind: MasterKind | str, filter_band: str | None,
                  on_or_before_night: str) -> CalibrationMaster | None:
    """The newest master of this kind built for a night on or before ``on_or_before_night`` (band ignored for bias)."""
    kind = MasterKind(kind)
    return session.scalar(
        sa.select(CalibrationMaster)
        .where(CalibrationMaster.instrument == instrument, CalibrationMaster.kind == kind,
               CalibrationMaster.filter_band == _master_band(kind, filter_band),
               CalibrationMaster.night <= on_or_before_night)  # 'YYYY-MM-DD' sorts chronologically
        .order_by(CalibrationMaster.night.desc()).limit(1))


def upsert_master(session: Session, *, kind: MasterKind | str, instrument: str, night: str, filter_band: str | None,
                  path: str, n_frames: int, input_file_ids: Iterable[uuid.UUID | str],
                  stats: dict[str, Any] | None = None) -> CalibrationMaster:
    """Record a master, replacing the row of a previous build for the same key (its id is kept).

    One atomic ``INSERT ... ON CONFLICT DO UPDATE``, so concurrent rebuilds cannot collide.
    """
    kind = MasterKind(kind)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    stmt = insert(CalibrationMaster).values(
        kind=kind, instrument=instrument, night=night, filter_band=_master_band(kind, filter_band), path=path,
        n_frames=n_frames, input_file_ids=[str(i) for i in input_file_ids], stats=stats or {},
        created_at=now, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["instrument", "kind", "night", "filter_band"],
        set_={name: stmt.excluded[name] for name in ("path", "n_frames", "input_file_ids", "stats", "updated_at")},
    ).returning(CalibrationMaster)
    return session.scalars(stmt, execution_options={"populate_existing": True}).one()


def master_of_night(session: Session, *, kind: MasterKind, instrument: str, night: str,
                    filter_band: str | None) -> CalibrationMaster | None:
    """The master of this kind recorded for exactly ``night`` (band ignored for bias), if any."""
    return session.scalar(sa.select(CalibrationMaster).where(
        CalibrationMaster.instrument == instrument, CalibrationMaster.kind == kind,
        CalibrationMaster.filter_band == _master_band(kind, filter_band), CalibrationMaster.night == night))


def nights_with_calibration(session: Session, *, kind: MasterKind, instrument: str, filter_band: str | None,
                            min_frames: int) -> set[str]:
    """Nights with a master of this kind, or with at least ``min_frames`` accepted frames to build one."""
    frame_type = FrameType.BIAS if kind is MasterKind.BIAS else FrameType.FLAT
    with_frames = sa.select(RawDataFile.night).where(
        RawDataFile.status == RawFileStatus.ACCEPTED, RawDataFile.instrument == instrument,
        RawDataFile.frame_type == frame_type, RawDataFile.night.is_not(None))
    if kind is MasterKind.FLAT:
        with_frames = with_frames.where(RawDataFile.filter_band == filter_band)
    with_frames = with_frames.group_by(RawDataFile.night).having(sa.func.count() >= min_frames)
    with_master = sa.select(CalibrationMaster.night).where(
        CalibrationMaster.instrument == instrument, CalibrationMaster.kind == kind,
        CalibrationMaster.filter_band == _master_band(kind, filter_band))
    return set(session.scalars(with_frames)) | set(session.scalars(with_master))


# --- astrometry of frames written without a WCS ---------------------------------------------------------------------

def calibrated_frames_with_wcs(session: Session, observation: Observation) -> list[tuple[Observation, PreprocessRun]]:
    """The other observations of ``observation``'s field (not archived) whose completed calibration has a WCS
    and a calibrated image, each with that preprocessing run (in no particular order)."""
    rows = session.execute(
        sa.select(Observation, PreprocessRun)
        .join(PreprocessRun, PreprocessRun.observation_id == Observation.id)
        .where(Observation.field_name == observation.field_name, Observation.id != observation.id,
               Observation.status != ObservationStatus.ARCHIVED, PreprocessRun.status == RunStatus.COMPLETED,
               PreprocessRun.wcs_aligned.is_(True), PreprocessRun.processed_fits_path.is_not(None)))
    return [(obs, pre) for obs, pre in rows]


def record_solved_position(session: Session, observation_key: str, ra: float, dec: float,
                           pixel_scale: float | None) -> Observation:
    """The observation's position (and pixel scale, when known) from its solved WCS; ingest had only the pointing."""
    observation = session.scalar(sa.select(Observation).where(Observation.observation_id == observation_key))
    if observation is None:
        raise NotFound(f"no observation {observation_key}")
    observation.ra, observation.dec = ra, dec
    if pixel_scale is not None:
        observation.pixel_scale = pixel_scale
    session.flush()
    return observation
