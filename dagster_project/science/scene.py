"""What lies under a transient candidate in the reference: the scene that says which kind of transient it is.

A candidate found in the difference image is classified by the light of the (resampled, background-subtracted)
reference around its position, as alert brokers sort ZTF and Rubin alerts before any spectrum:

* ``artifact``: the real/bogus score is below the operating threshold;
* ``transient``: no significant reference light within ``aperture_fwhm`` FWHM (hostless, or a host too faint
  to see);
* ``variable``: the reference light is point-like (its moment FWHM at most ``point_like`` times the PSF's) and
  centred on the candidate (within ``centred_fwhm`` FWHM): a star that changed brightness;
* ``supernova``: the reference light is extended (a galaxy), the candidate on it or offset from its centre;
* ``unknown``: point-like light off the candidate (a neighbouring star, a residual of mis-registration).

Measurements (:func:`reference_light`), in a disk of ``aperture_fwhm`` FWHM around the candidate: the
aperture flux (e-) and its S/N from the reference variance; within ``extent_fwhm`` FWHM, the centroid of the
light above 2 sigma a pixel (its offset from the candidate, px) and its moment FWHM ``2.3548 * sqrt((Ixx + Iyy) / 2)`` (px).
Positions are 0-based pixels (x, y) of the new grid, on which the reference has been resampled.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["DETECTION_TYPES", "ReferenceLight", "SceneRules", "classify_scene", "reference_light"]

#: the kinds :func:`classify_scene` returns (the catalog's DetectionType values)
DETECTION_TYPES = ("supernova", "variable", "transient", "unknown", "artifact")

#: FWHM of a Gaussian from its second moment: 2 sqrt(2 ln 2)
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: a pixel counts in the light's moments above this many sigma of its noise
_SIGNIFICANT = 2.0


@dataclass(frozen=True)
class SceneRules:
    """The thresholds of :func:`classify_scene` (in units of the PSF FWHM unless said)."""

    aperture_fwhm: float = 1.5
    extent_fwhm: float = 3.0
    min_snr: float = 5.0
    point_like: float = 1.3
    centred_fwhm: float = 0.5


@dataclass(frozen=True)
class ReferenceLight:
    """The reference's light around each candidate (arrays of one value per candidate)."""

    snr: np.ndarray
    offset_px: np.ndarray
    fwhm_px: np.ndarray


def reference_light(reference: np.ndarray, variance: np.ndarray, x, y, psf_fwhm_px: float,
                    rules: SceneRules = SceneRules()) -> ReferenceLight:
    """Aperture S/N, centroid offset and moment FWHM of the reference light around each position.

    Parameters
    ----------
    reference, variance : ndarray
        Background-subtracted reference (e-) on the new grid and its variance (e-²); NaN pixels are ignored.
    x, y : array_like
        0-based candidate positions (px).
    psf_fwhm_px : float
        FWHM of the reference PSF on that grid (px).

    Examples
    --------
    A Gaussian star of FWHM 3 px at (20, 20) in unit noise: bright, centred and point-like.

    >>> yy, xx = np.mgrid[:41, :41]
    >>> star = 5000 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / (2 * (3 / 2.3548) ** 2)) / (2 * np.pi * 1.274 ** 2)
    >>> light = reference_light(star, np.ones_like(star), [20.0], [20.0], 3.0)
    >>> bool(light.snr[0] > 100), round(float(light.offset_px[0]), 2), round(float(light.fwhm_px[0]), 1)
    (True, 0.0, 3.0)
    """
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    snr, offset, fwhm = (np.full(x.size, np.nan) for _ in range(3))
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        snr[i] = _aperture_snr(reference, variance, xi, yi, rules.aperture_fwhm * psf_fwhm_px)
        offset[i], fwhm[i] = _moments(reference, variance, xi, yi, rules.extent_fwhm * psf_fwhm_px)
    return ReferenceLight(snr, offset, fwhm)


def _disk(shape: tuple[int, int], x: float, y: float, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel coordinates (ys, xs) of the disk and a boolean of those inside the image."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[int(round(y)) - r:int(round(y)) + r + 1, int(round(x)) - r:int(round(x)) + r + 1]
    inside = ((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2) & (xx >= 0) & (yy >= 0) & (xx < shape[1]) & \
        (yy < shape[0])
    return yy[inside], xx[inside], inside


def _aperture_snr(reference: np.ndarray, variance: np.ndarray, x: float, y: float, radius: float) -> float:
    ys, xs, _ = _disk(reference.shape, x, y, radius)
    flux, var = reference[ys, xs], variance[ys, xs]
    good = np.isfinite(flux) & np.isfinite(var)
    total_var = float(np.sum(var[good]))
    return float(np.sum(flux[good]) / np.sqrt(total_var)) if total_var > 0 else np.nan


def _moments(reference: np.ndarray, variance: np.ndarray, x: float, y: float, radius: float) -> tuple[float, float]:
    """(offset of the light's centroid from (x, y), its moment FWHM), NaN without light: the pixels above
    ``_SIGNIFICANT`` sigma only, since the noise of the empty pixels far out would inflate the second moment."""
    ys, xs, _ = _disk(reference.shape, x, y, radius)
    flux = np.nan_to_num(reference[ys, xs])
    weight = np.where(flux > _SIGNIFICANT * np.sqrt(np.nan_to_num(variance[ys, xs], nan=np.inf)), flux, 0.0)
    total = float(weight.sum())
    if total <= 0:
        return np.nan, np.nan
    cx, cy = float(np.sum(weight * xs) / total), float(np.sum(weight * ys) / total)
    second = float(np.sum(weight * ((xs - cx) ** 2 + (ys - cy) ** 2)) / total) / 2.0
    return float(np.hypot(cx - x, cy - y)), _FWHM_PER_SIGMA * np.sqrt(second)


def classify_scene(score, threshold: float, light: ReferenceLight, psf_fwhm_px: float,
                   rules: SceneRules = SceneRules()) -> np.ndarray:
    """The detection type of each candidate (module notes) from its real/bogus score and its reference light.

    Examples
    --------
    >>> light = ReferenceLight(np.array([1.0, 80.0, 40.0, 60.0, 50.0]), np.array([np.nan, 0.2, 2.0, 4.0, 0.1]),
    ...                        np.array([np.nan, 3.1, 7.5, 3.0, 3.0]))
    >>> classify_scene([0.9, 0.9, 0.9, 0.9, 0.1], 0.5, light, 3.0).tolist()
    ['transient', 'variable', 'supernova', 'unknown', 'artifact']
    """
    score = np.atleast_1d(np.asarray(score, float))
    has_light = np.nan_to_num(light.snr) >= rules.min_snr
    point_like = np.nan_to_num(light.fwhm_px, nan=np.inf) <= rules.point_like * psf_fwhm_px
    centred = np.nan_to_num(light.offset_px, nan=np.inf) <= rules.centred_fwhm * psf_fwhm_px
    kinds = np.where(~has_light, "transient",
                     np.where(~point_like, "supernova", np.where(centred, "variable", "unknown")))
    return np.where(score < threshold, "artifact", kinds).astype(object)
