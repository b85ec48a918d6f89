"""Jobs over the asset graph.

By default all run their steps in one process: a partition's work takes seconds, and a process per
step would cost more than that (measured in docs/operations.md). ``ASTRO_EXECUTOR`` says otherwise
(:func:`execution`): ``multiprocess`` (a process per step) or ``celery`` (each step a Celery task, run
by ``dagster-celery`` workers on any machine that sees the broker, the catalog, the Dagster instance and
the store: ``deploy/celery.yaml``, ``make workers``, docs/scaling.md).

* ``observation_job`` — the whole per-observation chain. The ``backfill`` command launches
  asset backfills of a job's assets (:data:`JOB_ASSETS`); these, like ``dagster job backfill
  -j observation_job``, give each run several partitions (``pipeline/batching.py``).
* ``calibrate_job`` / ``difference_job`` — its two halves, launched by the sensors:
  calibration as soon as a frame lands, differencing once the field has a reference.
* ``reference_job`` — the reference image of one field and band.
* ``products_job`` — the products of one ObservationResult (launched by the rebuild sensor).

Runs the sensors launch carry ``dagster/run_key`` (the work, plus ``:a<n>`` for its n-th retry) and
``astro/attempt``; failed or interrupted work is retried by the sensors with backoff, not by Dagster's
run retries (see ``sensors/reference_and_difference.py`` and ``deploy/dagster.yaml``). With the
``multiprocess`` and ``celery`` executors a failed step is also retried within its run
(``ASTRO_STEP_RETRIES``), and a Celery task whose worker died mid-step goes back to the broker and is
run by another worker (:data:`CELERY_TASK_SETTINGS`); every asset builds its partition idempotently
(one calibration and one difference row per observation, restarted in place; files written whole under
fixed names), so a step that runs twice leaves what one run leaves.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetSelection, Backoff, ExecutorDefinition, RetryPolicy, define_asset_job

from dagster_project.pipeline.partitions import field_band_partitions, observations_partitions, results_partitions
from dagster_project.settings import Settings

__all__ = ["CALIBRATE_JOB", "CELERY_TASK_SETTINGS", "DIFFERENCE_JOB", "IN_PROCESS", "JOB_ASSETS", "OBSERVATION_JOB",
           "LANE_TAG", "PRODUCTS_JOB", "PROMPT_LANE", "REDO_LANE", "REFERENCE_JOB", "Execution", "build_jobs",
           "celery_config_source", "execution"]

#: default run config: steps run in the run worker's process (a launch may still ask for multiprocess)
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
MULTIPROCESS = {"execution": {"config": {"multiprocess": {}}}}

#: what makes a step survive a Celery worker killed mid-task: the task is acknowledged only once it has run
#: (acks late), a worker whose pool process died gives it back (reject on worker lost), and a worker holds one
#: task at a time (prefetch 1), so nothing waits behind a dead one. deploy/celery.yaml gives the workers the same.
CELERY_TASK_SETTINGS: Mapping[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
}
#: seconds before Dagster's first retry of a failed step (doubling for the next)
STEP_RETRY_DELAY = 5


#: the jobs' names (the sensors request runs by name; the job objects are built with the settings)
CALIBRATE_JOB, DIFFERENCE_JOB, OBSERVATION_JOB = "calibrate_job", "difference_job", "observation_job"
REFERENCE_JOB, PRODUCTS_JOB = "reference_job", "products_job"

#: run tags of the two lanes of work (``deploy/dagster.yaml`` gives the prompt lane as many runs at once as there
#: are cores, and the redo lane one more, so a frame that lands never waits behind reprocessing): the first
#: processing of a frame, first in the queue ...
LANE_TAG = "astro/lane"
PROMPT_LANE = {LANE_TAG: "prompt", "dagster/priority": "10"}
#: ... and remaking what exists (differences against a newer reference, references rebuilt deeper, products
#: built from a result's current revision), behind prompt work: differences and references are requested only
#: while no prompt run is queued or running (sensors/reference_and_difference.py), and a redo run's process
#: gives itself a lower CPU priority (resources/run_priority.py)
REDO_LANE = {LANE_TAG: "redo", "dagster/priority": "-10"}

#: the assets of each job, by job name
JOB_ASSETS = {
    CALIBRATE_JOB: ("raw_observation", "calibrated_image"),
    DIFFERENCE_JOB: ("difference_image", "candidates"),
    OBSERVATION_JOB: ("raw_observation", "calibrated_image", "difference_image", "candidates"),
    REFERENCE_JOB: ("reference_image",),
    PRODUCTS_JOB: ("observation_products",),
}


@dataclass(frozen=True)
class Execution:
    """Where the jobs' steps execute: the executor (None: Dagster's default, in-process or multiprocess by
    config), the jobs' default run config, and the retry policy of their steps."""

    config: Mapping[str, Any] = field(default_factory=lambda: IN_PROCESS)
    executor_def: ExecutorDefinition | None = None
    op_retry_policy: RetryPolicy | None = None


def celery_config_source(settings: Settings) -> dict[str, Any]:
    """The Celery app settings of the runs' step submissions (and of the workers, deploy/celery.yaml)."""
    return {**CELERY_TASK_SETTINGS, "task_default_queue": settings.celery_queue}


def execution(settings: Settings | None) -> Execution:
    """The jobs' execution for ``settings`` (``ASTRO_EXECUTOR``); None or ``in_process``: as always, in process."""
    if settings is None or settings.executor == "in_process":
        return Execution()
    retry = (RetryPolicy(max_retries=settings.step_retries, delay=STEP_RETRY_DELAY, backoff=Backoff.EXPONENTIAL)
             if settings.step_retries else None)
    if settings.executor == "multiprocess":
        return Execution(MULTIPROCESS, None, retry)
    from dagster_celery import celery_executor  # only where Celery is asked for

    config = {"broker": settings.celery_broker, "backend": settings.celery_backend,
              "config_source": celery_config_source(settings), "retries": {"enabled": {}}}
    return Execution({"execution": {"config": config}}, celery_executor, retry)


def build_jobs(settings: Settings | None) -> dict[str, Any]:
    """Every job of the code location, by name, executing as ``settings`` say (``definitions.py`` builds them
    once, with the settings it read, and gives them to the sensors)."""
    how = execution(settings)
    partitions = {REFERENCE_JOB: field_band_partitions, PRODUCTS_JOB: results_partitions}
    descriptions = {
        CALIBRATE_JOB: "Validate the archived raw frame and calibrate it.",
        DIFFERENCE_JOB: "ZOGY difference against the field's current reference, then candidate detection.",
        OBSERVATION_JOB: "The whole per-observation chain: a frame whose field has a reference, as soon as it "
                         "lands (the raw-arrival sensor), and backfills.",
        REFERENCE_JOB: "Choose and freeze the reference image of one field and band.",
        PRODUCTS_JOB: "Build one ObservationResult's products from its current revision.",
    }
    from dagster_project.pipeline.staging import STAGING_JOB, staging_job

    jobs = {name: define_asset_job(name, selection=AssetSelection.assets(*JOB_ASSETS[name]),
                                   partitions_def=partitions.get(name, observations_partitions),
                                   config=dict(how.config), executor_def=how.executor_def,
                                   op_retry_policy=how.op_retry_policy, description=description)
            for name, description in descriptions.items()}
    return {**jobs, STAGING_JOB: staging_job}

