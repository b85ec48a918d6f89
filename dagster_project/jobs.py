"""Jobs over the asset graph.

All run their steps in one process: a partition's work takes seconds, and a process per
step would cost more than that (measured in docs/operations.md).

* ``observation_job`` — the whole per-observation chain; use it for CLI backfills
  (``dagster job backfill -j observation_job``).
* ``calibrate_job`` / ``difference_job`` — its two halves, launched by the sensors:
  calibration as soon as a frame lands, differencing once the field has a reference.
* ``reference_job`` — the reference image of one field and band.
* ``products_job`` — the products of one ObservationResult (launched by the rebuild sensor).
"""

from dagster import AssetSelection, define_asset_job

from dagster_project.assets.partitions import field_band_partitions, observations_partitions, results_partitions

#: default run config: steps run in the run worker's process (a launch may still ask for multiprocess)
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}

calibrate_job = define_asset_job(
    "calibrate_job",
    config=IN_PROCESS,
    selection=AssetSelection.assets("raw_observation", "calibrated_image"),
    partitions_def=observations_partitions,
    description="Validate the archived raw frame and calibrate it.",
)
difference_job = define_asset_job(
    "difference_job",
    config=IN_PROCESS,
    selection=AssetSelection.assets("difference_image", "candidates"),
    partitions_def=observations_partitions,
    description="ZOGY difference against the field's current reference, then candidate detection.",
)
observation_job = define_asset_job(
    "observation_job",
    config=IN_PROCESS,
    selection=AssetSelection.assets("raw_observation", "calibrated_image", "difference_image", "candidates"),
    partitions_def=observations_partitions,
    description="The whole per-observation chain (for backfills).",
)
reference_job = define_asset_job(
    "reference_job",
    config=IN_PROCESS,
    selection=AssetSelection.assets("reference_image"),
    partitions_def=field_band_partitions,
    description="Choose and freeze the reference image of one field and band.",
)
products_job = define_asset_job(
    "products_job",
    config=IN_PROCESS,
    selection=AssetSelection.assets("observation_products"),
    partitions_def=results_partitions,
    description="Build one ObservationResult's products from its current revision.",
)
