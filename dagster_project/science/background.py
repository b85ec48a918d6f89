"""Sky background and background-noise maps.

The algorithm is that of :class:`photutils.background.Background2D` with
``SigmaClip(sigma=3, maxiters=10)``, ``SExtractorBackground`` and
``StdBackgroundRMS``: on a mesh of ``box_size`` boxes the unmasked pixels of
each box are sigma-clipped about their median, the background is the
SExtractor mode estimator (``2.5 median - 1.5 mean``; the mean if the
standard deviation is 0, the median when ``|mean - median| >= 0.3 std``) and
the noise the clipped standard deviation; boxes with too few pixels left are
filled by inverse-distance weighting of the others, the low-resolution maps
are median filtered over ``filter_size`` boxes (ignoring NaN beyond the
edges) and interpolated back to full resolution with a bicubic spline.

It is computed here with whole-mesh array operations (:func:`mesh_statistics`,
:func:`upsample_mesh`) instead of photutils' per-box NumPy calls and
4-million-point spline evaluation: 0.15 s of CPU (one row of boxes at a time,
in threads) instead of 0.6 s for a 2048x2048 image, with the same meshes to
float32 round-off (tested against photutils).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from photutils.utils import ShepardIDWInterpolator
from scipy import ndimage

from .parallel import run_threads

__all__ = ["CLIP_MAXITERS", "CLIP_SIGMA", "BackgroundMaps", "estimate_background", "mesh_statistics", "upsample_mesh"]

#: Sigma-clipping of the box pixels: threshold (standard deviations) and iterations.
CLIP_SIGMA = 3.0
CLIP_MAXITERS = 10


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


def _boxes(image: np.ndarray, box: tuple[int, int], fill) -> np.ndarray:
    """``image`` padded with ``fill`` to whole boxes and reshaped to (n_boxes_y, n_boxes_x, box pixels)."""
    ny, nx = image.shape
    my, mx = -(-ny // box[0]), -(-nx // box[1])
    padded = np.full((my * box[0], mx * box[1]), fill, dtype=image.dtype)
    padded[:ny, :nx] = image
    return padded.reshape(my, box[0], mx, box[1]).transpose(0, 2, 1, 3).reshape(my, mx, box[0] * box[1])


def mesh_statistics(
    data: np.ndarray, bad: np.ndarray, box: tuple[int, int], exclude_percentile: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped SExtractor background and standard deviation of every box.

    The pixels of each box are sorted once; a sigma-clipping iteration then
    only narrows each box's range of kept sorted values (its median is the
    middle of the range, its mean and standard deviation come from
    cumulative sums), so all boxes are clipped together in a few vectorised
    steps. Boxes at the right and top edges are partial (padded with masked
    pixels). Each row of boxes is clipped on its own, the rows in threads
    (:mod:`~dagster_project.science.parallel`; NumPy's sorts and sums release
    the GIL), where their arrays stay in cache.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Image (e.g. e-).
    bad : ndarray of bool
        Pixels to ignore (masked or non-finite).
    box : (int, int)
        Box size (px) along y and x.
    exclude_percentile : float
        Boxes where more than this percentage of a full box's pixels is
        masked or clipped are NaN.

    Returns
    -------
    background, rms : ndarray, float64, shape (n_boxes_y, n_boxes_x)
        NaN for excluded boxes.
    """
    rows = [slice(start, start + box[0]) for start in range(0, data.shape[0], box[0])]
    strips = run_threads(lambda r: _box_row_statistics(data[r], bad[r], box, exclude_percentile), rows)
    return np.concatenate([b for b, _ in strips]), np.concatenate([r for _, r in strips])


