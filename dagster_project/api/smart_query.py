"""Smart reads: what the catalog stores, with the journal's writes laid over it, so a client reads its own
writes whether or not they have reached the database.

The journal is read first, then the catalog: a write replayed in between is then seen in the catalog, and
laying it over the stored row again changes nothing (each overlay sets what its write set). When the
catalog answers, only the pending entries are laid over its rows (stored rows win once replayed); when it
does not, the applied entries are laid over nothing as well, so every write this API acknowledged stays
visible through the outage. What reached the catalog by other ways (a file landing)
shows only while the catalog is reachable.
"""

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from dagster_project.api import appliers
from dagster_project.api.schemas import ExecutedObsUnitDetail, RawDataFileRecord, RawDataPackageRecord, \
    StagingRecord
from dagster_project.catalog.db import Catalog
from dagster_project.catalog.queries import observatory
from dagster_project.catalog.schema.observatory import ExecutedObsUnit, RawDataPackage, RegisteredRawFile, \
    StagingRequest
from dagster_project.journal.replayer import OUTAGES
from dagster_project.journal.store import PENDING, Entry, Journal

__all__ = ["CatalogGate", "SmartQuery"]

T = TypeVar("T")
UNIT, FILE, PACKAGE, STAGING = "ExecutedObsUnit", "RawDataFile", "RawDataPackage", "StagingRequest"


class CatalogGate:
    """Whether to ask the catalog at all: after a failure, reads go to the journal alone for ``retry_after``
    seconds instead of each waiting for a connection timeout."""

    def __init__(self, retry_after: float = 2.0) -> None:
        self.retry_after = retry_after
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    def usable(self) -> bool:
        with self._lock:
            return self._failed_at is None or time.monotonic() - self._failed_at > self.retry_after

    def failed(self) -> None:
        with self._lock:
            self._failed_at = time.monotonic()

    def succeeded(self) -> None:
        with self._lock:
            self._failed_at = None

    @property
    def reachable(self) -> bool:
        return self._failed_at is None


def _unit_record(unit: ExecutedObsUnit) -> dict[str, Any]:
    return dict(id=unit.id, obs_unit_id=unit.obs_unit_id, instrument=unit.instrument, telescope=unit.telescope,
                operator=unit.operator, start_time=unit.start_time, end_time=unit.end_time, status=unit.status.value,
                status_reason=unit.status_reason, obs_metadata=unit.obs_metadata, buffered=False)


def _file_record(registration: RegisteredRawFile) -> dict[str, Any]:
    raw = registration.raw_file
    observation = raw.observation if raw is not None else None
    return dict(id=registration.id, name=registration.name, size_bytes=registration.size_bytes,
                sha256=registration.sha256, status=registration.status.value,
                status_reason=registration.status_reason, executed_obs_unit_id=registration.executed_obs_unit_id,
                raw_data_package_id=registration.raw_data_package_id, registered_at=registration.registered_at,
                arrived_at=registration.arrived_at, raw_data_file_id=registration.raw_data_file_id,
                raw_file_status=None if raw is None else raw.status.value,
                observation_id=None if observation is None else observation.observation_id, buffered=False)


def _package_record(package: RawDataPackage, declared_bytes: int) -> dict[str, Any]:
    return dict(id=package.id, name=package.name, executed_obs_unit_id=package.executed_obs_unit_id,
                status=package.status.value, size_limit_bytes=package.size_limit_bytes, declared_bytes=declared_bytes,
                finalized_at=package.finalized_at, buffered=False)


def _staging_record(staging: StagingRequest) -> dict[str, Any]:
    return dict(id=staging.id, destination=staging.destination, raw_data_package_ids=staging.package_ids,
                raw_data_file_ids=staging.file_ids, status=staging.status.value, status_reason=staging.status_reason,
                cancel_requested=staging.cancel_requested, files_done=staging.files_done,
                files_total=staging.files_total, bytes_done=staging.bytes_done, bytes_total=staging.bytes_total,
                dagster_run_id=staging.dagster_run_id, requested_at=staging.requested_at,
                started_at=staging.started_at, finished_at=staging.finished_at, buffered=False)


# --- laying a journal entry over records --------------------------------------------------------------------------

