"""Real/bogus classification of transient candidates: features, a gradient-boosted classifier and its metrics.

The feature-based model of issue 14, in the manner of DES autoScan (Goldstein et al. 2015: a
random forest on measured features, trained on fake point sources injected into the images as
"real" and on artifacts as "bogus") and of the feature set ZTF scores candidates with: features
from the candidate table (:mod:`~dagster_project.science.detection`) and from new / reference /
difference cutouts, a :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (which takes
missing features as NaN), isotonic calibration, and the metrics the issue's goals are stated in.

Features (:data:`FEATURES`, in this order)
------------------------------------------
From a candidate row, a dict with the detection table's columns (``x``, ``flux_err``, ...) or the
catalog's Candidate columns (``pixel_x``, ``flux_error``, ...) and their ``features`` JSON; a value
missing or None is NaN. Scale-free where a scale exists, so that a model trained on some frames
applies to frames of other seeing and depth: ``psf_fwhm`` (px) is the FWHM of the difference's
PSF (or of the new image's), and the features that need it are NaN without it.

* ``snr`` (``|flux| / flux_err``), ``significance`` (``|S_corr|`` at the peak) and
  ``significance_to_snr`` (their ratio: about 1 for a point source, which the matched filter and
  the PSF photometry see alike);
* ``sharpness`` (peak of D over a point source's), ``ellipticity``;
* ``fwhm_ratio`` (FWHM of D's moments / ``psf_fwhm``), ``log10_area_ratio`` (log10 of the area
  above threshold over the PSF core ``pi (psf_fwhm / 2)^2``);
* ``opposite_fraction`` (``n_opposite_pixels`` over the disk of radius ``2 psf_fwhm`` they are
  counted in: dipoles of mis-registration), ``ref_distance_fwhm`` (distance to the nearest
  reference source in FWHM).

From the cutout triplet (:func:`cutout_triplets`; stamps in units of their own noise), in a disk
of radius ``1.5 psf_fwhm`` around the candidate's sub-pixel position, the difference stamp taken
with the candidate's sign (a fading source is measured as a brightening one):

* ``psf_correlation``: Pearson correlation of the difference with a round Moffat PSF (beta 3,
  the PSF fit's starting shape and the simulator's) of ``psf_fwhm`` at the position
  (autoScan's and ZTF's "how PSF-like is it");
* ``peak_to_total``: the difference's highest pixel of the central 3x3 over its disk sum,
  relative to the same ratio of the PSF: about 1 for point sources, larger for cosmic rays and
  hot pixels, smaller for extended residuals;
* ``negative_fraction``: negative flux over absolute flux in the disk (dipoles, ringing);
* ``new_aperture_snr``, ``ref_aperture_snr``, ``diff_aperture_snr``: disk sum over the square
  root of its pixel count, an aperture S/N in each stamp;
* ``new_ref_contrast``: ``(new - ref) / (|new| + |ref|)`` of the disk sums, with the candidate's
  sign, in [-1, 1]: 1 for a source absent from the reference, near 0 for a residual of a source
  present in both.

The flags ``is_saturated``, ``is_edge``, ``is_blended`` and the masked fraction are NOT features:
fakes are placed away from masks, edges and bright sources, so a model would learn the placement
rule (flagged means bogus) rather than what real sources look like; the flags stay for the
pipeline's ``is_good`` cut. ``is_negative`` is not one either: fakes are all positive.

Cutouts (:func:`cutout_triplets`)
---------------------------------
Each stamp has its median subtracted (the sky of a calibrated new image) and is divided by its own
robust standard deviation (:func:`astropy.stats.mad_std`), so stamps of frames of any depth and
gain are in units of their own noise; pixels outside the image or not finite become 0 (the sky)
after that. A stamp without a usable scale (flat, or all masked) is all 0.

Classifier and metrics
----------------------
:func:`train_classifier`: gradient boosting with early stopping on an internal 10 % split and
balanced class weights (fakes and artifacts come in any ratio), then isotonic calibration fitted
out of fold (3 stratified folds: each fold's booster is calibrated on the third it did not see,
and the three calibrated models are averaged), so scores are frequencies of real at the training
set's class balance. :func:`evaluate`: ROC-AUC, the operating point at a false-negative rate,
calibration error and the rates at that point. :func:`split_held_out`: whole observations held out.
"""

