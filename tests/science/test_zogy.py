"""ZOGY against analytic expectations: noise statistics, exact cancellation, optimal S/N."""

import numpy as np
import pytest
from astropy.stats import mad_std
from scipy.signal import convolve2d

from dagster_project.science.psf_models import moffat_stamp, render_point_sources
from dagster_project.science.zogy import LEAK_BLOCK, _hidden_flux_bound, robust_std, _small_grid_kernels, zogy

SHAPE = (384, 384)
PSF_NEW = moffat_stamp(25, 3.0)
PSF_REF = moffat_stamp(33, 4.5, ellipticity=0.1, theta_deg=20.0)
SIGMA_NEW, SIGMA_REF = 10.0, 6.0


def _constant(value):
    return np.full(SHAPE, value, dtype=np.float32)


def _noise(rng, sigma):
    return (rng.normal(size=SHAPE) * sigma).astype(np.float32)


def _run(new, ref, psf_new=PSF_NEW, psf_ref=PSF_REF, var_new=None, var_ref=None, **kwargs):
    return zogy(
        new, ref, psf_new, psf_ref,
        var_new=_constant(SIGMA_NEW**2) if var_new is None else var_new,
        var_ref=_constant(SIGMA_REF**2) if var_ref is None else var_ref,
        sigma_new=SIGMA_NEW, sigma_ref=SIGMA_REF, **kwargs,
    )


@pytest.mark.parametrize("astrometric_rms", [(0.0, 0.0), (0.05, 0.03)])
def test_scorr_of_pure_noise_has_unit_variance(astrometric_rms):
    rng = np.random.default_rng(1)
    values = []
    for _ in range(3):
        new, ref = _noise(rng, SIGMA_NEW), _noise(rng, SIGMA_REF)
        result = _run(new, ref, flux_ratio_ref=1.3, astrometric_rms=astrometric_rms)
        values.append(result.S_corr.ravel())
        assert result.S_corr.dtype == np.float32
        assert abs(result.scorr_std - 1.0) < 0.04
        assert abs(result.d_std - 1.0) < 0.04  # D is unit-variance white noise
    values = np.concatenate(values)
    assert abs(np.mean(values)) < 0.03
    assert abs(np.std(values) - 1.0) < 0.03
    # No edge effect: the outer 10 px have the same spread as the interior.
    edge = np.concatenate([result.S_corr[:10].ravel(), result.S_corr[-10:].ravel()])
    assert abs(np.std(edge) - 1.0) < 0.1


def _star_field(rng, n=40, margin=-5):
    """Stars everywhere, including partly outside the frame (margin < 0), to test the edges."""
    x = rng.uniform(margin, SHAPE[1] - 1 - margin, n)
    y = rng.uniform(margin, SHAPE[0] - 1 - margin, n)
    return x, y, 10 ** rng.uniform(3, 5, n)


def test_identical_noise_free_pair_subtracts_to_zero():
    x, y, f = _star_field(np.random.default_rng(2))
    image = render_point_sources(SHAPE, x, y, f, 3.0).astype(np.float32)
    result = _run(image, image, psf_new=PSF_NEW, psf_ref=PSF_NEW)
    # The brightest star peaks at ~1e4 sigma in D's units; the difference is round-off.
    assert np.nanmax(np.abs(result.D)) < 1e-3
    assert np.nanmax(np.abs(result.S_corr)) < 1e-3


def test_consistent_pair_with_different_psfs_subtracts_to_zero_up_to_the_edges():
    x, y, f = _star_field(np.random.default_rng(3))
    flux_ratio = 1.7
    new = render_point_sources(SHAPE, x, y, f, 3.0, stamp_size=25).astype(np.float32)
    ref = (flux_ratio * render_point_sources(SHAPE, x, y, f, 4.5, 3.0, 0.1, 20.0, stamp_size=33)).astype(np.float32)
    result = _run(new, ref, flux_ratio_ref=flux_ratio)
    assert np.isfinite(result.D).all()
    peak_in_sigma = new.max() / SIGMA_NEW
    # Sub-pixel star positions are not exactly "PSF convolved with a pixel grid",
    # which leaves ~1e-4 of the peak; nothing else does.
    interior = (slice(15, -15), slice(15, -15))
    assert np.max(np.abs(result.D[interior])) < 5e-4 * peak_in_sigma
    # Stars cut by the frame border cannot cancel exactly, but their residual
    # stays within a few pixels of the border (inside detection's edge margin).
    yy, xx = np.indices(SHAPE)
    border_distance = np.minimum.reduce([xx, yy, SHAPE[1] - 1 - xx, SHAPE[0] - 1 - yy])
    assert np.max(np.abs(result.S_corr[border_distance >= 5])) < 3.0


