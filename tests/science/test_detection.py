"""Transient detection on ZOGY outputs with known injected sources."""

import numpy as np
import pytest
from astropy.table import Table

from dagster_project.science.detection import detect_transients
from dagster_project.science.masks import MaskBit
from dagster_project.science.psf_models import moffat_stamp, render_point_sources
from dagster_project.science.zogy import zogy

from .conftest import make_tan_wcs

SHAPE = (384, 384)
FWHM_NEW, FWHM_REF = 3.0, 4.0
PSF_NEW, PSF_REF = moffat_stamp(25, FWHM_NEW), moffat_stamp(33, FWHM_REF)
SKY_NEW, SKY_REF, FLUX_RATIO = 200.0, 400.0, 1.5


def _subtract(new_model, ref_model, seed, mask=None):
    rng = np.random.default_rng(seed)
    var_new = (SKY_NEW + new_model).astype(np.float32)
    var_ref = (SKY_REF + ref_model).astype(np.float32)
    new = (new_model + rng.normal(size=SHAPE) * np.sqrt(var_new)).astype(np.float32)
    ref = (ref_model + rng.normal(size=SHAPE) * np.sqrt(var_ref)).astype(np.float32)
    return zogy(
        new, ref, PSF_NEW, PSF_REF, var_new=var_new, var_ref=var_ref, sigma_new=np.sqrt(SKY_NEW),
        sigma_ref=np.sqrt(SKY_REF), flux_ratio_ref=FLUX_RATIO, astrometric_rms=(0.02, 0.02), mask=mask,
    )


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(11)
    star_x, star_y = rng.uniform(10, 374, 60), rng.uniform(10, 374, 60)
    star_f = 10 ** rng.uniform(3, 5, 60)
    # Transients in the new image: two isolated, one on top of a star, one near the border.
    tx = np.array([100.3, 250.6, star_x[0] + 0.4, 2.7])
    ty = np.array([120.8, 300.2, star_y[0] - 0.3, 200.4])
    tf = np.array([3000.0, 5000.0, 8000.0, 8000.0])
    # A source present only in the reference: fades, i.e. a negative detection.
    fx, fy, ff = 180.4, 60.7, 4000.0
    new_model = render_point_sources(SHAPE, star_x, star_y, star_f, FWHM_NEW, stamp_size=25)
    new_model += render_point_sources(SHAPE, tx, ty, tf, FWHM_NEW, stamp_size=25)
    ref_model = FLUX_RATIO * render_point_sources(
        SHAPE, np.r_[star_x, fx], np.r_[star_y, fy], np.r_[star_f, ff], FWHM_REF, stamp_size=33
    )
    result = _subtract(new_model, ref_model, seed=12)
    ref_sources = Table({"x": star_x, "y": star_y})
    return result, (tx, ty, tf), (fx, fy, ff), ref_sources


def _match(table, x, y, radius=1.5):
    d = np.hypot(table["x"] - x, table["y"] - y)
    return table[int(np.argmin(d))] if d.min() < radius else None


def test_finds_injected_transients_with_positions_fluxes_and_flags(scene):
    result, (tx, ty, tf), _, ref_sources = scene
    wcs = make_tan_wcs(SHAPE)
    table = detect_transients(result, threshold=5.0, wcs=wcs, ref_sources=ref_sources, psf_fwhm=FWHM_NEW)
    for x, y, f, on_star, at_edge in zip(tx, ty, tf, [False, False, True, False], [False, False, False, True]):
        row = _match(table, x, y)
        assert row is not None, f"transient at ({x}, {y}) not found"
        assert np.hypot(row["x"] - x, row["y"] - y) < 0.5
        assert not row["is_negative"]
        assert row["is_edge"] == at_edge
        assert abs(row["flux"] - f) < 4 * row["flux_err"]
        assert row["snr"] == pytest.approx(abs(row["flux"]) / row["flux_err"])
        assert row["significance"] >= 5.0
        assert (row["ref_distance_px"] < 1.0) == on_star
        assert row["is_good"] == (not at_edge)
        if not at_edge:
            assert 0.5 < row["sharpness"] < 1.5 and not row["is_sharp"]  # point-like
            ra, dec = wcs.pixel_to_world_values(x, y)
            assert np.hypot((row["ra"] - ra) * np.cos(np.deg2rad(dec)), row["dec"] - dec) * 3600 < 0.5 * 0.6
    assert list(table["id"]) == list(range(1, len(table) + 1))
    assert np.all(np.diff(table["significance"]) <= 0)


