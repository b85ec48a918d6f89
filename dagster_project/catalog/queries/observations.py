"""Named catalog queries and lifecycle operations for the ingest layer, assets, sensors and CLI.

Every function takes a :class:`~sqlalchemy.orm.Session` first, flushes (so the
database checks its constraints at once) but never commits: the caller's
``Catalog.session()`` block is the transaction.

Lifecycle functions accept entities loaded in an earlier session: they re-read
the row (locked ``FOR UPDATE`` on PostgreSQL) and return the current instance,
which is what callers should keep using.
"""

import copy
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dagster_project.catalog.healpix import angular_separation_deg, cone_index_ranges, healpix_indices
from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.observations import (
    Candidate,
    DifferenceRun,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    ReferenceImage,
    ReferenceInput,
    RunStatus,
    Survey,
)
from dagster_project.catalog.states import check_transition, transition

T = TypeVar("T")

MJD_OF_UNIX_EPOCH = 40587.0


class NotFound(LookupError):
    """The catalog has no such row."""


def current_row(session: Session, entity: T) -> T:
    """The entity's row as it is now in the database, in this session, locked for update on PostgreSQL."""
    session.flush()
    found = session.get(type(entity), entity.id, populate_existing=True, with_for_update=True)
    if found is None:
        raise NotFound(f"{entity!r} is not in the catalog (id {entity.id})")
    return found


def set_status(session: Session, entity: T, new_status: Any, *, reason: str | None = None) -> T:
    """Any other status change (e.g. promote or reject a candidate, archive an observation), via the state machine."""
    entity = current_row(session, entity)
    transition(entity, new_status, reason=reason)
    session.flush()
    return entity


# --- surveys and raw files ----------------------------------------------------------------------------------------

def get_or_create_survey(session: Session, name: str, **fields: Any) -> Survey:
    """The survey called ``name``; created with ``fields`` if new (existing rows are not updated)."""
    survey = session.scalar(sa.select(Survey).where(Survey.name == name))
    if survey is not None:
        return survey
    try:
        with session.begin_nested():  # a concurrent creator wins the race: then read its row
            survey = Survey(name=name, **fields)
            session.add(survey)
    except IntegrityError:
        survey = session.scalars(sa.select(Survey).where(Survey.name == name)).one()
    return survey


def find_raw_file_by_sha256(session: Session, sha256: str) -> RawDataFile | None:
    """The stored file with this content (duplicate records only point at it)."""
    return session.scalar(sa.select(RawDataFile).where(RawDataFile.sha256 == sha256,
                                                       RawDataFile.status != RawFileStatus.DUPLICATE))


def latest_raw_file_version(session: Session, original_name: str) -> RawDataFile | None:
    """The most recent arrival of a file called ``original_name``, whatever its status."""
    return session.scalar(sa.select(RawDataFile).where(RawDataFile.original_name == original_name)
                          .order_by(RawDataFile.version.desc()).limit(1))


def differences_recorded_for_files(session: Session, original_names: Sequence[str]) -> set[str]:
    """Those of ``original_names`` whose latest arrival became an observation with an ended difference (with
    its candidates, recorded in the same transaction); one query, however many names (a watcher polling a
    night's frames must not load the catalog it watches)."""
    latest = (sa.select(RawDataFile.original_name, sa.func.max(RawDataFile.version).label("version"))
              .where(RawDataFile.original_name.in_(original_names))
              .group_by(RawDataFile.original_name).subquery())
    return set(session.scalars(
        sa.select(RawDataFile.original_name)
        .join(latest, sa.and_(RawDataFile.original_name == latest.c.original_name,
                              RawDataFile.version == latest.c.version))
        .join(DifferenceRun, DifferenceRun.observation_id == RawDataFile.observation_id)
        .where(DifferenceRun.status.in_((RunStatus.COMPLETED, RunStatus.SKIPPED)))))


