"""End-to-end difference imaging on a synthetic pair with a known transient."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from dagster_project.science import difference
from dagster_project.science.difference import (
    CHARACTERIZATION_STEPS,
    DifferenceParams,
    characterize_for_difference,
    difference_images,
    difference_with_added_flux,
    hidden_flux,
    saturation_halo,
    tile_psfs,
)
from dagster_project.science.images import ImagePlanes
from dagster_project.science.masks import MASK_DTYPE, MaskBit, dilate
from dagster_project.science.photometric_scaling import FluxScaleError, flux_ratio
from dagster_project.science.psf import PSFError, PSFModel, find_stars
from dagster_project.science.psf_models import moffat_stamp, render_point_sources
from dagster_project.science.registration import RegistrationError
from dagster_project.science.zogy_tiles import tile_grid

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


def test_the_subtraction_redone_with_nothing_added_is_the_same(result):
    zogy, candidates = difference_with_added_flux(result, np.zeros(result.mask.shape, np.float32),
                                                  np.zeros(result.mask.shape, np.float32))
    np.testing.assert_array_equal(np.nan_to_num(zogy.S_corr), np.nan_to_num(result.zogy.S_corr))
    assert len(candidates) == len(result.candidates)
    np.testing.assert_allclose(candidates["x"], result.candidates["x"])


def test_fakes_added_to_the_new_image_are_found_where_they_were_put(result, synthetic_pair):
    """Injection through steps 10-11 only: a fake of S/N 30 by ZOGY's own flux error is found at its place with
    its flux, and a lowered threshold finds at least what the default one does."""
    x, y = 150.3, 320.6
    snr = 30.0
    flux = snr * float(result.zogy.flux_err[int(round(y)), int(round(x))])
    fake = render_point_sources(result.mask.shape, [x], [y], [flux], result.psf_new.fwhm_px).astype(np.float32)
    _, found = difference_with_added_flux(result, fake, fake)
    d = np.hypot(found["x"] - x, found["y"] - y)
    row = found[int(np.argmin(d))]
    assert d.min() < 0.5 and not row["is_negative"]
    assert abs(row["flux"] - flux) < 4 * row["flux_err"]
    assert 0.7 * snr < row["snr"] < 1.3 * snr
    _, lowered = difference_with_added_flux(result, fake, fake, threshold=3.5)
    assert len(lowered) >= len(found)
    with pytest.raises(ValueError, match="shape"):
        difference_with_added_flux(result, fake[:10], fake[:10])


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
    assert np.array_equal(result.mask & ~np.uint16(MaskBit.SATURATION_HALO), synthetic_pair.new.mask | ref.mask)
    assert np.isnan(result.zogy.S_corr[edge]).all()


def test_precomputed_characterizations_give_the_same_result(result, synthetic_pair, monkeypatch):
    # What the pipeline does: the reference's background, stars and PSF computed once and passed in.
    pair = synthetic_pair
    ref_char = characterize_for_difference(pair.ref, DifferenceParams(), "reference")
    new_char = characterize_for_difference(pair.new, DifferenceParams(), "new image")
    characterized = []
    real = difference.characterize_for_difference
    monkeypatch.setattr(difference, "characterize_for_difference",
                        lambda planes, params, label: characterized.append(label) or real(planes, params, label))
    for given in ({"ref_characterization": ref_char},
                  {"ref_characterization": ref_char, "new_characterization": new_char}):
        reused = difference_images(pair.new, pair.ref, **given)
        for name in ("D", "S_corr", "flux", "flux_err"):
            assert np.array_equal(getattr(reused.zogy, name), getattr(result.zogy, name), equal_nan=True)
        assert np.array_equal(reused.mask, result.mask)
        assert reused.candidates.colnames == result.candidates.colnames
        for name in result.candidates.colnames:
            column = np.asarray(result.candidates[name])
            assert np.array_equal(reused.candidates[name], column, equal_nan=column.dtype.kind == "f")
        assert reused.quality == result.quality
    # a given characterization is not computed again: the new image only in the first call
    assert characterized == ["new image"]
    assert all(reused.timings[step] < 0.01 for step in CHARACTERIZATION_STEPS)
    assert result.timings["stars"] > 0.01


def test_a_characterization_with_other_parameters_is_refused(synthetic_pair):
    ref_char = characterize_for_difference(synthetic_pair.ref, DifferenceParams(star_snr_min=30.0))
    with pytest.raises(ValueError, match="reference characterization was computed with"):
        difference_images(synthetic_pair.new, synthetic_pair.ref, ref_characterization=ref_char)
    other_image = characterize_for_difference(synthetic_pair.ref, DifferenceParams())
    other_image = dataclasses.replace(other_image, background=other_image.background[:-8])
    with pytest.raises(ValueError, match="reference characterization is of a"):
        difference_images(synthetic_pair.new, synthetic_pair.ref, ref_characterization=other_image)


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


# --------------------------------------------------------------------------- saturated stars and hidden flux


def test_saturation_halo_reaches_the_sky_noise_and_grows_with_brightness():
    shape, level, sigma = (201, 201), 60000.0, 20.0
    psf = PSFModel(moffat_stamp(25, 3.0), 3.0, 0.0, 0.0, 3.0, 10)
    radii = []
    for flux in (3e6, 3e7):
        model = render_point_sources(shape, 100.0, 100.0, flux, 3.0, stamp_size=201)
        mask = np.where(model >= level, MASK_DTYPE(MaskBit.SATURATED), MASK_DTYPE(0))
        halo = saturation_halo(np.minimum(model, level), mask, psf, sigma)
        assert halo[mask != 0].all()
        edge = halo & dilate(~halo, 1, 1)  # halo pixels next to the outside
        assert sigma / 3 < np.median(model[edge]) < 3 * sigma  # the wings are at the noise there
        radii.append(np.sqrt(halo.sum() / np.pi))
    assert radii[1] > 1.3 * radii[0]


def _with_saturated_stars(pair, positions, flux, level, rng):
    """Add very bright stars to both images of a pair, clip them at ``level`` and flag SATURATED (grown 1 px)."""
    ref_x, ref_y = np.array(positions, float).T
    new_x = pair.matrix[0, 0] * ref_x + pair.matrix[0, 1] * ref_y + pair.matrix[0, 2]
    new_y = pair.matrix[1, 0] * ref_x + pair.matrix[1, 1] * ref_y + pair.matrix[1, 2]
    out = []
    for planes, x, y, fwhm, scale in ((pair.new, new_x, new_y, 3.0, 1.0), (pair.ref, ref_x, ref_y, 4.0, 1.6)):
        star = render_point_sources(planes.shape, x, y, np.full(x.size, flux * scale), fwhm, stamp_size=151)
        data = planes.data + (star + rng.normal(size=star.shape) * np.sqrt(star)).astype(np.float32)
        saturated = data >= level
        mask = planes.mask | np.where(dilate(saturated, 1, 1), MASK_DTYPE(MaskBit.SATURATED), MASK_DTYPE(0))
        out.append(ImagePlanes(np.minimum(data, level), planes.variance + star.astype(np.float32), mask,
                               planes.header))
    return out


def test_saturated_stars_leave_no_good_candidate(synthetic_pair):
    rng = np.random.default_rng(11)
    positions = [(120.0, 380.0), (400.0, 120.0), (380.0, 420.0)]
    new, ref = _with_saturated_stars(synthetic_pair, positions, 2e7, 60000.0, rng)
    result = difference_images(new, ref)
    cands = result.candidates
    tx, ty = synthetic_pair.transient_xy
    assert np.min(np.hypot(cands["x"] - tx, cands["y"] - ty)) < 0.5  # the transient is still found
    halo = (result.mask & MaskBit.SATURATION_HALO) != 0
    for x, y in positions:
        nx_, ny_ = (synthetic_pair.matrix @ np.array([x, y, 1.0]))[:2]
        assert halo[int(ny_), int(nx_) + 10]  # the wings around each core are masked
        near = np.hypot(cands["x"] - nx_, cands["y"] - ny_) < 40
        assert not np.any(cands["is_good"][near])
    assert result.quality["n_good"] <= 3


def test_hidden_flux_counts_static_stars_but_not_transients():
    shape = (64, 64)
    star = render_point_sources(shape, 20.0, 20.0, 5e4, 3.0)
    transient = render_point_sources(shape, 45.0, 45.0, 5e4, 3.0)
    new_mask = np.zeros(shape, MASK_DTYPE)
    ref_mask = np.zeros(shape, MASK_DTYPE)
    ref_mask[18:23, 18:23] = MaskBit.COSMIC_RAY  # a star under a masked blob of the reference
    ref_mask[44:47, 44:47] = MaskBit.COSMIC_RAY  # a transient of the new image next to a reference cosmic ray
    variance = np.full(shape, 100.0, np.float32)
    new = ImagePlanes((star + transient).astype(np.float32), variance, new_mask)
    ref = ImagePlanes(np.where(ref_mask != 0, 0.0, 2.0 * star).astype(np.float32), variance, ref_mask)
    hidden_new, hidden_ref = hidden_flux(new, ref, 2.0, new_mask | ref_mask)
    assert hidden_new[20, 20] > 0.5 * star[20, 20] and hidden_ref[20, 20] > star[20, 20]
    assert hidden_new[45, 45] == 0 and hidden_ref[45, 45] == 0  # the reference is empty there
    assert not hidden_new[(new_mask | ref_mask) == 0].any()


# --------------------------------------------------------------------------- ZOGY on tiles, a PSF per tile


def test_constant_psf_is_not_tiled(result):
    # 512 px: the FWHM variation is not measured (one tile), so one PSF per image is used.
    q = result.quality
    assert q["zogy_tiles"] == 1 and q["zogy_tiles_psf_fallback"] == 0
    assert q["zogy_tiles_reason"] == "FWHM tile spread not measured"


def test_forced_tiles_without_enough_stars_use_the_global_psf(result, synthetic_pair):
    # With 25 stars required per tile PSF, no tile of 3x3 has enough (the frame has ~30): all nine fall
    # back to the whole-frame PSFs, and the stitched S_corr is that of the single-PSF run.
    tiled = difference_images(synthetic_pair.new, synthetic_pair.ref,
                              DifferenceParams(zogy_tiles=3, min_psf_stars=25))
    assert tiled.quality["zogy_tiles"] == 3 and tiled.quality["zogy_tiles_psf_fallback"] == 9
    assert tiled.quality["zogy_tiles_reason"] == "zogy_tiles=3 requested"
    assert np.array_equal(np.isnan(tiled.zogy.S_corr), np.isnan(result.zogy.S_corr))
    assert np.nanmax(np.abs(tiled.zogy.S_corr - result.zogy.S_corr)) < 2e-3
    assert len(tiled.candidates) == len(result.candidates)
    with pytest.raises(ValueError, match="zogy_tiles"):
        difference_images(synthetic_pair.new, synthetic_pair.ref, DifferenceParams(zogy_tiles=0))


def test_tile_psfs_fall_back_where_a_tile_has_no_stars(result, synthetic_pair):
    new = synthetic_pair.new
    image = new.data - np.float32(np.median(new.data))
    stars = find_stars(image, new.variance, new.mask, snr_min=50.0)
    stars = stars[stars["x"] < 250]  # none in the right-hand column of tiles (cores from x = 340, margins 40 px)
    tiles = tile_grid(new.shape, 3, 40)
    psfs, fell_back = tile_psfs("new", image, new.variance, new.mask, stars, tiles, result.psf_new,
                                DifferenceParams())
    assert fell_back[:, 2].all() and all(psfs[i][2] is result.psf_new for i in range(3))
    assert not fell_back[:, 0].any()
    assert all(psfs[i][0].fwhm_px == pytest.approx(3.0, rel=0.05) for i in range(3))


FIELD = (1024, 1024)


def _fwhm_left_to_right(x, y):
    """FWHM (px) growing from 2.4 px at x = 0 to 3.6 px at the right-hand border."""
    return 2.4 + 1.2 * np.clip(np.asarray(x) / (FIELD[1] - 1), 0, 1)


@pytest.fixture(scope="module")
def varying_psf_pair():
    return make_pair(FIELD, n_stars=300, fwhm_new=_fwhm_left_to_right, seed=5)


def _star_positions_on_new_grid(pair):
    m = pair.matrix
    return m[0, 0] * pair.ref_x + m[0, 1] * pair.ref_y + m[0, 2], m[1, 0] * pair.ref_x + m[1, 1] * pair.ref_y + m[1, 2]


def test_a_psf_varying_over_the_field_is_subtracted_per_tile(varying_psf_pair):
    pair = varying_psf_pair
    single = difference_images(pair.new, pair.ref, DifferenceParams(zogy_tiles=1))
    auto = difference_images(pair.new, pair.ref)
    q = auto.quality
    assert q["fwhm_tile_spread_new"] > 0.15 and q["fwhm_tile_spread_ref"] < 0.05
    assert q["zogy_tiles"] == 2 and q["zogy_tiles_psf_fallback"] == 0  # 2x2 tiles at 1024 px
    assert q["zogy_tiles_reason"].startswith("FWHM tile spread") and ">" in q["zogy_tiles_reason"]
    assert single.quality["zogy_tiles"] == 1

    x, y = _star_positions_on_new_grid(pair)
    near = np.zeros(FIELD, bool)
    inside = (x >= 0) & (x < FIELD[1] - 0.5) & (y >= 0) & (y < FIELD[0] - 0.5)
    near[np.rint(y[inside]).astype(int), np.rint(x[inside]).astype(int)] = True
    far = ~ndimage.binary_dilation(near, iterations=20)
    near = ndimage.binary_dilation(near, iterations=5)
    figures = {}
    for label, run in (("single", single), ("tiled", auto)):
        cands = run.candidates
        distance = np.min(np.hypot(cands["x"][:, None] - x, cands["y"][:, None] - y), axis=1)
        scorr = run.zogy.S_corr
        figures[label] = dict(at_stars=int(np.count_nonzero(distance < 3)), all=len(cands),
                              near_rms=float(np.sqrt(np.nanmean(scorr[near] ** 2))))
        assert abs(np.nanstd(scorr[far]) - 1.0) < 0.03  # the sky stays unit-variance
    # the figures docs/science_benchmarks.md quotes (section 5): `pytest -s -k psf_varying` prints them
    print(f"\nvarying PSF, one PSF -> {q['zogy_tiles']}x{q['zogy_tiles']} tiles: candidates "
          f"{figures['single']['all']} -> {figures['tiled']['all']}, at stars {figures['single']['at_stars']} -> "
          f"{figures['tiled']['at_stars']}, S_corr RMS near stars {figures['single']['near_rms']:.1f} -> "
          f"{figures['tiled']['near_rms']:.1f}")
    assert figures["tiled"]["at_stars"] < 0.75 * figures["single"]["at_stars"]
    assert figures["tiled"]["all"] < 0.6 * figures["single"]["all"]
    assert figures["tiled"]["near_rms"] < 0.8 * figures["single"]["near_rms"]


def test_a_constant_psf_of_a_large_frame_is_not_tiled():
    pair = make_pair(FIELD, n_stars=300, fwhm_new=3.0, seed=5)
    q = difference_images(pair.new, pair.ref).quality
    assert q["fwhm_tile_spread_new"] < 0.05 and q["fwhm_tile_spread_ref"] < 0.05
    assert q["zogy_tiles"] == 1 and "<=" in q["zogy_tiles_reason"]
