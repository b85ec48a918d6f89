"""Processing provenance: each Dagster run, its ordered steps, and every file it wrote or read.

Adapted from the observability model (``shared/seeds/observability-data-model.md``):
Run → ordered Steps → Artifacts, with the agent vocabulary mapped onto the pipeline's:

* :class:`ProcessingRun` is the seed's Run: one Dagster run (``agent_id`` → ``job_name``,
  ``task_input`` → ``run_config``, ``metadata`` → the run's tags), with its partitions,
  status (pending, running, completed, failed, cancelled) and times, and the operation
  (``operation_runs``) it belongs to.
* :class:`ProcessingStep` is a Step: the run's events in order (``sequence`` 0, 1, 2, ...):
  run start, step start, materialization, asset-check result, step success, failure, run end;
  ``content`` is the event's data, ``latency_ms`` how long it took.
* :class:`Artifact` is a file a materialization wrote (its ``artifact_<role>`` metadata):
  role, path relative to the store root, media type, size, sha256, asset, partition and
  code version. :class:`StepInput` links a step to the files it read (``input_<role>``)
  and, where known, to the artifact or raw file each one was, so that "which inputs produced
  this file" and "everything derived from this raw file" are queries.

The tables are in :mod:`~dagster_project.catalog.models_operations`; this module records and reads them.
Rows are written by the ledger sensor and the CLI (``dagster_project/sensors/ledger.py``)
from plain records (:class:`StepRecord`), so this module knows nothing about Dagster.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from dagster_project.catalog import states
from dagster_project.catalog.queries import observations as observation_queries
from dagster_project.catalog.schema.observations import DifferenceRun, PreprocessRun, RawDataFile, RunStatus
from dagster_project.catalog.schema.operations import (
    Artifact,
    ProcessingRun,
    ProcessingRunStatus,
    ProcessingStep,
    StepInput,
    StepType,
)


# --- records handed in by the Dagster side ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ArtifactRecord:
    role: str
    path: str  # relative to the store root (absolute when outside it)
    mime_type: str
    size_bytes: int | None
    sha256: str | None
    asset_key: str
    partition_key: str | None
    code_version: str | None


@dataclass(frozen=True)
class InputRecord:
    role: str
    path: str
    sha256: str | None


@dataclass(frozen=True)
class StepRecord:
    event_storage_id: int
    type: StepType
    timestamp: datetime
    content: dict[str, Any]
    latency_ms: float | None = None
    artifacts: tuple[ArtifactRecord, ...] = ()
    inputs: tuple[InputRecord, ...] = ()


# --- writing --------------------------------------------------------------------------------------------------------

def mirrored_up_to(session: Session, dagster_run_id: str) -> int:
    """The last event storage id of this run already mirrored (-1: none)."""
    last = session.scalar(sa.select(sa.func.max(ProcessingStep.event_storage_id))
                          .join(ProcessingRun).where(ProcessingRun.dagster_run_id == dagster_run_id))
    return -1 if last is None else last


def record_processing_run(session: Session, *, dagster_run_id: str, job_name: str, status: ProcessingRunStatus,
                          partition_keys: Sequence[str] = (), run_config: dict | None = None,
                          run_metadata: dict | None = None, operation_run_id: int | None = None,
                          started_at: datetime | None = None, finished_at: datetime | None = None) -> ProcessingRun:
    """Create or update the mirror of a Dagster run (locked for the rest of the transaction)."""
    run = session.scalar(sa.select(ProcessingRun).where(ProcessingRun.dagster_run_id == dagster_run_id)
                         .with_for_update())
    if run is None:
        try:
            with session.begin_nested():  # the CLI (`runs tail`) and the sensor may both mirror it
                run = ProcessingRun(dagster_run_id=dagster_run_id, job_name=job_name, status=status,
                                    partition_keys=list(partition_keys), run_config=run_config or {},
                                    run_metadata=run_metadata or {}, operation_run_id=operation_run_id)
                session.add(run)
        except IntegrityError:
            run = session.scalars(sa.select(ProcessingRun).where(ProcessingRun.dagster_run_id == dagster_run_id)
                                  .with_for_update()).one()
    if run.status != status:
        states.transition(run, status)
    run.started_at, run.finished_at = started_at, finished_at
    session.flush()
    return run


def append_steps(session: Session, run: ProcessingRun, steps: Iterable[StepRecord]) -> list[ProcessingStep]:
    """Add the steps not mirrored yet (by event storage id), numbered on from the last one."""
    last_event = mirrored_up_to(session, run.dagster_run_id)
    sequence = session.scalar(sa.select(sa.func.count()).where(ProcessingStep.processing_run_id == run.id))
    added = []
    for record in sorted(steps, key=lambda s: s.event_storage_id):
        if record.event_storage_id <= last_event:
            continue
        inputs = [_input(session, i, record.timestamp) for i in record.inputs]
        step = ProcessingStep(run=run, sequence=sequence, type=record.type, content=record.content,
                              timestamp=record.timestamp, latency_ms=record.latency_ms,
                              event_storage_id=record.event_storage_id,
                              artifacts=[Artifact(**vars(a)) for a in record.artifacts], inputs=inputs)
        session.add(step)
        session.flush()  # the next step's inputs may be this step's artifacts
        added.append(step)
        sequence += 1
    return added


def _input(session: Session, record: InputRecord, used_at: datetime) -> StepInput:
    raw = observation_queries.find_raw_file_by_sha256(session, record.sha256) if record.sha256 else None
    return StepInput(role=record.role, path=record.path, sha256=record.sha256, raw_data_file=raw,
                     input_artifact=None if raw else producing_artifact(session, record.path, record.sha256, used_at))


def abandon_running_attempts(session: Session, dagster_run_id: str, reason: str) -> int:
    """Close the calibration and difference attempts a dead Dagster run left running (as failed,
    so the observation shows failed and a backfill of failed observations picks it up)."""
    abandoned = 0
    for model, finish in ((PreprocessRun, observation_queries.finish_preprocess_run),
                          (DifferenceRun, observation_queries.finish_difference_run)):
        for attempt in session.scalars(sa.select(model).where(model.dagster_run_id == dagster_run_id,
                                                              model.status == RunStatus.RUNNING)).all():
            finish(session, attempt, status=RunStatus.FAILED, error_message=reason)
            abandoned += 1
    return abandoned


# --- reading --------------------------------------------------------------------------------------------------------

def get_processing_run(session: Session, dagster_run_id: str) -> ProcessingRun:
    run = session.scalar(sa.select(ProcessingRun).where(ProcessingRun.dagster_run_id == dagster_run_id))
    if run is None:
        raise observation_queries.NotFound(f"no processing run for Dagster run {dagster_run_id!r}")
    return run


def steps_after(session: Session, dagster_run_id: str, sequence: int = -1) -> list[ProcessingStep]:
    """The run's steps numbered after ``sequence``, in order, with their artifacts."""
    return list(session.scalars(
        sa.select(ProcessingStep).join(ProcessingRun)
        .where(ProcessingRun.dagster_run_id == dagster_run_id, ProcessingStep.sequence > sequence)
        .options(selectinload(ProcessingStep.artifacts)).order_by(ProcessingStep.sequence)))


