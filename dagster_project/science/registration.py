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
   and an affine transform is fitted robustly (RANSAC over 500 random star
   triplets, scored together, then a least-squares fit to the inliers); the
   pairing and fit are repeated once with the fitted transform.
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

from .images import ImagePlanes
from .masks import MASK_DTYPE, MaskBit, dilate
from .parallel import n_threads, row_blocks, run_threads

__all__ = [
    "Registration",
    "RegistrationError",
    "register_images",
    "resample_mask",
    "resample_planes",
    "resample_to_grid",
    "resample_variance",
]


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


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares affine matrix (3x3) mapping ``src`` (N, 2) onto ``dst``; None if the points are degenerate.

    Ordinary least squares (``np.linalg.lstsq`` on the (N, 3) design
    matrix); scikit-image's ``AffineTransform`` estimate takes the full SVD
    of a 2N x 7 system, which costs 50 ms for 300 stars.
    """
    design = np.column_stack([src, np.ones(len(src))])
    coef, _, rank, _ = np.linalg.lstsq(design, dst, rcond=None)
    if rank < 3:
        return None
    matrix = np.eye(3)
    matrix[:2] = coef.T
    return matrix


def _ransac_affine(src, dst, residual_threshold: float, rng, max_trials: int = 500):
    """RANSAC affine fit: the 3-point model with most inliers (ties: smallest inlier residual), refitted.

    All ``max_trials`` random triplets are solved and scored at once.
    Returns (matrix, inlier mask) or (None, None) when no triplet is
    non-degenerate.
    """
    n = len(src)
    triplets = np.argsort(rng.random((max_trials, n)), axis=1)[:, :3]
    corners = np.concatenate([src[triplets], np.ones((max_trials, 3, 1))], axis=2)  # (T, 3, 3)
    usable = np.abs(np.linalg.det(corners)) > 1e-6
    if not usable.any():
        return None, None
    coef = np.linalg.solve(corners[usable], dst[triplets[usable]])  # (T, 3, 2): [x y 1] -> dst
    pred = np.einsum("nk,tkj->tnj", np.column_stack([src, np.ones(n)]), coef)
    resid = np.linalg.norm(pred - dst, axis=2)
    inliers = resid < residual_threshold
    score = inliers.sum(axis=1) - np.where(inliers, resid, 0).sum(axis=1) / (n * residual_threshold)
    best = inliers[int(np.argmax(score))]
    matrix = _fit_affine(src[best], dst[best]) if best.sum() >= 3 else None
    return (matrix, best) if matrix is not None else (None, None)


def _wcs_guess(ref_xy, new_wcs, ref_wcs) -> np.ndarray | None:
    """Affine fit of ref pixel -> sky -> new pixel over the reference sources (None if unusable)."""
    world = ref_wcs.pixel_to_world_values(ref_xy[:, 0], ref_xy[:, 1])
    pred = np.column_stack(new_wcs.world_to_pixel_values(*world))
    return _fit_affine(ref_xy, pred) if np.all(np.isfinite(pred)) else None


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
        matrix, inliers = _ransac_affine(ref_xy[ref_idx], new_xy[new_idx], residual_threshold, rng)
        if matrix is None:
            return f"the {len(ref_idx)} paired stars are degenerate (collinear): no affine transform"
        if inliers.sum() < min_matches:
            return (f"only {int(inliers.sum())} of {len(ref_idx)} paired stars agree on one affine transform "
                    f"(need {min_matches})")
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

    Examples
    --------
    Thirty stars shifted by (5.3, -2.1) px, without WCS (matched by asterisms):

    >>> rng = np.random.default_rng(0)
    >>> ref = Table({"x": rng.uniform(0, 200, 30), "y": rng.uniform(0, 200, 30)})
    >>> new = Table({"x": ref["x"] + 5.3, "y": ref["y"] - 2.1})
    >>> registration = register_images(new, ref)
    >>> registration.method, registration.n_matched, bool(registration.rms < 1e-6)
    ('asterism', 30, True)
    >>> [round(float(v), 6) for v in registration.ref_to_new(10.0, 20.0)]
    [15.3, 17.9]
    """
    new_xy = _positions(new_sources, "new")
    ref_xy = _positions(ref_sources, "reference")
    if min(len(new_xy), len(ref_xy)) < min_matches:
        raise RegistrationError(
            f"too few sources to register: {len(new_xy)} in the new image, {len(ref_xy)} in the reference "
            f"(need at least {min_matches} in each)"
        )
    fit = dict(match_radius=match_radius, residual_threshold=residual_threshold, min_matches=min_matches,
               rng=np.random.default_rng(seed))
    reasons = []
    if new_wcs is not None and ref_wcs is not None and new_wcs.has_celestial and ref_wcs.has_celestial:
        outcome = _match_from_wcs(ref_xy, new_xy, new_wcs, ref_wcs, max_wcs_offset, fit)
        if not isinstance(outcome, str):
            return _registration(ref_xy, new_xy, outcome, "wcs", max_rms)
        reasons.append(outcome)
    outcome = _match_from_asterisms(ref_xy, new_xy, fit)
    if isinstance(outcome, str):
        reasons.append(outcome)
        raise RegistrationError("could not register the reference: " + "; ".join(reasons))
    return _registration(ref_xy, new_xy, outcome, "asterism", max_rms)


