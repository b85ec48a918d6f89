"""Relative flux scale of the reference with respect to the new image.

Convention (that of ZOGY, with the new image as the photometric unit):
``F_n = 1`` and ``ratio = F_r / F_n = (reference flux) / (new flux)`` of the
same non-variable star, both measured on the new image's pixel grid (the
reference already resampled). Pass ``ratio`` as ``flux_ratio_ref`` to
:func:`~dagster_project.science.zogy.zogy`; transient fluxes then come out in
new-image electrons.
"""

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table

from .images import ImagePlanes
from .psf import PSFModel, psf_photometry

__all__ = ["FluxScale", "FluxScaleError", "flux_ratio", "measure_matched_fluxes"]


class FluxScaleError(RuntimeError):
    """Too few usable stars to measure the flux ratio."""


@dataclass
class FluxScale:
    """Flux ratio of the reference to the new image.

    Attributes
    ----------
    ratio : float
        ``F_r / F_n`` with ``F_n = 1``: reference flux / new flux.
    ratio_err : float
        One-sigma uncertainty of ``ratio`` (formal error inflated by the
        square root of the reduced chi-square when that exceeds 1).
    n_stars : int
        Stars used in the final weighted mean.
    n_rejected : int
        Stars rejected as outliers (variables, blends, bad measurements).
    chi2_red : float
        Reduced chi-square of the used ratios about the mean.
    """

    ratio: float
    ratio_err: float
    n_stars: int
    n_rejected: int
    chi2_red: float


def measure_matched_fluxes(
    new: ImagePlanes, ref: ImagePlanes, psf_new: PSFModel, psf_ref: PSFModel, x, y
) -> Table:
    """PSF-fit fluxes of the same stars in the new and the resampled reference image.

    Both images must be background-subtracted and on the same pixel grid.
    Each flux is the optimal (inverse-variance, PSF-weighted) linear fit of
    ``flux * PSF + constant`` at the fixed position ``(x, y)``
    (:func:`~dagster_project.science.psf.psf_photometry`).

    Returns
    -------
    astropy.table.Table
        ``x``, ``y``, ``new_flux``, ``new_flux_err``, ``ref_flux``,
        ``ref_flux_err`` (e-; NaN where a cutout is more than half masked).
    """
    if new.shape != ref.shape:
        raise ValueError(f"new and reference must share a pixel grid, got {new.shape} and {ref.shape}")
    phot_new = psf_photometry(new.data, new.variance, new.mask, psf_new, x, y)
    phot_ref = psf_photometry(ref.data, ref.variance, ref.mask, psf_ref, x, y)
    return Table(
        {
            "x": np.asarray(x, dtype=float),
            "y": np.asarray(y, dtype=float),
            "new_flux": phot_new["flux"],
            "new_flux_err": phot_new["flux_err"],
            "ref_flux": phot_ref["flux"],
            "ref_flux_err": phot_ref["flux_err"],
        }
    )


def flux_ratio(
    new_flux,
    ref_flux,
    new_flux_err,
    ref_flux_err,
    *,
    sigma: float = 3.0,
    min_stars: int = 3,
    max_iter: int = 10,
) -> FluxScale:
    """Robust weighted mean of the per-star flux ratios ``ref_flux / new_flux``.

    Each ratio ``r_i`` gets the propagated error
    ``r_i * sqrt((e_n/f_n)^2 + (e_r/f_r)^2)``. Starting from the median,
    stars whose normalised residual ``(r_i - mean) / err_i`` exceeds ``sigma``
    times the MAD scatter of the normalised residuals (at least 1) are
    rejected and the inverse-variance weighted mean recomputed, until the
    set stops changing. Variable stars, blends and mismatches are thus
    rejected even when the formal errors are underestimated.

    Parameters
    ----------
    new_flux, ref_flux : array_like
        Fluxes of the same stars (e-), both positive for usable stars.
    new_flux_err, ref_flux_err : array_like
        Their one-sigma errors (> 0).
    sigma : float
        Clipping threshold.
    min_stars : int
        Fewer usable stars raise :class:`FluxScaleError`.
    max_iter : int
        Maximum number of clipping iterations.

    Returns
    -------
    FluxScale

    Raises
    ------
    FluxScaleError
        Fewer than ``min_stars`` usable or surviving stars.
    ValueError
        Inputs of different lengths.

    Examples
    --------
    Five stars 1.6 times brighter in the reference, and a variable one:

    >>> new = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5, 3e4])
    >>> ref = 1.6 * new * np.array([1, 1, 1, 1, 1, 2.0])
    >>> scale = flux_ratio(new, ref, 0.01 * new, 0.01 * ref)
    >>> round(scale.ratio, 6), scale.n_stars, scale.n_rejected
    (1.6, 5, 1)
    """
    fn, fr, en, er = (
        np.atleast_1d(np.asarray(v, dtype=float)) for v in (new_flux, ref_flux, new_flux_err, ref_flux_err)
    )
    if not fn.shape == fr.shape == en.shape == er.shape or fn.ndim != 1:
        raise ValueError("fluxes and errors must be 1-D arrays of one length")
    values = np.stack([fn, fr, en, er])
    usable = np.all(np.isfinite(values) & (values > 0), axis=0)
    n_usable = int(usable.sum())
    if n_usable < min_stars:
        raise FluxScaleError(f"only {n_usable} stars with positive fluxes and errors (need {min_stars})")
    ratio = fr[usable] / fn[usable]
    err = ratio * np.hypot(en[usable] / fn[usable], er[usable] / fr[usable])
    weight = 1.0 / err**2
    keep, centre = _clipped_mean(ratio, err, weight, sigma, min_stars, max_iter)
    n = int(keep.sum())
    chi2_red = float(np.sum(weight[keep] * (ratio[keep] - centre) ** 2) / max(n - 1, 1))
    ratio_err = float(np.sqrt(1.0 / np.sum(weight[keep]) * max(1.0, chi2_red)))
    return FluxScale(ratio=centre, ratio_err=ratio_err, n_stars=n, n_rejected=n_usable - n, chi2_red=chi2_red)


def _clipped_mean(ratio, err, weight, sigma: float, min_stars: int, max_iter: int) -> tuple[np.ndarray, float]:
    """The stars kept and their weighted mean ratio, clipped from the median until the set stops changing."""
    keep = np.ones(ratio.size, dtype=bool)
    centre = np.median(ratio)
    for _ in range(max_iter):
        z = (ratio - centre) / err
        scale = max(1.0, float(mad_std(z[keep])))
        new_keep = np.abs(z) <= sigma * scale
        if new_keep.sum() < min_stars:
            raise FluxScaleError(
                f"only {int(new_keep.sum())} of {ratio.size} stars agree on one flux ratio (need {min_stars})"
            )
        centre = float(np.sum(weight[new_keep] * ratio[new_keep]) / np.sum(weight[new_keep]))
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return keep, centre
