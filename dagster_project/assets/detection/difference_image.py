"""difference_image: the reference registered onto the new frame's grid, flux-scaled and ZOGY-subtracted."""

from dataclasses import dataclass
from pathlib import Path

from dagster import AllPartitionMapping, AssetCheckResult, AssetDep, Failure

from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.keys import field_band_key
from dagster_project.pipeline import PartitionOutput, artifacts, inputs, observation_asset, png_markdown
from dagster_project.pipeline import reference_characterization, rounded, size_mb
from dagster_project.rendering.preview import image_preview_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.difference import DifferenceParams, DifferenceResult, difference_images
from dagster_project.store import ProductStore

#: a good subtraction leaves S_corr with unit noise; outside this band something is mis-modelled
SCORR_STD_RANGE = (0.8, 1.25)
SCORR_CHECK = "scorr_noise_near_unity"


@dataclass(frozen=True)
class _Pair:
    """The new frame and its field's current reference, as the DifferenceRun started for them records."""

    run_id: int
    new_path: Path
    output: Path
    lineage: dict | None  # None: the field has no reference yet
    blocked: str | None
    is_reference: bool


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
        ref = products.read_planes(Path(pair.lineage["reference_path"]))
        ref_characterization, characterization_path, written = reference_characterization(
            products, pair.lineage["reference_path"], ref, params)
        result = difference_images(new, ref, params, ref_characterization=ref_characterization)
        products.write_maps(pair.output, new.header, {
            "D": result.zogy.D, "SCORR": result.zogy.S_corr, "FLUX": result.zogy.flux,
            "FLUXERR": result.zogy.flux_err, "MASK": result.mask, "REF": result.ref_resampled.data,
        })
        detections_path = products.write_table(pair.output.with_name("detections.ecsv"), result.candidates)
    except Exception as exc:
        with catalog.catalog().session() as session:
            queries.finish_difference_run(session, queries.get_difference_run(session, pair.run_id),
                                          status=RunStatus.FAILED, error_message=f"{type(exc).__name__}: {exc}")
        raise
    return _record(key, pair, result, params, catalog, products, pipeline, detections_path,
                   (characterization_path, written))


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
        is_reference = reference.source_observation_id == observation.id
        if is_reference:
            queries.finish_difference_run(session, run, status=RunStatus.SKIPPED,
                                          error_message="this observation is its field's reference")
            queries.observation_materialized(session, key, pipeline.rebuild_policy())
        return _Pair(run_id=run.id, new_path=Path(observation.preprocess_run.processed_fits_path),
                     output=products.observation_dir(observation.night, observation.observation_id) / "difference.fits",
                     lineage=lineage, blocked=None, is_reference=is_reference)


def _record(key: str, pair: _Pair, result: DifferenceResult, params: DifferenceParams, catalog: CatalogResource,
            products: ProductStore, pipeline: PipelineConfigResource, detections_path: Path,
            characterization: tuple[Path, bool]) -> PartitionOutput:
    """The completed DifferenceRun and what the UI shows; ``characterization``: the reference's, and whether
    this difference wrote it."""
    quality = rounded({k: v for k, v in result.quality.items() if not isinstance(v, str)})
    output = pair.output
    with catalog.catalog().session() as session:
        queries.finish_difference_run(
            session, queries.get_difference_run(session, pair.run_id), status=RunStatus.COMPLETED,
            difference_image_path=str(output), significance_map_path=f"{output}[SCORR]",
            noise_level=result.zogy.d_std, detection_threshold=params.threshold,
            # candidates_found and the observation's "differenced" come with the rows (the candidates asset)
            quality={**quality, "n_detections": len(result.candidates), "timings": result.timings},
            processing_time_seconds=result.timings.get("total"))
        queries.observation_materialized(session, key, pipeline.rebuild_policy())
    scorr_ok = SCORR_STD_RANGE[0] <= result.zogy.scorr_std <= SCORR_STD_RANGE[1]
    preview = image_preview_png(result.zogy.D, mask=result.mask, max_size=256)
    preview_path = products.write_bytes(output.with_name("difference.png"), preview)
    characterization_path, written = characterization
    return PartitionOutput(
        metadata={
            **artifacts(difference_image=output, detections_table=detections_path, difference_preview=preview_path),
            **inputs(calibrated_image=pair.new_path, reference_image=pair.lineage["reference_path"],
                     reference_characterization=characterization_path), "size_mb": size_mb(output),
            # written here only for a reference version frozen without it (reference_image writes it)
            **(artifacts(reference_characterization=characterization_path) if written else {}),
            **pair.lineage, **quality,
            "registration_method": result.quality.get("registration_method", ""),
            **{f"time_{k}_s": round(v, 3) for k, v in result.timings.items()},
            "preview": png_markdown(preview, "difference D"),
        },
        checks=[AssetCheckResult(check_name=SCORR_CHECK, passed=scorr_ok,
                                 metadata={"scorr_std": round(result.zogy.scorr_std, 3)})],
    )


difference_image = observation_asset(
    "difference_image", _difference, kinds={"fits"},
    # Which reference partition an observation uses is resolved through the catalog (see README):
    # the dependency on all reference partitions shows the lineage in the graph.
    deps=["calibrated_image", AssetDep("reference_image", partition_mapping=AllPartitionMapping())],
    checks={SCORR_CHECK: f"Robust std of S_corr within {SCORR_STD_RANGE}."},
    description="ZOGY proper difference (D, S_corr, PSF-photometry flux and error) of the calibrated frame "
    "minus its field's current reference, on the new frame's pixel grid.",
)
