"""difference_image: the reference registered onto the new frame's grid, flux-scaled and ZOGY-subtracted,
and the transient candidates it emits (peaks of |S_corr|), recorded in the catalog with the difference."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table
from dagster import AllPartitionMapping, AssetCheckResult, AssetDep, Failure

from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.keys import field_band_key
from dagster_project.pipeline import PartitionOutput, artifacts, inputs, observation_asset, png_markdown
from dagster_project.pipeline import reference_characterization, rounded, size_mb
from dagster_project.rendering.preview import image_preview_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.coadd import coadd_frames
from dagster_project.science.difference import DifferenceParams, DifferenceResult, difference_images
from dagster_project.store import ProductStore

#: a good subtraction leaves S_corr with unit noise; outside this band something is mis-modelled
SCORR_CHECK = "scorr_noise_near_unity"
#: detection columns kept as real/bogus features on each Candidate row (the candidates are scored from these:
#: science.realbogus.feature_matrix reads the same names from the detection table its training examples come from)
FEATURE_COLUMNS = ("scorr_peak", "sharpness", "n_opposite_pixels", "ref_distance_px", "masked_fraction", "is_sharp",
                   "is_good", "id", "area")


def candidate_rows(detections: Table) -> list[dict]:
    """Catalog rows (Candidate columns) from the detection table; rows without sky coordinates are dropped."""
    features = [c for c in FEATURE_COLUMNS if c in detections.colnames]
    rows = []
    for d in detections:
        if not (np.isfinite(d["ra"]) and np.isfinite(d["dec"])):
            continue
        rows.append({
            "ra": float(d["ra"]) % 360.0, "dec": float(d["dec"]), "pixel_x": float(d["x"]), "pixel_y": float(d["y"]),
            "flux": _finite(d["flux"]), "flux_error": _finite(d["flux_err"]), "significance": _finite(d["significance"]),
            "snr": _finite(d["snr"]), "fwhm": _finite(d["fwhm"]), "ellipticity": _clip01(d["ellipticity"]),
            "position_angle": _finite(d["position_angle"]), "is_saturated": bool(d["is_saturated"]),
            "is_blended": bool(d["is_blended"]), "is_edge": bool(d["is_edge"]), "is_negative": bool(d["is_negative"]),
            "features": {c: _finite(d[c]) for c in features},
        })
    return rows


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _clip01(value) -> float | None:
    value = _finite(value)
    return None if value is None else min(max(value, 0.0), 0.999)


@dataclass(frozen=True)
class _Pair:
    """The new frame and its field's current reference, as the DifferenceRun started for them records."""

    run_id: int
    new_path: Path
    output: Path
    lineage: dict | None  # None: the field has no reference yet
    blocked: str | None
    is_reference: bool
    #: the frame is one input of a co-added reference: the template is the co-add of the others
    others: tuple[str, ...] = ()


