"""Transient candidates from a ZOGY subtraction.

Candidates are connected regions of ``|S_corr| >= threshold`` (S_corr is
already the matched-filter significance, so it is thresholded without
further smoothing and a single pixel above threshold is a detection, as for
the ideal detector), found separately for positive (brightening, new) and
negative (fading: brighter in the reference) sources. Regions larger than a
PSF core are split by :func:`photutils.segmentation.deblend_sources`.

Masked pixels, flags and "good" candidates
-------------------------------------------
Masked pixels are NaN in every ZOGY output: saturated cores with their
brightness-scaled halos, bleed trails, cosmic rays, bad columns, the area
outside the overlap, and the pixels where flux hidden under those masks
could leave a residual (see :func:`~dagster_project.science.zogy.zogy`).
Gaps of at most 5 px along a row (a masked column, a cosmic-ray patch) are
bridged by interpolation before segmentation, so that a source cut by one is
one candidate, positioned by a Gaussian fit to the valid pixels on both
sides, rather than two candidates 2-3 px off its centre. Candidates whose
footprint (disk of radius one FWHM of P_D around the position) is more than
``max_masked_fraction`` masked are DROPPED (counted in
``meta['n_dropped_masked']``): residuals around masked cosmic rays, and
sources centred on a masked band too wide to measure them. The others are kept, with their
``masked_fraction``, and FLAGGED when they cannot be trusted without a look:

* ``is_saturated``: a SATURATED, BLEED or SATURATION_HALO pixel within two FWHM;
* ``is_edge``: an EDGE pixel within two FWHM, or closer than ``edge_margin``
  to the frame border (L.A.Cosmic cannot test the outer pixels, and stars
  cut by the border do not cancel);
* ``is_sharp``: ``sharpness`` above ``max_sharpness`` (2 by default): sharper
  than any point source can be. Measured on the simulated frames: about 950
  injected point sources of S/N 3-30 never exceeded 1.85, while the cosmic
  rays L.A.Cosmic misses (on top of stars, where ``objlim`` protects the
  core) have 2.1-6.

``is_good`` is True for candidates with none of these flags: the set whose
false-positive rate the pipeline is tuned for (about one positive per
2048x2048 frame on the simulated nights, close to the Gaussian-noise floor).
Flagged candidates stay in the table (a real transient next to a saturated
star is still reported) so that nothing real is hidden.

The candidate table
-------------------
One row per candidate, most significant first:

* ``id`` (1-based), ``x``, ``y``: 0-based position on the new grid
  (quadratic fit to the 3x3 pixels around the S_corr peak; next to
  masked pixels a Gaussian fit to the valid ones), ``ra``, ``dec`` (deg).
* ``flux``, ``flux_err``: ZOGY PSF-photometry flux (``result.flux``
  interpolated at the position, across a bridged gap if need be;
  new-image e- when F_n = 1), negative for fading sources; biased low
  when part of the source is masked (see ``masked_fraction``).
* ``snr`` = ``|flux| / flux_err``; ``scorr_peak`` (signed S_corr at the
  position); ``significance`` = ``|scorr_peak|``; ``is_negative``.
* ``fwhm`` (px), ``ellipticity``, ``position_angle`` (deg CCW from +x):
  image moments of D (sign-flipped for negative sources, negative
  pixels ignored) in the footprint.
* ``sharpness``: peak of D within 1 px divided by the peak a point
  source of this flux would have (``|flux| F_D max(P_D)``): ~0.7-1.2
  for point sources, > 1.5 for cosmic rays and hot pixels, < 0.5 for
  extended residuals.
* ``n_opposite_pixels``: pixels within 2 FWHM with S_corr beyond
  ``opposite_threshold`` of the opposite sign (dipoles from
  mis-registration or PSF mismatch).
* ``ref_distance_px``: distance (new-grid px) to the nearest reference
  source (NaN without ``ref_sources``).
* ``masked_fraction`` in the footprint; ``area``: pixels above threshold.
* ``is_saturated``, ``is_edge``, ``is_sharp`` (see above),
  ``is_blended`` (deblended, or another candidate within 2 FWHM;
  not a reason for distrust) and ``is_good`` (none of the first three).

``meta`` holds ``threshold`` and ``n_dropped_masked``.

Steps of :func:`detect_transients`
----------------------------------
1. :func:`_bridged_maps`: S_corr, flux and flux_err bridged across narrow gaps.
2. :func:`_signed_segments`: positive, then negative regions above the
   threshold, deblended (:func:`_segments`), in one label image.
3. :func:`_peak_positions`: peak pixel and sub-pixel position of each.
4. :func:`_measure`: S_corr, flux, sharpness, masked fraction and flags at
   each position, brightest first, and the footprints.
5. :func:`_d_moments`: FWHM, ellipticity and angle of D in the footprints.
6. :func:`_candidate_table`, :func:`_keep_and_sort`: the table, its
   ``is_good`` flag, the masked candidates dropped.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.centroids import centroid_quadratic, centroid_sources
from photutils.segmentation import SegmentationImage, SourceCatalog, deblend_sources, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage
from scipy.spatial import cKDTree

from .masks import MaskBit
from .zogy import ZogyResult

__all__ = ["detect_transients"]

_COLUMNS = (
    "id", "x", "y", "ra", "dec", "flux", "flux_err", "snr", "scorr_peak", "significance", "is_negative",
    "fwhm", "ellipticity", "position_angle", "sharpness", "n_opposite_pixels", "ref_distance_px",
    "masked_fraction", "area", "is_saturated", "is_edge", "is_blended", "is_sharp", "is_good",
)

#: Mask bits that flag a nearby candidate ``is_saturated``.
_SATURATION_BITS = MaskBit.SATURATED | MaskBit.BLEED | MaskBit.SATURATION_HALO


def _psf_fwhm(stamp: np.ndarray) -> float:
    """FWHM (px) of a PSF stamp from the area above half its maximum, ``2 sqrt(area / pi)``."""
    return float(2.0 * np.sqrt(np.count_nonzero(stamp >= 0.5 * stamp.max()) / np.pi))


def _interpolate(image: np.ndarray, x: float, y: float) -> float:
    """Cubic-spline value of a smooth ``image`` at ``(x, y)``; the nearest pixel if masked pixels are near."""
    iy, ix = int(round(y)), int(round(x))
    y0, x0 = max(iy - 3, 0), max(ix - 3, 0)
    cut = image[y0 : iy + 4, x0 : ix + 4]
    if not np.all(np.isfinite(cut)):
        return float(image[iy, ix])
    return float(ndimage.map_coordinates(cut.astype(np.float64), [[y - y0], [x - x0]], order=3, mode="nearest")[0])


def _disk(cut_shape, cx, cy, radius):
    yy, xx = np.ogrid[: cut_shape[0], : cut_shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def _empty_table(threshold: float) -> Table:
    """The table without candidates: every column, and the ``meta`` of the module notes."""
    bool_cols = {"is_negative", "is_saturated", "is_edge", "is_blended", "is_sharp", "is_good"}
    int_cols = {"id", "n_opposite_pixels", "area"}
    table = Table(
        {c: np.zeros(0, dtype=bool if c in bool_cols else int if c in int_cols else float) for c in _COLUMNS}
    )
    table.meta.update(threshold=threshold, n_dropped_masked=0)
    return table


#: Invalid gaps up to ``2 * _BRIDGE_REACH - 1`` px wide along a row are bridged (see :func:`_bridge`).
_BRIDGE_REACH = 3


@dataclass
class _Gaps:
    """The invalid pixels that :func:`_bridge` interpolates, and their distances to the valid ends."""

    ys: np.ndarray
    xs: np.ndarray
    left: np.ndarray  # px to the nearest valid pixel on the left (float64, as the weights)
    right: np.ndarray


def _narrow_gaps(invalid: np.ndarray, reach: int = _BRIDGE_REACH) -> _Gaps:
    """Invalid pixels with a valid pixel within ``reach`` px both left and right in their row.

    Found with whole-row shifts first (most invalid pixels are in wide areas: the edge of the
    overlap, saturated stars), then the distances are measured at those pixels only.
    """
    valid = ~invalid
    sides = []
    for step in (-1, 1):  # a valid pixel within reach on the left (step -1), on the right (+1)
        near = np.zeros_like(invalid)
        for k in range(1, reach + 1):
            if step < 0:
                near[:, k:] |= valid[:, :-k]
            else:
                near[:, :-k] |= valid[:, k:]
        sides.append(near)
    ys, xs = np.nonzero(invalid & sides[0] & sides[1])
    distances = []
    for step in (-1, 1):
        distance = np.zeros(ys.size)
        for k in range(reach, 0, -1):  # the nearest valid pixel is the last one written
            cols = np.clip(xs + step * k, 0, invalid.shape[1] - 1)
            distance[valid[ys, cols] & (cols == xs + step * k)] = k
        distances.append(distance)
    return _Gaps(ys, xs, *distances)


def _bridge(image: np.ndarray, invalid: np.ndarray, gaps: _Gaps) -> np.ndarray:
    """Copy of ``image`` with NaN at ``invalid`` pixels, except in narrow gaps along rows, which are interpolated.

    An invalid pixel with a valid pixel within ``_BRIDGE_REACH`` px both left
    and right in its row (``gaps``, :func:`_narrow_gaps`) gets the linear
    interpolation between the nearest two:
    a source cut by a masked column (1 px in the new image, 3 px once a
    reference column is resampled and dilated) or by a cosmic-ray patch is
    then segmented as one source, and measured across the gap, instead of
    being split in two peaks 2-3 px off its centre. Interpolation never
    exceeds its two ends, so it creates no peak of its own.
    """
    out = np.where(invalid, np.float32(np.nan), image)
    ys, xs, left, right = gaps.ys, gaps.xs, gaps.left, gaps.right
    v_left = image[ys, xs - left.astype(np.intp)]
    v_right = image[ys, xs + right.astype(np.intp)]
    out[ys, xs] = (v_left * right + v_right * left) / (left + right)
    return out


def _gaussian_peak(image: np.ndarray, x: int, y: int, sign: float, half: int = 3) -> tuple[float, float]:
    """Centre of a round Gaussian fitted to the valid pixels of ``sign * image`` above 20 % of the peak within
    ``half`` px of (x, y).

    Weighted linear least squares on ``ln(image)`` (weights ``image**2``),
    separable in x and y. Used where masked pixels cut the 3x3 box a
    quadratic peak fit needs: pixels on both sides of a masked column still
    pin the centre. NaN if fewer than 5 pixels qualify or the fit has no
    maximum within 2 px.
    """
    y0, x0 = max(y - half, 0), max(x - half, 0)
    cut = sign * image[y0 : y + half + 1, x0 : x + half + 1]
    finite = np.isfinite(cut)
    peak = cut[finite].max() if finite.any() else 0.0
    ok = finite & (np.where(finite, cut, 0) > 0.2 * peak) if peak > 0 else np.zeros(cut.shape, bool)
    if np.count_nonzero(ok) < 5:
        return np.nan, np.nan
    yy, xx = np.nonzero(ok)
    dx, dy = xx + x0 - x, yy + y0 - y
    values = cut[ok].astype(float)
    design = np.column_stack([np.ones_like(values), dx, dy, dx**2, dy**2]) * values[:, None]
    coef = np.linalg.lstsq(design, np.log(values) * values, rcond=None)[0]
    if not (coef[3] < 0 and coef[4] < 0):
        return np.nan, np.nan
    sx, sy = -coef[1] / (2 * coef[3]), -coef[2] / (2 * coef[4])
    return (x + sx, y + sy) if max(abs(sx), abs(sy)) <= 2.0 else (np.nan, np.nan)


def _signed(image: np.ndarray, sign: float) -> np.ndarray:
    """``sign * image``; ``image`` itself (not a copy) for a positive sign."""
    return image if sign > 0 else -image


def _has_two_peaks(cut: np.ndarray, inside: np.ndarray) -> bool:
    """More than one pixel of the region ``inside`` is at least as high as its 8 neighbours in the region."""
    region = np.where(inside, cut, -np.inf)
    return np.count_nonzero(inside & (region >= ndimage.maximum_filter(region, size=3, mode="constant",
                                                                       cval=-np.inf))) > 1


def _segments(data: np.ndarray, invalid: np.ndarray, threshold: float, deblend_area: float | None):
    """Regions of ``data >= threshold``; those larger than ``deblend_area`` px are deblended.

    Returns the SegmentationImage (or None) and the set of deblended labels.
    """
    with warnings.catch_warnings():  # "no sources found" is an ordinary outcome here
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(data, threshold, 1, mask=invalid)
    if segm is None or deblend_area is None:
        return segm, set()
    # A region with one local maximum has one component above every threshold: it cannot be deblended.
    large = [label for label, box, area in zip(segm.labels, segm.slices, segm.areas)
             if area > deblend_area and _has_two_peaks(data[box], segm.data[box] == label)]
    if not large:
        return segm, set()
    segm = deblend_sources(data, segm, 3, labels=large, progress_bar=False)
    return segm, set(segm.deblended_labels.tolist())


def _peak_positions(labels: np.ndarray, sign_of: np.ndarray, filled: np.ndarray, original: np.ndarray,
                    unusable: np.ndarray, invalid: np.ndarray):
    """Peak pixel, sub-pixel position and area of each labelled segment of the signed S_corr map."""
    n = len(sign_of)
    xpk, ypk = np.zeros(n), np.zeros(n)
    area = np.zeros(n, dtype=int)
    for i, sl in enumerate(ndimage.find_objects(labels)):  # peak pixel and area of each segment
        inside = labels[sl] == i + 1
        values = np.where(inside, sign_of[i] * filled[sl], -np.inf)
        py, px = np.unravel_index(np.argmax(values), values.shape)
        xpk[i], ypk[i] = px + sl[1].start, py + sl[0].start
        area[i] = np.count_nonzero(inside)
    # Sub-pixel peak of the matched-filter image: quadratic fit to the 3x3 pixels around the maximum.
    x, y = xpk.copy(), ypk.copy()
    for sign in (1.0, -1.0):
        sel = np.flatnonzero(sign_of == sign)
        if sel.size:
            with warnings.catch_warnings():  # a peak without a quadratic maximum keeps its pixel (below)
                warnings.simplefilter("ignore", AstropyUserWarning)
                cx, cy = centroid_sources(
                    _signed(filled, sign), xpk[sel], ypk[sel], box_size=3, mask=unusable,
                    centroid_func=centroid_quadratic, fit_boxsize=3,
                )
            ok = np.isfinite(cx) & np.isfinite(cy) & (np.hypot(cx - xpk[sel], cy - ypk[sel]) <= 1.0)
            x[sel[ok]], y[sel[ok]] = cx[ok], cy[ok]
    # Next to a masked gap the 3x3 box holds bridged (interpolated) pixels, which pull the quadratic
    # peak towards the brighter side: fit the valid pixels on both sides instead.
    for i in range(n):
        ix, iy = int(xpk[i]), int(ypk[i])
        if invalid[max(iy - 1, 0) : iy + 2, max(ix - 1, 0) : ix + 2].any():
            gx, gy = _gaussian_peak(original, ix, iy, sign_of[i])
            if np.isfinite(gx):
                x[i], y[i] = gx, gy

    return xpk, ypk, x, y, area


def detect_transients(
    result: ZogyResult, mask: np.ndarray | None = None, *, threshold: float = 5.0, wcs=None,
    ref_sources: Table | None = None, psf_fwhm: float | None = None, edge_margin: int | None = None,
    max_masked_fraction: float = 0.5, max_sharpness: float = 2.0, opposite_threshold: float = 3.0,
    deblend: bool = True,
) -> Table:
    """Find positive and negative point sources in S_corr and measure them.

    Parameters
    ----------
    result : ZogyResult
        Output of :func:`~dagster_project.science.zogy.zogy`.
    mask : ndarray of uint16, optional
        Combined :class:`~dagster_project.science.masks.MaskBit` field on the
        new grid, for the flags and the masked fraction.
    threshold : float
        Detection threshold on ``|S_corr|`` (sigma).
    wcs : astropy.wcs.WCS, optional
        WCS of the new image, for ``ra``/``dec`` (deg); NaN without a
        celestial WCS.
    ref_sources : astropy.table.Table, optional
        Reference sources with ``x``, ``y`` ALREADY on the new image's grid,
        for ``ref_distance_px``.
    psf_fwhm : float, optional
        FWHM (px) setting the footprint and flag radii; default: that of
        ``result.P_D``.
    edge_margin : int, optional
        Candidates closer than this to the frame border are flagged
        ``is_edge``; default ``ceil(2 * psf_fwhm)``.
    max_masked_fraction : float
        Candidates with a larger masked fraction are dropped.
    max_sharpness : float
        Candidates with a larger ``sharpness`` are flagged ``is_sharp``.
    opposite_threshold : float
        S_corr level (sigma) of the opposite sign counted in ``n_opposite_pixels``.
    deblend : bool
        Deblend regions larger than twice the PSF core area.

    Returns
    -------
    astropy.table.Table
        One row per candidate, most significant first, with the columns and
        ``meta`` of *The candidate table* in the module notes.

    Examples
    --------
    A new source at (45, 40) and a star in both images (twice as bright in the reference):

    >>> from dagster_project.science.psf_models import moffat_stamp, render_point_sources
    >>> from dagster_project.science.zogy import zogy
    >>> rng = np.random.default_rng(1)
    >>> star_n = render_point_sources((64, 64), [20.0, 45.0], [20.0, 40.0], [3000.0, 1500.0], 2.5, stamp_size=15)
    >>> star_r = render_point_sources((64, 64), [20.0], [20.0], [6000.0], 3.5, stamp_size=15)
    >>> var_n, var_r = star_n + 100.0, star_r + 100.0
    >>> new, ref = (m + rng.normal(size=m.shape) * np.sqrt(v) for m, v in ((star_n, var_n), (star_r, var_r)))
    >>> result = zogy(new, ref, moffat_stamp(15, 2.5), moffat_stamp(15, 3.5), var_new=var_n, var_ref=var_r,
    ...               sigma_new=10.0, sigma_ref=10.0, flux_ratio_ref=2.0)
    >>> candidates = detect_transients(result)
    >>> len(candidates), [round(float(candidates[c][0])) for c in ("x", "y")], bool(candidates["is_good"][0])
    (1, [45, 40], True)
    """
    _check_arguments(result, mask, threshold)
    mask = np.zeros(result.S_corr.shape, dtype=np.uint16) if mask is None else np.asarray(mask)
    fwhm = _psf_fwhm(result.P_D) if psf_fwhm is None else float(psf_fwhm)
    edge_margin = int(np.ceil(2.0 * fwhm)) if edge_margin is None else int(edge_margin)
    maps = _bridged_maps(result, mask)
    segments = _signed_segments(maps, threshold, 2.0 * np.pi * fwhm**2 / 4.0 if deblend else None)
    if segments.n == 0:
        return _empty_table(threshold)
    xpk, ypk, x, y, area = _peak_positions(segments.labels, segments.sign_of, maps.filled, maps.original,
                                           maps.unusable, maps.invalid)
    found = _measure(maps, mask, result, segments.sign_of, xpk, ypk, x, y, fwhm, opposite_threshold)
    found.is_edge |= _near_border(x, y, maps.scorr.shape, edge_margin)
    table = _candidate_table(x, y, area, segments, found, _d_moments(result.D, found.footprints, segments.sign_of,
                                                                     maps.invalid),
                             _is_blended(segments.is_deblended, x, y, fwhm), _ref_distance(ref_sources, x, y),
                             _sky_positions(wcs, x, y))
    return _keep_and_sort(table, found.masked_fraction, threshold, max_sharpness, max_masked_fraction)


def _check_arguments(result: ZogyResult, mask, threshold: float) -> None:
    """ValueError for a mask of another shape than S_corr or a threshold that is not > 0."""
    if mask is not None and np.shape(mask) != result.S_corr.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from S_corr shape {result.S_corr.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")


@dataclass
class _Bridged:
    """The ZOGY maps as the detection reads them (see the module notes on masked pixels)."""

    invalid: np.ndarray  # S_corr not finite, or flagged by ZOGY
    masked: np.ndarray  # invalid, or any bit of the mask
    original: np.ndarray  # S_corr, NaN where invalid
    scorr: np.ndarray  # S_corr bridged across narrow invalid gaps (:func:`_bridge`)
    unusable: np.ndarray  # still NaN after the bridging
    filled: np.ndarray  # the bridged S_corr, 0 where unusable
    flux: np.ndarray  # bridged flux and flux_err maps
    flux_err: np.ndarray


def _bridged_maps(result: ZogyResult, mask: np.ndarray) -> _Bridged:
    """Sources are found and measured on maps bridged across narrow invalid gaps (masked columns,
    cosmic-ray patches); the masked fraction and the flags still come from the true masks."""
    scorr = result.S_corr
    invalid = ~np.isfinite(scorr) | result.mask
    masked = invalid | (mask != 0)
    original = np.where(invalid, np.float32(np.nan), scorr)
    gaps = _narrow_gaps(invalid)
    bridged = _bridge(scorr, invalid, gaps)
    unusable = ~np.isfinite(bridged)
    filled = np.where(unusable, np.float32(0), bridged)
    return _Bridged(invalid, masked, original, bridged, unusable, filled, _bridge(result.flux, invalid, gaps),
                    _bridge(result.flux_err, invalid, gaps))


@dataclass
class _SignedSegments:
    """One label image of the positive sources (labels 1...) then the negative ones."""

    labels: np.ndarray
    sign_of: np.ndarray  # +1.0 or -1.0 for label i + 1
    is_deblended: np.ndarray

    @property
    def n(self) -> int:
        return len(self.sign_of)


def _signed_segments(maps: _Bridged, threshold: float, deblend_area: float | None) -> _SignedSegments:
    """Regions of S_corr above ``threshold`` and below ``-threshold`` (:func:`_segments`), labelled together."""
    labels = np.zeros(maps.scorr.shape, dtype=np.int32)
    sign_of, is_deblended = [], []
    for sign in (1.0, -1.0):
        segm, blended = _segments(_signed(maps.filled, sign), maps.unusable, threshold, deblend_area)
        if segm is None:
            continue
        np.add(segm.data, len(sign_of), out=labels, where=segm.data > 0)
        is_deblended.extend(lab in blended for lab in segm.labels)
        sign_of.extend([sign] * segm.n_labels)
    return _SignedSegments(labels, np.asarray(sign_of), np.asarray(is_deblended, dtype=bool))


@dataclass
class _Measured:
    """What :func:`_measure` finds at each candidate's position."""

    scorr_peak: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    sharpness: np.ndarray
    n_opposite: np.ndarray
    masked_fraction: np.ndarray
    is_saturated: np.ndarray
    is_edge: np.ndarray
    footprints: np.ndarray  # label image: disk of radius FWHM per candidate, for the D moments


