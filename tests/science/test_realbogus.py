"""Real/bogus scoring: features of known stamps, the classifier on a synthetic two-class problem, and the
metrics against hand-computed cases."""

import math
import pickle

import numpy as np
import pytest
from astropy.table import Table

from dagster_project.science.psf_models import render_point_sources
from dagster_project.science.realbogus import (
    CUTOUT_FEATURES,
    FEATURES,
    ROW_FEATURES,
    cutout_triplets,
    evaluate,
    feature_matrix,
    score,
    split_held_out,
    train_classifier,
)

FWHM = 3.0
SHAPE = (64, 64)


def _column(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, FEATURES.index(name)]


def _noise(seed: int, sigma: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, SHAPE)


def _point(x: float, y: float, flux: float, fwhm: float = FWHM) -> np.ndarray:
    return render_point_sources(SHAPE, [x], [y], [flux], fwhm)


def _cutout_features(new, ref, diff, x, y, *, is_negative=False, psf_fwhm=FWHM) -> np.ndarray:
    row = {"x": x, "y": y, "is_negative": is_negative}
    return feature_matrix([row], cutout_triplets(new, ref, diff, [x], [y]), psf_fwhm=psf_fwhm)[0]


# --------------------------------------------------------------------------- features from cutouts


def test_a_new_point_source_looks_real():
    x, y = 31.3, 30.8
    source = _point(x, y, 3000.0)  # S/N about 150 in unit noise
    f = _cutout_features(source + _noise(1), _noise(2), source + _noise(3), x, y)
    get = dict(zip(FEATURES, f))
    assert get["psf_correlation"] > 0.95
    assert get["peak_to_total"] == pytest.approx(1.0, abs=0.15)
    assert get["negative_fraction"] < 0.02
    assert get["new_ref_contrast"] > 0.9 and get["diff_aperture_snr"] > 50 and abs(get["ref_aperture_snr"]) < 4


def test_a_cosmic_ray_is_too_sharp_and_a_dipole_half_negative():
    x, y = 32.0, 32.0
    hit = np.zeros(SHAPE)
    hit[32, 32] = 400.0
    cosmic = dict(zip(FEATURES, _cutout_features(hit + _noise(1), _noise(2), hit + _noise(3), x, y)))
    real = dict(zip(FEATURES, _cutout_features(_point(x, y, 400.0) + _noise(1), _noise(2),
                                               _point(x, y, 400.0) + _noise(3), x, y)))
    assert cosmic["peak_to_total"] > 2.5 * real["peak_to_total"]
    assert cosmic["psf_correlation"] < real["psf_correlation"] - 0.2
    dipole = _point(x + 1.2, y, 2000.0) - _point(x - 1.2, y, 2000.0)  # a mis-registered star
    f = dict(zip(FEATURES, _cutout_features(_noise(1), _noise(2), dipole + _noise(3), x + 1.2, y)))
    assert 0.3 < f["negative_fraction"] < 0.6 and real["negative_fraction"] < 0.1


def test_a_star_residual_has_no_new_ref_contrast():
    x, y = 30.0, 33.0
    star = _point(x, y, 5e4)
    f = dict(zip(FEATURES, _cutout_features(star + _noise(1, 10.0), star + _noise(2, 10.0),
                                            0.02 * star + _noise(3), x, y)))
    assert abs(f["new_ref_contrast"]) < 0.1 and f["ref_aperture_snr"] > 50


def test_a_fading_source_is_measured_like_a_brightening_one():
    x, y = 29.6, 34.2
    source = _point(x, y, 3000.0)
    rising = _cutout_features(source + _noise(1), _noise(2), source + _noise(3), x, y)
    # the same source in the reference and gone from the new image: the difference is its negative
    fading = _cutout_features(_noise(2), source + _noise(1), -source - _noise(3), x, y, is_negative=True)
    shape = [FEATURES.index(name) for name in ("psf_correlation", "peak_to_total", "negative_fraction",
                                                "diff_aperture_snr", "new_ref_contrast")]
    assert fading[FEATURES.index("psf_correlation")] > 0.95 and fading[FEATURES.index("new_ref_contrast")] > 0.9
    assert np.allclose(rising[shape], fading[shape], atol=1e-5)


def test_cutout_features_do_not_depend_on_gain_sky_or_noise_level():
    x, y = 30.4, 31.6
    source = _point(x, y, 800.0)
    new, ref, diff = source + _noise(1), 0.5 * source + _noise(2), 0.5 * source + _noise(3)
    base = _cutout_features(new, ref, diff, x, y)
    scaled = _cutout_features(7.0 * new + 1200.0, 0.1 * ref - 30.0, 3.0 * diff, x, y)
    assert np.allclose(base, scaled, equal_nan=True, rtol=1e-4, atol=1e-5)


def test_cutout_features_need_the_psf_fwhm():
    triplets = cutout_triplets(_noise(1), _noise(2), _noise(3), [30.0], [30.0])
    with pytest.raises(ValueError, match="psf_fwhm"):
        feature_matrix([{"x": 30.0, "y": 30.0}], triplets)


