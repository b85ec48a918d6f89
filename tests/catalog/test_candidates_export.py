"""`candidates export`: by default only candidates of current file versions, each row saying version and status."""

import csv
import json
from datetime import timedelta

from dagster_project.catalog import RunStatus, queries
from dagster_project.cli.candidates import EXPORT_COLUMNS
from dagster_project.cli.main import main as cli_main
from tests.catalog import T0, calibrated, raw_file


def _differenced(session, observation, reference, n_candidates: int, x0: float) -> None:
    run = queries.start_difference_run(session, observation, reference, {}, f"diff-{observation.observation_id}")
    queries.finish_difference_run(session, run, status=RunStatus.COMPLETED, difference_image_path="/d")
    queries.record_candidates(session, run, [  # as the pipeline does: differenced with its candidates
        dict(ra=10.0 + i * 1e-3, dec=20.0, pixel_x=x0 + i, pixel_y=5.0, flux=100.0, flux_error=5.0, snr=20.0)
        for i in range(n_candidates)])


def _night_with_a_superseded_frame(catalog) -> None:
    """F001-r-2.fits arrives, is differenced (2 candidates), then arrives again with new pixels (1 candidate)."""
    with catalog.session() as s:
        reference = queries.record_reference(s, "F001", "r", calibrated(s, 1), "/ref", 1.0, 21.0, "first", "d")
        _differenced(s, calibrated(s, 2), reference, 2, x0=100.0)
        _differenced(s, calibrated(s, 3), reference, 1, x0=300.0)  # another frame, never replaced
    with catalog.session() as s:
        second = raw_file(s, "F001-r-2.fits", content="new pixels")  # supersedes version 1, archives its observation
        assert second.version == 2
        obs = queries.create_observation(
            s, survey=second.survey, raw_file=second, observation_id="F001-r-0002-v2", field_name="F001", ra=10.0,
            dec=20.0, observation_time=T0 + timedelta(minutes=2), night="2026-11-21", filter_band="r",
            exposure_time=60.0, fits_url=second.stored_path, instrument="cam1")
        run = queries.start_preprocess_run(s, obs, {}, "pre-v2")
        queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, processed_fits_path="/p-v2")
        _differenced(s, obs, queries.current_reference(s, "F001", "r"), 1, x0=200.0)


def _summary(rows) -> list[tuple]:
    return sorted((r["original_name"], r["raw_file_version"], r["raw_file_status"], r["observation_status"], r["x"])
                  for r in rows)


def test_export_leaves_out_superseded_versions_unless_asked(catalog):
    _night_with_a_superseded_frame(catalog)
    with catalog.session() as s:
        current, every = queries.candidates_for_export(s), queries.candidates_for_export(s, all_versions=True)
    assert _summary(current) == [("F001-r-2.fits", 2, "accepted", "differenced", 200.0),
                                 ("F001-r-3.fits", 1, "accepted", "differenced", 300.0)]
    assert _summary(every) == [("F001-r-2.fits", 1, "superseded", "archived", 100.0),
                               ("F001-r-2.fits", 1, "superseded", "archived", 101.0),
                               ("F001-r-2.fits", 2, "accepted", "differenced", 200.0),
                               ("F001-r-3.fits", 1, "accepted", "differenced", 300.0)]


def test_cli_export_has_version_and_status_columns(catalog, tmp_path, monkeypatch):
    _night_with_a_superseded_frame(catalog)
    monkeypatch.setenv("DATABASE_URL", catalog.url.render_as_string(hide_password=False))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert cli_main(["candidates", "export", "--format", "csv", "--out", str(tmp_path / "c.csv")]) == 0
    assert cli_main(["candidates", "export", "--format", "json", "--out", str(tmp_path / "c.json")]) == 0
    assert cli_main(["candidates", "export", "--all-versions", "--out", str(tmp_path / "all.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert {"raw_file_version", "raw_file_status", "observation_status"} <= set(EXPORT_COLUMNS)
    assert sorted((r["raw_file"], r["raw_file_version"], r["raw_file_status"]) for r in rows) == [
        ("F001-r-2.fits", "2", "accepted"), ("F001-r-3.fits", "1", "accepted")]
    records = json.loads((tmp_path / "c.json").read_text())
    assert sorted((r["raw_file"], r["raw_file_version"], r["observation_status"]) for r in records) == [
        ("F001-r-2.fits", 2, "differenced"), ("F001-r-3.fits", 1, "differenced")]
    every = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert sorted((r["raw_file_version"], r["raw_file_status"], r["observation_status"]) for r in every
                  if r["raw_file"] == "F001-r-2.fits") == [
        ("1", "superseded", "archived"), ("1", "superseded", "archived"), ("2", "accepted", "differenced")]
