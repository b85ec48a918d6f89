"""What the operations API takes and gives (pydantic v2): every field bounded, so a bad request is a 422
naming the field, never a 500 or a row the catalog refuses later."""

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from dagster_project.ingest.names import FITS_SUFFIXES

#: one component of a landed file's name: what the store keeps unchanged (store.safe_path_component's set)
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
#: the largest raw file a telescope may declare (1 TiB): far above any frame, well inside BIGINT
MAX_FILE_BYTES = 2**40
#: files in one bulk registration
MAX_BULK_FILES = 10_000


def _relative_path(value: str, below: str) -> str:
    """A path relative to ``below`` made of plain components (no ``..``, no hidden or absolute parts)."""
    if any(not _COMPONENT.fullmatch(part) or part.endswith(".") for part in value.split("/")):
        raise ValueError(f"must be a path relative to {below} made of letters, digits and _ . + - "
                         "(no empty, hidden, '..' or absolute parts)")
    return value


def _staging_folder(value: str) -> str:
    return _relative_path(value, "the staging folder")


def _landing_name(value: str) -> str:
    """A file's name as the landing scan will know it: its path relative to the landing folder, ending in a FITS
    suffix."""
    _relative_path(value, "the landing folder")
    if not value.lower().endswith(FITS_SUFFIXES):
        raise ValueError(f"must end in one of {', '.join(FITS_SUFFIXES)}")
    return value


def _utc(value: datetime) -> datetime:
    """The time in UTC, between the years 1900 and 2200 (a time of an observatory, which a database stores)."""
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not 1900 <= value.year <= 2200:
        raise ValueError("must lie between the years 1900 and 2200")
    return value


LandingName = Annotated[str, Field(min_length=6, max_length=255), AfterValidator(_landing_name)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="64 lower-case hex digits")]
Time = Annotated[AwareDatetime, AfterValidator(_utc), Field(description="ISO 8601 with a time zone")]
ShortText = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
Metadata = Annotated[dict[str, Any], Field(max_length=200, description="free-form JSON object (at most 200 keys)")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


# --- requests --------------------------------------------------------------------------------------------------------

class ExecutedObsUnitStart(Strict):
    obs_unit_id: int = Field(ge=0, le=2**62, description="the observation unit of the observing plan")
    instrument: ShortText
    telescope: ShortText | None = None
    operator: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = None
    start_time: Time
    obs_metadata: Metadata = Field(default_factory=dict)


class ExecutedObsUnitFinish(Strict):
    status: Literal["succeeded", "failed", "aborted"]
    end_time: Time
    reason: Annotated[str, Field(max_length=2000)] | None = None


class RawDataFileCreate(Strict):
    name: LandingName = Field(description="the file's path relative to the landing folder, as it will land")
    size_bytes: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: Sha256
    executed_obs_unit_id: uuid.UUID | None = None
    raw_data_package_id: uuid.UUID | None = None


class RawDataFileBulk(Strict):
    files: list[RawDataFileCreate] = Field(min_length=1, max_length=MAX_BULK_FILES)


class RawDataPackageCreate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
    executed_obs_unit_id: uuid.UUID | None = None


class StagingCreate(Strict):
    destination: Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_staging_folder)] = Field(
        description="a folder below the staging root (ASTRO_STAGING_DIR) to copy into")
    raw_data_package_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)
    raw_data_file_ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_BULK_FILES)

    @model_validator(mode="after")
    def _something_to_stage(self) -> "StagingCreate":
        if not self.raw_data_package_ids and not self.raw_data_file_ids:
            raise ValueError("give raw_data_package_ids or raw_data_file_ids (or both)")
        return self


class TokenCreate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    scopes: list[Literal["telescope", "reader", "admin"]] = Field(min_length=1, max_length=3)


# --- answers ---------------------------------------------------------------------------------------------------------

class Buffered(BaseModel):
    """A critical write accepted: on disk in the journal, to be applied to the catalog by the replayer."""

    status: Literal["buffered"] = "buffered"
    write_id: uuid.UUID
    idempotency_key: str
    #: the ids the write gives what it creates (the same on every retry with the same key)
    ids: dict[str, Any]
    #: False when this was a retry of a write already in the journal
    new: bool


class ExecutedObsUnitRecord(BaseModel):
    id: uuid.UUID
    obs_unit_id: int
    instrument: str
    telescope: str | None
    operator: str | None
    start_time: datetime
    end_time: datetime | None
    status: str
    status_reason: str | None
    obs_metadata: dict[str, Any]
    #: True while a write of it waits in the journal (what is shown includes it)
    buffered: bool


class ExecutedObsUnitDetail(ExecutedObsUnitRecord):
    raw_data_packages: list[uuid.UUID]
    raw_data_files: list[uuid.UUID]
    #: the observations (partition keys) made of the unit's files that have landed
    observations: list[str]


class RawDataFileRecord(BaseModel):
    id: uuid.UUID
    name: str
    size_bytes: int
    sha256: str
    status: str
    status_reason: str | None
    executed_obs_unit_id: uuid.UUID | None
    raw_data_package_id: uuid.UUID | None
    registered_at: datetime
    arrived_at: datetime | None
    #: the landed file's own record (accepted, quarantined, duplicate...) once it has landed
    raw_data_file_id: uuid.UUID | None
    raw_file_status: str | None
    observation_id: str | None
    buffered: bool


class RawDataPackageRecord(BaseModel):
    id: uuid.UUID
    name: str
    executed_obs_unit_id: uuid.UUID | None
    status: str
    size_limit_bytes: int
    declared_bytes: int
    finalized_at: datetime | None
    files: list[RawDataFileRecord]
    buffered: bool


class StagingRecord(BaseModel):
    id: uuid.UUID
    destination: str
    raw_data_package_ids: list[uuid.UUID]
    raw_data_file_ids: list[uuid.UUID]
    status: str
    status_reason: str | None
    cancel_requested: bool
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    dagster_run_id: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    buffered: bool


class TokenCreated(BaseModel):
    name: str
    scopes: list[str]
    #: shown once, never stored: the service keeps only its sha256
    token: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    catalog_reachable: bool
    journal: dict[str, int]
