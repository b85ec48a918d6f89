"""Star selection, PSF modelling and image-quality figures.

The PSF model is a pixel-integrated elliptical Moffat profile
(:func:`~dagster_project.science.psf_models.moffat_profile`), fitted to the
brightest isolated stars: one shape (FWHM, beta, ellipticity, angle) shared
by all stars, and a sub-pixel position, a flux and a local background per
star. The fit alternates (1) the per-star parameters with the shape fixed
(a batched Gauss-Newton over all stars at once) and (2) the four shape
parameters with the positions fixed (:func:`scipy.optimize.least_squares`,
soft-L1 loss, fluxes and backgrounds solved linearly inside), so that
neighbours and cosmic rays inside a cutout pull little and the optimiser
never sees hundreds of coupled parameters. The returned stamp is rendered
with :func:`~dagster_project.science.psf_models.moffat_stamp`, so it is
centred exactly on its central pixel and sums to 1.

All images passed here are background-subtracted, in electrons; pixel
coordinates are 0-based ``(x, y)``.
"""

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales
from photutils.segmentation import SourceCatalog, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from .background import BackgroundMaps, estimate_background
from .images import ImagePlanes
from .psf_models import moffat_stamp, pixel_integrated_moffat

__all__ = [
    "ALL_BITS",
    "ImageQuality",
    "PSFError",
    "PSFModel",
    "characterize_image",
    "default_stamp_size",
    "estimate_psf",
    "find_stars",
    "fit_half_size",
    "fwhm_tile_spread",
    "pixel_integrated_moffat",
    "pixel_scale_arcsec",
    "psf_photometry",
    "shape_fit_half_size",
    "star_fwhm",
]

#: Mask bits that make a pixel unusable for star fitting (every bit).
ALL_BITS = 0xFFFF

#: Bounds of the shape parameters (FWHM px, beta, g1, g2) in the fit.
_SHAPE_LOWER = np.array([0.5, 1.2, -0.7, -0.7])
_SHAPE_UPPER = np.array([60.0, 30.0, 0.7, 0.7])


class PSFError(RuntimeError):
    """Raised when too few usable stars are found or the PSF fit fails."""


@dataclass
class PSFModel:
    """A constant elliptical Moffat PSF.

    Attributes
    ----------
    stamp : ndarray, float64, shape (n, n), n odd
        Pixel-integrated PSF centred on pixel ``[n // 2, n // 2]``, sum 1.
    fwhm_px : float
        Geometric-mean FWHM ``sqrt(fwhm_major * fwhm_minor)`` in pixels.
    ellipticity : float
        ``1 - b/a``.
    theta_deg : float
        Position angle of the major axis, degrees counter-clockwise from +x,
        in (-90, 90].
    beta : float
        Moffat power index.
    n_stars : int
        Number of stars used in the fit.
    """

    stamp: np.ndarray = field(repr=False)
    fwhm_px: float
    ellipticity: float
    theta_deg: float
    beta: float
    n_stars: int

    @property
    def shape_params(self) -> tuple[float, float, float, float]:
        """``(fwhm_px, beta, ellipticity, theta_deg)`` as taken by ``moffat_profile``."""
        return self.fwhm_px, self.beta, self.ellipticity, self.theta_deg


@dataclass
class ImageQuality:
    """Summary figures of one calibrated image.

    Attributes
    ----------
    background : BackgroundMaps
        Sky level map and median noise (e-; no full-resolution noise map).
    psf : PSFModel
    stars : astropy.table.Table
        The stars selected by :func:`find_stars`.
    n_stars : int
        Number of stars in ``stars``.
    pixel_scale_arcsec : float
        Geometric-mean pixel scale from the WCS (NaN without a celestial WCS).
    seeing_arcsec : float
        PSF FWHM in arcsec (NaN without a celestial WCS).
    depth_5sigma_e : float
        Flux (e-) of a point source detected at 5 sigma by optimal PSF
        photometry on the median background noise:
        ``5 * rms / sqrt(sum(psf.stamp**2))``.
    """

    background: BackgroundMaps
    psf: PSFModel
    stars: Table
    n_stars: int
    pixel_scale_arcsec: float
    seeing_arcsec: float
    depth_5sigma_e: float


def _bad_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None, bad_bits: int) -> np.ndarray:
    """Boolean map of pixels that cannot be used (masked, non-finite, variance <= 0)."""
    bad = ~np.isfinite(image) | ~np.isfinite(variance) | ~(variance > 0)
    if mask is not None:
        bad |= (np.asarray(mask) & bad_bits) != 0
    return bad


def _check_planes(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None) -> None:
    if np.ndim(image) != 2:
        raise ValueError(f"image must be 2-D, got shape {np.shape(image)}")
    if np.shape(variance) != np.shape(image):
        raise ValueError(f"variance shape {np.shape(variance)} differs from image shape {np.shape(image)}")
    if mask is not None and np.shape(mask) != np.shape(image):
        raise ValueError(f"mask shape {np.shape(mask)} differs from image shape {np.shape(image)}")


