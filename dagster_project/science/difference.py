"""New-minus-reference difference imaging: the one entry point of the Dagster asset.

Steps of :func:`difference_images` (each timed in ``DifferenceResult.timings``):

1. ``background``: sky maps of both images; both are background-subtracted.
2. ``stars``: bright isolated stars in each image (and every source of the
   reference, for the candidates' ``ref_distance_px``).
3. ``psf``: Moffat PSF of each image on its own grid.
4. ``positions``: PSF-fit positions of those stars.
5. ``psf_variation``: per-star FWHM and its spread over 3x3 tiles (see below).
6. ``registration``: affine map reference pixel -> new pixel (WCS guess,
   RANSAC; asterisms as fallback).
7. ``resample``: each image's saturated stars get a brightness-scaled
   ``SATURATION_HALO`` (:func:`saturation_halo`); reference data, variance
   and mask go onto the new grid (the new image is never resampled).
8. ``psf_ref_resampled``: PSF of the resampled reference, fitted at the
   matched stars (includes the rotation and the interpolation blur).
9. ``flux_scale``: F_r / F_n from PSF fluxes of the matched stars on the
   common grid.
10. ``zogy``: D, S, S_corr, flux images; outputs are invalid where flux
    hidden under the masks could leave a residual (:func:`hidden_flux`).
    When the PSF varies over the field, the tile PSFs are fitted and ZOGY
    runs on overlapping sub-images within this step (see below).
11. ``detection``: candidates in S_corr, flagged and marked ``is_good``
    (see :mod:`~dagster_project.science.detection`).

Steps 1-3 look at one image alone (:func:`characterize_for_difference`);
an :class:`ImageCharacterization` computed before, e.g. once per reference
version, replaces them for that image and gives the same numbers. The new
image is characterized here: calibration's
:func:`~dagster_project.science.psf.characterize_image` computes the same
background but keeps it in memory only, and picks stars with another S/N cut.

One PSF per image, or one per tile
----------------------------------
The variation of the PSF over the field is measured first
(``quality['fwhm_tile_spread_new']`` and ``..._ref``: the relative range of
the median per-star FWHM over 3x3 tiles for frames of 2048 px and more, 2x2
from 1024 px, none below; :func:`~dagster_project.science.psf.star_fwhm`).
The simulated frames are rendered with one Moffat PSF per exposure and give
spreads of 0.5-1.5 %, the scatter of the per-tile medians; their static
stars subtract to the noise with one PSF per image, and a PSF per tile would
only add fit noise (each tile has a ninth of the stars) and time. So by
default (``DifferenceParams.zogy_tiles=None``) ZOGY runs once on the whole
frame with one PSF per image, unless the spread of either image exceeds
``max_psf_spread`` (5 %): the PSF then truly varies, and bright stars
would leave residuals. ZOGY then runs on the same tiles as the measurement,
each grown by a margin of twice the largest PSF stamp
(:func:`~dagster_project.science.zogy_tiles.zogy_tiled`): each tile gets its
own Moffat PSF of the new image and of the resampled reference, fitted to
the stars of the tile and its margin (:func:`tile_psfs`), or the
whole-frame PSF if that fails (``quality['zogy_tiles_psf_fallback']``);
only the tile cores are kept, so the stitched maps have no seams (with one
PSF everywhere they equal the whole-frame run to round-off) and no
wrap-around at the frame border (:func:`~dagster_project.science.zogy.zogy`
zero-pads). Flux scale, noise and astrometric terms stay global. The PSF
is still constant within a tile, so a strong gradient is reduced, not
removed: with a FWHM going from 2.4 to 3.6 px across a 1024 px frame
(300 stars), 2x2 tiles leave 92 candidates instead of 188 with one PSF per
image, 82 of them at stars instead of 122 (``pytest -s tests/science/test_difference.py -k
psf_varying`` prints these). Each tile costs two PSF fits. ``P_D`` (used by detection for the
footprint and the sharpness) is that of the central tile.

Failures raise :class:`~dagster_project.science.psf.PSFError`,
:class:`~dagster_project.science.registration.RegistrationError` or
:class:`~dagster_project.science.photometric_scaling.FluxScaleError`, whose
messages say which image and why.
"""

import time
from dataclasses import dataclass, field, replace

import numpy as np
from astropy.table import Table
from scipy import ndimage

from .background import estimate_background
from .detection import detect_transients
from .images import ImagePlanes
from .masks import MASK_DTYPE, MaskBit
from .photometric_scaling import FluxScale, flux_ratio, measure_matched_fluxes
from .psf import PSFError, PSFModel, estimate_psf, find_stars, fwhm_tile_spread, psf_photometry, star_fwhm
from .psf_models import moffat_alpha
from .registration import Registration, register_images, resample_planes
from .zogy import ZogyResult, zogy
from .zogy_tiles import Tile, tile_grid, tile_margin, zogy_tiled

