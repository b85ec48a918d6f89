"""The Dagster layer's shared parts: partitions, jobs, the per-partition asset factory, backfill batching,
the reference characterization both reference and difference assets use, and asset metadata helpers."""

from dagster_project.pipeline.batching import PartitionOutput, batched_backfill, materialize_partitions
from dagster_project.pipeline.characterization import reference_characterization
from dagster_project.pipeline.jobs import JOB_ASSETS, build_jobs, execution
from dagster_project.pipeline.metadata import CODE_VERSION, NIGHTLY_FRESHNESS, Stopwatch, artifacts, inputs
from dagster_project.pipeline.metadata import png_markdown, rounded, size_mb
from dagster_project.pipeline.asset_factory import observation_asset
from dagster_project.pipeline.partitions import field_band_partitions, observations_partitions, results_partitions

__all__ = [
    "CODE_VERSION", "JOB_ASSETS", "NIGHTLY_FRESHNESS", "PartitionOutput", "Stopwatch", "artifacts",
    "batched_backfill", "build_jobs", "execution", "field_band_partitions", "inputs", "materialize_partitions", "observation_asset",
    "observations_partitions", "png_markdown", "reference_characterization", "results_partitions", "rounded",
    "size_mb",
]
