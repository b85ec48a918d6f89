"""Fake point sources against analytic answers: the flux of a given S/N, the injected stamps, their
placement, their matching to detections, and the completeness fit on outcomes of a known curve."""

import math

import numpy as np
import pytest
from scipy import ndimage, special

from dagster_project.science.injection import (
    completeness_fit,
    draw_fakes,
    flux_for_snr,
    inject_point_sources,
    magnitude_at,
    match_fakes,
    optimal_snr,
    place_fakes,
)
from dagster_project.science.magnitudes import limiting_magnitude
from dagster_project.science.psf import PSFModel
from dagster_project.science.psf_models import moffat_stamp


def _gaussian(sigma: float, half: int = 12, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma**2))


def _moffat_model(fwhm: float = 3.0, size: int = 21) -> PSFModel:
    return PSFModel(stamp=moffat_stamp(size, fwhm), fwhm_px=fwhm, ellipticity=0.0, theta_deg=0.0, beta=3.0, n_stars=1)


# --------------------------------------------------------------------------- flux for an S/N


@pytest.mark.parametrize("snr, sigma, sigma_psf", [(5.0, 10.0, 2.0), (3.0, 17.3, 1.5), (20.0, 5.0, 3.0)])
def test_background_limited_flux_of_a_gaussian_psf_is_the_closed_form(snr, sigma, sigma_psf):
    # sum P^2 = 1 / (4 pi sigma_psf^2) for a unit Gaussian, so F = s sigma sqrt(4 pi) sigma_psf
    psf = _gaussian(sigma_psf, half=int(6 * sigma_psf) + 1)
    expected = snr * sigma * math.sqrt(4 * math.pi) * sigma_psf
    assert float(flux_for_snr(snr, psf, sigma**2)) == pytest.approx(expected, rel=1e-6)


def test_flux_and_snr_are_inverse_with_and_without_shot_noise():
    psf = moffat_stamp(21, 3.0)
    variance = np.random.default_rng(0).uniform(50.0, 150.0, size=(4, 21, 21))  # one cutout per source
    snr = np.array([3.0, 5.0, 10.0, 20.0])
    for shot_noise in (False, True):
        flux = flux_for_snr(snr, psf, variance, shot_noise=shot_noise)
        assert optimal_snr(flux, psf, variance, shot_noise=shot_noise) == pytest.approx(snr, rel=1e-9)


def test_shot_noise_solution_satisfies_the_equation_and_needs_more_flux():
    psf = _gaussian(1.5) / _gaussian(1.5).sum()
    flux = float(flux_for_snr(20.0, psf, 100.0, shot_noise=True))
    # S/N^2 = sum (F P)^2 / (sigma^2 + F P), evaluated by hand
    assert math.sqrt(np.sum((flux * psf) ** 2 / (100.0 + flux * psf))) == pytest.approx(20.0, rel=1e-9)
    assert flux > 1.05 * float(flux_for_snr(20.0, psf, 100.0))


