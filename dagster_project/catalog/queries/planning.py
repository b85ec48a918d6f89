"""Queries that decide what the pipeline should run next (used by sensors and the CLI).

Each query returns :class:`PlannedRun`\ s whose ``run_key`` names the work (the *base* key:
an observation's raw content, its calibration count and reference version); the sensors
turn each into a request for its next attempt (``sensors/reference_and_difference.py``), so that work a
failed or killed run left unfinished is asked for again, with backoff, under a new key
(:meth:`RetryPolicy.attempt_key`), up to :attr:`RetryPolicy.max_attempts` attempts.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from dagster_project.catalog.schema.observations import (
    DifferenceRun,
    FrameType,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    ReferenceImage,
    RunStatus,
)
from dagster_project.keys import field_band_key

#: observations whose calibrated image exists
CALIBRATED = (ObservationStatus.PREPROCESSED, ObservationStatus.DIFFERENCING, ObservationStatus.DIFFERENCED)


@dataclass(frozen=True)
class PlannedRun:
    """A run the pipeline wants: which job, which partition, and a key that makes it happen once.

    ``attempt_run_id``: the Dagster run of the catalog's last attempt at this work when that
    attempt is still marked running (it may have died: the sensor asks Dagster) or failed;
    ``failed_at``: when that attempt failed. Both None for work never attempted. ``redo``: the work
    remakes what exists (a difference against a newer reference, a reference rebuilt deeper), so it
    may wait behind the first processing of new frames.
    """

    job_name: str
    partition_key: str
    run_key: str
    reason: str
    attempt_run_id: str | None = None
    failed_at: datetime | None = None
    redo: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how soon, work whose run failed or died is asked for again.

    Attempt 0 runs under the base run key, attempt ``n`` under ``<base>:a<n>``; attempt
    ``n`` (n >= 1) is due ``backoff_seconds * 2**(n-1)`` (at most ``max_backoff_seconds``)
    after the previous attempt ended. After ``max_attempts`` attempts the work is left
    for a person (``backfill --status unfinished``).
    """

    max_attempts: int
    backoff_seconds: float
    max_backoff_seconds: float

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay_before(self, attempt: int) -> float:
        """Seconds between the end of attempt ``attempt - 1`` and the start of ``attempt`` (>= 1)."""
        return min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(attempt - 1, 0))

    def attempt_key(self, base_key: str, attempt: int) -> str:
        return base_key if attempt == 0 else f"{base_key}:a{attempt}"


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def observations_awaiting_calibration(session: Session) -> list[PlannedRun]:
    """Observations whose calibration is unfinished: never attempted (e.g. the sensor stopped before
    requesting it, or its run died before the attempt began), still marked running (its run may have
    died), or failed."""
    rows = session.execute(
        select(Observation, PreprocessRun)
        .outerjoin(PreprocessRun, PreprocessRun.observation_id == Observation.id)
        .where(Observation.status.in_((ObservationStatus.INGESTED, ObservationStatus.PREPROCESSING,
                                       ObservationStatus.FAILED)))
        .options(selectinload(Observation.raw_file))
        .order_by(Observation.observation_time)
    )
    planned = []
    for obs, pre in rows:
        if obs.status is ObservationStatus.FAILED and (pre is None or pre.status != RunStatus.FAILED):
            continue  # failed later, in its difference
        if obs.status is ObservationStatus.PREPROCESSING and (pre is None or pre.status != RunStatus.RUNNING):
            continue
        reason = "new observation" if pre is None else f"calibration attempt {pre.status.value}"
        planned.append(PlannedRun(
            "calibrate_job", obs.observation_id, f"calibrate:{obs.observation_id}:{obs.raw_file.sha256}", reason,
            attempt_run_id=None if pre is None or obs.status is ObservationStatus.INGESTED else pre.dagster_run_id,
            failed_at=_aware(pre.finished_at) if pre is not None and pre.status == RunStatus.FAILED else None))
    return planned


