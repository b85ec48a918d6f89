"""A throw-away platform for tests: folders, catalog, Dagster instance and resources."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance, SensorResult, build_sensor_context

from dagster_project.catalog import Catalog
from dagster_project.catalog.queries import RetryPolicy
from dagster_project.definitions import defs
from dagster_project.resources import PipelineConfigResource, resources_from_settings
from dagster_project.settings import Settings


@dataclass
class Platform:
    settings: Settings
    instance: DagsterInstance
    resources: dict
    catalog: Catalog

    @property
    def landing(self) -> Path:
        return self.settings.landing_dir

    def tick(self, sensor, cursor: str | None = None):
        """Evaluate ``sensor`` once; returns (result, new cursor)."""
        context = build_sensor_context(instance=self.instance, cursor=cursor, resources=self.resources, definitions=defs)
        result = sensor(context)
        return result, result.cursor if isinstance(result, SensorResult) and result.cursor else context.cursor

    def waiting(self, cursor: str | None) -> list[str]:
        return sorted(json.loads(cursor)["waiting"]) if cursor else []


def retry_policy(**changes) -> RetryPolicy:
    """The settings' default retry policy (``ASTRO_RETRY_*``) with ``changes``."""
    return dataclasses.replace(PipelineConfigResource().retry_policy(), **changes)


def make_settings(root: Path, database_url: str, **overrides) -> Settings:
    settings = Settings(
        home=root, landing_dir=root / "landing", store_dir=root / "store", quarantine_dir=root / "quarantine",
        database_url=database_url, dagster_home=root / "dagster", survey="test", instruments_file=None,
        sensor_interval_seconds=1, bookkeeping_interval_seconds=1, settle_seconds=0.0, truncated_after_seconds=30.0,
        max_file_bytes=512 * 2**20, max_hdus=16, detection_threshold=5.0,
        product_quiet_seconds=0.0, product_max_delay_seconds=60.0,
        # the tests of the pipeline's other stages were written for one-frame references (their figures, the
        # reference frame skipped); tests/e2e/test_coadd_references.py runs the default, co-added references
        reference_max_frames=1,
    )
    settings = Settings(**{**settings.__dict__, **overrides})
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    return settings


def make_platform(root: Path, database_url: str, instance: DagsterInstance, **overrides) -> Platform:
    settings = make_settings(root, database_url, **overrides)
    catalog = Catalog(database_url)
    catalog.migrate()
    return Platform(settings, instance, resources_from_settings(settings), catalog)