def _measure(maps: _Bridged, mask, result: ZogyResult, sign_of, xpk, ypk, x, y, fwhm: float,
             opposite_threshold: float) -> _Measured:
    """S_corr, flux and its error, sharpness, opposite-sign pixels, masked fraction, flags and footprints.

    The brightest candidates claim their footprint pixels first.
    """
    n = len(sign_of)
    scorr_peak, flux, flux_err, sharpness = (np.full(n, np.nan) for _ in range(4))
    m = _Measured(scorr_peak, flux, flux_err, sharpness, np.zeros(n, dtype=int), np.zeros(n),
                  np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(maps.scorr.shape, dtype=np.int32))
    peak_psf = result.F_D * float(result.P_D.max())
    r_flag = 2.0 * fwhm
    h = int(np.ceil(r_flag))
    for i in np.argsort(-np.abs(maps.filled[ypk.astype(int), xpk.astype(int)])):
        sign = sign_of[i]
        m.scorr_peak[i] = _interpolate(maps.scorr, x[i], y[i])
        m.flux[i] = _interpolate(maps.flux, x[i], y[i])
        m.flux_err[i] = _interpolate(maps.flux_err, x[i], y[i])
        ix, iy = int(round(x[i])), int(round(y[i]))
        y0, x0 = max(iy - h, 0), max(ix - h, 0)
        sl = (slice(y0, iy + h + 1), slice(x0, ix + h + 1))
        near = _disk(maps.scorr[sl].shape, x[i] - x0, y[i] - y0, r_flag)
        core = _disk(maps.scorr[sl].shape, x[i] - x0, y[i] - y0, fwhm)
        m.n_opposite[i] = int(np.count_nonzero((-sign * maps.filled[sl] > opposite_threshold) & near))
        m.masked_fraction[i] = float(maps.masked[sl][core].mean())
        bits = np.bitwise_or.reduce(mask[sl][near].ravel()) if near.any() else 0
        m.is_saturated[i] = bool(bits & _SATURATION_BITS)
        m.is_edge[i] = bool(bits & MaskBit.EDGE)
        m.footprints[sl][core & (m.footprints[sl] == 0)] = i + 1
        d_near = sign * result.D[max(iy - 1, 0) : iy + 2, max(ix - 1, 0) : ix + 2]
        if np.isfinite(d_near).any() and np.isfinite(m.flux[i]) and m.flux[i] != 0:
            m.sharpness[i] = float(np.nanmax(d_near)) / (abs(m.flux[i]) * peak_psf)
    return m