__all__ = [
    "CHARACTERIZATION_FIELDS",
    "CHARACTERIZATION_STEPS",
    "DifferenceParams",
    "DifferenceResult",
    "ImageCharacterization",
    "characterization_params",
    "characterize_for_difference",
    "default_psf_tiles",
    "difference_images",
    "difference_with_added_flux",
    "hidden_flux",
    "saturation_halo",
    "subtract_background",
    "tile_psfs",
    "zogy_tile_count",
]


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
    max_hidden_sigma : float
        S_corr is invalid where the flux hidden under masked pixels could
        leave a residual above this many sigma (see :func:`hidden_flux` and
        :func:`~dagster_project.science.zogy.zogy`).
    psf_tiles : int or None
        Tiles per side over which the PSF FWHM variation is measured; None:
        :func:`default_psf_tiles`.
    zogy_tiles : int or None
        Tiles per side of the ZOGY sub-images, each with its own PSFs (see
        the module notes): None chooses (``psf_tiles`` tiles per side when
        the FWHM tile spread of either image exceeds ``max_psf_spread``,
        else 1); 1 never tiles; n > 1 always runs n x n tiles.
    max_psf_spread : float
        FWHM tile spread (relative range) above which ``zogy_tiles=None`` tiles.
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
    max_hidden_sigma: float = 1.0
    psf_tiles: int | None = None
    zogy_tiles: int | None = None
    max_psf_spread: float = 0.05
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
        New mask OR resampled reference mask, with the saturated stars'
        ``SATURATION_HALO`` of both: the pixels ZOGY excluded.
    quality : dict
        Scalar figures for the catalogue: ``registration_rms_px``, ``registration_rms_x_px``,
        ``registration_rms_y_px``, ``registration_n_matched``,
        ``registration_method``, ``flux_ratio``, ``flux_ratio_err``,
        ``flux_ratio_n_stars``, ``flux_ratio_n_rejected``, ``fwhm_new_px``,
        ``fwhm_ref_px`` (resampled), ``fwhm_ref_native_px``,
        ``sigma_new``, ``sigma_ref`` (e-), ``scorr_std``, ``d_std``,
        ``depth_5sigma_e`` (median 5-sigma point-source flux of the
        difference, new-image e-), ``valid_fraction`` (of pixels with valid
        outputs), ``psf_tiles`` (tiles per side), ``fwhm_tile_spread_new``,
        ``fwhm_tile_spread_ref`` (relative range of the per-tile median star
        FWHM; None when fewer than two tiles have 3 stars), ``zogy_tiles``
        (ZOGY sub-images per side, 1: one PSF per image),
        ``zogy_tiles_psf_fallback`` (tiles where the new or the reference
        tile PSF could not be fitted and the whole-frame one was used),
        ``zogy_tiles_reason`` (str: why that many tiles), ``n_candidates``,
        ``n_positive``, ``n_negative``, ``n_good`` (candidates with
        ``is_good``).
    timings : dict
        Seconds spent per step.
    steps_10_11 : object
        What steps 10-11 read (the common grid, both characterizations, flux scale, registration), for
        :func:`difference_with_added_flux`.
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
    steps_10_11: "_Steps10And11 | None" = field(default=None, repr=False)


def default_psf_tiles(shape: tuple[int, int]) -> int:
    """3x3 tiles for frames of 2048 px or more on a side, 2x2 from 1024 px, else 1 (no variation measured)."""
    side = max(shape)
    return 3 if side >= 2048 else 2 if side >= 1024 else 1


def zogy_tile_count(params: DifferenceParams, spreads: dict[str, float], psf_tiles: int) -> tuple[int, str]:
    """Tiles per side for ZOGY (see ``DifferenceParams.zogy_tiles``) and the reason, for ``quality``.

    Parameters
    ----------
    params : DifferenceParams
    spreads : dict of str to float
        FWHM tile spread of each image (NaN where not measured).
    psf_tiles : int
        Tiles per side over which the spreads were measured.
    """
    if params.zogy_tiles is not None:
        return params.zogy_tiles, f"zogy_tiles={params.zogy_tiles} requested"
    measured = [v for v in spreads.values() if np.isfinite(v)]
    if psf_tiles < 2 or not measured:
        return 1, "FWHM tile spread not measured"
    widest = max(measured)
    if widest > params.max_psf_spread:
        return psf_tiles, f"FWHM tile spread {widest:.3f} > {params.max_psf_spread}"
    return 1, f"FWHM tile spread {widest:.3f} <= {params.max_psf_spread}"


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._t, 4)
        self._t = now


#: The :class:`DifferenceParams` fields that :func:`characterize_for_difference` reads.
CHARACTERIZATION_FIELDS = (
    "bkg_box_size", "bkg_filter_size", "star_snr_min", "max_stars", "psf_stamp_size", "max_psf_stars",
    "min_psf_stars",
)

#: The steps of :func:`difference_images` that :func:`characterize_for_difference` does for one image.
CHARACTERIZATION_STEPS = ("background", "stars", "psf")


@dataclass
class ImageCharacterization:
    """Steps 1-3 of :func:`difference_images` for one image: background, stars, PSF.

    Attributes
    ----------
    background : ndarray, float32, shape (ny, nx)
        Sky map (e-), as :func:`~dagster_project.science.background.estimate_background` returned it.
    sky_rms : float
        Median background noise (e-): the image's ``sigma`` for ZOGY and the saturation halo.
    stars : astropy.table.Table
        Output of :func:`~dagster_project.science.psf.find_stars` on the background-subtracted
        image, with its ``meta['fwhm']`` and ``meta['sources']``.
    psf : PSFModel
        PSF of the image on its own grid.
    params : dict
        The :data:`CHARACTERIZATION_FIELDS` of the parameters it was computed with.
    timings : dict
        Seconds spent per step of :data:`CHARACTERIZATION_STEPS` (empty when read back from a file).
    """

    background: np.ndarray
    sky_rms: float
    stars: Table
    psf: PSFModel
    params: dict
    timings: dict = field(default_factory=dict)


