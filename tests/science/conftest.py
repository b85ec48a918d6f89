"""Synthetic images with known answers for the science tests."""

from dataclasses import dataclass

import numpy as np
import pytest
from astropy.wcs import WCS

from dagster_project.science.images import ImagePlanes
from dagster_project.science.masks import empty_mask
from dagster_project.science.psf_models import render_point_sources


def make_tan_wcs(shape, ra=150.0, dec=2.0, scale_arcsec=0.6, rotation_deg=0.0) -> WCS:
    """North-up (east-left) TAN WCS rotated by ``rotation_deg``, reference pixel at the centre."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    t = np.deg2rad(rotation_deg)
    s = scale_arcsec / 3600.0
    wcs.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    return wcs


def affine_about_centre(shape, shift=(0.0, 0.0), rotation_deg=0.0, scale=1.0) -> np.ndarray:
    """3x3 matrix mapping reference pixels to new pixels: rotate/scale about the centre, then shift."""
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    t = np.deg2rad(rotation_deg)
    lin = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.array([cx, cy]) + np.asarray(shift) - lin @ np.array([cx, cy])
    return m


def wcs_after_affine(ref_wcs: WCS, matrix: np.ndarray, crpix_error=(0.0, 0.0)) -> WCS:
    """WCS of an image whose pixels are ``matrix`` @ reference pixels (exact for TAN), plus a crpix error."""
    new = WCS(naxis=2)
    new.wcs.ctype = list(ref_wcs.wcs.ctype)
    new.wcs.crval = ref_wcs.wcs.crval
    new.wcs.cd = ref_wcs.pixel_scale_matrix @ np.linalg.inv(matrix)[:2, :2]
    crpix0 = np.append(np.asarray(ref_wcs.wcs.crpix) - 1.0, 1.0)
    new.wcs.crpix = (matrix @ crpix0)[:2] + 1.0 + np.asarray(crpix_error)
    return new


def render_stars(shape, x, y, flux, fwhm) -> np.ndarray:
    """Moffat (beta 3) stars; ``fwhm`` (px) is a number, or a function of the star positions ``(x, y)``."""
    if not callable(fwhm):
        return render_point_sources(shape, x, y, flux, fwhm, beta=3.0)
    return sum(render_point_sources(shape, xi, yi, fi, wi, beta=3.0) for xi, yi, fi, wi in zip(x, y, flux, fwhm(x, y)))


def noisy_planes(model, sky, wcs, rng, read_noise=5.0) -> ImagePlanes:
    """Poisson-like Gaussian noise on ``model + sky`` with the exact variance plane."""
    variance = model + sky + read_noise**2
    data = model + sky + rng.normal(size=model.shape) * np.sqrt(variance)
    return ImagePlanes(
        data=data.astype(np.float32),
        variance=variance.astype(np.float32),
        mask=empty_mask(model.shape),
        header=wcs.to_header(),
    )


@dataclass
class SyntheticPair:
    new: ImagePlanes
    ref: ImagePlanes
    matrix: np.ndarray  # true reference pixel -> new pixel
    ref_x: np.ndarray  # star positions in the reference
    ref_y: np.ndarray
    flux: np.ndarray  # star fluxes in new-image e-
    flux_ratio: float  # reference flux / new flux
    transient_xy: tuple[float, float] | None
    transient_flux: float


def make_pair(
    shape=(512, 512),
    *,
    n_stars=150,
    fwhm_new=3.0,
    fwhm_ref=4.0,
    shift=(3.3, -2.7),
    rotation_deg=0.3,
    scale=1.0005,
    flux_ratio=1.6,
    sky_new=300.0,
    sky_ref=500.0,
    transient_xy=None,
    transient_flux=0.0,
    crpix_error=(0.8, -0.6),
    seed=0,
) -> SyntheticPair:
    """Reference and new image of one star field, related by a known affine transform.

    Stars are drawn uniformly on the reference grid (margin 10 px) with fluxes
    log-uniform in [1e3, 3e5] new-image e-; the reference gets ``flux_ratio``
    times more. The new image's WCS is the exact transform of the
    reference's plus ``crpix_error`` px, so the WCS first guess is off by ~1 px.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    ref_x = rng.uniform(10, nx - 10, n_stars)
    ref_y = rng.uniform(10, ny - 10, n_stars)
    flux = 10 ** rng.uniform(3.0, 5.5, n_stars)
    matrix = affine_about_centre(shape, shift, rotation_deg, scale)
    new_x = matrix[0, 0] * ref_x + matrix[0, 1] * ref_y + matrix[0, 2]
    new_y = matrix[1, 0] * ref_x + matrix[1, 1] * ref_y + matrix[1, 2]
    ref_wcs = make_tan_wcs(shape)
    new_wcs = wcs_after_affine(ref_wcs, matrix, crpix_error)
    new_model = render_stars(shape, new_x, new_y, flux, fwhm_new)
    if transient_xy is not None:
        tx, ty, tf = (np.atleast_1d(v) for v in (*transient_xy, transient_flux))
        new_model += render_stars(shape, tx, ty, tf, fwhm_new)
    ref_model = render_point_sources(shape, ref_x, ref_y, flux * flux_ratio / scale**2, fwhm_ref, beta=3.0)
    return SyntheticPair(
        new=noisy_planes(new_model, sky_new, new_wcs, rng),
        ref=noisy_planes(ref_model, sky_ref, ref_wcs, rng),
        matrix=matrix,
        ref_x=ref_x,
        ref_y=ref_y,
        flux=flux,
        flux_ratio=flux_ratio,
        transient_xy=transient_xy,
        transient_flux=transient_flux,
    )


@pytest.fixture(scope="session")
def synthetic_pair() -> SyntheticPair:
    return make_pair(transient_xy=(300.4, 200.7), transient_flux=2.0e4)
