"""The named queries and lifecycle operations, on both backends."""

import threading
from datetime import UTC

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dagster_project.catalog import (
    Candidate,
    CandidateStatus,
    Catalog,
    FrameType,
    IllegalTransition,
    MasterKind,
    NotFound,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    RunStatus,
    Survey,
    healpix_index,
    queries,
)
from tests.catalog import calibrated, observation, raw_file, sha


# --- surveys and raw files ------------------------------------------------------------------------------------------

def test_get_or_create_survey(catalog):
    with catalog.session() as s:
        first = queries.get_or_create_survey(s, "ZTF", description="first")
        again = queries.get_or_create_survey(s, "ZTF", description="ignored")
        assert again is first and again.description == "first"
    with catalog.session() as s:
        assert queries.get_or_create_survey(s, "ZTF").id == first.id


def test_new_content_under_the_same_name_is_the_next_version(catalog):
    with catalog.session() as s:
        v1 = raw_file(s, "a.fits", content=1)
        assert queries.next_raw_file_version(s, "a.fits") == 2
        v2 = raw_file(s, "a.fits", content=2)
        other = raw_file(s, "b.fits", content=3)
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    with catalog.session() as s:
        assert s.get(RawDataFile, v1.id).status is RawFileStatus.SUPERSEDED
        assert s.get(RawDataFile, v2.id).status is RawFileStatus.ACCEPTED
        assert queries.latest_raw_file_version(s, "a.fits").id == v2.id
        assert queries.latest_raw_file_version(s, "never.fits") is None
        assert queries.next_raw_file_version(s, "never.fits") == 1


def test_replacing_a_science_frame_archives_its_observation(catalog):
    with catalog.session() as s:
        old = observation(s)  # raw file "F001-r-0.fits"
        new_raw = raw_file(s, old.raw_file.original_name, content="re-reduced by the telescope")
        assert old.raw_file.status is RawFileStatus.SUPERSEDED
        assert old.status is ObservationStatus.ARCHIVED
        assert old.status_reason == "raw file superseded by F001-r-0.fits version 2"
        assert new_raw.status is RawFileStatus.ACCEPTED


def test_identical_content_is_a_duplicate_not_a_version(catalog):
    with catalog.session() as s:
        original = raw_file(s, "a.fits", content=1)
        with pytest.raises(ValueError, match="register_duplicate_file"):
            raw_file(s, "a.fits", content=1)
        dup = queries.register_duplicate_file(s, original=str(original.id), original_name="a.fits",
                                              landing_path="/landing/a.fits", stored_path="/q/duplicates/a.fits",
                                              size_bytes=2880, sha256=sha(1))
        assert (dup.status, dup.duplicate_of_id, dup.version) == (RawFileStatus.DUPLICATE, original.id, 2)
        assert queries.find_raw_file_by_sha256(s, sha(1)).id == original.id  # never the duplicate record
        assert s.get(RawDataFile, original.id).status is RawFileStatus.ACCEPTED  # not superseded by a duplicate
        assert queries.find_raw_file_by_sha256(s, sha(2)) is None


def test_a_rejected_file_does_not_supersede_the_good_version(catalog):
    with catalog.session() as s:
        good = raw_file(s, "a.fits", content=1)
        bad = queries.register_quarantined_file(s, original_name="a.fits", reason="truncated: 100 bytes",
                                                landing_path="/landing/a.fits", stored_path="/q/a.fits",
                                                size_bytes=100, sha256=sha(2))
        assert (bad.status, bad.quarantine_reason, bad.version) == (RawFileStatus.QUARANTINED,
                                                                    "truncated: 100 bytes", 2)
        assert good.status is RawFileStatus.ACCEPTED


def test_quarantine_an_accepted_file(catalog):
    with catalog.session() as s:
        raw = raw_file(s, "a.fits")
    with catalog.session() as s:  # the row comes from an earlier session
        raw = queries.quarantine_raw_file(s, raw, "/q/a.fits", "NaN-filled data section")
    assert (raw.status, raw.stored_path, raw.quarantine_reason) == (RawFileStatus.QUARANTINED, "/q/a.fits",
                                                                    "NaN-filled data section")
    with pytest.raises(IllegalTransition), catalog.session() as s:
        queries.quarantine_raw_file(s, raw, "/q/again.fits", "twice")