def characterization_params(params: DifferenceParams) -> dict:
    """The :data:`CHARACTERIZATION_FIELDS` of ``params``: a characterization fits ``params`` iff these match."""
    return {name: getattr(params, name) for name in CHARACTERIZATION_FIELDS}


def subtract_background(planes: ImagePlanes, background: np.ndarray) -> np.ndarray:
    """``planes.data - background`` as float32: the image every step after the background works on."""
    return (planes.data - background).astype(np.float32)


def characterize_for_difference(
    planes: ImagePlanes, params: DifferenceParams | None = None, label: str = "image"
) -> ImageCharacterization:
    """Background, stars and PSF of one image exactly as :func:`difference_images` measures them.

    Parameters
    ----------
    planes : ImagePlanes
        Calibrated image (e-, sky included), variance, mask.
    params : DifferenceParams, optional
    label : str
        Names the image in error messages.

    Returns
    -------
    ImageCharacterization

    Raises
    ------
    PSFError
        Too few usable stars, with ``label`` in the message.
    """
    params = DifferenceParams() if params is None else params
    timer = _Timer()
    bkg = estimate_background(
        planes.data, planes.mask, box_size=params.bkg_box_size, filter_size=params.bkg_filter_size, rms_map=False
    )
    image = subtract_background(planes, bkg.background)
    timer.lap("background")
    stars = find_stars(image, planes.variance, planes.mask, snr_min=params.star_snr_min, max_stars=params.max_stars)
    timer.lap("stars")
    psf = _psf_for(label, image, planes.variance, planes.mask, stars, params)
    timer.lap("psf")
    return ImageCharacterization(
        background=bkg.background, sky_rms=bkg.median_rms, stars=stars, psf=psf,
        params=characterization_params(params), timings=timer.timings,
    )


def _psf_for(label: str, image, variance, mask, stars, params: DifferenceParams) -> PSFModel:
    try:
        return estimate_psf(
            image, variance, mask, stars, params.psf_stamp_size,
            max_stars=params.max_psf_stars, min_stars=params.min_psf_stars,
        )
    except PSFError as exc:
        raise PSFError(f"{label}: {exc}") from exc


def tile_psfs(
    label: str, image, variance, mask, stars: Table, tiles: list[list[Tile]], fallback: PSFModel,
    params: DifferenceParams,
) -> tuple[list[list[PSFModel]], np.ndarray]:
    """The PSF of each tile, fitted to the stars in its extended area (core plus margin).

    Parameters
    ----------
    label : str
        Names the image in error messages.
    image, variance, mask
        Background-subtracted image (e-), variance (e-^2) and mask of the whole frame.
    stars : astropy.table.Table
        Columns ``x``, ``y`` (0-based px), ``flux`` (and optionally ``fwhm``), as for
        :func:`~dagster_project.science.psf.estimate_psf`.
    tiles : list of lists of Tile
        From :func:`~dagster_project.science.zogy_tiles.tile_grid`.
    fallback : PSFModel
        Used for a tile whose fit fails (fewer than ``params.min_psf_stars``
        usable stars, or no convergence): the whole-frame PSF.
    params : DifferenceParams

    Returns
    -------
    psfs : list of lists of PSFModel
        ``psfs[i][j]`` for ``tiles[i][j]``.
    fell_back : ndarray of bool, shape (n, n)
        True where ``fallback`` was used.
    """
    x, y = np.asarray(stars["x"], dtype=float), np.asarray(stars["y"], dtype=float)
    psfs = [[fallback] * len(row) for row in tiles]
    fell_back = np.zeros((len(tiles), len(tiles[0])), dtype=bool)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            try:
                psfs[i][j] = _psf_for(label, image, variance, mask, stars[tile.contains(x, y)], params)
            except PSFError:
                fell_back[i, j] = True
    return psfs, fell_back


#: Flux under a mask counts as hidden (see :func:`hidden_flux`) only above this many sigma of its pixel noise.
_HIDDEN_FLUX_SIGMA = 3.0

#: Half-side (px) of the window whose unmasked pixels estimate the scene under a masked pixel.
_NEIGHBOURHOOD_HALF_PX = 2


def _scene_under_mask(planes: ImagePlanes, where: np.ndarray, masked_values_are_data: bool) -> np.ndarray:
    """Scene estimate at the pixels ``where``: the pixel's value, or for a masked one its neighbours' mean.

    The mean is over the unmasked, finite pixels of the 5x5 window. Masked
    pixels with no such neighbour (inside a saturated core) keep their own
    value if ``masked_values_are_data`` (a lower bound for a saturated
    pixel), else get NaN (the resampled reference holds 0 there).
    Computed only at ``where`` (a few percent of the frame), by gathering
    the windows, instead of filtering the whole image.

    Returns
    -------
    ndarray, float32, shape ``(count of where,)``
    """
    ny, nx = planes.data.shape
    ys, xs = np.nonzero(where)
    own = planes.data[ys, xs]
    with np.errstate(invalid="ignore", divide="ignore"):
        valid_map = (planes.mask == 0) & np.isfinite(planes.data)
        out = np.where(valid_map[ys, xs], own, np.float32(np.nan))
        todo = np.flatnonzero(~valid_map[ys, xs])
        offsets = np.arange(-_NEIGHBOURHOOD_HALF_PX, _NEIGHBOURHOOD_HALF_PX + 1)
        wy = ys[todo, None, None] + offsets[None, :, None]
        wx = xs[todo, None, None] + offsets[None, None, :]
        inside = (wy >= 0) & (wy < ny) & (wx >= 0) & (wx < nx)
        wy, wx = np.clip(wy, 0, ny - 1), np.clip(wx, 0, nx - 1)
        ok = inside & valid_map[wy, wx]
        count = ok.sum(axis=(1, 2))
        mean = np.where(ok, planes.data[wy, wx], 0).sum(axis=(1, 2)) / count
        fallback = own[todo] if masked_values_are_data else np.float32(np.nan)
        out[todo] = np.where(count > 0, mean, fallback)
    return out.astype(np.float32, copy=False)


