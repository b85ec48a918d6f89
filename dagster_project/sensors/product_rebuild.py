"""Product rebuild sensor: dispatches due results, re-queues dead builds, launches debounced rebuilds.

One run per result and revision: the ``run_key`` names the result, its
``assets_revision`` and its failed-attempt count, so Dagster never launches the
same build twice, while a retry after a failure (with backoff) gets a new key.
"""

from dagster import DagsterInstance, DagsterRunStatus, RunRequest, RunsFilter, SensorEvaluationContext, SensorResult
from dagster import SkipReason

from dagster_project.catalog import queries
from dagster_project.catalog.schema import OperationType, utcnow
from dagster_project.operations.mirror import RUN_KEY_TAG
from dagster_project.operations.recording import OPERATION_TAG, start_wave
from dagster_project.pipeline.jobs import PRODUCTS_JOB, REDO_LANE
from dagster_project.pipeline.partitions import results_partitions
from dagster_project.resources import CatalogResource, LandingResource, PipelineConfigResource
from dagster_project.sensors.builder import sensor_builder

__all__ = ["build_product_rebuild_sensor", "evaluate_product_rebuild", "rebuild_run_key", "run_is_alive"]

_ALIVE = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
          DagsterRunStatus.STARTED, DagsterRunStatus.MANAGED, DagsterRunStatus.CANCELING}


def run_is_alive(instance: DagsterInstance, run_id: str | None) -> bool:
    run = instance.get_run_by_id(run_id) if run_id else None
    return run is not None and run.status in _ALIVE


def rebuild_run_key(result) -> str:
    return f"products:{result.uid}:r{result.assets_revision}:a{result.build_attempts}"


def _launched_and_ended(instance: DagsterInstance, run_key: str) -> bool:
    """A run with this key exists and ended: it died before it could claim the build."""
    runs = instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return bool(runs) and runs[0].status not in _ALIVE


def evaluate_product_rebuild(context: SensorEvaluationContext, catalog: CatalogResource,
                             pipeline: PipelineConfigResource, landing: LandingResource):
    policy, now = pipeline.rebuild_policy(), utcnow()
    with catalog.catalog().session() as session:
        dispatched = queries.dispatch_due(session, now)
        requeued = queries.requeue_abandoned(
            session, lambda run_id: run_is_alive(context.instance, run_id), now, policy)
        requests = []
        for result in queries.due_for_rebuild(session, now, policy):
            key = rebuild_run_key(result)
            if _launched_and_ended(context.instance, key):
                queries.note_lost_attempt(session, result, now, policy)
                continue
            # products are built from what the frames' own runs made: background work, behind prompt runs
            requests.append(RunRequest(run_key=key, partition_key=str(result.uid),
                                       tags={"astro/revision": str(result.assets_revision), **REDO_LANE}))
        keys = {str(r.uid) for r in queries.results_with_frames(session)}
    new_keys = sorted(keys - set(context.instance.get_dynamic_partitions(results_partitions.name)))
    if not requests and not new_keys:
        return SkipReason(f"no rebuild due ({dispatched} dispatched, {len(requeued)} re-queued)")
    if requests:  # the ledger: one product.rebuild_wave operation per tick that launches rebuilds
        wave = start_wave(catalog.catalog(), landing.survey, OperationType.PRODUCT_REBUILD_WAVE,
                          [r.run_key for r in requests], context={"sensor": "product_rebuild_sensor"})
        requests = [r.with_replaced_attrs(tags={**r.tags, OPERATION_TAG: str(wave)}) for r in requests]
    return SensorResult(run_requests=requests,
                        dynamic_partitions_requests=[results_partitions.build_add_request(new_keys)])


build_product_rebuild_sensor = sensor_builder(
    evaluate_product_rebuild, name="product_rebuild_sensor", jobs=[PRODUCTS_JOB], bookkeeping=True,
    description="Rebuilds ObservationResult products whose assets_revision moved past last_built_revision, "
    "once the debounce has passed; re-queues builds whose run died.",
)
