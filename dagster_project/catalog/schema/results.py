"""ObservationResult products: what was requested, what was observed for it, and what was built from it.

Adapted from the ObservationResult schema (``shared/seeds/observation-result-schema.txt``):

* an :class:`ObservationRequest` (target, band, exposure, epochs × samples × copies,
  cadence, window, priority) expands into leaf cells, one :class:`ObservationResult`
  per (epoch, sample, copy), each with a frozen ``spec_snapshot`` of the request;
* frames that arrive fulfil results; every attempt is an :class:`ObservationTask`;
* products are built by :class:`ObservationResultProcessingRun`\\ s whose outputs
  (:class:`ObservationResultProcessingRunOutput`) are the products themselves;
* ``assets_revision`` counts materializations of the per-observation assets that
  contribute to the result; ``last_built_revision`` says which one the products
  reflect (see ``docs/observation_results.md`` for the rebuild engine).

Keys follow the catalog's convention (UUID ``id``); ``uid`` is the result's public
identifier (Dagster partition key, scheduler header ``REQ_UID``), as in the seed.
"""

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dagster_project.catalog.schema.base import Base, StandardColumns, enum_type, ra_dec_checks
from dagster_project.catalog.schema.observations import Observation, Survey


class CopiesMode(enum.StrEnum):
    SINGLE = "single"  # one copy, any instrument
    ALL_ELIGIBLE = "all_eligible"  # one copy per active instrument that has the band
    COUNT = "count"  # copies_count copies, any instrument


class RequestStatus(enum.StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELED = "canceled"


class FulfillmentStatus(enum.StrEnum):
    PENDING_DISPATCH = "pending_dispatch"
    DISPATCHED = "dispatched"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    FULFILLED = "fulfilled"
    CANCELED = "canceled"


class DataProductStatus(enum.StrEnum):
    PENDING = "PENDING"
    BUILDING = "BUILDING"
    READY = "READY"
    BLOCKED = "BLOCKED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    STALE = "STALE"


class TaskState(enum.StrEnum):
    DISPATCHED = "dispatched"
    OBSERVED = "observed"  # a frame arrived for it
    SUCCEEDED = "succeeded"  # the frame was reduced: the result's deliverable exists
    FAILED = "failed"
    CANCELED = "canceled"


class ResultProcessingRunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    BLOCKED = "blocked"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"  # its Dagster run died; the result was re-queued


class Instrument(StandardColumns, Base):
    __tablename__ = "instruments"

    name: Mapped[str] = mapped_column(sa.String(64), unique=True)  # the INSTRUME header value
    telescope: Mapped[str | None] = mapped_column(sa.String(64))
    filter_bands: Mapped[list[Any]] = mapped_column(default=list)
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())

    def __repr__(self) -> str:
        return f"Instrument({self.name!r})"


