"""Proper image co-addition of Zackay & Ofek (2017, ApJ 836, 187; "ZO17").

Written here by hand: no well-kept Python library implements the proper co-addition
(astropy, photutils and reproject combine images by weighted means or medians, which are
not optimal for detection when the PSFs differ), and the algorithm is a few lines of
Fourier-space algebra once the inputs are registered and scaled.

Conventions
-----------
* Inputs M_j are background-subtracted images in electrons on the SAME pixel grid (each
  resampled onto the co-add's grid), with full per-pixel variance maps V_j (e-^2) and masks.
* ``flux_scale`` F_j: a source of flux ``f`` (in the units of the co-add) has ``F_j * f``
  electrons in M_j. With F = 1 for the frame whose grid and flux scale the co-add takes
  (the "anchor"), the co-add is in that frame's electrons.
* ``sigma`` sigma_j: background noise of M_j on its native grid (before resampling), e-.
* PSFs P_j are odd stamps centred on their central pixel, on the co-add's grid; they are
  normalised to unit sum here.

Equations (ZO17)
----------------
* eq. 7: R^ = sum_j (F_j / sigma_j^2) conj(P_j^) M_j^ / sqrt(sum_j (F_j^2 / sigma_j^2) |P_j^|^2)
* eq. 8: P_R^ = sqrt(sum_j (F_j^2 / sigma_j^2) |P_j^|^2) / F_R,  eq. 9: F_R = sqrt(sum_j F_j^2 / sigma_j^2)
* R has white noise of unit variance, and its point-source S/N^2 is the sum of the inputs'
  (the co-add loses no information: it is a sufficient statistic for detection). The co-add
  returned is ``R / F_R``, in the anchor's units, with PSF P_R and noise ``1 / F_R``.

Implementation notes
--------------------
* Where a PSF's transform is below 1e-4 of its zero-frequency value, its phase is ringing of the
  stamp's truncation, not the PSF's: it is blended to zero there, keeping the modulus (and with it
  the white noise) and the kernels compact (``_trusted_phase``).
* R / F_R = sum_j k_j (x) M_j with k_j^ = (F_j / sigma_j^2) conj(P_j^) / (F_R sqrt(sum ...)).
  The kernels are computed on a small grid (four times the largest stamp) and cropped to
  twice the largest stamp (keeping > 99.99 % of their power for PSFs that differ by 2.5x in
  FWHM); the co-add, its PSF ``sum_j F_j k_j (x) P_j`` and its variance map
  ``sum_j k_j^2 (x) V_j`` are then all exact for the kernels applied (nothing is assumed
  white), so ZOGY's variance terms stay right near masks and bright stars.
* Outliers (cosmic rays the calibration missed, asteroids, satellite trails) are rejected
  against the median of the flux-scaled stack with the threshold of Gruen et al. (2014,
  PASP 126, 158; SWarp's CLIPPED combine), ``|y_j - median| > clip_sigma * sqrt(var_j +
  (clip_ampfrac * median)^2)``, but compared after blurring each frame with a Gaussian to the
  broadest input's seeing, so that a sharper frame's star cores are not taken for outliers
  (the amplitude term then only has to absorb the PSF shapes' residual differences), and with
  the median's own noise (that of a typical frame) added to ``var_j``. The
  rejected pixels are grown by the blur. This needs three inputs or more.
* A masked or rejected pixel of one input is filled with the inverse-variance mean of the
  other inputs there, scaled by F_j (and its variance likewise), so the Fourier sums see
  no holes; a pixel no input covers is masked in the co-add with the inputs' bits there
  (``NONFINITE`` when every input there was rejected as an outlier), and a pixel saturated in any
  input stays masked as such (filled from frames of other seeing, a star core would not have the
  co-add's PSF). So does any other hole filled on source light (``FILL_TRUST_SIGMA``): a cosmic
  ray on a bright star's wing, filled from frames of other seeing, left residuals of 5-18 sigma in
  the differences (the "star residual" false positives of the injection-recovery nights); ZOGY
  then bounds the flux hidden there like that of any masked pixel. A hole on the sky is filled.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from scipy import fft, ndimage, signal

from .difference import DifferenceParams, ImageCharacterization, characterize_for_difference, subtract_background
from .images import ImagePlanes
from .masks import MASK_DTYPE, MaskBit
from .parallel import n_threads, row_blocks, run_threads
from .photometric_scaling import flux_ratio, measure_matched_fluxes
from .psf import PSFError, PSFModel, estimate_psf, psf_photometry
from .registration import register_images, resample_planes

__all__ = ["PROPAGATED_BITS", "Coadd", "CoaddInput", "CoaddResult", "coadd_frames", "proper_coadd"]

#: sqrt(sum |P_j^|^2) is floored at this fraction of its zero-frequency value, against 0 / 0 only: any
#: floor that bites (even 1e-12, at the round-off corners of the frequency plane) low-passes the co-add
#: and rings its kernels, while the ratio conj(P_j^) / den stays bounded without one.
_DEN_FLOOR = 1e-200

#: Where |P_j^| < tau |P_j^(0)|, its phase is that of the stamp's truncation and round-off ringing, not of
#: the PSF: it is let go smoothly to zero there (the modulus is kept, so the co-add's noise stays white).
_PHASE_TRUST = 1e-4

#: FWHM of a Gaussian in units of its sigma
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass
class CoaddInput:
    """One frame registered onto the co-add's grid.

    Attributes
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image, e- (masked pixels may hold anything).
    variance : ndarray, shape (ny, nx)
        Full per-pixel variance (background + source noise), e-^2.
    mask : ndarray of uint16, shape (ny, nx)
        Non-zero where the pixel is not to be used.
    psf : ndarray
        Odd PSF stamp on the co-add's grid.
    flux_scale : float
        F_j (see the module notes): this frame's electrons per unit co-add flux.
    sigma : float
        Background noise on the frame's native grid, e-.
    """

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    flux_scale: float
    sigma: float


@dataclass
class Coadd:
    """The proper co-add and what describes it.

    Attributes
    ----------
    image : ndarray of float32
        ``R / F_R``: background-subtracted co-add in the anchor's electrons (0 where masked).
    variance : ndarray of float32
        ``sum_j k_j^2 (x) V_j``, e-^2.
    mask : ndarray of uint16
        Where no input covers the pixel, the inputs' bits there; elsewhere the :data:`PROPAGATED_BITS`
        (saturation, bleed) of any input.
    psf : ndarray of float64
        The co-add's PSF stamp (odd, centred, unit sum), twice the side of the largest input stamp.
    sigma : float
        Background noise of ``image`` for white input noise: ``sqrt(sum_j sigma_j^2 sum k_j^2)``.
    flux_zero : float
        F_R = sqrt(sum_j F_j^2 / sigma_j^2): the co-add's ``1 / sigma`` for uncropped kernels.
    weights : ndarray
        Each input's share of the information, ``(F_j^2 / sigma_j^2) / F_R^2``.
    coverage : ndarray of int16
        Inputs used at each pixel (not masked, not rejected).
    n_rejected : ndarray of int64
        Pixels rejected as outliers per input.
    kernel_power_kept : float
        Smallest fraction of a kernel's power inside the cropped stamp (1 means no cropping loss).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    sigma: float
    flux_zero: float
    weights: np.ndarray
    coverage: np.ndarray
    n_rejected: np.ndarray
    kernel_power_kept: float = field(default=1.0)