def test_calibration_frames_are_the_accepted_ones_of_that_night(catalog):
    with catalog.session() as s:
        for n in range(3):
            raw_file(s, f"bias{n}.fits", content=("bias", n), frame_type=FrameType.BIAS, filter_band=None)
        raw_file(s, "bias-other-night.fits", content="x", frame_type=FrameType.BIAS, night="2026-11-22")
        raw_file(s, "bias-other-cam.fits", content="y", frame_type=FrameType.BIAS, instrument="cam2")
        late = raw_file(s, "bias2.fits", content="new bias2", frame_type=FrameType.BIAS)  # supersedes bias2 v1
        queries.quarantine_raw_file(s, raw_file(s, "bias3.fits", content="z", frame_type=FrameType.BIAS), "/q", "bad")
        raw_file(s, "flat-r.fits", content="fr", frame_type=FrameType.FLAT, filter_band="r")
        raw_file(s, "flat-g.fits", content="fg", frame_type=FrameType.FLAT, filter_band="g")

        biases = queries.calibration_frames(s, "cam1", "2026-11-21", FrameType.BIAS)
        assert {(b.original_name, b.version) for b in biases} == {("bias0.fits", 1), ("bias1.fits", 1),
                                                                  ("bias2.fits", 2)}
        assert late in biases
        flats = queries.calibration_frames(s, "cam1", "2026-11-21", "flat", filter_band="g")
        assert [f.original_name for f in flats] == ["flat-g.fits"]


def test_masters_upsert_and_latest(catalog):
    with catalog.session() as s:
        first = queries.upsert_master(s, kind=MasterKind.BIAS, instrument="cam1", night="2026-11-20",
                                      filter_band="r", path="/m/b1.fits", n_frames=5, input_file_ids=["a"])
        assert first.filter_band == ""  # bias masters are band-free
        queries.upsert_master(s, kind="flat", instrument="cam1", night="2026-11-20", filter_band="r",
                              path="/m/f.fits", n_frames=7, input_file_ids=[], stats={"median": 1.0})
    with catalog.session() as s:
        rebuilt = queries.upsert_master(s, kind=MasterKind.BIAS, instrument="cam1", night="2026-11-20",
                                        filter_band=None, path="/m/b2.fits", n_frames=9, input_file_ids=["a", "b"],
                                        stats={"median": 1000.5})
    assert rebuilt.id == first.id and rebuilt.created_at == first.created_at
    with catalog.session() as s:
        master = queries.latest_master(s, "cam1", "bias", "g", "2026-11-22")
        assert (master.id, master.path, master.n_frames, master.input_file_ids, master.stats) == (
            first.id, "/m/b2.fits", 9, ["a", "b"], {"median": 1000.5})
        assert master.updated_at > first.updated_at
        assert queries.latest_master(s, "cam1", MasterKind.BIAS, None, "2026-11-19") is None
        assert queries.latest_master(s, "cam1", MasterKind.FLAT, "r", "2026-11-21").path == "/m/f.fits"
        assert queries.latest_master(s, "cam1", MasterKind.FLAT, "g", "2026-11-21") is None
        queries.upsert_master(s, kind=MasterKind.BIAS, instrument="cam1", night="2026-11-21", filter_band=None,
                              path="/m/b3.fits", n_frames=3, input_file_ids=[])
        assert queries.latest_master(s, "cam1", MasterKind.BIAS, None, "2026-11-21").path == "/m/b3.fits"
        assert queries.latest_master(s, "cam1", MasterKind.BIAS, None, "2026-11-20").path == "/m/b2.fits"
        assert s.scalar(sa.select(sa.func.count()).select_from(PreprocessRun)) == 0



