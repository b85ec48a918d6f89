"""The scene under a candidate: reference light measured on analytic sources, and the detection type it gives."""

import numpy as np
import pytest

from dagster_project.science.scene import ReferenceLight, SceneRules, classify_scene, reference_light

FWHM = 3.0
SIGMA = FWHM / 2.3548


def _gaussian(shape, x, y, flux, sigma):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


@pytest.fixture(scope="module")
def scene():
    """Unit-variance noise with a star at (30, 30) and a galaxy (sigma 5 px) at (90, 30)."""
    rng = np.random.default_rng(4)
    shape = (60, 140)
    image = _gaussian(shape, 30, 30, 3000, SIGMA) + _gaussian(shape, 90, 30, 20000, 5.0)
    return image + rng.normal(size=shape), np.ones(shape)


def test_a_star_is_centred_and_point_like(scene):
    light = reference_light(*scene, [30.0], [30.0], FWHM)
    assert light.snr[0] > 100 and light.offset_px[0] < 0.2
    assert light.fwhm_px[0] == pytest.approx(FWHM, rel=0.1)


def test_a_galaxy_is_extended_and_the_offset_is_measured(scene):
    light = reference_light(*scene, [93.0], [30.0], FWHM)
    assert light.snr[0] > 50 and light.fwhm_px[0] > 1.3 * FWHM
    assert light.offset_px[0] > 1.0  # the light's centroid lies towards the nucleus


def test_empty_sky_has_no_light_and_masked_pixels_are_ignored(scene):
    image, variance = scene
    light = reference_light(image, variance, [60.0], [50.0], FWHM)
    assert abs(light.snr[0]) < 4
    holed = image.copy()
    holed[28:33, 28:33] = np.nan
    assert np.isfinite(reference_light(holed, variance, [30.0], [30.0], FWHM).snr[0])


def test_the_detection_types_follow_the_scene(scene):
    x, y = [30.0, 93.0, 60.0, 32.5, 30.0], [30.0, 30.0, 50.0, 30.0, 30.0]
    light = reference_light(*scene, x, y, FWHM)
    kinds = classify_scene([0.9, 0.9, 0.9, 0.9, 0.2], 0.5, light, FWHM).tolist()
    assert kinds == ["variable", "supernova", "transient", "unknown", "artifact"]


def test_stricter_rules_change_the_verdict(scene):
    light = reference_light(*scene, [32.5], [30.0], FWHM)
    assert classify_scene([0.9], 0.5, light, FWHM, SceneRules(centred_fwhm=1.0)).tolist() == ["variable"]
    assert classify_scene([0.9], 0.5, ReferenceLight(*(np.array([np.nan]),) * 3), FWHM).tolist() == ["transient"]
