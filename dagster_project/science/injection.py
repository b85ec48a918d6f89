"""Fake point sources: where to put them, how bright, adding them to a frame, and the depth they measure.

A frame's depth is measured the way DES (Goldstein et al. 2015, autoScan's training set) and
ZTF measure it, but on every frame: point sources of known flux are injected into a copy of the
calibrated new image before differencing, the difference and detection run as usual, and the
fraction recovered as a function of their S/N gives the S/N (and magnitude) at 50 % completeness.

Conventions
-----------
* Images are in electrons (e-), variances in e-^2, as calibration writes them (sky kept or
  not: an injected source only adds to the pixels).
* Positions are 0-based pixel ``(x, y)``; a source at ``(10.0, 5.0)`` is centred on pixel
  ``[5, 10]``. Fakes get continuous (sub-pixel) positions, so that every pixel phase is sampled.
* PSFs are a :class:`~dagster_project.science.psf.PSFModel` (the fitted Moffat of the frame) or
  an odd 2-D stamp centred on its central pixel; stamps are normalised to unit sum here.

The S/N of a fake
-----------------
The optimal (PSF-weighted) S/N of a point source of flux ``F`` with unit-sum PSF ``P`` on pixels
of variance ``sigma_i^2`` (:func:`optimal_snr`; ../shared/notes/measuring-detection-depth.md)::

    S/N^2 = sum_i (F P_i)^2 / sigma_i^2                    background-limited
    S/N^2 = sum_i (F P_i)^2 / (sigma_i^2 + F P_i)          with the source's own shot noise

:func:`flux_for_snr` inverts it: in closed form, ``F = s / sqrt(sum P_i^2 / sigma_i^2)``, when
background-limited; by root finding (S/N grows monotonically with F) with shot noise. For a
Gaussian PSF of width ``sigma_psf`` in flat variance ``sigma^2``, ``sum P^2 = 1 / (4 pi
sigma_psf^2)`` and ``F = s sigma sqrt(4 pi) sigma_psf``. The S/N is that in the image whose
variance is given (the new image's, for fakes injected into it); an ideal subtraction against a
reference of S/N ``s_ref`` reaches ``(s^-2 + s_ref^-2)^-1/2`` (compute ``s_ref`` with
:func:`optimal_snr` in the reference's variance and PSF when comparing with the ideal detector).

Injection (:func:`inject_point_sources`)
-----------------------------------------
Each fake is a unit-sum PSF stamp at its sub-pixel offset times its flux: rendered exactly from the
Moffat parameters of a ``PSFModel`` (:func:`~dagster_project.science.psf_models.moffat_stamps`),
or, for a plain stamp, shifted by cubic-spline interpolation (:func:`scipy.ndimage.shift`), its
ringing clipped at zero and renormalised. The data receive Poisson-drawn electrons of that model
(the fake is noisy like a real source), the variance plane its expectation (what the variance of
a real source of that flux would be). Stamps are cut at the frame border; inputs are not modified.

Placement (:func:`place_fakes`) and recovery (:func:`match_fakes`)
------------------------------------------------------------------
Positions are uniform over the frame minus a border ``margin``, at least ``mask_radius`` px from
any masked pixel, ``min_separation`` px from each other and ``avoid_radius`` px from given
positions (bright stars, existing candidates: a fake blended with them would measure the
blending, not the depth). A fake is recovered when a detection lies within ``radius`` px; each
detection recovers at most one fake (closest pairs first).

Completeness (:func:`completeness_fit`)
---------------------------------------
The ideal detector thresholding a unit-variance matched-filter image at 5 sigma recovers a source
of S/N ``s`` with probability ``Phi(s - 5)``; the model fitted is ``Phi((s - s50) / width)``, by
maximum likelihood on the binary outcomes (a probit regression, whose log-likelihood is concave
in ``(a, b)`` of ``Phi(a + b s)``: the optimum is unique), with Fisher-information errors. No
plateau below 1 is fitted: fakes are placed away from masks and bright sources, the causes of a
plateau, and one that remains shows in the binned curve at high S/N.
"""

import math
from dataclasses import dataclass

import numpy as np
from astropy.stats import binom_conf_interval
from astropy.table import Table
from scipy import ndimage, optimize, special
from scipy.spatial import cKDTree

from .magnitudes import LimitingMagnitude, limiting_magnitude
from .psf import PSFModel
from .psf_models import moffat_stamps

__all__ = [
    "CompletenessFit",
    "FakeMatch",
    "Fakes",
    "completeness_fit",
    "cutouts",
    "draw_fakes",
    "flux_for_snr",
    "inject_point_sources",
    "magnitude_at",
    "match_fakes",
    "optimal_snr",
    "place_fakes",
]

