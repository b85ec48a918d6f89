"""Analytic PSF profiles and point-source rendering: the one Moffat renderer.

Used by the simulated telescope, by tests that need a known answer, and as the
fitted model of :mod:`dagster_project.science.psf`. Pixel coordinates are
0-based; a source at ``(x, y) = (10.0, 5.0)`` is centred on pixel ``[5, 10]``.

Every pixel-integrated Moffat of the project is rendered here:

* :func:`moffat_profile`: the surface brightness at given offsets;
* :func:`moffat_stamps`: unit-sum stamps on an odd grid, one per sub-pixel
  offset (batched); :func:`moffat_stamp` is one of them;
* :func:`pixel_integrated_moffat`: the same pixel integration at arbitrary
  pixel offsets (any shape, not renormalised), as the PSF fit needs;
* :func:`render_point_sources`: an image of point sources drawn with
  :func:`moffat_stamp`.

Each pixel is integrated by averaging the profile over ``oversample`` x
``oversample`` sub-pixel centres (:func:`_subpixel_offsets`).
"""

import numpy as np

__all__ = [
    "DEFAULT_OVERSAMPLE",
    "moffat_alpha",
    "moffat_profile",
    "moffat_stamp",
    "moffat_stamps",
    "pixel_integrated_moffat",
    "pixel_means",
    "render_point_sources",
    "subpixel_grid",
]

#: Sub-pixel sampling used to integrate a profile over each pixel's area.
DEFAULT_OVERSAMPLE = 3


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width alpha (pixels) for a given FWHM (pixels) and beta.

    Examples
    --------
    >>> round(float(moffat_alpha(3.0, 3.0)), 4)
    2.9422
    """
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_profile(
    dx: np.ndarray,
    dy: np.ndarray,
    fwhm: float,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta_deg: float = 0.0,
) -> np.ndarray:
    """Unit-flux elliptical Moffat surface brightness at offsets ``(dx, dy)``.

    Parameters
    ----------
    dx, dy : ndarray
        Offsets from the centre in pixels.
    fwhm : float
        Geometric-mean FWHM in pixels, ``sqrt(fwhm_major * fwhm_minor)``.
    beta : float
        Moffat power index (> 1).
    ellipticity : float
        ``1 - b/a`` (0 is round).
    theta_deg : float
        Position angle of the major axis, degrees counter-clockwise from +x.

    Returns
    -------
    ndarray
        Surface brightness per unit area; integrates to 1 over the plane.

    Examples
    --------
    Half the central value at half the FWHM:

    >>> centre, half = moffat_profile(np.array([0.0, 1.5]), np.zeros(2), fwhm=3.0)
    >>> round(float(half / centre), 6)
    0.5
    """
    if fwhm <= 0 or beta <= 1:
        raise ValueError(f"Moffat needs fwhm > 0 and beta > 1, got fwhm={fwhm}, beta={beta}")
    if not 0 <= ellipticity < 1:
        raise ValueError(f"ellipticity must be in [0, 1), got {ellipticity}")
    q = 1.0 - ellipticity
    alpha = moffat_alpha(fwhm, beta)
    a, b = alpha / np.sqrt(q), alpha * np.sqrt(q)
    t = np.deg2rad(theta_deg)
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    r2 = (u / a) ** 2 + (v / b) ** 2
    return (beta - 1.0) / (np.pi * a * b) * (1.0 + r2) ** (-beta)


def _subpixel_offsets(oversample: int) -> np.ndarray:
    """Centres of ``oversample`` sub-pixels relative to their pixel's centre, in (-0.5, 0.5)."""
    return (np.arange(oversample) + 0.5) / oversample - 0.5


def subpixel_grid(half: int, oversample: int) -> np.ndarray:
    """Sub-pixel centres across the ``2*half+1`` pixels of a stamp, pixel 0 at the middle (1-D, raveled)."""
    return ((np.arange(2 * half + 1) - half)[:, None] + _subpixel_offsets(oversample)[None, :]).ravel()


def pixel_means(fine: np.ndarray, oversample: int) -> np.ndarray:
    """Mean over sub-pixels of ``(n, size*o, size*o)`` samples, normalised to unit sum per stamp."""
    n, side = fine.shape[0], fine.shape[1] // oversample
    stamps = fine.reshape(n, side, oversample, side, oversample).mean(axis=(2, 4))
    return stamps / stamps.sum(axis=(1, 2), keepdims=True)


