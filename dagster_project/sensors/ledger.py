"""The ledger sensor: mirrors Dagster runs into the operations ledger and provenance.

What a tick does is the library's (``operations/mirror.py``): read the run-status events after
the cursor, mirror those runs, bring every active operation up to date.
"""

from dagster import SensorEvaluationContext, SkipReason

from dagster_project.catalog import queries
from dagster_project.operations.mirror import EVENTS_PER_TICK, mirror_run, run_status_changes, sync_operation
from dagster_project.resources import CatalogResource, StoreResource
from dagster_project.sensors.builder import sensor_builder


def evaluate_ledger(context: SensorEvaluationContext, catalog: CatalogResource, store: StoreResource):
    cursor = int(context.cursor) if context.cursor else None
    changes, new_cursor = run_status_changes(context.instance, cursor, EVENTS_PER_TICK)
    run_ids = list(dict.fromkeys(r.event_log_entry.run_id for r in changes))
    for run_id in run_ids:
        try:
            mirror_run(context.instance, catalog.catalog(), store.store().root, run_id)
        except Exception:  # one unreadable run must not stop the ledger: it is logged, the rest goes on
            context.log.exception(f"could not mirror Dagster run {run_id}")
    with catalog.catalog().session() as session:
        active = [operation.id for operation in queries.active_operations(session)]
    completed = sum(not sync_operation(context.instance, catalog.catalog(), op_id).operation.is_active
                    for op_id in active)
    if new_cursor is not None:
        context.update_cursor(str(new_cursor))
    return SkipReason(f"mirrored {len(run_ids)} run(s); {len(active)} active operation(s), {completed} completed now")


build_ledger_sensor = sensor_builder(
    evaluate_ledger, name="operations_ledger_sensor", bookkeeping=True,
    description="Mirrors every run's steps, materializations and files into the catalog's provenance tables, "
    "and keeps the operations ledger true when runs finish, fail, are canceled or their process dies.",
)