def proper_coadd(inputs: Sequence[CoaddInput], *, clip_sigma: float = 4.0, clip_ampfrac: float = 0.3,
                 workers: int = -1) -> Coadd:
    """Co-add registered, flux-scaled frames optimally for detection (ZO17).

    Parameters
    ----------
    inputs : sequence of CoaddInput
        At least one frame, all on one grid.
    clip_sigma, clip_ampfrac : float
        Outlier rejection threshold (see the module notes); ``clip_sigma=inf`` rejects nothing.
    workers : int
        Threads for the FFTs (-1: all cores, as in :mod:`scipy.fft`).

    Returns
    -------
    Coadd

    Raises
    ------
    ValueError
        On no inputs, inconsistent shapes, non-positive ``sigma`` or ``flux_scale``, or bad PSFs.

    Examples
    --------
    Two frames of one star, the second twice as noisy: the co-add keeps the star's flux and
    its S/N^2 is the sum of the frames' (the proper co-add loses no information).

    >>> import numpy as np
    >>> from dagster_project.science.coadd import CoaddInput, proper_coadd
    >>> y, x = np.mgrid[-7:8, -7:8]
    >>> psf = np.exp(-(x**2 + y**2) / (2 * 1.5**2)); psf /= psf.sum()
    >>> scene = np.zeros((64, 64)); scene[25:40, 25:40] = 1000 * psf
    >>> frames = [CoaddInput(scene, np.full((64, 64), s**2), np.zeros((64, 64), np.uint16), psf, 1.0, s)
    ...           for s in (1.0, 2.0)]
    >>> coadd = proper_coadd(frames)
    >>> round(float(coadd.image.sum()), 1), round(float(coadd.psf.sum()), 6)
    (1000.0, 1.0)
    >>> round(coadd.sigma ** -2 / (1 + 1 / 4), 3)  # 1/sigma^2 adds up: 1 + 1/4
    1.0
    """
    _check_inputs(inputs)
    used = _usable_pixels(inputs, clip_sigma, clip_ampfrac)
    filled = _fill_unusable(inputs, used)
    kernels, psf, flux_zero, kept = _kernels(inputs)
    image, variance = _apply_kernels(filled, kernels, workers)
    uncovered = ~used.any(axis=0)
    mask = _coadd_mask(inputs, uncovered, _untrusted_fills(inputs, used, filled))
    image[uncovered] = 0.0
    variance[uncovered] = 0.0
    sigmas = np.array([f.sigma for f in inputs], float)
    sigma = float(np.sqrt(sum(s**2 * float(np.sum(k**2)) for s, k in zip(sigmas, kernels))))
    information = np.array([f.flux_scale**2 / f.sigma**2 for f in inputs])
    n_rejected = np.array([int(np.count_nonzero(~u & (np.asarray(f.mask) == 0))) for u, f in zip(used, inputs)])
    return Coadd(image=image, variance=variance, mask=mask, psf=psf, sigma=sigma,
                 flux_zero=flux_zero, weights=information / information.sum(),
                 coverage=used.sum(axis=0).astype(np.int16), n_rejected=n_rejected, kernel_power_kept=kept)


