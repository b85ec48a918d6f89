"""Sky background and background-noise maps.

The background is estimated on a mesh of ``box_size`` boxes with
:class:`photutils.background.Background2D`: in each box the pixels are
sigma-clipped (3 sigma) and the background is the SExtractor mode estimator
(``2.5 median - 1.5 mean``, falling back to the median in skewed boxes), the
noise the clipped standard deviation; the low-resolution maps are median
filtered over ``filter_size`` boxes and interpolated back to full resolution
with a bicubic spline (:func:`upsample_mesh`).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from astropy.stats import SigmaClip
from photutils.background import Background2D, SExtractorBackground, StdBackgroundRMS
from scipy import ndimage


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


@lru_cache(maxsize=16)
def _spline_weights(n_mesh: int, box: int, n_out: int) -> np.ndarray:
    """Matrix ``W`` (n_out, n_mesh) with ``W @ v`` the cubic-spline zoom of a mesh row ``v`` by ``box``.

    Spline zooming is linear, so the weights are the zooms of the unit vectors;
    the samples are box centres (``grid_mode=True``) and the mesh is reflected
    beyond its ends, as photutils' ``Background2D`` interpolates.
    """
    unit = np.eye(n_mesh)
    columns = [ndimage.zoom(unit[j], box, order=3, mode="reflect", grid_mode=True) for j in range(n_mesh)]
    weights = np.stack(columns, axis=1)[:n_out].astype(np.float32)
    weights.setflags(write=False)
    return weights


def upsample_mesh(mesh: np.ndarray, box_size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Bicubic-spline interpolation of a low-resolution mesh to a full-resolution image.

    Identical (to float32 round-off) to ``scipy.ndimage.zoom(mesh, box_size,
    order=3, mode='reflect', grid_mode=True)`` cropped to ``shape`` and
    clipped to the mesh's range, which is what photutils does, but computed
    as ``W_y @ mesh @ W_x.T``: the tensor-product spline is separable, so two
    small matrix products replace a 4-million-point spline evaluation
    (about 0.03 s instead of 0.4 s for 2048x2048).

    Parameters
    ----------
    mesh : ndarray, shape (my, mx)
        Finite mesh values (e.g. e- per pixel), one per box.
    box_size : (int, int)
        Box size (px) along y and x; ``my * box_size[0] >= shape[0]``.
    shape : (int, int)
        Output shape (ny, nx).

    Returns
    -------
    ndarray, float32, ``shape``
    """
    mesh = np.asarray(mesh, dtype=np.float32)
    w_y = _spline_weights(mesh.shape[0], int(box_size[0]), int(shape[0]))
    w_x = _spline_weights(mesh.shape[1], int(box_size[1]), int(shape[1]))
    image = (w_y @ mesh) @ w_x.T
    return np.clip(image, mesh.min(), mesh.max(), out=image)


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
    mesh = Background2D(
        data,
        box,
        mask=bad,
        filter_size=(filter_size, filter_size),
        sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
        bkg_estimator=SExtractorBackground(),
        bkg_rms_estimator=StdBackgroundRMS(),
        exclude_percentile=exclude_percentile,
    )
    # Only the meshes are taken from photutils: its own spline zoom costs ten times more.
    return BackgroundMaps(
        background=upsample_mesh(mesh.background_mesh, box, data.shape),
        rms=upsample_mesh(mesh.background_rms_mesh, box, data.shape) if rms_map else None,
        median_background=float(mesh.background_median),
        median_rms=float(mesh.background_rms_median),
    )