def test_masters_and_nights_with_calibration(catalog):
    with catalog.session() as s:
        for n, night in enumerate(("2026-11-19", "2026-11-19", "2026-11-18", "2026-11-22", "2026-11-22")):
            raw_file(s, f"flat{n}.fits", content=("flat", n), frame_type=FrameType.FLAT, night=night,
                     filter_band="g" if n == 4 else "r")
        for n in range(2):
            raw_file(s, f"bias{n}.fits", content=("bias", n), frame_type=FrameType.BIAS, filter_band=None,
                     night="2026-11-17")
        queries.upsert_master(s, kind=MasterKind.FLAT, instrument="cam1", night="2026-11-16", filter_band="r",
                              path="/m/f16.fits", n_frames=3, input_file_ids=[])
        queries.upsert_master(s, kind=MasterKind.BIAS, instrument="cam1", night="2026-11-20", filter_band=None,
                              path="/m/b20.fits", n_frames=3, input_file_ids=[])
        flats = dict(kind=MasterKind.FLAT, instrument="cam1", filter_band="r")
        # two r flats on the 19th; one on the 18th and one on the 22nd are too few; the 16th has a master
        assert queries.nights_with_calibration(s, **flats, min_frames=2) == {"2026-11-19", "2026-11-16"}
        assert queries.nights_with_calibration(s, **flats, min_frames=1) == {
            "2026-11-16", "2026-11-18", "2026-11-19", "2026-11-22"}
        assert queries.nights_with_calibration(s, kind=MasterKind.BIAS, instrument="cam1", filter_band="r",
                                               min_frames=2) == {"2026-11-17", "2026-11-20"}
        assert queries.nights_with_calibration(s, **{**flats, "instrument": "cam2"}, min_frames=1) == set()
        assert queries.master_of_night(s, **flats, night="2026-11-16").path == "/m/f16.fits"
        assert queries.master_of_night(s, **flats, night="2026-11-19") is None
        assert queries.master_of_night(s, **{**flats, "filter_band": "g"}, night="2026-11-16") is None
        assert queries.master_of_night(s, kind=MasterKind.BIAS, instrument="cam1", filter_band="r",
                                       night="2026-11-20").path == "/m/b20.fits"  # bias masters are band-free


def test_astrometric_anchors_and_solved_position(catalog):
    with catalog.session() as s:
        new = observation(s, 0)
        with_wcs = observation(s, 1)
        run = queries.start_preprocess_run(s, with_wcs, {}, "pre-1")
        queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, processed_fits_path="/p1", wcs_aligned=True)
        calibrated(s, 2)  # calibrated, but without a WCS
        other_field = observation(s, 3, field_name="F002")
        run = queries.start_preprocess_run(s, other_field, {}, "pre-3")
        queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, processed_fits_path="/p3", wcs_aligned=True)
        assert [(o.observation_id, p.processed_fits_path)
                for o, p in queries.calibrated_frames_with_wcs(s, new)] == [(with_wcs.observation_id, "/p1")]
        assert queries.calibrated_frames_with_wcs(s, with_wcs) == []
        queries.set_status(s, with_wcs, ObservationStatus.ARCHIVED)
        assert queries.calibrated_frames_with_wcs(s, new) == []

        queries.record_solved_position(s, new.observation_id, 10.5, 20.25, None)
        assert (new.ra, new.dec, new.pixel_scale) == (10.5, 20.25, None)
        queries.record_solved_position(s, new.observation_id, 11.0, 21.0, 0.4)
        assert (new.ra, new.dec, new.pixel_scale) == (11.0, 21.0, 0.4)
        with pytest.raises(queries.NotFound):
            queries.record_solved_position(s, "F009-r-0000", 0.0, 0.0, None)

# --- observations -------------------------------------------------------------------------------------------------

def test_create_and_get_observation(catalog):
    with catalog.session() as s:
        obs = observation(s, ra=123.4, dec=-56.7)
        assert obs.healpix_index == healpix_index(123.4, -56.7)
        assert obs.status is ObservationStatus.INGESTED
        assert obs.mjd == pytest.approx(61366.0 + (3 * 60 + 15) / 1440)  # 2026-11-22T03:15 UTC
        assert obs.raw_file.observation is obs
    with catalog.session() as s:
        assert queries.get_observation(s, obs.observation_id).id == obs.id
        with pytest.raises(NotFound, match="F999"):
            queries.get_observation(s, "F999-r-x")
    assert issubclass(NotFound, LookupError)


def test_list_observations_filters(catalog):
    with catalog.session() as s:
        a = observation(s, 1, field_name="F001", filter_band="r", night="2026-11-21")
        b = observation(s, 2, field_name="F001", filter_band="g", night="2026-11-21")
        c = observation(s, 3, field_name="F002", filter_band="r", night="2026-11-22")
        queries.start_preprocess_run(s, c, {}, "run")
        ids = lambda rows: [o.id for o in rows]  # noqa: E731
        assert ids(queries.list_observations(s)) == [a.id, b.id, c.id]
        assert ids(queries.list_observations(s, field_name="F001")) == [a.id, b.id]
        assert ids(queries.list_observations(s, filter_band="r")) == [a.id, c.id]
        assert ids(queries.list_observations(s, night="2026-11-22")) == [c.id]
        assert ids(queries.list_observations(s, field_name="F001", filter_band="g", night="2026-11-21")) == [b.id]
        assert ids(queries.list_observations(s, status=ObservationStatus.PREPROCESSING)) == [c.id]