def hidden_flux(
    new: ImagePlanes, ref: ImagePlanes, flux_ratio_ref: float, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flux of the static scene under the pixels ZOGY excludes, in each image's units.

    ZOGY zeroes the excluded pixels in both images; what that removes from
    a static source does not cancel (see the ``hidden_new`` parameter of
    :func:`~dagster_project.science.zogy.zogy`). Each image's scene under
    its own masked pixels is estimated from its unmasked neighbours
    (:func:`_scene_under_mask`; deep inside a mask, the new image's own value,
    the resampled reference having none); the static scene is the smaller of
    the two images' estimates in new-image units (``ref / flux_ratio_ref``),
    or the one that exists, so that a transient or a cosmic ray in one image
    never counts as hidden static flux and cannot blank the surroundings of a
    real detection. Values are reduced by ``_HIDDEN_FLUX_SIGMA`` times the
    pixel noise and clipped at 0, so sky noise under a mask does not count.

    Parameters
    ----------
    new, ref : ImagePlanes
        Background-subtracted new image and resampled reference (e-), on one grid.
    flux_ratio_ref : float
        F_r / F_n: reference flux of a source of unit new flux.
    mask : ndarray
        The mask given to ZOGY (non-zero: excluded); non-finite pixels are excluded too.

    Returns
    -------
    hidden_new, hidden_ref : ndarray, float32
        In the units of each image (e-); 0 wherever no pixel is excluded.
    """
    union = (mask != 0) | ~np.isfinite(new.data) | ~np.isfinite(ref.data)
    static = np.fmin(_scene_under_mask(new, union, True),
                     _scene_under_mask(ref, union, False) / np.float32(flux_ratio_ref))
    out = []
    for planes, scale in ((new, 1.0), (ref, flux_ratio_ref)):
        noise = np.sqrt(np.clip(np.nan_to_num(planes.variance[union]), 0, None))
        hidden = np.zeros(union.shape, dtype=np.float32)
        with np.errstate(invalid="ignore"):
            excess = static * np.float32(scale) - np.float32(_HIDDEN_FLUX_SIGMA) * noise
        hidden[union] = np.nan_to_num(np.clip(excess, 0, None))
        out.append(hidden)
    return out[0], out[1]


def saturation_halo(data: np.ndarray, mask: np.ndarray, psf: PSFModel, sigma: float) -> np.ndarray:
    """Disks around the saturated stars of one image, out to where their wings fall to the sky noise.

    A saturated core of radius ``r_sat`` (half the widest row of a connected
    ``SATURATED`` region: bleed trails are narrower columns) is at the
    saturation level ``L`` (the median of ``data`` over the region) at
    ``r_sat``; for a Moffat PSF of core width ``alpha`` and index ``beta``
    the star then falls to the pixel noise ``sigma`` at ``R`` with
    ``1 + R**2 / alpha**2 = (1 + r_sat**2 / alpha**2) * (L / sigma)**(1 / beta)``,
    so the radius grows with the star's brightness (for FWHM 3 px, beta 3 and
    ``L / sigma = 3000``: 12 px for a barely saturated star, 24 px for one
    with an 11-px core). Inside ``R`` the star outshines the sky noise; on
    the simulated frames, without the halo, its wings left residuals of 6 to
    60 sigma next to the saturated cores (about 10 false candidates per
    2048x2048 frame).

    Parameters
    ----------
    data : ndarray
        Background-subtracted image (e-), saturated pixels not zeroed.
    mask : ndarray of uint16
        Its :class:`~dagster_project.science.masks.MaskBit` field.
    psf : PSFModel
        Its PSF.
    sigma : float
        Its sky noise per pixel (e-).

    Returns
    -------
    ndarray of bool
        Pixels within ``R`` of a saturated core.
    """
    halo = np.zeros(mask.shape, dtype=bool)
    labels, n = ndimage.label((mask & MaskBit.SATURATED) != 0, np.ones((3, 3), bool))
    if n == 0 or not sigma > 0:
        return halo
    ny, nx = mask.shape
    alpha = moffat_alpha(psf.fwhm_px, psf.beta)
    for label, region in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[region] == label
        level = float(np.nanmedian(data[region][inside]))
        if not level > sigma:
            continue
        widths = inside.sum(axis=1)
        core = int(np.argmax(widths))
        r_sat = 0.5 * widths[core]
        xc = region[1].start + float(np.mean(np.flatnonzero(inside[core])))
        yc = region[0].start + core
        radius = alpha * np.sqrt((1.0 + (r_sat / alpha) ** 2) * (level / sigma) ** (1.0 / psf.beta) - 1.0)
        h = int(np.ceil(radius))
        y0, y1 = max(yc - h, 0), min(yc + h + 1, ny)
        x0, x1 = max(int(xc) - h, 0), min(int(xc) + h + 2, nx)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        halo[y0:y1, x0:x1] |= (xx - xc) ** 2 + (yy - yc) ** 2 <= radius**2
    return halo


def difference_images(
    new: ImagePlanes, ref: ImagePlanes, params: DifferenceParams | None = None, *,
    ref_characterization: ImageCharacterization | None = None,
    new_characterization: ImageCharacterization | None = None,
) -> DifferenceResult:
    """Register, PSF-match (ZOGY) and subtract ``ref`` from ``new``; detect transients (steps: module notes).

    Parameters
    ----------
    new : ImagePlanes
        Calibrated new image (e-, sky included), variance, mask, TAN WCS.
    ref : ImagePlanes
        Calibrated reference image, any grid overlapping ``new``.
    params : DifferenceParams, optional
    ref_characterization, new_characterization : ImageCharacterization, optional
        :func:`characterize_for_difference` of ``ref`` (``new``) computed before with the same
        parameters; steps 1-3 are then skipped for that image (their timings count only the
        images characterized here) and the result is the same.

    Returns
    -------
    DifferenceResult
        Its ``quality`` keys are listed in :class:`DifferenceResult`.

    Raises
    ------
    PSFError, RegistrationError, FluxScaleError
        With a message naming the image and the reason.
    ValueError
        Inconsistent input planes, or a characterization of other parameters or of another image shape.

    Examples
    --------
    25 stars, the new image shifted by 3.2 px (its WCS too), sharper, with a new source at (95, 65):

    >>> from dagster_project.science.astrometry import nominal_wcs_header
    >>> from dagster_project.science.masks import empty_mask
    >>> from dagster_project.science.psf_models import render_point_sources
    >>> rng = np.random.default_rng(2)
    >>> yy, xx = np.mgrid[20:160:30, 20:160:30] + rng.uniform(-5, 5, (2, 5, 5))
    >>> x, y, f = xx.ravel(), yy.ravel(), 10 ** rng.uniform(4, 5, 25)
    >>> def planes(fwhm, dx, extra=((), (), ())):
    ...     sky = render_point_sources((160, 160), [*(x + dx), *extra[0]], [*y, *extra[1]], [*f, *extra[2]], fwhm) + 300
    ...     data = (sky + rng.normal(size=sky.shape) * np.sqrt(sky)).astype(np.float32)
    ...     header = nominal_wcs_header(150.0, 2.0, 0.6, (80.5 + dx, 80.5))
    ...     return ImagePlanes(data, sky.astype(np.float32), empty_mask(sky.shape), header)
    >>> result = difference_images(planes(2.5, 3.2, ([95.0], [65.0], [1e4])), planes(3.2, 0.0))
    >>> result.registration.method, [round(float(result.candidates[c][0])) for c in ("x", "y")]
    ('wcs', [95, 65])
    """
    params = DifferenceParams() if params is None else params
    _check_inputs(new, ref, params, new_characterization, ref_characterization)
    char_new = new_characterization or characterize_for_difference(new, params, "new image")
    char_ref = ref_characterization or characterize_for_difference(ref, params, "reference")
    timer = _Timer()
    new_sub, ref_sub = subtract_background(new, char_new.background), subtract_background(ref, char_ref.background)
    timer.lap("background")
    _count_characterizations(timer, (char_new, new_characterization), (char_ref, ref_characterization))
    pos_new, pos_ref = _fitted_positions(new_sub, new, char_new), _fitted_positions(ref_sub, ref, char_ref)
    timer.lap("positions")
    n_tiles = params.psf_tiles or default_psf_tiles(new.shape)
    spreads = {"new": _fwhm_spread(new_sub, new, char_new.psf, pos_new, n_tiles),
               "ref": _fwhm_spread(ref_sub, ref, char_ref.psf, pos_ref, n_tiles)}
    timer.lap("psf_variation")
    registration = _register(pos_new, pos_ref, new, ref, params)
    timer.lap("registration")
    grid = _common_grid(new, ref, new_sub, ref_sub, char_new, char_ref, pos_new, pos_ref, registration, params, timer)
    flux_scale = _flux_scale(grid, params)
    timer.lap("flux_scale")
    subtraction = _subtract(grid, new, char_new, char_ref, flux_scale, registration, spreads, n_tiles, params)
    timer.lap("zogy")
    candidates = _candidates(subtraction.result, grid.mask, char_ref.stars, registration, new, params)
    timer.lap("detection")
    quality = _quality(registration, flux_scale, grid, char_new, char_ref, subtraction, candidates)
    timer.timings["total"] = round(sum(timer.timings.values()), 4)
    return DifferenceResult(
        zogy=subtraction.result, candidates=candidates, psf_new=grid.psf_new, psf_ref=grid.psf_ref,
        registration=registration, flux_scale=flux_scale, ref_resampled=grid.ref, mask=grid.mask, quality=quality,
        timings=timer.timings,
        steps_10_11=_Steps10And11(new, grid, char_new, char_ref, flux_scale, registration, spreads, n_tiles),
    )


@dataclass
class _Steps10And11:
    """What the subtraction and the detection read, kept with a result so that both can be redone on the new
    image with flux added (:func:`difference_with_added_flux`) without steps 1-9."""

    new: ImagePlanes
    grid: "_CommonGrid"
    char_new: ImageCharacterization
    char_ref: ImageCharacterization
    flux_scale: FluxScale
    registration: Registration
    spreads: dict
    n_tiles: int


def difference_with_added_flux(result: DifferenceResult, added: np.ndarray, added_variance: np.ndarray,
                               params: DifferenceParams | None = None, threshold: float | None = None
                               ) -> tuple[ZogyResult, Table]:
    """Steps 10-11 of :func:`difference_images` again, on the new image of ``result`` plus ``added``.

    Everything before the subtraction (backgrounds, PSFs, registration, the resampled reference, the flux
    scale, the masks) stays as ``result`` measured it, which is what an injection-recovery test needs: fake
    sources added to the new image (e-, with their Poisson variance in ``added_variance``) go through the very
    subtraction and detection the frame went through, at the cost of those two steps only.

    Parameters
    ----------
    result : DifferenceResult
        Of :func:`difference_images` (it keeps what steps 10-11 read).
    added, added_variance : ndarray, shape of the new image
        Flux (e-) added to the new image, and the variance it adds.
    params : DifferenceParams, optional
        Those ``result`` was made with.
    threshold : float, optional
        Detection threshold (S_corr sigma) instead of ``params.threshold``, e.g. lower for a training set.

    Returns
    -------
    (ZogyResult, astropy.table.Table)
        The subtraction of the new image with the flux added, and its candidates.

    Examples
    --------
    >>> from dagster_project.science.astrometry import nominal_wcs_header
    >>> from dagster_project.science.masks import empty_mask
    >>> from dagster_project.science.psf_models import render_point_sources
    >>> rng = np.random.default_rng(2)
    >>> yy, xx = np.mgrid[20:160:30, 20:160:30] + rng.uniform(-5, 5, (2, 5, 5))
    >>> x, y, f = xx.ravel(), yy.ravel(), 10 ** rng.uniform(4, 5, 25)
    >>> def planes(fwhm):
    ...     sky = render_point_sources((160, 160), x, y, f, fwhm) + 300
    ...     data = (sky + rng.normal(size=sky.shape) * np.sqrt(sky)).astype(np.float32)
    ...     return ImagePlanes(data, sky.astype(np.float32), empty_mask(sky.shape),
    ...                        nominal_wcs_header(150.0, 2.0, 0.6, (80.5, 80.5)))
    >>> result = difference_images(planes(2.5), planes(3.2))
    >>> fake = render_point_sources((160, 160), [95.0], [65.0], [1e4], 2.5).astype(np.float32)
    >>> _, found = difference_with_added_flux(result, fake, fake)
    >>> [round(float(found[c][0])) for c in ("x", "y")]
    [95, 65]
    """
    params = DifferenceParams() if params is None else params
    kept = result.steps_10_11
    if kept is None:
        raise ValueError("this DifferenceResult keeps nothing to redo its subtraction with (made by an older version)")
    if added.shape != kept.new.shape or added_variance.shape != kept.new.shape:
        raise ValueError(f"the added flux must have the new image's shape {kept.new.shape}, not {added.shape}")
    new = replace(kept.new, data=kept.new.data + added, variance=kept.new.variance + added_variance)
    grid = replace(kept.grid, new=replace(kept.grid.new, data=kept.grid.new.data + added,
                                          variance=new.variance))
    subtraction = _subtract(grid, new, kept.char_new, kept.char_ref, kept.flux_scale, kept.registration,
                            kept.spreads, kept.n_tiles, params)
    at = params if threshold is None else replace(params, threshold=threshold)
    return subtraction.result, _candidates(subtraction.result, grid.mask, kept.char_ref.stars, kept.registration,
                                           new, at)


def _check_inputs(new: ImagePlanes, ref: ImagePlanes, params: DifferenceParams,
                  new_characterization: ImageCharacterization | None,
                  ref_characterization: ImageCharacterization | None) -> None:
    """ValueError for bad ``zogy_tiles``, inconsistent planes, or a characterization that does not fit."""
    if params.zogy_tiles is not None and params.zogy_tiles < 1:
        raise ValueError(f"zogy_tiles must be None or >= 1, got {params.zogy_tiles}")
    for label, planes in (("new", new), ("reference", ref)):
        shape = planes.data.shape
        if planes.data.ndim != 2 or planes.variance.shape != shape or planes.mask.shape != shape:
            raise ValueError(f"{label} image: data, variance and mask must be 2-D arrays of one shape")
    for label, given, planes in (("new", new_characterization, new), ("reference", ref_characterization, ref)):
        if given is not None and given.params != characterization_params(params):
            raise ValueError(f"{label} characterization was computed with {given.params}, "
                             f"not {characterization_params(params)}")
        if given is not None and given.background.shape != planes.data.shape:
            raise ValueError(f"{label} characterization is of a {given.background.shape} image, "
                             f"not of this {planes.data.shape} one")


def _count_characterizations(timer: _Timer, *used_and_given) -> None:
    """Add the steps of the images characterized here to the timings; a given characterization cost nothing now.

    ``used_and_given``: ``(characterization used, characterization given or None)`` of each image.
    """
    computed = [c for c, given in used_and_given if given is None]
    for step in CHARACTERIZATION_STEPS:
        timer.timings[step] = round(timer.timings.get(step, 0.0) + sum(c.timings[step] for c in computed), 4)


def _fitted_positions(image: np.ndarray, planes: ImagePlanes, char: ImageCharacterization) -> Table:
    """Step 4: PSF-fit positions (and fluxes) of the image's stars, those with a finite flux."""
    stars = char.stars
    pos = psf_photometry(image, planes.variance, planes.mask, char.psf, stars["x"], stars["y"], fit_positions=True)
    return pos[np.isfinite(pos["flux"])]