def next_raw_file_version(session: Session, original_name: str) -> int:
    """The version the next arrival of ``original_name`` will get (versions count arrivals of a name)."""
    latest = latest_raw_file_version(session, original_name)
    return 1 if latest is None else latest.version + 1


def _insert_raw_file(session: Session, status: RawFileStatus, original_name: str, *, version: int | None = None,
                     flush: bool = True, **fields: Any) -> RawDataFile:
    """Insert the next version of ``original_name`` (``version``: that number, if the caller just read it;
    ``flush=False``: at the session's next flush)."""
    if version is None:
        version = next_raw_file_version(session, original_name)
    raw = RawDataFile(original_name=original_name, version=version, status=status, **fields)
    session.add(raw)
    if flush:
        session.flush()
    return raw


class ContentAlreadyStored(ValueError):
    """The bytes are already in the archive (another scan took them first): they are a duplicate."""


def arrivals_of(session: Session, names_and_contents: Sequence[tuple[str, str]]) -> dict[tuple[str, str],
                                                                                      list[RawDataFile]]:
    """For each (original_name, sha256): every arrival of the name and the stored rows of the content, what
    :func:`register_raw_file` reads before it inserts; one query per 500 pairs (a scan registers its files
    together)."""
    found: dict[tuple[str, str], list[RawDataFile]] = {pair: [] for pair in names_and_contents}
    pairs = list(found)
    for start in range(0, len(pairs), 500):
        names, contents = zip(*pairs[start:start + 500], strict=True)
        rows = session.scalars(sa.select(RawDataFile).where(sa.or_(
            RawDataFile.original_name.in_(names),
            sa.and_(RawDataFile.sha256.in_(contents), RawDataFile.status != RawFileStatus.DUPLICATE)))).all()
        for pair in pairs[start:start + 500]:
            found[pair] = [r for r in rows if r.original_name == pair[0] or (
                r.sha256 == pair[1] and r.status != RawFileStatus.DUPLICATE)]
    return found


def register_raw_file(session: Session, *, original_name: str, sha256: str,
                      stored_path: str | Callable[[int], str] | None = None, flush: bool = True,
                      arrivals: Sequence[RawDataFile] | None = None, **fields: Any) -> RawDataFile:
    """Record an accepted file as the next version of its name.

    The previously accepted version of that name (different content, necessarily:
    identical content is a duplicate) becomes ``superseded``, and an observation
    made from it is archived: its pixels were replaced. ``fields`` are
    RawDataFile columns or relationships (landing_path, stored_path, size_bytes,
    frame_type, instrument, filter_band, night, observation_time, header, survey, ...); ``stored_path`` may
    be a function of the version the file gets (where it is archived depends on it), called before the insert.

    ``flush=False`` leaves the insert to the session's next flush (its next query, or the commit): a science
    frame's observation (:func:`create_observation`, also ``flush=False``) added meanwhile is then inserted
    first, and the file's row written with its link, instead of inserted and then updated.
    ``arrivals``: what :func:`arrivals_of` read for it, if the caller just read it for several files.
    """
    # one query for both: every arrival of the name (its versions, the accepted ones) and the stored content
    rows = arrivals if arrivals is not None else session.scalars(sa.select(RawDataFile).where(sa.or_(
        RawDataFile.original_name == original_name,
        sa.and_(RawDataFile.sha256 == sha256, RawDataFile.status != RawFileStatus.DUPLICATE)))).all()
    known = next((r for r in rows if r.sha256 == sha256 and r.status != RawFileStatus.DUPLICATE), None)
    if known is not None:
        raise ContentAlreadyStored(
            f"content {sha256} is already stored as {known!r}: register it with register_duplicate_file")
    named = [r for r in rows if r.original_name == original_name]
    previous = [r for r in named if r.status == RawFileStatus.ACCEPTED]
    version = max((r.version for r in named), default=0) + 1
    if callable(stored_path):
        stored_path = stored_path(version)
    raw = _insert_raw_file(session, RawFileStatus.ACCEPTED, original_name, version=version, flush=False,
                           sha256=sha256, stored_path=stored_path, **fields)
    for old in previous:
        transition(old, RawFileStatus.SUPERSEDED)
        if old.observation is not None and old.observation.status != ObservationStatus.ARCHIVED:
            transition(old.observation, ObservationStatus.ARCHIVED,
                       reason=f"raw file superseded by {original_name} version {raw.version}")
    if flush:
        session.flush()
    return raw