def shape_fit_half_size(fwhm: float) -> int:
    """Half-size (px) of the cutouts the PSF's shape is fitted on: ``ceil(2.5 * fwhm)`` in [4, 20].

    Wider than a star's flux fit (:func:`fit_half_size`): the shape must hold out to the wings, where
    a reference co-added from frames of several seeings is no single Moffat; fitted within 1.5 FWHM,
    the wings at 6-8 px were 20-70 % off and bright stars left rings of 5-9 sigma in the differences
    (34 false positives on one 2048^2 frame against a 10-frame co-add; 5 with 2.5 FWHM).
    """
    return int(np.clip(np.ceil(2.5 * fwhm), 4, 20))


def fit_half_size(fwhm: float) -> int:
    """Half-size (px) of the square cutout used to fit a star: ``ceil(1.5 * fwhm)`` in [4, 20]."""
    return int(np.clip(np.ceil(1.5 * fwhm), 4, 20))


def default_stamp_size(fwhm: float) -> int:
    """Odd PSF stamp side, ``8 * fwhm`` rounded up (at least 15 px), as ``render_point_sources`` uses."""
    return max(int(np.ceil(8.0 * fwhm)) | 1, 15)


def _segment(image, variance, mask, detect_sigma, n_pixels, bad_bits):
    """Threshold at ``detect_sigma`` per-pixel sigma; return (SourceCatalog or None, bad-pixel map)."""
    _check_planes(image, variance, mask)
    bad = _bad_pixels(image, variance, mask, bad_bits)
    data = np.where(bad, 0.0, image).astype(np.float32)
    sigma = np.sqrt(np.where(bad, 0.0, variance)).astype(np.float32)
    with warnings.catch_warnings():  # "no sources found" is an ordinary outcome here
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(data, detect_sigma * sigma, n_pixels, mask=bad)
    if segm is None:
        return None, bad
    return SourceCatalog(data, segm, error=sigma, mask=bad), bad


def find_stars(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    snr_min: float = 30.0,
    detect_sigma: float = 3.0,
    n_pixels: int = 5,
    max_stars: int = 300,
    isolation_fwhm: float = 4.0,
    bad_bits: int = ALL_BITS,
) -> Table:
    """Select bright, isolated, unsaturated stars suitable for PSF fitting.

    Sources are found by thresholding ``image`` at ``detect_sigma`` times the
    per-pixel noise (:func:`photutils.segmentation.detect_sources`) and
    measured with :class:`photutils.segmentation.SourceCatalog`. A star is
    kept when its isophotal S/N is at least ``snr_min``; no pixel within the
    fitting cutout plus one pixel is masked (any of ``bad_bits``, e.g.
    SATURATED, BLEED, COSMIC_RAY) or non-finite; the cutout lies inside the
    frame; no other source brighter than 5% of its flux lies within
    ``isolation_fwhm`` FWHM; and its moment FWHM and ellipticity are not
    outliers among the candidates (more than 3 robust sigma and more than 15%
    in FWHM or 0.1 in ellipticity from the median: rejects galaxies, blends
    and unmasked cosmic rays).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Background-subtracted image (e-).
    variance : ndarray
        Per-pixel variance (e-^2).
    mask : ndarray of uint16, optional
        :class:`~dagster_project.science.masks.MaskBit` field.
    snr_min : float
        Minimum isophotal S/N.
    detect_sigma, n_pixels : float, int
        Detection threshold (per-pixel sigma) and minimum connected pixels.
    max_stars : int
        Keep at most this many, the brightest.
    isolation_fwhm : float
        Isolation radius in units of the median moment FWHM.
    bad_bits : int
        Mask bits that disqualify a pixel.

    Returns
    -------
    astropy.table.Table
        Columns ``x``, ``y`` (0-based isophotal centroids, px), ``flux``,
        ``flux_err`` (isophotal, e-), ``snr``, ``peak`` (e-), ``fwhm`` (px,
        moments) and ``ellipticity`` (moments), brightest first. Empty (with
        these columns) when no star qualifies. ``meta['fwhm']`` holds the
        median moment FWHM of the stars (NaN if none), ``meta['sources']``
        every source detected (stars, galaxies, blends, faint ones: a dict of
        arrays ``x``, ``y`` in px and ``flux`` in e-), e.g. to measure
        distances to the nearest source without segmenting the image again.
    """
    cat, bad = _segment(image, variance, mask, detect_sigma, n_pixels, bad_bits)
    if cat is None:
        return _no_stars({c: np.zeros(0) for c in ("x", "y", "flux")})
    sources = _Sources.measure(cat)
    found = sources.finite_dict()
    candidates = np.flatnonzero(sources.finite & (sources.snr >= snr_min))
    if candidates.size == 0:
        return _no_stars(found)
    bright = _Candidates.select(cat, sources, candidates)
    fwhm_guess = float(np.nanmedian(bright.fwhm))
    keep = _clean_cutouts(bad, bright.x, bright.y, fit_half_size(fwhm_guess))
    keep &= np.isfinite(bright.fwhm) & np.isfinite(bright.ellipticity)
    keep &= _isolated(sources, candidates, isolation_fwhm * fwhm_guess)
    keep = _without_shape_outliers(keep, bright.fwhm, bright.ellipticity)
    if not keep.any():
        return _no_stars(found)
    return bright.table(keep, max_stars, found)


