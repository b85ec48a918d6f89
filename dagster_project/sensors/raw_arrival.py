"""Raw-arrival sensor: the landing folder → catalog → observation partitions → calibration runs.

Prompt processing: a frame whose field and band already has a reference goes through its whole
chain (calibration, difference, candidates) in ONE run of ``observation_job``, requested here;
only the first frames of a field, which wait for its reference, are calibrated alone and left to
the reference-and-difference sensor. One run instead of two saves a run worker's start (the code
location's imports) and a sensor tick (see benchmarks/latency.py).
"""

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason

from dagster_project.catalog.queries import PlannedRun, current_references, observations_awaiting_calibration
from dagster_project.ingest.landing import decode_seen, encode_seen, printable, scan_landing, summarize
from dagster_project.keys import field_band_key, field_band_of
from dagster_project.operations.recording import OPERATION_TAG, record_ingest_scan
from dagster_project.pipeline.jobs import CALIBRATE_JOB, OBSERVATION_JOB, PROMPT_LANE
from dagster_project.pipeline.partitions import field_band_partitions, observations_partitions
from dagster_project.resources import CatalogResource, LandingResource, PipelineConfigResource
from dagster_project.sensors.builder import sensor_builder
from dagster_project.sensors.reference_and_difference import attempt_tags, schedule_attempts

__all__ = ["MAX_FILES_PER_TICK", "build_raw_arrival_sensor", "evaluate_raw_arrival", "promptly"]

#: files taken per tick, so that a tick stays well inside the sensor time-out (Dagster's gRPC sensor time-out,
#: DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS, 60 s by default). Measured (benchmarks/scale.py partitions, docs/scaling.md):
#: about 17 ms per small (64 px) frame with 100,000 partitions registered, so 1,000 files in about 17 s; frames of
#: 2048 px cost more per file (sha256 twice, checksums over the data), see docs/scaling.md before raising it
MAX_FILES_PER_TICK = 1000


def promptly(planned: Sequence[PlannedRun], field_bands_with_reference: set[str]) -> list[PlannedRun]:
    """The calibrations of frames whose field and band has a reference, as runs of the whole chain."""
    return [replace(p, job_name=OBSERVATION_JOB, reason=f"{p.reason}; its field has a reference: whole chain")
            if field_band_of(p.partition_key) in field_bands_with_reference else p for p in planned]


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
        planned = promptly(observations_awaiting_calibration(session),
                           {field_band_key(r.field_name, r.filter_band) for r in current_references(session)})
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
        run_requests=[RunRequest(run_key=p.run_key, partition_key=p.partition_key, job_name=p.job_name,
                                 tags={**tags, **PROMPT_LANE, **attempt_tags(due, p)}) for p in due.requests],
        dynamic_partitions_requests=[
            observations_partitions.build_add_request(new_keys),
            field_band_partitions.build_add_request(new_fields),
        ],
        cursor=new_cursor,
    )


build_raw_arrival_sensor = sensor_builder(
    evaluate_raw_arrival, name="raw_arrival_sensor", jobs=[CALIBRATE_JOB, OBSERVATION_JOB],
    description="Validates new FITS files in the landing folder, registers them, adds one partition per "
    "observation and requests its calibration (again, with backoff, when a run failed or died): the whole "
    "chain in one run (observation_job) when its field already has a reference. Bad files are quarantined "
    "with a reason.",
)
