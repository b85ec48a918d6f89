"""candidates: detections on S_corr written to the catalog, with cutouts of the most significant."""

from pathlib import Path

import numpy as np
from astropy.table import Table
from dagster import AssetCheckResult, MetadataValue

from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.pipeline import PartitionOutput, artifacts, inputs, observation_asset, png_markdown
from dagster_project.rendering.preview import cutout_triplet_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource

#: detection columns kept as real/bogus features on each Candidate row
FEATURE_COLUMNS = ("scorr_peak", "sharpness", "n_opposite_pixels", "ref_distance_px", "masked_fraction", "is_sharp",
                   "is_good", "id")
N_CUTOUTS = 3


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


def _candidates_or_failed(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                          pipeline: PipelineConfigResource) -> PartitionOutput:
    """The observation is ``differenced`` once its candidates are stored, ``failed`` (with why) if they cannot be."""
    try:
        return _record_candidates(key, catalog, store, pipeline)
    except Exception as exc:
        with catalog.catalog().session() as session:
            queries.candidates_not_recorded(session, key, f"candidates not recorded: {type(exc).__name__}: {exc}")
        raise


def _record_candidates(key: str, catalog: CatalogResource, store: StoreResource,
                       pipeline: PipelineConfigResource) -> PartitionOutput:
    products = store.store()
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        run = observation.difference_run
        if run is None or run.status not in (RunStatus.COMPLETED, RunStatus.SKIPPED):
            raise ValueError(f"{key} has no completed difference image")
        if run.status == RunStatus.SKIPPED:
            queries.record_candidates(session, run, [])
            queries.observation_materialized(session, key, pipeline.rebuild_policy())
            return PartitionOutput(
                metadata={"n_candidates": 0, "skipped": run.error_message or "no difference image"},
                checks=[AssetCheckResult(check_name="candidate_count_sane", passed=True)])
        diff_path = Path(run.difference_image_path)
        new_path = Path(observation.preprocess_run.processed_fits_path)
        detections = Table.read(diff_path.with_name("detections.ecsv"), format="ascii.ecsv")
        rows = candidate_rows(detections)
        queries.record_candidates(session, run, rows)  # and the observation is differenced, in this transaction
        queries.observation_materialized(session, key, pipeline.rebuild_policy())
    table_path = products.write_table(diff_path.with_name("candidates.ecsv"), detections)

    positives = sorted((r for r in rows if not r["is_negative"]), key=lambda r: -(r["snr"] or 0))
    metadata = {
        **artifacts(candidates_table=table_path),
        **inputs(difference_image=diff_path, calibrated_image=new_path),
        "n_candidates": len(rows),
        "n_positive": len(positives),
        "n_negative": len(rows) - len(positives),
        "n_flagged": sum(r["is_saturated"] or r["is_edge"] or r["is_blended"] for r in rows),
        "threshold_sigma": pipeline.difference_params().threshold,
        "top_candidates": MetadataValue.md(_markdown_table(positives[:10])),
    }
    if positives:
        maps, _ = products.read_maps(diff_path, ("D", "REF"))
        new = products.read_planes(new_path).data
        for i, row in enumerate(positives[:N_CUTOUTS], start=1):
            png = cutout_triplet_png(new, maps["REF"], maps["D"], row["pixel_x"], row["pixel_y"])
            metadata.update(artifacts(**{f"candidate_cutout_{i}": products.write_bytes(
                diff_path.with_name(f"candidate_{i}.png"), png)}))
            metadata[f"cutout_{i}"] = png_markdown(
                png, f"#{i}: x={row['pixel_x']:.1f} y={row['pixel_y']:.1f} S/N={row['snr']:.1f} (new | ref | diff)")
    return PartitionOutput(
        metadata=metadata,
        checks=[AssetCheckResult(check_name="candidate_count_sane",
                                 passed=len(rows) <= pipeline.max_candidates_per_frame,
                                 metadata={"n_candidates": len(rows),
                                           "limit": pipeline.max_candidates_per_frame})],
    )


def _markdown_table(rows: list[dict]) -> str:
    lines = ["| x | y | RA | Dec | S/N | flux (e-) | flags |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        flags = ",".join(f for f in ("saturated", "blended", "edge") if r[f"is_{f}"]) or "-"
        lines.append(f"| {r['pixel_x']:.1f} | {r['pixel_y']:.1f} | {r['ra']:.5f} | {r['dec']:.5f} | "
                     f"{r['snr'] or 0:.1f} | {r['flux'] or 0:.0f} | {flags} |")
    return "\n".join(lines) if rows else "no positive candidates"


candidates = observation_asset(
    "candidates", _candidates_or_failed, deps=["difference_image"], kinds={"table"},
    checks={"candidate_count_sane": "Fewer candidates than the per-frame limit (more means a bad subtraction)."},
    description="Transient candidates: peaks of |S_corr| above the threshold, with flux, SNR, shape, "
    "flags and real/bogus features, in the catalog (Candidate) and as candidates.ecsv.",
)