_STAR_COLUMNS = ("x", "y", "flux", "flux_err", "snr", "peak", "fwhm", "ellipticity")


def _no_stars(sources: dict) -> Table:
    """The empty star table (every column of :func:`find_stars`), with ``sources`` in its meta."""
    return Table({c: np.zeros(0) for c in _STAR_COLUMNS}, meta={"fwhm": np.nan, "sources": sources})


@dataclass
class _Sources:
    """Every detected source: isophotal centroid (px), flux (e-) and S/N; positions may be NaN."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    snr: np.ndarray

    @classmethod
    def measure(cls, cat: SourceCatalog) -> "_Sources":
        x = np.asarray(cat.x_centroid, dtype=float)
        y = np.asarray(cat.y_centroid, dtype=float)
        flux = np.asarray(cat.segment_flux, dtype=float)
        return cls(x, y, flux, flux / np.asarray(cat.segment_flux_err, dtype=float))

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.x) & np.isfinite(self.y)

    def finite_dict(self) -> dict:
        """``x``, ``y``, ``flux`` of the sources with a finite position (``meta['sources']``)."""
        finite = self.finite
        return {"x": self.x[finite], "y": self.y[finite], "flux": self.flux[finite]}


@dataclass
class _Candidates:
    """The sources bright enough to be stars, with their catalog rows and moment shapes."""

    rows: SourceCatalog
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    snr: np.ndarray
    fwhm: np.ndarray
    ellipticity: np.ndarray

    @classmethod
    def select(cls, cat: SourceCatalog, sources: _Sources, index: np.ndarray) -> "_Candidates":
        rows = cat[index]
        return cls(rows, sources.x[index], sources.y[index], sources.flux[index], sources.snr[index],
                   np.asarray(rows.fwhm.value, dtype=float), np.asarray(rows.ellipticity.value, dtype=float))

    def table(self, keep: np.ndarray, max_stars: int, sources: dict) -> Table:
        """The ``keep`` candidates as :func:`find_stars` returns them: brightest first, at most ``max_stars``."""
        table = Table(
            {
                "x": self.x[keep],
                "y": self.y[keep],
                "flux": self.flux[keep],
                "flux_err": np.asarray(self.rows.segment_flux_err, dtype=float)[keep],
                "snr": self.snr[keep],
                "peak": np.asarray(self.rows.max_value, dtype=float)[keep],
                "fwhm": self.fwhm[keep],
                "ellipticity": self.ellipticity[keep],
            }
        )
        table.sort("flux", reverse=True)
        table = table[:max_stars]
        table.meta.update(fwhm=float(np.median(table["fwhm"])), sources=sources)
        return table


def _clean_cutouts(bad: np.ndarray, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """True where the fitting cutout plus one pixel is inside the frame and holds no unusable pixel.

    Only the candidates' windows of ``bad`` are looked at.
    """
    ny, nx = bad.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    keep = (ix - half - 1 >= 0) & (iy - half - 1 >= 0) & (ix + half + 1 < nx) & (iy + half + 1 < ny)
    window = np.arange(-half - 1, half + 2)
    rows = np.clip(iy[:, None] + window, 0, ny - 1)
    cols = np.clip(ix[:, None] + window, 0, nx - 1)
    keep &= ~bad[rows[:, :, None], cols[:, None, :]].any(axis=(1, 2))
    return keep


def _isolated(sources: _Sources, candidates: np.ndarray, radius: float) -> np.ndarray:
    """True for the candidates with no other source brighter than 5 % of their flux within ``radius`` px."""
    isolated = np.ones(candidates.size, dtype=bool)
    tree = cKDTree(np.column_stack([sources.x, sources.y]))
    centres = np.column_stack([sources.x[candidates], sources.y[candidates]])
    for k, neighbours in enumerate(tree.query_ball_point(centres, radius)):
        others = [j for j in neighbours if j != candidates[k]]
        if others and np.any(sources.flux[others] > 0.05 * sources.flux[candidates[k]]):
            isolated[k] = False
    return isolated


def _without_shape_outliers(keep: np.ndarray, fwhm: np.ndarray, ellipticity: np.ndarray) -> np.ndarray:
    """``keep`` less the shape outliers: beyond 3 robust sigma AND beyond 15 % in FWHM or 0.1 in ellipticity.

    Left alone with fewer than 3 stars kept (updated in place).
    """
    if keep.sum() >= 3:
        for values, floor in ((fwhm, 0.15 * np.median(fwhm[keep])), (ellipticity, 0.1)):
            centre = np.median(values[keep])
            keep &= np.abs(values - centre) <= max(3.0 * mad_std(values[keep]), floor)
    return keep


def _shape_from_g(fwhm: float, beta: float, g1: float, g2: float) -> tuple[float, float, float, float]:
    """Moffat ``(fwhm, beta, ellipticity, theta_deg)`` from the fit's ``(g1, g2) = e (cos 2t, sin 2t)``."""
    ell = float(np.hypot(g1, g2))
    theta = float(np.rad2deg(0.5 * np.arctan2(g2, g1)))
    if theta <= -90.0:
        theta += 180.0
    return float(fwhm), float(beta), min(ell, 0.99), theta