# --- preprocessing ----------------------------------------------------------------------------------------------------

def test_preprocess_lifecycle(catalog):
    with catalog.session() as s:
        obs = observation(s)
        bias = queries.upsert_master(s, kind="bias", instrument="cam1", night="2026-11-20", filter_band=None,
                                     path="/b", n_frames=3, input_file_ids=[])
    with catalog.session() as s:
        run = queries.start_preprocess_run(s, obs, {"cosmic_rays": True}, "dagster-1")
        assert (run.status, run.retry_count, run.dagster_run_id) == (RunStatus.RUNNING, 0, "dagster-1")
        assert run.observation.status is ObservationStatus.PREPROCESSING and run.started_at.tzinfo is UTC
    with catalog.session() as s:
        run = queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, processed_fits_path="/p.fits",
                                            quality={"fwhm": np.float64(3.2), "n_cosmic_rays": np.int64(12)},
                                            master_bias=s.get(type(bias), bias.id), calibration_applied=True,
                                            calibration_note="used masters from 2026-11-20")
    with catalog.session() as s:
        run = s.get(PreprocessRun, run.id)
        assert run.status is RunStatus.COMPLETED and run.observation.status is ObservationStatus.PREPROCESSED
        assert run.quality == {"fwhm": 3.2, "n_cosmic_rays": 12} and run.master_bias_id == bias.id
        assert run.finished_at >= run.started_at and run.processing_time_seconds >= 0
        assert run.error_message is None and run.observation.status_reason is None


def test_rematerializing_resets_the_single_row(catalog):
    with catalog.session() as s:
        obs = observation(s)
        run = queries.start_preprocess_run(s, obs, {"a": 1}, "d1")
        queries.finish_preprocess_run(s, run, status=RunStatus.FAILED, error_message="no flat for r")
        assert obs.status is ObservationStatus.FAILED and obs.status_reason == "no flat for r"
        queries.start_preprocess_run(s, obs, {"a": 2}, "d2")
        run = queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, processed_fits_path="/p")
        queries.start_preprocess_run(s, obs, {"a": 3}, "d3")
        assert (run.status, run.retry_count, run.parameters, run.processed_fits_path, run.error_message) == (
            RunStatus.RUNNING, 2, {"a": 3}, None, None)
        assert s.scalar(sa.select(sa.func.count()).select_from(PreprocessRun)) == 1
        assert obs.status is ObservationStatus.PREPROCESSING and obs.status_reason is None


def test_a_run_left_running_by_a_dead_worker_is_restarted(catalog):
    with catalog.session() as s:
        obs = observation(s)
        run = queries.start_preprocess_run(s, obs, {}, "dead")
        run = queries.start_preprocess_run(s, obs, {}, "retry")
        assert (run.status, run.retry_count, run.dagster_run_id) == (RunStatus.RUNNING, 1, "retry")
        queries.finish_preprocess_run(s, run, status=RunStatus.BLOCKED, error_message="no bias master yet")
        assert obs.status is ObservationStatus.BLOCKED and run.error_message == "no bias master yet"


def test_finish_rejects_unknown_fields_and_statuses(catalog):
    with catalog.session() as s:
        run = queries.start_preprocess_run(s, observation(s), {}, "d")
        with pytest.raises(TypeError, match="retry_count"):
            queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, retry_count=7)
        with pytest.raises(ValueError):
            queries.finish_preprocess_run(s, run, status=RunStatus.SKIPPED)
        with pytest.raises(ValueError):
            queries.finish_preprocess_run(s, run, status=RunStatus.PENDING)
        assert run.status is RunStatus.RUNNING


def test_archived_observations_cannot_be_reprocessed(catalog):
    with catalog.session() as s:
        obs = queries.set_status(s, observation(s), ObservationStatus.ARCHIVED, reason="bad night")
        with pytest.raises(IllegalTransition):
            queries.start_preprocess_run(s, obs, {}, "d")
        assert obs.status is ObservationStatus.ARCHIVED