def _optimal_snr(flux, flux_ratio, with_source_noise):
    """s_diff of shared/notes/measuring-detection-depth.md for a source in the new image only."""
    model = flux * PSF_NEW
    var_new = SIGMA_NEW**2 + (model if with_source_noise else 0.0)
    s_new2 = np.sum(model**2 / var_new)
    s_ref2 = np.sum((flux_ratio * flux * PSF_REF) ** 2) / SIGMA_REF**2
    return (1.0 / s_new2 + 1.0 / s_ref2) ** -0.5


@pytest.mark.parametrize("with_source_noise", [False, True])
def test_injected_source_is_recovered_at_its_optimal_snr_and_flux(with_source_noise):
    flux, flux_ratio = 1300.0, 1.7
    grid = np.linspace(30, SHAPE[0] - 31, 6).round()
    xt, yt = np.meshgrid(grid, grid)
    xt, yt = xt.ravel(), yt.ravel()
    transients = render_point_sources(SHAPE, xt, yt, np.full(xt.size, flux), 3.0, stamp_size=25)
    var_new = (SIGMA_NEW**2 + transients * with_source_noise).astype(np.float32)
    expected = _optimal_snr(flux, flux_ratio, with_source_noise)
    peaks, fluxes, errors = [], [], []
    for seed in range(3):
        rng = np.random.default_rng(10 + seed)
        new = (transients + rng.normal(size=SHAPE) * np.sqrt(var_new)).astype(np.float32)
        result = _run(new, _noise(rng, SIGMA_REF), var_new=var_new, flux_ratio_ref=flux_ratio)
        iy, ix = yt.astype(int), xt.astype(int)
        peaks.append(result.S_corr[iy, ix])
        fluxes.append(result.flux[iy, ix])
        errors.append(result.flux_err[iy, ix])
    peaks, fluxes, errors = map(np.concatenate, (peaks, fluxes, errors))
    assert np.mean(peaks) == pytest.approx(expected, rel=0.10)
    assert np.median(flux / errors) == pytest.approx(expected, rel=0.10)
    pulls = (fluxes - flux) / errors
    assert abs(np.mean(pulls)) < 3.0 / np.sqrt(pulls.size)
    assert 0.7 < np.std(pulls) < 1.3


def test_psf_of_d_and_flux_zero_point():
    rng = np.random.default_rng(4)
    result = _run(_noise(rng, SIGMA_NEW), _noise(rng, SIGMA_REF), flux_ratio_ref=2.0)
    assert result.P_D.sum() == pytest.approx(1.0)
    assert result.P_D.shape[0] % 2 == 1
    yy, xx = np.indices(result.P_D.shape) - result.P_D.shape[0] // 2
    assert abs(np.sum(xx * result.P_D)) < 1e-6 and abs(np.sum(yy * result.P_D)) < 1e-6
    assert result.F_D == pytest.approx(2.0 / np.sqrt(SIGMA_NEW**2 * 4.0 + SIGMA_REF**2))


def test_masked_pixels_are_nan_and_do_not_leak():
    rng = np.random.default_rng(6)
    new, ref = _noise(rng, SIGMA_NEW), _noise(rng, SIGMA_REF)
    new[100:110, 200:205] = 1e6  # e.g. a saturated core, masked
    ref[300, 50] = np.nan  # a non-finite pixel, not in the mask
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[100:110, 200:205] = 1
    result = _run(new, ref, mask=mask)
    assert np.isnan(result.S_corr[100:110, 200:205]).all()
    assert np.isnan(result.D[300, 50]) and result.mask[300, 50]
    good = ~result.mask
    assert np.isfinite(result.S_corr[good]).all()
    assert np.nanmax(np.abs(result.S_corr)) < 6.0  # nothing leaks from the masked 1e6 pixels
    assert abs(np.nanstd(result.S_corr[95:115, 195:210]) - 1.0) < 0.3  # right next to the hole


