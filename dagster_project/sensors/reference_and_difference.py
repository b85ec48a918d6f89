"""Reference-and-difference sensor: builds references when a field has calibrated frames, then differences.

Dagster cannot map an observation partition to its field's reference partition,
so the catalog decides (see ``catalog/queries/planning.py``); each request's
``run_key`` names the reference version, so a new reference re-runs exactly the
differences that used an older one, and nothing runs twice.

Work a run left unfinished (it failed, or died before its catalog attempt began or
ended) is asked for again by :func:`schedule_attempts`, which both sensors use: under a
new run key carrying the attempt number, once the backoff of the
:class:`~dagster_project.catalog.queries.RetryPolicy` has passed, at most
``max_attempts`` times. Attempts are counted from Dagster's own runs (by run key), so
a restart, a lost cursor or the headless runner all see the same count.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from dagster import DagsterInstance, RunRecord, RunRequest, RunsFilter, SensorEvaluationContext
from dagster import SensorResult, SkipReason

from dagster_project.catalog.queries import (
    PlannedRun,
    RetryPolicy,
    field_bands_awaiting_reference,
    observations_awaiting_difference,
)
from dagster_project.catalog.schema import OperationType
from dagster_project.operations.mirror import FINISHED_STATUSES, NOT_FINISHED_STATUSES, RUN_KEY_TAG, run_partition_keys
from dagster_project.operations.recording import OPERATION_TAG, start_wave
from dagster_project.pipeline.jobs import DIFFERENCE_JOB, LANE_TAG, PROMPT_LANE, REDO_LANE, REFERENCE_JOB
from dagster_project.pipeline.partitions import field_band_partitions
from dagster_project.references.policy import rebuilds_due
from dagster_project.resources import CatalogResource, LandingResource, PipelineConfigResource
from dagster_project.sensors.builder import sensor_builder

__all__ = ["ATTEMPT_TAG", "PARTITION_TAG", "Attempts", "attempt_tags", "build_reference_and_difference_sensor",
           "evaluate_reference_and_difference", "partitions_under_way", "schedule_attempts"]

#: run tag: which attempt at its work a run is (0: the first)
ATTEMPT_TAG = "astro/attempt"
#: Dagster's tag naming a run's partition
PARTITION_TAG = "dagster/partition"
#: run keys looked up per query
_KEYS_PER_QUERY = 500


@dataclass
class Attempts:
    """What the sensor asks for now (``requests``, each under its attempt's key), and what it does not."""

    requests: list[PlannedRun] = field(default_factory=list)
    attempt: dict[str, int] = field(default_factory=dict)  # request run key -> attempt number
    waiting: dict[str, float] = field(default_factory=dict)  # base key -> seconds until its next attempt is due
    in_flight: list[str] = field(default_factory=list)  # base keys with a run under way
    given_up: list[str] = field(default_factory=list)  # base keys that had max_attempts attempts

    def summary(self) -> str:
        parts = [f"{len(self.in_flight)} under way"] if self.in_flight else []
        if self.waiting:
            parts.append(f"{len(self.waiting)} to retry (next in {min(self.waiting.values()):.0f} s)")
        if self.given_up:
            parts.append(f"{len(self.given_up)} given up after their last attempt failed "
                         "(`backfill --status unfinished` runs them again)")
        return "; ".join(parts) or "none waiting or under way"


def _end_time(record: RunRecord) -> float:
    return record.end_time if record.end_time is not None else record.update_timestamp.timestamp()


def _records_by_key(instance: DagsterInstance, keys: Sequence[str]) -> dict[str, list[RunRecord]]:
    found: dict[str, list[RunRecord]] = {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        for record in instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: list(keys[start:start + _KEYS_PER_QUERY])})):
            found.setdefault(record.dagster_run.tags[RUN_KEY_TAG], []).append(record)
    return found


def _records_by_id(instance: DagsterInstance, run_ids: Iterable[str]) -> dict[str, RunRecord]:
    run_ids = sorted(set(run_ids))
    found: dict[str, RunRecord] = {}
    for start in range(0, len(run_ids), _KEYS_PER_QUERY):
        for record in instance.get_run_records(RunsFilter(run_ids=run_ids[start:start + _KEYS_PER_QUERY])):
            found[record.dagster_run.run_id] = record
    return found


