"""A result whose target falls on masked pixels of its difference image: a flagged measurement, a READY product."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from dagster import instance_for_test

from dagster_project.catalog.schema import DataProductStatus, ObservationResult
from dagster_project.definitions import defs
from dagster_project.products.requests import RequestSpec, submit_requests
from dagster_project.cli.runner import process_folder
from dagster_project.science.masks import MaskBit
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

pytestmark = pytest.mark.slow


def _mask_the_target(difference_path: Path, ra: float, dec: float) -> tuple[float, float]:
    """Make the pixels around (ra, dec) masked the way ZOGY leaves them: NaN flux, a mask bit set."""
    with fits.open(difference_path, mode="update") as hdul:
        x, y = (float(v) for v in WCS(hdul["FLUX"].header, naxis=2).world_to_pixel_values(ra, dec))
        rows, cols = slice(int(y) - 3, int(y) + 4), slice(int(x) - 3, int(x) + 4)
        for name in ("FLUX", "FLUXERR"):
            hdul[name].data[rows, cols] = np.nan
        hdul["MASK"].data[rows, cols] |= np.uint16(MaskBit.SATURATED)
    return x, y


def test_a_target_on_masked_pixels_gives_a_flagged_measurement_and_a_ready_product(tmp_path):
    night = simulate_night(tmp_path / "night", n_fields=1, n_epochs=3, size=640, n_bias=2, n_flats=2,
                           transients_per_frame=2, seed=5)
    field = night.summary["fields"]["F001"]
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}", instance)
        submit_requests(platform.catalog, [
            RequestSpec(name="f001", target_name="F001 centre", ra=field["ra"], dec=field["dec"], filter_band="r",
                        exposure_time=60, n_epochs=3, cadence_hours=1.0)], "test")
        report = process_folder(tmp_path / "night", platform.settings, wait=True, instance=instance,
                                progress=lambda _: None)
        assert not report.failed
        with platform.catalog.session() as session:
            ready = [r for r in session.query(ObservationResult).all()
                     if r.data_product_status is DataProductStatus.READY]
            assert ready
            uid, revision = str(ready[0].uid), ready[0].assets_revision
            difference_path = Path(ready[0].observation.difference_run.difference_image_path)
        x, y = _mask_the_target(difference_path, field["ra"], field["dec"])

        result = defs.resolve_job_def("products_job").execute_in_process(
            instance=instance, partition_key=uid, resources=platform.resources)

    assert result.success
    metadata = result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert metadata["status"].value == "READY" and metadata["photometry_measured"].value is False
    assert "falls on masked pixels" in metadata["photometry_flag"].value
    with platform.catalog.session() as session:
        row = session.query(ObservationResult).filter(ObservationResult.uid == ready[0].uid).one()
        assert row.data_product_status is DataProductStatus.READY and row.last_built_revision == revision
        latest = max(row.result_processing_runs, key=lambda run: run.started_at)
        outputs = {o.kind: o for o in latest.outputs}
    assert sorted(outputs) == ["candidates_near_target", "cutout_triplet", "forced_photometry", "manifest"]
    photometry = json.loads(Path(outputs["forced_photometry"].path).read_text())
    assert photometry["measured"] is False and "SATURATED" in photometry["flag"]
    assert "SATURATED" in photometry["mask_flags"]
    assert photometry["flux"] is None and photometry["snr"] is None and photometry["detected"] is False
    assert photometry["x"] == pytest.approx(x, abs=0.01) and photometry["y"] == pytest.approx(y, abs=0.01)
    platform.catalog.engine.dispose()