def register_quarantined_file(session: Session, *, original_name: str, reason: str, **fields: Any) -> RawDataFile:
    """Record a file rejected on arrival (``stored_path``: where it sits in the quarantine folder)."""
    return _insert_raw_file(session, RawFileStatus.QUARANTINED, original_name, quarantine_reason=reason, **fields)


def register_duplicate_file(session: Session, *, original: RawDataFile | uuid.UUID | str, original_name: str,
                            **fields: Any) -> RawDataFile:
    """Record a file whose content is already stored as ``original`` (a row or its id)."""
    original_id = original.id if isinstance(original, RawDataFile) else uuid.UUID(str(original))
    return _insert_raw_file(session, RawFileStatus.DUPLICATE, original_name, duplicate_of_id=original_id, **fields)


def quarantine_raw_file(session: Session, raw_file: RawDataFile, stored_path: str, reason: str) -> RawDataFile:
    """An accepted file found bad later: it moved to ``stored_path`` in the quarantine folder."""
    raw_file = current_row(session, raw_file)
    transition(raw_file, RawFileStatus.QUARANTINED, reason=reason)
    raw_file.stored_path = stored_path
    session.flush()
    return raw_file


def requeue_raw_file(session: Session, raw_file: RawDataFile | uuid.UUID | str, reason: str) -> RawDataFile:
    """An acceptance undone because the file changed while it was taken: quarantined, its observation archived.

    The file itself went back to the landing folder (``stored_path`` is cleared);
    it is taken again, as the next version of its name, once it is complete.
    """
    if not isinstance(raw_file, RawDataFile):
        raw_file = session.get(RawDataFile, uuid.UUID(str(raw_file)))
    transition(raw_file, RawFileStatus.QUARANTINED, reason=reason)
    raw_file.stored_path = None
    if raw_file.observation is not None and raw_file.observation.status != ObservationStatus.ARCHIVED:
        transition(raw_file.observation, ObservationStatus.ARCHIVED, reason=reason)
    session.flush()
    return raw_file


# --- observations -------------------------------------------------------------------------------------------------

def create_observation(session: Session, *, ra: float, dec: float, observation_time: datetime,
                       mjd: float | None = None, flush: bool = True, **fields: Any) -> Observation:
    """A new ``ingested`` observation; its MJD (if not given) and HEALPix index are derived from it.

    ``fields``: survey (or survey_id), raw_file, observation_id, field_name, night,
    filter_band, exposure_time, fits_url, instrument, pixel_scale, airmass, naxis1, naxis2, ...
    ``flush=False``: inserted at the session's next flush (see :func:`register_raw_file`).
    """
    if mjd is None:
        mjd = MJD_OF_UNIX_EPOCH + observation_time.timestamp() / 86400.0
    observation = Observation(ra=ra, dec=dec, observation_time=observation_time, mjd=mjd,
                              status=ObservationStatus.INGESTED, **fields)
    session.add(observation)
    if flush:
        session.flush()
    return observation


def get_observation(session: Session, observation_id: str) -> Observation:
    """The observation with this external id (= Dagster partition key)."""
    observation = session.scalar(sa.select(Observation).where(Observation.observation_id == observation_id))
    if observation is None:
        raise NotFound(f"no observation with observation_id {observation_id!r}")
    return observation


def list_observations(session: Session, field_name: str | None = None, filter_band: str | None = None,
                      night: str | None = None, status: ObservationStatus | None = None) -> list[Observation]:
    """Observations matching every given filter, in time order."""
    stmt = sa.select(Observation).order_by(Observation.observation_time, Observation.observation_id)
    for column, value in ((Observation.field_name, field_name), (Observation.filter_band, filter_band),
                          (Observation.night, night), (Observation.status, status)):
        if value is not None:
            stmt = stmt.where(column == value)
    return list(session.scalars(stmt))