@dataclass
class _Cutouts:
    """Square cutouts around stars: data, weights (1/sigma, 0 where unusable) and pixel offsets."""

    data: np.ndarray  # (n, s, s)
    weight: np.ndarray  # (n, s, s)
    dx: np.ndarray  # (n, s, s) pixel x minus the star's initial x
    dy: np.ndarray

    def select(self, keep: np.ndarray) -> "_Cutouts":
        return _Cutouts(self.data[keep], self.weight[keep], self.dx[keep], self.dy[keep])


def _extract_cutouts(image, variance, mask, x, y, half, bad_bits=ALL_BITS) -> _Cutouts:
    ny, nx = image.shape
    offsets = np.arange(-half, half + 1)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    cols = ix[:, None] + offsets
    rows = iy[:, None] + offsets
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    r = np.clip(rows, 0, ny - 1)[:, :, None]
    c = np.clip(cols, 0, nx - 1)[:, None, :]
    data = np.asarray(image)[r, c].astype(float)  # the cutouts, not the whole frame, in float64
    var = np.asarray(variance)[r, c].astype(float)
    bad = ~inside | ~np.isfinite(data) | ~np.isfinite(var) | ~(var > 0)
    if mask is not None:
        bad |= (np.asarray(mask)[r, c] & bad_bits) != 0
    weight = np.where(bad, 0.0, 1.0 / np.sqrt(np.where(bad, 1.0, var)))
    data = np.where(bad, 0.0, data)
    dx = np.broadcast_to(cols[:, None, :] - np.asarray(x, dtype=float)[:, None, None], data.shape)
    dy = np.broadcast_to(rows[:, :, None] - np.asarray(y, dtype=float)[:, None, None], data.shape)
    return _Cutouts(data, weight, dx, dy)


def _profiles(cut: _Cutouts, shape, sx, sy, norm: float = 1.0) -> np.ndarray:
    """Unit-flux model of every cutout for stars shifted by ``(sx, sy)`` from their initial positions."""
    return pixel_integrated_moffat(cut.dx - sx[:, None, None], cut.dy - sy[:, None, None], *shape) / norm


def _linear_fit(cut: _Cutouts, prof: np.ndarray, w2: np.ndarray):
    """Weighted least-squares flux and constant background per star, and the flux error.

    ``w2`` are the squared pixel weights (inverse variances, possibly with
    robust down-weighting); the flux error uses the plain inverse variances.
    """
    a = (w2 * prof**2).sum(axis=(1, 2))
    b = (w2 * prof).sum(axis=(1, 2))
    c = w2.sum(axis=(1, 2))
    pd = (w2 * prof * cut.data).sum(axis=(1, 2))
    d = (w2 * cut.data).sum(axis=(1, 2))
    det = a * c - b**2
    ok = det > 0
    safe = np.where(ok, det, 1.0)
    flux = np.where(ok, (c * pd - b * d) / safe, np.nan)
    bkg = np.where(ok, (a * d - b * pd) / safe, np.nan)
    v2 = cut.weight**2
    a0, b0, c0 = (v2 * prof**2).sum(axis=(1, 2)), (v2 * prof).sum(axis=(1, 2)), v2.sum(axis=(1, 2))
    det0 = a0 * c0 - b0**2
    flux_err = np.sqrt(np.where(det0 > 0, c0 / np.where(det0 > 0, det0, 1.0), np.nan))
    return flux, bkg, flux_err


def _robust_w2(cut: _Cutouts, resid: np.ndarray, f_scale: float = 3.0) -> np.ndarray:
    """Soft-L1 (pseudo-Huber) iteratively-reweighted squared weights for normalised residuals."""
    z = resid * cut.weight / f_scale
    return cut.weight**2 / np.sqrt(1.0 + z**2)


@dataclass
class _StarFit:
    sx: np.ndarray  # position shifts from the initial positions (px)
    sy: np.ndarray
    flux: np.ndarray
    background: np.ndarray
    flux_err: np.ndarray
    chi2_red: np.ndarray


