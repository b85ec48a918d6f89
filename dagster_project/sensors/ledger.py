"""The ledger sensor: mirrors Dagster runs into the operations ledger and provenance.

What a tick does is the library's (``operations/mirror.py``): read the run-status events after
the cursor, mirror those runs, bring every active operation up to date.
"""

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from dagster_project.catalog import queries
from dagster_project.operations.mirror import EVENTS_PER_TICK, mirror_run, run_status_changes, sync_operation
from dagster_project.resources import CatalogResource, StoreResource
from dagster_project.settings import Settings

# Still imported from here by modules this move did not edit (the other sensors, tests/e2e, benchmarks);
# their home is operations/mirror.py: import them from there, then drop this line.
from dagster_project.operations.mirror import FINISHED_STATUSES, RUN_KEY_TAG, run_partition_keys  # noqa: F401


def build_ledger_sensor(interval_seconds: int) -> SensorDefinition:
    """The ledger sensor, evaluated at most every ``interval_seconds``."""

    @sensor(
        name="operations_ledger_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Mirrors every run's steps, materializations and files into the catalog's provenance tables, "
        "and keeps the operations ledger true when runs finish, fail, are canceled or their process dies.",
    )
    def operations_ledger_sensor(context: SensorEvaluationContext, catalog: CatalogResource, store: StoreResource):
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
        return SkipReason(f"mirrored {len(run_ids)} run(s); {len(active)} active operation(s), "
                          f"{completed} completed now")

    return operations_ledger_sensor


def __getattr__(name: str) -> SensorDefinition:
    """``operations_ledger_sensor``, for a ``definitions.py`` that still imports it: built from the
    environment's settings when first asked for, not at import. Drop this once nothing imports it
    (``build_ledger_sensor`` is the way)."""
    if name == "operations_ledger_sensor":
        return build_ledger_sensor(Settings.from_env().sensor_interval_seconds)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