# --------------------------------------------------------------------------- cutouts


def test_cutout_triplets_are_centred_padded_and_in_noise_units():
    new = 1000.0 + 20.0 * _noise(1)  # sky 1000 e-, noise 20 e-
    new[40, 3] = np.nan  # a masked pixel, at the first candidate's centre
    source = _point(50.4, 20.6, 5000.0)
    ref, diff = 3.0 * _noise(2), source + _noise(3)
    stamps = cutout_triplets(new, ref, diff, [3.2, 50.4], [40.3, 20.6], size=21)
    assert stamps.shape == (2, 3, 21, 21) and stamps.dtype == np.float32 and np.all(np.isfinite(stamps))
    assert stamps[0, 0, 10, 10] == 0.0  # the NaN pixel
    assert np.all(stamps[0, :, :, :7] == 0.0)  # x = -7 .. -1: outside the frame
    for k in range(3):  # each stamp in its own noise units, the sky subtracted
        inside = stamps[0, k][:, 7:]
        assert np.median(inside) == pytest.approx(0.0, abs=0.15) and np.std(inside) == pytest.approx(1.0, abs=0.2)
    # centred on the nearest pixel (50, 21): the source, 0.4 px below it, peaks in the central pixel
    assert np.unravel_index(np.argmax(stamps[1, 2]), (21, 21)) == (10, 10)


def test_a_stamp_without_a_usable_scale_is_all_zero():
    flat = np.zeros(SHAPE)
    stamps = cutout_triplets(flat, _noise(1), _noise(2), [5.0, 200.0], [5.0, 200.0])
    assert np.all(stamps[:, 0] == 0.0) and np.all(stamps[1] == 0.0)  # flat; and entirely outside the image


# --------------------------------------------------------------------------- features from rows


def test_row_features_are_scale_free_and_read_both_row_kinds():
    detection_row = {"x": 10.0, "y": 12.0, "flux": 500.0, "flux_err": 50.0, "snr": 10.0, "significance": 9.5,
                     "sharpness": 1.1, "ellipticity": 0.2, "fwhm": 3.3, "area": 45, "n_opposite_pixels": 7,
                     "ref_distance_px": 15.0, "is_negative": False}
    X = feature_matrix([detection_row], psf_fwhm=3.0)
    assert X.shape == (1, len(FEATURES)) and X.dtype == np.float32
    get = dict(zip(FEATURES, X[0]))
    assert get["significance_to_snr"] == pytest.approx(0.95)
    assert get["fwhm_ratio"] == pytest.approx(1.1)
    assert get["log10_area_ratio"] == pytest.approx(math.log10(45 / (math.pi * 1.5**2)), rel=1e-6)
    assert get["opposite_fraction"] == pytest.approx(7 / (math.pi * 6.0**2), rel=1e-6)
    assert get["ref_distance_fwhm"] == pytest.approx(5.0)
    assert all(np.isnan(get[name]) for name in CUTOUT_FEATURES)
    # the same candidate in a frame of twice the seeing, twice the size: the same features
    wider = dict(detection_row, fwhm=6.6, area=180, n_opposite_pixels=28, ref_distance_px=30.0)
    assert np.allclose(feature_matrix([wider], psf_fwhm=6.0), X, rtol=1e-6, equal_nan=True)
    # a catalog Candidate row: other column names, measurements in its features JSON
    catalog_row = {"pixel_x": 10.0, "pixel_y": 12.0, "flux": 500.0, "flux_error": 50.0, "snr": 10.0,
                   "significance": 9.5, "fwhm": 3.3, "ellipticity": 0.2, "is_negative": False,
                   "features": {"sharpness": 1.1, "n_opposite_pixels": 7, "ref_distance_px": 15.0, "area": 45}}
    assert np.array_equal(feature_matrix([catalog_row], psf_fwhm=3.0), X, equal_nan=True)
    assert np.array_equal(feature_matrix(Table(rows=[detection_row]), psf_fwhm=3.0), X, equal_nan=True)


def test_missing_values_and_missing_psf_fwhm_are_nan():
    X = feature_matrix([{"snr": 8.0, "significance": None, "fwhm": 3.0, "features": {}}, {"snr": 0.0,
                        "significance": 2.0}])
    assert X[0, FEATURES.index("snr")] == 8.0
    assert np.isnan(X[0, FEATURES.index("significance")]) and np.isnan(X[0, FEATURES.index("fwhm_ratio")])
    assert np.isnan(X[1, FEATURES.index("significance_to_snr")])  # 2 / 0: not inf
    assert FEATURES == ROW_FEATURES + CUTOUT_FEATURES and len(set(FEATURES)) == len(FEATURES)


# --------------------------------------------------------------------------- classifier


