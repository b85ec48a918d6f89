"""New-minus-reference difference imaging: the one entry point of the Dagster asset.

Steps of :func:`difference_images` (each timed in ``DifferenceResult.timings``):

1. ``background``: sky maps of both images; both are background-subtracted.
2. ``stars``: bright isolated stars in each image.
3. ``psf``: Moffat PSF of each image on its own grid.
4. ``positions``: PSF-fit positions of those stars.
5. ``registration``: affine map reference pixel -> new pixel (WCS guess,
   RANSAC; asterisms as fallback).
6. ``resample``: reference data, variance and mask onto the new grid (the
   new image is never resampled).
7. ``psf_ref_resampled``: PSF of the resampled reference, fitted at the
   matched stars (includes the rotation and the interpolation blur).
8. ``flux_scale``: F_r / F_n from PSF fluxes of the matched stars on the
   common grid.
9. ``zogy``: D, S, S_corr, flux images.
10. ``detection``: candidates in S_corr.

Failures raise :class:`~dagster_project.science.psf.PSFError`,
:class:`~dagster_project.science.registration.RegistrationError` or
:class:`~dagster_project.science.photometric_scaling.FluxScaleError`, whose
messages say which image and why.
"""

import time
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from .background import estimate_background
from .detection import detect_transients
from .images import ImagePlanes
from .photometric_scaling import FluxScale, flux_ratio, measure_matched_fluxes
from .psf import PSFError, PSFModel, detect_all_sources, estimate_psf, find_stars, psf_photometry
from .registration import Registration, register_images, resample_planes
from .zogy import ZogyResult, zogy


@dataclass
class DifferenceParams:
    """Tunable parameters of :func:`difference_images`.

    Attributes
    ----------
    threshold : float
        Detection threshold on ``|S_corr|`` (sigma).
    bkg_box_size, bkg_filter_size : int
        Background mesh box (px) and median-filter size (boxes).
    star_snr_min : float
        Minimum isophotal S/N of stars used for PSF, registration and flux scale.
    max_stars : int
        Stars kept per image (brightest).
    psf_stamp_size : int or None
        Odd PSF stamp side; None: ``8 * FWHM`` (>= 15 px).
    max_psf_stars, min_psf_stars : int
        Stars fitted for the PSF shape; fewer usable raise PSFError.
    match_radius_px, max_wcs_offset_px : float
        Registration pairing radius and largest WCS first-guess error (px).
    min_matches : int
        Fewer matched stars raise RegistrationError.
    max_registration_rms_px : float
        Larger residual RMS raises RegistrationError.
    interpolation_order : int
        Spline order used to resample the reference.
    astrometric_rms : (float, float) or None
        ``(sigma_x, sigma_y)`` (px) for ZOGY's astrometric variance; None uses
        the registration residual RMS per axis.
    min_flux_stars : int
        Fewer stars for the flux ratio raise FluxScaleError.
    max_masked_fraction : float
        Candidates more masked than this are dropped.
    fft_workers : int
        Threads for the FFTs (-1: all cores).
    """

    threshold: float = 5.0
    bkg_box_size: int = 64
    bkg_filter_size: int = 3
    star_snr_min: float = 50.0
    max_stars: int = 300
    psf_stamp_size: int | None = None
    max_psf_stars: int = 30
    min_psf_stars: int = 5
    match_radius_px: float = 2.0
    max_wcs_offset_px: float = 20.0
    min_matches: int = 6
    max_registration_rms_px: float = 0.3
    interpolation_order: int = 3
    astrometric_rms: tuple[float, float] | None = None
    min_flux_stars: int = 3
    max_masked_fraction: float = 0.5
    fft_workers: int = -1