def _difference(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    params = pipeline.difference_params()
    pair = _start(key, run_id, catalog, products, pipeline, params)
    if pair.lineage is None:
        raise Failure(pair.blocked, allow_retries=False)
    if pair.is_reference:
        return PartitionOutput(
            metadata={**pair.lineage, "skipped": "this observation is its field's reference: nothing to subtract"},
            checks=[AssetCheckResult(check_name=SCORR_CHECK, passed=True, metadata={"skipped": "reference frame"})])
    try:
        new = products.read_planes(pair.new_path)
        template = _leave_one_out(key, pair, catalog, products, params) if pair.others else \
            Path(pair.lineage["reference_path"])
        ref = products.read_planes(template)
        pair.lineage["template_path"] = str(template)
        ref_characterization, characterization_path, written = reference_characterization(
            products, template, ref, params)
        result = difference_images(new, ref, params, ref_characterization=ref_characterization)
        products.write_maps(pair.output, new.header, {
            "D": result.zogy.D, "SCORR": result.zogy.S_corr, "FLUX": result.zogy.flux,
            "FLUXERR": result.zogy.flux_err, "MASK": result.mask, "REF": result.ref_resampled.data,
        })
        return _record(key, pair, result, params, catalog, products, pipeline, (characterization_path, written))
    except Exception as exc:
        with catalog.catalog().session() as session:
            queries.finish_difference_run(session, queries.get_difference_run(session, pair.run_id),
                                          status=RunStatus.FAILED, error_message=f"{type(exc).__name__}: {exc}")
        raise


def _start(key: str, dagster_run_id: str, catalog: CatalogResource, products: ProductStore,
           pipeline: PipelineConfigResource, params: DifferenceParams) -> _Pair:
    """The DifferenceRun started; BLOCKED at once without a reference, SKIPPED for the reference frame itself."""
    parameters = {"algorithm": "zogy", "threshold": params.threshold, "interpolation_order": params.interpolation_order,
                  "max_registration_rms_px": params.max_registration_rms_px}
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        reference = queries.current_reference(session, observation.field_name, observation.filter_band)
        field_band = field_band_key(observation.field_name, observation.filter_band)
        run = queries.start_difference_run(session, observation, reference, parameters=parameters,
                                           dagster_run_id=dagster_run_id)
        if reference is None:
            reason = f"no reference image for {field_band} yet; the reference sensor builds one from calibrated frames"
            queries.finish_difference_run(session, run, status=RunStatus.BLOCKED, error_message=reason)
            return _Pair(run.id, Path(), Path(), None, reason, False)
        lineage = {"reference_partition": field_band, "reference_version": reference.version,
                   "reference_observation": reference.source_observation.observation_id,
                   "reference_path": reference.path}
        inputs = queries.reference_input_keys(session, reference)
        # never subtracted from a template that holds it: the one-frame reference itself is skipped,
        # an input of a co-add is differenced against the co-add of the other inputs
        is_reference = inputs == [key]
        others = tuple(k for k in inputs if k != key) if key in inputs and not is_reference else ()
        if is_reference:
            queries.finish_difference_run(session, run, status=RunStatus.SKIPPED,
                                          error_message="this observation is its field's reference")
            queries.observation_materialized(session, key, pipeline.rebuild_policy())
        if others:
            lineage["template"] = f"v{reference.version} without this frame: co-add of the other {len(others)}"
        return _Pair(run_id=run.id, new_path=Path(observation.preprocess_run.processed_fits_path),
                     output=products.difference_path(observation.night, observation.observation_id),
                     lineage=lineage, blocked=None, is_reference=is_reference, others=others)


def _leave_one_out(key: str, pair: _Pair, catalog: CatalogResource, products: ProductStore,
                   params: DifferenceParams) -> Path:
    """The co-add of the reference's other inputs (written once next to the reference, then reused)."""
    path = products.leave_one_out_path(pair.lineage["reference_partition"], pair.lineage["reference_version"], key)
    if path.exists():
        return path
    with catalog.catalog().session() as session:
        frames = [f for f in queries.calibrated_frames_of_field_band(session, pair.lineage["reference_partition"])
                  if f.observation_key in pair.others]
    anchor = min(range(len(frames)), key=lambda i: frames[i].quality.get("fwhm_px") or float("inf"))
    if len(frames) == 1:
        products.write_planes(path, products.read_planes(Path(frames[0].path)))
        return path
    result = coadd_frames([products.read_planes(Path(f.path)) for f in frames], params, anchor=anchor)
    products.write_planes(path, result.planes, extra={"PSF": result.coadd.psf})
    return path


def _record(key: str, pair: _Pair, result: DifferenceResult, params: DifferenceParams, catalog: CatalogResource,
            products: ProductStore, pipeline: PipelineConfigResource,
            characterization: tuple[Path, bool]) -> PartitionOutput:
    """The completed DifferenceRun with its candidates, and what the UI shows; ``characterization``: the
    reference's, and whether this difference wrote it."""
    quality = rounded({k: v for k, v in result.quality.items() if not isinstance(v, str)})
    output = pair.output
    with catalog.catalog().session() as session:  # one transaction: a difference is never without its candidates
        run = queries.finish_difference_run(
            session, queries.get_difference_run(session, pair.run_id), status=RunStatus.COMPLETED,
            difference_image_path=str(output), significance_map_path=f"{output}[SCORR]",
            noise_level=result.zogy.d_std, detection_threshold=params.threshold,
            quality={**quality, "n_detections": len(result.candidates), "timings": result.timings},
            processing_time_seconds=result.timings.get("total"))
        n_candidates = queries.record_candidates(session, run, candidate_rows(result.candidates))
        queries.record_registration_quality(session, run, result.quality.get("registration_rms_px"))
        queries.observation_materialized(session, key, pipeline.rebuild_policy())
    low, high = pipeline.scorr_std_min, pipeline.scorr_std_max
    scorr_ok = low <= result.zogy.scorr_std <= high
    preview = image_preview_png(result.zogy.D, mask=result.mask, max_size=256)
    preview_path = products.write_bytes(output.with_name("difference.png"), preview)
    characterization_path, written = characterization
    return PartitionOutput(
        metadata={
            **artifacts(difference_image=output, difference_preview=preview_path), "n_candidates": n_candidates,
            **inputs(calibrated_image=pair.new_path, reference_image=pair.lineage["reference_path"],
                     template_image=pair.lineage["template_path"] if pair.others else None,
                     reference_characterization=characterization_path), "size_mb": size_mb(output),
            # written here only for a reference version frozen without it (reference_image writes it)
            **(artifacts(reference_characterization=characterization_path) if written else {}),
            **pair.lineage, **quality,
            "registration_method": result.quality.get("registration_method", ""),
            **{f"time_{k}_s": round(v, 3) for k, v in result.timings.items()},
            "preview": png_markdown(preview, "difference D"),
        },
        checks=[AssetCheckResult(check_name=SCORR_CHECK, passed=scorr_ok,
                                 metadata={"scorr_std": round(result.zogy.scorr_std, 3), "range": f"{low}-{high}"})],
    )


difference_image = observation_asset(
    "difference_image", _difference, kinds={"fits"},
    # Which reference partition an observation uses is resolved through the catalog (see README):
    # the dependency on all reference partitions shows the lineage in the graph.
    deps=["calibrated_image", AssetDep("reference_image", partition_mapping=AllPartitionMapping())],
    checks={SCORR_CHECK: "Robust std of S_corr within ASTRO_SCORR_STD_RANGE (by default 0.8-1.25)."},
    description="ZOGY proper difference (D, S_corr, PSF-photometry flux and error) of the calibrated frame "
    "minus its field's current reference, on the new frame's pixel grid, and the candidates it emits (peaks of "
    "|S_corr| above the threshold), recorded in the catalog (Candidate) with the difference.",
)
