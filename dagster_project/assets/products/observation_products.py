"""observation_products: one ObservationResult's products, rebuilt when its revision moves on.

Partitioned by result uid. A build records the ``assets_revision`` it starts from
(ObservationResultProcessingRun), writes the products, and registers each as an
ObservationResultProcessingRunOutput. See docs/observation_results.md.
"""

import json
from datetime import timedelta
from pathlib import Path

from astropy.wcs import WCS
from dagster import AllPartitionMapping, AssetCheckResult, AssetDep, Failure, FreshnessPolicy, MetadataValue

from dagster_project.catalog import Candidate, RunStatus, cone_search, queries
from dagster_project.catalog.schema import DataProductStatus, FulfillmentStatus, utcnow
from dagster_project.ingest.landing import sha256_of
from dagster_project.pipeline import CODE_VERSION, PartitionOutput, artifacts, inputs, observation_asset, png_markdown
from dagster_project.pipeline import results_partitions
from dagster_project.rendering.preview import cutout_triplet_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource
from dagster_project.science.forced_photometry import forced_photometry
from dagster_project.science.magnitudes import limiting_magnitude
from dagster_project.store import ProductStore

#: candidates within this distance of the target are reported with the result
NEAR_TARGET_ARCSEC = 5.0


class _Unbuildable(Exception):
    def __init__(self, outcome: DataProductStatus, reason: str):
        super().__init__(reason)
        self.outcome = outcome


def _build_products(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                    pipeline: PipelineConfigResource) -> PartitionOutput:
    policy = pipeline.rebuild_policy()
    products = store.store()
    now = utcnow()
    with catalog.catalog().session() as session:
        result = queries.get_result(session, key)
        if result.data_product_status is DataProductStatus.SKIPPED:
            return PartitionOutput(metadata={"status": "SKIPPED", "reason": result.status_reason or ""},
                                   checks=_checks(session, result, now, policy))
        run = queries.claim_build(session, result, run_id, now)
        build_id, revision = run.id, run.built_from_revision
        try:
            plan = _plan(session, result)
        except _Unbuildable as unbuildable:
            plan = unbuildable
    if isinstance(plan, _Unbuildable):
        status = _finish(catalog, build_id, plan.outcome, str(plan), policy)
        if plan.outcome is DataProductStatus.BLOCKED:
            raise Failure(f"products blocked: {plan}", allow_retries=False)
        with catalog.catalog().session() as session:
            checks = _checks(session, queries.get_result(session, key), utcnow(), policy)
        return PartitionOutput(metadata={"status": status.value, "reason": str(plan), "revision": revision},
                               checks=checks)
    try:
        outputs = _build(products, plan, key, revision)
        with catalog.catalog().session() as session:
            processing_run = queries.get_result_processing_run(session, build_id)
            for kind, (path, meta) in outputs.items():
                queries.add_output(session, processing_run, kind=kind, path=str(path),
                                   size_bytes=path.stat().st_size, checksum=sha256_of(path), metadata=meta)
    except Exception as exc:
        _finish(catalog, build_id, DataProductStatus.FAILED, f"{type(exc).__name__}: {exc}", policy)
        raise
    status = _finish(catalog, build_id, DataProductStatus.READY, None, policy)
    photometry = outputs["forced_photometry"][1]
    with catalog.catalog().session() as session:
        result = queries.get_result(session, key)
        checks = _checks(session, result, utcnow(), policy)
    return PartitionOutput(
        metadata={
            "status": status.value, "revision": revision, "request": plan["request"], "cell": plan["cell"],
            "observation": plan["observation_key"],
            "flux_e": _rounded(photometry["flux"], 1), "flux_err_e": _rounded(photometry["flux_err"], 1),
            "snr": _rounded(photometry["snr"], 2), "detected": photometry["detected"],
            "limit_mag_5sigma": _rounded(photometry["limit_mag_5sigma"], 3),
            "limit_mag_system": f"{photometry['limit_mag_system']} ({photometry['limit_mag_unit']})"
            if photometry["limit_mag_system"] else "-",
            "photometry_measured": photometry["measured"], "photometry_flag": photometry["flag"] or "",
            "n_candidates_near_target": len(outputs["candidates_near_target"][1]["candidates"]),
            "products": MetadataValue.md("\n".join(f"- **{k}**: `{p.name}`" for k, (p, _) in outputs.items())),
            **artifacts(**{k: p for k, (p, _) in outputs.items()}),
            **inputs(difference_image=plan["difference_path"], calibrated_image=plan["calibrated_path"]),
            "cutout": png_markdown(outputs["cutout_triplet"][0].read_bytes(), "target: new | reference | difference"),
        },
        checks=checks,
    )