def cone_search_statement(model: type[T], ra: float, dec: float, radius_deg: float,
                          *where: sa.ColumnElement[bool]) -> sa.Select:
    """The SELECT :func:`cone_search` sends: rows of ``model`` in the HEALPix index ranges covering the cone."""
    stmt = sa.select(model).where(*where)
    ranges = cone_index_ranges(ra, dec, radius_deg)
    if ranges is not None:
        stmt = stmt.where(sa.or_(*(sa.and_(model.healpix_index >= start, model.healpix_index < stop)
                                   for start, stop in ranges)))
    return stmt


def cone_search(session: Session, model: type[T], ra: float, dec: float, radius_deg: float,
                *where: sa.ColumnElement[bool]) -> list[T]:
    """Rows of ``model`` (Observation or Candidate) within ``radius_deg`` of (ra, dec), nearest first.

    The HEALPix index narrows the scan to the pixels overlapping the cone; the
    exact great-circle distance decides. ``where``: extra filters, e.g.
    ``Candidate.status == CandidateStatus.NEW``.
    """
    rows = list(session.scalars(cone_search_statement(model, ra, dec, radius_deg, *where)))
    if not rows:
        return []
    separation = angular_separation_deg(ra, dec, [r.ra for r in rows], [r.dec for r in rows])
    return [rows[i] for i in separation.argsort(kind="stable") if separation[i] <= radius_deg]


# --- preprocessing and differencing runs ----------------------------------------------------------------------------

#: what one attempt produces, and its value before the attempt has produced anything
PREPROCESS_OUTCOME: dict[str, Any] = {
    "calibration_applied": False, "wcs_aligned": False, "registration_quality": None, "processed_fits_path": None,
    "wcs_info": None, "quality": {}, "master_bias_id": None, "master_flat_id": None, "calibration_note": None,
    "processing_time_seconds": None, "finished_at": None,
}
DIFFERENCE_OUTCOME: dict[str, Any] = {
    "difference_image_path": None, "significance_map_path": None, "noise_level": None, "detection_threshold": None,
    "candidates_found": 0, "quality": {}, "processing_time_seconds": None, "finished_at": None,
}
#: fields a finish_* call may set, besides those of the outcome
_FINISH_EXTRA = {PreprocessRun: {"master_bias", "master_flat"}, DifferenceRun: set()}


def _begin_attempt(run: PreprocessRun | DifferenceRun, outcome: dict[str, Any], parameters: dict[str, Any] | None,
                   dagster_run_id: str | None) -> None:
    """Reset ``run`` to a fresh attempt and move it to running (pending → running)."""
    if run.status == RunStatus.RUNNING:  # its worker died without finishing: record that, then retry
        transition(run, RunStatus.FAILED, reason=f"abandoned: superseded by Dagster run {dagster_run_id}")
    if run.status != RunStatus.PENDING:
        transition(run, RunStatus.PENDING)
    for name, value in outcome.items():
        setattr(run, name, copy.copy(value))
    run.parameters = dict(parameters or {})
    run.dagster_run_id = dagster_run_id
    run.started_at = utcnow()
    transition(run, RunStatus.RUNNING)


def _end_attempt(run: PreprocessRun | DifferenceRun, observation_status: ObservationStatus | None, status: RunStatus,
                 outcome: dict[str, Any], fields: dict[str, Any]) -> None:
    """End ``run`` as ``status``; its observation moves to ``observation_status`` (None: it stays where it is)."""
    error_message = fields.pop("error_message", None)
    unknown = set(fields) - (set(outcome) - {"finished_at"}) - _FINISH_EXTRA[type(run)]
    if unknown:
        raise TypeError(f"{type(run).__name__} has no outcome field(s) {sorted(unknown)}")
    check_transition(run, status)  # both, before either changes
    if observation_status is not None:
        check_transition(run.observation, observation_status)
    for name, value in fields.items():
        setattr(run, name, value)
    run.finished_at = utcnow()
    if "processing_time_seconds" not in fields and run.started_at is not None:
        run.processing_time_seconds = (run.finished_at - run.started_at).total_seconds()
    transition(run, status, reason=error_message)
    if observation_status is not None:
        transition(run.observation, observation_status, reason=error_message)


