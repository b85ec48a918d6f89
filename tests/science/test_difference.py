"""End-to-end difference imaging on a synthetic pair with a known transient."""

import dataclasses

import numpy as np
import pytest

from dagster_project.science.difference import DifferenceParams, difference_images
from dagster_project.science.masks import MaskBit
from dagster_project.science.photometric_scaling import FluxScaleError, flux_ratio
from dagster_project.science.psf import PSFError
from dagster_project.science.registration import RegistrationError

from .conftest import make_pair, noisy_planes


@pytest.fixture(scope="module")
def result(synthetic_pair):
    return difference_images(synthetic_pair.new, synthetic_pair.ref)


def test_finds_the_transient_and_little_else(result, synthetic_pair):
    cands = result.candidates
    tx, ty = synthetic_pair.transient_xy
    d = np.hypot(cands["x"] - tx, cands["y"] - ty)
    row = cands[int(np.argmin(d))]
    assert d.min() < 0.5
    assert not row["is_negative"] and not row["is_edge"] and not row["is_saturated"]
    assert abs(row["flux"] - synthetic_pair.transient_flux) < 4 * row["flux_err"] + 0.01 * synthetic_pair.transient_flux
    assert row["significance"] > 20
    assert len(cands) <= 3  # false positives: at most a couple of noise peaks
    assert result.quality["n_candidates"] == len(cands)


def test_registration_flux_scale_and_psfs(result, synthetic_pair):
    q = result.quality
    assert q["registration_rms_px"] <= 0.05 and q["registration_method"] == "wcs"
    centre = np.array([255.5, 255.5])
    fitted = np.array(result.registration.ref_to_new(*centre))
    truth = (synthetic_pair.matrix @ np.append(centre, 1.0))[:2]
    assert np.hypot(*(fitted - truth)) < 0.02
    assert result.flux_scale.ratio == pytest.approx(synthetic_pair.flux_ratio, rel=0.01)
    assert q["flux_ratio"] == result.flux_scale.ratio and q["flux_ratio_err"] > 0
    assert result.psf_new.fwhm_px == pytest.approx(3.0, rel=0.05)
    assert result.psf_ref.fwhm_px == pytest.approx(4.0, rel=0.05)
    assert 0.85 < q["scorr_std"] < 1.1
    assert set(result.timings) >= {"background", "registration", "zogy", "detection", "total"}


def test_resampled_reference_and_combined_mask(result, synthetic_pair):
    ref = result.ref_resampled
    assert ref.shape == synthetic_pair.new.shape
    assert ref.header["CRPIX1"] == pytest.approx(synthetic_pair.new.header["CRPIX1"])
    edge = (ref.mask & MaskBit.EDGE) != 0
    assert edge.any() and np.isnan(ref.data[edge & ~np.isfinite(ref.data)]).all()
    assert np.array_equal(result.mask, synthetic_pair.new.mask | ref.mask)
    assert np.isnan(result.zogy.S_corr[edge]).all()


def test_reference_without_stars_raises_psf_error(synthetic_pair):
    rng = np.random.default_rng(3)
    blank = noisy_planes(np.zeros(synthetic_pair.ref.shape), 500.0, synthetic_pair.ref.wcs, rng)
    with pytest.raises(PSFError, match="reference"):
        difference_images(synthetic_pair.new, blank)


def test_unrelated_reference_raises_registration_error(synthetic_pair):
    other = make_pair(seed=42)  # another star field, same WCS
    with pytest.raises(RegistrationError, match="could not register"):
        difference_images(synthetic_pair.new, other.ref, DifferenceParams(max_wcs_offset_px=5.0))


def test_inconsistent_planes_raise(synthetic_pair):
    bad = dataclasses.replace(synthetic_pair.ref, variance=np.ones((5, 5), np.float32))
    with pytest.raises(ValueError, match="reference image"):
        difference_images(synthetic_pair.new, bad)


def test_flux_ratio_is_robust_to_variable_stars():
    rng = np.random.default_rng(9)
    new_flux = 10 ** rng.uniform(3, 5, 80)
    new_err = np.sqrt(new_flux + 400.0)
    ref_true = 1.37 * new_flux
    ref_err = np.sqrt(ref_true + 900.0)
    ref_flux = ref_true + rng.normal(size=80) * ref_err
    measured_new = new_flux + rng.normal(size=80) * new_err
    ref_flux[:6] *= np.array([0.5, 0.7, 1.5, 2.0, 3.0, 0.2])  # variables and blends
    scale = flux_ratio(measured_new, ref_flux, new_err, ref_err)
    assert abs(scale.ratio - 1.37) < 3 * scale.ratio_err
    assert scale.ratio_err < 0.005
    assert scale.n_rejected >= 6 and scale.n_stars + scale.n_rejected == 80
    assert scale.chi2_red == pytest.approx(1.0, abs=0.5)


def test_flux_ratio_bad_input():
    with pytest.raises(FluxScaleError, match="only 2 stars"):
        flux_ratio([1.0, 2.0, -1.0], [1.0, 2.0, 3.0], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="one length"):
        flux_ratio([1.0, 2.0], [1.0], [0.1, 0.1], [0.1])