def test_finish_checks_run_and_observation_before_changing_either(catalog):
    with catalog.session() as s:
        obs = observation(s)
        run = queries.start_preprocess_run(s, obs, {}, "d")
        queries.set_status(s, obs, ObservationStatus.ARCHIVED, reason="withdrawn")
        with pytest.raises(IllegalTransition):
            queries.finish_preprocess_run(s, run, status=RunStatus.COMPLETED, processed_fits_path="/p")
        assert (run.status, run.processed_fits_path, run.finished_at) == (RunStatus.RUNNING, None, None)


def test_reprocessing_during_differencing_is_refused_without_touching_the_run(catalog):
    with catalog.session() as s:
        obs = calibrated(s)
        queries.start_difference_run(s, obs, None, {}, "diff")
        with pytest.raises(IllegalTransition):
            queries.start_preprocess_run(s, obs, {}, "again")
        assert (obs.preprocess_run.status, obs.preprocess_run.retry_count) == (RunStatus.COMPLETED, 0)


# --- references and differencing -------------------------------------------------------------------------------------

def test_reference_versions(catalog):
    with catalog.session() as s:
        a, b = calibrated(s, 1), calibrated(s, 2)
        assert queries.current_reference(s, "F001", "r") is None
        v1 = queries.record_reference(s, "F001", "r", a, "/ref1", 1.2, 21.0, "first frame", "d1")
    with catalog.session() as s:
        v2 = queries.record_reference(s, "F001", "r", b, "/ref2", 0.9, 21.5, "better seeing", "d2")
        other = queries.record_reference(s, "F001", "g", a, "/refg", 1.0, 20.0, "first frame", "d3")
    with catalog.session() as s:
        current = queries.current_reference(s, "F001", "r")
        assert (current.id, current.version, current.source_observation_id) == (v2.id, 2, b.id)
        assert s.get(type(v1), v1.id).is_current is False
        assert queries.current_reference(s, "F001", "g").id == other.id and other.version == 1


def test_a_coadded_reference_lists_its_inputs_and_knows_its_set(catalog):
    with catalog.session() as s:
        a, b, c = calibrated(s, 1), calibrated(s, 2), calibrated(s, 3)
        single = queries.record_reference(s, "F001", "r", a, "/ref1", 1.2, 400.0, "best frame", "d1")
        assert (single.n_inputs, queries.reference_input_keys(s, single)) == (1, [a.observation_id])
        assert single.inputs_digest == queries.inputs_digest([a.observation_id])
        inputs = [dict(observation_key=o.observation_id, weight=w, flux_scale=f, registration_rms_px=r,
                       fwhm_px=2.5, n_rejected=n, is_anchor=o is b)
                  for o, w, f, r, n in ((a, 0.3, 0.97, 0.03, 4), (b, 0.5, 1.0, None, 0), (c, 0.2, np.float64(1.1), 0.04, 0))]
        coadd = queries.record_reference(s, "F001", "r", b, "/ref2", 1.0, 250.0, "co-add of 3", "d2", inputs=inputs,
                                         psf_fwhm_px=2.7, limit_mag_5sigma=-5.1, mag_system="instrumental")
    with catalog.session() as s:
        current = queries.current_reference(s, "F001", "r")
        assert (current.version, current.n_inputs, current.psf_fwhm_px, current.mag_system) == (2, 3, 2.7, "instrumental")
        assert [i.weight for i in current.inputs] == [0.5, 0.3, 0.2]  # most informative first
        assert [i.is_anchor for i in current.inputs] == [True, False, False]
        assert queries.reference_input_keys(s, current) == sorted(o.observation_id for o in (a, b, c))
        assert current.inputs_digest == queries.inputs_digest([c.observation_id, a.observation_id, b.observation_id])
        assert queries.reference_containing(s, queries.get_observation(s, c.observation_id)).id == coadd.id
        other = calibrated(s, 4)
        assert queries.reference_containing(s, other) is None
    with catalog.session() as s, pytest.raises(IntegrityError):  # the database refuses a weight outside 0..1
        queries.record_reference(s, "F001", "r", b, "/ref3", 1.0, 250.0, "bad", "d3",
                                 inputs=[dict(observation_key=b.observation_id, weight=1.5, flux_scale=1.0)])