def _d_moments(D: np.ndarray, footprints: np.ndarray, sign_of: np.ndarray, invalid: np.ndarray):
    """FWHM, ellipticity and orientation of D in each footprint (SourceCatalog ignores negative pixels)."""
    n = len(sign_of)
    d_fwhm, d_ell, d_pa = (np.full(n, np.nan) for _ in range(3))
    if footprints.any():
        segments = SegmentationImage(footprints)
        signed_d = np.zeros(D.shape)  # D with each candidate's sign, in the boxes of the footprints only
        for box in segments.slices:
            sign = np.where(footprints[box] > 0, sign_of[footprints[box] - 1], 0.0)
            signed_d[box] = np.where(invalid[box], 0.0, D[box] * sign)
        cat = SourceCatalog(signed_d, segments, mask=invalid)
        rows = segments.labels - 1
        d_fwhm[rows] = np.asarray(cat.fwhm.value, dtype=float)
        d_ell[rows] = np.asarray(cat.ellipticity.value, dtype=float)
        d_pa[rows] = np.asarray(cat.orientation.value, dtype=float)
    return d_fwhm, d_ell, d_pa


def _near_border(x, y, shape: tuple[int, int], edge_margin: int) -> np.ndarray:
    """Positions closer than ``edge_margin`` px to the frame border."""
    ny, nx = shape
    return (x < edge_margin) | (y < edge_margin) | (x > nx - 1 - edge_margin) | (y > ny - 1 - edge_margin)