def runs_of_operation(session: Session, operation_run_id: int) -> list[ProcessingRun]:
    return list(session.scalars(sa.select(ProcessingRun).where(ProcessingRun.operation_run_id == operation_run_id)
                                .order_by(ProcessingRun.started_at, ProcessingRun.dagster_run_id)))


def get_artifact(session: Session, artifact_id: uuid.UUID | str) -> Artifact:
    artifact = session.get(Artifact, uuid.UUID(str(artifact_id)))
    if artifact is None:
        raise observation_queries.NotFound(f"no artifact {artifact_id}")
    return artifact


def raw_file_stored_at(session: Session, stored_path: str) -> RawDataFile | None:
    """The raw file archived at ``stored_path`` (absolute, as registered), if any."""
    return session.scalar(sa.select(RawDataFile).where(RawDataFile.stored_path == stored_path)
                          .order_by(RawDataFile.version.desc()).limit(1))


def producing_artifact(session: Session, path: str, sha256: str | None = None,
                       at: datetime | None = None) -> Artifact | None:
    """The newest artifact row for ``path``: with these bytes if ``sha256`` is known, else written by ``at``."""
    stmt = (sa.select(Artifact).join(ProcessingStep).where(Artifact.path == path)
            .order_by(ProcessingStep.timestamp.desc()).limit(1))
    if sha256 is not None:
        stmt = stmt.where(Artifact.sha256 == sha256)
    elif at is not None:
        stmt = stmt.where(ProcessingStep.timestamp <= at)
    return session.scalar(stmt)


@dataclass
class Lineage:
    """Where a file came from: the artifact row, its step and run, the inputs, and the parameters used."""

    artifact: Artifact
    step: ProcessingStep
    run: ProcessingRun
    inputs: list[StepInput]
    parameters: dict[str, Any] = field(default_factory=dict)


def lineage(session: Session, artifact: Artifact) -> Lineage:
    """Which run, step and inputs produced ``artifact``, and with which parameters.

    Parameters: the materialization's own figures plus, when this run is still the
    observation's current calibration or difference attempt, that attempt's parameters.
    """
    step = artifact.step
    parameters: dict[str, Any] = {"metadata": step.content.get("metadata", {})}
    for name, model in (("calibration", PreprocessRun), ("difference", DifferenceRun)):
        attempt = session.scalar(sa.select(model).where(model.dagster_run_id == step.run.dagster_run_id))
        if attempt is not None:
            parameters[name] = attempt.parameters
    return Lineage(artifact, step, step.run, list(step.inputs), parameters)


def derived_artifacts(session: Session, source: RawDataFile | Artifact) -> list[Artifact]:
    """Every artifact made from ``source``, directly or through other artifacts, oldest first.

    Walks the input links level by level: a reference made from a frame leads on to the
    differences of other frames against it, and those to their candidates.
    """
    found: dict[uuid.UUID, Artifact] = {}
    link = (StepInput.raw_data_file_id == source.id if isinstance(source, RawDataFile)
            else StepInput.input_artifact_id == source.id)
    while True:
        consumers = sa.select(StepInput.step_id).where(link)
        new = {a.id: a for a in session.scalars(sa.select(Artifact).where(Artifact.step_id.in_(consumers)))
               if a.id not in found}
        if not new:
            return sorted(found.values(), key=lambda a: (a.step.timestamp, a.role))
        found.update(new)
        link = StepInput.input_artifact_id.in_(list(new))