def _fit_stars(cut: _Cutouts, shape, *, fit_positions: bool, norm: float = 1.0, n_iter: int = 6) -> _StarFit:
    """Per-star flux, background and (optionally) position with the PSF shape fixed.

    Batched Gauss-Newton over all stars at once (each star's 4x4 normal
    equations solved together), position derivatives by finite differences,
    robust soft-L1 reweighting; shifts are limited to 0.5 px per step and
    2 px in total. Without ``fit_positions`` it is the linear optimal fit.
    """
    n = cut.data.shape[0]
    sx, sy = np.zeros(n), np.zeros(n)
    prof = _profiles(cut, shape, sx, sy, norm)
    w2 = cut.weight**2
    flux, bkg, _ = _linear_fit(cut, prof, w2)
    step = 1e-3
    for _ in range(n_iter if fit_positions else 2):
        resid = cut.data - np.nan_to_num(flux)[:, None, None] * prof - np.nan_to_num(bkg)[:, None, None]
        w2 = _robust_w2(cut, resid)
        if not fit_positions:
            flux, bkg, _ = _linear_fit(cut, prof, w2)
            continue
        jx = flux[:, None, None] * (_profiles(cut, shape, sx + step, sy, norm) - prof) / step
        jy = flux[:, None, None] * (_profiles(cut, shape, sx, sy + step, norm) - prof) / step
        jac = np.stack([jx, jy, prof, np.ones_like(prof)], axis=-1).reshape(n, -1, 4)
        wflat = w2.reshape(n, -1, 1)
        normal = np.einsum("npi,npj->nij", jac * wflat, jac) + 1e-9 * np.eye(4)
        rhs = np.einsum("npi,np->ni", jac * wflat, resid.reshape(n, -1))
        delta = np.linalg.solve(normal, rhs[..., None])[..., 0]
        delta = np.where(np.isfinite(delta), delta, 0.0)
        sx = np.clip(sx + np.clip(delta[:, 0], -0.5, 0.5), -2.0, 2.0)
        sy = np.clip(sy + np.clip(delta[:, 1], -0.5, 0.5), -2.0, 2.0)
        prof = _profiles(cut, shape, sx, sy, norm)
        flux, bkg, _ = _linear_fit(cut, prof, w2)
    flux, bkg, flux_err = _linear_fit(cut, prof, w2)
    resid = (cut.data - np.nan_to_num(flux)[:, None, None] * prof - np.nan_to_num(bkg)[:, None, None]) * cut.weight
    dof = np.maximum((cut.weight > 0).sum(axis=(1, 2)) - (4 if fit_positions else 2), 1)
    return _StarFit(sx, sy, flux, bkg, flux_err, (resid**2).sum(axis=(1, 2)) / dof)


def _fit_shape(cut: _Cutouts, shape0, sx, sy):
    """Least-squares Moffat shape (FWHM, beta, g1, g2) shared by all stars at fixed positions.

    Fluxes and backgrounds are solved linearly inside the residual function
    (variable projection), so the optimiser sees only the 4 shape parameters.
    """
    fwhm0, beta0, ell0, theta0 = shape0
    t0 = np.deg2rad(2.0 * theta0)
    p0 = np.clip([fwhm0, beta0, ell0 * np.cos(t0), ell0 * np.sin(t0)], _SHAPE_LOWER + 1e-6, _SHAPE_UPPER - 1e-6)
    w2 = cut.weight**2

    def residuals(p):
        prof = _profiles(cut, _shape_from_g(*p), sx, sy)
        flux, bkg, _ = _linear_fit(cut, prof, w2)
        model = np.nan_to_num(flux)[:, None, None] * prof + np.nan_to_num(bkg)[:, None, None]
        return ((cut.data - model) * cut.weight).ravel()

    result = least_squares(
        residuals, p0, bounds=(_SHAPE_LOWER, _SHAPE_UPPER), loss="soft_l1", f_scale=3.0,
        x_scale=[0.1, 0.3, 0.02, 0.02], diff_step=1e-4, max_nfev=100,
    )
    return _shape_from_g(*result.x), result


def _initial_fwhm(stars: Table) -> float:
    if "fwhm" in stars.colnames and np.isfinite(stars["fwhm"]).any():
        return float(np.clip(np.nanmedian(stars["fwhm"]), 1.0, 30.0))
    return 3.0


