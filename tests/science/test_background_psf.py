"""Background maps, star selection, PSF fitting and image characterisation on analytic images."""

import numpy as np
import pytest
from astropy.table import Table

from dagster_project.science.background import estimate_background, upsample_mesh
from dagster_project.science.masks import MaskBit
from dagster_project.science.psf import (
    PSFError,
    characterize_image,
    estimate_psf,
    find_stars,
    fwhm_tile_spread,
    psf_photometry,
    star_fwhm,
)
from dagster_project.science.psf_models import render_point_sources

from .conftest import make_tan_wcs, noisy_planes

SHAPE = (384, 384)


def _field(fwhm, ellipticity=0.0, theta=0.0, n=80, seed=0, sky=200.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(15, SHAPE[1] - 15, n)
    y = rng.uniform(15, SHAPE[0] - 15, n)
    flux = 10 ** rng.uniform(3.5, 5.5, n)
    model = render_point_sources(SHAPE, x, y, flux, fwhm, 3.0, ellipticity, theta)
    return noisy_planes(model, sky, make_tan_wcs(SHAPE, scale_arcsec=0.6), rng), x, y, flux


def test_background_of_a_sloped_sky_with_stars():
    planes, *_ = _field(3.0)
    yy, xx = np.indices(SHAPE)
    slope = 0.05 * xx + 0.02 * yy
    maps = estimate_background(planes.data + slope, planes.mask, box_size=48)
    sigma = np.sqrt(200.0 + 25.0)
    truth = 200.0 + slope
    assert np.median(np.abs(maps.background - truth)) < 0.1 * sigma
    assert maps.median_rms == pytest.approx(sigma, rel=0.05)
    assert maps.background.dtype == np.float32 and maps.rms.shape == SHAPE
    assert np.median(maps.rms) == pytest.approx(maps.median_rms, rel=0.02)
    assert estimate_background(planes.data, planes.mask, box_size=48, rms_map=False).rms is None


@pytest.mark.parametrize("shape, box", [((384, 384), 48), ((300, 410), 64)])
def test_background_equals_photutils_background2d(shape, box):
    # The vectorised mesh is photutils' algorithm; photutils is the reference implementation.
    import warnings

    from astropy.stats import SigmaClip
    from photutils.background import Background2D, SExtractorBackground, StdBackgroundRMS

    rng = np.random.default_rng(2)
    yy, xx = np.indices(shape)
    x, y = rng.uniform(0, shape[1], 60), rng.uniform(0, shape[0], 60)
    stars = render_point_sources(shape, x, y, 10 ** rng.uniform(3, 5, 60), 3.0)
    data = (300.0 + 0.1 * xx + stars + rng.normal(size=shape) * 15.0).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint16)
    mask[40:150, 30:140] = MaskBit.SATURATED  # whole boxes excluded and filled from their neighbours
    mask[:, 200] = MaskBit.BAD_COLUMN
    maps = estimate_background(data, mask, box_size=box)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Background2D(data, box, mask=mask != 0, filter_size=3, exclude_percentile=25.0,
                                 sigma_clip=SigmaClip(sigma=3.0, maxiters=10), bkg_estimator=SExtractorBackground(),
                                 bkg_rms_estimator=StdBackgroundRMS())
        expected_background, expected_rms = reference.background, reference.background_rms
    assert np.abs(maps.background - expected_background).max() < 1e-3
    assert np.abs(maps.rms - expected_rms).max() < 1e-3
    assert maps.median_background == pytest.approx(reference.background_median, abs=1e-3)
    assert maps.median_rms == pytest.approx(reference.background_rms_median, abs=1e-3)


def test_mesh_upsampling_equals_the_spline_zoom():
    from scipy import ndimage

    mesh = np.random.default_rng(3).normal(size=(7, 9))
    expected = ndimage.zoom(mesh, (48, 48), order=3, mode="reflect", grid_mode=True)[:300, :410]
    expected = np.clip(expected, mesh.min(), mesh.max())
    assert np.abs(upsample_mesh(mesh, (48, 48), (300, 410)) - expected).max() < 1e-5


