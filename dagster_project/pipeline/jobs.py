"""Jobs over the asset graph.

All run their steps in one process: a partition's work takes seconds, and a process per
step would cost more than that (measured in docs/operations.md).

* ``observation_job`` — the whole per-observation chain. The ``backfill`` command launches
  asset backfills of a job's assets (:data:`JOB_ASSETS`); these, like ``dagster job backfill
  -j observation_job``, give each run several partitions (``pipeline/batching.py``).
* ``calibrate_job`` / ``difference_job`` — its two halves, launched by the sensors:
  calibration as soon as a frame lands, differencing once the field has a reference.
* ``reference_job`` — the reference image of one field and band.
* ``products_job`` — the products of one ObservationResult (launched by the rebuild sensor).

Runs the sensors launch carry ``dagster/run_key`` (the work, plus ``:a<n>`` for its n-th retry) and
``astro/attempt``; failed or interrupted work is retried by the sensors with backoff, not by Dagster's
run retries (see ``sensors/reference_and_difference.py`` and ``deploy/dagster.yaml``).
"""

from dagster import AssetSelection, define_asset_job

from dagster_project.pipeline.partitions import field_band_partitions, observations_partitions, results_partitions

__all__ = ["IN_PROCESS", "JOBS", "JOB_ASSETS", "calibrate_job", "difference_job", "observation_job", "products_job",
           "reference_job"]

#: default run config: steps run in the run worker's process (a launch may still ask for multiprocess)
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


#: the assets of each job, by job name
JOB_ASSETS = {
    "calibrate_job": ("raw_observation", "calibrated_image"),
    "difference_job": ("difference_image", "candidates"),
    "observation_job": ("raw_observation", "calibrated_image", "difference_image", "candidates"),
    "reference_job": ("reference_image",),
    "products_job": ("observation_products",),
}


def _job(name: str, partitions_def, description: str):
    return define_asset_job(name, selection=AssetSelection.assets(*JOB_ASSETS[name]), partitions_def=partitions_def,
                            config=IN_PROCESS, description=description)


calibrate_job = _job("calibrate_job", observations_partitions, "Validate the archived raw frame and calibrate it.")
difference_job = _job("difference_job", observations_partitions,
                      "ZOGY difference against the field's current reference, then candidate detection.")
observation_job = _job("observation_job", observations_partitions, "The whole per-observation chain (for backfills).")
reference_job = _job("reference_job", field_band_partitions, "Choose and freeze the reference image of one field and band.")
products_job = _job("products_job", results_partitions, "Build one ObservationResult's products from its current revision.")

#: every job of the code location
JOBS = (observation_job, calibrate_job, difference_job, reference_job, products_job)