def _plan(session, result) -> dict:
    """Everything the build needs, read in one transaction; raises _Unbuildable for BLOCKED/SKIPPED."""
    if result.fulfillment_status is FulfillmentStatus.CANCELED:
        raise _Unbuildable(DataProductStatus.SKIPPED, "the result was canceled")
    observation = result.observation
    if observation is None:
        raise _Unbuildable(DataProductStatus.BLOCKED, "no frame has fulfilled this result yet")
    difference = observation.difference_run
    if difference is not None and difference.status is RunStatus.SKIPPED:
        raise _Unbuildable(DataProductStatus.SKIPPED,
                           f"{observation.observation_id} is its field's reference: there is no difference image")
    if difference is None or difference.status is not RunStatus.COMPLETED:
        state = "missing" if difference is None else difference.status.value
        raise _Unbuildable(DataProductStatus.BLOCKED,
                           f"difference image of {observation.observation_id} is {state}")
    request = result.request
    near = cone_search(session, Candidate, request.ra, request.dec, NEAR_TARGET_ARCSEC / 3600.0,
                       Candidate.observation_id == observation.id)
    return {
        "uid": str(result.uid), "request": request.name, "cell": result.cell, "revision": result.assets_revision,
        "target": {"name": request.target_name, "ra": request.ra, "dec": request.dec},
        "observation_key": observation.observation_id, "observation_time": observation.observation_time.isoformat(),
        "exposure_time": observation.exposure_time, "band": observation.filter_band,
        "difference_path": difference.difference_image_path,
        "calibrated_path": observation.preprocess_run.processed_fits_path,
        "reference_version": difference.reference_version,
        "near": [{"ra": c.ra, "dec": c.dec, "x": c.pixel_x, "y": c.pixel_y, "snr": c.snr, "flux": c.flux,
                  "flux_error": c.flux_error, "is_negative": c.is_negative} for c in near],
    }


def _build(products: ProductStore, plan: dict, key: str, revision: int) -> dict[str, tuple[Path, dict]]:
    def file(kind: str) -> Path:  # the store names the files (store.RESULT_FILES)
        return products.result_file(key, revision, kind)

    maps, header = products.read_maps(Path(plan["difference_path"]), ("FLUX", "FLUXERR", "D", "REF", "MASK"))
    new = products.read_planes(Path(plan["calibrated_path"])).data
    target = plan["target"]
    # a target on masked pixels is an outcome (measured=False, with its flag), not a failed build
    photometry = forced_photometry(maps["FLUX"], maps["FLUXERR"], WCS(header, naxis=2), target["ra"], target["dec"],
                                   plan["exposure_time"], mask=maps["MASK"])
    record = {**photometry.as_dict(), "time": plan["observation_time"], "band": plan["band"],
              "reference_version": plan["reference_version"], "units": "e- (new image); mag = -2.5 log10(e-/s)"}
    # the 5-sigma limit in the system the header allows (calibrated with a MAGZP), and said so
    limit = limiting_magnitude(5.0 * photometry.flux_err, header) if photometry.flux_err else None
    record.update(limit_mag_5sigma=limit.value if limit else None, limit_mag_system=limit.system if limit else None,
                  limit_mag_unit=limit.unit if limit else None)
    outputs = {
        "forced_photometry": (products.write_bytes(file("forced_photometry"), _json(record)), record),
        "candidates_near_target": (
            products.write_bytes(file("candidates_near_target"), _json(plan["near"])),
            {"radius_arcsec": NEAR_TARGET_ARCSEC, "candidates": plan["near"]}),
        "cutout_triplet": (
            products.write_bytes(file("cutout_triplet"),
                                 cutout_triplet_png(new, maps["REF"], maps["D"], photometry.x, photometry.y)),
            {"x": photometry.x, "y": photometry.y}),
    }
    manifest = {"result": plan["uid"], "request": plan["request"], "cell": plan["cell"],
                "built_from_revision": plan["revision"], "observation": plan["observation_key"],
                "code_version": CODE_VERSION,
                "products": {k: {"path": str(p), "sha256": sha256_of(p)} for k, (p, _) in outputs.items()}}
    outputs["manifest"] = (products.write_bytes(file("manifest"), _json(manifest)), {"n_products": len(outputs)})
    return outputs


def _finish(catalog: CatalogResource, run_id, outcome: DataProductStatus, reason: str | None, policy) -> DataProductStatus:
    with catalog.catalog().session() as session:
        run = queries.get_result_processing_run(session, run_id)
        return queries.finish_build(session, run, outcome, utcnow(), reason, policy=policy).data_product_status


def _checks(session, result, now, policy) -> list[AssetCheckResult]:
    overdue = queries.results_dirty_longer_than(session, now - policy.max_delay - CHECK_GRACE)
    return [
        AssetCheckResult(check_name="built_from_current_revision",
                         passed=result.data_product_status in (DataProductStatus.READY, DataProductStatus.SKIPPED),
                         metadata={"assets_revision": result.assets_revision,
                                   "last_built_revision": result.last_built_revision or 0,
                                   "status": result.data_product_status.value}),
        AssetCheckResult(check_name="no_result_dirty_too_long", passed=not overdue,
                         metadata={"n_overdue": len(overdue),
                                   "overdue": ", ".join(str(r.uid) for r in overdue[:20]) or "none"}),
    ]


#: slack on top of the debounce cap before a waiting result counts as overdue
CHECK_GRACE = timedelta(minutes=10)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _json(value) -> bytes:
    return json.dumps(value, indent=1, default=str).encode()


observation_products = observation_asset(
    "observation_products", _build_products, partitions_def=results_partitions, kinds={"json", "png"},
    # which observation feeds which result is resolved through the catalog, as for references
    deps=[AssetDep("candidates", partition_mapping=AllPartitionMapping())],
    # an upstream change marks products stale; they must be rebuilt within the debounce cap
    freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(minutes=20)),
    checks={
        "built_from_current_revision": "The products reflect the result's current assets_revision (READY).",
        "no_result_dirty_too_long": "No result anywhere has waited longer than the debounce cap plus the check grace.",
    },
    description="Products of one ObservationResult: forced PSF photometry of the target on the difference image, "
    "the candidates near the target, a new/reference/difference cutout, and a manifest.",
)
