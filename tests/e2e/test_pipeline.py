"""End to end: a simulated night through sensors, assets and catalog, on the embedded default."""

import csv
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from dagster import AssetKey, instance_for_test
from dagster_project.operations.mirror import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from sqlalchemy import func, select

from dagster_project.catalog import queries
from dagster_project.catalog.schema import Candidate, DifferenceRun, Observation, ObservationStatus, RunStatus
from dagster_project.catalog.schema import Artifact, ProcessingRun, ProcessingStep
from dagster_project.cli.main import main as cli_main
from dagster_project.definitions import defs
from dagster_project.cli.runner import process_folder
from dagster_project.operations.mirror import mirror_run
from dagster_project.simulation.recovery import match_injections
from dagster_project.simulation.night import load_truth, simulate_night
from tests.conftest import fresh_postgres_database
from tests.platform import make_platform

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """One field, three epochs, 1024x1024."""
    night = tmp_path_factory.mktemp("night")
    simulate_night(night, n_fields=1, n_epochs=3, size=1024, n_bias=3, n_flats=3, transients_per_frame=8, seed=7)
    return night


@contextmanager
def _catalog_url(backend: str, root):
    if backend == "sqlite":
        yield f"sqlite:///{root / 'catalog.sqlite'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def processed(request, night, tmp_path_factory):
    """The night processed by `process` into a fresh Dagster instance and catalog (SQLite, then PostgreSQL)."""
    root = tmp_path_factory.mktemp(f"platform_{request.param}")
    with _catalog_url(request.param, root) as url, instance_for_test() as instance:
        platform = make_platform(root, url, instance)
        report = process_folder(night, platform.settings, wait=True, instance=instance, progress=lambda _: None)
        yield platform, report, load_truth(night / "truth.csv"), night
        platform.catalog.engine.dispose()


def test_every_observation_is_processed(processed):
    platform, report, _, _ = processed
    assert not report.failed, [(r.job_name, r.partition_key) for r in report.failed]
    jobs = sorted(r.job_name for r in report.runs)
    assert jobs == ["calibrate_job"] * 3 + ["difference_job"] * 3 + ["reference_job"]
    with platform.catalog.session() as session:
        statuses = session.scalars(select(Observation.status)).all()
        assert statuses == [ObservationStatus.DIFFERENCED] * 3
        runs = session.scalars(select(DifferenceRun)).all()
        assert sorted(r.status for r in runs) == [RunStatus.COMPLETED] * 2 + [RunStatus.SKIPPED]
        assert all(r.reference_version == 1 and r.reference_image_id is not None for r in runs)
        for run in runs:
            if run.status == RunStatus.COMPLETED:
                assert Path(run.difference_image_path).exists()
                assert 0.8 < run.quality["scorr_std"] < 1.25
                assert run.quality["registration_rms_px"] < 0.3


def test_bright_injected_transients_are_found(processed):
    platform, _, truth, _ = processed
    with platform.catalog.session() as session:
        detected = [dict(r, file=r["original_name"], is_negative="negative" in r["flags"])
                    for r in queries.candidates_for_export(session)]
    report = match_injections(truth, detected, bright_snr=10.0)
    assert report.n_bright >= 5
    assert report.bright_fraction >= 0.8, report
    false_positives = len([d for d in detected if not d["is_negative"]]) - report.n_recovered
    assert false_positives <= 6  # two subtracted frames of 1 Mpix each


def test_dagster_saw_every_partition_materialized(processed):
    platform, report, _, _ = processed
    keys = set(platform.instance.get_dynamic_partitions("observations"))
    assert len(keys) == 3
    for asset in ("raw_observation", "calibrated_image", "difference_image", "candidates"):
        assert platform.instance.get_materialized_partitions(AssetKey(asset)) == keys, asset
    assert platform.instance.get_materialized_partitions(AssetKey("reference_image")) == {"F001-r"}


def test_rematerializing_a_partition_replaces_rows(processed):
    platform, _, _, _ = processed
    with platform.catalog.session() as session:
        before = session.scalar(select(func.count()).select_from(Candidate))
        target = session.scalars(select(DifferenceRun).where(DifferenceRun.status == RunStatus.COMPLETED)).first()
        key, retries = target.observation.observation_id, target.retry_count
    result = defs.resolve_job_def("difference_job").execute_in_process(
        instance=platform.instance, partition_key=key, resources=platform.resources)
    assert result.success
    with platform.catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(Candidate)) == before
        assert session.scalar(select(func.count()).select_from(DifferenceRun)) == 3
        run = session.scalars(select(DifferenceRun).join(DifferenceRun.observation)
                              .where(Observation.observation_id == key)).one()
        assert run.retry_count == retries + 1