def _fwhm_spread(image: np.ndarray, planes: ImagePlanes, psf: PSFModel, pos: Table, n_tiles: int) -> float:
    """Step 5: relative range of the median star FWHM over ``n_tiles`` x ``n_tiles`` tiles (see the module notes)."""
    fwhm_each = star_fwhm(image, planes.variance, planes.mask, psf, pos["x"], pos["y"])
    return fwhm_tile_spread(pos["x"], pos["y"], fwhm_each, planes.shape, n_tiles)[1]


def _register(pos_new: Table, pos_ref: Table, new: ImagePlanes, ref: ImagePlanes,
              params: DifferenceParams) -> Registration:
    """Step 6: :func:`~dagster_project.science.registration.register_images` with the parameters."""
    return register_images(
        pos_new, pos_ref, new.wcs, ref.wcs, match_radius=params.match_radius_px,
        max_wcs_offset=params.max_wcs_offset_px, min_matches=params.min_matches, max_rms=params.max_registration_rms_px,
    )


@dataclass
class _CommonGrid:
    """Both background-subtracted images on the new grid, with their PSFs there (steps 7-8)."""

    new: ImagePlanes  # the new image, its mask with the SATURATION_HALO of its saturated stars
    ref: ImagePlanes  # the resampled reference (its halo included)
    mask: np.ndarray  # both masks: the pixels ZOGY excludes
    psf_new: PSFModel
    psf_ref: PSFModel  # fitted on the resampled reference
    matched: Table  # the matched stars: new-grid x, y, reference flux and native FWHM