import warnings

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, StratifiedKFold
from threadpoolctl import threadpool_limits

from .injection import cutouts
from .parallel import threads_for
from .psf_models import moffat_alpha

__all__ = [
    "CUTOUT_FEATURES",
    "FEATURES",
    "ROW_FEATURES",
    "cutout_triplets",
    "evaluate",
    "expected_calibration_error",
    "feature_matrix",
    "score",
    "split_held_out",
    "train_classifier",
]

#: Features measured from a candidate row (see the module notes).
ROW_FEATURES = (
    "snr", "significance", "significance_to_snr", "sharpness", "ellipticity", "fwhm_ratio", "log10_area_ratio",
    "opposite_fraction", "ref_distance_fwhm",
)

#: Features measured from a candidate's new / reference / difference cutouts.
CUTOUT_FEATURES = (
    "psf_correlation", "peak_to_total", "negative_fraction", "new_aperture_snr", "ref_aperture_snr",
    "diff_aperture_snr", "new_ref_contrast",
)

#: Every feature, in the column order of :func:`feature_matrix`.
FEATURES = ROW_FEATURES + CUTOUT_FEATURES

#: Other names of the row keys read (detection table name first, then the catalog's Candidate column).
_ALIASES = {"x": ("x", "pixel_x"), "y": ("y", "pixel_y"), "flux_err": ("flux_err", "flux_error")}

#: Radius of the disk the cutout features are measured in, in PSF FWHM.
_APERTURE_FWHM = 1.5

#: Moffat beta of the PSF template of the cutout features.
_TEMPLATE_BETA = 3.0


# --------------------------------------------------------------------------- features


def feature_matrix(rows, triplets: np.ndarray | None = None, psf_fwhm=None) -> np.ndarray:
    """The :data:`FEATURES` of each candidate, one row each, NaN where a feature cannot be measured.

    Parameters
    ----------
    rows : sequence of dict, or astropy.table.Table
        Candidate rows: detection-table columns, or catalog Candidate columns with their
        ``features`` dict (see the module notes).
    triplets : ndarray, shape (n, 3, k, k), optional
        Their :func:`cutout_triplets`; without them the cutout features are NaN.
    psf_fwhm : float or array_like, optional
        FWHM (px) of the difference image's PSF, one for all rows or one per row; needed for the
        scale-free features, and required with ``triplets``.

    Returns
    -------
    ndarray of float32, shape (n, len(FEATURES))

    Examples
    --------
    >>> row = {"x": 10.0, "y": 12.0, "flux": 500.0, "flux_err": 50.0, "snr": 10.0, "significance": 9.0,
    ...        "sharpness": 1.0, "ellipticity": 0.1, "fwhm": 3.3, "area": 40, "n_opposite_pixels": 0,
    ...        "ref_distance_px": 30.0}
    >>> X = feature_matrix([row], psf_fwhm=3.0)
    >>> X.shape, X.dtype, [round(float(v), 2) for v in X[0, 2:6]], bool(np.isnan(X[0, -1]))
    ((1, 16), dtype('float32'), [0.9, 1.0, 0.1, 1.1], True)
    >>> catalog_row = {"pixel_x": 10.0, "pixel_y": 12.0, "flux_error": 50.0, "snr": 10.0,
    ...                "features": {"sharpness": 1.0, "ref_distance_px": 30.0}}
    >>> [round(float(v), 1) for v in feature_matrix([catalog_row], psf_fwhm=3.0)[0, [0, 3, 8]]]
    [10.0, 1.0, 10.0]
    """
    rows = _as_rows(rows)
    fwhm = _per_row(psf_fwhm, len(rows))
    X = np.full((len(rows), len(FEATURES)), np.nan)
    X[:, : len(ROW_FEATURES)] = _row_features(rows, fwhm)
    if triplets is not None:
        triplets = _check_triplets(triplets, len(rows))
        if psf_fwhm is None:
            raise ValueError("the cutout features need psf_fwhm")
        x, y, sign = (np.array([_value(r, k) for r in rows]) for k in ("x", "y", "is_negative"))
        sign = np.where(sign == 1.0, -1.0, 1.0)
        X[:, len(ROW_FEATURES) :] = _cutout_features(triplets, x - np.rint(x), y - np.rint(y), sign, fwhm)
    X = X.astype(np.float32)
    X[~np.isfinite(X)] = np.nan  # divisions by zero, and float64 values beyond float32
    return X