@dataclass
class DifferenceResult:
    """Everything :func:`difference_images` produced.

    Attributes
    ----------
    zogy : ZogyResult
        D, P_D, S, S_corr, flux, flux_err and noise figures (new grid).
    candidates : astropy.table.Table
        Output of :func:`~dagster_project.science.detection.detect_transients`.
    psf_new : PSFModel
        PSF of the new image.
    psf_ref : PSFModel
        PSF of the reference AFTER resampling onto the new grid (used by ZOGY).
    registration : Registration
        Reference pixel -> new pixel transform.
    flux_scale : FluxScale
        ``ratio = F_r / F_n`` (reference flux / new flux, F_n = 1).
    ref_resampled : ImagePlanes
        Background-subtracted reference on the new grid (data, variance,
        mask with EDGE outside the overlap; header with the new WCS).
    mask : ndarray of uint16
        New mask OR resampled reference mask.
    quality : dict
        Scalar figures for the catalogue (see :func:`difference_images`).
    timings : dict
        Seconds spent per step.
    """

    zogy: ZogyResult
    candidates: Table
    psf_new: PSFModel
    psf_ref: PSFModel
    registration: Registration
    flux_scale: FluxScale
    ref_resampled: ImagePlanes
    mask: np.ndarray
    quality: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._t, 4)
        self._t = now


def _psf_for(label: str, image, variance, mask, stars, params: DifferenceParams) -> PSFModel:
    try:
        return estimate_psf(
            image, variance, mask, stars, params.psf_stamp_size,
            max_stars=params.max_psf_stars, min_stars=params.min_psf_stars,
        )
    except PSFError as exc:
        raise PSFError(f"{label}: {exc}") from exc


