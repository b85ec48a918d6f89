"""Registration of the reference onto the new grid against known affine transforms."""

import numpy as np
import pytest
from astropy.table import Table

from dagster_project.science.background import estimate_background
from dagster_project.science.masks import MaskBit
from dagster_project.science.psf import estimate_psf, find_stars, psf_photometry
from dagster_project.science.registration import (
    Registration,
    RegistrationError,
    register_images,
    resample_mask,
    resample_to_grid,
    resample_variance,
)

from .conftest import affine_about_centre, make_pair, wcs_after_affine


def _measured_stars(planes):
    """PSF-fitted positions of the bright isolated stars of an image, as the pipeline measures them."""
    image = planes.data - estimate_background(planes.data, planes.mask).background
    stars = find_stars(image, planes.variance, planes.mask, snr_min=50)
    psf = estimate_psf(image, planes.variance, planes.mask, stars)
    return psf_photometry(image, planes.variance, planes.mask, psf, stars["x"], stars["y"], fit_positions=True)


@pytest.fixture(scope="module")
def pair_and_stars():
    pair = make_pair(shift=(4.3, -2.6), rotation_deg=0.45, scale=1.001, crpix_error=(0.9, -0.7))
    return pair, _measured_stars(pair.new), _measured_stars(pair.ref)


def _max_error(registration, matrix, shape):
    """Largest position error (px) of the fitted transform over the frame corners and centre."""
    ny, nx = shape
    x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    fx, fy = registration.ref_to_new(x, y)
    tx, ty = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2], matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    return np.hypot(fx - tx, fy - ty)


def test_registration_with_wcs_guess_off_by_one_pixel(pair_and_stars):
    pair, new_stars, ref_stars = pair_and_stars
    reg = register_images(new_stars, ref_stars, pair.new.wcs, pair.ref.wcs)
    assert reg.method == "wcs"
    assert reg.n_matched >= 30
    assert reg.rms <= 0.05
    assert reg.rms == pytest.approx(np.hypot(reg.rms_x, reg.rms_y))
    errors = _max_error(reg, pair.matrix, pair.new.shape)
    assert errors[-1] < 0.02  # the shift at the centre
    assert errors.max() < 0.05  # rotation and scale: corners
    assert len(reg.new_index) == len(reg.ref_index) == reg.n_matched
    back_x, back_y = reg.new_to_ref(*reg.ref_to_new(10.0, 20.0))
    assert back_x == pytest.approx(10.0) and back_y == pytest.approx(20.0)


def test_registration_falls_back_to_asterisms_when_the_wcs_is_wrong(pair_and_stars):
    pair, new_stars, ref_stars = pair_and_stars
    wrong = wcs_after_affine(pair.ref.wcs, pair.matrix, crpix_error=(60.0, 45.0))
    reg = register_images(new_stars, ref_stars, wrong, pair.ref.wcs)
    assert reg.method == "asterism"
    assert reg.rms <= 0.05
    assert _max_error(reg, pair.matrix, pair.new.shape).max() < 0.05
    without_wcs = register_images(new_stars, ref_stars)
    assert without_wcs.method == "asterism"
    assert _max_error(without_wcs, pair.matrix, pair.new.shape).max() < 0.05


def test_registration_of_unrelated_fields_raises_with_a_reason(pair_and_stars):
    pair, new_stars, _ = pair_and_stars
    rng = np.random.default_rng(7)
    garbage = Table({"x": rng.uniform(0, 512, 80), "y": rng.uniform(0, 512, 80)})
    with pytest.raises(RegistrationError, match="could not register the reference"):
        register_images(new_stars, garbage, pair.new.wcs, pair.ref.wcs)
    with pytest.raises(RegistrationError, match="too few sources"):
        register_images(new_stars, garbage[:3], pair.new.wcs, pair.ref.wcs)
    with pytest.raises(RegistrationError, match="no 'y' column"):
        register_images(new_stars, Table({"x": [1.0]}))


