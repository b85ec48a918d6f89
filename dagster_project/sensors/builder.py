"""What the platform's sensors share: each is made at definition time, from the settings.

A sensor module writes its evaluation (a function of the tick's context and of the resources it
names as parameters, as for Dagster's ``@sensor``) and turns it into a builder::

    build_raw_arrival_sensor = sensor_builder(evaluate_raw_arrival, name="raw_arrival_sensor",
                                              jobs=[CALIBRATE_JOB, OBSERVATION_JOB], description="...")

``definitions.py`` reads the settings once, builds the jobs from them (``pipeline.build_jobs``) and
calls each builder with both: every sensor is on by default and ticks every ``ASTRO_SENSOR_INTERVAL``
seconds (a ``bookkeeping`` one, whose work waits for runs or a debounce rather than for a frame, every
``ASTRO_BOOKKEEPING_INTERVAL``), requesting runs of the jobs it names. Nothing is read at import.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dagster import DefaultSensorStatus, SensorDefinition, sensor

from dagster_project.settings import Settings

__all__ = ["SensorBuilder", "sensor_builder"]

#: makes a sensor from the settings and the code location's jobs (by name)
SensorBuilder = Callable[[Settings, Mapping[str, Any]], SensorDefinition]


def sensor_builder(evaluate: Callable[..., Any], *, name: str, description: str,
                   jobs: Sequence[str] = (), bookkeeping: bool = False) -> SensorBuilder:
    """A builder of the sensor ``name``: ``evaluate`` at every tick, requesting runs of the jobs named ``jobs``
    (none: it only observes); ``bookkeeping``: it ticks every ``ASTRO_BOOKKEEPING_INTERVAL`` seconds."""
    def build(settings: Settings, built_jobs: Mapping[str, Any]) -> SensorDefinition:
        interval = settings.bookkeeping_interval_seconds if bookkeeping else settings.sensor_interval_seconds
        return sensor(name=name, jobs=[built_jobs[job] for job in jobs] or None, minimum_interval_seconds=interval,
                      default_status=DefaultSensorStatus.RUNNING, description=description)(evaluate)

    variable = "ASTRO_BOOKKEEPING_INTERVAL" if bookkeeping else "ASTRO_SENSOR_INTERVAL"
    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = f"The {name}, made from the settings (its tick interval: {variable})."
    return build
