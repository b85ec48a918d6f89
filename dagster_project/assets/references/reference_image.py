"""reference_image: per field and band, the best-seeing good calibrated frame, frozen as a numbered version.

Each version also gets its characterization for differences (background, stars, PSF: steps 1-3 of
:func:`~dagster_project.science.difference.difference_images`), stored next to the frozen file and
reused by every difference against that version.
"""

import shutil
from pathlib import Path

import numpy as np
from dagster import AssetCheckResult, AssetCheckSeverity, Failure

from dagster_project.catalog import queries
from dagster_project.pipeline import PartitionOutput, artifacts, field_band_partitions, inputs, observation_asset
from dagster_project.pipeline import png_markdown, reference_characterization, rounded, size_mb
from dagster_project.rendering.preview import image_preview_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.images import ImagePlanes
from dagster_project.science.psf import PSFError
from dagster_project.science.reference_selection import choose_reference

#: a reference PSF fitted on fewer stars than this is too uncertain to match every new frame against
REFERENCE_MIN_PSF_STARS = 10
USABLE_CHECK = "usable_for_differences"


def _build_reference(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                     pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    with catalog.catalog().session() as session:
        frames = queries.calibrated_frames_of_field_band(session, key)
        choice = choose_reference([f.quality for f in frames])
        if choice is None:
            raise Failure(f"no calibrated frame of {key} is good enough for a reference "
                          f"({len(frames)} looked at)", allow_retries=False)
        chosen = frames[choice.index]
        reference = queries.record_reference(
            session, field_name=chosen.field_name, filter_band=chosen.filter_band,
            source_observation=queries.get_observation(session, chosen.observation_key), path="",
            seeing=chosen.quality.get("seeing_arcsec"), depth=chosen.quality.get("depth_5sigma_e"),
            selection_reason=choice.reason, dagster_run_id=run_id)
        target = products.reference_path(key, reference.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        # a frozen copy: re-calibrating the source frame later does not change this version
        shutil.copyfile(chosen.path, target)
        reference.path = str(target)
        version, source = reference.version, chosen.observation_key
    planes = products.read_planes(Path(target))
    try:
        characterization, characterization_path, _ = reference_characterization(
            products, target, planes, pipeline.difference_params())
        stored, psf_stars, psf_problem = artifacts(reference_characterization=characterization_path), \
            characterization.psf.n_stars, None
    except PSFError as exc:
        # not fatal here: each difference against this version tries again and fails with this reason
        stored, psf_stars, psf_problem = {"reference_characterization": f"not stored: {exc}"}, 0, str(exc)
    preview = image_preview_png(planes.data, mask=planes.mask, max_size=256)
    return PartitionOutput(
        metadata={
            **artifacts(reference_image=target), **stored, **inputs(calibrated_image=chosen.path),
            "size_mb": size_mb(target),
            "reference_version": version, "source_observation": source,
            "selection_reason": choice.reason, "frames_considered": len(frames),
            **rounded({k: chosen.quality.get(k) for k in ("seeing_arcsec", "fwhm_px", "sky_rms_e", "depth_5sigma_e")}),
            "preview": png_markdown(preview, f"reference v{version}"),
        },
        checks=[usable_for_differences(planes, psf_stars, psf_problem)],
    )


def usable_for_differences(planes: ImagePlanes, psf_stars: int, psf_problem: str | None = None) -> AssetCheckResult:
    """The reference check: enough PSF stars, and finite data with finite positive variance where unmasked."""
    good = planes.mask == 0
    unmasked = int(good.sum())
    finite = bool(unmasked and np.isfinite(planes.data[good]).all())
    variance_ok = bool(unmasked and (np.isfinite(planes.variance[good]) & (planes.variance[good] > 0)).all())
    enough_stars = psf_problem is None and psf_stars >= REFERENCE_MIN_PSF_STARS
    return AssetCheckResult(
        check_name=USABLE_CHECK, passed=finite and variance_ok and enough_stars, severity=AssetCheckSeverity.ERROR,
        metadata={"psf_stars": psf_stars, "min_psf_stars": REFERENCE_MIN_PSF_STARS, "psf_problem": psf_problem or "-",
                  "unmasked_fraction": round(unmasked / good.size, 4), "finite_unmasked": finite,
                  "variance_finite_positive": variance_ok})


reference_image = observation_asset(
    "reference_image", _build_reference, partitions_def=field_band_partitions, deps=["calibrated_image"],
    kinds={"fits"},
    checks={USABLE_CHECK: f"The frozen reference has a PSF fitted on at least {REFERENCE_MIN_PSF_STARS} stars and "
            "finite pixels with finite, positive variance wherever it is not masked."},
    description="The reference image of one field and band: the best-seeing good calibrated frame so far. "
    "Each materialization is a new version; differences record which version they used.",
)
