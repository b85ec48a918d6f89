"""Raw-arrival sensor: the landing folder → catalog → observation partitions → calibration runs."""

import json
from datetime import UTC, datetime

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason

from dagster_project.catalog.queries import observations_awaiting_calibration
from dagster_project.ingest.landing import decode_seen, encode_seen, printable, scan_landing, summarize
from dagster_project.keys import field_band_of
from dagster_project.operations.recording import OPERATION_TAG, record_ingest_scan
from dagster_project.pipeline.jobs import calibrate_job
from dagster_project.pipeline.partitions import field_band_partitions, observations_partitions
from dagster_project.resources import CatalogResource, LandingResource, PipelineConfigResource
from dagster_project.sensors.builder import sensor_builder
from dagster_project.sensors.reference_and_difference import attempt_tags, schedule_attempts

__all__ = ["MAX_FILES_PER_TICK", "build_raw_arrival_sensor", "evaluate_raw_arrival"]

#: files taken per tick, so that a tick stays well inside the sensor time-out
MAX_FILES_PER_TICK = 200


def evaluate_raw_arrival(context: SensorEvaluationContext, catalog: CatalogResource, landing: LandingResource,
                         pipeline: PipelineConfigResource):
    # The cursor only remembers files still being written; what was taken is known by the
    # catalog (sha256) and by the file having left the landing folder, so a restart loses nothing.
    cursor = json.loads(context.cursor) if context.cursor else {}
    started_at = datetime.now(UTC)
    scan = scan_landing(
        landing.config(), catalog.catalog(), landing.registry(), decode_seen(cursor.get("waiting")),
        settle_seconds=landing.settle_seconds, truncated_after=landing.truncated_after_seconds,
        max_files=MAX_FILES_PER_TICK,
    )
    for outcome in scan.outcomes:
        if outcome.status in ("quarantined", "duplicate"):
            context.log.warning(f"{printable(outcome.path)}: {outcome.status}: {printable(outcome.reason or '')}")
    for error in scan.errors:
        context.log.error(f"left in the landing folder for the next scan: {error}")
    with catalog.catalog().session() as session:
        planned = observations_awaiting_calibration(session)
    known = set(context.instance.get_dynamic_partitions(observations_partitions.name))
    known_fields = set(context.instance.get_dynamic_partitions(field_band_partitions.name))
    new_keys = [p.partition_key for p in planned if p.partition_key not in known]
    new_fields = sorted({field_band_of(p.partition_key) for p in planned} - known_fields)
    new_cursor = json.dumps({"waiting": encode_seen(scan.waiting)})
    # never attempted: at once; failed or died: again under a new run key, after the backoff
    due = schedule_attempts(context.instance, planned, pipeline.retry_policy())
    if not due.requests and not scan.outcomes and not new_keys and not new_fields:
        context.update_cursor(new_cursor)
        return SkipReason(f"nothing new; {len(scan.waiting)} file(s) still being written; calibrations: "
                          f"{due.summary()}")
    context.log.info(f"landing scan: {summarize(scan.outcomes)}; {len(due.requests)} observation(s) to calibrate"
                     f" ({due.summary()})")
    tags = {}
    if scan.outcomes:  # the ledger: one ingest.scan operation per scan that found files
        tags[OPERATION_TAG] = str(record_ingest_scan(
            catalog.catalog(), landing.survey, scan.outcomes, started_at=started_at,
            requested=[{"run_key": p.run_key, "partition_key": p.partition_key} for p in due.requests]))
    return SensorResult(
        run_requests=[RunRequest(run_key=p.run_key, partition_key=p.partition_key,
                                 tags={**tags, **attempt_tags(due, p)}) for p in due.requests],
        dynamic_partitions_requests=[
            observations_partitions.build_add_request(new_keys),
            field_band_partitions.build_add_request(new_fields),
        ],
        cursor=new_cursor,
    )


build_raw_arrival_sensor = sensor_builder(
    evaluate_raw_arrival, name="raw_arrival_sensor", jobs=[calibrate_job],
    description="Validates new FITS files in the landing folder, registers them, adds one partition per "
    "observation and requests its calibration (again, with backoff, when a run failed or died). Bad files "
    "are quarantined with a reason.",
)
