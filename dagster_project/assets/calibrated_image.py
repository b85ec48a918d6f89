"""calibrated_image: overscan, bias and flat, ADU to electrons, variance and mask planes, PSF and seeing."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
from astropy.io import fits
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    asset,
)

from dagster_project.assets.batching import BATCHED_BACKFILL, PartitionOutput, materialize_partitions
from dagster_project.assets.calibration_masters import masters_for
from dagster_project.assets.metadata import CODE_VERSION, NIGHTLY_FRESHNESS, Stopwatch, artifacts, inputs, png_markdown, rounded, size_mb
from dagster_project.assets.partitions import observations_partitions
from dagster_project.assets.raw_observation import raw_observation
from dagster_project.catalog import pipeline_queries, queries, result_lifecycle
from dagster_project.catalog.models import RunStatus
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.calibration import calibrate_science_frame, calibrated_header
from dagster_project.science.images import ImagePlanes
from dagster_project.science.preview import image_preview_png
from dagster_project.science.psf import characterize_image


@asset(
    partitions_def=observations_partitions,
    deps=[raw_observation],
    group_name="calibration",
    kinds={"fits"},
    freshness_policy=NIGHTLY_FRESHNESS,
    code_version=CODE_VERSION,
    backfill_policy=BATCHED_BACKFILL,
    check_specs=[AssetCheckSpec("finite_with_wcs", asset="calibrated_image", blocking=True,
                                description="Unmasked pixels and variances are finite and the header has a celestial WCS.")],
    description="Raw frame calibrated with the night's master bias and flat: SCI (e-), VAR (e-^2), MASK.",
)
def calibrated_image(context: AssetExecutionContext, catalog: CatalogResource, store: StoreResource,
                     pipeline: PipelineConfigResource) -> MaterializeResult:
    return materialize_partitions(context, lambda key: _calibrate(key, context.run_id, catalog, store, pipeline))


def _calibrate(key: str, dagster_run_id: str, catalog: CatalogResource, store: StoreResource,
               pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    parameters = {"detect_cosmic_rays": pipeline.detect_cosmic_rays}
    watch = Stopwatch()
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        raw = observation.raw_file
        run = queries.start_preprocess_run(session, observation, parameters=parameters, dagster_run_id=dagster_run_id)
        run_id, night, band = run.id, observation.night, observation.filter_band
        raw_path, instrument = Path(raw.stored_path), observation.instrument or raw.instrument
        output = products.observation_dir(night, observation.observation_id) / "calibrated.fits"
        with watch.step("masters"):
            masters = masters_for(session, products, instrument=instrument, night=night, band=band)
    try:
        if masters.blocked_reason:
            raise _Blocked(masters.blocked_reason)
        with watch.step("read"):
            with fits.open(raw_path, memmap=False) as hdul:
                raw_adu = hdul[0].data.astype(np.float32)
                raw_header = hdul[0].header.copy()
        with watch.step("calibrate"):
            result = calibrate_science_frame(
                raw_adu, gain=float(raw_header["GAIN"]), read_noise_e=float(raw_header["RDNOISE"]),
                saturate_adu=float(raw_header["SATURATE"]), master_bias=masters.bias.frame,
                master_flat=masters.flat.frame, biassec=raw_header.get("BIASSEC"),
                trimsec=raw_header.get("TRIMSEC"), detect_cosmic_rays=pipeline.detect_cosmic_rays)
            header = calibrated_header(raw_header, result)
            planes = ImagePlanes(result.planes.data, result.planes.variance, result.planes.mask, header)
        with watch.step("characterize"):
            quality = characterize_image(planes)
        with watch.step("write"):
            products.write_planes(output, planes)
    except _Blocked as blocked:
        _finish(catalog, run_id, RunStatus.BLOCKED, error_message=str(blocked), calibration_note="; ".join(masters.notes))
        raise Failure(f"calibration blocked: {blocked}", allow_retries=False) from None
    except Exception as exc:
        _finish(catalog, run_id, RunStatus.FAILED, error_message=f"{type(exc).__name__}: {exc}")
        raise

    seeing = quality.seeing_arcsec if np.isfinite(quality.seeing_arcsec) else None
    figures = rounded({
        "fwhm_px": quality.psf.fwhm_px, "seeing_arcsec": seeing, "ellipticity": quality.psf.ellipticity,
        "sky_e": float(np.median(quality.background.background)), "sky_rms_e": quality.background.median_rms,
        "n_psf_stars": quality.psf.n_stars, "n_stars": quality.n_stars, "depth_5sigma_e": quality.depth_5sigma_e,
        "masked_fraction": float((planes.mask != 0).mean()),
        **{k: v for k, v in result.stats.items() if isinstance(v, (int, float))},
    })
    wcs_ok = planes.wcs.has_celestial
    good = (planes.mask == 0)
    finite = bool(np.isfinite(planes.data[good]).all() and np.isfinite(planes.variance[good]).all())
    _finish(catalog, run_id, RunStatus.COMPLETED, processed_fits_path=str(output), calibration_applied=True,
            wcs_aligned=wcs_ok, quality=figures, processing_time_seconds=watch.total,
            master_bias_id=masters.bias.master_id, master_flat_id=masters.flat.master_id,
            calibration_note="; ".join(masters.notes) or None,
            wcs_info={k: header[k] for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2") if k in header})
    with catalog.catalog().session() as session:
        pipeline_queries.record_seeing(session, key, seeing)
        result_lifecycle.observation_materialized(session, key, pipeline.rebuild_policy())
    preview = image_preview_png(planes.data, mask=planes.mask, max_size=256)
    preview_path = products.write_bytes(output.with_name("calibrated.png"), preview)
    return PartitionOutput(
        metadata={
            **artifacts(calibrated_image=output, calibrated_preview=preview_path), "size_mb": size_mb(output),
            **inputs(raw_frame=raw_path, master_bias=masters.bias.path, master_flat=masters.flat.path),
            **figures, **watch.as_metadata(),
            "master_bias_night": masters.bias.night, "master_flat_night": masters.flat.night,
            "calibration_note": "; ".join(masters.notes) or "masters of the same night",
            "preview": png_markdown(preview, "calibrated (e-)"),
        },
        checks=[AssetCheckResult(check_name="finite_with_wcs", passed=finite and wcs_ok,
                                 metadata={"finite_unmasked": finite, "celestial_wcs": wcs_ok})],
    )


class _Blocked(Exception):
    """Calibration cannot start (e.g. no master bias or flat anywhere)."""


def _finish(catalog: CatalogResource, run_id, status: RunStatus, **fields) -> None:
    with catalog.catalog().session() as session:
        queries.finish_preprocess_run(session, pipeline_queries.get_preprocess_run(session, run_id), status=status, **fields)
