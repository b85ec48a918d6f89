"""``/raw_data_package``: files grouped for one executed unit. Creating one is a buffered critical write;
finalizing it (building → complete, only when every file has arrived and was verified) needs the catalog, and
says 503 while the catalog is away. A package holds at most ``ASTRO_PACKAGE_MAX_GB`` (50 GB) of declared files."""

import uuid

from fastapi import APIRouter, Depends, Path, Request

from dagster_project.api.appliers import CREATE_PACKAGE
from dagster_project.api.auth import Client, require
from dagster_project.api.critical import PlannedWrite, WriteContext, critical_operation, found, stored_record, \
    telescope_write, write_directly
from dagster_project.api.schemas import Buffered, RawDataPackageCreate, RawDataPackageRecord
from dagster_project.catalog.queries import observatory
from dagster_project.journal.store import Entity

router = APIRouter(prefix="/raw_data_package", tags=["raw_data_package"])


@router.post("/", status_code=202, response_model=Buffered, summary="Create a raw data package",
             description="Buffered; `ids.id` is the package's id. Files join it by naming it in their registration")
@critical_operation(CREATE_PACKAGE)
def create(request: Request, body: RawDataPackageCreate, write: WriteContext = Depends(telescope_write)):
    package_id = str(write.new_id())
    lookup = None if body.executed_obs_unit_id is None else f"unit:{body.executed_obs_unit_id}"
    return PlannedWrite(payload={"id": package_id, "package": body.model_dump(mode="json"),
                                 "size_limit_bytes": request.app.state.settings.package_max_bytes},
                        entities=[Entity("RawDataPackage", package_id, lookup=lookup)], ids={"id": package_id})


@router.get("/{id}", response_model=RawDataPackageRecord, summary="Get a raw data package with its files")
def get(request: Request, id: uuid.UUID = Path(), client: Client = Depends(require("read"))) -> RawDataPackageRecord:
    return found(request.app.state.smart.raw_data_package(id), f"raw data package {id}")


@router.put("/{id}/finalize", response_model=RawDataPackageRecord, summary="Mark a raw data package complete",
            description="building → complete when every file of the package has arrived and was verified; 409 "
                        "saying which files are not, or which writes of the package are still buffered; 503 while "
                        "the catalog is away")
def finalize(request: Request, id: uuid.UUID = Path(), client: Client = Depends(require("write"))
             ) -> RawDataPackageRecord:
    stored_record(request.app.state.smart.raw_data_package(id), f"raw data package {id}")
    write_directly(request, lambda session: observatory.finalize_package(session, id), "finalize")
    return request.app.state.smart.raw_data_package(id)
