"""Forced photometry at a fixed position: measured where the pixels are good, flagged (not raised) where masked."""

import json
import math

import numpy as np
import pytest
from astropy.wcs import WCS

from dagster_project.science.forced_photometry import forced_photometry
from dagster_project.science.masks import MaskBit, empty_mask


def _wcs(n: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [n / 2 + 1, n / 2 + 1]
    wcs.wcs.cd = [[-0.5 / 3600, 0.0], [0.0, 0.5 / 3600]]
    return wcs


def _world(wcs: WCS, x: float, y: float) -> tuple[float, float]:
    ra, dec = wcs.pixel_to_world_values(x, y)
    return float(ra), float(dec)


def test_a_target_on_good_pixels_is_measured():
    n = 64
    wcs = _wcs(n)
    flux, flux_err = np.full((n, n), 500.0, np.float32), np.full((n, n), 50.0, np.float32)
    result = forced_photometry(flux, flux_err, wcs, *_world(wcs, 20.3, 30.6), exposure_time=60.0, mask=empty_mask((n, n)))
    assert result.measured and result.flag is None and result.mask_flags == ()
    assert result.flux == pytest.approx(500.0) and result.snr == pytest.approx(10.0) and result.detected
    assert result.mag == pytest.approx(-2.5 * math.log10(500.0 / 60.0))
    assert (result.x, result.y) == (pytest.approx(20.3, abs=1e-6), pytest.approx(30.6, abs=1e-6))


@pytest.mark.parametrize("plane", ["flux", "flux_err"])
def test_a_target_on_masked_pixels_is_flagged_not_raised(plane):
    n = 64
    wcs = _wcs(n)
    images = {"flux": np.full((n, n), 500.0, np.float32), "flux_err": np.full((n, n), 50.0, np.float32)}
    mask = empty_mask((n, n))
    images[plane][28:34, 18:24] = np.nan  # a saturated star, say: ZOGY leaves NaN there
    mask[28:34, 18:24] = MaskBit.SATURATED | MaskBit.BLEED
    result = forced_photometry(images["flux"], images["flux_err"], wcs, *_world(wcs, 20.3, 30.6),
                               exposure_time=60.0, mask=mask)
    assert not result.measured and not result.detected
    assert "falls on masked pixels" in result.flag and "SATURATED" in result.flag
    assert result.mask_flags == ("SATURATED", "BLEED")
    assert result.flux is None and result.flux_err is None and result.snr is None
    assert result.mag is None and result.mag_err is None and result.limit_mag is None
    assert result.x == pytest.approx(20.3, abs=1e-6)
    # the product record is valid JSON (no NaN)
    assert json.loads(json.dumps(result.as_dict(), allow_nan=False))["measured"] is False


def test_a_zero_flux_error_is_not_a_measurement():
    n = 32
    wcs = _wcs(n)
    result = forced_photometry(np.ones((n, n)), np.zeros((n, n)), wcs, *_world(wcs, 10.0, 10.0), exposure_time=1.0)
    assert not result.measured and result.mask_flags == ()


def test_a_target_outside_the_image_is_still_an_error():
    n = 32
    wcs = _wcs(n)
    with pytest.raises(ValueError, match="outside the image"):
        forced_photometry(np.ones((n, n)), np.ones((n, n)), wcs, *_world(wcs, 40.0, 10.0), exposure_time=1.0)