def estimate_psf(
    image_minus_background: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    stars: Table,
    stamp_size: int | None = None,
    *,
    max_stars: int = 30,
    min_stars: int = 5,
) -> PSFModel:
    """Fit an elliptical Moffat PSF to the brightest of ``stars``.

    Alternates (twice) a per-star fit of position, flux and local background
    with the shape fixed, and a fit of the shape shared by all stars
    (FWHM, beta, ellipticity, angle; soft-L1 loss) with the positions fixed;
    stars fitted much worse than the others (binaries, galaxies, residual
    cosmic rays: reduced chi-square above median + 5 MAD) are dropped after
    the first round.

    Parameters
    ----------
    image_minus_background : ndarray, shape (ny, nx)
        Background-subtracted image (e-).
    variance : ndarray
        Per-pixel variance (e-^2); pixels with variance <= 0 are ignored.
    mask : ndarray of uint16 or None
        Any non-zero bit excludes the pixel from the fit.
    stars : astropy.table.Table
        Columns ``x``, ``y`` and ``flux`` (e.g. from :func:`find_stars`); an
        optional ``fwhm`` column (px) seeds the fit and sets the cutout size.
    stamp_size : int, optional
        Odd side of the output stamp; default :func:`default_stamp_size`.
    max_stars : int
        Fit at most this many stars, the brightest by ``flux``.
    min_stars : int
        Fewer usable stars raise :class:`PSFError`.

    Returns
    -------
    PSFModel

    Raises
    ------
    PSFError
        Too few stars, or the fit did not converge to a physical shape.
    ValueError
        Bad input shapes or an even ``stamp_size``.

    Examples
    --------
    >>> from dagster_project.science.psf_models import render_point_sources
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[15:100:20, 15:100:20] + rng.uniform(-0.5, 0.5, (2, 5, 5))
    >>> model = render_point_sources((110, 110), xx.ravel(), yy.ravel(), np.full(25, 2e4), fwhm=3.0, beta=3.0)
    >>> variance = model + 100.0
    >>> image = model + rng.normal(size=model.shape) * np.sqrt(variance)
    >>> psf = estimate_psf(image, variance, None, find_stars(image, variance))
    >>> round(psf.fwhm_px, 2), round(psf.beta, 1), psf.stamp.shape, psf.n_stars
    (3.0, 3.0, (25, 25), 25)
    """
    _check_planes(image_minus_background, variance, mask)
    if stamp_size is not None and (stamp_size < 3 or stamp_size % 2 == 0):
        raise ValueError(f"stamp_size must be odd and >= 3, got {stamp_size}")
    if len(stars) < min_stars:
        raise PSFError(f"only {len(stars)} stars given for the PSF fit (need at least {min_stars})")
    cut, fwhm0 = _brightest_cutouts(image_minus_background, variance, mask, stars, max_stars, min_stars)
    (fwhm, beta, ell, theta), n_stars = _alternating_fit(cut, (fwhm0, 3.0, 0.0, 0.0), min_stars)
    size = default_stamp_size(fwhm) if stamp_size is None else stamp_size
    return PSFModel(
        stamp=moffat_stamp(size, fwhm, beta, ell, theta),
        fwhm_px=fwhm,
        ellipticity=ell,
        theta_deg=theta,
        beta=beta,
        n_stars=n_stars,
    )


def _brightest_cutouts(image, variance, mask, stars: Table, max_stars: int, min_stars: int) -> tuple[_Cutouts, float]:
    """Cutouts of the ``max_stars`` brightest stars that are at least 80 % usable, and the FWHM guess."""
    order = np.argsort(-np.asarray(stars["flux"], dtype=float))[:max_stars]
    x = np.asarray(stars["x"], dtype=float)[order]
    y = np.asarray(stars["y"], dtype=float)[order]
    fwhm0 = _initial_fwhm(stars)
    half = shape_fit_half_size(fwhm0)
    cut = _extract_cutouts(image, variance, mask, x, y, half)
    usable = (cut.weight > 0).mean(axis=(1, 2)) >= 0.8
    if usable.sum() < min_stars:
        raise PSFError(f"only {int(usable.sum())} stars have clean {2 * half + 1} px cutouts (need {min_stars})")
    return cut.select(usable), fwhm0


def _alternating_fit(cut: _Cutouts, shape, min_stars: int) -> tuple[tuple[float, float, float, float], int]:
    """Two rounds of per-star fits (shape fixed) and shape fits (positions fixed): the shape and the stars used."""
    for round_ in range(2):
        stars_fit = _fit_stars(cut, shape, fit_positions=True)
        good = _well_fitted(stars_fit, drop_outliers=round_ == 0)
        if good.sum() < min_stars:
            raise PSFError(f"only {int(good.sum())} stars are fitted well by a point-source model (need {min_stars})")
        cut = cut.select(good)
        shape, result = _fit_shape(cut, shape, stars_fit.sx[good], stars_fit.sy[good])
    _check_converged(shape, result)
    return shape, int(cut.data.shape[0])


def _well_fitted(fit: _StarFit, drop_outliers: bool) -> np.ndarray:
    """Stars with a positive flux; with ``drop_outliers``, also a reduced chi-square <= median + 5 MAD."""
    good = np.isfinite(fit.flux) & (fit.flux > 0)
    if drop_outliers and good.any():
        chi2 = fit.chi2_red[good]
        good &= fit.chi2_red <= np.median(chi2) + 5.0 * max(mad_std(chi2), 0.1)
    return good


def _check_converged(shape, result) -> None:
    """Raise :class:`PSFError` if the shape fit failed or ran to the FWHM bounds."""
    fwhm = shape[0]
    if not result.success or not np.all(np.isfinite(shape)):
        raise PSFError(f"PSF fit did not converge: {result.message}")
    if fwhm <= _SHAPE_LOWER[0] * 1.01 or fwhm >= _SHAPE_UPPER[0] * 0.99:
        raise PSFError(f"PSF fit ran to the FWHM bound ({fwhm:.2f} px): the stars are not point-like")


