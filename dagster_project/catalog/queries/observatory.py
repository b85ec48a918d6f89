"""Named reads and writes of the observatory domain: executed observation units, raw data packages, files
registered before they land, staging requests, and the critical writes applied by the operations API.

Each write the API buffers is applied by one function here, inside the transaction that records it in
``applied_writes`` (:func:`add_applied_write`, its key UNIQUE): applying it and recording it commit together, so
a write is applied exactly once however often the replayer tries. A write that can never apply raises
:class:`WriteRefused` with the reason; the replayer dead-letters it.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dagster_project.catalog.schema.base import utcnow
from dagster_project.catalog.schema.observations import Observation, RawDataFile
from dagster_project.catalog.schema.observatory import (
    AppliedWrite,
    ExecutedObsUnit,
    ExecutedObsUnitStatus,
    PackageStatus,
    RawDataPackage,
    RegisteredFileStatus,
    RegisteredRawFile,
    StagingRequest,
    StagingStatus,
)
from dagster_project.catalog.states import transition

__all__ = [
    "AppliedWriteConflict",
    "StagedFile",
    "cancel_staging",
    "claim_staging",
    "finish_staging",
    "get_staging",
    "record_staging_progress",
    "request_staging",
    "stagings_requested",
    "FileDeclaration",
    "WriteRefused",
    "add_applied_write",
    "applied_write",
    "applied_writes_by_key",
    "check_not_applied",
    "create_package",
    "WaitingRegistration",
    "declared_mismatch",
    "executed_obs_units_of",
    "finalize_package",
    "finish_executed_obs_unit",
    "get_package",
    "get_registered_file",
    "files_of_unit",
    "mark_missing_registrations",
    "names_waiting",
    "observations_of_unit",
    "package_declared_bytes",
    "packages_of_unit",
    "register_files",
    "settle_registrations",
    "waiting_registrations",
    "start_executed_obs_unit",
]


class WriteRefused(ValueError):
    """A write the catalog can never apply as it stands (its reason is the message)."""


class AppliedWriteConflict(WriteRefused):
    """The idempotency key was applied before with other content."""


#: a registration in these states waits for its file to land
_WAITING = (RegisteredFileStatus.REGISTERED, RegisteredFileStatus.MISSING)


@dataclass(frozen=True)
class FileDeclaration:
    """A file the telescope says it wrote: the id the API gave it, its name, size and sha256."""

    id: uuid.UUID
    name: str
    size_bytes: int
    sha256: str
    executed_obs_unit_id: uuid.UUID | None = None
    raw_data_package_id: uuid.UUID | None = None


# --- applied writes -------------------------------------------------------------------------------------------------

def applied_write(session: Session, idempotency_key: str) -> AppliedWrite | None:
    return session.scalar(sa.select(AppliedWrite).where(AppliedWrite.idempotency_key == idempotency_key))


def applied_writes_by_key(session: Session, keys: Sequence[str]) -> dict[str, AppliedWrite]:
    """The writes among ``keys`` applied before, by key (one query)."""
    return {w.idempotency_key: w for w in session.scalars(
        sa.select(AppliedWrite).where(AppliedWrite.idempotency_key.in_(list(keys))))}


def check_not_applied(before: AppliedWrite | None, idempotency_key: str, content_sha256: str) -> bool:
    """Whether a write is still to be applied: False if it was (with the same content); AppliedWriteConflict if the
    key was applied with other content."""
    if before is None:
        return True
    if before.content_sha256 != content_sha256:
        raise AppliedWriteConflict(f"idempotency key {idempotency_key!r} was applied before with other content "
                                   f"(write {before.id})")
    return False


def add_applied_write(session: Session, *, write_id: uuid.UUID, idempotency_key: str, kind: str,
                      content_sha256: str, client: str, received_at: datetime, journal_seq: int) -> None:
    """Record a write as applied (written at the next flush: its key is UNIQUE, so a second is refused there)."""
    session.add(AppliedWrite(id=write_id, idempotency_key=idempotency_key, kind=kind, content_sha256=content_sha256,
                             client=client, received_at=received_at, journal_seq=journal_seq))


# --- executed observation units -------------------------------------------------------------------------------------

def start_executed_obs_unit(session: Session, *, id: uuid.UUID, obs_unit_id: int, instrument: str,
                            start_time: datetime, telescope: str | None = None, operator: str | None = None,
                            obs_metadata: dict[str, Any] | None = None) -> ExecutedObsUnit:
    """A started unit, written at the next flush (its id is the primary key: a second is refused there)."""
    unit = ExecutedObsUnit(id=id, obs_unit_id=obs_unit_id, instrument=instrument, telescope=telescope,
                           operator=operator, start_time=start_time, status=ExecutedObsUnitStatus.STARTED,
                           obs_metadata=obs_metadata or {})
    session.add(unit)
    return unit


def finish_executed_obs_unit(session: Session, *, id: uuid.UUID, status: ExecutedObsUnitStatus, end_time: datetime,
                             reason: str | None = None) -> ExecutedObsUnit:
    unit = session.get(ExecutedObsUnit, id, with_for_update=True)
    if unit is None:
        raise WriteRefused(f"no executed observation unit {id}")
    if unit.status is not ExecutedObsUnitStatus.STARTED:
        raise WriteRefused(f"executed observation unit {id} is {unit.status.value} already")
    if end_time < unit.start_time:
        raise WriteRefused(f"end_time {end_time.isoformat()} is before the unit's start_time "
                           f"{unit.start_time.isoformat()}")
    transition(unit, status, reason=reason)
    unit.end_time = end_time
    session.flush()
    return unit


def executed_obs_units_of(session: Session, obs_unit_id: int, limit: int = 100) -> list[ExecutedObsUnit]:
    return list(session.scalars(sa.select(ExecutedObsUnit).where(ExecutedObsUnit.obs_unit_id == obs_unit_id)
                                .order_by(ExecutedObsUnit.start_time, ExecutedObsUnit.id).limit(limit)))


def packages_of_unit(session: Session, unit_id: uuid.UUID) -> list[RawDataPackage]:
    return list(session.scalars(sa.select(RawDataPackage).where(RawDataPackage.executed_obs_unit_id == unit_id)
                                .order_by(RawDataPackage.created_at, RawDataPackage.id)))


def files_of_unit(session: Session, unit_id: uuid.UUID) -> list[RegisteredRawFile]:
    return list(session.scalars(sa.select(RegisteredRawFile).where(RegisteredRawFile.executed_obs_unit_id == unit_id)
                                .order_by(RegisteredRawFile.name, RegisteredRawFile.id)))


def observations_of_unit(session: Session, unit_id: uuid.UUID) -> list[str]:
    """The observation ids (partition keys) of the frames registered under the unit that have landed."""
    return list(session.scalars(
        sa.select(Observation.observation_id)
        .join(RawDataFile, RawDataFile.observation_id == Observation.id)
        .join(RegisteredRawFile, RegisteredRawFile.raw_data_file_id == RawDataFile.id)
        .where(RegisteredRawFile.executed_obs_unit_id == unit_id).order_by(Observation.observation_id)))


# --- raw data packages ----------------------------------------------------------------------------------------------

def create_package(session: Session, *, id: uuid.UUID, name: str, size_limit_bytes: int,
                   executed_obs_unit_id: uuid.UUID | None = None) -> RawDataPackage:
    if session.get(RawDataPackage, id) is not None:
        raise WriteRefused(f"raw data package {id} exists already")
    if executed_obs_unit_id is not None and session.get(ExecutedObsUnit, executed_obs_unit_id) is None:
        raise WriteRefused(f"no executed observation unit {executed_obs_unit_id}")
    package = RawDataPackage(id=id, name=name, executed_obs_unit_id=executed_obs_unit_id,
                             status=PackageStatus.BUILDING, size_limit_bytes=size_limit_bytes)
    session.add(package)
    session.flush()
    return package


def get_package(session: Session, package_id: uuid.UUID) -> RawDataPackage | None:
    return session.get(RawDataPackage, package_id)


def package_declared_bytes(session: Session, package_id: uuid.UUID) -> int:
    return int(session.scalar(sa.select(sa.func.coalesce(sa.func.sum(RegisteredRawFile.size_bytes), 0))
                              .where(RegisteredRawFile.raw_data_package_id == package_id)))


def finalize_package(session: Session, package_id: uuid.UUID, now: datetime | None = None) -> RawDataPackage:
    """building → complete when every file of the package has arrived and was verified; WriteRefused saying which
    files are not, otherwise (and for a package with no files)."""
    package = session.get(RawDataPackage, package_id, with_for_update=True)
    if package is None:
        raise WriteRefused(f"no raw data package {package_id}")
    if package.status is PackageStatus.COMPLETE:
        return package
    files = list(package.files)
    if not files:
        raise WriteRefused(f"raw data package {package_id} has no files")
    pending = [f"{f.name} ({f.status.value})" for f in files if f.status is not RegisteredFileStatus.ARRIVED]
    if pending:
        raise WriteRefused(f"raw data package {package_id}: {len(pending)} of {len(files)} files not arrived and "
                           f"verified: {', '.join(pending[:20])}{' ...' if len(pending) > 20 else ''}")
    transition(package, PackageStatus.COMPLETE)
    package.finalized_at = now or utcnow()
    session.flush()
    return package


# --- files registered before they land ------------------------------------------------------------------------------

def register_files(session: Session, declarations: Sequence[FileDeclaration],
                   registered_at: datetime) -> list[RegisteredRawFile]:
    """Register the declared files together; WriteRefused if a package is missing, complete or over its limit,
    a unit is missing, or a name already waits for its file."""
    _check_packages(session, declarations)
    units = {d.executed_obs_unit_id for d in declarations} - {None}
    for unit_id in units:
        if session.get(ExecutedObsUnit, unit_id) is None:
            raise WriteRefused(f"no executed observation unit {unit_id}")
    names = [d.name for d in declarations]
    if len(set(names)) != len(names):
        raise WriteRefused("a file name is given twice")
    waiting = names_waiting(session, names)
    if waiting:
        raise WriteRefused(f"already registered and waiting to land: {', '.join(sorted(waiting)[:10])}")
    rows = [RegisteredRawFile(id=d.id, name=d.name, size_bytes=d.size_bytes, sha256=d.sha256,
                              executed_obs_unit_id=d.executed_obs_unit_id, raw_data_package_id=d.raw_data_package_id,
                              status=RegisteredFileStatus.REGISTERED, registered_at=registered_at)
            for d in declarations]
    session.add_all(rows)
    session.flush()
    return rows


def _check_packages(session: Session, declarations: Iterable[FileDeclaration]) -> None:
    added: dict[uuid.UUID, int] = {}
    for declaration in declarations:
        if declaration.raw_data_package_id is not None:
            added[declaration.raw_data_package_id] = added.get(declaration.raw_data_package_id, 0) + \
                declaration.size_bytes
    for package_id, size in added.items():
        package = session.get(RawDataPackage, package_id, with_for_update=True)
        if package is None:
            raise WriteRefused(f"no raw data package {package_id}")
        if package.status is not PackageStatus.BUILDING:
            raise WriteRefused(f"raw data package {package_id} is {package.status.value}: it takes no more files")
        total = package_declared_bytes(session, package_id) + size
        if total > package.size_limit_bytes:
            raise WriteRefused(f"raw data package {package_id} would hold {total} bytes, over its limit of "
                               f"{package.size_limit_bytes} bytes")


def get_registered_file(session: Session, file_id: uuid.UUID) -> RegisteredRawFile | None:
    return session.get(RegisteredRawFile, file_id)


def names_waiting(session: Session, names: Sequence[str]) -> set[str]:
    """Which of ``names`` a registration waits for."""
    return set(session.scalars(sa.select(RegisteredRawFile.name).where(
        RegisteredRawFile.name.in_(list(names)), RegisteredRawFile.status.in_(_WAITING))))


@dataclass(frozen=True)
class WaitingRegistration:
    """What the landing scan checks a file of this name against."""

    id: uuid.UUID
    size_bytes: int
    sha256: str


def waiting_registrations(session: Session) -> dict[str, WaitingRegistration]:
    """Every registration waiting for its file, by name (at most one waits for a name): one query a scan."""
    rows = session.execute(sa.select(RegisteredRawFile.name, RegisteredRawFile.id, RegisteredRawFile.size_bytes,
                                     RegisteredRawFile.sha256).where(RegisteredRawFile.status.in_(_WAITING)))
    return {name: WaitingRegistration(id, size, sha256) for name, id, size, sha256 in rows}


def declared_mismatch(registration: WaitingRegistration, size_bytes: int, sha256: str) -> str | None:
    """Why a landed file is not the one declared (its size or sha256 differ); None when it is."""
    problems = []
    if size_bytes != registration.size_bytes:
        problems.append(f"{size_bytes} bytes where {registration.size_bytes} were declared")
    if sha256 != registration.sha256:
        problems.append(f"sha256 {sha256} where {registration.sha256} was declared")
    if not problems:
        return None
    return f"not the file registered as {registration.id} through the operations API: {'; '.join(problems)}"


def settle_registrations(session: Session, landed: Sequence[tuple[uuid.UUID, uuid.UUID, str | None]],
                         now: datetime | None = None) -> None:
    """Registered files that have landed, as ``(registration id, raw file id, mismatch)``: arrived (whatever the
    landing made of the file: accepted, quarantined for its content, duplicate), or mismatched with the reason
    when it was not the file declared. A registration no longer waiting is left as it is."""
    now = now or utcnow()
    for registration_id, raw_file_id, mismatch in landed:
        registration = session.get(RegisteredRawFile, registration_id, with_for_update=True)
        if registration is None or registration.status not in _WAITING:
            continue
        registration.raw_data_file_id = raw_file_id
        registration.arrived_at = now
        if mismatch is None:
            transition(registration, RegisteredFileStatus.ARRIVED)
        else:
            transition(registration, RegisteredFileStatus.MISMATCHED, reason=mismatch)
    session.flush()


def mark_missing_registrations(session: Session, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """Registrations still waiting ``older_than`` after they were made become missing; their names."""
    now = now or utcnow()
    overdue = list(session.scalars(sa.select(RegisteredRawFile).where(
        RegisteredRawFile.status == RegisteredFileStatus.REGISTERED,
        RegisteredRawFile.registered_at < now - older_than).with_for_update()))
    for registration in overdue:
        transition(registration, RegisteredFileStatus.MISSING,
                   reason=f"not landed within {older_than.total_seconds():g} s of its registration")
    session.flush()
    return [r.name for r in overdue]


# --- staging --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StagedFile:
    """One file a staging copies: its name (the path it landed under), the archive copy, its size and sha256."""

    name: str
    source: str
    size_bytes: int
    sha256: str


def request_staging(session: Session, *, id: uuid.UUID, destination: str, package_ids: Sequence[uuid.UUID],
                    file_ids: Sequence[uuid.UUID], requested_at: datetime) -> StagingRequest:
    """A staging request; WriteRefused naming a package or file that does not exist."""
    for package_id in package_ids:
        if session.get(RawDataPackage, package_id) is None:
            raise WriteRefused(f"no raw data package {package_id}")
    for file_id in file_ids:
        if session.get(RegisteredRawFile, file_id) is None:
            raise WriteRefused(f"no raw data file {file_id}")
    staging = StagingRequest(id=id, destination=destination, package_ids=[str(p) for p in package_ids],
                             file_ids=[str(f) for f in file_ids], status=StagingStatus.REQUESTED,
                             requested_at=requested_at)
    session.add(staging)
    return staging


def get_staging(session: Session, staging_id: uuid.UUID) -> StagingRequest | None:
    return session.get(StagingRequest, staging_id)


def stagings_requested(session: Session, limit: int = 100) -> list[uuid.UUID]:
    """Requests not started yet, oldest first (the staging sensor launches a run for each)."""
    return list(session.scalars(sa.select(StagingRequest.id).where(StagingRequest.status == StagingStatus.REQUESTED)
                                .order_by(StagingRequest.requested_at, StagingRequest.id).limit(limit)))


def _files_to_stage(session: Session, staging: StagingRequest) -> list[StagedFile] | str:
    """The files of the request's packages and its files, each once, by name; or why they cannot be staged."""
    package_ids = [uuid.UUID(p) for p in staging.package_ids]
    file_ids = [uuid.UUID(f) for f in staging.file_ids]
    registrations = list(session.scalars(sa.select(RegisteredRawFile).where(sa.or_(
        RegisteredRawFile.raw_data_package_id.in_(package_ids), RegisteredRawFile.id.in_(file_ids)))
        .order_by(RegisteredRawFile.name)))
    not_arrived = [f"{r.name} ({r.status.value})" for r in registrations if r.status is not RegisteredFileStatus.ARRIVED]
    if not_arrived:
        return f"{len(not_arrived)} files have not arrived and been verified: {', '.join(not_arrived[:10])}"
    files = []
    for registration in registrations:
        raw = registration.raw_file
        if raw is None or not raw.stored_path:
            return f"{registration.name} has no archived copy"
        files.append(StagedFile(registration.name, raw.stored_path, raw.size_bytes, raw.sha256))
    return files or "nothing to stage: the packages and files named hold no file"