def test_flux_hidden_under_a_mask_invalidates_the_residual_it_leaves():
    # A bright star lies under a masked column of the reference (e.g. its dead column). Zeroing the
    # column in both images removes part of the star from each, and the parts differ (different PSFs):
    # a residual no variance term describes. With the hidden flux given, that area becomes invalid.
    x, y, f = 200.3, 150.6, 4e5
    new = render_point_sources(SHAPE, x, y, f, 3.0, stamp_size=25).astype(np.float32)
    ref = render_point_sources(SHAPE, x, y, f, 4.5, 3.0, 0.1, 20.0, stamp_size=33).astype(np.float32)
    rng = np.random.default_rng(7)
    new += _noise(rng, SIGMA_NEW)
    ref += _noise(rng, SIGMA_REF)
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[:, 199:202] = 1
    plain = _run(new, ref, mask=mask)
    assert np.nanmax(np.abs(plain.S_corr)) > 10.0  # the residual of the masked star core
    # what the column hides of each star, above 3 sigma (as difference.hidden_flux estimates it)
    hidden_new = np.where(mask != 0, new - 3 * SIGMA_NEW, 0).clip(0, None)
    hidden_ref = np.where(mask != 0, ref - 3 * SIGMA_REF, 0).clip(0, None)
    guarded = _run(new, ref, mask=mask, hidden_new=hidden_new, hidden_ref=hidden_ref)
    assert np.nanmax(np.abs(guarded.S_corr)) < 5.5
    assert guarded.mask.mean() < plain.mask.mean() + 0.01  # only the surroundings of the star are given up
    far = np.abs(np.arange(SHAPE[0]) - y) > 40
    assert np.array_equal(guarded.mask[far], plain.mask[far])  # the rest of the column hides only sky


def _exact_hidden_flux_bound(hidden_maps, excluded, kernel):
    """Full-resolution ``kernel (x) hidden``, hidden: positive flux at excluded pixels, by direct convolution."""
    source = sum(np.where(excluded & (hidden > 0), hidden, 0.0) for hidden in hidden_maps)
    return convolve2d(source, kernel, mode="same")


@pytest.mark.parametrize("shape", [(203, 157), (96, 128)])
def test_coarse_hidden_flux_bound_is_an_upper_bound_of_the_exact_one(shape):
    rng = np.random.default_rng(21)
    excluded = rng.uniform(size=shape) < 0.02
    excluded[50:57, 60:63] = True  # a masked star core
    hidden_new = rng.exponential(100.0, size=shape)
    hidden_new[rng.uniform(size=shape) < 0.3] = -5.0  # negative and NaN values count as nothing
    hidden_new[0, 0] = np.nan
    hidden_ref = np.where(rng.uniform(size=shape) < 0.5, 1e4, 0.0)
    offsets = np.indices((25, 25)) - 12
    kernel = np.abs(rng.normal(size=(25, 25))) * np.exp(-0.05 * (offsets[0] ** 2 + 0.5 * offsets[1] ** 2))
    coarse = _hidden_flux_bound((hidden_new, hidden_ref), np.nonzero(excluded), shape, kernel, LEAK_BLOCK, 1)
    bound = np.repeat(np.repeat(coarse, LEAK_BLOCK, axis=0), LEAK_BLOCK, axis=1)[: shape[0], : shape[1]]
    exact = _exact_hidden_flux_bound((hidden_new, hidden_ref), excluded, kernel)
    assert np.all(bound >= exact - 1e-12 * exact.max())
    assert _hidden_flux_bound((hidden_new, None), np.nonzero(np.zeros(shape, bool)), shape, kernel, 4, 1) is None