def test_difference_lifecycle_and_candidates(catalog):
    with catalog.session() as s:
        ref_obs, obs = calibrated(s, 1), calibrated(s, 2)
        ref = queries.record_reference(s, "F001", "r", ref_obs, "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, obs, ref, {"threshold": 5.0}, "diff-1")
        assert (run.status, run.reference_version, run.reference_observation_id, run.algorithm) == (
            RunStatus.RUNNING, 1, ref_obs.id, "zogy")
        assert obs.status is ObservationStatus.DIFFERENCING
    rows = [dict(ra=10.0 + i * 1e-3, dec=20.0, pixel_x=float(i), pixel_y=5.0, flux=100.0 + i, flux_error=5.0,
                 snr=np.float64(20.0 + i), is_edge=np.bool_(i == 1), is_negative=bool(i == 2),
                 features={"sharpness": np.float32(0.5)}) for i in range(3)]
    with catalog.session() as s:
        run = queries.finish_difference_run(s, run, status=RunStatus.COMPLETED, difference_image_path="/d",
                                            noise_level=1.5, detection_threshold=5.0)
    with catalog.session() as s:  # the difference image is there, its candidates are not yet: not "differenced"
        assert queries.get_observation(s, obs.observation_id).status is ObservationStatus.DIFFERENCING
        assert s.scalar(sa.select(sa.func.count()).select_from(Candidate)) == 0
    with catalog.session() as s:
        assert queries.record_candidates(s, run, rows) == 3
        assert queries.record_candidates(s, run, rows) == 3  # replaced, not added
    with catalog.session() as s:
        candidates = s.scalars(sa.select(Candidate).order_by(Candidate.pixel_x)).all()
        assert len(candidates) == 3 and all(c.difference_run_id == run.id for c in candidates)
        assert [c.healpix_index for c in candidates] == [healpix_index(r["ra"], r["dec"]) for r in rows]
        assert candidates[1].is_edge and candidates[2].is_negative and candidates[0].status is CandidateStatus.NEW
        assert candidates[0].features == {"sharpness": 0.5}
        assert s.get(type(run), run.id).candidates_found == 3
        assert queries.get_observation(s, obs.observation_id).status is ObservationStatus.DIFFERENCED
        exported = queries.candidates_for_export(s)
    assert exported[1] == {"original_name": "F001-r-2.fits", "raw_file_version": 1, "raw_file_status": "accepted",
                           "observation_id": obs.observation_id, "observation_status": "differenced", "ra": 10.001,
                           "dec": 20.0, "x": 1.0, "y": 5.0, "snr": 21.0, "flux": 101.0, "flux_error": 5.0,
                           "flags": ["edge"]}
    assert [e["flags"] for e in exported] == [[], ["edge"], ["negative"]]

    with catalog.session() as s:  # a new reference version: re-difference; the old attempt's candidates go
        ref2 = queries.record_reference(s, "F001", "r", obs, "/ref2", 0.8, 22.0, "better", "d")
        run = queries.start_difference_run(s, queries.get_observation(s, obs.observation_id), ref2, {}, "diff-2")
        assert (run.retry_count, run.reference_version, run.candidates_found) == (1, 2, 0)
        assert s.scalar(sa.select(sa.func.count()).select_from(Candidate)) == 0
        assert queries.replace_candidates(s, run, rows[:1]) == 1
        queries.finish_difference_run(s, run, status=RunStatus.COMPLETED)
        assert queries.record_candidates(s, run, []) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(Candidate)) == 0
        assert queries.get_observation(s, obs.observation_id).status is ObservationStatus.DIFFERENCED


def test_which_files_have_their_difference_recorded(catalog):
    """One query over many names: a file counts once its latest arrival's difference ended (completed or
    skipped), not while it runs or failed, and not when a newer arrival of its name has not been differenced."""
    names = [f"F001-r-{n}.fits" for n in (2, 3, 4, 5)]
    with catalog.session() as s:
        ref = queries.record_reference(s, "F001", "r", calibrated(s, 1), "/ref", 1.0, 21.0, "first", "d")
        runs = [queries.start_difference_run(s, calibrated(s, n), ref, {}, f"d{n}") for n in (2, 3, 4, 5)]
        assert queries.differences_recorded_for_files(s, names) == set()
        queries.finish_difference_run(s, runs[0], status=RunStatus.COMPLETED)
        queries.finish_difference_run(s, runs[1], status=RunStatus.SKIPPED)
        queries.finish_difference_run(s, runs[2], status=RunStatus.FAILED, error_message="boom")
        assert queries.differences_recorded_for_files(s, [*names, "unknown.fits"]) == set(names[:2])
        raw_file(s, names[0], content="a newer version")  # arrived again: its new observation is not differenced
        assert queries.differences_recorded_for_files(s, names) == {names[1]}