def claim_staging(session: Session, staging_id: uuid.UUID, dagster_run_id: str, operation_id: int | None = None,
                  now: datetime | None = None) -> tuple[StagingRequest, list[StagedFile]]:
    """requested → staging, with its totals; the files to copy. A request cancelled before its run started, or
    whose files cannot be staged, ends here (cancelled, or failed with the reason) and has no files to copy.
    WriteRefused for a request that is not waiting (staged already, by another run)."""
    staging = session.get(StagingRequest, staging_id, with_for_update=True)
    if staging is None:
        raise WriteRefused(f"no staging request {staging_id}")
    if staging.status is not StagingStatus.REQUESTED:
        raise WriteRefused(f"staging request {staging_id} is {staging.status.value}, not requested")
    now = now or utcnow()
    staging.dagster_run_id, staging.operation_id = dagster_run_id, operation_id
    if staging.cancel_requested:
        finish_staging(session, staging, StagingStatus.CANCELLED, "cancelled before it started", now=now)
        return staging, []
    files = _files_to_stage(session, staging)
    if isinstance(files, str):
        finish_staging(session, staging, StagingStatus.FAILED, files, now=now)
        return staging, []
    transition(staging, StagingStatus.STAGING)
    staging.started_at = now
    staging.files_total, staging.bytes_total = len(files), sum(f.size_bytes for f in files)
    session.flush()
    return staging, files