def _check_inputs(inputs: Sequence[CoaddInput]) -> None:
    if not inputs:
        raise ValueError("proper_coadd needs at least one input")
    shape = np.shape(inputs[0].data)
    for i, frame in enumerate(inputs):
        if len(shape) != 2 or any(np.shape(a) != shape for a in (frame.data, frame.variance, frame.mask)):
            raise ValueError(f"input {i}: data, variance and mask must be 2-D arrays of one shape {shape}")
        if not (np.isfinite(frame.sigma) and frame.sigma > 0):
            raise ValueError(f"input {i}: sigma must be positive, got {frame.sigma}")
        if not (np.isfinite(frame.flux_scale) and frame.flux_scale > 0):
            raise ValueError(f"input {i}: flux_scale must be positive, got {frame.flux_scale}")
        psf = np.asarray(frame.psf, float)
        if psf.ndim != 2 or psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0 or not np.isfinite(psf).all() \
                or psf.sum() <= 0:
            raise ValueError(f"input {i}: the PSF must be a finite odd square stamp with a positive sum")


#: Bits an input passes on to the co-add even where the others fill the pixel: a saturated star core
#: filled from frames of other seeing is not the shape the co-add's PSF says, so it must stay masked
#: (ZOGY then grows its saturation halo and bounds the flux hidden under it).
PROPAGATED_BITS = MASK_DTYPE(MaskBit.SATURATED | MaskBit.BLEED)


#: A hole of one input (masked or rejected) is filled from the other inputs, whose seeing differs: on
#: source light the fill is wrong by a fraction of that light, and the co-add's PSF no longer describes the
#: pixel. Where the fill, averaged over 3x3 pixels, is brighter than this many times the input's sky noise,
#: the co-add pixel stays masked (a bright star's wing hit by a cosmic ray would otherwise leave a
#: residual of several sigma in every difference; measured on the injection-recovery nights).
FILL_TRUST_SIGMA = 1.0


