"""Requests expand into results; frames fulfil them; the fulfillment state machine holds."""

from datetime import timedelta
from pathlib import Path

import pytest

from dagster_project.catalog import IllegalTransition, transition
from dagster_project.catalog.schema import ObservationStatus
from dagster_project.catalog.queries import (
    dispatch_due,
    expand_request,
    get_or_create_instrument,
    match_observation,
    settle_fulfillment,
    unmatched_observations,
)
from dagster_project.catalog.schema import CopiesMode, FulfillmentStatus, TaskState
from dagster_project.products.requests import InvalidRequest, load_request_file, parse_requests
from dagster_project.catalog.states import FULFILLMENT
from tests.catalog import observation
from tests.results.helpers import T0, request

FS = FulfillmentStatus


def test_expansion_epochs_samples_copies_and_not_before(catalog):
    with catalog.session() as s:
        req = request(s, n_epochs=3, samples_per_epoch=2, copies_mode=CopiesMode.COUNT, copies_count=2,
                      cadence_seconds=7200.0)
        cells = sorted((r.epoch_index, r.sample_index, r.copy_index) for r in req.results)
        assert cells == [(e, s_, c) for e in range(3) for s_ in range(2) for c in range(2)]
        by_epoch = {r.epoch_index: r.not_before for r in req.results}
        assert by_epoch == {e: T0 + timedelta(hours=2 * e) for e in range(3)}
        assert all(r.spec_snapshot["name"] == "req" and r.spec_snapshot["copies_count"] == 2 for r in req.results)
        assert {r.fulfillment_status for r in req.results} == {FS.PENDING_DISPATCH}


def test_all_eligible_makes_one_copy_per_instrument_with_the_band(catalog):
    with catalog.session() as s:
        get_or_create_instrument(s, "camA", ["g", "r"])
        get_or_create_instrument(s, "camB", ["r"])
        get_or_create_instrument(s, "camC", ["i"])
        req = request(s, n_epochs=1, copies_mode=CopiesMode.ALL_ELIGIBLE)
        assert sorted(r.instrument.name for r in req.results) == ["camA", "camB"]


def test_editing_a_request_does_not_rewrite_existing_snapshots(catalog):
    with catalog.session() as s:
        req = request(s, n_epochs=1)
        req.exposure_time, req.n_epochs = 120.0, 2
        created = expand_request(s, req)
        assert len(created) == 1 and created[0].spec_snapshot["exposure_time"] == 120.0
        old = next(r for r in req.results if r.epoch_index == 0)
        assert old.spec_snapshot["exposure_time"] == 60.0


def test_frame_matches_by_position_band_and_window_then_fulfils(catalog):
    with catalog.session() as s:
        req = request(s, n_epochs=2)
        assert dispatch_due(s, T0 + timedelta(minutes=1)) == 1  # epoch 1 is not due yet
        obs = observation(s, 1, ra=10.05, dec=20.0)
        result = match_observation(s, obs, {}, now=T0)
        assert result.epoch_index == 0 and result.fulfillment_status is FS.PARTIALLY_FULFILLED
        assert result.tasks[0].state is TaskState.OBSERVED and result.tasks[0].observations == [obs]
        obs.status = ObservationStatus.DIFFERENCED  # (as the pipeline would leave it)
        settle_fulfillment(s, obs, now=T0 + timedelta(hours=1))
        assert result.fulfillment_status is FS.FULFILLED
        assert result.fulfilled_on == T0 + timedelta(hours=1)
        assert result.tasks[0].state is TaskState.SUCCEEDED
        assert {r.epoch_index for r in req.results if r.observation is None} == {1}


def test_frames_elsewhere_or_in_another_band_match_nothing_and_are_reported(catalog):
    with catalog.session() as s:
        request(s)
        far = observation(s, 1, ra=50.0, dec=-20.0)
        other_band = observation(s, 2, filter_band="i")
        assert match_observation(s, far, {}) is None
        assert match_observation(s, other_band, {}) is None
        assert {o.observation_id for o in unmatched_observations(s)} == {far.observation_id, other_band.observation_id}


def test_scheduler_header_keys_pick_the_exact_cell(catalog):
    with catalog.session() as s:
        req = request(s, n_epochs=3)
        second = next(r for r in req.results if r.epoch_index == 1)
        obs = observation(s, 1, ra=50.0, dec=-20.0)  # position would not match: the header decides
        assert match_observation(s, obs, {"REQ_UID": str(second.uid)}) is second
        obs2 = observation(s, 2, ra=50.0, dec=-20.0)
        third = match_observation(s, obs2, {"REQ_NAME": "req", "REQ_EPOC": 2})
        assert third.epoch_index == 2


def test_illegal_fulfillment_transitions_raise(catalog):
    with catalog.session() as s:
        result = request(s, n_epochs=1).results[0]
        with pytest.raises(IllegalTransition):
            transition(result, FS.FULFILLED, field=FULFILLMENT)
        assert result.fulfillment_status is FS.PENDING_DISPATCH and result.fulfilled_on is None
        transition(result, FS.CANCELED, field=FULFILLMENT)
        with pytest.raises(IllegalTransition):
            transition(result, FS.DISPATCHED, field=FULFILLMENT)


def test_yaml_requests_validated_with_clear_messages(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text("requests:\n  - {name: a, target_name: T, ra: 10, dec: 20, filter_band: r, exposure_time: 60,"
                    " n_epochs: 3, cadence_hours: 2, window_start: 2026-11-22T00:00:00}\n")
    (spec,) = load_request_file(good)
    assert spec.columns()["cadence_seconds"] == 7200.0 and spec.window_start.tzinfo is not None
    with pytest.raises(InvalidRequest) as bad:
        parse_requests([{"name": "b", "target_name": "T", "ra": 400, "dec": 20, "filter_band": "r",
                         "exposure_time": 0, "copies_mode": "count"}])
    message = str(bad.value)
    assert "ra: Input should be less than 360" in message and "exposure_time" in message
    with pytest.raises(InvalidRequest, match="copies_count is required"):
        parse_requests({"name": "b", "target_name": "T", "ra": 1, "dec": 2, "filter_band": "r",
                        "exposure_time": 5, "copies_mode": "count"})
    with pytest.raises(InvalidRequest, match="unknown_field"):
        parse_requests({"name": "c", "target_name": "T", "ra": 1, "dec": 2, "filter_band": "r",
                        "exposure_time": 5, "unknown_field": 1})
    broken = tmp_path / "broken.yaml"
    broken.write_text("requests: [\n")
    with pytest.raises(InvalidRequest, match="not valid YAML"):
        load_request_file(broken)