def _common_grid(new, ref, new_sub, ref_sub, char_new, char_ref, pos_new, pos_ref, registration: Registration,
                 params: DifferenceParams, timer: _Timer) -> _CommonGrid:
    """Steps 7-8: saturation halos, the reference resampled onto the new grid, and its PSF fitted there."""
    new_mask = _with_saturation_halo(new_sub, new, char_new)
    ref_mask = _with_saturation_halo(ref_sub, ref, char_ref)
    ref_resampled = resample_planes(
        ImagePlanes(ref_sub, ref.variance, ref_mask, ref.header), registration, new.shape,
        new.wcs.to_header(relax=True), order=params.interpolation_order,
    )
    mask = new_mask | ref_resampled.mask
    timer.lap("resample")
    matched = Table(
        {"x": np.asarray(pos_new["x"])[registration.new_index], "y": np.asarray(pos_new["y"])[registration.new_index],
         "flux": np.asarray(pos_ref["flux"])[registration.ref_index],
         "fwhm": np.full(len(registration.new_index), char_ref.psf.fwhm_px)}
    )
    psf_ref = _psf_for(
        "resampled reference", ref_resampled.data, ref_resampled.variance, ref_resampled.mask, matched, params
    )
    timer.lap("psf_ref_resampled")
    new_planes = ImagePlanes(new_sub, new.variance, new_mask, new.header)
    return _CommonGrid(new_planes, ref_resampled, mask, char_new.psf, psf_ref, matched)