def moffat_stamps(
    half: int,
    dx: np.ndarray,
    dy: np.ndarray,
    fwhm: float,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta_deg: float = 0.0,
    oversample: int = DEFAULT_OVERSAMPLE,
) -> np.ndarray:
    """Pixel-integrated, unit-sum Moffat stamps, one per sub-pixel offset ``(dx[k], dy[k])``.

    Parameters
    ----------
    half : int
        Half-size: the stamps are ``2*half+1`` px on a side.
    dx, dy : array_like
        Offsets (px) of each profile's centre from the central pixel's centre.
    fwhm, beta, ellipticity, theta_deg : float
        Moffat parameters as in :func:`moffat_profile`.
    oversample : int
        Sub-pixels per pixel and axis of the integration.

    Returns
    -------
    ndarray, shape (n, 2*half+1, 2*half+1)
        Stamp ``k`` sums to 1 and equals
        ``moffat_stamp(2*half+1, fwhm, beta, ellipticity, theta_deg, (dx[k], dy[k]), oversample)``.

    Examples
    --------
    >>> stamps = moffat_stamps(4, [0.0, 0.3], [0.0, -0.2], fwhm=2.5)
    >>> stamps.shape, [round(float(s.sum()), 12) for s in stamps]
    ((2, 9, 9), [1.0, 1.0])
    >>> [tuple(int(i) for i in np.unravel_index(np.argmax(s), s.shape)) for s in stamps]
    [(4, 4), (4, 4)]
    """
    grid = subpixel_grid(half, oversample)
    dx, dy = np.atleast_1d(dx)[:, None, None], np.atleast_1d(dy)[:, None, None]
    fine = moffat_profile(grid[None, None, :] - dx, grid[None, :, None] - dy, fwhm, beta, ellipticity, theta_deg)
    return pixel_means(fine, oversample)


def moffat_stamp(
    size: int,
    fwhm: float,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta_deg: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
    oversample: int = DEFAULT_OVERSAMPLE,
) -> np.ndarray:
    """Pixel-integrated Moffat PSF on an odd ``size`` x ``size`` grid.

    The profile is centred on the central pixel plus ``offset = (dx, dy)``,
    integrated over each pixel by ``oversample``-fold sub-sampling, and
    normalised to sum to 1 over the stamp (one stamp of :func:`moffat_stamps`).

    Examples
    --------
    >>> stamp = moffat_stamp(15, fwhm=3.0)
    >>> stamp.shape, round(float(stamp.sum()), 12), bool(stamp[7, 7] == stamp.max())
    ((15, 15), 1.0, True)
    """
    if size % 2 == 0:
        raise ValueError(f"PSF stamp size must be odd, got {size}")
    return moffat_stamps(size // 2, offset[0], offset[1], fwhm, beta, ellipticity, theta_deg, oversample)[0]


def pixel_integrated_moffat(
    dx: np.ndarray,
    dy: np.ndarray,
    fwhm: float,
    beta: float,
    ellipticity: float,
    theta_deg: float,
    oversample: int = DEFAULT_OVERSAMPLE,
) -> np.ndarray:
    """Unit-flux elliptical Moffat integrated over the pixels centred at offsets ``(dx, dy)``.

    Same sub-sampling as :func:`moffat_stamp` but on arbitrary offset arrays
    (any shape) and not renormalised: what the PSF fit evaluates on its
    cutouts. Agrees with :func:`moffat_stamp` to round-off (the offsets are
    added in another order).

    Examples
    --------
    >>> offsets = np.arange(-7, 8)
    >>> dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    >>> model = pixel_integrated_moffat(dx, dy, 3.0, 3.0, 0.0, 0.0)
    >>> bool(np.allclose(model / model.sum(), moffat_stamp(15, 3.0), rtol=0, atol=1e-15))
    True
    """
    sub = _subpixel_offsets(oversample)
    sy, sx = np.meshgrid(sub, sub, indexing="ij")
    fine = moffat_profile(
        dx[..., None] + sx.ravel(), dy[..., None] + sy.ravel(), fwhm, beta, ellipticity, theta_deg
    )
    return fine.mean(axis=-1)


def render_point_sources(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fwhm: float,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta_deg: float = 0.0,
    stamp_size: int | None = None,
) -> np.ndarray:
    """Image of point sources of total ``flux`` each at 0-based ``(x, y)``.

    Each source is drawn with a pixel-integrated Moffat stamp of ``stamp_size``
    (default ``8 * fwhm`` rounded up to odd) clipped at the image edges; the
    flux outside the stamp (a fraction of a percent for beta >= 2.5) is dropped.

    Examples
    --------
    Two stars; the wings beyond the 21-px stamps (0.01 % of the flux) are dropped:

    >>> image = render_point_sources((32, 32), [10.0, 20.3], [12.0, 8.6], [1000.0, 500.0], fwhm=2.5)
    >>> round(float(image.sum()), 1), float(image[12, 10]) == float(image.max())
    (1499.9, True)
    """
    image = np.zeros(shape, dtype=np.float64)
    if stamp_size is None:
        stamp_size = int(np.ceil(8 * fwhm)) | 1
    half = stamp_size // 2
    ny, nx = shape
    for xi, yi, fi in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux)):
        cx, cy = int(np.round(xi)), int(np.round(yi))
        if cx + half < 0 or cy + half < 0 or cx - half >= nx or cy - half >= ny:
            continue
        stamp = fi * moffat_stamp(stamp_size, fwhm, beta, ellipticity, theta_deg, (xi - cx, yi - cy))
        _add_clipped(image, stamp, cx - half, cy - half)
    return image


def _add_clipped(image: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    """Add ``stamp`` to ``image`` with its corner at pixel ``(x0, y0)``, the part outside the image dropped."""
    ny, nx = image.shape
    size = stamp.shape[0]
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = size - max(0, x0 + size - nx), size - max(0, y0 + size - ny)
    image[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += stamp[sy0:sy1, sx0:sx1]
