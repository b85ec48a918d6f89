"""The sensors, each made at definition time from the settings (:func:`build_sensors`).

``raw_arrival`` (the landing folder), ``reference_and_difference``, ``product_rebuild``, ``ledger``
(the operations ledger and provenance) and ``staging`` (the operations API's staging requests); ``builder`` holds what they share.
"""

from collections.abc import Mapping
from typing import Any

from dagster import SensorDefinition

from dagster_project.sensors.builder import SensorBuilder, sensor_builder
from dagster_project.sensors.ledger import build_ledger_sensor
from dagster_project.sensors.product_rebuild import build_product_rebuild_sensor
from dagster_project.sensors.raw_arrival import build_raw_arrival_sensor
from dagster_project.sensors.reference_and_difference import build_reference_and_difference_sensor
from dagster_project.sensors.staging import build_staging_sensor
from dagster_project.settings import Settings

__all__ = ["SENSOR_BUILDERS", "SensorBuilder", "build_sensors", "sensor_builder"]

#: the builders of the code location's sensors, each called with the settings and the jobs
SENSOR_BUILDERS: tuple[SensorBuilder, ...] = (
    build_raw_arrival_sensor,
    build_reference_and_difference_sensor,
    build_product_rebuild_sensor,
    build_ledger_sensor,
    build_staging_sensor,
)


def build_sensors(settings: Settings, jobs: Mapping[str, Any]) -> list[SensorDefinition]:
    """Every sensor of the code location, made from ``settings``, requesting runs of ``jobs`` (by name)."""
    return [build(settings, jobs) for build in SENSOR_BUILDERS]
