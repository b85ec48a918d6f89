"""End to end: requests fulfilled by a simulated night, products built, and rebuilt once after a new reference."""

from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, instance_for_test

from dagster_project.catalog.queries import results_status_table
from dagster_project.catalog.schema import ObservationResult, ObservationResultProcessingRun
from dagster_project.ingest.landing import sha256_of
from dagster_project.products.requests import RequestSpec, submit_requests
from dagster_project.cli.runner import process_folder, rebuild_reference
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform_with_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results_platform")
    night = simulate_night(root / "night", n_fields=1, n_epochs=3, size=1024, n_bias=3, n_flats=3,
                           transients_per_frame=4, seed=5)
    field = night.summary["fields"]["F001"]
    with instance_for_test() as instance:
        platform = make_platform(root, f"sqlite:///{root / 'catalog.sqlite'}", instance)
        submit_requests(platform.catalog, [
            RequestSpec(name="f001", target_name="F001 centre", ra=field["ra"], dec=field["dec"], filter_band="r",
                        exposure_time=60, n_epochs=3, cadence_hours=1.0),
            RequestSpec(name="elsewhere", target_name="nothing here", ra=(field["ra"] + 30) % 360, dec=0.0,
                        filter_band="r", exposure_time=60, n_epochs=1),
        ], "test")
        report = process_folder(root / "night", platform.settings, wait=True, instance=instance,
                                progress=lambda _: None)
        yield platform, report


def _product_runs(platform) -> Counter:
    with platform.catalog.session() as s:
        return Counter((str(r.result.uid), r.built_from_revision, r.status.value)
                       for r in s.query(ObservationResultProcessingRun).all())


def test_results_fulfilled_and_products_built(platform_with_results):
    platform, report = platform_with_results
    assert not report.failed
    with platform.catalog.session() as s:
        rows = {(r["request"], r["cell"]): r for r in results_status_table(s)}
        f001 = [rows[("f001", f"e{e}/s0/c0")] for e in range(3)]
        assert [r["fulfillment"] for r in f001] == ["fulfilled"] * 3
        assert sorted(r["products"] for r in f001) == ["READY", "READY", "SKIPPED"]  # one frame is the reference
        assert all(r["built"] == r["revision"] for r in f001)
        assert rows[("elsewhere", "e0/s0/c0")]["products"] == "PENDING"
        assert rows[("elsewhere", "e0/s0/c0")]["fulfillment"] in ("pending_dispatch", "dispatched")
        for result in s.query(ObservationResult).all():
            if result.data_product_status.value != "READY":
                continue
            run = [r for r in result.result_processing_runs if r.status.value == "succeeded"][-1]
            assert sorted(o.kind for o in run.outputs) == [
                "candidates_near_target", "cutout_triplet", "forced_photometry", "manifest"]
            for output in run.outputs:
                assert Path(output.path).exists() and sha256_of(Path(output.path)) == output.checksum
            photometry = next(o for o in run.outputs if o.kind == "forced_photometry").product_metadata
            # the simulator writes no zero point: the limit is instrumental, and says so
            assert (photometry["limit_mag_system"], photometry["limit_mag_unit"]) == ("instrumental", "mag of e-/s")
            assert photometry["limit_mag_5sigma"] < 0
    built = platform.instance.get_materialized_partitions(AssetKey("observation_products"))
    assert len(built) == 3


def test_new_reference_rebuilds_exactly_the_affected_results_once(platform_with_results):
    platform, _ = platform_with_results
    before = _product_runs(platform)
    with platform.catalog.session() as s:
        revisions = {str(r.uid): r.assets_revision for r in s.query(ObservationResult).all()}
    report = rebuild_reference("F001-r", platform.settings, instance=platform.instance, progress=lambda _: None)
    assert not report.failed
    new_runs = _product_runs(platform) - before
    with platform.catalog.session() as s:
        results = {str(r.uid): r for r in s.query(ObservationResult).all()}
        rebuilt = {uid for uid, _, _ in new_runs}
        moved = {uid for uid, r in results.items() if r.assets_revision > revisions[uid]}
        differenced = {uid for uid in moved if results[uid].data_product_status.value == "READY"}
        assert rebuilt == differenced and len(rebuilt) == 2
        assert all(count == 1 for count in new_runs.values())  # once per result and revision
        for uid in rebuilt:
            assert results[uid].last_built_revision == results[uid].assets_revision
        assert results_status_table(s)  # and the elsewhere request was not touched:
        assert all(r.assets_revision == 0 for r in results.values() if r.request.name == "elsewhere")
