"""Raw-arrival sensor: the landing folder → catalog → observation partitions → calibration runs.

Prompt processing: a frame whose field and band already has a reference goes through its whole
chain (calibration, difference, candidates) in ONE run of ``observation_job``, requested here;
only the first frames of a field, which wait for its reference, are calibrated alone and left to
the reference-and-difference sensor. One run instead of two saves a run worker's start (the code
location's imports) and a sensor tick (see benchmarks/latency.py). Several such frames found by one
tick share runs (:func:`batched`): at most ``ASTRO_PROMPT_RUNS`` of them, each over a range of
consecutive new partitions, so a burst pays a few run starts, not one per frame.
"""

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason

from dagster_project.catalog.queries import PlannedRun, current_references, observations_awaiting_calibration
from dagster_project.ingest.landing import decode_seen, encode_seen, printable, scan_landing, summarize
from dagster_project.keys import field_band_key, field_band_of
from dagster_project.operations.mirror import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster_project.operations.recording import OPERATION_TAG, record_ingest_scan
from dagster_project.pipeline.jobs import CALIBRATE_JOB, OBSERVATION_JOB, PROMPT_LANE
from dagster_project.pipeline.partitions import field_band_partitions, observations_partitions
from dagster_project.resources import CatalogResource, LandingResource, PipelineConfigResource
from dagster_project.sensors.builder import sensor_builder
from dagster_project.sensors.reference_and_difference import attempt_tags, schedule_attempts

__all__ = ["LINGER_SECONDS", "MAX_FILES_PER_TICK", "batched", "build_raw_arrival_sensor", "evaluate_raw_arrival",
           "promptly"]

#: files taken per tick, so that a tick stays well inside the sensor time-out (Dagster's gRPC sensor time-out,
#: DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS, 60 s by default). Measured (benchmarks/scale.py partitions, docs/scaling.md):
#: about 17 ms per small (64 px) frame with 100,000 partitions registered, so 1,000 files in about 17 s; frames of
#: 2048 px cost more per file (sha256 twice, checksums over the data), see docs/scaling.md before raising it
MAX_FILES_PER_TICK = 1000


#: a file that landed just before a tick (less than ASTRO_SETTLE_SECONDS ago) is taken by that tick once it has
#: settled, if that is at most this many seconds away, rather than by the next tick, a sensor interval later
#: (a fifth of single frames waited those 5 s more: benchmarks/latency.py)
LINGER_SECONDS = 2.0


def promptly(planned: Sequence[PlannedRun], field_bands_with_reference: set[str]) -> list[PlannedRun]:
    """The calibrations of frames whose field and band has a reference, as runs of the whole chain."""
    return [replace(p, job_name=OBSERVATION_JOB, reason=f"{p.reason}; its field has a reference: whole chain")
            if field_band_of(p.partition_key) in field_bands_with_reference else p for p in planned]


def batched(requests: Sequence[PlannedRun], new_keys: Sequence[str], runs: int) -> list[list[PlannedRun]]:
    """The requests as groups, each one run: new frames of the whole chain next to each other among the tick's
    new partitions (a partition range holds every key between its ends) in at most ``runs`` groups per stretch;
    every other request alone."""
    chained = {p.partition_key: p for p in requests if p.job_name == OBSERVATION_JOB and p.partition_key in new_keys}
    groups: list[list[PlannedRun]] = [[p] for p in requests if p.partition_key not in chained]
    stretch: list[PlannedRun] = []
    for key in [*new_keys, None]:  # None ends the last stretch
        if key in chained:
            stretch.append(chained[key])
            continue
        size = -(-len(stretch) // max(runs, 1))
        groups += [stretch[i:i + size] for i in range(0, len(stretch), size)] if stretch else []
        stretch = []
    return groups


def _run_request(context: SensorEvaluationContext, group: list[PlannedRun], tags: dict[str, str]) -> RunRequest:
    first, last = group[0], group[-1]
    if len(group) == 1:
        return RunRequest(run_key=first.run_key, partition_key=first.partition_key, job_name=first.job_name, tags=tags)
    # a run over a range gets no config of the job's own (Dagster resolves it for a partition key only): without
    # it, its steps would run one process each, not as the job says (ASTRO_EXECUTOR)
    job = context.repository_def.get_job(OBSERVATION_JOB) if context.repository_def is not None else None
    return RunRequest(run_key=f"prompt:{first.partition_key}..{last.partition_key}:{len(group)}",
                      job_name=OBSERVATION_JOB, run_config=job.get_run_config_for_partition_key(first.partition_key)
                      if job is not None else {},
                      tags={**tags, ASSET_PARTITION_RANGE_START_TAG: first.partition_key,
                            ASSET_PARTITION_RANGE_END_TAG: last.partition_key})


def evaluate_raw_arrival(context: SensorEvaluationContext, catalog: CatalogResource, landing: LandingResource,
                         pipeline: PipelineConfigResource):
    # The cursor only remembers files still being written; what was taken is known by the
    # catalog (sha256) and by the file having left the landing folder, so a restart loses nothing.
    cursor = json.loads(context.cursor) if context.cursor else {}
    started_at = datetime.now(UTC)
    scan = scan_landing(
        landing.config(), catalog.catalog(), landing.registry(), decode_seen(cursor.get("waiting")),
        settle_seconds=landing.settle_seconds, truncated_after=landing.truncated_after_seconds,
        max_files=MAX_FILES_PER_TICK, linger_seconds=LINGER_SECONDS,
    )
    for outcome in scan.outcomes:
        if outcome.status in ("quarantined", "duplicate"):
            context.log.warning(f"{printable(outcome.path)}: {outcome.status}: {printable(outcome.reason or '')}")
    for note in scan.notes:
        context.log.warning(note)
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
    groups = batched(due.requests, new_keys, pipeline.prompt_runs)
    return SensorResult(
        run_requests=[_run_request(context, group, {**tags, **PROMPT_LANE, **attempt_tags(due, group[0])})
                      for group in groups],
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
