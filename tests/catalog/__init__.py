"""Builders shared by the catalog tests."""

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from dagster_project.catalog import FrameType, Observation, RawDataFile, RunStatus, queries

T0 = datetime(2026, 11, 22, 3, 15, tzinfo=UTC)


def sha(n: object) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def raw_file(session: Session, name: str = "frame.fits", content: object = 0, **fields) -> RawDataFile:
    """An accepted raw file (science, unless ``fields`` say otherwise)."""
    fields = {"frame_type": FrameType.SCIENCE, "instrument": "cam1", "filter_band": "r", "night": "2026-11-21",
              "observation_time": T0, **fields}
    return queries.register_raw_file(
        session, original_name=name, sha256=sha(content), landing_path=f"/landing/{name}",
        stored_path=f"/store/raw/{name}", size_bytes=2880, survey=queries.get_or_create_survey(session, "test"),
        **fields)


def observation(session: Session, n: int = 0, *, ra: float = 10.0, dec: float = 20.0, field_name: str = "F001",
                filter_band: str = "r", night: str = "2026-11-21", **fields) -> Observation:
    """An ingested observation with its raw file; ``n`` makes names, content and time unique."""
    raw = raw_file(session, f"{field_name}-{filter_band}-{n}.fits", content=(field_name, filter_band, n), night=night,
                   filter_band=filter_band)
    return queries.create_observation(
        session, survey=raw.survey, raw_file=raw, observation_id=f"{field_name}-{filter_band}-{n:04d}",
        field_name=field_name, ra=ra, dec=dec, observation_time=T0 + timedelta(minutes=n), night=night,
        filter_band=filter_band, exposure_time=60.0, fits_url=raw.stored_path, instrument="cam1", **fields)


def calibrated(session: Session, n: int = 0, **fields) -> Observation:
    """An observation whose preprocessing completed."""
    obs = observation(session, n, **fields)
    run = queries.start_preprocess_run(session, obs, {}, f"pre-{n}")
    queries.finish_preprocess_run(session, run, status=RunStatus.COMPLETED, processed_fits_path=f"/p{n}")
    return obs