def _box_row_statistics(data: np.ndarray, bad: np.ndarray, box: tuple[int, int],
                        exclude_percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mesh_statistics` of one row of boxes (``data`` at most ``box[0]`` rows high): (1, n_boxes_x) each."""
    values = _boxes(np.where(bad, np.nan, data).astype(np.float32), box, np.nan)
    mesh_shape = values.shape[:2]
    values = np.sort(values.reshape(-1, values.shape[-1]), axis=1)  # NaN sort last
    n_box, n_pix = values.shape
    rows = np.arange(n_box)
    lo = np.zeros(n_box, dtype=np.int64)
    hi = np.count_nonzero(np.isfinite(values), axis=1)
    # Cumulative sums about each box's first value (less cancellation in the variance).
    shift = np.nan_to_num(values[:, :1].astype(np.float64))
    centred = np.nan_to_num(values - shift)
    cs1 = np.zeros((n_box, n_pix + 1))
    cs2 = np.zeros((n_box, n_pix + 1))
    np.cumsum(centred, axis=1, out=cs1[:, 1:])
    np.cumsum(centred**2, axis=1, out=cs2[:, 1:])
    # Boxes placed one after another on one increasing axis, so one searchsorted serves all.
    span = float(np.nanmax(centred)) + 1.0 if np.isfinite(values).any() else 1.0
    flat = (np.where(np.isfinite(values), centred, span) + (2.0 * span) * rows[:, None]).ravel()

    def stats(lo, hi):
        n = np.maximum(hi - lo, 1)
        mid_lo = np.clip(lo + (n - 1) // 2, 0, n_pix - 1)
        mid_hi = np.clip(lo + n // 2, 0, n_pix - 1)
        median = 0.5 * (centred[rows, mid_lo] + centred[rows, mid_hi])
        mean = (cs1[rows, hi] - cs1[rows, lo]) / n
        var = np.maximum((cs2[rows, hi] - cs2[rows, lo]) / n - mean**2, 0.0)
        return median, mean, np.sqrt(var)

    for _ in range(CLIP_MAXITERS):
        median, _, std = stats(lo, hi)
        offset = (2.0 * span) * rows
        new_lo = np.maximum(lo, np.searchsorted(flat, median - CLIP_SIGMA * std + offset, side="left") - rows * n_pix)
        new_hi = np.minimum(hi, np.searchsorted(flat, median + CLIP_SIGMA * std + offset, side="right") - rows * n_pix)
        new_hi = np.maximum(new_hi, new_lo)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    median, mean, std = stats(lo, hi)
    background = np.where(std == 0, mean, np.where(np.abs(mean - median) >= 0.3 * std, median,
                                                   2.5 * median - 1.5 * mean))
    excluded = (hi - lo) <= (1.0 - exclude_percentile / 100.0) * box[0] * box[1]
    background = np.where(excluded, np.nan, background + shift[:, 0])
    std = np.where(excluded, np.nan, std)
    return background.reshape(mesh_shape), std.reshape(mesh_shape)


def _fill_and_filter(mesh: np.ndarray, filter_size: int) -> np.ndarray:
    """NaN boxes filled by inverse-distance weighting (10 nearest, power 1), then a NaN-aware median filter."""
    missing = np.isnan(mesh)
    if missing.any():
        interpolator = ShepardIDWInterpolator(np.argwhere(~missing), mesh[~missing])
        mesh = mesh.copy()
        mesh[missing] = interpolator(np.argwhere(missing), n_neighbors=10, power=1.0)
    if filter_size <= 1:
        return mesh
    h = filter_size // 2
    padded = np.pad(mesh, h, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (filter_size, filter_size))
    return np.nanmedian(windows.reshape(*mesh.shape, -1), axis=-1)


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

    Examples
    --------
    A sky rising from 100 to 125 e- across the frame, with noise of 5 e-:

    >>> sky = 100.0 + 0.2 * np.mgrid[:128, :128][1]
    >>> data = sky + np.random.default_rng(0).normal(0.0, 5.0, sky.shape)
    >>> bkg = estimate_background(data, box_size=32)
    >>> round(bkg.median_background), round(bkg.median_rms, 1), bkg.rms.shape
    (113, 5.2, (128, 128))
    >>> bool(np.median(np.abs(bkg.background - sky)) < 2.0)  # the gradient is followed
    True
    """
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {data.shape}")
    if box_size < 4 or filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"need box_size >= 4 and an odd filter_size >= 1, got {box_size}, {filter_size}")
    bad = ~np.isfinite(data)
    if mask is not None:
        if np.shape(mask) != data.shape:
            raise ValueError(f"mask shape {np.shape(mask)} differs from data shape {data.shape}")
        bad |= np.asarray(mask) != 0
    if bad.all():
        raise ValueError("every pixel is masked or non-finite: no background can be estimated")
    box = (min(box_size, data.shape[0]), min(box_size, data.shape[1]))
    background, rms = mesh_statistics(data, bad, box, exclude_percentile)
    if np.isnan(background).all():
        raise ValueError(f"every {box[0]}x{box[1]} box is more than {exclude_percentile}% masked or clipped: "
                         "no background can be estimated")
    background = _fill_and_filter(background, filter_size)
    rms = _fill_and_filter(rms, filter_size)
    return BackgroundMaps(
        background=upsample_mesh(background, box, data.shape),
        rms=upsample_mesh(rms, box, data.shape) if rms_map else None,
        median_background=float(np.median(background)),
        median_rms=float(np.median(rms)),
    )