def schedule_attempts(instance: DagsterInstance, planned: Sequence[PlannedRun], policy: RetryPolicy,
                      now: float | None = None) -> Attempts:
    """Decide, for each piece of planned work, whether to ask for an attempt now.

    Its attempts are the Dagster runs under its keys (``policy.attempt_key``), plus the run of
    the catalog's last attempt when another run made it (e.g. a backfill). Work with a run
    under way is left alone: a run under one of its keys or of its catalog attempt, or any run
    covering its partition (a reference being built, whose next key would count more frames; a
    frame's whole chain, alone or with the frames that landed with it, calibrated before it is
    differenced in the same run). Work never attempted is asked for at once; otherwise its next
    attempt is asked for once the backoff after the latest end has passed, unless it had
    ``max_attempts`` already.
    """
    now = datetime.now(UTC).timestamp() if now is None else now
    busy = partitions_under_way(instance) if planned else set()
    keys = {p.run_key: [policy.attempt_key(p.run_key, n) for n in range(policy.max_attempts)] for p in planned}
    by_key = _records_by_key(instance, [key for ks in keys.values() for key in ks])
    by_id = _records_by_id(instance, (p.attempt_run_id for p in planned if p.attempt_run_id))
    result = Attempts()
    for work in planned:
        numbered = [(n, record) for n, key in enumerate(keys[work.run_key]) for record in by_key.get(key, [])]
        runs = {record.dagster_run.run_id: record for _, record in numbered}
        own = by_id.get(work.attempt_run_id) if work.attempt_run_id else None
        if own is not None:
            runs.setdefault(own.dagster_run.run_id, own)
        if work.partition_key in busy or any(record.dagster_run.status not in FINISHED_STATUSES
                                             for record in runs.values()):
            result.in_flight.append(work.run_key)
            continue
        ends = [_end_time(record) for record in runs.values()]
        if work.failed_at is not None and own is None:  # failed under a run this instance does not know
            ends.append(work.failed_at.timestamp())
        if not ends:
            next_attempt = 0
        elif len(ends) >= policy.max_attempts:
            result.given_up.append(work.run_key)
            continue
        else:
            due = max(ends) + policy.delay_before(len(ends))
            if now < due:
                result.waiting[work.run_key] = due - now
                continue
            next_attempt = max((n + 1 for n, _ in numbered), default=0)
        request = replace(work, run_key=policy.attempt_key(work.run_key, next_attempt))
        result.requests.append(request)
        result.attempt[request.run_key] = next_attempt
    return result


def partitions_under_way(instance: DagsterInstance) -> set[str]:
    """The partitions of every run not ended yet, whatever its job or key: a run's partition, or each of its
    range's (the raw-arrival sensor's runs of several frames, backfill batches)."""
    runs = instance.get_runs(RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
    return {key for run in runs for key in run_partition_keys(instance, run.tags)}


def prompt_work_under_way(instance: DagsterInstance) -> bool:
    """Whether a run of the prompt lane (a frame's first processing) is queued or running: remaking what
    exists waits until none is, so that a burst of frames never shares the cores with reprocessing."""
    return bool(instance.get_run_records(
        RunsFilter(tags={LANE_TAG: PROMPT_LANE[LANE_TAG]}, statuses=list(NOT_FINISHED_STATUSES)), limit=1))


def attempt_tags(attempts: Attempts, work: PlannedRun) -> dict[str, str]:
    return {ATTEMPT_TAG: str(attempts.attempt[work.run_key])}


def evaluate_reference_and_difference(context: SensorEvaluationContext, catalog: CatalogResource,
                                      landing: LandingResource, pipeline: PipelineConfigResource):
    with catalog.catalog().session() as session:
        # fields without a reference, and those whose co-add frames it does not hold would deepen enough
        references = field_bands_awaiting_reference(session) + rebuilds_due(session, pipeline.reference_policy())
        differences = observations_awaiting_difference(session)
    if not references and not differences:
        return SkipReason("every calibrated observation has an up-to-date difference")
    known = set(context.instance.get_dynamic_partitions(field_band_partitions.name))
    new_fields = sorted({p.partition_key for p in references} - known)
    if any(p.redo for p in references + differences) and prompt_work_under_way(context.instance):
        references, differences = [p for p in references if not p.redo], [p for p in differences if not p.redo]
    attempts = schedule_attempts(context.instance, references + differences, pipeline.retry_policy())
    if attempts.given_up:
        context.log.warning(f"not retried any more: {', '.join(attempts.given_up[:20])}")
    partitions = [field_band_partitions.build_add_request(new_fields)] if new_fields else []
    if not attempts.requests:
        if partitions:
            return SensorResult(dynamic_partitions_requests=partitions)
        return SkipReason(attempts.summary())
    # the ledger: one reprocessing wave per set of run keys (asking again returns the same one)
    wave = start_wave(catalog.catalog(), landing.survey, OperationType.REPROCESS_CAMPAIGN,
                      [p.run_key for p in attempts.requests], context={"sensor": "reference_and_difference_sensor"})
    return SensorResult(
        run_requests=[
            RunRequest(run_key=p.run_key, partition_key=p.partition_key, job_name=p.job_name,
                       tags={"astro/reason": p.reason, OPERATION_TAG: str(wave), **(REDO_LANE if p.redo else PROMPT_LANE),
                             **attempt_tags(attempts, p)})
            for p in attempts.requests
        ],
        dynamic_partitions_requests=partitions,
    )


build_reference_and_difference_sensor = sensor_builder(
    evaluate_reference_and_difference, name="reference_and_difference_sensor", jobs=[REFERENCE_JOB, DIFFERENCE_JOB],
    description="Requests reference images for fields that have calibrated frames but no reference (or whose "
    "co-added reference frames it does not hold would make deeper by ASTRO_REFERENCE_REBUILD_GAIN), and "
    "difference runs for calibrated observations whose field has a (newer) reference; retries failed "
    "or interrupted ones with backoff.",
)