def start_preprocess_run(session: Session, observation: Observation, parameters: dict[str, Any] | None,
                         dagster_run_id: str | None) -> PreprocessRun:
    """Start (or restart) the calibration of ``observation``: its single run row goes to running.

    A re-run resets the row's outcome and bumps ``retry_count``; a row left
    ``running`` by a dead worker is first marked failed ("abandoned"). The
    observation moves to ``preprocessing``.
    """
    observation = current_row(session, observation)
    if observation.status != ObservationStatus.PREPROCESSING:  # else: resuming an abandoned attempt
        transition(observation, ObservationStatus.PREPROCESSING)
    run = session.scalar(sa.select(PreprocessRun).where(PreprocessRun.observation_id == observation.id)
                         .with_for_update())
    if run is None:
        run = PreprocessRun(observation=observation, status=RunStatus.PENDING, retry_count=0)
        session.add(run)
    else:
        run.retry_count += 1
    _begin_attempt(run, PREPROCESS_OUTCOME, parameters, dagster_run_id)
    session.flush()
    return run


_PREPROCESS_RESULT = {RunStatus.COMPLETED: ObservationStatus.PREPROCESSED, RunStatus.FAILED: ObservationStatus.FAILED,
                      RunStatus.BLOCKED: ObservationStatus.BLOCKED}


def finish_preprocess_run(session: Session, run: PreprocessRun, *, status: RunStatus, **fields: Any) -> PreprocessRun:
    """End the attempt as completed, failed or blocked; the observation follows (preprocessed/failed/blocked).

    ``fields``: outcome columns (processed_fits_path, quality, wcs_info, calibration_applied,
    wcs_aligned, registration_quality, master_bias / master_bias_id, master_flat(_id),
    calibration_note, processing_time_seconds — measured from started_at if not given)
    and ``error_message``, which also becomes the observation's status_reason.
    """
    if status not in _PREPROCESS_RESULT:
        raise ValueError(f"a preprocess run ends completed, failed or blocked, not {status!r}")
    run = current_row(session, run)
    _end_attempt(run, _PREPROCESS_RESULT[status], status, PREPROCESS_OUTCOME, fields)
    session.flush()
    return run


def start_difference_run(session: Session, observation: Observation, reference: ReferenceImage | None,
                         parameters: dict[str, Any] | None, dagster_run_id: str | None,
                         algorithm: str = "zogy") -> DifferenceRun:
    """Start (or restart) the subtraction of ``reference`` from ``observation``.

    The reference version is snapshotted on the run. A restart resets the row,
    bumps ``retry_count`` and deletes the previous attempt's candidates. The
    observation must be calibrated (its preprocess run completed) and moves to
    ``differencing``. ``reference`` is None when there is none yet: finish the
    run as blocked (waiting for one) or skipped.
    """
    observation = current_row(session, observation)
    preprocess = observation.preprocess_run
    if preprocess is None or preprocess.status != RunStatus.COMPLETED:
        raise ValueError(f"{observation!r} is not calibrated: no completed preprocess run")
    if observation.status != ObservationStatus.DIFFERENCING:  # else: resuming an abandoned attempt
        transition(observation, ObservationStatus.DIFFERENCING)
    run = session.scalar(sa.select(DifferenceRun).where(DifferenceRun.observation_id == observation.id)
                         .with_for_update())
    if run is None:
        run = DifferenceRun(observation=observation, status=RunStatus.PENDING, retry_count=0)
        session.add(run)
    else:
        run.retry_count += 1
        session.execute(sa.delete(Candidate).where(Candidate.difference_run_id == run.id))
        session.expire(run, ["candidates"])
    _begin_attempt(run, DIFFERENCE_OUTCOME, parameters, dagster_run_id)
    run.algorithm = algorithm
    run.reference_image = None if reference is None else session.get(ReferenceImage, reference.id)  # this session's
    run.reference_observation_id = None if reference is None else reference.source_observation_id
    run.reference_version = None if reference is None else reference.version
    session.flush()
    return run


