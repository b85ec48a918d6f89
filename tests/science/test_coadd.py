"""Proper co-addition (Zackay & Ofek 2017) against analytic results."""

import warnings

import numpy as np
import pytest

from dagster_project.science.coadd import CoaddInput, proper_coadd
from dagster_project.science.masks import MaskBit

SHAPE = (64, 64)


def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    size = 2 * int(np.ceil(5 * sigma)) + 1 if size is None else size  # wings cut at 5 sigma, as real stamps are
    y, x = np.mgrid[-(size // 2):size // 2 + 1, -(size // 2):size // 2 + 1]
    psf = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return psf / psf.sum()


def point_source(psf: np.ndarray, flux: float, centre=(32, 32), shape=SHAPE) -> np.ndarray:
    image = np.zeros(shape)
    half = psf.shape[0] // 2
    cy, cx = centre
    image[cy - half:cy + half + 1, cx - half:cx + half + 1] = flux * psf
    return image


def frame(data, psf, sigma, flux_scale=1.0, variance=None, mask=None) -> CoaddInput:
    variance = np.full(SHAPE, sigma**2) if variance is None else variance
    mask = np.zeros(SHAPE, np.uint16) if mask is None else mask
    return CoaddInput(np.asarray(data, float), variance, mask, psf, flux_scale, sigma)


def psf_snr(image_psf: np.ndarray, flux: float, sigma: float) -> float:
    """S/N of optimal PSF photometry of a point source on white noise: f sqrt(sum P^2) / sigma."""
    return flux * np.sqrt(np.sum(image_psf**2)) / sigma


def test_identical_psfs_and_noise_give_the_mean_signal_at_the_mean_noise():
    psf = gaussian_psf(1.8)
    star = point_source(psf, 5000)
    coadd = proper_coadd([frame(star, psf, 3.0) for _ in range(4)], clip_sigma=np.inf)
    np.testing.assert_allclose(coadd.image, star, atol=1e-3)
    half = psf.shape[0] // 2
    np.testing.assert_allclose(coadd.psf[half:-half, half:-half], psf, atol=1e-6)
    np.testing.assert_allclose(coadd.weights, 0.25)
    assert coadd.sigma == pytest.approx(3.0 / 2, rel=1e-3)  # sigma / sqrt(N)
    rng = np.random.default_rng(1)
    noisy = proper_coadd([frame(rng.normal(0, 3.0, SHAPE), psf, 3.0) for _ in range(4)], clip_sigma=np.inf)
    assert noisy.image[12:-12, 12:-12].std() == pytest.approx(1.5, rel=0.05)


def test_psf_snr_squared_adds_up_over_different_seeing_and_depth():
    psfs, sigmas, scales = [gaussian_psf(1.2), gaussian_psf(2.0), gaussian_psf(3.0)], [2.0, 3.0, 1.5], [1.0, 0.7, 1.3]
    flux = 1000.0
    frames = [frame(point_source(p, F * flux), p, s, F) for p, s, F in zip(psfs, sigmas, scales)]
    coadd = proper_coadd(frames, clip_sigma=np.inf)  # a 2.5x seeing range would clip the sharp core
    expected = np.sqrt(sum(psf_snr(p, F * flux, s) ** 2 for p, s, F in zip(psfs, sigmas, scales)))
    assert psf_snr(coadd.psf, flux, coadd.sigma) == pytest.approx(expected, rel=0.01)
    # ... and it beats any weighted mean: the best frame alone and the inverse-variance mean fall short
    assert max(psf_snr(p, F * flux, s) for p, s, F in zip(psfs, sigmas, scales)) < 0.95 * expected
    assert coadd.kernel_power_kept > 0.999
    assert coadd.flux_zero == pytest.approx(np.sqrt(sum(F**2 / s**2 for s, F in zip(sigmas, scales))))


def test_the_coadd_psf_is_the_shape_of_a_coadded_star():
    psfs, scales = [gaussian_psf(1.3), gaussian_psf(2.6)], [1.0, 2.0]
    flux = 2000.0
    coadd = proper_coadd([frame(point_source(p, F * flux), p, 1.0, F) for p, F in zip(psfs, scales)])
    assert coadd.image.sum() == pytest.approx(flux, rel=1e-4)
    half = coadd.psf.shape[0] // 2
    image = proper_coadd([frame(point_source(p, F * flux, (64, 64), (128, 128)), p, 1.0, F, np.ones((128, 128)),
                                np.zeros((128, 128), np.uint16)) for p, F in zip(psfs, scales)]).image
    star = image[64 - half:64 + half + 1, 64 - half:64 + half + 1]
    np.testing.assert_allclose(star / flux, coadd.psf, atol=1e-3 * coadd.psf.max())


def test_noise_is_white_at_the_predicted_level_and_the_variance_map_agrees():
    rng = np.random.default_rng(7)
    shape = (256, 256)
    psfs, sigmas = [gaussian_psf(1.2), gaussian_psf(2.5)], [1.0, 2.0]
    frames = [CoaddInput(rng.normal(0, s, shape), np.full(shape, s**2), np.zeros(shape, np.uint16), p, 1.0, s)
              for p, s in zip(psfs, sigmas)]
    coadd = proper_coadd(frames)
    inner = coadd.image[16:-16, 16:-16]
    assert inner.std() == pytest.approx(coadd.sigma, rel=0.03)
    assert coadd.sigma == pytest.approx(1 / coadd.flux_zero, rel=0.01)
    assert np.median(coadd.variance[16:-16, 16:-16]) == pytest.approx(coadd.sigma**2, rel=0.01)
    power = np.abs(np.fft.rfft2(inner - inner.mean())) ** 2
    ky = np.abs(np.fft.fftfreq(inner.shape[0]))[:, None]
    kx = np.fft.rfftfreq(inner.shape[1])[None, :]
    k = np.hypot(ky, kx)
    low, high = power[(k > 0.02) & (k < 0.15)].mean(), power[(k > 0.3) & (k < 0.45)].mean()
    assert high / low == pytest.approx(1.0, abs=0.1)  # white: a weighted mean of blurred frames is not


def test_variance_map_matches_the_scatter_of_realisations_with_source_noise():
    rng = np.random.default_rng(3)
    psfs, sigmas = [gaussian_psf(1.5), gaussian_psf(2.2), gaussian_psf(1.8)], [1.0, 1.5, 1.2]
    stars = [point_source(p, 3000) for p in psfs]
    variances = [s**2 + np.maximum(star, 0) for s, star in zip(sigmas, stars)]
    draws = []
    for _ in range(300):
        frames = [frame(star + rng.normal(0, np.sqrt(v)), p, s, variance=v)
                  for star, v, p, s in zip(stars, variances, psfs, sigmas)]
        draws.append(proper_coadd(frames, clip_sigma=np.inf).image)
    empirical = np.var(draws, axis=0)
    predicted = proper_coadd([frame(star, p, s, variance=v) for star, v, p, s in zip(stars, variances, psfs, sigmas)]
                             ).variance
    for pixel in [(32, 32), (32, 35), (28, 32), (10, 50)]:
        assert empirical[pixel] == pytest.approx(predicted[pixel], rel=0.2)
    assert predicted[32, 32] > 3 * predicted[10, 50]  # the star's own noise is in the map


def test_a_cosmic_ray_in_one_frame_is_rejected_but_star_cores_of_other_seeing_are_not():
    rng = np.random.default_rng(5)
    psfs = [gaussian_psf(1.4), gaussian_psf(1.8), gaussian_psf(2.0)]
    images = [point_source(p, 20000) + rng.normal(0, 2.0, SHAPE) for p in psfs]
    images[1][50, 12] += 3000.0
    variances = [4.0 + np.maximum(point_source(p, 20000), 0) for p in psfs]
    coadd = proper_coadd([frame(im, p, 2.0, variance=v) for im, p, v in zip(images, psfs, variances)])
    assert abs(coadd.image[50, 12]) < 5 * np.sqrt(coadd.variance[50, 12])
    assert coadd.n_rejected[1] >= 1
    assert coadd.n_rejected[0] == coadd.n_rejected[2] == 0
    assert coadd.image.sum() == pytest.approx(20000, rel=0.01)
    without = proper_coadd([frame(im, p, 2.0, variance=v) for im, p, v in zip(images, psfs, variances)],
                           clip_sigma=np.inf)
    assert without.image[50, 12] > 50 * np.sqrt(without.variance[50, 12])  # the rejection is what removed it


def test_a_masked_pixel_is_filled_from_the_others_and_one_masked_everywhere_stays_masked():
    psfs = [gaussian_psf(1.5), gaussian_psf(2.0)]
    mask = np.zeros(SHAPE, np.uint16)
    mask[50, 12] = MaskBit.COSMIC_RAY  # on the sky
    mask[32, 32] = MaskBit.COSMIC_RAY  # on the star's core
    mask[32, 36] = MaskBit.COSMIC_RAY  # on its wing
    mask[30, 31] = MaskBit.SATURATED
    mask[5, 5] = MaskBit.BAD_COLUMN
    other = np.zeros(SHAPE, np.uint16)
    other[5, 5] = MaskBit.COSMIC_RAY
    frames = [frame(point_source(psfs[0], 1000), psfs[0], 1.0, mask=mask),
              frame(point_source(psfs[1], 1000), psfs[1], 1.0, mask=other)]
    coadd = proper_coadd(frames)
    assert coadd.image.sum() == pytest.approx(1000, rel=0.02)
    assert coadd.mask[50, 12] == 0 and coadd.coverage[50, 12] == 1  # a fill on the sky is trusted
    # on the star, the other frame's seeing predicts the pixel wrongly by a fraction of the star's light
    # (1000 e- at sigma 1: tens of sigma), so the co-add's PSF does not describe it: it stays masked
    assert coadd.mask[32, 32] == MaskBit.COSMIC_RAY and coadd.mask[32, 36] == MaskBit.COSMIC_RAY
    assert coadd.coverage[32, 32] == 1
    # a core saturated in one frame and filled from another of other seeing is not PSF-shaped: still masked
    assert coadd.mask[30, 31] == MaskBit.SATURATED and coadd.coverage[30, 31] == 1
    assert coadd.mask[5, 5] == MaskBit.BAD_COLUMN | MaskBit.COSMIC_RAY and coadd.image[5, 5] == 0
    assert coadd.coverage[5, 5] == 0
    assert int(np.count_nonzero(coadd.mask)) == 4  # nothing else is masked


@pytest.mark.parametrize("change, message", [
    (dict(sigma=0.0), "input 1: sigma must be positive"),
    (dict(flux_scale=-1.0), "input 1: flux_scale must be positive"),
    (dict(psf=np.ones((4, 4))), "input 1: the PSF must be a finite odd square stamp"),
    (dict(data=np.zeros((10, 10))), "input 1: data, variance and mask must be 2-D arrays of one shape"),
])
def test_bad_inputs_are_refused_naming_the_input(change, message):
    good = frame(np.zeros(SHAPE), gaussian_psf(1.5), 1.0)
    fields = dict(data=good.data, variance=good.variance, mask=good.mask, psf=good.psf, flux_scale=1.0, sigma=1.0)
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        proper_coadd([good, CoaddInput(**fields)])
    with pytest.raises(ValueError, match="at least one input"):
        proper_coadd([])


def test_the_stack_median_is_numpys_nanmedian_with_the_count_of_values():
    from dagster_project.science.coadd import _nanmedian_frames

    rng = np.random.default_rng(4)
    stack = rng.normal(size=(5, 40, 30)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.3] = np.nan  # 0 to 5 values per pixel: odd, even and none
    stack[:, 0, 0] = np.nan
    median, count = _nanmedian_frames(stack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN pixel
        expected = np.nanmedian(stack, axis=0)
    assert np.allclose(median, expected, equal_nan=True, rtol=0, atol=1e-6)
    assert np.isnan(median[0, 0]) and count[0, 0] == 0
    assert np.array_equal(count, np.count_nonzero(~np.isnan(stack), axis=0))


def test_the_mean_at_the_holes_is_the_3x3_mean_ndimage_gives_there():
    from scipy import ndimage

    from dagster_project.science.coadd import _mean3x3_at

    image = np.random.default_rng(5).lognormal(3, 2, (25, 31)).astype(np.float32)
    y, x = np.array([0, 0, 24, 12, 7]), np.array([0, 30, 15, 0, 9])  # corners, edges and inside
    expected = ndimage.uniform_filter(image, size=3)[y, x]
    assert np.allclose(_mean3x3_at(image, y, x), expected, rtol=1e-6)