def _two_classes(n: int, seed: int, real_fraction: float = 0.25):
    """Reals shifted by 2 sigma in 4 of 6 features (AUC about 0.998), 10 % of the values missing."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < real_fraction
    X = rng.normal(size=(n, 6))
    X[:, :4] += 2.0 * y[:, None]
    X[rng.random(X.shape) < 0.1] = np.nan
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def trained():
    X, y = _two_classes(20_000, seed=1)
    return train_classifier(X, y, seed=0), train_classifier(X, y, seed=0, calibrate=False)


def test_the_classifier_separates_two_classes_and_is_calibrated(trained):
    calibrated, raw = trained
    X, y = _two_classes(20_000, seed=2)
    metrics = evaluate(y, score(calibrated, X))
    assert metrics["roc_auc"] > 0.99
    assert metrics["expected_calibration_error"] < 0.03
    # balanced class weights alone leave the scores of a 1:3 set biased towards real
    assert evaluate(y, score(raw, X))["expected_calibration_error"] > 2 * metrics["expected_calibration_error"]
    assert metrics["fnr_at_threshold"] <= 0.01 and metrics["n_real"] + metrics["n_bogus"] == 20_000


def test_a_trained_model_pickles_and_scores_the_same(trained):
    X, _ = _two_classes(500, seed=3)
    model = pickle.loads(pickle.dumps(trained[0]))
    assert np.array_equal(score(model, X), score(trained[0], X))
    assert np.all((score(model, X) >= 0) & (score(model, X) <= 1))


def test_training_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        train_classifier(np.zeros((10, 2)), np.ones(10))


# --------------------------------------------------------------------------- metrics


def test_evaluate_on_a_hand_made_case():
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    s = [0.95, 0.9, 0.6, 0.6, 0.2, 0.7, 0.5, 0.3, 0.1, 0.0]
    m = evaluate(y, s, fnr=0.2)
    # 5 reals, one may be missed: the threshold is the 2nd-lowest real score, 0.6 (both 0.6 kept)
    assert m["threshold_at_fnr"] == 0.6 and m["fnr_at_threshold"] == 0.2
    assert m["fpr_at_fnr"] == 0.2  # the 0.7 bogus
    assert (m["precision"], m["recall"]) == (0.8, 0.8) and m["f1_score"] == pytest.approx(0.8)
    assert m["accuracy"] == 0.8 and (m["n_real"], m["n_bogus"]) == (5, 5)
    # AUC: of 25 real-bogus pairs the real is higher in 20, tied in 0: 0.95, 0.9 beat 5 each; 0.6 beats
    # 4 each (not 0.7); 0.2 beats 2
    assert m["roc_auc"] == pytest.approx((5 + 5 + 4 + 4 + 2) / 25)
    # fnr = 0: no real below the threshold, the lowest real score
    assert evaluate(y, s, fnr=0.0)["threshold_at_fnr"] == 0.2


def test_threshold_at_one_percent_of_a_hundred_reals():
    y = np.r_[np.ones(100, bool), np.zeros(3, bool)]
    s = np.r_[np.linspace(0.01, 1.0, 100), [0.0, 0.015, 0.5]]
    m = evaluate(y, s, fnr=0.01)
    assert m["threshold_at_fnr"] == pytest.approx(0.02)  # one real (0.01) missed, not two
    assert m["fpr_at_fnr"] == pytest.approx(1 / 3)


def test_expected_calibration_error_by_hand():
    # bin of 0.1 (scores 0.1, 0.1; one real): |0.1 - 0.5| * 2/4; bin of 0.9 (two reals): |0.9 - 1| * 2/4
    assert evaluate([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9])["expected_calibration_error"] == pytest.approx(0.25)
    # perfectly calibrated: a score of 0.25 with one real in four; a score of 1.0 falls in the last bin
    assert evaluate([1, 0, 0, 0, 1], [0.25, 0.25, 0.25, 0.25, 1.0])["expected_calibration_error"] == \
        pytest.approx(0.0, abs=1e-12)


def test_evaluate_without_bogus_or_with_bad_scores():
    m = evaluate([1, 1, 1], [0.2, 0.5, 0.9])
    assert np.isnan(m["roc_auc"]) and np.isnan(m["fpr_at_fnr"]) and m["recall"] == 1.0
    with pytest.raises(ValueError):
        evaluate([1, 0], [0.5, 1.5])


# --------------------------------------------------------------------------- held-out split


def test_held_out_split_keeps_each_observation_on_one_side():
    groups = np.repeat([f"obs{i}" for i in range(20)], np.arange(1, 21))
    train, held = split_held_out(groups, 0.25, seed=4)
    assert set(groups[train]).isdisjoint(groups[held])
    assert np.array_equal(np.sort(np.r_[train, held]), np.arange(groups.size))
    assert len(set(groups[held])) == 5  # a quarter of the 20 observations
    again = split_held_out(groups, 0.25, seed=4)
    assert np.array_equal(again[1], held) and not np.array_equal(split_held_out(groups, 0.25, seed=5)[1], held)
    with pytest.raises(ValueError):
        split_held_out(["a", "a"], 0.5, seed=0)