def _is_blended(is_deblended: np.ndarray, x, y, fwhm: float) -> np.ndarray:
    """Deblended, or another candidate within 2 FWHM."""
    is_blended = is_deblended
    if len(x) > 1:
        d_nn, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        is_blended |= d_nn[:, 1] < 2.0 * fwhm
    return is_blended


def _ref_distance(ref_sources: Table | None, x, y) -> np.ndarray:
    """Distance (px) to the nearest reference source; NaN without any."""
    if ref_sources is not None and len(ref_sources) > 0:
        ref_xy = np.column_stack([np.asarray(ref_sources["x"], float), np.asarray(ref_sources["y"], float)])
        return cKDTree(ref_xy).query(np.column_stack([x, y]))[0]
    return np.full(len(x), np.nan)


def _sky_positions(wcs, x, y) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec (deg) of the positions; NaN without a celestial WCS."""
    if wcs is not None and wcs.has_celestial:
        ra, dec = (np.asarray(v, dtype=float) for v in wcs.celestial.pixel_to_world_values(x, y))
        return ra, dec
    return np.full(len(x), np.nan), np.full(len(x), np.nan)


def _candidate_table(x, y, area, segments: _SignedSegments, m: _Measured, moments, is_blended, ref_distance,
                     sky) -> Table:
    """Every candidate, in label order, with the columns of the module notes but ``is_sharp`` and ``is_good``."""
    (ra, dec), (d_fwhm, d_ell, d_pa) = sky, moments
    return Table(
        {
            "id": np.zeros(segments.n, dtype=int),
            "x": x, "y": y, "ra": ra, "dec": dec,
            "flux": m.flux, "flux_err": m.flux_err, "snr": np.abs(m.flux) / m.flux_err,
            "scorr_peak": m.scorr_peak, "significance": np.abs(m.scorr_peak), "is_negative": segments.sign_of < 0,
            "fwhm": d_fwhm, "ellipticity": d_ell, "position_angle": d_pa, "sharpness": m.sharpness,
            "n_opposite_pixels": m.n_opposite, "ref_distance_px": ref_distance,
            "masked_fraction": m.masked_fraction, "area": area,
            "is_saturated": m.is_saturated, "is_edge": m.is_edge, "is_blended": is_blended,
        }
    )


def _keep_and_sort(table: Table, masked_fraction, threshold: float, max_sharpness: float,
                   max_masked_fraction: float) -> Table:
    """``is_sharp`` and ``is_good`` added, too masked candidates dropped, most significant first, ids from 1."""
    with np.errstate(invalid="ignore"):
        table["is_sharp"] = table["sharpness"] > max_sharpness
    table["is_good"] = ~(table["is_saturated"] | table["is_edge"] | table["is_sharp"])
    keep = masked_fraction <= max_masked_fraction
    table = table[keep]
    table.sort("significance", reverse=True)
    table["id"] = np.arange(1, len(table) + 1)
    table.meta.update(threshold=threshold, n_dropped_masked=int(np.count_nonzero(~keep)))
    return table
