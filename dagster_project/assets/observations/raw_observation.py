"""raw_observation: the archived raw frame of one observation, verified against its registration."""

from pathlib import Path

from astropy.io import fits
from dagster import AssetCheckResult, AssetCheckSeverity, Failure, MetadataValue

from dagster_project.catalog import queries
from dagster_project.ingest.landing import sha256_of
from dagster_project.pipeline import PartitionOutput, inputs, observation_asset, png_markdown, size_mb
from dagster_project.rendering.preview import image_preview_png
from dagster_project.resources import CatalogResource


def _verify_raw(key: str, run_id: str, catalog: CatalogResource) -> PartitionOutput:
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


raw_observation = observation_asset(
    "raw_observation", _verify_raw, kinds={"fits"}, blocking_checks=True,
    checks={"raw_file_intact": "The archived file still has the sha256 it was registered with."},
    description="A science exposure as it arrived, archived and registered by the raw-arrival sensor.",
)
