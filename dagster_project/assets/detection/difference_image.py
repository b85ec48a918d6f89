"""difference_image: the reference registered onto the new frame's grid, flux-scaled and ZOGY-subtracted."""

from pathlib import Path

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    asset,
)

from dagster_project.pipeline.batching import BATCHED_BACKFILL, PartitionOutput, materialize_partitions
from dagster_project.assets.observations.calibrated_image import calibrated_image
from dagster_project.pipeline.metadata import CODE_VERSION, NIGHTLY_FRESHNESS, artifacts, inputs, png_markdown, rounded, size_mb
from dagster_project.pipeline.partitions import observations_partitions
from dagster_project.assets.references.reference_image import reference_characterization, reference_image
from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.keys import field_band_key
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.difference import difference_images
from dagster_project.rendering.preview import image_preview_png

#: a good subtraction leaves S_corr with unit noise; outside this band something is mis-modelled
SCORR_STD_RANGE = (0.8, 1.25)


@asset(
    partitions_def=observations_partitions,
    # Which reference partition an observation uses is resolved through the catalog (see README):
    # the dependency on all reference partitions shows the lineage in the graph.
    deps=[calibrated_image, AssetDep(reference_image, partition_mapping=AllPartitionMapping())],
    group_name="detection",
    kinds={"fits"},
    freshness_policy=NIGHTLY_FRESHNESS,
    code_version=CODE_VERSION,
    backfill_policy=BATCHED_BACKFILL,
    check_specs=[AssetCheckSpec("scorr_noise_near_unity", asset="difference_image",
                                description=f"Robust std of S_corr within {SCORR_STD_RANGE}.")],
    description="ZOGY proper difference (D, S_corr, PSF-photometry flux and error) of the calibrated frame "
    "minus its field's current reference, on the new frame's pixel grid.",
)
def difference_image(context: AssetExecutionContext, catalog: CatalogResource, store: StoreResource,
                     pipeline: PipelineConfigResource) -> MaterializeResult:
    return materialize_partitions(context, lambda key: _difference(key, context.run_id, catalog, store, pipeline))


def _difference(key: str, dagster_run_id: str, catalog: CatalogResource, store: StoreResource,
                pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    params = pipeline.difference_params()
    parameters = {"algorithm": "zogy", "threshold": params.threshold, "interpolation_order": params.interpolation_order,
                  "max_registration_rms_px": params.max_registration_rms_px}
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        reference = queries.current_reference(session, observation.field_name, observation.filter_band)
        field_band = field_band_key(observation.field_name, observation.filter_band)
        run = queries.start_difference_run(session, observation, reference, parameters=parameters,
                                           dagster_run_id=dagster_run_id)
        run_id = run.id
        if reference is None:
            reason = f"no reference image for {field_band} yet; the reference sensor builds one from calibrated frames"
            queries.finish_difference_run(session, run, status=RunStatus.BLOCKED, error_message=reason)
        else:
            lineage = {"reference_partition": field_band, "reference_version": reference.version,
                       "reference_observation": reference.source_observation.observation_id,
                       "reference_path": reference.path}
            is_reference = reference.source_observation_id == observation.id
            if is_reference:
                queries.finish_difference_run(session, run, status=RunStatus.SKIPPED,
                                              error_message="this observation is its field's reference")
                queries.observation_materialized(session, key, pipeline.rebuild_policy())
            new_path = Path(observation.preprocess_run.processed_fits_path)
            output = products.observation_dir(observation.night, observation.observation_id) / "difference.fits"
    if reference is None:
        raise Failure(reason, allow_retries=False)
    if is_reference:
        return PartitionOutput(
            metadata={**lineage, "skipped": "this observation is its field's reference: nothing to subtract"},
            checks=[AssetCheckResult(check_name="scorr_noise_near_unity", passed=True,
                                     metadata={"skipped": "reference frame"})])
    try:
        new = products.read_planes(new_path)
        ref = products.read_planes(Path(lineage["reference_path"]))
        ref_characterization, characterization_path, written = reference_characterization(
            products, lineage["reference_path"], ref, params)
        result = difference_images(new, ref, params, ref_characterization=ref_characterization)
        products.write_maps(output, new.header, {
            "D": result.zogy.D, "SCORR": result.zogy.S_corr, "FLUX": result.zogy.flux,
            "FLUXERR": result.zogy.flux_err, "MASK": result.mask, "REF": result.ref_resampled.data,
        })
        detections_path = products.write_table(output.with_name("detections.ecsv"), result.candidates)
    except Exception as exc:
        with catalog.catalog().session() as session:
            queries.finish_difference_run(session, queries.get_difference_run(session, run_id),
                                          status=RunStatus.FAILED, error_message=f"{type(exc).__name__}: {exc}")
        raise

    quality = rounded({k: v for k, v in result.quality.items() if not isinstance(v, str)})
    with catalog.catalog().session() as session:
        queries.finish_difference_run(
            session, queries.get_difference_run(session, run_id), status=RunStatus.COMPLETED,
            difference_image_path=str(output), significance_map_path=f"{output}[SCORR]",
            noise_level=result.zogy.d_std, detection_threshold=params.threshold,
            # candidates_found and the observation's "differenced" come with the rows (the candidates asset)
            quality={**quality, "n_detections": len(result.candidates), "timings": result.timings},
            processing_time_seconds=result.timings.get("total"))
        queries.observation_materialized(session, key, pipeline.rebuild_policy())
    scorr_ok = SCORR_STD_RANGE[0] <= result.zogy.scorr_std <= SCORR_STD_RANGE[1]
    preview = image_preview_png(result.zogy.D, mask=result.mask, max_size=256)
    preview_path = products.write_bytes(output.with_name("difference.png"), preview)
    return PartitionOutput(
        metadata={
            **artifacts(difference_image=output, detections_table=detections_path, difference_preview=preview_path),
            **inputs(calibrated_image=new_path, reference_image=lineage["reference_path"],
                     reference_characterization=characterization_path), "size_mb": size_mb(output),
            # written here only for a reference version frozen without it (reference_image writes it)
            **(artifacts(reference_characterization=characterization_path) if written else {}),
            **lineage, **quality,
            "registration_method": result.quality.get("registration_method", ""),
            **{f"time_{k}_s": round(v, 3) for k, v in result.timings.items()},
            "preview": png_markdown(preview, "difference D"),
        },
        checks=[AssetCheckResult(check_name="scorr_noise_near_unity", passed=scorr_ok,
                                 metadata={"scorr_std": round(result.zogy.scorr_std, 3)})],
    )