def test_every_pixel_within_the_exact_hidden_flux_bound_is_invalid():
    # The star under a masked column of test_flux_hidden_under_a_mask..., on a frame whose sides are not
    # multiples of the bound's blocks: at least the pixels where the exact bound exceeds the S noise are invalid.
    shape, x, y, f = (203, 157), 80.3, 100.6, 4e5
    new = render_point_sources(shape, x, y, f, 3.0, stamp_size=25).astype(np.float32)
    ref = render_point_sources(shape, x, y, f, 4.5, 3.0, 0.1, 20.0, stamp_size=33).astype(np.float32)
    rng = np.random.default_rng(8)
    new += (rng.normal(size=shape) * SIGMA_NEW).astype(np.float32)
    ref += (rng.normal(size=shape) * SIGMA_REF).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint16)
    mask[:, 79:82] = 1
    hidden = (np.where(mask != 0, new - 3 * SIGMA_NEW, 0).clip(0, None),
              np.where(mask != 0, ref - 3 * SIGMA_REF, 0).clip(0, None))
    args = dict(var_new=np.full(shape, SIGMA_NEW**2, np.float32), var_ref=np.full(shape, SIGMA_REF**2, np.float32),
                sigma_new=SIGMA_NEW, sigma_ref=SIGMA_REF, astrometric_rms=(0.05, 0.03), mask=mask)
    plain = zogy(new, ref, PSF_NEW, PSF_REF, **args)
    guarded = zogy(new, ref, PSF_NEW, PSF_REF, hidden_new=hidden[0], hidden_ref=hidden[1], **args)
    a, b = SIGMA_NEW**2, SIGMA_REF**2  # F_n = F_r = 1
    kernels = _small_grid_kernels(PSF_NEW / PSF_NEW.sum(), PSF_REF / PSF_REF.sum(), a, b, 1.0, 1.0,
                                  1.0 / np.sqrt(a + b), 33)
    exact = _exact_hidden_flux_bound(hidden, mask != 0, np.maximum(np.abs(kernels.kn), np.abs(kernels.kr)))
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.abs(plain.S / plain.S_corr)  # the S noise, astrometric term included
    exact_zone = ~plain.mask & (exact > noise * (1 + 1e-4))
    blanked = guarded.mask & ~plain.mask
    assert exact_zone.sum() > 100
    assert not (exact_zone & ~blanked).any()
    assert blanked.sum() < 2 * exact_zone.sum()  # a few pixels wider


@pytest.mark.parametrize("size", [3, 12, 1000, 4097])
def test_robust_std_is_astropy_mad_std(size):
    values = np.random.default_rng(size).normal(3.0, 2.0, size).astype(np.float32)
    values[::7] = np.nan
    assert robust_std(values) == mad_std(values, ignore_nan=True)
    assert np.isnan(robust_std(np.full(3, np.nan, np.float32)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(new=np.zeros((10, 10))), "one shape"),
        (dict(psf_new=np.ones((4, 5))), "odd"),
        (dict(sigma_new=0.0), "sigma_new"),
        (dict(flux_ratio_ref=-1.0), "flux_ratio_ref"),
        (dict(astrometric_rms=(-0.1, 0.0)), "astrometric_rms"),
        (dict(var_ref=np.ones((5, 5))), "var_ref"),
        (dict(mask=np.ones(SHAPE, dtype=np.uint16)), "every pixel"),
        (dict(hidden_ref=np.ones((5, 5))), "hidden_ref"),
        (dict(max_hidden_sigma=0.0), "max_hidden_sigma"),
    ],
)
def test_bad_input_raises(kwargs, message):
    args = dict(
        new=_constant(0), ref=_constant(0), psf_new=PSF_NEW, psf_ref=PSF_REF,
        var_new=_constant(1), var_ref=_constant(1), sigma_new=1.0, sigma_ref=1.0,
    )
    args.update(kwargs)
    new, ref, psf_new, psf_ref = (args.pop(k) for k in ("new", "ref", "psf_new", "psf_ref"))
    with pytest.raises(ValueError, match=message):
        zogy(new, ref, psf_new, psf_ref, **args)