def test_registration_rejects_large_residuals(pair_and_stars):
    pair, new_stars, ref_stars = pair_and_stars
    rng = np.random.default_rng(8)
    noisy = ref_stars.copy()
    noisy["x"] += rng.normal(0, 0.3, len(noisy))
    noisy["y"] += rng.normal(0, 0.3, len(noisy))
    with pytest.raises(RegistrationError, match="residual RMS"):
        register_images(new_stars, noisy, pair.new.wcs, pair.ref.wcs, max_rms=0.1)


def _registration(matrix):
    return Registration(matrix, 0.0, 0.0, 0.0, 10, "wcs", np.arange(10), np.arange(10))


def test_resample_smooth_image_matches_the_analytic_transform():
    shape = (128, 160)
    matrix = affine_about_centre(shape, shift=(2.3, -1.6), rotation_deg=0.4, scale=1.002)
    reg = _registration(matrix)
    yy, xx = np.indices(shape, dtype=float)

    def pattern(x, y):
        return np.sin(x / 9.0) * np.cos(y / 7.0) + 0.01 * x

    out = resample_to_grid(pattern(xx, yy), reg, shape)
    xr, yr = reg.new_to_ref(xx, yy)
    inside = (xr >= 0) & (yr >= 0) & (xr <= shape[1] - 1) & (yr <= shape[0] - 1)
    assert out.dtype == np.float32
    assert np.isnan(out[~inside]).all() and np.isfinite(out[inside]).all()
    core = inside & (xr > 3) & (yr > 3) & (xr < shape[1] - 4) & (yr < shape[0] - 4)
    assert np.max(np.abs(out[core] - pattern(xr, yr)[core])) < 2e-3


def test_resample_variance_and_mask():
    shape = (64, 64)
    matrix = affine_about_centre(shape, shift=(5.0, 0.0))
    reg = _registration(matrix)
    variance = np.full(shape, 4.0, dtype=np.float32)
    variance[10, 10] = np.nan
    out_var = resample_variance(variance, reg, shape)
    assert np.nanmin(out_var) == pytest.approx(4.0) and np.nanmax(out_var) == pytest.approx(4.0)
    assert np.isnan(out_var[:, :5]).all()

    mask = np.zeros(shape, dtype=np.uint16)
    mask[30, 30] = MaskBit.COSMIC_RAY
    out = resample_mask(mask, reg, shape)
    assert out.dtype == np.uint16
    # Moved by +5 px in x and dilated by one pixel.
    assert np.all(out[29:32, 34:37] & MaskBit.COSMIC_RAY)
    assert not out[30, 38] & MaskBit.COSMIC_RAY and not out[30, 30] & MaskBit.COSMIC_RAY
    assert np.all(out[:, :6] & MaskBit.EDGE)  # outside the reference, plus the 1 px dilation
    assert not np.any(out[:, 7:] & MaskBit.EDGE)


def test_threaded_resampling_equals_one_scipy_call():
    # Row blocks in threads and a float32 prefilter of the edge-padded image: the same numbers
    # as one scipy.ndimage.affine_transform (mode "nearest"), to float32 round-off.
    from scipy import ndimage

    from dagster_project.science.registration import _ndimage_affine

    shape = (301, 257)
    rng = np.random.default_rng(4)
    image = (rng.normal(size=shape) * 30.0 + 1000.0).astype(np.float32)
    reg = _registration(affine_about_centre(shape, shift=(3.7, -5.2), rotation_deg=0.35, scale=0.999))
    matrix, offset = _ndimage_affine(reg)
    for order in (1, 3):
        expected = ndimage.affine_transform(image, matrix, offset=offset, output_shape=shape, order=order,
                                            mode="nearest")
        out = resample_to_grid(image, reg, shape, order=order)
        inside = np.isfinite(out)
        assert inside.mean() > 0.9
        assert np.abs(out[inside] - expected[inside]).max() < 1e-3
        outside = ndimage.affine_transform(np.ones(shape), matrix, offset=offset, output_shape=shape, order=0,
                                           mode="constant") == 0
        assert np.array_equal(~inside, outside)