# completed: the observation stays differencing until record_candidates writes its candidates (and then, in
# the same transaction, it is differenced: the status never promises rows that are not there yet);
# skipped: nothing to subtract for good (e.g. the frame is its own reference), so differencing is over
_DIFFERENCE_RESULT = {RunStatus.COMPLETED: None,
                      RunStatus.SKIPPED: ObservationStatus.DIFFERENCED,
                      RunStatus.FAILED: ObservationStatus.FAILED, RunStatus.BLOCKED: ObservationStatus.BLOCKED}


def finish_difference_run(session: Session, run: DifferenceRun, *, status: RunStatus, **fields: Any) -> DifferenceRun:
    """End the attempt: skipped → observation differenced; failed / blocked → the same; completed → the
    observation stays ``differencing`` until :func:`record_candidates` stores the candidates.

    ``fields``: outcome columns (difference_image_path, significance_map_path, noise_level,
    detection_threshold, candidates_found, quality, processing_time_seconds) and
    ``error_message`` (the reason, also for blocked and skipped runs).
    """
    if status not in _DIFFERENCE_RESULT:
        raise ValueError(f"a difference run ends completed, failed, blocked or skipped, not {status!r}")
    run = current_row(session, run)
    _end_attempt(run, _DIFFERENCE_RESULT[status], status, DIFFERENCE_OUTCOME, fields)
    session.flush()
    return run


# --- references -----------------------------------------------------------------------------------------------------

def current_reference(session: Session, field_name: str, filter_band: str) -> ReferenceImage | None:
    return session.scalar(sa.select(ReferenceImage).where(ReferenceImage.field_name == field_name,
                                                          ReferenceImage.filter_band == filter_band,
                                                          ReferenceImage.is_current))


def inputs_digest(observation_keys: Iterable[str]) -> str:
    """sha256 of the sorted observation keys of a reference's inputs: equal digests, equal input sets."""
    return hashlib.sha256("\n".join(sorted(observation_keys)).encode()).hexdigest()


def reference_input_keys(session: Session, reference: ReferenceImage) -> list[str]:
    """Observation keys of a reference version's inputs (its source frame for a version without any listed)."""
    keys = session.scalars(sa.select(Observation.observation_id).join(
        ReferenceInput, ReferenceInput.observation_id == Observation.id)
        .where(ReferenceInput.reference_id == reference.id).order_by(Observation.observation_id)).all()
    return list(keys) or [reference.source_observation.observation_id]


def reference_containing(session: Session, observation: Observation) -> ReferenceImage | None:
    """The current reference of the observation's field and band if the observation is one of its inputs."""
    return session.scalar(sa.select(ReferenceImage).join(ReferenceInput, ReferenceInput.reference_id == ReferenceImage.id)
                          .where(ReferenceImage.is_current, ReferenceInput.observation_id == observation.id))