def current_references(session: Session) -> list[ReferenceImage]:
    """The current reference version of every field and band, by field then band."""
    return list(session.scalars(select(ReferenceImage).where(ReferenceImage.is_current)
                                .order_by(ReferenceImage.field_name, ReferenceImage.filter_band)))


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
    """Calibrated observations with a reference whose difference is missing, blocked, failed, still
    marked running (its run may have died), or built on an older reference."""
    references = {(r.field_name, r.filter_band): r for r in session.scalars(select(ReferenceImage).where(ReferenceImage.is_current))}
    planned = []
    rows = session.execute(
        select(Observation, PreprocessRun, DifferenceRun)
        .join(PreprocessRun, PreprocessRun.observation_id == Observation.id)
        .outerjoin(DifferenceRun, DifferenceRun.observation_id == Observation.id)
        .where(Observation.status.in_(CALIBRATED + (ObservationStatus.BLOCKED, ObservationStatus.FAILED)))
        .where(PreprocessRun.status == RunStatus.COMPLETED)
        .order_by(Observation.observation_time)
    )
    for obs, pre, diff in rows:
        ref = references.get((obs.field_name, obs.filter_band))
        if ref is None:
            continue
        current = diff is not None and diff.reference_version == ref.version
        if (current and diff.status in (RunStatus.COMPLETED, RunStatus.SKIPPED)
                and obs.status is ObservationStatus.DIFFERENCED):
            continue
        reason = "no difference yet" if diff is None else (
            f"reference v{diff.reference_version} -> v{ref.version}" if diff.reference_version != ref.version
            else f"previous attempt {diff.status.value}")
        # differencing or failed: the observation is where this difference attempt left it (running, or died,
        # or failed, also after its difference completed); preprocessed: calibrated again since any attempt
        attempted = current and obs.status in (ObservationStatus.DIFFERENCING, ObservationStatus.FAILED)
        planned.append(PlannedRun(
            "difference_job", obs.observation_id,
            f"difference:{obs.observation_id}:p{pre.retry_count}:ref{ref.version}", reason,
            attempt_run_id=diff.dagster_run_id if attempted else None,
            failed_at=_aware(diff.finished_at) if attempted and obs.status is ObservationStatus.FAILED else None,
            redo=diff is not None and diff.reference_version != ref.version))
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
    observation_time: datetime


def calibrated_frames_of_field_band(session: Session, field_band: str) -> list[CalibratedFrame]:
    """Calibrated frames whose ``<field>-<band>`` key is ``field_band``, oldest first."""
    rows = session.execute(
        select(Observation, PreprocessRun)
        .join(PreprocessRun, PreprocessRun.observation_id == Observation.id)
        .where(Observation.status.in_(CALIBRATED), PreprocessRun.status == RunStatus.COMPLETED)
        .order_by(Observation.observation_time)
    )
    return [
        CalibratedFrame(obs.observation_id, obs.field_name, obs.filter_band, pre.processed_fits_path, dict(pre.quality),
                        obs.observation_time)
        for obs, pre in rows
        if field_band_key(obs.field_name, obs.filter_band) == field_band
    ]


@dataclass(frozen=True)
class StoredContent:
    """One catalog row of a content (a sha256), as a landing scan needs it."""

    id: uuid.UUID
    landing_path: str
    stored_path: str | None
    status: RawFileStatus
    frame_type: FrameType | None
    observation_key: str | None
    quarantine_reason: str | None


@dataclass(frozen=True)
class KnownContent:
    """Every catalog row of one content: the stored one and the duplicates pointing at it."""

    rows: tuple[StoredContent, ...] = ()

    @property
    def stored(self) -> StoredContent | None:
        """The row of the stored bytes (duplicate rows only point at it)."""
        return next((row for row in self.rows if row.status != RawFileStatus.DUPLICATE), None)

    def arrived_from(self, landing_path: str) -> bool:
        """Whether this content was already taken from this path (and its stored copy still exists)."""
        return any(row.landing_path == landing_path and row.stored_path and Path(row.stored_path).exists()
                   for row in self.rows)


#: contents looked up per query by :func:`known_contents`
CONTENTS_PER_QUERY = 500


def known_contents(session: Session, sha256s: Sequence[str]) -> dict[str, KnownContent]:
    """What the catalog holds of each content (a content it does not hold is missing from the answer): one
    query per :data:`CONTENTS_PER_QUERY`, so that a scan of a thousand files asks twice, not a thousand times."""
    unique = sorted(set(sha256s))
    rows: dict[str, list[StoredContent]] = {}
    for start in range(0, len(unique), CONTENTS_PER_QUERY):
        chunk = unique[start:start + CONTENTS_PER_QUERY]
        for raw, observation_key in session.execute(
                select(RawDataFile, Observation.observation_id)
                .outerjoin(Observation, RawDataFile.observation_id == Observation.id)
                .where(RawDataFile.sha256.in_(chunk))):
            rows.setdefault(raw.sha256, []).append(StoredContent(
                raw.id, raw.landing_path, raw.stored_path, raw.status, raw.frame_type, observation_key,
                raw.quarantine_reason))
    return {sha256: KnownContent(tuple(found)) for sha256, found in rows.items()}
