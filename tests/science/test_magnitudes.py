"""Limiting magnitudes in the system the header allows, and said so."""

import math

import pytest

from dagster_project.science.magnitudes import limiting_magnitude


def test_a_zero_point_gives_a_calibrated_magnitude_of_the_counts():
    mag = limiting_magnitude(1000.0, {"MAGZP": 25.5, "GAIN": 1.6, "EXPTIME": 30.0})
    assert (mag.system, mag.unit) == ("calibrated", "mag")
    assert mag.value == pytest.approx(25.5 - 2.5 * math.log10(1000.0 / 1.6))


def test_without_a_zero_point_the_magnitude_is_instrumental_per_second():
    mag = limiting_magnitude(1000.0, {"EXPTIME": 30.0, "MAGZP": "n/a"})
    assert (mag.system, mag.unit) == ("instrumental", "mag of e-/s")
    assert mag.value == pytest.approx(-2.5 * math.log10(1000.0 / 30.0))
    assert "instrumental" in mag.label and mag.value < 0  # the -3.4 of old is instrumental, and now says so


@pytest.mark.parametrize("flux, header", [(0.0, {"EXPTIME": 30.0}), (float("nan"), {"EXPTIME": 30.0}),
                                          (100.0, {}), (100.0, {"EXPTIME": -5})])
def test_no_magnitude_without_a_positive_flux_or_a_scale(flux, header):
    assert limiting_magnitude(flux, header) is None
