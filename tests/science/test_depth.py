"""A frame's depth by injected fakes, and the labelled examples they give: checked against the ideal detector."""

import dataclasses

import numpy as np
import pytest

from dagster_project.science.depth import BOGUS, REAL, DepthConfig, measure_depth
from dagster_project.science.difference import difference_images
from dagster_project.science.realbogus import FEATURES

from .conftest import make_pair


@pytest.fixture(scope="module")
def pair_and_result():
    pair = make_pair(seed=3)
    return pair, difference_images(pair.new, pair.ref)


@pytest.fixture(scope="module")
def measured(pair_and_result):
    _, result = pair_and_result
    return measure_depth(result, config=DepthConfig(n_fakes=400), rng=np.random.default_rng(1))


def test_the_completeness_of_a_clean_pair_is_the_ideal_detectors(measured):
    """Gaussian noise, a 5-sigma threshold: half found at an ideal-difference S/N of 5, width 1 (the note's
    Phi(s - 5)), to the fit's uncertainty on a few hundred fakes."""
    depth, _ = measured
    assert len(depth.fakes) >= 250
    assert abs(depth.fit.s50 - 5.0) < max(0.4, 4 * depth.fit.s50_err)
    assert 0.6 < depth.fit.width < 1.6
    assert depth.flux50_e > 0
    bright = depth.fakes[depth.fakes["snr"] > 9]
    assert np.mean(bright["found"]) > 0.97


def test_the_fakes_measured_s_n_is_the_ideal_difference_one_not_the_new_images(measured):
    """The reference adds noise: the difference S/N of a fake is below its S/N in the new image alone."""
    depth, _ = measured
    assert np.all(depth.fakes["snr"] < depth.fakes["snr_new"] * 1.02)


def test_recovered_fakes_are_the_real_examples_with_features_and_cutouts(measured):
    depth, examples = measured
    real = examples.label == REAL
    assert real.sum() >= depth.fakes["found"].sum()  # the lowered threshold finds at least those
    assert examples.features.shape == (len(examples), len(FEATURES)) and examples.features.dtype == np.float32
    assert examples.triplets.shape == (len(examples), 3, 21, 21)
    assert set(examples.reason[real]) == {"fake"}
    assert np.all(examples.label[examples.reason == "below threshold"] == BOGUS)


def test_a_sharp_spike_in_the_new_frame_is_a_bogus_example(pair_and_result):
    """A cosmic-ray-like single hot pixel the mask missed: found, flagged sharp, labelled bogus."""
    pair, _ = pair_and_result
    new = pair.new
    data = new.data.copy()
    data[300, 141] += 3000.0
    result = difference_images(dataclasses.replace(new, data=data), pair.ref)
    _, examples = measure_depth(result, config=DepthConfig(n_fakes=50), rng=np.random.default_rng(2))
    near = np.hypot(examples.x - 141, examples.y - 300) < 2
    assert near.any() and examples.label[near][0] == BOGUS and examples.reason[near][0] == "sharp"


def test_the_same_seed_gives_the_same_depth(pair_and_result):
    _, result = pair_and_result
    first, _ = measure_depth(result, config=DepthConfig(n_fakes=60), rng=np.random.default_rng(5))
    again, _ = measure_depth(result, config=DepthConfig(n_fakes=60), rng=np.random.default_rng(5))
    assert first.fit.s50 == again.fit.s50 and list(first.fakes["found"]) == list(again.fakes["found"])