def _as_rows(rows) -> list:
    """The rows as a list of mappings (a Table's rows as dicts)."""
    if isinstance(rows, Table):
        return [dict(zip(rows.colnames, row)) for row in rows]
    return list(rows)


def _per_row(psf_fwhm, n: int) -> np.ndarray:
    """The PSF FWHM as one float per row (NaN without one); ValueError if not positive."""
    if psf_fwhm is None:
        return np.full(n, np.nan)
    fwhm = np.broadcast_to(np.asarray(psf_fwhm, dtype=float), (n,)).copy()
    if not np.all(fwhm > 0):
        raise ValueError("psf_fwhm must be > 0")
    return fwhm


def _value(row, name: str) -> float:
    """``row[name]`` (or an alias, or in ``row['features']``) as a float; NaN if missing or None."""
    extra = row.get("features") or {}
    for key in _ALIASES.get(name, (name,)):
        for source in (row, extra):
            value = source.get(key)
            if value is not None:
                return float(value)
    return np.nan


def _row_features(rows: list, fwhm: np.ndarray) -> np.ndarray:
    """The :data:`ROW_FEATURES` columns (float64, may hold inf from divisions by zero)."""
    names = ("snr", "significance", "sharpness", "ellipticity", "fwhm", "area", "n_opposite_pixels",
             "ref_distance_px")
    c = {name: np.array([_value(r, name) for r in rows], dtype=float).reshape(-1) for name in names}
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack([
            c["snr"], c["significance"], c["significance"] / c["snr"], c["sharpness"], c["ellipticity"],
            c["fwhm"] / fwhm, np.log10(c["area"] / (np.pi * (fwhm / 2.0) ** 2)),
            c["n_opposite_pixels"] / (np.pi * (2.0 * fwhm) ** 2), c["ref_distance_px"] / fwhm,
        ])


def _check_triplets(triplets, n: int) -> np.ndarray:
    """Triplets as float64 ``(n, 3, k, k)``; ValueError for another shape."""
    triplets = np.asarray(triplets, dtype=float)
    if triplets.ndim != 4 or triplets.shape[:2] != (n, 3):
        raise ValueError(f"triplets must be (n={n}, 3, k, k), got {triplets.shape}")
    return triplets


