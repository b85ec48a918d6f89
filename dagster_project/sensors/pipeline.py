"""Pipeline sensor: builds references when a field has calibrated frames, then differences.

Dagster cannot map an observation partition to its field's reference partition,
so the catalog decides (see ``catalog/pipeline_queries.py``); each request's
``run_key`` names the reference version, so a new reference re-runs exactly the
differences that used an older one, and nothing runs twice.
"""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from dagster_project.assets.partitions import field_band_partitions
from dagster_project.catalog.pipeline_queries import (
    field_bands_awaiting_reference,
    observations_awaiting_difference,
)
from dagster_project.jobs import difference_job, reference_job
from dagster_project.catalog.operations import OperationType
from dagster_project.operations import OPERATION_TAG, start_wave
from dagster_project.resources import CatalogResource, LandingResource
from dagster_project.settings import Settings


def build_pipeline_sensor(interval_seconds: int):
    @sensor(
        name="reference_and_difference_sensor",
        jobs=[reference_job, difference_job],
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests reference images for fields that have calibrated frames but no reference, and "
        "difference runs for calibrated observations whose field has a (newer) reference.",
    )
    def reference_and_difference_sensor(context: SensorEvaluationContext, catalog: CatalogResource,
                                        landing: LandingResource):
        with catalog.catalog().session() as session:
            references = field_bands_awaiting_reference(session)
            differences = observations_awaiting_difference(session)
        if not references and not differences:
            return SkipReason("every calibrated observation has an up-to-date difference")
        known = set(context.instance.get_dynamic_partitions(field_band_partitions.name))
        new_fields = sorted({p.partition_key for p in references} - known)
        planned = references + differences
        # the ledger: one reprocessing wave per tick that asks for runs (re-asking returns the same one)
        wave = start_wave(catalog.catalog(), landing.survey, OperationType.REPROCESS_CAMPAIGN,
                          [p.run_key for p in planned], context={"sensor": "reference_and_difference_sensor"})
        return SensorResult(
            run_requests=[
                RunRequest(run_key=p.run_key, partition_key=p.partition_key, job_name=p.job_name,
                           tags={"astro/reason": p.reason, OPERATION_TAG: str(wave)})
                for p in planned
            ],
            dynamic_partitions_requests=[field_band_partitions.build_add_request(new_fields)] if new_fields else [],
        )

    return reference_and_difference_sensor


reference_and_difference_sensor = build_pipeline_sensor(Settings.from_env().sensor_interval_seconds)