def test_fading_source_is_a_negative_detection(scene):
    result, _, (fx, fy, ff), _ = scene
    table = detect_transients(result, threshold=5.0)
    row = _match(table, fx, fy)
    assert row is not None and row["is_negative"]
    assert np.hypot(row["x"] - fx, row["y"] - fy) < 0.5
    assert row["flux"] < 0 and row["scorr_peak"] < -5
    assert abs(-row["flux"] - ff) < 4 * row["flux_err"]  # flux in new-image e-
    assert np.isnan(row["ra"])  # no WCS given


def test_pure_noise_gives_at_most_rare_false_detections():
    n_false = 0
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        new = rng.normal(size=(512, 512)).astype(np.float32) * 14.0
        ref = rng.normal(size=(512, 512)).astype(np.float32) * 20.0
        result = zogy(
            new, ref, PSF_NEW, PSF_REF, var_new=np.full((512, 512), 196.0, np.float32),
            var_ref=np.full((512, 512), 400.0, np.float32), sigma_new=14.0, sigma_ref=20.0, flux_ratio_ref=FLUX_RATIO,
        )
        n_false += len(detect_transients(result, threshold=5.0))
    # The Gaussian-field expectation is ~0.2 peaks above |5| sigma per 512^2 frame.
    assert n_false <= 4


def test_detections_on_masked_residuals_are_flagged_or_dropped():
    # A saturated star: core masked in both images, its wings subtract imperfectly
    # because the reference PSF is slightly wrong (as in real data).
    x, y, f = 200.0, 200.0, 3e6
    new_model = render_point_sources(SHAPE, x, y, f, FWHM_NEW, stamp_size=25)
    ref_model = FLUX_RATIO * render_point_sources(SHAPE, x, y, f, FWHM_REF * 1.03, stamp_size=33)
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[196:205, 196:205] = MaskBit.SATURATED
    mask[150:250, 199:202] |= np.uint16(MaskBit.BLEED)
    result = _subtract(new_model, ref_model, seed=13, mask=mask)
    table = detect_transients(result, mask, threshold=5.0)
    near = np.hypot(table["x"] - x, table["y"] - y) < 60
    assert near.any() or table.meta["n_dropped_masked"] > 0
    assert np.all(table["is_saturated"][near]) and not np.any(table["is_good"][near])
    assert np.all(table["masked_fraction"] <= 0.5)  # the default max_masked_fraction
    # a saturation halo flags its neighbours as well
    halo = np.zeros(SHAPE, dtype=np.uint16)
    yy, xx = np.indices(SHAPE)
    halo[np.hypot(xx - x, yy - y) < 15] = MaskBit.SATURATION_HALO
    flagged = detect_transients(result, halo, threshold=5.0)
    assert np.all(flagged["is_saturated"][np.hypot(flagged["x"] - x, flagged["y"] - y) < 20])


def test_empty_result_and_bad_input():
    rng = np.random.default_rng(5)
    result = zogy(
        rng.normal(size=(64, 64)).astype(np.float32), rng.normal(size=(64, 64)).astype(np.float32), PSF_NEW, PSF_REF,
        var_new=np.ones((64, 64), np.float32), var_ref=np.ones((64, 64), np.float32), sigma_new=1.0, sigma_ref=1.0,
    )
    table = detect_transients(result, threshold=50.0)
    assert len(table) == 0 and {"x", "y", "ra", "dec", "flux", "is_negative", "sharpness"} <= set(table.colnames)
    with pytest.raises(ValueError, match="mask shape"):
        detect_transients(result, np.zeros((3, 3), np.uint16))
    with pytest.raises(ValueError, match="threshold"):
        detect_transients(result, threshold=0.0)


def test_masked_cosmic_ray_is_not_detected_and_an_unmasked_one_is_sharp():
    new_model = np.zeros(SHAPE)
    new_model[100:102, 100:103] = 4e4  # masked cosmic ray
    new_model[250, 250] = 5e3  # missed (unmasked) cosmic ray: a single hot pixel
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[99:103, 99:104] = MaskBit.COSMIC_RAY
    result = _subtract(new_model, np.zeros(SHAPE), seed=14, mask=mask)
    table = detect_transients(result, mask, threshold=5.0)
    assert not np.any(np.hypot(table["x"] - 101, table["y"] - 100.5) < 8)
    row = _match(table, 250.0, 250.0)
    assert row is not None and row["sharpness"] > 2.0
    assert row["is_sharp"] and not row["is_good"]


