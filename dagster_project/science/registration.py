"""Register the reference image onto the new image's pixel grid.

Only the reference is ever resampled: the new image keeps its white noise.
The transform is an affine map of 0-based pixel coordinates,
``(x_new, y_new, 1) = matrix @ (x_ref, y_ref, 1)``.

Matching strategy
-----------------
1. First guess from the two WCS: reference pixel -> sky -> new pixel.
2. The guess is corrected by the 2-D mode of all pair offsets within
   ``max_wcs_offset`` px (absorbs WCS zero-point errors of several px), then
   stars are paired as mutual nearest neighbours within ``match_radius`` px,
   and an affine transform is fitted robustly with
   :func:`skimage.measure.ransac`; the pairing and fit are repeated once with
   the fitted transform.
3. If that fails (wrong or missing WCS), :func:`astroalign.find_transform`
   matches asterisms (triangles of bright stars) and step 2 is redone from
   its transform.
"""

from dataclasses import dataclass

import astroalign
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import ransac
from skimage.transform import AffineTransform

from .images import ImagePlanes
from .masks import MASK_DTYPE, MaskBit


class RegistrationError(RuntimeError):
    """The reference could not be registered onto the new image."""


@dataclass
class Registration:
    """Affine map from reference pixels to new-image pixels.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        ``(x_new, y_new, 1) = matrix @ (x_ref, y_ref, 1)``, 0-based pixels.
    rms_x, rms_y : float
        RMS of the fit residuals of the matched stars along x and y (new px).
    rms : float
        ``sqrt(rms_x**2 + rms_y**2)``.
    n_matched : int
        Number of matched stars used in the final fit (RANSAC inliers).
    method : str
        ``"wcs"`` (WCS first guess) or ``"asterism"`` (astroalign fallback).
    new_index, ref_index : ndarray of int
        Rows of the input source tables that were matched, pairwise.
    """

    matrix: np.ndarray
    rms_x: float
    rms_y: float
    rms: float
    n_matched: int
    method: str
    new_index: np.ndarray
    ref_index: np.ndarray

    def ref_to_new(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Map reference pixel coordinates to the new image's grid."""
        return _apply(self.matrix, x, y)

    def new_to_ref(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Map new-image pixel coordinates to the reference grid."""
        return _apply(np.linalg.inv(self.matrix), x, y)


def _apply(matrix, x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2], matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]


def _positions(sources: Table, name: str) -> np.ndarray:
    for col in ("x", "y"):
        if col not in sources.colnames:
            raise RegistrationError(f"{name} source table has no '{col}' column")
    xy = np.column_stack([np.asarray(sources["x"], dtype=float), np.asarray(sources["y"], dtype=float)])
    if not np.all(np.isfinite(xy)):
        raise RegistrationError(f"{name} source table has non-finite positions")
    return xy


def _wcs_guess(ref_xy, new_wcs, ref_wcs) -> np.ndarray | None:
    """Affine fit of ref pixel -> sky -> new pixel over the reference sources (None if unusable)."""
    world = ref_wcs.pixel_to_world_values(ref_xy[:, 0], ref_xy[:, 1])
    pred = np.column_stack(new_wcs.world_to_pixel_values(*world))
    fitted = AffineTransform.from_estimate(ref_xy, pred) if np.all(np.isfinite(pred)) else None
    return fitted.params if fitted else None


def _mode_offset(pred, new_xy, radius) -> np.ndarray | None:
    """Most common offset new - pred among all pairs closer than ``radius`` px."""
    pairs = cKDTree(pred).query_ball_tree(cKDTree(new_xy), radius)
    offsets = np.array([new_xy[j] - pred[i] for i, js in enumerate(pairs) for j in js])
    if len(offsets) == 0:
        return None
    edges = np.arange(-radius, radius + 1.0, 1.0)
    hist, _, _ = np.histogram2d(offsets[:, 0], offsets[:, 1], bins=[edges, edges])
    ix, iy = np.unravel_index(np.argmax(hist), hist.shape)
    centre = np.array([edges[ix] + 0.5, edges[iy] + 0.5])
    near = np.all(np.abs(offsets - centre) <= 1.5, axis=1)
    return np.median(offsets[near], axis=0)


def _mutual_nearest(pred, new_xy, radius):
    """Index pairs (ref, new) that are each other's nearest neighbour within ``radius``."""
    d_new, j = cKDTree(new_xy).query(pred, distance_upper_bound=radius)
    _, i_back = cKDTree(pred).query(new_xy)
    ref_idx = np.flatnonzero(np.isfinite(d_new))
    new_idx = j[ref_idx]
    keep = i_back[new_idx] == ref_idx
    return ref_idx[keep], new_idx[keep]


def _fit(ref_xy, new_xy, guess, *, match_radius, residual_threshold, min_matches, rng):
    """Pair stars under ``guess``, fit with RANSAC, re-pair and refit; return (matrix, ref_idx, new_idx) or a reason."""
    matrix = guess
    for _ in range(2):
        pred = np.column_stack(_apply(matrix, ref_xy[:, 0], ref_xy[:, 1]))
        ref_idx, new_idx = _mutual_nearest(pred, new_xy, match_radius)
        if len(ref_idx) < max(min_matches, 3):
            return f"only {len(ref_idx)} stars paired within {match_radius} px (need {min_matches})"
        model, inliers = ransac(
            (ref_xy[ref_idx], new_xy[new_idx]), AffineTransform, min_samples=3,
            residual_threshold=residual_threshold, max_trials=500, rng=rng,
        )
        if model is None or inliers is None or inliers.sum() < min_matches:
            n_in = 0 if inliers is None else int(inliers.sum())
            return f"only {n_in} of {len(ref_idx)} paired stars agree on one affine transform (need {min_matches})"
        fitted = AffineTransform.from_estimate(ref_xy[ref_idx[inliers]], new_xy[new_idx[inliers]])
        if not fitted:  # a FailedEstimation (degenerate point set) is falsy
            return f"the affine fit to {int(inliers.sum())} matched stars is degenerate"
        matrix = fitted.params
    return matrix, ref_idx[inliers], new_idx[inliers]


def register_images(
    new_sources: Table,
    ref_sources: Table,
    new_wcs: WCS | None = None,
    ref_wcs: WCS | None = None,
    *,
    match_radius: float = 2.0,
    max_wcs_offset: float = 20.0,
    residual_threshold: float = 0.5,
    min_matches: int = 6,
    max_rms: float = 0.3,
    seed: int = 0,
) -> Registration:
    """Find the affine transform from reference pixels to new-image pixels.

    Parameters
    ----------
    new_sources, ref_sources : astropy.table.Table
        Star positions (columns ``x``, ``y``, 0-based px) in each image,
        ideally PSF-fitted, brightest first (the asterism fallback uses the
        first 50).
    new_wcs, ref_wcs : astropy.wcs.WCS, optional
        Celestial WCS of each image for the first guess; without them (or
        without a celestial part) the asterism matcher is used directly.
    match_radius : float
        Pairing radius (px) after the first-guess correction.
    max_wcs_offset : float
        Largest WCS first-guess error (px) corrected by the offset mode.
    residual_threshold : float
        RANSAC inlier threshold (px).
    min_matches : int
        Minimum number of matched stars.
    max_rms : float
        Largest acceptable total residual RMS (px).
    seed : int
        Seed of the RANSAC sampler (results are reproducible).

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        With the reason: too few sources, too few matches, or residuals
        larger than ``max_rms``.
    """
    new_xy = _positions(new_sources, "new")
    ref_xy = _positions(ref_sources, "reference")
    if min(len(new_xy), len(ref_xy)) < min_matches:
        raise RegistrationError(
            f"too few sources to register: {len(new_xy)} in the new image, {len(ref_xy)} in the reference "
            f"(need at least {min_matches} in each)"
        )
    rng = np.random.default_rng(seed)
    kwargs = dict(match_radius=match_radius, residual_threshold=residual_threshold, min_matches=min_matches, rng=rng)
    reasons = []
    outcome = None
    method = "wcs"
    if new_wcs is not None and ref_wcs is not None and new_wcs.has_celestial and ref_wcs.has_celestial:
        guess = _wcs_guess(ref_xy, new_wcs, ref_wcs)
        offset = None
        if guess is not None:
            offset = _mode_offset(np.column_stack(_apply(guess, ref_xy[:, 0], ref_xy[:, 1])), new_xy, max_wcs_offset)
        if offset is None:
            reasons.append(f"WCS guess: no source pairs within {max_wcs_offset} px")
        else:
            guess = guess.copy()
            guess[:2, 2] += offset
            outcome = _fit(ref_xy, new_xy, guess, **kwargs)
            if isinstance(outcome, str):
                reasons.append(f"WCS guess: {outcome}")
                outcome = None
    if outcome is None:
        method = "asterism"
        try:
            transform, _ = astroalign.find_transform(ref_xy[:50], new_xy[:50])
        except Exception as exc:  # astroalign raises MaxIterError, ValueError, TypeError
            reasons.append(f"asterism matching failed: {exc}")
        else:
            outcome = _fit(ref_xy, new_xy, transform.params, **kwargs)
            if isinstance(outcome, str):
                reasons.append(f"asterism guess: {outcome}")
                outcome = None
    if outcome is None:
        raise RegistrationError("could not register the reference: " + "; ".join(reasons))
    matrix, ref_idx, new_idx = outcome
    resid = np.column_stack(_apply(matrix, ref_xy[ref_idx, 0], ref_xy[ref_idx, 1])) - new_xy[new_idx]
    rms_x, rms_y = np.sqrt(np.mean(resid**2, axis=0))
    rms = float(np.hypot(rms_x, rms_y))
    if rms > max_rms:
        raise RegistrationError(
            f"registration residual RMS {rms:.3f} px over {len(ref_idx)} stars exceeds the limit of {max_rms} px"
        )
    return Registration(
        matrix=matrix, rms_x=float(rms_x), rms_y=float(rms_y), rms=rms, n_matched=len(ref_idx),
        method=method, new_index=new_idx, ref_index=ref_idx,
    )


def _ndimage_affine(registration: Registration) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset for :func:`scipy.ndimage.affine_transform` ([y, x] order, output -> input)."""
    inv = np.linalg.inv(registration.matrix)
    swap = np.array([[0, 1], [1, 0]])
    return swap @ inv[:2, :2] @ swap, swap @ inv[:2, 2]


def _outside(registration: Registration, input_shape, output_shape) -> np.ndarray:
    """True for output pixels whose reference position is outside the reference's pixel-centre hull [0, n-1]."""
    matrix, offset = _ndimage_affine(registration)
    inside = ndimage.affine_transform(
        np.ones(input_shape, dtype=np.uint8), matrix, offset=offset, output_shape=tuple(output_shape),
        order=0, mode="constant", cval=0,
    )
    return inside == 0


def resample_to_grid(
    image: np.ndarray, registration: Registration, output_shape: tuple[int, int], order: int = 3
) -> np.ndarray:
    """Interpolate a reference-grid image onto the new image's grid.

    Spline interpolation of order ``order`` (:func:`scipy.ndimage.affine_transform`);
    non-finite input pixels are set to 0 first (so they do not spread
    through the spline prefilter; mask them separately with
    :func:`resample_mask`). Values are per-pixel interpolations, not
    flux-conserving for a scale change: the flux ratio measured afterwards on
    the resampled image absorbs the ``|det matrix|`` factor.

    Returns
    -------
    ndarray, float32, ``output_shape``
        NaN where the output pixel maps outside the reference.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    matrix, offset = _ndimage_affine(registration)
    filled = np.where(np.isfinite(image), image, 0).astype(np.float32, copy=False)
    out = ndimage.affine_transform(
        filled, matrix, offset=offset, output_shape=tuple(output_shape), output=np.float32, order=order, mode="nearest"
    )
    out[_outside(registration, image.shape, output_shape)] = np.nan
    return out


def resample_variance(
    variance: np.ndarray, registration: Registration, output_shape: tuple[int, int]
) -> np.ndarray:
    """Variance map on the new grid by linear interpolation (stays positive).

    This is the interpolated variance, not the exact propagation
    ``sum(w_i**2 var_i)`` of the interpolation weights: the per-pixel
    variance of the resampled image is lower than this and its noise
    correlated, but the variance integrated over a PSF-sized kernel (what
    ZOGY's V_S uses) is close to the interpolated value. Non-finite or
    negative input variances are replaced by the median before interpolation.
    """
    variance = np.asarray(variance, dtype=np.float32)
    good = np.isfinite(variance) & (variance >= 0)
    filled = np.where(good, variance, np.median(variance[good]) if good.any() else 0.0)
    return resample_to_grid(filled, registration, output_shape, order=1)


def _or_dilate(mask: np.ndarray) -> np.ndarray:
    """Bitwise OR of each pixel's 3x3 neighbourhood (separable: rows, then columns)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def resample_mask(mask: np.ndarray, registration: Registration, output_shape: tuple[int, int]) -> np.ndarray:
    """Mask bits on the new grid: nearest reference pixel, OR-dilated by 1 px.

    Output pixels outside the reference (and, after the dilation, their
    neighbours, where the spline is extrapolated) get ``MaskBit.EDGE``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    matrix, offset = _ndimage_affine(registration)
    out = ndimage.affine_transform(
        mask.astype(MASK_DTYPE), matrix, offset=offset, output_shape=tuple(output_shape), output=MASK_DTYPE,
        order=0, mode="nearest",
    )
    out[_outside(registration, mask.shape, output_shape)] |= MASK_DTYPE(MaskBit.EDGE)
    return _or_dilate(out)


def resample_planes(
    planes: ImagePlanes,
    registration: Registration,
    output_shape: tuple[int, int],
    output_header: fits.Header,
    order: int = 3,
) -> ImagePlanes:
    """Resample data, variance and mask of a reference onto the new grid.

    Masked (any bit) and non-finite data pixels are set to 0 before the
    interpolation, so pass background-subtracted data (0 is then the sky)
    and keep the mask. The output header is the reference header with its
    WCS keywords replaced by ``output_header`` (e.g. ``new.wcs.to_header()``)
    and ``RESAMPLD = T``.
    """
    data = np.where(np.asarray(planes.mask) != 0, 0, planes.data)
    header = planes.header.copy()
    for key in WCS(planes.header).to_header(relax=True):
        header.remove(key, ignore_missing=True, remove_all=True)
    header.update(output_header)
    header["RESAMPLD"] = (True, "resampled onto the new image grid")
    return ImagePlanes(
        data=resample_to_grid(data, registration, output_shape, order),
        variance=resample_variance(planes.variance, registration, output_shape),
        mask=resample_mask(planes.mask, registration, output_shape),
        header=header,
    )
