"""``/executed_obs_units``: what the telescope actually did. Start and finish are buffered critical writes;
the read is a smart query (journal and catalog merged)."""

import uuid

from fastapi import APIRouter, Depends, Path, Request

from dagster_project.api.appliers import FINISH_UNIT, START_UNIT
from dagster_project.api.auth import Client, require
from dagster_project.api.critical import PlannedWrite, WriteContext, critical_operation, telescope_write
from dagster_project.api.schemas import Buffered, ExecutedObsUnitDetail, ExecutedObsUnitFinish, ExecutedObsUnitStart
from dagster_project.journal.store import Entity

router = APIRouter(prefix="/executed_obs_units", tags=["executed_obs_units"])


@router.post("/start", status_code=202, response_model=Buffered, summary="Start an executed observation unit",
             description="Buffered: the answer comes once the write is on disk in the journal; `ids.id` is the new "
                         "unit's id, usable at once")
@critical_operation(START_UNIT)
def start(request: Request, body: ExecutedObsUnitStart, write: WriteContext = Depends(telescope_write)):
    unit_id = str(write.new_id())
    return PlannedWrite(payload={"id": unit_id, "unit": body.model_dump(mode="json")},
                        entities=[Entity("ExecutedObsUnit", unit_id, lookup=str(body.obs_unit_id))],
                        ids={"id": unit_id})


@router.put("/{id}/finish", status_code=202, response_model=Buffered, summary="Finish an executed observation unit",
            description="Buffered; the unit must have been started (a finish of an unknown unit is dead-lettered "
                        "when it is replayed)")
@critical_operation(FINISH_UNIT)
def finish(request: Request, body: ExecutedObsUnitFinish, id: uuid.UUID = Path(description="the unit's id"),
           write: WriteContext = Depends(telescope_write)):
    return PlannedWrite(payload={"id": str(id), "finish": body.model_dump(mode="json")},
                        entities=[Entity("ExecutedObsUnit", str(id))], ids={"id": str(id)})


@router.get("/{obs_unit_id}", response_model=list[ExecutedObsUnitDetail],
            summary="Get executed observation units for an observation unit",
            description="Smart query: the catalog's records merged with writes still buffered in the journal")
def by_obs_unit(request: Request, obs_unit_id: int = Path(ge=0, le=2**62),
                client: Client = Depends(require("read"))) -> list[ExecutedObsUnitDetail]:
    return request.app.state.smart.executed_obs_units(obs_unit_id)
