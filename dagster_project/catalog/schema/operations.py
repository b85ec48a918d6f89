"""The schema of the operations domain: the operations ledger and processing provenance.

Models and enums only, so that :mod:`~dagster_project.catalog.states` (whose tables are keyed
on these classes) and the query modules can import them without importing each other:

* the ledger, :class:`OperationRun` and :class:`Operator` (who started it); recorded and read by
  :mod:`~dagster_project.catalog.operations`, whose docstring describes the fields;
* provenance, :class:`ProcessingRun` → ordered :class:`ProcessingStep` → :class:`Artifact` and
  :class:`StepInput`; recorded and read by :mod:`~dagster_project.catalog.provenance`.
"""

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dagster_project.catalog.schema.base import Base, StandardColumns, enum_type
from dagster_project.catalog.schema.observations import RawDataFile, Survey

__all__ = [
    "ACTIVE",
    "FINISHED",
    "Artifact",
    "OperationOutcome",
    "OperationRun",
    "OperationStatus",
    "OperationType",
    "Operator",
    "ProcessingRun",
    "ProcessingRunStatus",
    "ProcessingStep",
    "StepInput",
    "StepType",
]


# --- the operations ledger ------------------------------------------------------------------------------------------

class OperationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"


class OperationOutcome(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OperationType(enum.StrEnum):
    """The stable taxonomy of ``OperationRun.type`` (``<domain>.<action>``)."""

    INGEST_SCAN = "ingest.scan"  # a landing-folder scan that found files
    PROCESS_FOLDER = "process.folder"  # `python -m dagster_project process <folder>`
    BACKFILL_OBSERVATIONS = "backfill.observations"  # `python -m dagster_project backfill`
    BACKFILL_RESULTS = "backfill.results"  # a backfill of ObservationResult products
    REPROCESS_CAMPAIGN = "reprocess.campaign"  # re-running a stage over many observations
    REFERENCE_REBUILD = "reference.rebuild"  # new reference versions and the differences they invalidate
    PRODUCT_REBUILD_WAVE = "product.rebuild_wave"  # one wave of debounced product rebuilds
    STAGING_COPY = "staging.copy"  # a copy of raw files to a staging folder (POST /staging/stage)


ACTIVE = (OperationStatus.QUEUED, OperationStatus.RUNNING)

_ACTIVE_SQL = sa.text("status IN ('queued', 'running')")


class Operator(StandardColumns, Base):
    """Someone (a person, by login name) or something that starts operations."""

    __tablename__ = "operators"

    name: Mapped[str] = mapped_column(sa.String(128), unique=True)

    def __repr__(self) -> str:
        return f"Operator({self.name!r})"


class OperationRun(StandardColumns, Base):
    """The canonical record of one long-running operation (see the module docstring)."""

    __tablename__ = "operation_runs"
    __table_args__ = (
        sa.CheckConstraint("(status = 'completed') = (outcome != 'pending')", name="outcome_final_iff_completed"),
        sa.CheckConstraint("(status = 'completed') = (completed_at IS NOT NULL)", name="completed_at_iff_completed"),
        sa.CheckConstraint("(status = 'queued') = (started_at IS NULL)", name="started_at_unless_queued"),
        sa.CheckConstraint("completed_at IS NULL OR completed_at >= started_at", name="completed_after_started"),
        # Portable CHECKs cannot match patterns, so each dialect gets its own spelling.
        sa.CheckConstraint("run_identity_hash ~ '^[0-9a-f]{64}$'", name="run_identity_hash_hex").ddl_if(
            dialect="postgresql"),
        sa.CheckConstraint("length(run_identity_hash) = 64 AND run_identity_hash NOT GLOB '*[^0-9a-f]*'",
                           name="run_identity_hash_hex").ddl_if(dialect="sqlite"),
        sa.CheckConstraint("type ~ '^[a-z_]+(\\.[a-z_]+)+$'", name="type_taxonomy").ddl_if(dialect="postgresql"),
        sa.CheckConstraint("type GLOB '[a-z_]*.[a-z_]*' AND type NOT GLOB '*[^a-z_.]*' AND type NOT GLOB '*.' "
                           "AND type NOT GLOB '*..*'", name="type_taxonomy").ddl_if(dialect="sqlite"),
        # Idempotency: one active operation per identity and survey, however many starters race.
        sa.Index("uq_operation_runs_active_identity", "survey_id", "run_identity_hash", unique=True,
                 sqlite_where=_ACTIVE_SQL, postgresql_where=_ACTIVE_SQL),
        sa.Index("ix_operation_runs_survey_type_created", "survey_id", "type", "created_at"),
        sa.Index("ix_operation_runs_survey_created", "survey_id", "created_at"),
    )

    # BigInt as in the seed (and short enough to type: `operations show 42`); SQLite
    # only auto-increments a column declared exactly INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True, sort_order=-1)
    survey_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("surveys.id", ondelete="RESTRICT"))
    # The name snapshot outlives the operator row.
    operator_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("operators.id", ondelete="SET NULL"),
                                                          index=True)
    initiator_name: Mapped[str] = mapped_column(sa.String(128))
    type: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[OperationStatus] = mapped_column(enum_type(OperationStatus, "operation_status"),
                                                   default=OperationStatus.QUEUED,
                                                   server_default=OperationStatus.QUEUED.value)
    outcome: Mapped[OperationOutcome] = mapped_column(enum_type(OperationOutcome, "operation_outcome"),
                                                     default=OperationOutcome.PENDING,
                                                     server_default=OperationOutcome.PENDING.value)
    run_identity_hash: Mapped[str] = mapped_column(sa.String(64))
    summary_counts: Mapped[dict[str, Any] | None]
    failure_summary: Mapped[list[Any] | None]
    context: Mapped[dict[str, Any] | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    survey: Mapped[Survey] = relationship()
    operator: Mapped[Operator | None] = relationship()

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    def __repr__(self) -> str:
        return f"OperationRun(#{self.id} {self.type}, {self.status}/{self.outcome})"


# --- provenance -----------------------------------------------------------------------------------------------------

class ProcessingRunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepType(enum.StrEnum):
    RUN_START = "run_start"
    STEP_START = "step_start"
    MATERIALIZATION = "materialization"
    CHECK_RESULT = "check_result"
    STEP_SUCCESS = "step_success"
    FAILURE = "failure"
    RUN_END = "run_end"


FINISHED = (ProcessingRunStatus.COMPLETED, ProcessingRunStatus.FAILED, ProcessingRunStatus.CANCELLED)


def _sha256_checks(column: str) -> tuple[sa.CheckConstraint, sa.CheckConstraint]:
    """NULL or 64 lower-case hex digits (each dialect spells the pattern its own way)."""
    return (
        sa.CheckConstraint(f"{column} IS NULL OR {column} ~ '^[0-9a-f]{{64}}$'", name=f"{column}_hex").ddl_if(
            dialect="postgresql"),
        sa.CheckConstraint(f"{column} IS NULL OR (length({column}) = 64 AND {column} NOT GLOB '*[^0-9a-f]*')",
                           name=f"{column}_hex").ddl_if(dialect="sqlite"),
    )


class ProcessingRun(StandardColumns, Base):
    """One Dagster run, mirrored from the instance's run and event storage."""

    __tablename__ = "processing_runs"
    __table_args__ = (
        sa.CheckConstraint("finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at",
                           name="finished_after_started"),
        sa.CheckConstraint("status IN ('completed', 'failed', 'cancelled') OR finished_at IS NULL",
                           name="finished_at_only_when_finished"),
    )

    dagster_run_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    job_name: Mapped[str] = mapped_column(sa.String(128), index=True)
    partition_keys: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[ProcessingRunStatus] = mapped_column(enum_type(ProcessingRunStatus, "processing_run_status"),
                                                       index=True)
    run_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    operation_run_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("operation_runs.id", ondelete="SET NULL"), index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    operation: Mapped[OperationRun | None] = relationship()
    steps: Mapped[list["ProcessingStep"]] = relationship(
        back_populates="run", order_by="ProcessingStep.sequence", cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return f"ProcessingRun({self.dagster_run_id!r}, {self.job_name}, {self.status})"


class ProcessingStep(StandardColumns, Base):
    """One event of a run, in order; ``event_storage_id`` makes mirroring it twice impossible."""

    __tablename__ = "processing_steps"
    __table_args__ = (
        sa.UniqueConstraint("processing_run_id", "sequence"),
        sa.UniqueConstraint("processing_run_id", "event_storage_id"),
        sa.CheckConstraint("sequence >= 0", name="sequence_non_negative"),
        sa.CheckConstraint("latency_ms IS NULL OR latency_ms >= 0", name="latency_non_negative"),
    )

    processing_run_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("processing_runs.id", ondelete="CASCADE"))
    sequence: Mapped[int]
    type: Mapped[StepType] = mapped_column(enum_type(StepType, "processing_step_type"))
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timestamp: Mapped[datetime]
    latency_ms: Mapped[float | None] = mapped_column(sa.Double)
    event_storage_id: Mapped[int] = mapped_column(sa.BigInteger)

    run: Mapped[ProcessingRun] = relationship(back_populates="steps")
    artifacts: Mapped[list["Artifact"]] = relationship(
        back_populates="step", cascade="all, delete-orphan", passive_deletes=True, order_by="Artifact.role")
    inputs: Mapped[list["StepInput"]] = relationship(
        back_populates="step", cascade="all, delete-orphan", passive_deletes=True, order_by="StepInput.role",
        foreign_keys="StepInput.step_id")

    def __repr__(self) -> str:
        return f"ProcessingStep(#{self.sequence} {self.type})"


class Artifact(StandardColumns, Base):
    """A file a materialization wrote. ``size_bytes``/``sha256`` are NULL when the file had
    changed or vanished before it could be fingerprinted (so they never describe other bytes)."""

    __tablename__ = "artifacts"
    __table_args__ = (
        sa.CheckConstraint("size_bytes IS NULL OR size_bytes >= 0", name="size_non_negative"),
        *_sha256_checks("sha256"),
        sa.Index("ix_artifacts_asset_partition", "asset_key", "partition_key"),
    )

    step_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("processing_steps.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(sa.String(64))
    path: Mapped[str] = mapped_column(sa.String(1024), index=True)
    mime_type: Mapped[str] = mapped_column(sa.String(128))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    asset_key: Mapped[str] = mapped_column(sa.String(255))
    partition_key: Mapped[str | None] = mapped_column(sa.String(128))
    code_version: Mapped[str | None] = mapped_column(sa.String(64))

    step: Mapped[ProcessingStep] = relationship(back_populates="artifacts")

    def __repr__(self) -> str:
        return f"Artifact({self.role}, {self.path!r})"


class StepInput(StandardColumns, Base):
    """A file a materialization read, and what it was: an earlier artifact, a raw frame, or neither
    (e.g. a calibration master). The path stays when the linked row goes."""

    __tablename__ = "step_inputs"
    __table_args__ = (*_sha256_checks("sha256"),)

    step_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("processing_steps.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(sa.String(64))
    path: Mapped[str] = mapped_column(sa.String(1024))
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    input_artifact_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("artifacts.id", ondelete="SET NULL"), index=True)
    raw_data_file_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("raw_data_files.id", ondelete="SET NULL"), index=True)

    step: Mapped[ProcessingStep] = relationship(back_populates="inputs", foreign_keys=[step_id])
    input_artifact: Mapped[Artifact | None] = relationship()
    raw_data_file: Mapped[RawDataFile | None] = relationship()

    def __repr__(self) -> str:
        return f"StepInput({self.role}, {self.path!r})"