def test_masked_pixels_carry_no_information():
    psf = _gaussian(2.0)
    variance = np.full(psf.shape, 100.0)
    variance[:, : psf.shape[1] // 2] = 0.0  # the columns left of the centre masked
    kept = np.sum(psf[:, psf.shape[1] // 2 :] ** 2) / np.sum(psf**2)  # the information left
    ratio = float(flux_for_snr(5.0, psf, variance)) / float(flux_for_snr(5.0, psf, 100.0))
    assert ratio == pytest.approx(1.0 / math.sqrt(kept), rel=1e-9) and ratio > 1.2
    assert np.isnan(flux_for_snr(5.0, psf, np.zeros(psf.shape)))
    # with the source's shot noise too, masked pixels count for nothing (not for their shot noise alone)
    flux = float(flux_for_snr(20.0, psf, variance, shot_noise=True))
    p, good = psf / psf.sum(), variance > 0
    assert math.sqrt(np.sum((flux * p[good]) ** 2 / (variance[good] + flux * p[good]))) == pytest.approx(20.0)


# --------------------------------------------------------------------------- injection


@pytest.mark.parametrize("psf", [moffat_stamp(21, 3.0), _moffat_model()], ids=["stamp", "PSFModel"])
def test_injected_source_has_its_flux_at_its_position_and_inputs_are_untouched(psf):
    data = np.random.default_rng(3).normal(0.0, 10.0, (64, 64)).astype(np.float32)
    variance = np.full((64, 64), 100.0, np.float32)
    before = data.copy(), variance.copy()
    x, y, flux = 30.37, 25.81, 2.0e5
    new, var = inject_point_sources(data, variance, psf, [x], [y], [flux], np.random.default_rng(4))
    assert np.array_equal(data, before[0]) and np.array_equal(variance, before[1])
    added, model = new - data, var - variance
    assert model.sum() == pytest.approx(flux, rel=1e-5)  # the expectation, in the variance plane
    assert abs(added.sum() - flux) < 5 * math.sqrt(flux)  # Poisson: +- sqrt(F)
    assert abs(added.sum() - flux) > 0  # noisy, not the model
    cy, cx = ndimage.center_of_mass(model)
    assert (cx, cy) == (pytest.approx(x, abs=0.01), pytest.approx(y, abs=0.01))  # sub-pixel placement
    cy, cx = ndimage.center_of_mass(added)
    assert (cx, cy) == (pytest.approx(x, abs=0.05), pytest.approx(y, abs=0.05))


def test_injected_sources_are_poisson_noisy():
    psf = moffat_stamp(15, 3.0)
    data, variance = np.zeros((300, 300), np.float32), np.zeros((300, 300), np.float32)
    x, y = np.meshgrid(np.arange(20.0, 290.0, 30.0), np.arange(20.0, 290.0, 30.0))
    new, var = inject_point_sources(data, variance, psf, x.ravel(), y.ravel(), 400.0, np.random.default_rng(5))
    lit = var > 1.0  # pixels with at least one expected electron
    pulls = (new[lit] - var[lit]) / np.sqrt(var[lit])  # (counts - mean) / sqrt(mean): unit variance
    assert abs(pulls.mean()) < 0.05 and np.std(pulls) == pytest.approx(1.0, abs=0.05)
    assert np.all(new == np.rint(new))  # whole electrons
    again, _ = inject_point_sources(data, variance, psf, x.ravel(), y.ravel(), 400.0, np.random.default_rng(6))
    assert not np.array_equal(again, new)


def test_stamps_are_cut_at_the_border():
    new, var = inject_point_sources(np.zeros((20, 20)), np.zeros((20, 20)), moffat_stamp(15, 3.0), [0.0], [10.0],
                                    [1000.0], np.random.default_rng(0))
    assert 400.0 < var.sum() < 700.0  # a bit more than half the stamp is in the frame, nothing wrapped around
    assert var[:, -5:].sum() == 0.0


def test_injection_rejects_negative_flux():
    with pytest.raises(ValueError):
        inject_point_sources(np.zeros((20, 20)), np.zeros((20, 20)), moffat_stamp(7, 2.0), [5.0], [5.0], [-1.0],
                             np.random.default_rng(0))


# --------------------------------------------------------------------------- placement


def test_fakes_avoid_masks_border_each_other_and_given_positions():
    shape = (300, 400)
    mask = np.zeros(shape, dtype=np.uint16)
    mask[:, 200] = 4  # a bad column
    mask[50:90, 60:120] = 1  # a saturated star
    avoid = np.array([[300.0, 150.0], [100.0, 250.0]])
    x, y = place_fakes(shape, 150, np.random.default_rng(7), mask=mask, margin=12, min_separation=15.0,
                       avoid_xy=avoid, avoid_radius=25.0, mask_radius=3.0)
    assert len(x) == 150
    distance_to_mask = ndimage.distance_transform_edt(mask == 0)
    assert distance_to_mask[np.rint(y).astype(int), np.rint(x).astype(int)].min() > 3.0
    assert x.min() >= 12 and y.min() >= 12 and x.max() <= 400 - 13 and y.max() <= 300 - 13
    pairwise = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + np.eye(len(x)) * 1e9
    assert pairwise.min() >= 15.0
    assert np.hypot(x[:, None] - avoid[None, :, 0], y[:, None] - avoid[None, :, 1]).min() >= 25.0
    # the positions are continuous: every pixel phase occurs
    assert np.std(x - np.rint(x)) > 0.25


def test_a_full_frame_returns_fewer_fakes_and_a_seed_repeats():
    x, _ = place_fakes((60, 60), 100, np.random.default_rng(0), margin=5, min_separation=20.0)
    assert 0 < len(x) < 100
    assert np.array_equal(place_fakes((60, 60), 5, np.random.default_rng(1), margin=5)[0],
                          place_fakes((60, 60), 5, np.random.default_rng(1), margin=5)[0])


@pytest.mark.parametrize("distribution, median", [("log-uniform", math.sqrt(3.0 * 20.0)), ("uniform", 11.5)])
def test_draw_fakes_gives_each_the_flux_of_its_snr_in_the_local_variance(distribution, median):
    variance = np.full((400, 400), 100.0)
    variance[:, 200:] = 400.0  # a noisier half: the same S/N needs twice the flux there
    psf = moffat_stamp(15, 3.0)
    fakes = draw_fakes(variance, psf, 300, np.random.default_rng(8), distribution=distribution, shot_noise=False)
    assert len(fakes) == 300 and fakes.snr.min() >= 3.0 and fakes.snr.max() <= 20.0
    assert np.median(fakes.snr) == pytest.approx(median, rel=0.1)
    ratio = fakes.flux / fakes.snr
    left, right = fakes.x < 190, fakes.x > 210
    assert np.median(ratio[right]) == pytest.approx(2.0 * np.median(ratio[left]), rel=1e-6)
    assert list(fakes.table().colnames) == ["x", "y", "flux", "snr"]


# --------------------------------------------------------------------------- matching


def test_each_detection_recovers_at_most_one_fake_closest_first():
    fake_x, fake_y = [10.0, 11.5, 50.0, 80.0], [10.0, 10.0, 50.0, 80.0]
    det_x, det_y = [10.2, 50.0, 83.0, 200.0], [10.1, 51.0, 80.0, 200.0]
    m = match_fakes(fake_x, fake_y, det_x, det_y, radius=2.0)
    assert m.detection.tolist() == [0, -1, 1, -1]  # fake 1 loses detection 0 to the closer fake 0
    assert m.recovered.tolist() == [True, False, True, False]
    assert m.is_fake.tolist() == [True, True, False, False] and m.other_detections.tolist() == [2, 3]
    assert m.distance[0] == pytest.approx(math.hypot(0.2, 0.1)) and np.isnan(m.distance[1])


def test_matching_without_detections():
    m = match_fakes([1.0, 2.0], [1.0, 2.0], [], [], radius=2.0)
    assert m.recovered.tolist() == [False, False] and m.is_fake.size == 0


# --------------------------------------------------------------------------- completeness


def _outcomes(s50: float, width: float, n: int, seed: int, low=2.0, high=12.0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(low, high, n)
    return s, rng.random(n) < special.ndtr((s - s50) / width)


def test_the_ideal_detector_has_s50_of_5_and_width_1():
    s, found = _outcomes(5.0, 1.0, 100_000, seed=11)
    fit = completeness_fit(s, found)
    assert fit.converged and fit.n == 100_000 and fit.n_recovered == int(found.sum())
    assert fit.s50 == pytest.approx(5.0, abs=0.03) and fit.s50_err < 0.02
    assert abs(fit.s50 - 5.0) < 4 * fit.s50_err
    assert fit.width == pytest.approx(1.0, abs=0.03)
    assert fit.completeness(5.0) == pytest.approx(0.5, abs=0.01)


def test_a_shifted_and_wider_curve_is_found():
    s, found = _outcomes(6.5, 1.5, 40_000, seed=12)
    fit = completeness_fit(s, found)
    assert fit.s50 == pytest.approx(6.5, abs=0.05) and fit.width == pytest.approx(1.5, abs=0.05)


def test_the_s50_error_is_the_scatter_of_repeated_frames():
    # 60 frames of 300 fakes each: the Fisher error matches the spread of the fitted s50
    fits = [completeness_fit(*_outcomes(5.0, 1.0, 300, seed=100 + i, low=3.0, high=20.0)) for i in range(60)]
    spread = np.std([f.s50 for f in fits], ddof=1)
    assert np.mean([f.s50_err for f in fits]) == pytest.approx(spread, rel=0.3)


def test_binned_curve_counts_and_intervals():
    s = np.array([3.2, 3.7, 4.1, 4.9, 5.5, 6.0, 6.2, 8.8])
    found = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    fit = completeness_fit(s, found, bin_edges=[3, 4, 5, 7, 9])
    assert fit.bin_n.tolist() == [2, 2, 3, 1] and fit.bin_recovered.tolist() == [0, 1, 2, 1]
    assert fit.bin_fraction.tolist() == [0.0, 0.5, pytest.approx(2 / 3), 1.0]
    assert np.all(fit.bin_low <= fit.bin_fraction) and np.all(fit.bin_fraction <= fit.bin_high)
    assert 4.0 < fit.s50 < 6.0


def test_outcomes_that_cannot_be_fitted_give_nan_not_an_error():
    for found in (np.ones(50, bool), np.zeros(50, bool)):
        fit = completeness_fit(np.linspace(3, 20, 50), found)
        assert np.isnan(fit.s50) and np.isnan(fit.width) and not fit.converged
        assert fit.bin_n.sum() == 50


# --------------------------------------------------------------------------- magnitudes


def test_magnitude_at_is_instrumental_without_a_zero_point_and_calibrated_with_one():
    mag = magnitude_at(np.float32(800.0), 30.0)
    assert mag.system == "instrumental" and mag.value == pytest.approx(-2.5 * math.log10(800.0 / 30.0))
    mag = magnitude_at(800.0, 30.0, zero_point=25.0, gain=2.0)
    assert mag.system == "calibrated" and mag.value == pytest.approx(25.0 - 2.5 * math.log10(400.0))
    assert mag == limiting_magnitude(800.0, {"EXPTIME": 30.0, "MAGZP": 25.0, "GAIN": 2.0})
    assert magnitude_at(-5.0, 30.0) is None and magnitude_at(800.0, 0.0) is None