class ObservationRequest(StandardColumns, Base):
    __tablename__ = "observation_requests"
    __table_args__ = (
        *ra_dec_checks(),
        sa.CheckConstraint("exposure_time > 0", name="exposure_time_positive"),
        sa.CheckConstraint("n_epochs >= 1", name="n_epochs_positive"),
        sa.CheckConstraint("samples_per_epoch >= 1", name="samples_positive"),
        sa.CheckConstraint("cadence_seconds >= 0", name="cadence_non_negative"),
        sa.CheckConstraint("match_radius_deg > 0 AND match_radius_deg <= 10", name="match_radius_range"),
        sa.CheckConstraint("(copies_mode = 'count' AND copies_count >= 1) OR "
                           "(copies_mode != 'count' AND copies_count IS NULL)", name="copies_count_matches_mode"),
        sa.CheckConstraint("window_end IS NULL OR window_start IS NULL OR window_end > window_start",
                           name="window_ordered"),
    )

    survey_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("surveys.id", ondelete="RESTRICT"), index=True)
    program: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    target_name: Mapped[str] = mapped_column(sa.String(128))
    ra: Mapped[float] = mapped_column(sa.Double)
    dec: Mapped[float] = mapped_column(sa.Double)
    filter_band: Mapped[str] = mapped_column(sa.String(32))
    exposure_time: Mapped[float] = mapped_column(sa.Double)
    n_epochs: Mapped[int]
    cadence_seconds: Mapped[float] = mapped_column(sa.Double)
    samples_per_epoch: Mapped[int]
    copies_mode: Mapped[CopiesMode] = mapped_column(enum_type(CopiesMode, "copies_mode"))
    copies_count: Mapped[int | None]
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    match_radius_deg: Mapped[float] = mapped_column(sa.Double, default=0.25, server_default=sa.text("0.25"))
    priority: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    status: Mapped[RequestStatus] = mapped_column(enum_type(RequestStatus, "request_status"),
                                                  default=RequestStatus.ACTIVE, index=True)

    survey: Mapped[Survey] = relationship()
    results: Mapped[list["ObservationResult"]] = relationship(back_populates="request")

    def __repr__(self) -> str:
        return f"ObservationRequest({self.name!r})"


class ObservationResult(StandardColumns, Base):
    """One leaf cell (request, epoch, sample, copy): its fulfillment and its products."""

    __tablename__ = "observation_results"
    __table_args__ = (
        sa.UniqueConstraint("request_id", "epoch_index", "sample_index", "copy_index"),
        sa.CheckConstraint("epoch_index >= 0 AND sample_index >= 0 AND copy_index >= 0", name="indices_non_negative"),
        sa.CheckConstraint("assets_revision >= 0", name="assets_revision_non_negative"),
        sa.CheckConstraint("last_built_revision IS NULL OR last_built_revision <= assets_revision",
                           name="built_revision_not_ahead"),
        sa.CheckConstraint("dirty_from_revision IS NULL OR dirty_from_revision <= assets_revision",
                           name="dirty_revision_not_ahead"),
        sa.CheckConstraint("(fulfillment_status = 'fulfilled') = (fulfilled_on IS NOT NULL)",
                           name="fulfilled_on_iff_fulfilled"),
        sa.CheckConstraint("build_attempts >= 0", name="build_attempts_non_negative"),
        sa.Index("ix_observation_results_rebuild_due", "data_product_status", "next_eligible_run_at"),
    )

    uid: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), unique=True, default=uuid.uuid4)
    observation_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("observations.id", ondelete="SET NULL"), index=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("observation_requests.id", ondelete="CASCADE"), index=True)
    epoch_index: Mapped[int]
    sample_index: Mapped[int]
    copy_index: Mapped[int]
    instrument_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("instruments.id", ondelete="RESTRICT"), index=True)
    copies_mode: Mapped[CopiesMode] = mapped_column(enum_type(CopiesMode, "copies_mode"))
    not_before: Mapped[datetime | None]
    spec_snapshot: Mapped[dict[str, Any] | None]
    fulfillment_status: Mapped[FulfillmentStatus] = mapped_column(
        enum_type(FulfillmentStatus, "fulfillment_status"), default=FulfillmentStatus.PENDING_DISPATCH, index=True)
    fulfilled_on: Mapped[datetime | None]
    fulfillment_note: Mapped[str | None] = mapped_column(sa.Text)
    data_product_status: Mapped[DataProductStatus] = mapped_column(
        enum_type(DataProductStatus, "data_product_status"), default=DataProductStatus.PENDING)
    status_reason: Mapped[str | None] = mapped_column(sa.Text)  # why BLOCKED / FAILED / SKIPPED
    assets_revision: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    dirty_from_revision: Mapped[int | None]
    dirty_since: Mapped[datetime | None]  # when it first became dirty: caps the debounce
    next_eligible_run_at: Mapped[datetime | None]
    last_built_revision: Mapped[int | None]
    build_attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))  # failures in a row
    current_processing_run_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("observation_result_processing_runs.id", ondelete="SET NULL", use_alter=True))

    observation: Mapped[Observation | None] = relationship()
    request: Mapped[ObservationRequest] = relationship(back_populates="results")
    instrument: Mapped[Instrument | None] = relationship()
    tasks: Mapped[list["ObservationTask"]] = relationship(back_populates="result", order_by="ObservationTask.created_at")
    result_processing_runs: Mapped[list["ObservationResultProcessingRun"]] = relationship(
        back_populates="result", foreign_keys="ObservationResultProcessingRun.result_id",
        order_by="ObservationResultProcessingRun.started_at")
    current_processing_run: Mapped["ObservationResultProcessingRun | None"] = relationship(
        foreign_keys=[current_processing_run_id], post_update=True)

    @property
    def cell(self) -> str:
        return f"e{self.epoch_index}/s{self.sample_index}/c{self.copy_index}"

    def __repr__(self) -> str:
        return f"ObservationResult({self.uid}, {self.cell})"


