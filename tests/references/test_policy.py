"""When a field's reference is rebuilt: frames it does not hold that would make its co-add deeper."""

from dataclasses import replace
from datetime import timedelta

import pytest

from dagster_project.catalog import queries
from dagster_project.catalog.schema import RunStatus
from dagster_project.references.policy import ReferencePolicy, frames_for_reference, rebuilds_due
from tests.catalog import observation

DEFAULT = ReferencePolicy(max_frames=20, min_gain_mag=0.1, window_days=None)


def frame(session, n: int, depth: float, fwhm: float = 3.0, **fields):
    obs = observation(session, n, **fields)
    run = queries.start_preprocess_run(session, obs, {}, f"pre-{n}")
    queries.finish_preprocess_run(session, run, status=RunStatus.COMPLETED, processed_fits_path=f"/p{n}",
                                  quality={"fwhm_px": fwhm, "depth_5sigma_e": depth, "n_psf_stars": 30})
    return obs


def test_a_reference_without_deeper_frames_is_left_alone_and_one_with_them_is_rebuilt(catalog):
    with catalog.session() as s:
        first = frame(s, 1, 400.0)
        queries.record_reference(s, "F001", "r", first, "/ref1", 1.0, 400.0, "first frame", "d1")
        assert rebuilds_due(s, DEFAULT) == []  # the one frame it could take, it holds
        frame(s, 2, 400.0)
        frame(s, 3, 400.0)
    with catalog.session() as s:
        planned = rebuilds_due(s, DEFAULT)
        assert [p.partition_key for p in planned] == ["F001-r"]
        assert "3 frame(s) would make v1 (1 frame(s)) 0.60 mag deeper" in planned[0].reason
        again = rebuilds_due(s, DEFAULT)
        assert again[0].run_key == planned[0].run_key  # asking again asks for the same run
        assert rebuilds_due(s, replace(DEFAULT, min_gain_mag=1.0)) == []


def test_once_rebuilt_with_every_frame_nothing_more_is_due(catalog):
    with catalog.session() as s:
        frames = [frame(s, n, 400.0) for n in (1, 2, 3)]
        inputs = [dict(observation_key=o.observation_id, weight=1 / 3, flux_scale=1.0) for o in frames]
        queries.record_reference(s, "F001", "r", frames[0], "/ref2", 1.0, 230.0, "co-add", "d2", inputs=inputs)
        assert rebuilds_due(s, DEFAULT) == []
        # a shallow new frame changes the set, but adds too little to be worth a rebuild
        frame(s, 4, 4000.0)
        assert rebuilds_due(s, DEFAULT) == []


def test_the_window_keeps_later_frames_out_of_the_reference(catalog):
    with catalog.session() as s:
        frames = [frame(s, n, 400.0) for n in (1, 2)]
        late = frame(s, 3, 200.0)
        late.observation_time = frames[0].observation_time + timedelta(days=3)
        s.flush()
        calibrated = queries.calibrated_frames_of_field_band(s, "F001-r")
        assert [f.observation_key for f in frames_for_reference(calibrated, 1.0)] == [o.observation_id for o in frames]
        assert len(frames_for_reference(calibrated, None)) == 3
        queries.record_reference(s, "F001", "r", frames[0], "/r", 1.0, 400.0, "first", "d1")
        planned = rebuilds_due(s, replace(DEFAULT, window_days=1.0))
        assert "2 frame(s)" in planned[0].reason


@pytest.mark.parametrize("max_frames", [1])
def test_one_frame_references_are_never_rebuilt_for_depth(catalog, max_frames):
    with catalog.session() as s:
        best = frame(s, 1, 300.0)
        queries.record_reference(s, "F001", "r", best, "/r", 1.0, 300.0, "best", "d1")
        frame(s, 2, 150.0)  # much deeper, yet a one-frame reference stays until rebuilt by hand
        assert rebuilds_due(s, replace(DEFAULT, max_frames=max_frames)) == []
        assert rebuilds_due(s, DEFAULT)  # a co-add would take it


def test_the_sensor_asks_for_the_rebuild_once_and_says_why(tmp_path, sqlite_url):
    from dagster import instance_for_test

    from dagster_project.definitions import defs
    from tests.platform import make_platform

    sensor = defs.resolve_sensor_def("reference_and_difference_sensor")
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, sqlite_url, instance, reference_max_frames=20)
        with platform.catalog.session() as s:
            first = frame(s, 1, 400.0)
            queries.record_reference(s, "F001", "r", first, "/ref1", 1.0, 400.0, "first frame", "d1")
            frame(s, 2, 400.0)
        result, _ = platform.tick(sensor)
        rebuilds = [r for r in result.run_requests if r.job_name == "reference_job"]
        assert [r.partition_key for r in rebuilds] == ["F001-r"]
        assert "0.38 mag deeper" in rebuilds[0].tags["astro/reason"]
        platform.catalog.engine.dispose()