def record_staging_progress(session: Session, staging_id: uuid.UUID, files_done: int, bytes_done: int) -> bool:
    """The copy's progress; whether it has been asked to stop."""
    staging = session.get(StagingRequest, staging_id, with_for_update=True)
    staging.files_done, staging.bytes_done = files_done, bytes_done
    session.flush()
    return staging.cancel_requested


def finish_staging(session: Session, staging: StagingRequest | uuid.UUID, status: StagingStatus,
                   reason: str | None = None, now: datetime | None = None) -> StagingRequest:
    if not isinstance(staging, StagingRequest):
        staging = session.get(StagingRequest, staging, with_for_update=True)
    transition(staging, status, reason=reason)
    staging.finished_at = now or utcnow()
    session.flush()
    return staging


def cancel_staging(session: Session, staging_id: uuid.UUID, now: datetime | None = None) -> StagingRequest:
    """A request not started is cancelled at once; one under way is asked to stop (its run stops between two
    files, or two chunks of one, and ends cancelled). WriteRefused for one that has ended."""
    staging = session.get(StagingRequest, staging_id, with_for_update=True)
    if staging is None:
        raise WriteRefused(f"no staging request {staging_id}")
    if staging.status in (StagingStatus.COMPLETED, StagingStatus.FAILED, StagingStatus.CANCELLED):
        raise WriteRefused(f"staging request {staging_id} is {staging.status.value} already")
    staging.cancel_requested = True
    if staging.status is StagingStatus.REQUESTED and staging.dagster_run_id is None:
        finish_staging(session, staging, StagingStatus.CANCELLED, "cancelled before it started", now=now)
    session.flush()
    return staging
