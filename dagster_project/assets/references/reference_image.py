"""reference_image: per field and band, the proper co-add of its good calibrated frames (or the best one),
frozen as a numbered version.

The frames are chosen by :func:`~dagster_project.science.reference_selection.choose_coadd_frames` (every
good frame, the most informative first, up to ``ASTRO_REFERENCE_FRAMES``, optionally within
``ASTRO_REFERENCE_WINDOW_DAYS`` of the field's first frame) and co-added by
:func:`~dagster_project.science.coadd.coadd_frames` (Zackay & Ofek 2017): the version carries its PSF
(``PSF`` extension), variance and mask, and the catalog lists its inputs (``ReferenceInput``). With one
frame the version is a frozen copy of it. Each version also gets its characterization for differences
(background, stars, PSF), stored next to the frozen file and reused by every difference against it.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dagster import AssetCheckResult, AssetCheckSeverity, Failure, MetadataValue

from dagster_project.catalog import queries
from dagster_project.catalog.queries import CalibratedFrame
from dagster_project.pipeline import PartitionOutput, artifacts, field_band_partitions, inputs, observation_asset
from dagster_project.pipeline import png_markdown, reference_characterization, rounded, size_mb
from dagster_project.references.policy import frames_for_reference
from dagster_project.rendering.preview import image_preview_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.coadd import coadd_frames
from dagster_project.science.difference import DifferenceParams
from dagster_project.science.images import ImagePlanes
from dagster_project.science.magnitudes import limiting_magnitude
from dagster_project.science.psf import PSFError
from dagster_project.science.reference_selection import CoaddChoice, choose_coadd_frames
from dagster_project.store import ProductStore

#: a reference PSF fitted on fewer stars than this is too uncertain to match every new frame against
USABLE_CHECK = "usable_for_differences"
DEPTH_CHECK = "not_shallower_than_before"


@dataclass
class _Built:
    """A reference version's pixels and what describes it, before it is recorded."""

    planes: ImagePlanes
    psf: np.ndarray | None
    inputs: list[dict]
    quality: dict = field(default_factory=dict)