task_observations = sa.Table(
    "observation_task_observations",
    Base.metadata,
    sa.Column("task_id", sa.Uuid(), sa.ForeignKey("observation_tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("observation_id", sa.Uuid(), sa.ForeignKey("observations.id", ondelete="CASCADE"), primary_key=True,
              index=True),
)


class ObservationTask(StandardColumns, Base):
    """One execution attempt of a result: dispatched, then observed (a frame arrived), then succeeded or not."""

    __tablename__ = "observation_tasks"
    __table_args__ = (
        sa.CheckConstraint("finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at",
                           name="finished_after_started"),
    )

    result_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("observation_results.id", ondelete="CASCADE"),
                                                 index=True)
    instrument_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("instruments.id", ondelete="RESTRICT"), index=True)
    state: Mapped[TaskState] = mapped_column(enum_type(TaskState, "task_state"), default=TaskState.DISPATCHED,
                                             index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)

    result: Mapped[ObservationResult] = relationship(back_populates="tasks")
    instrument: Mapped[Instrument | None] = relationship()
    observations: Mapped[list[Observation]] = relationship(secondary=task_observations)


class ObservationResultProcessingRun(StandardColumns, Base):
    """One build of a result's products, from one ``assets_revision``."""

    __tablename__ = "observation_result_processing_runs"
    __table_args__ = (sa.CheckConstraint("built_from_revision >= 0", name="revision_non_negative"),)

    result_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("observation_results.id", ondelete="CASCADE"),
                                                 index=True)
    built_from_revision: Mapped[int]
    status: Mapped[ResultProcessingRunStatus] = mapped_column(
        enum_type(ResultProcessingRunStatus, "result_processing_status"), default=ResultProcessingRunStatus.RUNNING, index=True)
    dagster_run_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)

    result: Mapped[ObservationResult] = relationship(back_populates="result_processing_runs", foreign_keys=[result_id])
    outputs: Mapped[list["ObservationResultProcessingRunOutput"]] = relationship(
        back_populates="processing_run", cascade="all, delete-orphan", order_by="ObservationResultProcessingRunOutput.kind")


class ObservationResultProcessingRunOutput(StandardColumns, Base):
    """One product of a build: forced photometry, nearby candidates, cutouts, manifest."""

    __tablename__ = "observation_result_processing_run_outputs"
    __table_args__ = (
        sa.UniqueConstraint("processing_run_id", "kind"),
        sa.CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        sa.CheckConstraint("length(checksum) = 64", name="checksum_is_sha256"),
    )

    processing_run_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("observation_result_processing_runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    path: Mapped[str] = mapped_column(sa.String(1024))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    checksum: Mapped[str] = mapped_column(sa.String(64))
    product_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    processing_run: Mapped[ObservationResultProcessingRun] = relationship(back_populates="outputs")
