"""What the platform's sensors share: each is made at definition time, from the settings.

A sensor module writes its evaluation (a function of the tick's context and of the resources it
names as parameters, as for Dagster's ``@sensor``) and turns it into a builder::

    build_raw_arrival_sensor = sensor_builder(evaluate_raw_arrival, name="raw_arrival_sensor",
                                              jobs=[calibrate_job], description="...")

``definitions.py`` reads the settings once and calls each builder with them: every sensor is on
by default and ticks every ``ASTRO_SENSOR_INTERVAL`` seconds. Nothing is read at import.
"""

from collections.abc import Callable, Sequence
from typing import Any

from dagster import DefaultSensorStatus, SensorDefinition, sensor

from dagster_project.settings import Settings

__all__ = ["SensorBuilder", "sensor_builder"]

#: makes a sensor from the settings
SensorBuilder = Callable[[Settings], SensorDefinition]


def sensor_builder(evaluate: Callable[..., Any], *, name: str, description: str,
                   jobs: Sequence[Any] = ()) -> SensorBuilder:
    """A builder of the sensor ``name``: ``evaluate`` at every tick, requesting runs of ``jobs`` (none: it only
    observes)."""
    def build(settings: Settings) -> SensorDefinition:
        return sensor(name=name, jobs=list(jobs) or None, minimum_interval_seconds=settings.sensor_interval_seconds,
                      default_status=DefaultSensorStatus.RUNNING, description=description)(evaluate)

    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = f"The {name}, made from the settings (its tick interval: ASTRO_SENSOR_INTERVAL)."
    return build
