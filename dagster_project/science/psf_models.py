"""Analytic PSF profiles and point-source rendering.

Used by the simulated telescope, by tests that need a known answer, and as the
fitted model of :mod:`dagster_project.science.psf`. Pixel coordinates are
0-based; a source at ``(x, y) = (10.0, 5.0)`` is centred on pixel ``[5, 10]``.
"""

import numpy as np

#: Sub-pixel sampling used to integrate a profile over each pixel's area.
DEFAULT_OVERSAMPLE = 3


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width alpha (pixels) for a given FWHM (pixels) and beta."""
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
    normalised to sum to 1 over the stamp.
    """
    if size % 2 == 0:
        raise ValueError(f"PSF stamp size must be odd, got {size}")
    half = size // 2
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    grid = (np.arange(size) - half)[:, None] + sub[None, :]
    coords = grid.ravel()
    dy, dx = np.meshgrid(coords - offset[1], coords - offset[0], indexing="ij")
    fine = moffat_profile(dx, dy, fwhm, beta, ellipticity, theta_deg)
    stamp = fine.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return stamp / stamp.sum()


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
        x0, y0 = cx - half, cy - half
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1, sy1 = stamp_size - max(0, x0 + stamp_size - nx), stamp_size - max(0, y0 + stamp_size - ny)
        image[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += stamp[sy0:sy1, sx0:sx1]
    return image