def test_background_ignores_masked_pixels():
    rng = np.random.default_rng(1)
    data = 100.0 + rng.normal(size=SHAPE) * 5.0
    mask = np.zeros(SHAPE, dtype=np.uint16)
    data[50:150, 50:150] = 1e5
    mask[50:150, 50:150] = MaskBit.SATURATED
    maps = estimate_background(data, mask, box_size=32)
    assert np.abs(maps.background - 100.0).max() < 1.0
    assert maps.median_background == pytest.approx(100.0, abs=0.3)


@pytest.mark.parametrize(
    "data, mask, message",
    [
        (np.zeros(10), None, "2-D"),
        (np.zeros((64, 64)), np.zeros((10, 10)), "mask shape"),
        (np.zeros((64, 64)), np.ones((64, 64)), "every pixel"),
    ],
)
def test_background_bad_input(data, mask, message):
    with pytest.raises(ValueError, match=message):
        estimate_background(data, mask)


@pytest.mark.parametrize("fwhm, ellipticity, theta", [(3.0, 0.0, 0.0), (4.5, 0.2, 35.0), (2.2, 0.1, -60.0)])
def test_psf_fit_recovers_known_moffat(fwhm, ellipticity, theta):
    planes, *_ = _field(fwhm, ellipticity, theta)
    image = planes.data - 200.0
    stars = find_stars(image, planes.variance, planes.mask)
    psf = estimate_psf(image, planes.variance, planes.mask, stars)
    assert psf.fwhm_px == pytest.approx(fwhm, rel=0.05)
    assert abs(psf.ellipticity - ellipticity) < 0.03
    if ellipticity > 0:
        assert abs((psf.theta_deg - theta + 90) % 180 - 90) < 5.0
    assert psf.beta == pytest.approx(3.0, rel=0.15)
    n = psf.stamp.shape[0]
    assert n % 2 == 1 and psf.stamp.sum() == pytest.approx(1.0)
    yy, xx = np.indices(psf.stamp.shape) - n // 2
    assert abs(np.sum(xx * psf.stamp)) < 1e-9 and abs(np.sum(yy * psf.stamp)) < 1e-9
    assert psf.n_stars >= 10


def test_find_stars_rejects_saturated_edge_and_blended_stars():
    rng = np.random.default_rng(3)
    good_x = np.array([60.0, 100.0, 200.0, 300.0, 320.0, 80.0])
    good_y = np.array([320.0, 100.0, 300.0, 200.0, 330.0, 200.0])
    bad_x = np.array([3.0, 150.0, 154.0, 250.0])  # at the edge, a blended pair, a saturated one
    bad_y = np.array([200.0, 220.0, 221.0, 60.0])
    x, y = np.concatenate([good_x, bad_x]), np.concatenate([good_y, bad_y])
    planes = noisy_planes(render_point_sources(SHAPE, x, y, np.full(x.size, 5e4), 3.0), 100.0, make_tan_wcs(SHAPE), rng)
    planes.mask[58:62, 249:252] = MaskBit.SATURATED
    stars = find_stars(planes.data - 100.0, planes.variance, planes.mask)
    found = {(round(a), round(b)) for a, b in zip(stars["x"], stars["y"])}
    assert found == {(round(a), round(b)) for a, b in zip(good_x, good_y)}
    assert set(stars.colnames) >= {"x", "y", "flux", "peak", "snr"}
    assert np.all(stars["snr"] >= 30)
    # every detected source is kept aside, the rejected ones too (the blended pair may be one segment)
    sources = stars.meta["sources"]
    assert len(sources["x"]) >= len(x) - 1 and len(sources["x"]) == len(sources["flux"])
    assert np.min(np.hypot(sources["x"] - 3.0, sources["y"] - 200.0)) < 1.5


def test_find_stars_on_empty_image_returns_empty_table():
    rng = np.random.default_rng(4)
    data = rng.normal(size=SHAPE).astype(np.float32)
    stars = find_stars(data, np.ones(SHAPE, np.float32))
    assert len(stars) == 0 and "x" in stars.colnames