def test_a_finished_difference_records_its_measured_depth(catalog):
    with catalog.session() as s:
        ref = queries.record_reference(s, "F001", "r", calibrated(s, 1), "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, calibrated(s, 2), ref, {}, "d2")
        with pytest.raises(ValueError, match="not completed"):
            queries.record_frame_depth(s, run, depth_snr50=5.1)
        run = queries.finish_difference_run(s, run, status=RunStatus.COMPLETED)
        queries.record_frame_depth(s, run, depth_snr50=5.1, depth_snr50_err=0.1, depth_mag50=21.3,
                                   depth_mag_system="instrumental", depth_n_fakes=200)
        with pytest.raises(TypeError, match="depth_snr"):
            queries.record_frame_depth(s, run, depth_snr=5.0)
    with catalog.session() as s:
        run = queries.get_difference_run(s, run.id)
        assert (run.depth_snr50, run.depth_mag50, run.depth_mag_system, run.depth_n_fakes) == (
            5.1, 21.3, "instrumental", 200)


@pytest.mark.parametrize("depth", [{"depth_snr50": -1.0}, {"depth_mag_system": "vega"}, {"depth_n_fakes": -3}])
def test_the_database_refuses_an_impossible_depth(catalog, depth):
    with pytest.raises(IntegrityError), catalog.session() as s:
        ref = queries.record_reference(s, "F001", "r", calibrated(s, 1), "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, calibrated(s, 2), ref, {}, "d2")
        run = queries.finish_difference_run(s, run, status=RunStatus.COMPLETED)
        for name, value in depth.items():
            setattr(run, name, value)
        s.flush()


def test_candidates_are_recorded_only_for_a_finished_difference(catalog):
    with catalog.session() as s:
        ref_obs, obs = calibrated(s, 1), calibrated(s, 2)
        ref = queries.record_reference(s, "F001", "r", ref_obs, "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, obs, ref, {}, "d")
        with pytest.raises(ValueError, match="running"):
            queries.record_candidates(s, run, [])
        assert obs.status is ObservationStatus.DIFFERENCING


def test_difference_needs_a_calibrated_observation(catalog):
    with catalog.session() as s:
        obs = observation(s)
        with pytest.raises(ValueError, match="not calibrated"):
            queries.start_difference_run(s, obs, None, {}, "d")
        assert obs.status is ObservationStatus.INGESTED


@pytest.mark.parametrize(("status", "observation_status"), [
    (RunStatus.BLOCKED, ObservationStatus.BLOCKED), (RunStatus.SKIPPED, ObservationStatus.DIFFERENCED),
    (RunStatus.FAILED, ObservationStatus.FAILED)])
def test_difference_outcomes_move_the_observation(catalog, status, observation_status):
    with catalog.session() as s:
        obs = calibrated(s)
        run = queries.start_difference_run(s, obs, None, {}, "d")
        run = queries.finish_difference_run(s, run, status=status, error_message="no reference for F001/r yet")
        assert (run.status, run.reference_image_id, run.error_message) == (status, None,
                                                                          "no reference for F001/r yet")
        assert (obs.status, obs.status_reason) == (observation_status, "no reference for F001/r yet")
        # every outcome allows another attempt later
        assert queries.start_difference_run(s, obs, None, {}, "d2").status is RunStatus.RUNNING


def test_set_status_promotes_a_candidate(catalog):
    with catalog.session() as s:
        ref_obs = calibrated(s, 1)
        ref = queries.record_reference(s, "F001", "r", ref_obs, "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, calibrated(s, 2), ref, {}, "d")
        queries.replace_candidates(s, run, [dict(ra=1.0, dec=1.0, pixel_x=0.0, pixel_y=0.0)])
        candidate = s.scalars(sa.select(Candidate)).one()
    with catalog.session() as s:
        assert queries.set_status(s, candidate, CandidateStatus.PROMOTED).status is CandidateStatus.PROMOTED
        with pytest.raises(IllegalTransition):
            queries.set_status(s, candidate, CandidateStatus.NEW)


# --- summary --------------------------------------------------------------------------------------------------------

def test_catalog_summary(catalog):
    with catalog.session() as s:
        assert queries.catalog_summary(s) == {
            "raw_files": {"accepted": 0, "quarantined": 0, "duplicate": 0, "superseded": 0},
            "observations": {status.value: 0 for status in ObservationStatus},
            "candidates": 0, "references": 0, "reference_versions": 0}
        a = calibrated(s, 1)
        observation(s, 2)
        raw_file(s, "F001-r-2.fits", content="v2")  # supersedes observation 2's raw file: it is archived
        queries.register_quarantined_file(s, original_name="bad.fits", reason="r", landing_path="/l",
                                          size_bytes=1, sha256=sha("bad"))
        queries.record_reference(s, "F001", "r", a, "/r1", 1.0, 1.0, "x", "d")
        queries.record_reference(s, "F001", "r", a, "/r2", 1.0, 1.0, "x", "d")
        summary = queries.catalog_summary(s)
    assert summary["raw_files"] == {"accepted": 2, "quarantined": 1, "duplicate": 0, "superseded": 1}
    assert summary["observations"] == {**{status.value: 0 for status in ObservationStatus},
                                       "preprocessed": 1, "archived": 1}
    assert (summary["candidates"], summary["references"], summary["reference_versions"]) == (0, 1, 2)


# --- concurrency ----------------------------------------------------------------------------------------------------

def test_concurrent_writers_on_sqlite_wait_instead_of_failing(sqlite_url):
    """Read-then-write transactions from several processes (here threads) serialise on SQLite."""
    Catalog(sqlite_url).migrate()
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        catalog = Catalog(sqlite_url)
        try:
            for n in range(15):
                with catalog.session() as s:
                    raw_file(s, "same-name.fits", content=(worker, n))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            catalog.engine.dispose()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    catalog = Catalog(sqlite_url)
    with catalog.session() as s:
        versions = s.scalars(sa.select(RawDataFile.version).order_by(RawDataFile.version)).all()
        accepted = s.scalars(sa.select(RawDataFile).where(RawDataFile.status == RawFileStatus.ACCEPTED)).all()
    assert versions == list(range(1, 61)) and [r.version for r in accepted] == [60]


def test_session_rolls_back_on_error(catalog):
    with pytest.raises(RuntimeError), catalog.session() as s:
        queries.get_or_create_survey(s, "gone")
        raise RuntimeError
    with catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Survey)) == 0


def test_duplicate_sha_race_is_caught_by_the_database(catalog):
    with catalog.session() as s:
        raw_file(s, "a.fits", content=1)
    with pytest.raises(IntegrityError), catalog.session() as s:  # a writer that skipped the lookup
        queries.register_quarantined_file(s, original_name="b.fits", reason="x", landing_path="/l", size_bytes=1,
                                          sha256=sha(1))


def test_the_next_accepted_version_counts_every_arrival_of_the_name(catalog):
    """register_raw_file reads the name's arrivals and the stored content in one query: versions still count
    quarantined and duplicate arrivals, only accepted ones are superseded, content under another name is refused."""
    with catalog.session() as s:
        good = raw_file(s, "a.fits", content=1)
        queries.register_quarantined_file(s, original_name="a.fits", reason="truncated", landing_path="/l",
                                          stored_path="/q/a.fits", size_bytes=1, sha256=sha(2))
        queries.register_duplicate_file(s, original=good, original_name="a.fits", landing_path="/l",
                                        stored_path="/q/d/a.fits", size_bytes=1, sha256=sha(1))
        other = raw_file(s, "b.fits", content=3)
        assert queries.next_raw_file_version(s, "a.fits") == 4
        new = raw_file(s, "a.fits", content=4)
        assert new.version == 4 and good.status is RawFileStatus.SUPERSEDED
        assert other.status is RawFileStatus.ACCEPTED  # another name: untouched
        with pytest.raises(queries.ContentAlreadyStored, match="b.fits"):
            raw_file(s, "c.fits", content=3)


def test_match_observation_with_no_open_result_asks_one_question(catalog):
    """No result waits for a frame: match_observation answers None after one EXISTS, header keywords or not."""
    with catalog.session() as s:
        obs = observation(s)
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        sa.event.listen(catalog.engine, "before_cursor_execute", listener)
        try:
            assert queries.match_observation(s, obs, {}) is None
            assert queries.match_observation(s, obs, {"REQ_NAME": "req", "REQ_EPOC": 2}) is None
        finally:
            sa.event.remove(catalog.engine, "before_cursor_execute", listener)
        assert len(statements) == 2 and all("EXISTS" in st for st in statements)