def record_reference(session: Session, field_name: str, filter_band: str, source_observation: Observation, path: str,
                     seeing: float | None, depth: float | None, selection_reason: str | None,
                     dagster_run_id: str | None, inputs: Sequence[dict[str, Any]] = (),
                     **figures: Any) -> ReferenceImage:
    """Make a new reference version current for (field, band); the previous one stays, no longer current.

    ``inputs``: for a co-add, one mapping per input frame with its ``observation_key`` and the
    :class:`ReferenceInput` fields; ``figures``: ``psf_fwhm_px``, ``limit_mag_5sigma``, ``mag_system``.
    The version's ``n_inputs`` and ``inputs_digest`` follow from the inputs (the source frame alone
    for a single-frame reference).
    """
    latest = session.scalar(sa.select(sa.func.max(ReferenceImage.version))
                            .where(ReferenceImage.field_name == field_name, ReferenceImage.filter_band == filter_band))
    previous = current_reference(session, field_name, filter_band)
    if previous is not None:
        previous.is_current = False
        session.flush()  # before the insert: the partial unique index allows one current row
    keys = [entry["observation_key"] for entry in inputs] or [source_observation.observation_id]
    reference = ReferenceImage(
        field_name=field_name, filter_band=filter_band, version=(latest or 0) + 1,
        source_observation_id=source_observation.id, path=path, seeing=seeing, depth=depth,
        selection_reason=selection_reason, is_current=True, dagster_run_id=dagster_run_id,
        n_inputs=len(keys), inputs_digest=inputs_digest(keys), **figures)
    for entry in inputs:
        fields = {k: _plain(v) for k, v in entry.items() if k != "observation_key"}
        reference.inputs.append(ReferenceInput(observation_id=get_observation(session, entry["observation_key"]).id,
                                               **fields))
    session.add(reference)
    session.flush()
    return reference


# --- candidates -----------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """numpy scalars (np.bool_, np.int64, ...) as Python values: database drivers reject them."""
    return value.item() if isinstance(value, np.generic) else value


def replace_candidates(session: Session, difference_run: DifferenceRun, rows: Sequence[dict[str, Any]]) -> int:
    """Make ``rows`` the run's candidates, dropping any earlier set; returns how many were stored.

    Each row holds Candidate columns (ra, dec, pixel_x, pixel_y, flux, flux_error,
    significance, snr, fwhm, ellipticity, position_angle, is_* flags, features);
    run, observation and HEALPix index are filled in. Also sets ``candidates_found``.
    """
    run = current_row(session, difference_run)
    session.execute(sa.delete(Candidate).where(Candidate.difference_run_id == run.id))
    if rows:
        pixels = healpix_indices([row["ra"] for row in rows], [row["dec"] for row in rows])
        session.execute(sa.insert(Candidate), [
            {**{key: _plain(value) for key, value in row.items()}, "difference_run_id": run.id,
             "observation_id": run.observation_id, "healpix_index": int(pixel)}
            for row, pixel in zip(rows, pixels, strict=True)])
    session.expire(run, ["candidates"])
    run.candidates_found = len(rows)
    session.flush()
    return len(rows)


def record_candidates(session: Session, difference_run: DifferenceRun, rows: Sequence[dict[str, Any]]) -> int:
    """Store the candidates of a finished difference (:func:`replace_candidates`) and, in the same
    transaction, mark its observation ``differenced``: a reader never sees that status without its rows."""
    run = current_row(session, difference_run)
    if run.status not in (RunStatus.COMPLETED, RunStatus.SKIPPED):
        raise ValueError(f"{run!r} is {run.status.value}: candidates come from a completed (or skipped) difference")
    stored = replace_candidates(session, run, rows)
    if run.observation.status == ObservationStatus.DIFFERENCING:
        transition(run.observation, ObservationStatus.DIFFERENCED)
    session.flush()
    return stored


def record_registration_quality(session: Session, difference_run: DifferenceRun, rms_px: float | None) -> None:
    """The frame's ``registration_quality``: the RMS (px) of its registration onto its reference's grid
    (a frame whose WCS was solved keeps that solution's RMS until it is differenced)."""
    run = current_row(session, difference_run)
    if rms_px is not None and run.observation.preprocess_run is not None:
        run.observation.preprocess_run.registration_quality = float(rms_px)
        session.flush()


#: the depth columns of a DifferenceRun (:func:`record_frame_depth`)
DEPTH_FIELDS = ("depth_snr50", "depth_snr50_err", "depth_mag50", "depth_mag_system", "depth_n_fakes")


