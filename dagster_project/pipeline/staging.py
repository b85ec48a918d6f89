"""The staging job: one run per staging request of the operations API (launched by ``staging_sensor``), which
copies the request's files to its folder below the staging root with its progress in the run's log and the
request's row (``staging.copy`` in the operations ledger)."""

import uuid
from pathlib import Path

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op

from dagster_project.catalog.queries.observatory import WriteRefused
from dagster_project.catalog.schema import StagingStatus
from dagster_project.staging import stage

__all__ = ["STAGING_JOB", "StagingConfig", "stage_files", "staging_job"]

STAGING_JOB = "staging_job"


class StagingConfig(Config):
    #: the StagingRequest's id
    staging_id: str


@op(required_resource_keys={"catalog", "landing", "staging"},
    description="Copy a staging request's files from the raw archive to its destination below the staging root.")
def stage_files(context: OpExecutionContext, config: StagingConfig) -> None:
    resources = context.resources
    last_logged = [-1]

    def progress(files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> None:
        if files_done != last_logged[0]:  # a line per file, not per chunk
            last_logged[0] = files_done
            context.log.info(f"staged {files_done}/{files_total} files, {bytes_done / 2**20:.1f} of "
                             f"{bytes_total / 2**20:.1f} MiB")

    try:
        outcome = stage(resources.catalog.catalog(), uuid.UUID(config.staging_id), Path(resources.staging.root),
                        context.run_id, resources.landing.survey, on_progress=progress)
    except WriteRefused as exc:  # cancelled before its run began, or staged by another run
        context.log.info(f"nothing to stage: {exc}")
        return
    metadata = {"staging_id": config.staging_id, "status": outcome.status.value,
                "files": f"{outcome.files_done}/{outcome.files_total}",
                "MiB": round(outcome.bytes_done / 2**20, 1), "operation_id": outcome.operation_id,
                "reason": MetadataValue.text(outcome.reason or "")}
    if outcome.status is StagingStatus.FAILED:
        raise Failure(description=f"staging {config.staging_id} failed: {outcome.reason}", metadata=metadata)
    context.log.info(f"staging {config.staging_id} {outcome.status.value}: {metadata['files']} files")


@job(name=STAGING_JOB, description="Stage one request's files (POST /staging/stage of the operations API).")
def staging_job() -> None:
    stage_files()