def _cutout_features(triplets: np.ndarray, dx, dy, sign, fwhm) -> np.ndarray:
    """The :data:`CUTOUT_FEATURES` columns from stamps in noise units (see the module notes)."""
    ky, kx = triplets.shape[2:]
    ry = np.arange(ky)[None, :, None] - ky // 2 - dy[:, None, None]
    rx = np.arange(kx)[None, None, :] - kx // 2 - dx[:, None, None]
    r2 = ry**2 + rx**2
    # sampled at pixel centres, unnormalised: the features are ratios and correlations
    psf = (1.0 + r2 / moffat_alpha(fwhm, _TEMPLATE_BETA)[:, None, None] ** 2) ** -_TEMPLATE_BETA
    disk = r2 <= np.maximum(_APERTURE_FWHM * fwhm, 1.0)[:, None, None] ** 2
    new, ref, diff = triplets[:, 0], triplets[:, 1], sign[:, None, None] * triplets[:, 2]
    new_sum, ref_sum = (np.sum(stamp * disk, axis=(1, 2)) for stamp in (new, ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack([
            _correlation(diff, psf, disk), _peak_to_total(diff, disk) / _peak_to_total(psf, disk),
            np.sum(np.clip(-diff, 0, None) * disk, axis=(1, 2)) / np.sum(np.abs(diff) * disk, axis=(1, 2)),
            *(_aperture_snr(stamp, disk) for stamp in (new, ref, diff)),
            sign * (new_sum - ref_sum) / (np.abs(new_sum) + np.abs(ref_sum)),
        ])


def _correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of stamps over the pixels ``where`` (NaN for a flat stamp)."""
    n = where.sum(axis=(1, 2))
    da = np.where(where, a - (np.sum(a * where, axis=(1, 2)) / n)[:, None, None], 0.0)
    db = np.where(where, b - (np.sum(b * where, axis=(1, 2)) / n)[:, None, None], 0.0)
    return np.sum(da * db, axis=(1, 2)) / np.sqrt(np.sum(da**2, axis=(1, 2)) * np.sum(db**2, axis=(1, 2)))


def _peak_to_total(stamps: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Highest pixel of the central 3x3 over the sum over ``where``; NaN where that sum is not positive."""
    cy, cx = stamps.shape[1] // 2, stamps.shape[2] // 2
    peak = stamps[:, cy - 1 : cy + 2, cx - 1 : cx + 2].max(axis=(1, 2))
    total = np.sum(stamps * where, axis=(1, 2))
    return np.where(total > 0, peak / total, np.nan)


def _aperture_snr(stamp: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Sum over ``where`` of a stamp in noise units, over the square root of the pixel count."""
    return np.sum(stamp * where, axis=(1, 2)) / np.sqrt(where.sum(axis=(1, 2)))


# --------------------------------------------------------------------------- cutouts


def cutout_triplets(new, ref, diff, x, y, size: int = 21) -> np.ndarray:
    """New, reference and difference stamps around each position, each in units of its own noise.

    Parameters
    ----------
    new, ref, diff : ndarray, shape (ny, nx)
        The new image, the reference on its grid and the difference (e.g. ZOGY's D), any units.
    x, y : array_like
        0-based positions; stamps are centred on the nearest pixel.
    size : int
        Odd side of the stamps (px).

    Returns
    -------
    ndarray of float32, shape (n, 3, size, size)
        ``[:, 0]`` new, ``[:, 1]`` reference, ``[:, 2]`` difference: each stamp minus its median,
        over its robust standard deviation; 0 outside the image and at non-finite pixels.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> new = 1000.0 + 30.0 * rng.normal(size=(64, 64))      # sky 1000 e-, noise 30 e-
    >>> ref, diff = 5.0 * rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    >>> stamps = cutout_triplets(new, ref, diff, [20.2, 2.0], [30.7, 40.0], size=11)
    >>> stamps.shape, stamps.dtype, [round(float(np.std(stamps[0, i])), 1) for i in range(3)]
    ((2, 3, 11, 11), dtype('float32'), [1.0, 1.0, 1.0])
    >>> float(stamps[1, 0, 5, 0])                             # column x = -3 is outside the image
    0.0
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"size must be odd and >= 3, got {size}")
    images = [np.asarray(image) for image in (new, ref, diff)]
    if any(image.ndim != 2 or image.shape != images[0].shape for image in images):
        raise ValueError(f"new, ref and diff must be 2-D of one shape, got {[i.shape for i in images]}")
    x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    stamps = np.stack([cutouts(image, cx, cy, (size, size)) for image in images], axis=1)
    return _in_noise_units(stamps)


def _in_noise_units(stamps: np.ndarray) -> np.ndarray:
    """Each stamp minus its median over its MAD standard deviation, NaN as 0; a stamp without a scale all 0."""
    flat = stamps.reshape(-1, stamps.shape[-2] * stamps.shape[-1])
    with warnings.catch_warnings():  # all-NaN stamps (entirely outside the image or masked) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(flat, axis=1)
        scale = mad_std(flat, axis=1, ignore_nan=True)
    usable = np.isfinite(scale) & (scale > 0)
    out = np.zeros_like(flat)
    out[usable] = (flat[usable] - median[usable, None]) / scale[usable, None]
    return np.nan_to_num(out, nan=0.0).reshape(stamps.shape).astype(np.float32)


# --------------------------------------------------------------------------- classifier


def train_classifier(X, y, *, seed: int = 0, calibrate: bool = True, max_iter: int = 500, workers: int = 1):
    """A gradient-boosted real/bogus classifier, isotonic-calibrated (see *Classifier and metrics*).

    Parameters
    ----------
    X : array_like, shape (n, n_features)
        Features (:func:`feature_matrix`); NaN for missing values.
    y : array_like of bool or {0, 1}
        1 (True) for real, 0 for bogus; both must occur.
    seed : int
        Seed of the internal validation split and of the calibration folds.
    calibrate : bool
        Calibrate with isotonic regression on 3 out-of-fold thirds; without, the booster alone
        (its scores then reflect the balanced class weights, not frequencies).
    max_iter : int
        Most boosting iterations (early stopping usually ends sooner).
    workers : int
        OpenMP threads of the booster (:func:`~dagster_project.science.parallel.threads_for`:
        -1 for every usable core). One by default: on this 2-core machine with other work running,
        OpenMP's threads wait for each other at every split (600 samples: 11 s with 2 threads, 1.4 s
        with one).

    Returns
    -------
    sklearn estimator
        Fitted and picklable: ``CalibratedClassifierCV`` or ``HistGradientBoostingClassifier``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random(600) < 0.5
    >>> X = rng.normal(size=(600, 3)) + 3.0 * y[:, None]
    >>> model = train_classifier(X, y, max_iter=100)
    >>> p = score(model, X)
    >>> bool(p[y].mean() > 0.9 and p[~y].mean() < 0.1)
    True
    """
    X, y = _check_training(X, y)
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, early_stopping=True, validation_fraction=0.1, n_iter_no_change=20,
        class_weight="balanced", random_state=seed,
    )
    if calibrate:
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        model = CalibratedClassifierCV(model, method="isotonic", cv=folds)
    with threadpool_limits(limits=threads_for(workers), user_api="openmp"):
        return model.fit(X, y)


def _check_training(X, y) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 2-D and labels as 0/1 of the same length, with both classes."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(int)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, n_features) and y (n,), got {X.shape} and {y.shape}")
    if not set(np.unique(y)) == {0, 1}:
        raise ValueError("y must hold both classes, 0 (bogus) and 1 (real), and nothing else")
    return X, y


def score(model, X, *, workers: int = 1) -> np.ndarray:
    """Probability that each candidate is real, in [0, 1], from a :func:`train_classifier` model.

    ``workers`` as in :func:`train_classifier` (one thread: a frame's few hundred candidates are
    scored faster than threads start).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = np.arange(400) % 2 == 0
    >>> model = train_classifier(rng.normal(size=(400, 2)) + 4.0 * y[:, None], y, calibrate=False, max_iter=100)
    >>> p = score(model, [[4.0, 4.0], [0.0, 0.0], [np.nan, 4.0]])
    >>> p.shape, bool(p[0] > 0.9 > 0.1 > p[1]), bool(np.all((p >= 0) & (p <= 1)))
    ((3,), True, True)
    """
    with threadpool_limits(limits=threads_for(workers), user_api="openmp"):
        proba = model.predict_proba(np.asarray(X, dtype=np.float32))
    return np.clip(proba[:, list(model.classes_).index(1)].astype(float), 0.0, 1.0)


# --------------------------------------------------------------------------- metrics


def evaluate(y_true, score, *, fnr: float = 0.01, n_bins: int = 15) -> dict:
    """Metrics of real/bogus scores at the operating point that misses at most ``fnr`` of the reals.

    Parameters
    ----------
    y_true : array_like of bool or {0, 1}
        1 for real.
    score : array_like
        Scores in [0, 1] (:func:`score`); a candidate is called real when ``score >= threshold``.
    fnr : float
        Largest false-negative rate (missed fraction of reals) allowed, in [0, 1).
    n_bins : int
        Equal-width score bins of the calibration error.

    Returns
    -------
    dict
        ``roc_auc``; ``threshold_at_fnr`` (the largest threshold with at most ``fnr`` of the reals
        below it, i.e. the ``floor(fnr n_real) + 1``-th lowest real score); ``fnr_at_threshold``
        (the rate reached); ``fpr_at_fnr`` (fraction of bogus at or above it);
        ``expected_calibration_error`` (``sum_b n_b / n |mean score_b - fraction real_b|``);
        ``precision``, ``recall``, ``f1_score``, ``accuracy`` at the threshold; ``n_real``,
        ``n_bogus``. Values that need a class that is absent are NaN.

    Examples
    --------
    Four reals and four bogus; at ``fnr=0.25`` one real (0.3) may be missed:

    >>> m = evaluate([1, 1, 1, 1, 0, 0, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.75, 0.2, 0.1, 0.05], fnr=0.25)
    >>> m["roc_auc"], m["threshold_at_fnr"], m["fpr_at_fnr"], m["precision"], m["recall"]
    (0.875, 0.7, 0.25, 0.75, 0.75)
    """
    y, s = _check_scores(y_true, score, fnr)
    threshold = _threshold_at_fnr(s[y], fnr)
    called = s >= threshold
    real, bogus = int(y.sum()), int((~y).sum())
    return {
        "roc_auc": float(roc_auc_score(y, s)) if real and bogus else np.nan,
        "threshold_at_fnr": threshold,
        "fnr_at_threshold": float(np.mean(~called[y])) if real else np.nan,
        "fpr_at_fnr": float(np.mean(called[~y])) if bogus else np.nan,
        "expected_calibration_error": expected_calibration_error(s, y, n_bins),
        "precision": float(precision_score(y, called, zero_division=0.0)),
        "recall": float(recall_score(y, called, zero_division=0.0)),
        "f1_score": float(f1_score(y, called, zero_division=0.0)),
        "accuracy": float(accuracy_score(y, called)),
        "n_real": real,
        "n_bogus": bogus,
    }


def _check_scores(y_true, score, fnr: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels as bool and scores as float, 1-D of one length, scores in [0, 1], ``fnr`` in [0, 1)."""
    y, s = np.asarray(y_true).astype(bool), np.asarray(score, dtype=float)
    if y.ndim != 1 or y.shape != s.shape or y.size == 0:
        raise ValueError(f"y_true and score must be 1-D of one non-zero length, got {y.shape} and {s.shape}")
    if not np.all((s >= 0) & (s <= 1)):
        raise ValueError("scores must be finite and in [0, 1]")
    if not 0 <= fnr < 1:
        raise ValueError(f"fnr must be in [0, 1), got {fnr}")
    return y, s


def _threshold_at_fnr(real_scores: np.ndarray, fnr: float) -> float:
    """The largest threshold leaving at most ``fnr`` of the reals below it: the ``m + 1``-th lowest real
    score, ``m = floor(fnr n)`` (ties at it are kept, any higher threshold misses ``m + 1``)."""
    if real_scores.size == 0:
        return np.nan
    allowed = int(np.floor(fnr * real_scores.size + 1e-9))  # the tolerance: fnr n = 1 given as 0.01 * 100
    return float(np.sort(real_scores)[allowed])


def expected_calibration_error(score, labels, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1] (a score of 1 in the last):
    ``sum_b (n_b / n) |mean score_b - fraction real_b| = sum_b |sum score_b - sum real_b| / n``
    (Naeini et al. 2015; Guo et al. 2017).

    Examples
    --------
    >>> round(expected_calibration_error([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 1]), 6)
    0.1
    >>> expected_calibration_error([0.5, 0.5], [0, 1])
    0.0
    """
    s, y = np.asarray(score, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if s.shape != y.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if not np.all((s >= 0) & (s <= 1)):
        raise ValueError("scores must be in [0, 1]")
    bins = np.minimum((s * n_bins).astype(int), n_bins - 1)
    score_sums = np.bincount(bins, weights=s, minlength=n_bins)
    real_counts = np.bincount(bins, weights=y, minlength=n_bins)
    return float(np.abs(score_sums - real_counts).sum() / s.size)


def split_held_out(groups, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out sample indices with whole groups (observations) on one side only.

    Parameters
    ----------
    groups : array_like
        Group of each sample (e.g. its observation id).
    fraction : float
        Fraction of the GROUPS held out (rounded up to a whole group; at least one stays for
        training), in (0, 1).
    seed : int
        Seed of the choice of groups.

    Returns
    -------
    train, held_out : ndarray of int
        Sorted sample indices (:class:`sklearn.model_selection.GroupShuffleSplit`).

    Examples
    --------
    >>> groups = ["a", "a", "b", "b", "b", "c", "d", "d"]
    >>> train, held = split_held_out(groups, 0.25, seed=0)
    >>> len(set(np.take(groups, train)) & set(np.take(groups, held))), len(set(np.take(groups, held)))
    (0, 1)
    """
    groups = np.asarray(groups)
    if np.unique(groups).size < 2:
        raise ValueError("need at least two groups to hold one out")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train, held = next(splitter.split(np.zeros(groups.size), groups=groups))
    return np.sort(train), np.sort(held)
