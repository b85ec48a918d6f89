"""``/staging``: copies of raw data packages or files to a folder below the staging root, for transfer. A request
is a buffered critical write; the platform's ``staging_sensor`` runs a ``staging_job`` for it, whose progress the
status shows; DELETE cancels it (at once if it has not started, else between two chunks of its copy)."""

import uuid

from fastapi import APIRouter, Depends, Path, Request

from dagster_project.api.appliers import REQUEST_STAGING
from dagster_project.api.auth import Client, require
from dagster_project.api.critical import PlannedWrite, WriteContext, critical_operation, found, stored_record, \
    telescope_write, write_directly
from dagster_project.api.schemas import Buffered, StagingCreate, StagingRecord
from dagster_project.catalog.queries import observatory
from dagster_project.journal.store import Entity

router = APIRouter(prefix="/staging", tags=["staging"])


@router.post("/stage", status_code=202, response_model=Buffered, summary="Request a staging copy",
             description="Buffered; `ids.id` is the request's id. The files must have arrived and been verified by "
                         "the time its run starts, or the request fails saying which have not")
@critical_operation(REQUEST_STAGING)
def stage(request: Request, body: StagingCreate, write: WriteContext = Depends(telescope_write)):
    staging_id = str(write.new_id())
    return PlannedWrite(payload={"id": staging_id, "staging": body.model_dump(mode="json")},
                        entities=[Entity("StagingRequest", staging_id)], ids={"id": staging_id})


@router.get("/status/{id}", response_model=StagingRecord, summary="A staging request's status and progress")
def staging_status(request: Request, id: uuid.UUID = Path(), client: Client = Depends(require("read"))
                   ) -> StagingRecord:
    return found(request.app.state.smart.staging(id), f"staging request {id}")


@router.delete("/{id}", response_model=StagingRecord, summary="Cancel a staging request",
               description="At once if its run has not started (cancelled), else its run stops between two chunks "
                           "(cancel_requested, then cancelled); 409 once it has ended; 503 while the catalog is away")
def cancel(request: Request, id: uuid.UUID = Path(), client: Client = Depends(require("write"))) -> StagingRecord:
    stored_record(request.app.state.smart.staging(id), f"staging request {id}")
    write_directly(request, lambda session: observatory.cancel_staging(session, id), "cancel")
    return request.app.state.smart.staging(id)