def test_the_reference_is_characterized_once_per_version(processed):
    """Frozen with the reference, read by every difference; one frozen without it gets it written once."""
    platform, _, _, _ = processed
    with platform.catalog.session() as session:
        target = session.scalars(select(DifferenceRun).where(DifferenceRun.status == RunStatus.COMPLETED)).first()
        key, reference_path = target.observation.observation_id, Path(target.reference_image.path)
        difference_path = Path(target.difference_image_path)
    stored = reference_path.with_suffix(".char.npz")
    frozen = platform.instance.get_latest_materialization_event(AssetKey("reference_image")).asset_materialization
    assert frozen.metadata["artifact_reference_characterization"].value == str(stored)
    written_at = stored.stat().st_mtime_ns

    def difference_metadata():
        result = defs.resolve_job_def("difference_job").execute_in_process(
            instance=platform.instance, partition_key=key, resources=platform.resources)
        assert result.success
        with fits.open(difference_path) as hdul:
            maps = {name: hdul[name].data.copy() for name in ("D", "SCORR", "MASK")}
        return result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata, maps

    metadata, reused = difference_metadata()
    assert "artifact_reference_characterization" not in metadata
    assert stored.stat().st_mtime_ns == written_at
    # a version frozen before characterizations were stored: the next difference writes it, the same numbers
    stored.unlink()
    metadata, computed = difference_metadata()
    assert metadata["artifact_reference_characterization"].value == str(stored) and stored.exists()
    assert all(np.array_equal(reused[name], computed[name], equal_nan=True) for name in reused)
    written_at = stored.stat().st_mtime_ns
    metadata, _ = difference_metadata()
    assert "artifact_reference_characterization" not in metadata and stored.stat().st_mtime_ns == written_at


def test_a_batch_run_rematerializes_each_partition_of_its_range(processed):
    """What a batched backfill run does: one run, every partition of the range, each with its own files."""
    platform, _, _, _ = processed
    keys = platform.instance.get_dynamic_partitions("observations")
    with platform.catalog.session() as session:
        before = session.scalar(select(func.count()).select_from(Candidate))
    result = defs.resolve_job_def("observation_job").execute_in_process(
        instance=platform.instance, resources=platform.resources,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]})
    assert result.success
    materialized = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        materialized.setdefault(materialization.asset_key.to_user_string(), {})[materialization.partition] = \
            materialization.metadata
    assert {asset: sorted(parts) for asset, parts in materialized.items()} == {
        asset: sorted(keys) for asset in ("raw_observation", "calibrated_image", "difference_image", "candidates")}
    calibrated = {key: meta["artifact_calibrated_image"].value for key, meta in materialized["calibrated_image"].items()}
    assert len(set(calibrated.values())) == 3 and all(key in path for key, path in calibrated.items())
    assert all(meta["batch_size"].value == 3 for meta in materialized["candidates"].values())
    # provenance: one run, each partition's files as its own artifacts
    mirror_run(platform.instance, platform.catalog, platform.settings.store_dir, result.run_id)
    with platform.catalog.session() as session:
        run = session.scalar(select(ProcessingRun).where(ProcessingRun.dagster_run_id == result.run_id))
        assert sorted(run.partition_keys) == sorted(keys)
        calibrated_artifacts = session.scalars(select(Artifact).join(Artifact.step).where(
            Artifact.role == "calibrated_image", ProcessingStep.processing_run_id == run.id)).all()
        assert sorted(a.partition_key for a in calibrated_artifacts) == sorted(keys)
    with platform.catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(Candidate)) == before  # replaced, not added
        assert session.scalar(select(func.count()).select_from(DifferenceRun)) == 3


def test_processing_the_same_folder_again_does_nothing(processed):
    platform, _, _, night = processed
    again = process_folder(night, platform.settings, wait=False, instance=platform.instance, progress=lambda _: None)
    assert again.runs == [] and again.waiting_files == []


def test_candidates_export_csv_and_json(processed, tmp_path, monkeypatch):
    platform, _, _, _ = processed
    monkeypatch.setenv("DATABASE_URL", platform.settings.database_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert cli_main(["candidates", "export", "--format", "csv", "--out", str(tmp_path / "c.csv")]) == 0
    assert cli_main(["candidates", "export", "--format", "json", "--out", str(tmp_path / "c.json")]) == 0
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    records = json.loads((tmp_path / "c.json").read_text())
    assert rows and len(rows) == len(records)
    assert set(rows[0]) == {"raw_file", "raw_file_version", "raw_file_status", "observation_id", "observation_status",
                            "ra", "dec", "x", "y", "snr", "flux", "flux_error", "flags"}
    assert {(r["raw_file_version"], r["raw_file_status"], r["observation_status"]) for r in rows} == {
        ("1", "accepted", "differenced")}
    assert all(r["raw_file"].endswith(".fits") and 0 <= float(r["ra"]) < 360 for r in rows)
