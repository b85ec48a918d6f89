"""Staging sensor: a run of ``staging_job`` for each staging request the operations API has recorded (its
``run_key`` is the request's id, so a request is never staged twice)."""

from dagster import RunRequest, SensorEvaluationContext, SkipReason

from dagster_project.catalog.queries import observatory
from dagster_project.pipeline.jobs import REDO_LANE
from dagster_project.pipeline.staging import STAGING_JOB
from dagster_project.resources import CatalogResource
from dagster_project.sensors.builder import sensor_builder

__all__ = ["build_staging_sensor", "evaluate_staging", "staging_run_key"]


def staging_run_key(staging_id) -> str:
    return f"staging:{staging_id}"


def evaluate_staging(context: SensorEvaluationContext, catalog: CatalogResource):
    with catalog.catalog().session() as session:
        requested = observatory.stagings_requested(session)
    if not requested:
        return SkipReason("no staging requested")
    # copies are background work: behind the frames' prompt runs
    return [RunRequest(run_key=staging_run_key(staging_id), tags={"astro/staging_id": str(staging_id), **REDO_LANE},
                       run_config={"ops": {"stage_files": {"config": {"staging_id": str(staging_id)}}}})
            for staging_id in requested]


build_staging_sensor = sensor_builder(
    evaluate_staging, name="staging_sensor", jobs=[STAGING_JOB], bookkeeping=True,
    description="Launches a staging_job run for each staging request of the operations API.",
)