def _overlay_unit(units: dict[uuid.UUID, dict], entry: Entry) -> None:
    unit_id = uuid.UUID(entry.payload["id"])
    buffered = entry.state == PENDING
    if entry.kind == appliers.START_UNIT and unit_id not in units:
        units[unit_id] = dict(id=unit_id, **entry.payload["unit"], end_time=None, status="started",
                              status_reason=None, buffered=buffered)
    elif entry.kind == appliers.FINISH_UNIT and unit_id in units:
        finish = entry.payload["finish"]
        units[unit_id].update(status=finish["status"], end_time=finish["end_time"], status_reason=finish["reason"])
        units[unit_id]["buffered"] |= buffered


def _overlay_files(files: dict[uuid.UUID, dict], entry: Entry, wanted: Callable[[dict], bool]) -> None:
    for item in entry.payload["files"]:
        file_id = uuid.UUID(item["id"])
        if file_id in files or not wanted(item):
            continue
        files[file_id] = dict(id=file_id, **item["file"], status="registered", status_reason=None,
                              registered_at=entry.received_at, arrived_at=None, raw_data_file_id=None,
                              raw_file_status=None, observation_id=None, buffered=entry.state == PENDING)


def _overlay_package(packages: dict[uuid.UUID, dict], entry: Entry) -> None:
    package_id = uuid.UUID(entry.payload["id"])
    if package_id not in packages:
        packages[package_id] = dict(id=package_id, **entry.payload["package"], status="building",
                                    size_limit_bytes=entry.payload["size_limit_bytes"], declared_bytes=0,
                                    finalized_at=None, buffered=entry.state == PENDING)


def _to_lay_over(entries: list[Entry], stored: object | None) -> list[Entry]:
    """The pending entries over what the catalog returned; all of them when it returned nothing (it is away)."""
    return entries if stored is None else [e for e in entries if e.state == PENDING]


def _overlay_staging(stagings: dict[uuid.UUID, dict], entry: Entry) -> None:
    staging_id = uuid.UUID(entry.payload["id"])
    if staging_id not in stagings:
        stagings[staging_id] = dict(id=staging_id, **entry.payload["staging"], status="requested", status_reason=None,
                                    cancel_requested=False, files_done=0, files_total=0, bytes_done=0, bytes_total=0,
                                    dagster_run_id=None, requested_at=entry.received_at, started_at=None,
                                    finished_at=None, buffered=entry.state == PENDING)