def _build_reference(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                     pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    params = pipeline.difference_params()
    with catalog.catalog().session() as session:
        frames = frames_for_reference(queries.calibrated_frames_of_field_band(session, key),
                                      pipeline.reference_window_days)
        previous = queries.current_reference(session, *_field_band(frames, key))
        previous_depth = previous.depth if previous is not None else None
    choice = choose_coadd_frames([f.quality for f in frames], max_frames=pipeline.reference_max_frames)
    if choice is None:
        raise Failure(f"no calibrated frame of {key} is good enough for a reference ({len(frames)} looked at)",
                      allow_retries=False)
    chosen = [frames[i] for i in choice.indices]
    anchor = frames[choice.anchor]
    built = _coadd(products, chosen, anchor, params) if len(chosen) > 1 else _single(products, anchor)
    target, version = _record(key, run_id, catalog, products, choice, anchor, built)
    return _report(products, target, version, choice, frames, chosen, anchor, built, params,
                   (previous_depth, pipeline.reference_min_psf_stars))


def _field_band(frames: list[CalibratedFrame], key: str) -> tuple[str, str]:
    if not frames:
        raise Failure(f"{key} has no calibrated frame yet", allow_retries=False)
    return frames[0].field_name, frames[0].filter_band


def _single(products: ProductStore, anchor: CalibratedFrame) -> _Built:
    planes = products.read_planes(Path(anchor.path))
    depth = anchor.quality.get("depth_5sigma_e")
    return _Built(planes, None, [{"observation_key": anchor.observation_key, "weight": 1.0, "flux_scale": 1.0,
                                  "fwhm_px": anchor.quality.get("fwhm_px"), "is_anchor": True}],
                  {"depth_5sigma_e": depth, "fwhm_px": anchor.quality.get("fwhm_px"), "depth_gain_mag": 0.0,
                   "registration_rms_px": 0.0})


def _coadd(products: ProductStore, chosen: list[CalibratedFrame], anchor: CalibratedFrame,
           params: DifferenceParams) -> _Built:
    planes = [products.read_planes(Path(f.path)) for f in chosen]
    result = coadd_frames(planes, params, anchor=chosen.index(anchor))
    rows = [{"observation_key": f.observation_key, "weight": figures["weight"], "flux_scale": figures["flux_scale"],
             "flux_scale_err": figures["flux_scale_err"], "registration_rms_px": figures["registration_rms_px"],
             "fwhm_px": figures["fwhm_px"], "n_rejected": figures["n_rejected"], "is_anchor": f is anchor}
            for f, figures in zip(chosen, result.inputs)]
    return _Built(result.planes, result.coadd.psf, rows, dict(result.quality))


def _record(key: str, run_id: str, catalog: CatalogResource, products: ProductStore, choice: CoaddChoice,
            anchor: CalibratedFrame, built: _Built) -> tuple[Path, int]:
    """The new version, current, with its inputs; its file written (a frozen copy for a single frame)."""
    limit = limiting_magnitude(built.quality.get("depth_5sigma_e") or 0.0, built.planes.header)
    with catalog.catalog().session() as session:
        reference = queries.record_reference(
            session, field_name=anchor.field_name, filter_band=anchor.filter_band,
            source_observation=queries.get_observation(session, anchor.observation_key), path="",
            seeing=_seeing_arcsec(built, anchor),
            depth=built.quality.get("depth_5sigma_e"), selection_reason=choice.reason, dagster_run_id=run_id,
            inputs=built.inputs, psf_fwhm_px=built.quality.get("fwhm_px"),
            limit_mag_5sigma=limit.value if limit else None, mag_system=limit.system if limit else None)
        target = products.reference_path(key, reference.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if built.psf is None:  # a frozen copy: re-calibrating the source frame later does not change this version
            shutil.copyfile(anchor.path, target)
        else:
            products.write_planes(target, built.planes, extra={"PSF": built.psf})
        reference.path = str(target)
        return target, reference.version


def _seeing_arcsec(built: _Built, anchor: CalibratedFrame) -> float | None:
    """The version's PSF FWHM in arcsec, at the anchor's pixel scale (its seeing over its FWHM in pixels)."""
    fwhm, anchor_fwhm, anchor_seeing = (built.quality.get("fwhm_px"), anchor.quality.get("fwhm_px"),
                                        anchor.quality.get("seeing_arcsec"))
    if fwhm and anchor_fwhm and anchor_seeing:
        return fwhm * anchor_seeing / anchor_fwhm
    return anchor_seeing


def _report(products: ProductStore, target: Path, version: int, choice: CoaddChoice, frames: list[CalibratedFrame],
            chosen: list[CalibratedFrame], anchor: CalibratedFrame, built: _Built, params: DifferenceParams,
            check_limits: tuple[float | None, int]) -> PartitionOutput:
    """Metadata and checks; ``check_limits``: the previous version's depth and the fewest PSF stars."""
    previous_depth, min_psf_stars = check_limits
    planes = built.planes if built.psf is not None else products.read_planes(target)
    try:
        characterization, characterization_path, _ = reference_characterization(products, target, planes, params)
        stored, psf_stars, psf_problem = artifacts(reference_characterization=characterization_path), \
            characterization.psf.n_stars, None
    except PSFError as exc:
        # not fatal here: each difference against this version tries again and fails with this reason
        stored, psf_stars, psf_problem = {"reference_characterization": f"not stored: {exc}"}, 0, str(exc)
    limit = limiting_magnitude(built.quality.get("depth_5sigma_e") or 0.0, planes.header)
    preview = image_preview_png(planes.data, mask=planes.mask, max_size=256)
    return PartitionOutput(
        metadata={
            **artifacts(reference_image=target), **stored, **inputs(**{f"calibrated_image_{i}": f.path for i, f in enumerate(chosen, 1)}),
            "size_mb": size_mb(target), "reference_version": version, "source_observation": anchor.observation_key,
            "n_inputs": len(chosen), "selection_reason": choice.reason, "frames_considered": len(frames),
            "excluded_frames": MetadataValue.md("\n".join(f"- {frames[i].observation_key}: {why}"
                                                          for i, why in choice.excluded.items()) or "none"),
            "inputs": MetadataValue.md(_inputs_table(built.inputs)),
            **rounded({k: built.quality.get(k) for k in ("fwhm_px", "depth_5sigma_e", "depth_gain_mag",
                                                          "registration_rms_px")}),
            "limit_mag_5sigma": round(limit.value, 3) if limit else None,
            "limit_mag_system": f"{limit.system} ({limit.unit})" if limit else "-",
            "preview": png_markdown(preview, f"reference v{version} ({len(chosen)} frame(s))"),
            **({"psf": png_markdown(image_preview_png(np.kron(built.psf, np.ones((4, 4)))), "co-add PSF (4x)")}
               if built.psf is not None else {}),
        },
        checks=[usable_for_differences(planes, psf_stars, min_psf_stars, psf_problem),
                not_shallower(built.quality.get("depth_5sigma_e"), previous_depth)],
    )


def _inputs_table(rows: list[dict]) -> str:
    lines = ["| observation | weight | flux scale | registration rms (px) | FWHM (px) | rejected px |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        rms = r.get("registration_rms_px")
        lines.append(f"| {r['observation_key']}{' (anchor)' if r.get('is_anchor') else ''} | {r['weight']:.3f} | "
                     f"{r['flux_scale']:.3f} | {'-' if rms is None else f'{rms:.3f}'} | "
                     f"{r.get('fwhm_px') or 0:.2f} | {r.get('n_rejected', 0)} |")
    return "\n".join(lines)


def usable_for_differences(planes: ImagePlanes, psf_stars: int, min_psf_stars: int,
                           psf_problem: str | None = None) -> AssetCheckResult:
    """The reference check: a PSF fitted on at least ``min_psf_stars`` stars, and finite data with finite
    positive variance where unmasked."""
    good = planes.mask == 0
    unmasked = int(good.sum())
    finite = bool(unmasked and np.isfinite(planes.data[good]).all())
    variance_ok = bool(unmasked and (np.isfinite(planes.variance[good]) & (planes.variance[good] > 0)).all())
    enough_stars = psf_problem is None and psf_stars >= min_psf_stars
    return AssetCheckResult(
        check_name=USABLE_CHECK, passed=finite and variance_ok and enough_stars, severity=AssetCheckSeverity.ERROR,
        metadata={"psf_stars": psf_stars, "min_psf_stars": min_psf_stars, "psf_problem": psf_problem or "-",
                  "unmasked_fraction": round(unmasked / good.size, 4), "finite_unmasked": finite,
                  "variance_finite_positive": variance_ok})


def not_shallower(depth: float | None, previous_depth: float | None) -> AssetCheckResult:
    """A new version should reach at least as faint as the one it replaces (a warning: a rebuild by hand may not)."""
    passed = depth is None or previous_depth is None or depth <= previous_depth * 1.001
    return AssetCheckResult(
        check_name=DEPTH_CHECK, passed=passed, severity=AssetCheckSeverity.WARN,
        metadata={"depth_5sigma_e": depth, "previous_depth_5sigma_e": previous_depth})


reference_image = observation_asset(
    "reference_image", _build_reference, partitions_def=field_band_partitions, deps=["calibrated_image"],
    kinds={"fits"},
    checks={USABLE_CHECK: "The frozen reference has a PSF fitted on enough stars (ASTRO_REFERENCE_MIN_PSF_STARS) and "
            "finite pixels with finite, positive variance wherever it is not masked.",
            DEPTH_CHECK: "The new version's 5-sigma depth is at least the previous version's (warning)."},
    description="The reference image of one field and band: the proper co-add (Zackay & Ofek 2017) of its good "
    "calibrated frames, or its best frame alone. Each materialization is a new version; its inputs are in the "
    "catalog (ReferenceInput); differences record which version they used.",
)