def record_frame_depth(session: Session, difference_run: DifferenceRun, **depth: Any) -> DifferenceRun:
    """A completed difference's depth measured by injected fakes (:data:`DEPTH_FIELDS`; None: not measured)."""
    unknown = set(depth) - set(DEPTH_FIELDS)
    if unknown:
        raise TypeError(f"a difference's depth has no field(s) {sorted(unknown)}")
    run = current_row(session, difference_run)
    if run.status is not RunStatus.COMPLETED:
        raise ValueError(f"{run!r} is not completed: a depth is measured on a finished difference")
    for name, value in depth.items():
        setattr(run, name, value)
    session.flush()
    return run


def candidates_of_run(session: Session, difference_run: DifferenceRun) -> list[Candidate]:
    """The candidates a difference attempt recorded, by pixel row then column."""
    return list(session.scalars(sa.select(Candidate).where(Candidate.difference_run_id == difference_run.id)
                                .order_by(Candidate.pixel_y, Candidate.pixel_x)))


_FLAGS = (("saturated", Candidate.is_saturated), ("blended", Candidate.is_blended), ("edge", Candidate.is_edge),
          ("negative", Candidate.is_negative))


def candidates_for_export(session: Session, *, all_versions: bool = False) -> list[dict[str, Any]]:
    """Candidates with their provenance, by observation then pixel row/column.

    Only those of current frames unless ``all_versions``: a candidate counts when
    its raw file is the accepted version of its name (not ``superseded`` by a newer
    one, nor quarantined later) and its observation is not ``archived`` (the state
    an observation of a superseded file is moved to).

    Keys: original_name and raw_file_version (of the raw file), raw_file_status,
    observation_id, observation_status, ra, dec, x, y (0-based pixels), snr,
    flux, flux_error, flags (names of the set flags, e.g. ["edge"]).
    """
    stmt = (sa.select(Candidate, Observation.observation_id, Observation.status, RawDataFile.original_name,
                      RawDataFile.version, RawDataFile.status)
            .join(Observation, Candidate.observation_id == Observation.id)
            .outerjoin(RawDataFile, RawDataFile.observation_id == Observation.id)
            .order_by(Observation.observation_id, Candidate.pixel_y, Candidate.pixel_x))
    if not all_versions:
        stmt = stmt.where(Observation.status != ObservationStatus.ARCHIVED,
                          sa.or_(RawDataFile.id.is_(None), RawDataFile.status == RawFileStatus.ACCEPTED))
    return [
        {"original_name": original_name, "raw_file_version": version,
         "raw_file_status": raw_status.value if raw_status is not None else None,
         "observation_id": observation_id, "observation_status": observation_status.value,
         "ra": c.ra, "dec": c.dec, "x": c.pixel_x, "y": c.pixel_y, "snr": c.snr, "flux": c.flux,
         "flux_error": c.flux_error, "flags": [name for name, column in _FLAGS if getattr(c, column.key)]}
        for c, observation_id, observation_status, original_name, version, raw_status in session.execute(stmt)
    ]


def _count_by_status(session: Session, model: type) -> dict[str, int]:
    counts = dict(session.execute(sa.select(model.status, sa.func.count()).group_by(model.status)).all())
    return {status.value: counts.get(status, 0) for status in model.status.type.enum_class}


def catalog_summary(session: Session) -> dict[str, Any]:
    """Counts for dashboards and the CLI: raw files and observations by status, candidates, references.

    ``references`` counts the current ones (one per field and band), ``reference_versions`` all.
    """
    return {
        "raw_files": _count_by_status(session, RawDataFile),
        "observations": _count_by_status(session, Observation),
        "candidates": session.scalar(sa.select(sa.func.count()).select_from(Candidate)),
        "references": session.scalar(sa.select(sa.func.count()).where(ReferenceImage.is_current)),
        "reference_versions": session.scalar(sa.select(sa.func.count()).select_from(ReferenceImage)),
    }