def _untrusted_fills(inputs: Sequence[CoaddInput], used: np.ndarray,
                     filled: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(ny, nx) bool: a pixel some input could not use, filled there on source light (FILL_TRUST_SIGMA)."""
    untrusted = np.zeros(used.shape[1:], bool)
    for frame, ok, (data, _) in zip(inputs, used, filled):
        y, x = np.nonzero(~ok)
        light = _mean3x3_at(data, y, x)
        bright = np.abs(light) > FILL_TRUST_SIGMA * frame.sigma
        untrusted[y[bright], x[bright]] = True
    return untrusted


def _mean3x3_at(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``ndimage.uniform_filter(image, size=3)`` (float32) at the pixels ``(y, x)`` only.

    By hand because ndimage filters whole frames: the holes are a few per cent of the pixels, and the
    whole-frame filter took 0.9 s of a 10-frame co-add of 2048 px. As ndimage computes it: edges
    reflected (one pixel beyond the edge is the edge pixel), the mean along axis 0 stored in float32,
    then the mean of those along axis 1.
    """
    offsets = np.array([-1, 0, 1])
    rows = np.clip(y[:, None] + offsets, 0, image.shape[0] - 1)
    cols = np.clip(x[:, None] + offsets, 0, image.shape[1] - 1)
    block = image[rows[:, :, None], cols[:, None, :]].astype(np.float64)  # (n, 3 rows, 3 columns)
    columns = (block.sum(axis=1) / 3).astype(np.float32)
    return (columns.astype(np.float64).sum(axis=1) / 3).astype(np.float32)


def _coadd_mask(inputs: Sequence[CoaddInput], uncovered: np.ndarray, untrusted: np.ndarray) -> np.ndarray:
    """Uncovered pixels: the inputs' bits (NONFINITE if none); untrusted fills: the inputs' bits there
    (COSMIC_RAY for an outlier of the stack, which no input had flagged); elsewhere PROPAGATED_BITS."""
    bits = np.bitwise_or.reduce(np.stack([np.asarray(f.mask, MASK_DTYPE) for f in inputs]), axis=0)
    where_uncovered = np.where(bits == 0, MASK_DTYPE(MaskBit.NONFINITE), bits)
    where_untrusted = np.where(bits == 0, MASK_DTYPE(MaskBit.COSMIC_RAY), bits)
    mask = np.where(untrusted, where_untrusted, bits & PROPAGATED_BITS)
    return np.where(uncovered, where_uncovered, mask).astype(MASK_DTYPE)


def _usable_pixels(inputs: Sequence[CoaddInput], clip_sigma: float, clip_ampfrac: float) -> np.ndarray:
    """(n, ny, nx) bool: the pixel is unmasked, finite and not an outlier of the stack.

    Frames are blurred, and their outliers found, each in a thread (ndimage and NumPy release the GIL),
    all in float32.
    """
    good = np.stack([(np.asarray(f.mask) == 0) & np.isfinite(f.data) & np.isfinite(f.variance) for f in inputs])
    if len(inputs) < 3 or not np.isfinite(clip_sigma):
        return good
    widths = [_fwhm(np.asarray(f.psf, float)) / _FWHM_PER_SIGMA for f in inputs]
    target = max(widths)
    scaled = np.empty(good.shape, np.float32)
    variances = np.empty(good.shape, np.float32)
    blurs = [float(np.sqrt(max(target**2 - w**2, 0.0))) for w in widths]

    def match(j: int) -> None:
        scaled[j], variances[j] = _matched(inputs[j], good[j], blurs[j])

    run_threads(match, range(len(inputs)))
    median, count = _nanmedian_frames(scaled)
    # the median is about as noisy as a typical frame of the stack: its variance counts too
    median_variance, _ = _nanmedian_frames(variances)
    enough = count >= 3

    def reject(j: int) -> np.ndarray:
        tolerance = clip_sigma * np.sqrt(variances[j] + median_variance + (clip_ampfrac * median) ** 2)
        outlier = enough & (np.abs(scaled[j] - median) > tolerance)
        grow = 1 + int(np.ceil(2 * blurs[j]))  # the outlier was spread over the matching blur
        return ndimage.binary_dilation(outlier, iterations=grow) & good[j] if outlier.any() else outlier

    return good & ~np.stack(run_threads(reject, range(len(inputs))))


def _nanmedian_frames(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nanmedian(stack, axis=0)`` of an (n, ny, nx) stack and the non-NaN values of each pixel.

    By hand because NumPy's nanmedian along the frames of a stack holding NaN falls back to sorting a
    masked array (6.6 s of a 10-frame co-add of 2048 px, in one thread): here each block of rows is
    sorted along the frames in a thread (NaN sorts last) and the middle one or two of each pixel's
    non-NaN values averaged (NaN where there are none, as NumPy returns).
    """
    median = np.empty(stack.shape[1:], stack.dtype)
    count = np.empty(stack.shape[1:], np.intp)

    def block(rows: tuple[int, int]) -> None:
        values = np.sort(stack[:, rows[0]:rows[1]], axis=0)
        valid = np.count_nonzero(~np.isnan(values), axis=0)
        low = np.take_along_axis(values, (np.maximum(valid - 1, 0) // 2)[None], axis=0)[0]
        high = np.take_along_axis(values, (valid // 2)[None], axis=0)[0]
        median[rows[0]:rows[1]] = 0.5 * (low + high)
        count[rows[0]:rows[1]] = valid

    run_threads(block, row_blocks(stack.shape[1], 4 * n_threads()))
    return median, count


def _matched(frame: CoaddInput, ok: np.ndarray, blur: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame in co-add flux units, blurred by a Gaussian of ``blur`` px to the broadest input's seeing,
    and its variance (NaN where fewer than 90 % of the blurred pixels were usable), float32."""
    scale = float(frame.flux_scale)
    # np.errstate holds for the calling thread only: set here, in the worker thread
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        values = np.where(ok, np.asarray(frame.data, np.float32) / scale, 0.0)
        variance = np.where(ok, np.asarray(frame.variance, np.float32) / scale**2, 0.0)
        if blur < 0.3:  # about the broadest already: compared as it is
            return np.where(ok, values, np.nan), variance
        weight = ndimage.gaussian_filter(ok.astype(np.float32), blur, mode="constant", output=np.float32)
        values = ndimage.gaussian_filter(values, blur, mode="constant", output=np.float32) / weight
        # Var(y (x) G) = V (x) G^2, and G^2 is a Gaussian of blur / sqrt(2) times 1 / (4 pi blur^2)
        variance = ndimage.gaussian_filter(variance, blur / np.sqrt(2), mode="constant", output=np.float32) / (
            4 * np.pi * blur**2 * weight**2)
    return np.where(weight > 0.9, values, np.nan), variance


def _fill_unusable(inputs: Sequence[CoaddInput], used: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each input's (data, variance) with unusable pixels replaced by the others' scaled mean (float32; the
    inputs filled each in a thread)."""
    weight = np.zeros(used.shape[1:], np.float32)
    total = np.zeros(used.shape[1:], np.float32)
    for frame, ok in zip(inputs, used):
        scale = float(frame.flux_scale)
        w = np.where(ok, scale**2 / np.maximum(np.asarray(frame.variance, np.float32), 1e-30), 0.0)
        weight += w
        total += w * np.where(ok, np.asarray(frame.data, np.float32) / scale, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(weight > 0, total / weight, 0.0)
        mean_var = np.where(weight > 0, 1.0 / weight, 0.0)

    def fill(j: int) -> tuple[np.ndarray, np.ndarray]:
        frame, ok, scale = inputs[j], used[j], float(inputs[j].flux_scale)
        return (np.where(ok, np.asarray(frame.data, np.float32), scale * mean),
                np.where(ok, np.asarray(frame.variance, np.float32), scale**2 * mean_var))

    return run_threads(fill, range(len(inputs)))


def _kernels(inputs: Sequence[CoaddInput]) -> tuple[list[np.ndarray], np.ndarray, float, float]:
    """The co-addition kernels k_j (cropped stamps), the co-add's PSF, F_R and the kernel power kept."""
    size = max(np.shape(f.psf)[0] for f in inputs)
    psfs = [_padded(np.asarray(f.psf, float) / np.sum(f.psf), size) for f in inputs]
    grid = fft.next_fast_len(4 * size, real=True)
    spectra = [_trusted_phase(fft.rfft2(_centred(psf, (grid, grid)))) for psf in psfs]
    scales = np.array([f.flux_scale for f in inputs])
    sigmas = np.array([f.sigma for f in inputs])
    flux_zero = float(np.sqrt(np.sum(scales**2 / sigmas**2)))
    power = sum((F**2 / s**2) * np.abs(P) ** 2 for F, s, P in zip(scales, sigmas, spectra))
    den = np.maximum(np.sqrt(power), _DEN_FLOOR * np.sqrt(power.flat[0]))
    kernels, kept = [], 1.0
    for F, s, P in zip(scales, sigmas, spectra):
        full = np.fft.fftshift(fft.irfft2((F / s**2) * np.conj(P) / (den * flux_zero), s=(grid, grid)))
        stamp = _crop(full, 2 * size - 1)
        kept = min(kept, float(np.sum(stamp**2) / np.sum(full**2)))
        kernels.append(stamp)
    # The cropped kernels are what is applied: scale them so the co-add keeps the anchor's fluxes exactly.
    total = sum(F * k.sum() for F, k in zip(scales, kernels))
    kernels = [k / total for k in kernels]
    psf = _crop(sum(F * signal.fftconvolve(k, psf, mode="full") for F, k, psf in zip(scales, kernels, psfs)),
                2 * size - 1)
    return kernels, psf / psf.sum(), flux_zero, kept


def _trusted_phase(spectrum: np.ndarray) -> np.ndarray:
    """The PSF's transform with its modulus, and its phase blended to zero where the modulus is below
    ``_PHASE_TRUST`` (see there): otherwise the kernels conj(P_j^) / den would be all-pass filters with
    random signs at those frequencies, spread over the whole grid."""
    modulus = np.abs(spectrum)
    trust = modulus**2 / (modulus**2 + (_PHASE_TRUST * modulus.flat[0]) ** 2)
    return modulus * np.exp(1j * np.angle(trust * spectrum + (1 - trust) * modulus))


def _centred(stamp: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The stamp embedded in an array of ``shape`` (and its dtype) with its centre at pixel (0, 0) (zero phase)."""
    out = np.zeros(shape, stamp.dtype)
    half = stamp.shape[0] // 2
    out[:stamp.shape[0], :stamp.shape[1]] = stamp
    return np.roll(out, (-half, -half), axis=(0, 1))


def _padded(stamp: np.ndarray, size: int) -> np.ndarray:
    """The odd stamp centred in a size x size array of zeros."""
    pad = (size - stamp.shape[0]) // 2
    return np.pad(stamp, pad)


def _crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centred size x size part of an array whose centre is at ``shape // 2``."""
    cy, cx = image.shape[0] // 2, image.shape[1] // 2
    half = size // 2
    return image[cy - half:cy + half + 1, cx - half:cx + half + 1].copy()


def _apply_kernels(filled: list[tuple[np.ndarray, np.ndarray]], kernels: list[np.ndarray],
                   workers: int) -> tuple[np.ndarray, np.ndarray]:
    """``sum_j k_j (x) M_j`` and ``sum_j k_j^2 (x) V_j``, zero-padded at the borders.

    In float32 (complex64 spectra): the inputs are float32 and so is the co-add returned.
    """
    shape = filled[0][0].shape
    half = kernels[0].shape[0] // 2
    padded = (fft.next_fast_len(shape[0] + 2 * half, real=True), fft.next_fast_len(shape[1] + 2 * half, real=True))
    image_spectrum = np.zeros((padded[0], padded[1] // 2 + 1), np.complex64)
    variance_spectrum = np.zeros_like(image_spectrum)
    for (data, variance), kernel in zip(filled, kernels):
        kernel = kernel.astype(np.float32)
        k, k2 = _centred(kernel, padded), _centred(kernel**2, padded)
        image_spectrum += fft.rfft2(data, s=padded, workers=workers) * fft.rfft2(k, workers=workers)
        variance_spectrum += fft.rfft2(variance, s=padded, workers=workers) * fft.rfft2(k2, workers=workers)
    image = fft.irfft2(image_spectrum, s=padded, workers=workers)[:shape[0], :shape[1]]
    variance = fft.irfft2(variance_spectrum, s=padded, workers=workers)[:shape[0], :shape[1]]
    return image.copy(), np.maximum(variance, 0.0)



@dataclass
class CoaddResult:
    """A co-added reference built from calibrated frames by :func:`coadd_frames`.

    Attributes
    ----------
    planes : ImagePlanes
        The co-add (background-subtracted, anchor's electrons), its variance and mask, on the anchor's
        grid; the header is the anchor's with ``COADDED``, ``NCOMBINE``, ``COADDALG`` and ``ANCHOR``.
    coadd : Coadd
        What :func:`proper_coadd` returned (PSF, noise, weights, coverage, rejections).
    inputs : list of dict
        Per frame, in the order given: ``registration_rms_px``, ``registration_n_matched``
        (None for the anchor), ``flux_scale``, ``flux_scale_err``, ``fwhm_px`` (on the anchor's grid),
        ``sigma_e``, ``weight``, ``n_rejected``.
    quality : dict
        ``n_inputs``, ``anchor``, ``fwhm_px`` (of the co-add's PSF), ``sigma_e``, ``depth_5sigma_e``
        (5-sigma point-source flux, anchor electrons), ``depth_gain_mag`` (over the anchor alone),
        ``registration_rms_px`` (quadratic mean over the registered frames; 0 for one frame),
        ``kernel_power_kept``.
    """

    planes: ImagePlanes
    coadd: Coadd
    inputs: list[dict]
    quality: dict


def coadd_frames(frames: Sequence[ImagePlanes], params: DifferenceParams | None = None, *, anchor: int = 0,
                 characterizations: Sequence[ImageCharacterization | None] | None = None,
                 clip_sigma: float = 4.0, clip_ampfrac: float = 0.3) -> CoaddResult:
    """Register, scale and properly co-add calibrated frames of one field and band.

    Each frame is characterized as :func:`~dagster_project.science.difference.difference_images`
    characterizes a reference (background, stars, PSF), registered onto the anchor's grid by its
    stars, resampled, its PSF fitted again there, and scaled to the anchor's fluxes by matched-star
    PSF photometry; :func:`proper_coadd` then combines them.

    Parameters
    ----------
    frames : sequence of ImagePlanes
        Calibrated frames (e-, sky included), variance, mask, TAN WCS.
    params : DifferenceParams, optional
        The background, star, PSF, registration and flux-scale parameters.
    anchor : int
        The frame whose grid and flux scale the co-add takes (e.g. the best seeing).
    characterizations : sequence, optional
        Precomputed :func:`characterize_for_difference` per frame (None entries are computed).
    clip_sigma, clip_ampfrac : float
        Outlier rejection (see :func:`proper_coadd`).

    Returns
    -------
    CoaddResult

    Raises
    ------
    PSFError, RegistrationError, FluxScaleError
        Naming the frame (``frame <i>``) and the reason.

    Examples
    --------
    Two noisy exposures of a star field, the second shifted by (3, -2) pixels:

    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from dagster_project.science.coadd import coadd_frames
    >>> from dagster_project.science.images import ImagePlanes
    >>> rng = np.random.default_rng(0)
    >>> y, x = np.mgrid[0:160, 0:160]
    >>> stars = rng.uniform(15, 145, (40, 2)); fluxes = rng.uniform(2e4, 2e5, 40)
    >>> def exposure(dx, dy):
    ...     scene = sum(f * np.exp(-((x - sx - dx)**2 + (y - sy - dy)**2) / 4.5) / (4.5 * np.pi)
    ...                 for (sx, sy), f in zip(stars, fluxes))
    ...     image = 100 + scene + rng.normal(0, np.sqrt(100 + scene))
    ...     wcs = WCS(naxis=2); wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]; wcs.wcs.crval = [10, 20]
    ...     wcs.wcs.crpix = [80 + dx, 80 + dy]; wcs.wcs.cdelt = [-1e-4, 1e-4]
    ...     return ImagePlanes(image.astype(np.float32), (100 + scene).astype(np.float32),
    ...                        np.zeros((160, 160), np.uint16), wcs.to_header())
    >>> result = coadd_frames([exposure(0, 0), exposure(3, -2)])
    >>> result.quality["n_inputs"], round(result.inputs[1]["flux_scale"], 2)
    (2, 1.0)
    >>> round(result.quality["depth_gain_mag"], 1)  # two equal frames: 2.5 log10(sqrt(2))
    0.4
    """
    params = DifferenceParams() if params is None else params
    if not frames or not 0 <= anchor < len(frames):
        raise ValueError(f"coadd_frames needs frames and an anchor among them, got {len(frames)} and {anchor}")
    given = list(characterizations) if characterizations is not None else [None] * len(frames)
    # One frame after the other: their steps are threaded inside already (resampling, backgrounds), a frame per
    # thread measured no faster, and photutils' "no sources" warning is silenced with warnings.catch_warnings,
    # which is not thread-safe (a filter could be left behind for the whole process).
    chars = [given[i] or characterize_for_difference(frames[i], params, f"frame {i}") for i in range(len(frames))]
    base = _Anchor.of(frames[anchor], chars[anchor])
    registered = [(base.input, _anchor_figures(chars[anchor])) if i == anchor else
                  _registered_input(i, frames[i], chars[i], base, params) for i in range(len(frames))]
    inputs, figures = [entry for entry, _ in registered], [figure for _, figure in registered]
    coadd = proper_coadd(inputs, clip_sigma=clip_sigma, clip_ampfrac=clip_ampfrac, workers=params.fft_workers)
    for figure, weight, rejected in zip(figures, coadd.weights, coadd.n_rejected):
        figure.update(weight=float(weight), n_rejected=int(rejected))
    return CoaddResult(_coadd_planes(coadd, frames[anchor], len(frames), anchor), coadd, figures,
                       _coadd_quality(coadd, figures, chars[anchor], anchor))


@dataclass
class _Anchor:
    """The frame every other is registered onto and scaled to."""

    planes: ImagePlanes  # background-subtracted
    char: ImageCharacterization
    positions: Table  # PSF-fitted star positions
    input: CoaddInput

    @classmethod
    def of(cls, frame: ImagePlanes, char: ImageCharacterization) -> "_Anchor":
        planes = ImagePlanes(subtract_background(frame, char.background), frame.variance, frame.mask, frame.header)
        return cls(planes, char, _fitted_positions(planes.data, planes, char),
                   CoaddInput(planes.data, planes.variance, planes.mask, char.psf.stamp, 1.0, char.sky_rms))


def _anchor_figures(char: ImageCharacterization) -> dict:
    return {"registration_rms_px": None, "registration_n_matched": None, "flux_scale": 1.0, "flux_scale_err": 0.0,
            "fwhm_px": char.psf.fwhm_px, "sigma_e": char.sky_rms}


def _fitted_positions(image: np.ndarray, planes: ImagePlanes, char: ImageCharacterization) -> Table:
    found = psf_photometry(image, planes.variance, planes.mask, char.psf, char.stars["x"], char.stars["y"],
                           fit_positions=True)
    return found[np.isfinite(found["flux"])]


def _registered_input(index: int, frame: ImagePlanes, char: ImageCharacterization, anchor: _Anchor,
                      params: DifferenceParams) -> tuple[CoaddInput, dict]:
    """Frame ``index`` on the anchor's grid, with its PSF there and its flux scale (F_j)."""
    image = subtract_background(frame, char.background)
    registration = register_images(
        anchor.positions, _fitted_positions(image, frame, char), anchor.planes.wcs, frame.wcs,
        match_radius=params.match_radius_px, max_wcs_offset=params.max_wcs_offset_px,
        min_matches=params.min_matches, max_rms=params.max_registration_rms_px)
    resampled = resample_planes(ImagePlanes(image, frame.variance, frame.mask, frame.header), registration,
                                anchor.planes.shape, anchor.planes.wcs.to_header(relax=True),
                                order=params.interpolation_order)
    x = np.asarray(anchor.positions["x"])[registration.new_index]
    y = np.asarray(anchor.positions["y"])[registration.new_index]
    psf = _resampled_psf(index, resampled, x, y, char.psf, params)
    fluxes = measure_matched_fluxes(anchor.planes, resampled, anchor.char.psf, psf, x, y)
    scale = flux_ratio(fluxes["new_flux"], fluxes["ref_flux"], fluxes["new_flux_err"], fluxes["ref_flux_err"],
                       min_stars=params.min_flux_stars)
    figures = {"registration_rms_px": registration.rms, "registration_n_matched": registration.n_matched,
               "flux_scale": scale.ratio, "flux_scale_err": scale.ratio_err, "fwhm_px": psf.fwhm_px,
               "sigma_e": char.sky_rms}
    return CoaddInput(resampled.data, resampled.variance, resampled.mask, psf.stamp, scale.ratio,
                      char.sky_rms), figures


def _resampled_psf(index: int, resampled: ImagePlanes, x: np.ndarray, y: np.ndarray, native: PSFModel,
                   params: DifferenceParams) -> PSFModel:
    stars = Table({"x": x, "y": y, "flux": np.ones(len(x)), "fwhm": np.full(len(x), native.fwhm_px)})
    try:
        return estimate_psf(resampled.data, resampled.variance, resampled.mask, stars, params.psf_stamp_size,
                            max_stars=params.max_psf_stars, min_stars=params.min_psf_stars)
    except PSFError as exc:
        raise PSFError(f"frame {index} resampled: {exc}") from exc


def _coadd_planes(coadd: Coadd, anchor: ImagePlanes, n_inputs: int, anchor_index: int) -> ImagePlanes:
    header = anchor.header.copy()
    header["COADDED"] = (True, "proper co-add, Zackay & Ofek 2017")
    header["NCOMBINE"] = (n_inputs, "frames co-added")
    header["COADDALG"] = ("ZO17", "co-addition algorithm")
    header["ANCHOR"] = (anchor_index, "input giving grid and flux scale")
    header["BKGSUB"] = (True, "background subtracted")
    return ImagePlanes(coadd.image, coadd.variance, coadd.mask, header)


def _coadd_quality(coadd: Coadd, figures: list[dict], anchor_char: ImageCharacterization, anchor: int) -> dict:
    depth = 5.0 * coadd.sigma / float(np.sqrt(np.sum(coadd.psf**2)))
    anchor_depth = 5.0 * anchor_char.sky_rms / float(np.sqrt(np.sum(np.asarray(anchor_char.psf.stamp) ** 2)))
    rms = [f["registration_rms_px"] for f in figures if f["registration_rms_px"] is not None]
    return {"n_inputs": len(figures), "anchor": anchor, "fwhm_px": _fwhm(coadd.psf), "sigma_e": coadd.sigma,
            "depth_5sigma_e": depth, "depth_gain_mag": float(2.5 * np.log10(anchor_depth / depth)),
            "registration_rms_px": float(np.sqrt(np.mean(np.square(rms)))) if rms else 0.0,
            "kernel_power_kept": coadd.kernel_power_kept}


def _fwhm(psf: np.ndarray, bin_px: float = 0.5) -> float:
    """FWHM (px) of a centred stamp: twice the radius where its azimuthal mean profile falls to half
    its central value (linear between radial bins of ``bin_px``)."""
    centre = psf.shape[0] // 2
    y, x = np.indices(psf.shape)
    radius = np.hypot(x - centre, y - centre).ravel()
    bins = np.floor(radius / bin_px).astype(int)
    counts = np.bincount(bins)
    profile = np.bincount(bins, psf.ravel()) / np.maximum(counts, 1)
    radii = np.bincount(bins, radius) / np.maximum(counts, 1)
    used = counts > 0
    profile, radii = profile[used], radii[used]
    half = 0.5 * psf[centre, centre]
    below = int(np.argmax(profile < half))
    if below == 0:
        return float("nan")
    r0, r1, p0, p1 = radii[below - 1], radii[below], profile[below - 1], profile[below]
    return float(2.0 * (r0 + (p0 - half) * (r1 - r0) / (p0 - p1)))