def difference_images(new: ImagePlanes, ref: ImagePlanes, params: DifferenceParams | None = None) -> DifferenceResult:
    """Register, PSF-match (ZOGY) and subtract ``ref`` from ``new``; detect transients.

    Parameters
    ----------
    new : ImagePlanes
        Calibrated new image (e-, sky included), variance, mask, TAN WCS.
    ref : ImagePlanes
        Calibrated reference image, any grid overlapping ``new``.
    params : DifferenceParams, optional

    Returns
    -------
    DifferenceResult
        ``quality`` keys: ``registration_rms_px``, ``registration_rms_x_px``,
        ``registration_rms_y_px``, ``registration_n_matched``,
        ``registration_method``, ``flux_ratio``, ``flux_ratio_err``,
        ``flux_ratio_n_stars``, ``flux_ratio_n_rejected``, ``fwhm_new_px``,
        ``fwhm_ref_px`` (resampled), ``fwhm_ref_native_px``,
        ``sigma_new``, ``sigma_ref`` (e-), ``scorr_std``, ``d_std``,
        ``depth_5sigma_e`` (median 5-sigma point-source flux of the
        difference, new-image e-), ``valid_fraction`` (of pixels with valid
        outputs), ``n_candidates``,
        ``n_positive``, ``n_negative``.

    Raises
    ------
    PSFError, RegistrationError, FluxScaleError
        With a message naming the image and the reason.
    ValueError
        Inconsistent input planes.
    """
    params = DifferenceParams() if params is None else params
    for label, planes in (("new", new), ("reference", ref)):
        shape = planes.data.shape
        if planes.data.ndim != 2 or planes.variance.shape != shape or planes.mask.shape != shape:
            raise ValueError(f"{label} image: data, variance and mask must be 2-D arrays of one shape")
    timer = _Timer()

    bkg_kw = dict(box_size=params.bkg_box_size, filter_size=params.bkg_filter_size, rms_map=False)
    bkg_new = estimate_background(new.data, new.mask, **bkg_kw)
    bkg_ref = estimate_background(ref.data, ref.mask, **bkg_kw)
    new_sub = (new.data - bkg_new.background).astype(np.float32)
    ref_sub = (ref.data - bkg_ref.background).astype(np.float32)
    timer.lap("background")

    star_kw = dict(snr_min=params.star_snr_min, max_stars=params.max_stars)
    stars_new = find_stars(new_sub, new.variance, new.mask, **star_kw)
    stars_ref = find_stars(ref_sub, ref.variance, ref.mask, **star_kw)
    timer.lap("stars")

    psf_new = _psf_for("new image", new_sub, new.variance, new.mask, stars_new, params)
    psf_ref_native = _psf_for("reference", ref_sub, ref.variance, ref.mask, stars_ref, params)
    timer.lap("psf")

    pos_new = psf_photometry(
        new_sub, new.variance, new.mask, psf_new, stars_new["x"], stars_new["y"], fit_positions=True
    )
    pos_ref = psf_photometry(
        ref_sub, ref.variance, ref.mask, psf_ref_native, stars_ref["x"], stars_ref["y"], fit_positions=True
    )
    pos_new = pos_new[np.isfinite(pos_new["flux"])]
    pos_ref = pos_ref[np.isfinite(pos_ref["flux"])]
    timer.lap("positions")

    registration = register_images(
        pos_new, pos_ref, new.wcs, ref.wcs,
        match_radius=params.match_radius_px, max_wcs_offset=params.max_wcs_offset_px,
        min_matches=params.min_matches, max_rms=params.max_registration_rms_px,
    )
    timer.lap("registration")

    ref_resampled = resample_planes(
        ImagePlanes(ref_sub, ref.variance, ref.mask, ref.header), registration, new.shape,
        new.wcs.to_header(relax=True), order=params.interpolation_order,
    )
    mask = new.mask | ref_resampled.mask
    timer.lap("resample")

    x_match = np.asarray(pos_new["x"])[registration.new_index]
    y_match = np.asarray(pos_new["y"])[registration.new_index]
    matched = Table(
        {"x": x_match, "y": y_match, "flux": np.asarray(pos_ref["flux"])[registration.ref_index],
         "fwhm": np.full(len(x_match), psf_ref_native.fwhm_px)}
    )
    psf_ref = _psf_for(
        "resampled reference", ref_resampled.data, ref_resampled.variance, ref_resampled.mask, matched, params
    )
    timer.lap("psf_ref_resampled")

    new_planes = ImagePlanes(new_sub, new.variance, new.mask, new.header)
    fluxes = measure_matched_fluxes(new_planes, ref_resampled, psf_new, psf_ref, x_match, y_match)
    flux_scale = flux_ratio(
        fluxes["new_flux"], fluxes["ref_flux"], fluxes["new_flux_err"], fluxes["ref_flux_err"],
        min_stars=params.min_flux_stars,
    )
    timer.lap("flux_scale")

    astrometric = params.astrometric_rms or (registration.rms_x, registration.rms_y)
    result = zogy(
        new_sub, ref_resampled.data, psf_new.stamp, psf_ref.stamp,
        var_new=new.variance, var_ref=ref_resampled.variance,
        # The native-grid noise of the reference: resampling lowers its per-pixel noise but not the
        # PSF-integrated noise that the ZOGY denominator weighs (V_S uses the resampled variance).
        sigma_new=bkg_new.median_rms, sigma_ref=bkg_ref.median_rms,
        flux_ratio_ref=flux_scale.ratio, flux_new=1.0, astrometric_rms=astrometric,
        mask=mask, workers=params.fft_workers,
    )
    timer.lap("zogy")

    ref_sources = detect_all_sources(ref_resampled.data, ref_resampled.variance, ref_resampled.mask)
    candidates = detect_transients(
        result, mask, threshold=params.threshold, wcs=new.wcs, ref_sources=ref_sources,
        max_masked_fraction=params.max_masked_fraction,
    )
    timer.lap("detection")

    valid_err = result.flux_err[::4, ::4]
    quality = {
        "registration_rms_px": registration.rms,
        "registration_rms_x_px": registration.rms_x,
        "registration_rms_y_px": registration.rms_y,
        "registration_n_matched": registration.n_matched,
        "registration_method": registration.method,
        "flux_ratio": flux_scale.ratio,
        "flux_ratio_err": flux_scale.ratio_err,
        "flux_ratio_n_stars": flux_scale.n_stars,
        "flux_ratio_n_rejected": flux_scale.n_rejected,
        "fwhm_new_px": psf_new.fwhm_px,
        "fwhm_ref_px": psf_ref.fwhm_px,
        "fwhm_ref_native_px": psf_ref_native.fwhm_px,
        "sigma_new": bkg_new.median_rms,
        "sigma_ref": bkg_ref.median_rms,
        "scorr_std": result.scorr_std,
        "d_std": result.d_std,
        "depth_5sigma_e": float(5.0 * np.nanmedian(valid_err)),
        "valid_fraction": float(np.mean(~result.mask)),
        "n_candidates": len(candidates),
        "n_positive": int(np.count_nonzero(~candidates["is_negative"])),
        "n_negative": int(np.count_nonzero(candidates["is_negative"])),
    }
    timer.timings["total"] = round(sum(timer.timings.values()), 4)
    return DifferenceResult(
        zogy=result, candidates=candidates, psf_new=psf_new, psf_ref=psf_ref, registration=registration,
        flux_scale=flux_scale, ref_resampled=ref_resampled, mask=mask, quality=quality, timings=timer.timings,
    )
