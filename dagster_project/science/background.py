"""Sky background and background-noise maps.

The background is estimated on a mesh of ``box_size`` boxes with
:class:`photutils.background.Background2D`: in each box the pixels are
sigma-clipped (3 sigma) and the background is the SExtractor mode estimator
(``2.5 median - 1.5 mean``, falling back to the median in skewed boxes), the
noise the clipped standard deviation; the low-resolution maps are median
filtered over ``filter_size`` boxes and interpolated back to full resolution.
"""

from dataclasses import dataclass

import numpy as np
from astropy.stats import SigmaClip
from photutils.background import Background2D, SExtractorBackground, StdBackgroundRMS


@dataclass
class BackgroundMaps:
    """Background level and background noise of an image.

    Attributes
    ----------
    background : ndarray, float32, shape (ny, nx)
        Sky level in the units of the input image (e- for calibrated images).
    rms : ndarray, float32, shape (ny, nx), or None
        Standard deviation of the sky noise per pixel, same units (None when
        not requested: interpolating it costs as much as the background).
    median_background : float
        Median of the (filtered) low-resolution background mesh.
    median_rms : float
        Median of the low-resolution noise mesh: the scalar "sigma" of the
        image's background noise.
    """

    background: np.ndarray
    rms: np.ndarray | None
    median_background: float
    median_rms: float


def estimate_background(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    box_size: int = 64,
    filter_size: int = 3,
    exclude_percentile: float = 25.0,
    rms_map: bool = True,
) -> BackgroundMaps:
    """Estimate the sky background and its noise with a sigma-clipped mesh.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Image, e.g. in electrons. Non-finite pixels are ignored.
    mask : ndarray, optional
        Pixels to ignore: any non-zero value (a boolean mask or a
        :class:`~dagster_project.science.masks.MaskBit` field).
    box_size : int
        Side of the mesh boxes in pixels; boxes at the right and top edges may
        be smaller. Should be several times the largest source.
    filter_size : int
        Size (in boxes) of the median filter applied to the low-resolution map.
    exclude_percentile : float
        Boxes with more than this percentage of masked pixels are not used
        directly but filled from their neighbours.
    rms_map : bool
        Also interpolate the full-resolution noise map.

    Returns
    -------
    BackgroundMaps

    Raises
    ------
    ValueError
        If ``data`` is not 2-D, ``mask`` has another shape, or no box has
        enough unmasked pixels.
    """
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {data.shape}")
    if box_size < 4 or filter_size < 1:
        raise ValueError(f"need box_size >= 4 and filter_size >= 1, got {box_size}, {filter_size}")
    bad = ~np.isfinite(data)
    if mask is not None:
        if np.shape(mask) != data.shape:
            raise ValueError(f"mask shape {np.shape(mask)} differs from data shape {data.shape}")
        bad |= np.asarray(mask) != 0
    if bad.all():
        raise ValueError("every pixel is masked or non-finite: no background can be estimated")
    box = (min(box_size, data.shape[0]), min(box_size, data.shape[1]))
    bkg = Background2D(
        data,
        box,
        mask=bad,
        filter_size=(filter_size, filter_size),
        sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
        bkg_estimator=SExtractorBackground(),
        bkg_rms_estimator=StdBackgroundRMS(),
        exclude_percentile=exclude_percentile,
    )
    return BackgroundMaps(
        background=np.asarray(bkg.background, dtype=np.float32),
        rms=np.asarray(bkg.background_rms, dtype=np.float32) if rms_map else None,
        median_background=float(bkg.background_median),
        median_rms=float(bkg.background_rms_median),
    )