class SmartQuery:
    """Reads that merge the journal and the catalog (see the module's docstring)."""

    def __init__(self, catalog: Catalog, journal: Journal, gate: CatalogGate) -> None:
        self.catalog, self.journal, self.gate = catalog, journal, gate

    def _stored(self, read: Callable[[Session], T]) -> T | None:
        """``read`` in a catalog session; None when the catalog is away."""
        if not self.gate.usable():
            return None
        try:
            with self.catalog.session() as session:
                found = read(session)
        except OUTAGES:
            self.gate.failed()
            return None
        self.gate.succeeded()
        return found

    def _touching(self, entity: str, *, entity_id: str | None = None, lookup: str | None = None) -> list[Entry]:
        """The journal's entries of the entity, applied ones included: which of them to lay over is decided once
        the catalog has answered or not (:func:`_to_lay_over`)."""
        return self.journal.touching(entity, entity_id=entity_id, lookup=lookup, applied_too=True)

    # --- executed observation units --------------------------------------------------------------------------------

    def executed_obs_units(self, obs_unit_id: int) -> list[ExecutedObsUnitDetail]:
        entries = self._touching(UNIT, lookup=str(obs_unit_id))

        def read(session: Session) -> dict[uuid.UUID, dict]:
            found = {}
            for unit in observatory.executed_obs_units_of(session, obs_unit_id):
                found[unit.id] = _unit_record(unit) | dict(
                    raw_data_packages=[p.id for p in observatory.packages_of_unit(session, unit.id)],
                    raw_data_files=[f.id for f in observatory.files_of_unit(session, unit.id)],
                    observations=observatory.observations_of_unit(session, unit.id))
            return found

        stored = self._stored(read)
        units = stored or {}
        for entry in _to_lay_over(entries, stored):
            _overlay_unit(units, entry)
        for unit_id, unit in units.items():
            for entry in _to_lay_over(self._touching(UNIT, entity_id=str(unit_id)), stored):
                _overlay_unit(units, entry)
            unit.setdefault("raw_data_packages", [])
            unit.setdefault("raw_data_files", [])
            unit.setdefault("observations", [])
            for entry in _to_lay_over(self._touching(PACKAGE, lookup=f"unit:{unit_id}"), stored):
                if uuid.UUID(entry.payload["id"]) not in unit["raw_data_packages"]:
                    unit["raw_data_packages"].append(uuid.UUID(entry.payload["id"]))
            files: dict[uuid.UUID, dict] = dict.fromkeys(unit["raw_data_files"], {})
            for entry in _to_lay_over(self._touching(FILE, lookup=f"unit:{unit_id}"), stored):
                _overlay_files(files, entry, lambda item: item["file"].get("executed_obs_unit_id") == str(unit_id))
            unit["raw_data_files"] = list(files)
        return [ExecutedObsUnitDetail.model_validate(u) for u in sorted(
            units.values(), key=lambda u: (str(u["start_time"]), str(u["id"])))]

    # --- files -----------------------------------------------------------------------------------------------------

    def _one(self, entity: str, entity_id: uuid.UUID, read_record: Callable[[Session], dict | None],
             overlay: Callable[[dict[uuid.UUID, dict], Entry], None], model: type[T]) -> T | None:
        """One entity by its id: its stored record (``read_record``) with the journal's entries laid over it."""
        entries = self._touching(entity, entity_id=str(entity_id))

        def read(session: Session) -> dict[uuid.UUID, dict]:
            record = read_record(session)
            return {} if record is None else {entity_id: record}

        stored = self._stored(read)
        found = stored or {}
        for entry in _to_lay_over(entries, stored):
            overlay(found, entry)
        return model.model_validate(found[entity_id]) if entity_id in found else None

    def raw_data_file(self, file_id: uuid.UUID) -> RawDataFileRecord | None:
        def read_record(session: Session) -> dict | None:
            registration = observatory.get_registered_file(session, file_id)
            return None if registration is None else _file_record(registration)

        return self._one(FILE, file_id, read_record,
                         lambda files, entry: _overlay_files(files, entry, lambda item: item["id"] == str(file_id)),
                         RawDataFileRecord)

    def names_waiting(self, names: list[str]) -> set[str]:
        """Which of ``names`` a registration already waits for (journal and catalog)."""
        entries = self.journal.touching_any(FILE, [f"name:{name}" for name in names])
        stored = self._stored(lambda session: observatory.names_waiting(session, names))
        asked = set(names)
        waiting = {item["file"]["name"] for entry in _to_lay_over(entries, stored)
                   for item in entry.payload["files"] if item["file"]["name"] in asked}
        return waiting | (stored or set())

    # --- packages --------------------------------------------------------------------------------------------------

    def raw_data_package(self, package_id: uuid.UUID) -> RawDataPackageRecord | None:
        package_entries = self._touching(PACKAGE, entity_id=str(package_id))
        file_entries = self._touching(FILE, lookup=f"package:{package_id}")

        def read(session: Session) -> tuple[dict, dict]:
            package = observatory.get_package(session, package_id)
            if package is None:
                return {}, {}
            declared = observatory.package_declared_bytes(session, package_id)
            return ({package_id: _package_record(package, declared)},
                    {f.id: _file_record(f) for f in package.files})

        stored = self._stored(read)
        packages, files = stored or ({}, {})
        for entry in _to_lay_over(package_entries, stored):
            _overlay_package(packages, entry)
        if package_id not in packages:
            return None
        for entry in _to_lay_over(file_entries, stored):
            _overlay_files(files, entry, lambda item: item["file"].get("raw_data_package_id") == str(package_id))
        record = packages[package_id]
        record["declared_bytes"] = sum(f["size_bytes"] for f in files.values())
        record["buffered"] = record["buffered"] or any(f["buffered"] for f in files.values())
        record["files"] = sorted(files.values(), key=lambda f: f["name"])
        return RawDataPackageRecord.model_validate(record)

    # --- staging ---------------------------------------------------------------------------------------------------

    def staging(self, staging_id: uuid.UUID) -> StagingRecord | None:
        def read_record(session: Session) -> dict | None:
            staging = observatory.get_staging(session, staging_id)
            return None if staging is None else _staging_record(staging)

        return self._one(STAGING, staging_id, read_record, _overlay_staging, StagingRecord)