@pytest.mark.parametrize("column_x", [200, 202])
def test_source_cut_by_a_masked_column_is_one_candidate_at_its_position(column_x):
    # The masked column splits the S_corr peak in two; bridging the gap keeps one candidate, and the
    # valid pixels on both sides give its position. (Its flux is biased low: the masked part is missing.)
    tx, ty, f = 200.2, 150.3, 6000.0
    new_model = render_point_sources(SHAPE, tx, ty, f, FWHM_NEW, stamp_size=25)
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[:, column_x] = MaskBit.BAD_COLUMN
    result = _subtract(new_model, np.zeros(SHAPE), seed=15, mask=mask)
    table = detect_transients(result, mask, threshold=5.0)
    near = np.hypot(table["x"] - tx, table["y"] - ty) < 8
    assert near.sum() == 1
    row = table[near][0]
    assert np.hypot(row["x"] - tx, row["y"] - ty) < 0.5
    assert row["masked_fraction"] > 0 and row["significance"] > 10 and row["flux"] > 0.5 * f


def test_source_centred_on_a_wide_masked_band_is_dropped_not_split():
    # A resampled reference column is 3 px wide: a source centred on it is more than half masked.
    new_model = render_point_sources(SHAPE, 200.2, 150.3, 6000.0, FWHM_NEW, stamp_size=25)
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[:, 199:202] = MaskBit.BAD_COLUMN
    result = _subtract(new_model, np.zeros(SHAPE), seed=15, mask=mask)
    table = detect_transients(result, mask, threshold=5.0)
    assert not np.any(np.hypot(table["x"] - 200.2, table["y"] - 150.3) < 8)
    assert table.meta["n_dropped_masked"] >= 1


def test_bridge_interpolates_exactly_the_narrow_gaps_of_each_row():
    from dagster_project.science import detection

    rng = np.random.default_rng(5)
    image = rng.normal(size=(60, 80)).astype(np.float32)
    invalid = rng.random(image.shape) < 0.3
    invalid[:, 40:47] = True  # a gap too wide to bridge
    invalid[10, :] = True  # a whole invalid row
    bridged = detection._bridge(image, invalid, detection._narrow_gaps(invalid))
    expected = np.where(invalid, np.nan, image)
    reach = detection._BRIDGE_REACH
    for y, x in zip(*np.nonzero(invalid)):  # pixel by pixel: the nearest valid pixels left and right
        left = next((k for k in range(1, reach + 1) if x - k >= 0 and not invalid[y, x - k]), 0)
        right = next((k for k in range(1, reach + 1) if x + k < image.shape[1] and not invalid[y, x + k]), 0)
        if left and right:
            expected[y, x] = (image[y, x - left] * right + image[y, x + right] * left) / (left + right)
    assert np.isfinite(bridged).sum() > (~invalid).sum()
    np.testing.assert_allclose(bridged, expected, rtol=1e-6)  # NaN where expected is NaN


def test_deblending_only_the_regions_with_two_peaks_changes_nothing():
    from photutils.segmentation import deblend_sources, detect_sources

    from dagster_project.science import detection

    yy, xx = np.mgrid[:80, :120]

    def blob(x, y, amplitude, sigma=2.0):
        return amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))

    rng = np.random.default_rng(3)
    data = (blob(30, 40, 40) + blob(36, 42, 25)  # a blended pair: one region, two peaks
            + blob(90, 20, 60) + blob(90, 60, 8)  # a single bright peak; a faint one
            + 0.3 * rng.normal(size=xx.shape)).astype(np.float32)
    invalid = np.zeros(data.shape, bool)
    segm, blended = detection._segments(data, invalid, 5.0, 20.0)
    every = detect_sources(data, 5.0, 1, mask=invalid)
    expected = deblend_sources(data, every, 3, labels=every.labels[every.areas > 20.0], progress_bar=False)
    assert segm.n_labels == 4 and len(blended) == 2  # the pair was split in two, nothing else
    np.testing.assert_array_equal(segm.data, expected.data)
    assert blended == set(expected.deblended_labels.tolist())
