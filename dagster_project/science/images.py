"""The container every image product is passed around in."""

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = ["ImagePlanes"]


@dataclass
class ImagePlanes:
    """A calibrated image with its variance and mask planes.

    Attributes
    ----------
    data : ndarray, float32, shape (ny, nx)
        Pixel values in electrons (sky not subtracted unless stated in ``header``).
    variance : ndarray, float32
        Per-pixel variance in electrons^2.
    mask : ndarray, uint16
        :class:`~dagster_project.science.masks.MaskBit` bit field.
    header : astropy.io.fits.Header
        Primary header carrying the TAN WCS and observing keywords.
    """

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def wcs(self) -> WCS:
        return WCS(self.header)