def psf_photometry(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    psf: PSFModel,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fit_positions: bool = False,
    half_size: int | None = None,
) -> Table:
    """PSF-fit photometry of point sources with a fixed PSF shape.

    Each source is fitted on a ``2 * half_size + 1`` cutout with
    ``flux * PSF + constant`` (and, if ``fit_positions``, a sub-pixel shift of
    at most 2 px), weighting pixels by ``1 / variance`` (soft-L1 reweighted
    against outlying pixels) and ignoring masked, non-finite or off-frame
    pixels. With fixed positions this is the optimal (PSF-weighted, linear)
    flux estimator. Fluxes are in the normalisation of ``psf.stamp`` (flux
    within the stamp), the convention ZOGY uses.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image (e-).
    variance : ndarray
        Variance (e-^2).
    mask : ndarray of uint16 or None
        Any non-zero bit excludes the pixel.
    psf : PSFModel
    x, y : array_like
        0-based positions (px).
    fit_positions : bool
        Also fit the positions.
    half_size : int, optional
        Cutout half-size; default :func:`fit_half_size` of the PSF FWHM.

    Returns
    -------
    astropy.table.Table
        ``x``, ``y`` (fitted or input), ``flux``, ``flux_err`` (e-),
        ``background`` (local constant, e-/px), ``chi2_red``, and
        ``masked_fraction`` of the cutout. Sources whose cutout is more than
        half unusable get NaN flux.
    """
    _check_planes(image, variance, mask)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-D arrays of the same length")
    columns = ("x", "y", "flux", "flux_err", "background", "chi2_red", "masked_fraction")
    if x.size == 0:
        return Table({c: np.zeros(0) for c in columns})
    half = fit_half_size(psf.fwhm_px) if half_size is None else int(half_size)
    cut = _extract_cutouts(image, variance, mask, x, y, half)
    masked_fraction = 1.0 - (cut.weight > 0).mean(axis=(1, 2))
    offsets = np.arange(psf.stamp.shape[0]) - psf.stamp.shape[0] // 2
    grid_y, grid_x = np.meshgrid(offsets, offsets, indexing="ij")
    norm = pixel_integrated_moffat(grid_x, grid_y, *psf.shape_params).sum()  # flux inside the stamp
    fit = _fit_stars(cut, psf.shape_params, fit_positions=fit_positions, norm=norm)
    unusable = masked_fraction > 0.5
    return Table(
        {
            "x": x + fit.sx,
            "y": y + fit.sy,
            "flux": np.where(unusable, np.nan, fit.flux),
            "flux_err": np.where(unusable, np.nan, fit.flux_err),
            "background": fit.background,
            "chi2_red": fit.chi2_red,
            "masked_fraction": masked_fraction,
        }
    )


def star_fwhm(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    psf: PSFModel,
    x: np.ndarray,
    y: np.ndarray,
    *,
    step: float = 0.1,
) -> np.ndarray:
    """FWHM (px) of each star with the other PSF parameters and the positions fixed.

    The chi-square of the linear ``flux * PSF + constant`` fit is evaluated at
    ``fwhm * (1 - step)``, ``fwhm`` and ``fwhm * (1 + step)`` for all stars at
    once; each star's FWHM is the minimum of the parabola through the three
    (NaN when the parabola has no minimum within two steps). About as costly
    as three linear PSF photometries.

    Parameters
    ----------
    image, variance, mask
        Background-subtracted image (e-), variance (e-^2), mask (any bit excludes).
    psf : PSFModel
        Supplies FWHM, beta, ellipticity and angle.
    x, y : array_like
        PSF-fitted 0-based positions (px).
    step : float
        Relative FWHM step of the three evaluations.

    Returns
    -------
    ndarray
        FWHM per star (px).
    """
    _check_planes(image, variance, mask)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    cut = _extract_cutouts(image, variance, mask, x, y, fit_half_size(psf.fwhm_px))
    w2 = cut.weight**2
    still = np.zeros(x.size)
    _, beta, ellipticity, theta = psf.shape_params
    chi2 = []
    for factor in (1.0 - step, 1.0, 1.0 + step):
        prof = _profiles(cut, (psf.fwhm_px * factor, beta, ellipticity, theta), still, still)
        flux, bkg, _ = _linear_fit(cut, prof, w2)
        resid = (cut.data - np.nan_to_num(flux)[:, None, None] * prof - np.nan_to_num(bkg)[:, None, None]) * cut.weight
        chi2.append((resid**2).sum(axis=(1, 2)))
    low, mid, high = chi2
    curvature = low - 2.0 * mid + high
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = 0.5 * (low - high) / curvature  # in units of `step`
    return np.where((curvature > 0) & (np.abs(offset) <= 2.0), psf.fwhm_px * (1.0 + step * offset), np.nan)


