"""How the replayer applies each kind of critical write to the catalog: the journal entry's payload, validated
again by the schema it was accepted with, handed to the catalog's named write."""

import uuid

from sqlalchemy.orm import Session

from dagster_project.api.schemas import ExecutedObsUnitFinish, ExecutedObsUnitStart, RawDataFileCreate, \
    RawDataPackageCreate, StagingCreate
from dagster_project.catalog.queries import observatory
from dagster_project.catalog.schema.observatory import ExecutedObsUnitStatus
from dagster_project.journal.replayer import Applier
from dagster_project.journal.store import Entry

__all__ = ["APPLIERS", "FINISH_UNIT", "CREATE_PACKAGE", "REGISTER_FILES", "REQUEST_STAGING", "START_UNIT"]

START_UNIT = "executed_obs_unit.start"
FINISH_UNIT = "executed_obs_unit.finish"
REGISTER_FILES = "raw_data_files.register"
CREATE_PACKAGE = "raw_data_package.create"
REQUEST_STAGING = "staging.request"


def _start_unit(session: Session, entry: Entry) -> None:
    body = ExecutedObsUnitStart.model_validate(entry.payload["unit"])
    observatory.start_executed_obs_unit(session, id=uuid.UUID(entry.payload["id"]), **body.model_dump())


def _finish_unit(session: Session, entry: Entry) -> None:
    body = ExecutedObsUnitFinish.model_validate(entry.payload["finish"])
    observatory.finish_executed_obs_unit(session, id=uuid.UUID(entry.payload["id"]),
                                         status=ExecutedObsUnitStatus(body.status), end_time=body.end_time,
                                         reason=body.reason)


def _register_files(session: Session, entry: Entry) -> None:
    declarations = [observatory.FileDeclaration(id=uuid.UUID(item["id"]),
                                                **RawDataFileCreate.model_validate(item["file"]).model_dump())
                    for item in entry.payload["files"]]
    observatory.register_files(session, declarations, registered_at=entry.received_at)


def _create_package(session: Session, entry: Entry) -> None:
    body = RawDataPackageCreate.model_validate(entry.payload["package"])
    observatory.create_package(session, id=uuid.UUID(entry.payload["id"]), name=body.name,
                               executed_obs_unit_id=body.executed_obs_unit_id,
                               size_limit_bytes=int(entry.payload["size_limit_bytes"]))


def _request_staging(session: Session, entry: Entry) -> None:
    body = StagingCreate.model_validate(entry.payload["staging"])
    observatory.request_staging(session, id=uuid.UUID(entry.payload["id"]), destination=body.destination,
                                package_ids=body.raw_data_package_ids, file_ids=body.raw_data_file_ids,
                                requested_at=entry.received_at)


APPLIERS: dict[str, Applier] = {
    START_UNIT: _start_unit,
    FINISH_UNIT: _finish_unit,
    REGISTER_FILES: _register_files,
    CREATE_PACKAGE: _create_package,
    REQUEST_STAGING: _request_staging,
}

