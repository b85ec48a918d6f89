"""``/raw_data_files``: files a telescope wrote, registered before they land. When a registered file lands in
the landing folder, the landing scan verifies its size and sha256 against the registration: one RawDataFile,
accepted, or quarantined with the mismatch as its reason. A registration still waiting after
``ASTRO_MISSING_AFTER`` seconds shows as missing."""

import uuid

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.exceptions import RequestValidationError

from dagster_project.api.appliers import REGISTER_FILES
from dagster_project.api.auth import Client, require
from dagster_project.api.critical import PlannedWrite, WriteContext, critical_operation, found, telescope_write
from dagster_project.api.schemas import Buffered, RawDataFileBulk, RawDataFileCreate, RawDataFileRecord
from dagster_project.journal.store import Entity

router = APIRouter(prefix="/raw_data_files", tags=["raw_data_files"])


def _entities(file_id: str, file: RawDataFileCreate) -> list[Entity]:
    entities = [Entity("RawDataFile", file_id, lookup=f"name:{file.name}")]
    if file.executed_obs_unit_id is not None:
        entities.append(Entity("RawDataFile", file_id, lookup=f"unit:{file.executed_obs_unit_id}"))
    if file.raw_data_package_id is not None:
        entities.append(Entity("RawDataFile", file_id, lookup=f"package:{file.raw_data_package_id}"))
    return entities


def plan_registration(request: Request, files: list[RawDataFileCreate], write: WriteContext) -> PlannedWrite:
    """The write registering ``files``, after the checks that can be made now: names not given twice nor already
    waiting, packages known to be building and within their size limit (422 naming the field otherwise)."""
    names = [f.name for f in files]
    repeated = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if repeated:
        _refuse("files", f"a name is given twice: {', '.join(repeated[:10])}")
    waiting = request.app.state.smart.names_waiting(names)
    if waiting and write.key_is_new(request.app.state.journal):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"already registered and waiting to land: {', '.join(sorted(waiting)[:10])}")
    _check_packages(request, files)
    items, entities, ids = [], [], []
    for file in files:
        file_id = str(write.new_id())
        items.append({"id": file_id, "file": file.model_dump(mode="json")})
        entities.extend(_entities(file_id, file))
        ids.append(file_id)
    return PlannedWrite(payload={"files": items}, entities=entities, ids={"ids": ids})


def _check_packages(request: Request, files: list[RawDataFileCreate]) -> None:
    added: dict[uuid.UUID, int] = {}
    for file in files:
        if file.raw_data_package_id is not None:
            added[file.raw_data_package_id] = added.get(file.raw_data_package_id, 0) + file.size_bytes
    for package_id, size in added.items():
        package = request.app.state.smart.raw_data_package(package_id)
        if package is None:
            if request.app.state.gate.reachable:
                _refuse("raw_data_package_id", f"no raw data package {package_id}")
            continue  # the catalog is away: the replay will check it (and dead-letter the write if it fails)
        if package.status != "building":
            _refuse("raw_data_package_id", f"raw data package {package_id} is {package.status}: it takes no more files")
        if package.declared_bytes + size > package.size_limit_bytes:
            _refuse("size_bytes", f"raw data package {package_id} would hold {package.declared_bytes + size} bytes, "
                                  f"over its limit of {package.size_limit_bytes} bytes (ASTRO_PACKAGE_MAX_GB)")


def _refuse(field: str, message: str) -> None:
    """A 422 naming ``field``, in the form of every other validation error of the API."""
    raise RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


@router.post("/", status_code=202, response_model=Buffered, summary="Register a file",
             description="Buffered; `ids.ids[0]` is the file's id")
@critical_operation(REGISTER_FILES)
def register(request: Request, body: RawDataFileCreate, write: WriteContext = Depends(telescope_write)):
    return plan_registration(request, [body], write)


@router.post("/bulk", status_code=202, response_model=Buffered, summary="Register many files",
             description="Buffered, all or none; `ids.ids` are the files' ids in the order given")
@critical_operation(REGISTER_FILES)
def register_bulk(request: Request, body: RawDataFileBulk, write: WriteContext = Depends(telescope_write)):
    return plan_registration(request, body.files, write)


@router.get("/{id}", response_model=RawDataFileRecord, summary="Get a registered file",
            description="Smart query: its registration, buffered or stored, and what became of it when it landed")
def get(request: Request, id: uuid.UUID = Path(), client: Client = Depends(require("read"))) -> RawDataFileRecord:
    return found(request.app.state.smart.raw_data_file(id), f"raw data file {id}")