def _with_saturation_halo(image: np.ndarray, planes: ImagePlanes, char: ImageCharacterization) -> np.ndarray:
    """The image's mask with a SATURATION_HALO around its saturated stars, from its own PSF and noise."""
    halo = saturation_halo(image, planes.mask, char.psf, char.sky_rms)
    return planes.mask | np.where(halo, MASK_DTYPE(MaskBit.SATURATION_HALO), MASK_DTYPE(0))


def _flux_scale(grid: _CommonGrid, params: DifferenceParams) -> FluxScale:
    """Step 9: F_r / F_n from PSF fluxes of the matched stars on the common grid."""
    x, y = np.asarray(grid.matched["x"]), np.asarray(grid.matched["y"])
    fluxes = measure_matched_fluxes(grid.new, grid.ref, grid.psf_new, grid.psf_ref, x, y)
    return flux_ratio(
        fluxes["new_flux"], fluxes["ref_flux"], fluxes["new_flux_err"], fluxes["ref_flux_err"],
        min_stars=params.min_flux_stars,
    )


@dataclass
class _Subtraction:
    """Step 10: the ZOGY outputs and how the PSFs were laid out."""

    result: ZogyResult
    psf_tiles: int  # tiles per side of the FWHM-variation measurement
    spreads: dict  # FWHM tile spread of "new" and "ref"
    zogy_tiles: int
    reason: str  # why that many ZOGY tiles
    n_fallback: int  # tiles that took the whole-frame PSF