def _match_from_wcs(ref_xy, new_xy, new_wcs, ref_wcs, max_wcs_offset: float, fit: dict):
    """Steps 1-2: the WCS guess corrected by the offset mode, then :func:`_fit`; its outcome or the reason it failed."""
    guess = _wcs_guess(ref_xy, new_wcs, ref_wcs)
    offset = None
    if guess is not None:
        offset = _mode_offset(np.column_stack(_apply(guess, ref_xy[:, 0], ref_xy[:, 1])), new_xy, max_wcs_offset)
    if offset is None:
        return f"WCS guess: no source pairs within {max_wcs_offset} px"
    guess = guess.copy()
    guess[:2, 2] += offset
    outcome = _fit(ref_xy, new_xy, guess, **fit)
    return f"WCS guess: {outcome}" if isinstance(outcome, str) else outcome


def _match_from_asterisms(ref_xy, new_xy, fit: dict):
    """Step 3: :func:`astroalign.find_transform` on the 50 brightest, then :func:`_fit`; its outcome or the reason."""
    try:
        transform, _ = astroalign.find_transform(ref_xy[:50], new_xy[:50])
    except Exception as exc:  # astroalign raises MaxIterError, ValueError, TypeError
        return f"asterism matching failed: {exc}"
    outcome = _fit(ref_xy, new_xy, transform.params, **fit)
    return f"asterism guess: {outcome}" if isinstance(outcome, str) else outcome


def _registration(ref_xy, new_xy, outcome, method: str, max_rms: float) -> Registration:
    """The :class:`Registration` of a fit's ``(matrix, ref_idx, new_idx)``; RegistrationError if its RMS > max_rms."""
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
    """True for output pixels whose reference position is outside the reference's pixel-centre hull [0, n-1].

    Computed row by row: in each output row the inside pixels form one
    interval of x, bounded by the four linear constraints (tolerance 1e-9 px).
    """
    inv = np.linalg.inv(registration.matrix)
    rows = np.arange(output_shape[0], dtype=float)
    low = np.full(rows.shape, -np.inf)
    high = np.full(rows.shape, np.inf)
    for (a, b, c), n in ((inv[0], input_shape[1]), (inv[1], input_shape[0])):
        at_x0 = b * rows + c  # reference coordinate of output pixel (0, row); it grows by `a` per pixel in x
        if a == 0:
            empty = (at_x0 < 0) | (at_x0 > n - 1)
            low[empty], high[empty] = np.inf, -np.inf
            continue
        bounds = np.sort(np.stack([-at_x0 / a, (n - 1 - at_x0) / a]), axis=0)
        np.maximum(low, bounds[0], out=low)
        np.minimum(high, bounds[1], out=high)
    x = np.arange(output_shape[1], dtype=float)
    return (x < low[:, None] - 1e-9) | (x > high[:, None] + 1e-9)


#: Blocks of rows (or columns) per thread: the threads take the next free block, so one slowed by
#: other load on the machine does less of the work instead of holding up the others.
_BLOCKS_PER_THREAD = 4


