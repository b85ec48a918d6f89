"""The Dagster code location: each asset package under its group, the jobs, the sensors and the resources.

The settings are read here, once (``Settings.from_env``): the backfill batch (``ASTRO_BACKFILL_BATCH``),
the jobs' executor (``ASTRO_EXECUTOR``, also that of asset backfills), the sensors' tick interval and the
resources come from them.
"""

from dagster import Definitions, load_assets_from_package_module

from dagster_project.assets import detection, observations, products, references
from dagster_project.pipeline import batched_backfill, build_jobs, execution
from dagster_project.resources import resources_from_settings
from dagster_project.sensors import build_sensors
from dagster_project.settings import Settings

__all__ = ["defs", "settings"]

settings = Settings.from_env()
#: backfills give each run up to ASTRO_BACKFILL_BATCH partitions (pipeline/batching.py); references one each
batched = batched_backfill(settings.backfill_batch_size)
jobs = build_jobs(settings)

defs = Definitions(
    assets=[
        *load_assets_from_package_module(observations, group_name="calibration", backfill_policy=batched),
        *load_assets_from_package_module(references, group_name="references"),
        *load_assets_from_package_module(detection, group_name="detection", backfill_policy=batched),
        *load_assets_from_package_module(products, group_name="products", backfill_policy=batched),
    ],
    jobs=list(jobs.values()),
    sensors=build_sensors(settings, jobs),
    resources=resources_from_settings(settings),
    # the executor of what no job names: asset backfills, and materializations launched from the UI
    executor=execution(settings).executor_def,
)