def _subtract(grid: _CommonGrid, new: ImagePlanes, char_new, char_ref, flux_scale: FluxScale,
              registration: Registration, spreads: dict, n_tiles: int, params: DifferenceParams) -> _Subtraction:
    """Step 10: ZOGY on the whole frame with one PSF per image, or on tiles with a PSF per tile (module notes)."""
    astrometric = params.astrometric_rms or (registration.rms_x, registration.rms_y)
    hidden_new, hidden_ref = hidden_flux(grid.new, grid.ref, flux_scale.ratio, grid.mask)
    zogy_kw = dict(
        var_new=new.variance, var_ref=grid.ref.variance,
        # The native-grid noise of the reference: resampling lowers its per-pixel noise but not the
        # PSF-integrated noise that the ZOGY denominator weighs (V_S uses the resampled variance).
        sigma_new=char_new.sky_rms, sigma_ref=char_ref.sky_rms,
        flux_ratio_ref=flux_scale.ratio, flux_new=1.0, astrometric_rms=astrometric,
        mask=grid.mask, hidden_new=hidden_new, hidden_ref=hidden_ref, max_hidden_sigma=params.max_hidden_sigma,
        workers=params.fft_workers,
    )
    n_zogy_tiles, reason = zogy_tile_count(params, spreads, n_tiles)
    if n_zogy_tiles == 1:
        result = zogy(grid.new.data, grid.ref.data, grid.psf_new.stamp, grid.psf_ref.stamp, **zogy_kw)
        return _Subtraction(result, n_tiles, spreads, 1, reason, 0)
    result, n_fallback = _zogy_per_tile(grid, new, char_new.stars, n_zogy_tiles, zogy_kw, params)
    return _Subtraction(result, n_tiles, spreads, n_zogy_tiles, reason, n_fallback)


def _zogy_per_tile(grid: _CommonGrid, new: ImagePlanes, stars_new: Table, n_zogy_tiles: int, zogy_kw: dict,
                   params: DifferenceParams) -> tuple[ZogyResult, int]:
    """ZOGY on ``n_zogy_tiles`` x ``n_zogy_tiles`` tiles, each with its PSFs (:func:`tile_psfs`); and the fallbacks."""
    # Stars are picked over the tiles grown by the margin of the whole-frame PSFs.
    tiles = tile_grid(new.shape, n_zogy_tiles, tile_margin(grid.psf_new.stamp, grid.psf_ref.stamp))
    tiles_new, fell_new = tile_psfs("new image", grid.new.data, new.variance, new.mask, stars_new, tiles,
                                    grid.psf_new, params)
    tiles_ref, fell_ref = tile_psfs("resampled reference", grid.ref.data, grid.ref.variance, grid.ref.mask,
                                    grid.matched, tiles, grid.psf_ref, params)
    stamps_new, stamps_ref = ([[p.stamp for p in row] for row in g] for g in (tiles_new, tiles_ref))
    result = zogy_tiled(grid.new.data, grid.ref.data, stamps_new, stamps_ref, **zogy_kw)
    return result, int(np.count_nonzero(fell_new | fell_ref))


def _candidates(result: ZogyResult, mask: np.ndarray, stars_ref: Table, registration: Registration,
                new: ImagePlanes, params: DifferenceParams) -> Table:
    """Step 11: :func:`detect_transients`, with every source of the reference (segmented when its stars
    were found) on the new grid for ``ref_distance_px``."""
    all_ref = stars_ref.meta["sources"]
    ref_x, ref_y = registration.ref_to_new(all_ref["x"], all_ref["y"])
    return detect_transients(
        result, mask, threshold=params.threshold, wcs=new.wcs, ref_sources=Table({"x": ref_x, "y": ref_y}),
        max_masked_fraction=params.max_masked_fraction,
    )


def _quality(registration: Registration, flux_scale: FluxScale, grid: _CommonGrid, char_new, char_ref,
             sub: _Subtraction, candidates: Table) -> dict:
    """The ``quality`` figures of :class:`DifferenceResult`, in its order."""
    result, spreads = sub.result, sub.spreads
    return {
        "registration_rms_px": registration.rms,
        "registration_rms_x_px": registration.rms_x,
        "registration_rms_y_px": registration.rms_y,
        "registration_n_matched": registration.n_matched,
        "registration_method": registration.method,
        "flux_ratio": flux_scale.ratio,
        "flux_ratio_err": flux_scale.ratio_err,
        "flux_ratio_n_stars": flux_scale.n_stars,
        "flux_ratio_n_rejected": flux_scale.n_rejected,
        "fwhm_new_px": grid.psf_new.fwhm_px,
        "fwhm_ref_px": grid.psf_ref.fwhm_px,
        "fwhm_ref_native_px": char_ref.psf.fwhm_px,
        "psf_tiles": sub.psf_tiles,
        "fwhm_tile_spread_new": spreads["new"] if np.isfinite(spreads["new"]) else None,
        "fwhm_tile_spread_ref": spreads["ref"] if np.isfinite(spreads["ref"]) else None,
        "zogy_tiles": sub.zogy_tiles,
        "zogy_tiles_psf_fallback": sub.n_fallback,
        "zogy_tiles_reason": sub.reason,
        "sigma_new": char_new.sky_rms,
        "sigma_ref": char_ref.sky_rms,
        "scorr_std": result.scorr_std,
        "d_std": result.d_std,
        "depth_5sigma_e": float(5.0 * np.nanmedian(result.flux_err[::4, ::4])),
        "valid_fraction": float(np.mean(~result.mask)),
        "n_candidates": len(candidates),
        "n_positive": int(np.count_nonzero(~candidates["is_negative"])),
        "n_negative": int(np.count_nonzero(candidates["is_negative"])),
        "n_good": int(np.count_nonzero(candidates["is_good"])),
    }