def _transform(
    image: np.ndarray, registration: Registration, output_shape, *, order: int, output, mode: str, npad: int = 0
) -> np.ndarray:
    """:func:`scipy.ndimage.affine_transform` of ``image`` onto the new grid, in row blocks run in threads.

    ``image`` must already hold spline coefficients for ``order > 1``
    (``prefilter=False``), computed on the input padded by ``npad`` pixels.
    """
    matrix, offset = _ndimage_affine(registration)
    offset = offset + npad
    out = np.empty(tuple(output_shape), dtype=output)

    def block(rows: tuple[int, int]) -> None:
        start, stop = rows
        # output row `start` is row 0 of the block: shift the input coordinates accordingly
        ndimage.affine_transform(
            image, matrix, offset=offset + matrix[:, 0] * start, output_shape=(stop - start, out.shape[1]),
            output=out[start:stop], order=order, mode=mode, prefilter=False,
        )

    run_threads(block, row_blocks(out.shape[0], _BLOCKS_PER_THREAD * n_threads()))
    return out


#: Padding (px) of the image before its spline prefilter, as scipy.ndimage uses for mode "nearest".
_SPLINE_PAD = 12


def _spline_coefficients(image: np.ndarray, order: int) -> np.ndarray:
    """``scipy.ndimage.spline_filter(image, order, output=np.float32, mode="nearest")``, in threads.

    The filter is a 1-D recursion along the columns, then along the rows (float32 in between, as
    scipy stores it): the columns are cut into blocks, then the rows, each block filtered in its
    own thread, so the result is the same to the bit.
    """
    coefficients = np.empty(image.shape, dtype=np.float32)

    def along_columns(cols: tuple[int, int]) -> None:
        ndimage.spline_filter1d(image[:, cols[0] : cols[1]], order, axis=0, output=coefficients[:, cols[0] : cols[1]],
                                mode="nearest")

    def along_rows(rows: tuple[int, int]) -> None:
        block = coefficients[rows[0] : rows[1]]
        ndimage.spline_filter1d(block, order, axis=1, output=block, mode="nearest")

    run_threads(along_columns, row_blocks(image.shape[1], _BLOCKS_PER_THREAD * n_threads()))
    run_threads(along_rows, row_blocks(image.shape[0], _BLOCKS_PER_THREAD * n_threads()))
    return coefficients


def resample_to_grid(
    image: np.ndarray, registration: Registration, output_shape: tuple[int, int], order: int = 3
) -> np.ndarray:
    """Interpolate a reference-grid image onto the new image's grid.

    Spline interpolation of order ``order``, as
    :func:`scipy.ndimage.affine_transform` with ``mode='nearest'`` computes
    it (the input is edge-padded by 12 px and prefiltered once, in float32;
    the output rows are interpolated in threads). Non-finite input pixels are
    set to 0 first (so they do not spread through the spline prefilter; mask
    them separately with :func:`resample_mask`). Values are per-pixel
    interpolations, not flux-conserving for a scale change: the flux ratio
    measured afterwards on the resampled image absorbs the ``|det matrix|``
    factor.

    Returns
    -------
    ndarray, float32, ``output_shape``
        NaN where the output pixel maps outside the reference.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    filled = np.where(np.isfinite(image), image, 0).astype(np.float32, copy=False)
    npad = 0
    if order > 1:
        npad = _SPLINE_PAD
        filled = _spline_coefficients(np.pad(filled, npad, mode="edge"), order)
    out = _transform(filled, registration, output_shape, order=order, output=np.float32, mode="nearest", npad=npad)
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
    filled = variance
    if not good.all():
        filled = np.where(good, variance, np.median(variance[good]) if good.any() else 0.0)
    return resample_to_grid(filled, registration, output_shape, order=1)


def resample_mask(mask: np.ndarray, registration: Registration, output_shape: tuple[int, int]) -> np.ndarray:
    """Mask bits on the new grid: nearest reference pixel, OR-dilated by 1 px.

    Output pixels outside the reference (and, after the dilation, their
    neighbours, where the spline is extrapolated) get ``MaskBit.EDGE``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    out = _transform(mask.astype(MASK_DTYPE), registration, output_shape, order=0, output=MASK_DTYPE,
                     mode="nearest")
    out[_outside(registration, mask.shape, output_shape)] |= MASK_DTYPE(MaskBit.EDGE)
    return dilate(out, 1, 1)


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
