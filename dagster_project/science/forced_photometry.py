"""Forced PSF photometry at a fixed sky position on a ZOGY difference image."""

import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy.wcs import WCS

from dagster_project.science.masks import MaskBit

__all__ = ["ForcedPhotometry", "forced_photometry"]


@dataclass(frozen=True)
class ForcedPhotometry:
    """PSF-fit flux of a point source at a fixed position, from the ZOGY flux image.

    A target on masked pixels (saturated, bad column, outside the reference's
    overlap...) is a legitimate outcome, not an error: it is returned with
    ``measured`` False, the reason in ``flag``, and no flux, error, S/N or magnitudes.

    Attributes
    ----------
    x, y : float
        0-based pixel position of the target on the new image's grid.
    flux, flux_err : float or None
        Difference flux (new minus scaled reference) and its 1σ error, in new-image electrons.
    snr : float or None
        ``flux / flux_err``.
    detected : bool
        ``snr >= detection_snr`` (False when not measured).
    mag, mag_err : float or None
        Instrumental magnitude ``-2.5 log10(flux / exptime)`` (e-/s) when detected.
    limit_mag : float or None
        ``detection_snr``-sigma upper-limit magnitude from ``flux_err`` (e-/s).
    measured : bool
        False when the target falls on masked pixels: nothing could be measured.
    flag : str or None
        Why it was not measured.
    mask_flags : tuple of str
        Names of the mask bits set on the four pixels the interpolation uses
        (when a mask was given), e.g. ``("COSMIC_RAY",)``; measured or not.
    """

    x: float
    y: float
    flux: float | None
    flux_err: float | None
    snr: float | None
    detected: bool
    mag: float | None
    mag_err: float | None
    limit_mag: float | None
    measured: bool = True
    flag: str | None = None
    mask_flags: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def forced_photometry(flux_image: np.ndarray, flux_err_image: np.ndarray, wcs: WCS, ra_deg: float, dec_deg: float,
                      exposure_time: float, detection_snr: float = 5.0,
                      mask: np.ndarray | None = None) -> ForcedPhotometry:
    """Read the PSF-photometry flux at the target's position (bilinear interpolation).

    ZOGY's flux image already holds, at every pixel, the optimal PSF-fit flux of a
    point source centred there, so forced photometry is an interpolation, not a fit.
    Where that flux or its error is not finite (masked pixels) the result is
    ``measured=False`` with the reason in ``flag``; ``mask`` (the difference's
    MASK plane) names the mask bits there.

    Parameters
    ----------
    flux_image, flux_err_image : ndarray
        ZOGY's ``flux`` and ``flux_err`` maps (new-image e-).
    wcs : astropy.wcs.WCS
        WCS of the new image's grid.
    ra_deg, dec_deg : float
        Target position.
    exposure_time : float
        Seconds, for the magnitudes in e-/s (<= 0: fluxes taken as rates).
    detection_snr : float
        S/N of a detection and of the upper limit.
    mask : ndarray of uint16, optional
        The difference's mask, to name the bits at the target.

    Returns
    -------
    ForcedPhotometry

    Raises
    ------
    ValueError
        The target falls outside the image.

    Examples
    --------
    >>> from dagster_project.science.astrometry import nominal_wcs_header
    >>> wcs = WCS(nominal_wcs_header(150.0, 2.0, 0.6, (16.5, 16.5)))
    >>> flux, flux_err = np.full((32, 32), 500.0), np.full((32, 32), 50.0)
    >>> phot = forced_photometry(flux, flux_err, wcs, 150.0, 2.0, exposure_time=60.0)
    >>> round(phot.x, 6), round(phot.y, 6), phot.snr, phot.detected, round(phot.mag, 3), round(phot.limit_mag, 3)
    (15.5, 15.5, 10.0, True, -2.302, -1.549)
    """
    x, y = (float(v) for v in wcs.world_to_pixel_values(ra_deg, dec_deg))
    ny, nx = flux_image.shape
    if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
        raise ValueError(f"target (RA {ra_deg:.5f}, Dec {dec_deg:.5f}) is outside the image at x={x:.1f}, y={y:.1f}")
    flux, flux_err = (_bilinear(image, x, y) for image in (flux_image, flux_err_image))
    mask_flags = _mask_flags(mask, x, y) if mask is not None else ()
    if not (math.isfinite(flux) and math.isfinite(flux_err) and flux_err > 0):
        why = f" ({', '.join(mask_flags)})" if mask_flags else ""
        return ForcedPhotometry(x, y, None, None, None, False, None, None, None, measured=False,
                                flag=f"target at x={x:.1f}, y={y:.1f} falls on masked pixels{why}",
                                mask_flags=mask_flags)
    snr = flux / flux_err
    detected = snr >= detection_snr
    rate = exposure_time if exposure_time > 0 else 1.0
    mag = -2.5 * math.log10(flux / rate) if detected else None
    mag_err = 2.5 / math.log(10) / snr if detected else None
    limit_mag = -2.5 * math.log10(detection_snr * flux_err / rate)
    return ForcedPhotometry(x, y, flux, flux_err, snr, detected, mag, mag_err, limit_mag, mask_flags=mask_flags)


def _patch(image: np.ndarray, x: float, y: float) -> tuple[np.ndarray, float, float]:
    """The 2x2 pixels around (x, y) and the fractional offsets into them."""
    x0, y0 = min(int(x), image.shape[1] - 2), min(int(y), image.shape[0] - 2)
    return image[y0:y0 + 2, x0:x0 + 2], x - x0, y - y0


def _mask_flags(mask: np.ndarray, x: float, y: float) -> tuple[str, ...]:
    bits = int(np.bitwise_or.reduce(_patch(mask, x, y)[0].astype(np.int64), axis=None))
    return tuple(bit.name for bit in MaskBit if bits & bit)


def _bilinear(image: np.ndarray, x: float, y: float) -> float:
    patch, fx, fy = _patch(image, x, y)
    patch = patch.astype(float)
    return float(patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy)
                 + patch[1, 0] * (1 - fx) * fy + patch[1, 1] * fx * fy)
