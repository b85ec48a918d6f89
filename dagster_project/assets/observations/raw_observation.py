"""raw_observation: the archived raw frame of one observation, verified against its registration."""

from pathlib import Path

from astropy.io import fits
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from dagster_project.pipeline.batching import BATCHED_BACKFILL, PartitionOutput, materialize_partitions
from dagster_project.pipeline.metadata import CODE_VERSION, NIGHTLY_FRESHNESS, inputs, png_markdown, size_mb
from dagster_project.pipeline.partitions import observations_partitions
from dagster_project.catalog import queries
from dagster_project.ingest.landing import sha256_of
from dagster_project.resources import CatalogResource
from dagster_project.rendering.preview import image_preview_png


@asset(
    partitions_def=observations_partitions,
    group_name="calibration",
    kinds={"fits"},
    freshness_policy=NIGHTLY_FRESHNESS,
    code_version=CODE_VERSION,
    backfill_policy=BATCHED_BACKFILL,
    check_specs=[AssetCheckSpec("raw_file_intact", asset="raw_observation", blocking=True,
                                description="The archived file still has the sha256 it was registered with.")],
    description="A science exposure as it arrived, archived and registered by the raw-arrival sensor.",
)
def raw_observation(context: AssetExecutionContext, catalog: CatalogResource) -> MaterializeResult:
    return materialize_partitions(context, lambda key: _verify_raw(key, catalog))


def _verify_raw(key: str, catalog: CatalogResource) -> PartitionOutput:
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        raw = observation.raw_file
        path, registered_sha = Path(raw.stored_path), raw.sha256
        facts = {
            "original_name": raw.original_name, "version": raw.version, "instrument": raw.instrument,
            "field": observation.field_name, "band": observation.filter_band, "night": observation.night,
            "observation_time": observation.observation_time.isoformat(), "exposure_s": observation.exposure_time,
            "airmass": observation.airmass, "ra_deg": observation.ra, "dec_deg": observation.dec,
        }
    if not path.exists():
        raise Failure(f"archived raw file {path} is missing", metadata={"path": str(path)})
    actual_sha = sha256_of(path)
    data = fits.getdata(path)
    return PartitionOutput(
        metadata={
            **inputs(raw_frame=path), "size_mb": size_mb(path),
            **{k: v for k, v in facts.items() if v is not None},
            "sha256": registered_sha,
            "shape": f"{data.shape[1]} x {data.shape[0]}",
            "preview": png_markdown(image_preview_png(data, max_size=256), "raw frame (ADU)"),
        },
        checks=[AssetCheckResult(
            check_name="raw_file_intact", passed=actual_sha == registered_sha,
            severity=AssetCheckSeverity.ERROR,
            metadata={"registered_sha256": registered_sha, "actual_sha256": MetadataValue.text(actual_sha)},
        )],
    )