def test_estimate_psf_with_too_few_stars_raises():
    planes, x, y, flux = _field(3.0, n=3)
    stars = Table({"x": x, "y": y, "flux": flux})
    with pytest.raises(PSFError, match="only 3 stars"):
        estimate_psf(planes.data - 200.0, planes.variance, planes.mask, stars)
    with pytest.raises(ValueError, match="odd"):
        estimate_psf(planes.data - 200.0, planes.variance, planes.mask, stars, stamp_size=20)


def test_psf_photometry_measures_fluxes_and_positions_within_errors():
    planes, x, y, flux = _field(3.0, n=60, seed=5)
    image = planes.data - 200.0
    psf = estimate_psf(image, planes.variance, planes.mask, find_stars(image, planes.variance, planes.mask))
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + np.eye(x.size) * 1e9
    isolated = distance.min(axis=1) > 15.0
    fixed = psf_photometry(image, planes.variance, planes.mask, psf, x, y)
    pulls = ((fixed["flux"] - flux) / fixed["flux_err"])[isolated]
    assert isolated.sum() > 30
    assert abs(np.median(pulls)) < 0.5 and 0.7 < np.std(pulls) < 1.4
    fitted = psf_photometry(image, planes.variance, planes.mask, psf, x + 0.3, y - 0.4, fit_positions=True)
    bright = isolated & (flux > 2e4)
    assert np.max(np.hypot(fitted["x"] - x, fitted["y"] - y)[bright]) < 0.05


def test_star_fwhm_and_its_spread_over_tiles():
    rng = np.random.default_rng(6)
    n = 400
    x, y = rng.uniform(15, SHAPE[1] - 15, n), rng.uniform(15, SHAPE[0] - 15, n)
    flux = 10 ** rng.uniform(4.0, 5.0, n)
    psf = estimate_psf(*_constant_psf_planes(x, y, flux, rng))
    for fwhm_of, expected_spread in ((lambda xs: np.full_like(xs, 3.0), (0.0, 0.04)),
                                     (lambda xs: 2.6 + 0.8 * xs / SHAPE[1], (0.15, 0.35))):
        model = sum(render_point_sources(SHAPE, [xi], [yi], [fi], fwhm_of(np.array([xi]))[0])
                    for xi, yi, fi in zip(x, y, flux))
        planes = noisy_planes(model, 200.0, make_tan_wcs(SHAPE), rng)
        each = star_fwhm(planes.data - 200.0, planes.variance, planes.mask, psf, x, y)
        good = np.isfinite(each)
        assert good.mean() > 0.9
        assert np.median(np.abs(each[good] - fwhm_of(x[good])) / fwhm_of(x[good])) < 0.03
        tiles, spread = fwhm_tile_spread(x, y, each, SHAPE, 3)
        assert tiles.shape == (3, 3) and np.isfinite(tiles).all()
        assert expected_spread[0] <= spread <= expected_spread[1]


def _constant_psf_planes(x, y, flux, rng):
    """Image, variance, mask and star table of a FWHM-3 field, for a PSF model to start from."""
    planes = noisy_planes(render_point_sources(SHAPE, x, y, flux, 3.0), 200.0, make_tan_wcs(SHAPE), rng)
    image = planes.data - 200.0
    return image, planes.variance, planes.mask, find_stars(image, planes.variance, planes.mask)


def test_characterize_image_reports_seeing_and_depth():
    planes, *_ = _field(3.0)
    quality = characterize_image(planes)
    assert quality.pixel_scale_arcsec == pytest.approx(0.6, rel=1e-6)
    assert quality.seeing_arcsec == pytest.approx(3.0 * 0.6, rel=0.05)
    sigma = np.sqrt(225.0)
    expected_depth = 5.0 * sigma / np.sqrt(np.sum(quality.psf.stamp**2))
    assert quality.depth_5sigma_e == pytest.approx(expected_depth, rel=0.05)
    assert quality.n_stars == len(quality.stars) > 10
    assert quality.background.median_background == pytest.approx(200.0, abs=1.0)