def fwhm_tile_spread(x, y, fwhm, shape: tuple[int, int], n_tiles: int, min_stars: int = 3) -> tuple[np.ndarray, float]:
    """Median star FWHM in each of ``n_tiles`` x ``n_tiles`` tiles and their relative spread.

    Parameters
    ----------
    x, y, fwhm : array_like
        Star positions (px) and FWHM (px, e.g. from :func:`star_fwhm`; NaN ignored).
    shape : (ny, nx)
        Image shape.
    n_tiles : int
        Tiles per side.
    min_stars : int
        Tiles with fewer stars get NaN.

    Returns
    -------
    tiles : ndarray, shape (n_tiles, n_tiles)
        Median FWHM (px) per tile, row 0 at y = 0.
    spread : float
        ``(max - min) / median`` of the finite tile values (NaN with fewer than two).
    """
    x, y, fwhm = (np.asarray(v, dtype=float) for v in (x, y, fwhm))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(fwhm)
    ty = np.clip((y[ok] * n_tiles / shape[0]).astype(int), 0, n_tiles - 1)
    tx = np.clip((x[ok] * n_tiles / shape[1]).astype(int), 0, n_tiles - 1)
    tiles = np.full((n_tiles, n_tiles), np.nan)
    for i in range(n_tiles):
        for j in range(n_tiles):
            values = fwhm[ok][(ty == i) & (tx == j)]
            if values.size >= min_stars:
                tiles[i, j] = np.median(values)
    finite = tiles[np.isfinite(tiles)]
    spread = float((finite.max() - finite.min()) / np.median(finite)) if finite.size >= 2 else float("nan")
    return tiles, spread


def pixel_scale_arcsec(wcs) -> float:
    """Geometric-mean pixel scale (arcsec/px) of a celestial WCS, NaN if it has none."""
    if wcs is None or not wcs.has_celestial:
        return float("nan")
    scales = proj_plane_pixel_scales(wcs.celestial)
    return float(np.sqrt(scales[0] * scales[1]) * 3600.0)


def characterize_image(
    planes: ImagePlanes,
    *,
    box_size: int = 64,
    filter_size: int = 3,
    snr_min: float = 30.0,
    max_stars: int = 300,
    stamp_size: int | None = None,
) -> ImageQuality:
    """Background, stars, PSF, seeing and depth of a calibrated image.

    Parameters
    ----------
    planes : ImagePlanes
        Calibrated image (e-, sky not subtracted), variance, mask, header
        with a TAN WCS.
    box_size, filter_size : int
        Passed to :func:`~dagster_project.science.background.estimate_background`.
    snr_min, max_stars : float, int
        Passed to :func:`find_stars`.
    stamp_size : int, optional
        Passed to :func:`estimate_psf`.

    Returns
    -------
    ImageQuality

    Raises
    ------
    PSFError
        Too few stars for a PSF.

    Examples
    --------
    Stars of FWHM 3 px on a sky of 500 e- with pixels of 0.6 arcsec:

    >>> from dagster_project.science.astrometry import nominal_wcs_header
    >>> from dagster_project.science.masks import empty_mask
    >>> from dagster_project.science.psf_models import render_point_sources
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[15:100:20, 15:100:20] + rng.uniform(-0.5, 0.5, (2, 5, 5))
    >>> model = render_point_sources((110, 110), xx.ravel(), yy.ravel(), np.full(25, 2e4), fwhm=3.0) + 500.0
    >>> variance = (model + 25.0).astype(np.float32)
    >>> data = (model + rng.normal(size=model.shape) * np.sqrt(variance)).astype(np.float32)
    >>> header = nominal_wcs_header(150.0, 2.0, 0.6, (55.5, 55.5))
    >>> quality = characterize_image(ImagePlanes(data, variance, empty_mask(data.shape), header), box_size=32)
    >>> quality.n_stars, round(quality.psf.fwhm_px, 1), round(quality.pixel_scale_arcsec, 3)
    (25, 3.0, 0.6)
    >>> round(quality.seeing_arcsec, 1), round(quality.background.median_rms)
    (1.8, 26)
    """
    background = estimate_background(
        planes.data, planes.mask, box_size=box_size, filter_size=filter_size, rms_map=False
    )
    image = planes.data - background.background
    stars = find_stars(image, planes.variance, planes.mask, snr_min=snr_min, max_stars=max_stars)
    psf = estimate_psf(image, planes.variance, planes.mask, stars, stamp_size)
    scale = pixel_scale_arcsec(planes.wcs)
    return ImageQuality(
        background=background,
        psf=psf,
        stars=stars,
        n_stars=len(stars),
        pixel_scale_arcsec=scale,
        seeing_arcsec=psf.fwhm_px * scale,
        depth_5sigma_e=5.0 * background.median_rms / float(np.sqrt(np.sum(psf.stamp**2))),
    )
