"""Forced PSF photometry at a fixed sky position on a ZOGY difference image."""

import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy.wcs import WCS


@dataclass(frozen=True)
class ForcedPhotometry:
    """PSF-fit flux of a point source at a fixed position, from the ZOGY flux image.

    Attributes
    ----------
    x, y : float
        0-based pixel position of the target on the new image's grid.
    flux, flux_err : float
        Difference flux (new minus scaled reference) and its 1σ error, in new-image electrons.
    snr : float
        ``flux / flux_err``.
    detected : bool
        ``snr >= detection_snr``.
    mag, mag_err : float or None
        Instrumental magnitude ``-2.5 log10(flux / exptime)`` (e-/s) when detected.
    limit_mag : float
        ``detection_snr``-sigma upper-limit magnitude from ``flux_err`` (e-/s).
    """

    x: float
    y: float
    flux: float
    flux_err: float
    snr: float
    detected: bool
    mag: float | None
    mag_err: float | None
    limit_mag: float

    def as_dict(self) -> dict:
        return asdict(self)


def forced_photometry(flux_image: np.ndarray, flux_err_image: np.ndarray, wcs: WCS, ra_deg: float, dec_deg: float,
                      exposure_time: float, detection_snr: float = 5.0) -> ForcedPhotometry:
    """Read the PSF-photometry flux at the target's position (bilinear interpolation).

    ZOGY's flux image already holds, at every pixel, the optimal PSF-fit flux of a
    point source centred there, so forced photometry is an interpolation, not a fit.

    Raises
    ------
    ValueError
        The target falls outside the image or on masked (NaN) pixels.
    """
    x, y = (float(v) for v in wcs.world_to_pixel_values(ra_deg, dec_deg))
    ny, nx = flux_image.shape
    if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
        raise ValueError(f"target (RA {ra_deg:.5f}, Dec {dec_deg:.5f}) is outside the image at x={x:.1f}, y={y:.1f}")
    flux, flux_err = (_bilinear(image, x, y) for image in (flux_image, flux_err_image))
    if not (math.isfinite(flux) and math.isfinite(flux_err) and flux_err > 0):
        raise ValueError(f"target at x={x:.1f}, y={y:.1f} falls on masked pixels")
    snr = flux / flux_err
    detected = snr >= detection_snr
    rate = exposure_time if exposure_time > 0 else 1.0
    mag = -2.5 * math.log10(flux / rate) if detected else None
    mag_err = 2.5 / math.log(10) / snr if detected else None
    limit_mag = -2.5 * math.log10(detection_snr * flux_err / rate)
    return ForcedPhotometry(x, y, flux, flux_err, snr, detected, mag, mag_err, limit_mag)


def _bilinear(image: np.ndarray, x: float, y: float) -> float:
    x0, y0 = min(int(x), image.shape[1] - 2), min(int(y), image.shape[0] - 2)
    fx, fy = x - x0, y - y0
    patch = image[y0:y0 + 2, x0:x0 + 2].astype(float)
    return float(patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy)
                 + patch[1, 0] * (1 - fx) * fy + patch[1, 1] * fx * fy)
