"""candidates: an observation's transient candidates as the difference recorded them in the catalog, as a
table (candidates.ecsv) with cutouts of the most significant, and the check on their number."""

from pathlib import Path

from astropy.table import Table
from dagster import AssetCheckResult, MetadataValue

from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.pipeline import PartitionOutput, artifacts, inputs, observation_asset, png_markdown
from dagster_project.rendering.preview import cutout_triplet_png
from dagster_project.resources import CatalogResource, PipelineConfigResource, StoreResource

N_CUTOUTS = 3


#: the Candidate columns of candidates.ecsv, in order (then the real/bogus features, one column each)
TABLE_COLUMNS = ("ra", "dec", "pixel_x", "pixel_y", "flux", "flux_error", "significance", "snr", "fwhm", "ellipticity",
                 "position_angle", "is_saturated", "is_blended", "is_edge", "is_negative")


def _candidates(key: str, run_id: str, catalog: CatalogResource, store: StoreResource,
                pipeline: PipelineConfigResource) -> PartitionOutput:
    """The candidates the observation's difference recorded, from the catalog: their table, cutouts and check."""
    products = store.store()
    with catalog.catalog().session() as session:
        observation = queries.get_observation(session, key)
        run = observation.difference_run
        if run is None or run.status not in (RunStatus.COMPLETED, RunStatus.SKIPPED):
            raise ValueError(f"{key} has no completed difference image")
        if run.status == RunStatus.SKIPPED:
            return PartitionOutput(
                metadata={"n_candidates": 0, "skipped": run.error_message or "no difference image"},
                checks=[AssetCheckResult(check_name="candidate_count_sane", passed=True)])
        diff_path = Path(run.difference_image_path)
        new_path = Path(observation.preprocess_run.processed_fits_path)
        rows = [{c: getattr(candidate, c) for c in TABLE_COLUMNS} | {"features": dict(candidate.features or {})}
                for candidate in queries.candidates_of_run(session, run)]
    table_path = products.write_table(diff_path.with_name("candidates.ecsv"), _table(rows))

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


def _table(rows: list[dict]) -> Table:
    """Catalog rows as a table: the Candidate columns, then each feature as a column (blank: None as NaN)."""
    features = sorted({name for row in rows for name in row["features"]})
    columns = {c: [row[c] for row in rows] for c in TABLE_COLUMNS}
    columns.update({f: [_number(row["features"].get(f)) for row in rows] for f in features})
    return Table({name: [_number(v) if not isinstance(v, bool) else v for v in values] if values else []
                  for name, values in columns.items()})


def _number(value):
    return float("nan") if value is None else value


def _markdown_table(rows: list[dict]) -> str:
    lines = ["| x | y | RA | Dec | S/N | flux (e-) | flags |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        flags = ",".join(f for f in ("saturated", "blended", "edge") if r[f"is_{f}"]) or "-"
        lines.append(f"| {r['pixel_x']:.1f} | {r['pixel_y']:.1f} | {r['ra']:.5f} | {r['dec']:.5f} | "
                     f"{r['snr'] or 0:.1f} | {r['flux'] or 0:.0f} | {flags} |")
    return "\n".join(lines) if rows else "no positive candidates"


candidates = observation_asset(
    "candidates", _candidates, deps=["difference_image"], kinds={"table"},
    checks={"candidate_count_sane": "Fewer candidates than the per-frame limit (more means a bad subtraction)."},
    description="Transient candidates of the difference (recorded in the catalog by difference_image), with "
    "flux, SNR, shape, flags and real/bogus features, as candidates.ecsv and cutouts of the most significant.",
)