#: Probability of a 1-sigma interval, for the binned completeness.
_ONE_SIGMA = 0.682689492

#: Bounds of the probit slope b (on standardised S/N) in the fit: beyond them the outcomes are
#: perfectly separated (a step) or carry no S/N dependence at all.
_SLOPE_BOUNDS = (1e-4, 1e4)


# --------------------------------------------------------------------------- placement


def place_fakes(
    shape: tuple[int, int], n: int, rng: np.random.Generator, *, mask: np.ndarray | None = None,
    margin: float = 16.0, min_separation: float = 12.0, avoid_xy=None, avoid_radius: float = 10.0,
    mask_radius: float = 3.0, max_rounds: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Random sub-pixel positions for ``n`` fakes, clear of the border, masks, each other and given positions.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the frame.
    n : int
        Number of fakes wanted.
    rng : numpy.random.Generator
        Source of the positions.
    mask : ndarray, optional
        Frame mask; pixels ``!= 0`` are avoided by ``mask_radius`` px (from the nearest pixel).
    margin : float
        Smallest distance (px) to the frame border: more than the PSF stamp's half size, so
        that no fake is cut, and more than detection's ``edge_margin``, so none is flagged.
    min_separation : float
        Smallest distance (px) between two fakes (a few FWHM: they must not blend).
    avoid_xy : array_like of shape (m, 2), optional
        Positions ``(x, y)`` to keep away from by ``avoid_radius`` px.
    avoid_radius, mask_radius : float
        Radii (px) around ``avoid_xy`` and masked pixels.
    max_rounds : int
        Rounds of random trials: each draws 4 times the positions still missing.

    Returns
    -------
    x, y : ndarray of float64
        Positions, in random order; fewer than ``n`` when the frame has no room left for more
        (check ``len(x)``).

    Examples
    --------
    >>> mask = np.zeros((100, 100), dtype=np.uint16)
    >>> mask[:, 50] = 1                                   # a bad column
    >>> x, y = place_fakes(mask.shape, 10, np.random.default_rng(0), mask=mask, margin=10, min_separation=8)
    >>> len(x), bool(np.all(np.abs(np.rint(x) - 50) > 3)), bool(np.all((x >= 10) & (x <= 89)))
    (10, True, True)
    """
    _check_placement(shape, n, mask, margin)
    bad = None if mask is None else np.asarray(mask) != 0
    avoid = np.empty((0, 2)) if avoid_xy is None else np.asarray(avoid_xy, dtype=float).reshape(-1, 2)
    kept = np.empty((0, 2))
    for _ in range(max_rounds):
        if len(kept) >= n:
            break
        trial = _uniform_positions(shape, margin, 4 * (n - len(kept)) + 16, rng)
        trial = trial[_clear_of_mask(trial, bad, mask_radius) & _far_from(trial, avoid, avoid_radius)]
        kept = _add_separated(kept, trial, min_separation, n)
    return kept[:, 0].copy(), kept[:, 1].copy()


def _check_placement(shape, n: int, mask, margin: float) -> None:
    """ValueError for a negative ``n``, a mask of another shape, or a margin that leaves no room."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if mask is not None and np.shape(mask) != tuple(shape):
        raise ValueError(f"mask shape {np.shape(mask)} differs from shape {tuple(shape)}")
    if not (margin >= 0 and min(shape) - 1 > 2 * margin):
        raise ValueError(f"margin {margin} leaves no room in a frame of shape {tuple(shape)}")


def _uniform_positions(shape, margin: float, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` positions ``(x, y)`` uniform over the frame minus the border margin."""
    ny, nx = shape
    return np.column_stack([rng.uniform(margin, nx - 1 - margin, m), rng.uniform(margin, ny - 1 - margin, m)])


def _clear_of_mask(points: np.ndarray, bad: np.ndarray | None, radius: float) -> np.ndarray:
    """Positions whose nearest pixel has no bad pixel within ``radius`` px (a disk of pixel offsets)."""
    if bad is None:
        return np.ones(len(points), dtype=bool)
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = dx**2 + dy**2 <= radius**2
    cols = np.clip(np.rint(points[:, 0]).astype(int)[:, None] + dx[disk], 0, bad.shape[1] - 1)
    rows = np.clip(np.rint(points[:, 1]).astype(int)[:, None] + dy[disk], 0, bad.shape[0] - 1)
    return ~bad[rows, cols].any(axis=1)


def _far_from(points: np.ndarray, others: np.ndarray, radius: float) -> np.ndarray:
    """Positions at least ``radius`` px from every one of ``others``."""
    if len(others) == 0 or len(points) == 0:
        return np.ones(len(points), dtype=bool)
    return cKDTree(others).query(points)[0] >= radius


def _add_separated(kept: np.ndarray, trial: np.ndarray, min_separation: float, n: int) -> np.ndarray:
    """``kept`` and the trial positions (in their random order) at least ``min_separation`` from all
    kept before them, up to ``n`` in all."""
    trial = trial[_far_from(trial, kept, min_separation)]
    if len(trial) == 0:
        return kept
    blocked = np.zeros(len(trial), dtype=bool)
    taken = []
    for i, neighbours in enumerate(cKDTree(trial).query_ball_point(trial, min_separation)):
        if len(kept) + len(taken) >= n:
            break
        if not blocked[i]:
            taken.append(i)
            blocked[neighbours] = True  # the trials too close to this one (itself included)
    return np.vstack([kept, trial[taken]])


# --------------------------------------------------------------------------- S/N and flux


def optimal_snr(flux, psf, variance, *, shot_noise: bool = False) -> np.ndarray:
    """Optimal PSF-weighted S/N of point sources of ``flux`` e- (see *The S/N of a fake*).

    Parameters
    ----------
    flux : float or array_like
        Fluxes (e-).
    psf : PSFModel or ndarray
        The PSF (its stamp is normalised to unit sum here).
    variance : float or array_like
        Background variance (e-^2): a scalar, one value per source (1-D), or cutouts of the
        stamp's shape, ``(k, k)`` or ``(n, k, k)``, centred on the sources. Pixels without a
        positive finite variance (masked) carry no information.
    shot_noise : bool
        Add the source's own Poisson variance ``F P_i`` to each pixel's variance.

    Returns
    -------
    ndarray
        S/N of each source (0-d for scalar inputs).

    Examples
    --------
    >>> yy, xx = np.mgrid[-10:11, -10:11]
    >>> psf = np.exp(-(xx**2 + yy**2) / (2 * 2.0**2))   # Gaussian, sigma_psf = 2 px
    >>> round(float(optimal_snr(354.49, psf, 100.0)), 3)
    5.0
    """
    p = _unit_stamp(psf)
    signal = np.asarray(flux, dtype=float)[..., None, None] * p
    var = _stamp_variance(variance, p.shape)
    return np.sqrt(_information(signal, var, shot_noise))


def flux_for_snr(snr, psf, variance, *, shot_noise: bool = False) -> np.ndarray:
    """Flux (e-) of point sources whose optimal S/N (:func:`optimal_snr`) is ``snr``.

    Background-limited by default: ``F = snr / sqrt(sum P_i^2 / sigma_i^2)``. With
    ``shot_noise`` the source's own Poisson variance is included and the equation solved exactly
    (Newton's method; the flux is then larger, by more for brighter sources).

    Parameters
    ----------
    snr : float or array_like
        Target S/N (>= 0).
    psf, variance :
        As in :func:`optimal_snr`.
    shot_noise : bool
        Include the source's shot noise.

    Returns
    -------
    ndarray
        Fluxes in e- (0-d for scalar inputs); NaN where the variance carries no information.

    Examples
    --------
    A Gaussian PSF of sigma 2 px in flat variance 100 e-^2: ``F = 5 * 10 * sqrt(4 pi) * 2``.

    >>> yy, xx = np.mgrid[-10:11, -10:11]
    >>> psf = np.exp(-(xx**2 + yy**2) / (2 * 2.0**2))
    >>> round(float(flux_for_snr(5.0, psf, 100.0)), 2), round(5 * 10 * math.sqrt(4 * math.pi) * 2, 2)
    (354.49, 354.49)
    >>> f = flux_for_snr(5.0, psf, 100.0, shot_noise=True)
    >>> bool(f > 354.49), round(float(optimal_snr(f, psf, 100.0, shot_noise=True)), 6)
    (True, 5.0)
    """
    p = _unit_stamp(psf)
    snr = np.asarray(snr, dtype=float)
    var = _stamp_variance(variance, p.shape)
    information = _information(p, var)  # sum P_i^2 / sigma_i^2: the S/N^2 of a source of 1 e-
    background_limited = np.divide(snr, np.sqrt(information), out=np.full(np.broadcast_shapes(
        snr.shape, information.shape), np.nan), where=information > 0)
    if not shot_noise:
        return background_limited
    return _flux_with_shot_noise(snr, p, var, background_limited)


def _unit_stamp(psf) -> np.ndarray:
    """The PSF stamp (a PSFModel's, or the array) as float64 with unit sum; ValueError if it cannot be one."""
    stamp = np.asarray(psf.stamp if isinstance(psf, PSFModel) else psf, dtype=float)
    if stamp.ndim != 2 or stamp.shape[0] % 2 == 0 or stamp.shape[1] % 2 == 0:
        raise ValueError(f"a PSF stamp must be 2-D with odd sides, got shape {stamp.shape}")
    total = stamp.sum()
    if not (np.all(np.isfinite(stamp)) and total > 0):
        raise ValueError("a PSF stamp must be finite with a positive sum")
    return stamp / total


def _stamp_variance(variance, stamp_shape) -> np.ndarray:
    """Variance as an array ending in the stamp's shape: scalars and 1-D (one per source) are spread over it."""
    var = np.asarray(variance, dtype=float)
    if var.ndim <= 1:
        return var[..., None, None] * np.ones(stamp_shape)
    if var.shape[-2:] != stamp_shape:
        raise ValueError(f"variance cutouts of shape {var.shape} do not end in the stamp's shape {stamp_shape}")
    return var


def _information(signal: np.ndarray, var: np.ndarray, shot_noise: bool = False) -> np.ndarray:
    """``sum signal^2 / (var [+ signal])`` over the stamp axes.

    Pixels without a positive finite background variance are masked: they carry no information,
    with or without the source's shot noise.
    """
    signal, var = np.broadcast_arrays(signal, var)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(var) & (var > 0)
    total = var + signal if shot_noise else var
    return np.divide(signal**2, total, out=np.zeros(var.shape), where=usable).sum(axis=(-2, -1))


def _snr2_excess(flux: np.ndarray, p: np.ndarray, var: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """S/N^2 with shot noise of sources of ``flux``, minus the targets' squares: the function whose root is sought."""
    return _information(np.asarray(flux)[..., None, None] * p, var, shot_noise=True) - snr**2


def _snr2_slope(flux: np.ndarray, p: np.ndarray, var: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """Derivative in the flux of :func:`_snr2_excess`: ``sum P^2 F (2 sigma^2 + F P) / (sigma^2 + F P)^2``."""
    f = np.asarray(flux)[..., None, None]
    p, var = np.broadcast_arrays(p, var)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(var) & (var > 0)
    terms = np.divide(p**2 * f * (2.0 * var + f * p), (var + f * p) ** 2, out=np.zeros(var.shape), where=usable)
    return terms.sum(axis=(-2, -1))


def _flux_with_shot_noise(snr: np.ndarray, p: np.ndarray, var: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Per source, the flux where the S/N with shot noise reaches ``snr``: Newton's method, all sources at once.

    ``S/N^2(F)`` is increasing and convex in F, so Newton's iterations from the background-limited
    flux ``lower`` (below the root: shot noise only lowers the S/N) step past the root once and then
    converge onto it from above, without overshooting again.
    """
    snr, lower = np.broadcast_arrays(snr, lower)
    var = np.broadcast_to(var, (*snr.shape, *p.shape))
    out = np.where(snr == 0, 0.0, np.nan)
    solve = np.isfinite(lower) & (snr > 0)
    if solve.any():
        out[solve] = optimize.newton(_snr2_excess, lower[solve], fprime=_snr2_slope, args=(p, var[solve], snr[solve]),
                                     tol=1e-9, rtol=1e-12, maxiter=100)
    return out


# --------------------------------------------------------------------------- injection


def inject_point_sources(data, variance, psf, x, y, flux, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``data`` and ``variance`` with point sources added at sub-pixel positions, with their noise.

    Parameters
    ----------
    data, variance : ndarray, shape (ny, nx)
        Image (e-) and its variance plane (e-^2); not modified.
    psf : PSFModel or ndarray
        The image's PSF: a ``PSFModel`` is rendered exactly at each sub-pixel offset, an odd
        stamp is shifted by spline interpolation (see *Injection* in the module notes).
    x, y : array_like
        0-based pixel positions.
    flux : float or array_like
        Total flux of each source (e-, >= 0).
    rng : numpy.random.Generator
        Source of the Poisson noise of the injected electrons.

    Returns
    -------
    data, variance : ndarray
        New arrays (dtype of the inputs, at least float32): ``data`` plus the Poisson-drawn
        electrons of each source, ``variance`` plus their expectation.

    Examples
    --------
    >>> from dagster_project.science.psf_models import moffat_stamp
    >>> data, variance = np.zeros((40, 40), np.float32), np.full((40, 40), 100.0, np.float32)
    >>> new, var = inject_point_sources(data, variance, moffat_stamp(15, 3.0), [20.3], [18.6], [1e4],
    ...                                 np.random.default_rng(0))
    >>> round(float((var - variance).sum())), bool(abs(new.sum() - 1e4) < 5 * 100), float(data.sum())
    (10000, True, 0.0)
    >>> [int(i) for i in np.unravel_index(np.argmax(var), var.shape)]     # row 19 (y), column 20 (x)
    [19, 20]
    """
    x, y, flux = _check_sources(data, variance, x, y, flux)
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    model = flux[:, None, None] * _psf_stamps(psf, x - cx, y - cy)
    dtype = np.result_type(np.asarray(data).dtype, np.asarray(variance).dtype, np.float32)
    new_data, new_variance = np.array(data, dtype=dtype), np.array(variance, dtype=dtype)
    _add_stamps(new_data, rng.poisson(model).astype(dtype), cx, cy)
    _add_stamps(new_variance, model.astype(dtype), cx, cy)
    return new_data, new_variance


def _check_sources(data, variance, x, y, flux) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions and fluxes as 1-D float arrays of one length; ValueError for bad shapes or fluxes."""
    if np.ndim(data) != 2 or np.shape(variance) != np.shape(data):
        raise ValueError(f"need 2-D data and variance of one shape, got {np.shape(data)} and {np.shape(variance)}")
    x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
    flux = np.broadcast_to(np.asarray(flux, dtype=float), x.shape).copy() if x.shape == y.shape else None
    if flux is None or x.ndim != 1:
        raise ValueError(f"x, y (and flux) must be 1-D of one length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(flux >= 0)):
        raise ValueError("positions must be finite and fluxes finite and >= 0")
    return x, y, flux


def _psf_stamps(psf, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Unit-sum PSF stamps ``(n, k, k)`` centred ``(dx, dy)`` px from their central pixel's centre."""
    if isinstance(psf, PSFModel):
        return moffat_stamps(psf.stamp.shape[0] // 2, dx, dy, *psf.shape_params)
    stamp = _unit_stamp(psf)
    return np.stack([_shifted(stamp, ox, oy) for ox, oy in zip(dx, dy)]) if len(dx) else np.zeros((0, *stamp.shape))


def _shifted(stamp: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``stamp`` moved by ``(dx, dy)`` px (cubic spline), the ringing's negative values clipped, unit sum."""
    moved = np.clip(ndimage.shift(stamp, (dy, dx), order=3, mode="constant", cval=0.0), 0.0, None)
    return moved / moved.sum()


def _stamp_indices(shape, cx: np.ndarray, cy: np.ndarray, half_y: int, half_x: int):
    """Row and column indices ``(n, ky, kx)`` of the pixels around each ``(cx, cy)``, clipped into the
    image, and which of them are inside it."""
    rows = cy[:, None, None] + np.arange(-half_y, half_y + 1)[None, :, None]
    cols = cx[:, None, None] + np.arange(-half_x, half_x + 1)[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return np.clip(rows, 0, shape[0] - 1), np.clip(cols, 0, shape[1] - 1), inside


def _add_stamps(image: np.ndarray, stamps: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> None:
    """Add each stamp centred on pixel ``(cx, cy)``, in place; overlapping stamps add, parts outside are dropped.

    One slice per stamp: a few hundred in-place additions cost less than one scattered ``np.add.at``.
    """
    (ny, nx), (ky, kx) = image.shape, stamps.shape[1:]
    for stamp, x0, y0 in zip(stamps, cx - kx // 2, cy - ky // 2):
        rows, cols = slice(max(y0, 0), min(y0 + ky, ny)), slice(max(x0, 0), min(x0 + kx, nx))
        if rows.start < rows.stop and cols.start < cols.stop:
            image[rows, cols] += stamp[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0]


def cutouts(image: np.ndarray, x, y, stamp_shape: tuple[int, int]) -> np.ndarray:
    """``(n, *stamp_shape)`` float64 cutouts centred on the nearest pixels of ``(x, y)``, NaN outside the image."""
    cx, cy = (np.rint(np.atleast_1d(np.asarray(v, dtype=float))).astype(int) for v in (x, y))
    rows, cols, inside = _stamp_indices(image.shape, cx, cy, stamp_shape[0] // 2, stamp_shape[1] // 2)
    return np.where(inside, np.asarray(image)[rows, cols].astype(float), np.nan)


# --------------------------------------------------------------------------- a set of fakes


@dataclass
class Fakes:
    """Fake point sources to inject: positions (0-based px), fluxes (e-) and the S/N they were drawn for.

    Attributes
    ----------
    x, y : ndarray
    flux : ndarray
        Flux in e- giving ``snr`` in the variance they were drawn for.
    snr : ndarray
        Target optimal S/N.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def table(self) -> Table:
        """The fakes as a table with columns ``x``, ``y``, ``flux`` and ``snr``."""
        return Table({"x": self.x, "y": self.y, "flux": self.flux, "snr": self.snr})


def draw_fakes(
    variance: np.ndarray, psf, n: int, rng: np.random.Generator, *, snr_range: tuple[float, float] = (3.0, 20.0),
    distribution: str = "log-uniform", shot_noise: bool = True, mask: np.ndarray | None = None, avoid_xy=None,
    **placement,
) -> Fakes:
    """``n`` fakes placed by :func:`place_fakes`, each with a random target S/N and the flux that gives it.

    The S/N is drawn log-uniformly over ``snr_range`` by default: with a few hundred fakes per
    frame this puts about 1.8 times more of them near S/N 5, where the completeness changes and
    the fit draws its information, than a uniform draw over 3-20 does, and still a third above
    S/N 10 for the plateau. The flux is :func:`flux_for_snr` in the variance plane around each
    position (so the S/N is the fake's true optimal S/N in that image, with the noise of the sources
    under it), with the fake's own shot noise by default.

    Parameters
    ----------
    variance : ndarray, shape (ny, nx)
        Variance plane (e-^2) of the image the fakes go into; its shape is the frame's.
    psf : PSFModel or ndarray
        The image's PSF.
    n : int
        Number of fakes wanted (fewer if the frame has no room, see :func:`place_fakes`).
    rng : numpy.random.Generator
        Source of positions and S/N.
    snr_range : tuple of float
        Lowest and highest target S/N (> 0).
    distribution : {"log-uniform", "uniform"}
        Distribution of the target S/N.
    shot_noise : bool
        Include the source's shot noise in the S/N (:func:`flux_for_snr`).
    mask, avoid_xy, **placement :
        Passed to :func:`place_fakes` (``margin``, ``min_separation``, ``avoid_radius``, ...).

    Returns
    -------
    Fakes

    Examples
    --------
    >>> from dagster_project.science.psf_models import moffat_stamp
    >>> fakes = draw_fakes(np.full((200, 200), 100.0), moffat_stamp(15, 3.0), 50, np.random.default_rng(1))
    >>> len(fakes), bool(fakes.snr.min() >= 3 and fakes.snr.max() <= 20)
    (50, True)
    >>> bool(np.allclose(optimal_snr(fakes.flux, moffat_stamp(15, 3.0), 100.0, shot_noise=True), fakes.snr))
    True
    """
    x, y = place_fakes(np.shape(variance), n, rng, mask=mask, avoid_xy=avoid_xy, **placement)
    snr = _draw_snr(len(x), snr_range, distribution, rng)
    p = _unit_stamp(psf)
    local = cutouts(variance, x, y, p.shape)
    return Fakes(x, y, np.asarray(flux_for_snr(snr, p, local, shot_noise=shot_noise), dtype=float), snr)


def _draw_snr(n: int, snr_range: tuple[float, float], distribution: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` target S/N, uniform or log-uniform over ``snr_range``."""
    low, high = (float(v) for v in snr_range)
    if not 0 < low <= high:
        raise ValueError(f"snr_range must be 0 < low <= high, got {snr_range}")
    if distribution == "uniform":
        return rng.uniform(low, high, n)
    if distribution == "log-uniform":
        return np.exp(rng.uniform(np.log(low), np.log(high), n))
    raise ValueError(f"distribution must be 'log-uniform' or 'uniform', got {distribution!r}")


# --------------------------------------------------------------------------- recovery


@dataclass
class FakeMatch:
    """Fakes matched to detections (:func:`match_fakes`).

    Attributes
    ----------
    detection : ndarray of int
        Per fake, the index of the detection that recovers it, -1 if none.
    distance : ndarray
        Per fake, the distance (px) to that detection, NaN if none.
    is_fake : ndarray of bool
        Per detection, whether it recovers a fake.
    """

    detection: np.ndarray
    distance: np.ndarray
    is_fake: np.ndarray

    @property
    def recovered(self) -> np.ndarray:
        """Per fake, whether it was recovered."""
        return self.detection >= 0

    @property
    def recovered_fakes(self) -> np.ndarray:
        """Indices of the recovered fakes."""
        return np.flatnonzero(self.detection >= 0)

    @property
    def other_detections(self) -> np.ndarray:
        """Indices of the detections that are not fakes."""
        return np.flatnonzero(~self.is_fake)


def match_fakes(fake_x, fake_y, det_x, det_y, radius: float) -> FakeMatch:
    """Which fakes a list of detections recovered, and which detections are not fakes.

    Pairs closer than ``radius`` px are matched closest first, so each fake takes its nearest
    free detection and each detection recovers at most one fake. Pass only the detections of
    the fakes' sign (positive ones for injected sources).

    Parameters
    ----------
    fake_x, fake_y, det_x, det_y : array_like
        0-based positions of the fakes and of the detections.
    radius : float
        Largest distance (px) of a match (about one PSF FWHM).

    Returns
    -------
    FakeMatch

    Examples
    --------
    Detection 1 is nearest to both fakes: fake 0 (closer) takes it, fake 1 takes detection 0.

    >>> m = match_fakes([10.0, 12.0], [10.0, 10.0], [13.5, 10.5, 40.0], [10.0, 10.0, 40.0], radius=2.0)
    >>> m.detection.tolist(), m.recovered_fakes.tolist(), m.other_detections.tolist()
    ([1, 0], [0, 1], [2])
    """
    fakes = np.column_stack([np.atleast_1d(fake_x), np.atleast_1d(fake_y)]).astype(float)
    dets = np.column_stack([np.atleast_1d(det_x), np.atleast_1d(det_y)]).astype(float)
    detection, distance = np.full(len(fakes), -1), np.full(len(fakes), np.nan)
    is_fake = np.zeros(len(dets), dtype=bool)
    if len(fakes) and len(dets):
        pairs = cKDTree(fakes).sparse_distance_matrix(cKDTree(dets), radius, output_type="ndarray")
        for i, j, d in pairs[np.argsort(pairs["v"], kind="stable")]:
            if detection[i] < 0 and not is_fake[j]:
                detection[i], distance[i], is_fake[j] = j, d, True
    return FakeMatch(detection, distance, is_fake)


# --------------------------------------------------------------------------- completeness


@dataclass
class CompletenessFit:
    """Completeness ``Phi((s - s50) / width)`` fitted to injection outcomes, and the binned curve.

    Attributes
    ----------
    s50, s50_err : float
        S/N at 50 % completeness and its 1-sigma (Fisher) error; NaN if it cannot be fitted
        (fewer than two fakes, or all recovered, or none).
    width, width_err : float
        S/N from 50 % to 84 % completeness (1 for the ideal detector) and its error.
    n, n_recovered : int
        Fakes used and recovered.
    converged : bool
        The optimiser converged inside the slope bounds (not a perfectly separated step).
    bin_edges : ndarray
        S/N bin edges of the binned curve.
    bin_n, bin_recovered : ndarray of int
        Fakes and recovered fakes per bin.
    bin_fraction, bin_low, bin_high : ndarray
        Recovered fraction per bin and its 68 % Wilson interval (NaN for empty bins).
    """

    s50: float
    s50_err: float
    width: float
    width_err: float
    n: int
    n_recovered: int
    converged: bool
    bin_edges: np.ndarray
    bin_n: np.ndarray
    bin_recovered: np.ndarray
    bin_fraction: np.ndarray
    bin_low: np.ndarray
    bin_high: np.ndarray

    def completeness(self, snr) -> np.ndarray:
        """The fitted completeness at ``snr``."""
        return special.ndtr((np.asarray(snr, dtype=float) - self.s50) / self.width)


def completeness_fit(snr, recovered, *, bin_edges=None) -> CompletenessFit:
    """Maximum-likelihood fit of ``completeness(s) = Phi((s - s50) / width)`` to recovered / missed fakes.

    Parameters
    ----------
    snr : array_like
        Target S/N of each fake.
    recovered : array_like of bool
        Whether each was recovered (e.g. ``match_fakes(...).recovered``).
    bin_edges : array_like, optional
        Edges of the binned curve; default 1-wide bins over the integer range of ``snr``.

    Returns
    -------
    CompletenessFit

    Examples
    --------
    Outcomes of the ideal 5-sigma detector, ``Phi(s - 5)``:

    >>> rng = np.random.default_rng(0)
    >>> s = rng.uniform(2.0, 9.0, 20000)
    >>> fit = completeness_fit(s, rng.random(s.size) < special.ndtr(s - 5.0))
    >>> round(fit.s50, 1), round(fit.width, 1), bool(fit.s50_err < 0.03), fit.n
    (5.0, 1.0, True, 20000)
    """
    s, k = _check_outcomes(snr, recovered)
    edges = _default_edges(s) if bin_edges is None else np.asarray(bin_edges, dtype=float)
    bins = _binned(s, k, edges)
    s50 = s50_err = width = width_err = math.nan
    converged = False
    if s.size >= 2 and 0 < k.sum() < s.size:
        (s50, width), (s50_err, width_err), converged = _probit_fit(s, k)
    return CompletenessFit(s50, s50_err, width, width_err, int(s.size), int(k.sum()), converged, edges, *bins)


def _check_outcomes(snr, recovered) -> tuple[np.ndarray, np.ndarray]:
    """S/N and outcomes as 1-D arrays of one length, non-finite S/N dropped."""
    s, k = np.atleast_1d(np.asarray(snr, dtype=float)), np.atleast_1d(np.asarray(recovered, dtype=bool))
    if s.shape != k.shape or s.ndim != 1:
        raise ValueError(f"snr and recovered must be 1-D of one length, got {s.shape} and {k.shape}")
    finite = np.isfinite(s)
    return s[finite], k[finite]


def _default_edges(s: np.ndarray) -> np.ndarray:
    """1-wide bins from the floor of the lowest S/N to the ceiling of the highest."""
    if s.size == 0:
        return np.array([0.0, 1.0])
    return np.arange(np.floor(s.min()), max(np.ceil(s.max()), np.floor(s.min()) + 1.0) + 0.5, 1.0)


def _binned(s: np.ndarray, k: np.ndarray, edges: np.ndarray):
    """Per bin: fakes, recovered fakes, fraction and 68 % Wilson interval (NaN where empty)."""
    n = np.histogram(s, edges)[0]
    r = np.histogram(s[k], edges)[0]
    fraction, low, high = np.full((3, n.size), np.nan)
    full = n > 0
    if full.any():
        fraction[full] = r[full] / n[full]
        low[full], high[full] = binom_conf_interval(r[full], n[full], confidence_level=_ONE_SIGMA, interval="wilson")
    return n, r, fraction, low, high


def _probit_nll(params: np.ndarray, t: np.ndarray, sign: np.ndarray) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of ``P(recovered) = Phi(a + b t)`` and its gradient in ``(a, b)``.

    ``log Phi(sign z)`` (sign +1 recovered, -1 missed) by ``log_ndtr``, stable far in the tails.
    """
    a, b = params
    z = sign * (a + b * t)
    log_p = special.log_ndtr(z)
    mills = np.exp(-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - log_p)  # phi(z) / Phi(z)
    dz = sign * mills
    return -float(log_p.sum()), -np.array([dz.sum(), (dz * t).sum()])


def _probit_fit(s: np.ndarray, k: np.ndarray):
    """``(s50, width)``, their Fisher errors and convergence, from the probit fit on standardised S/N.

    The S/N is standardised (``t = (s - m) / d``) for the optimiser's conditioning; then
    ``s50 = m - d a / b`` and ``width = d / b``, and the covariance of ``(a, b)`` (inverse Fisher
    information ``sum w_i [1, t_i]^T [1, t_i]``, ``w = phi^2 / (Phi (1 - Phi))``) is carried over
    by the Jacobian of that map.
    """
    m, d = float(s.mean()), float(s.std()) or 1.0
    t = (s - m) / d
    result = optimize.minimize(_probit_nll, np.array([0.0, 1.0]), args=(t, np.where(k, 1.0, -1.0)), jac=True,
                               method="L-BFGS-B", bounds=[(None, None), _SLOPE_BOUNDS])
    a, b = result.x
    z = a + b * t
    w = np.exp(2 * (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)) - special.log_ndtr(z) - special.log_ndtr(-z))
    fisher = np.array([[w.sum(), (w * t).sum()], [(w * t).sum(), (w * t * t).sum()]])
    jacobian = np.array([[-d / b, d * a / b**2], [0.0, -d / b**2]])
    try:
        errors = np.sqrt(np.diag(jacobian @ np.linalg.inv(fisher) @ jacobian.T))
    except np.linalg.LinAlgError:
        errors = np.full(2, np.nan)
    converged = bool(result.success and _SLOPE_BOUNDS[0] < b < _SLOPE_BOUNDS[1])
    return (float(m - d * a / b), float(d / b)), (float(errors[0]), float(errors[1])), converged


# --------------------------------------------------------------------------- magnitudes


def magnitude_at(flux_e: float, exptime: float, zero_point: float | None = None, *,
                 gain: float = 1.0) -> LimitingMagnitude | None:
    """The magnitude of a point source of ``flux_e`` electrons, e.g. the flux at 50 % completeness.

    Instrumental, ``-2.5 log10(flux_e / exptime)`` (mag of e-/s), unless a zero point is given:
    then calibrated, ``zero_point - 2.5 log10(flux_e / gain)`` with the zero point of the image's
    counts in ADU, as a ``MAGZP`` header keyword has it
    (:func:`~dagster_project.science.magnitudes.limiting_magnitude`, which this is).

    Parameters
    ----------
    flux_e : float
        Flux in e- (> 0).
    exptime : float
        Exposure time (s).
    zero_point : float, optional
        Photometric zero point of the image's ADU counts.
    gain : float
        e- per ADU, for the calibrated magnitude.

    Returns
    -------
    LimitingMagnitude or None
        The value with its system; None for a flux that is not positive, or neither a positive
        exposure time nor a zero point.

    Examples
    --------
    >>> magnitude_at(500.0, 60.0).label
    '-2.30 (instrumental, mag of e-/s)'
    >>> round(magnitude_at(500.0, 60.0, zero_point=26.0).value, 3)
    19.253
    """
    return limiting_magnitude(float(flux_e), {"EXPTIME": exptime, "MAGZP": zero_point, "GAIN": gain})
