"""Proper image subtraction of Zackay, Ofek & Gal-Yam (2016, ApJ 830, 27; "ZOGY").

Written here by hand: no well-kept Python library offers a fast and correct
ZOGY (the public ones are unmaintained scripts, or slow because they refit the
flux ratio and shifts inside, or do not carry the source-noise and
astrometric variance terms), and the algorithm is a few dozen lines of
Fourier-space algebra.

Conventions
-----------
* ``new`` (N) and ``ref`` (R) are background-subtracted images in electrons on
  the SAME pixel grid (the reference resampled onto the new image's grid).
* ``flux_new`` = F_n and ``flux_ratio_ref`` = F_r are the flux zero points of
  the paper: a source of flux ``f`` (in the units of ``new`` divided by F_n)
  has ``F_n * f`` electrons in N and ``F_r * f`` in R. With the default
  ``F_n = 1``, fluxes are in new-image electrons and
  ``F_r = (reference flux) / (new flux)`` of the same star.
* Sign: D and S are positive where the new image is brighter than the
  reference (a brightening or new source), negative where it is fainter.
* PSFs are odd stamps centred on their central pixel; they are normalised to
  unit sum here.

Equations (numbers of the published ApJ paper)
---------------------------------------------
* eq. 13: D^ = (F_r P_r^ N^ - F_n P_n^ R^) / sqrt(sigma_n^2 F_r^2 |P_r^|^2 + sigma_r^2 F_n^2 |P_n^|^2)
* eq. 14: P_D^ = F_r F_n P_r^ P_n^ / (F_D sqrt(...)),  eq. 15: F_D = F_r F_n / sqrt(sigma_n^2 F_r^2 + sigma_r^2 F_n^2)
* eqs. 12/17: S = F_D D (x) conj(P_D) = S_N - S_R with S_N = k_n (x) N, S_R = k_r (x) R
* eqs. 28-29: k_r^ = F_r F_n^2 conj(P_r^) |P_n^|^2 / den,  k_n^ = F_n F_r^2 conj(P_n^) |P_r^|^2 / den
* eqs. 26-27: V(S_N) = V_n (x) k_n^2,  V(S_R) = V_r (x) k_r^2, with V_n, V_r the full per-pixel
  variance maps (background + source noise), so that S_corr has unit variance in pure noise
* eqs. 30-33: V_ast = sigma_x^2 [(dS_N/dx)^2 + (dS_R/dx)^2] + sigma_y^2 [(dS_N/dy)^2 + (dS_R/dy)^2]
* eq. 25: S_corr = S / sqrt(V(S_N) + V(S_R) + V_ast)
* eqs. 41-43: PSF-photometry flux alpha = S / F_S, F_S = sum_f F_n^2 F_r^2 |P_n^|^2 |P_r^|^2 / den,
  error sqrt(V(S_N) + V(S_R)) / F_S

Implementation notes
--------------------
* Edges: the images are zero-padded (they are background-subtracted, so 0 is
  the sky) by at least the kernel size, and the variance maps with them;
  since masked and padded pixels carry zero signal AND zero variance,
  S_corr stays unit-variance up to the frame and mask borders (no
  wrap-around, no reflected noise). Stars cut by the frame border cannot
  cancel exactly; their residual stays within a few pixels of the border.
* Masked or non-finite pixels are set to 0 with variance 0 in BOTH images
  before the transforms, and to NaN in every output map, as are the pixels
  where flux hidden under them (a masked star core) could leave a residual
  (see ``hidden_new``).
* PSF stamps are embedded with their centre at pixel (0, 0) of the padded
  grid (``ifftshift``), so their transforms are zero-phase.
* FFTs of the padded size (5-smooth lengths on both axes) in float32: 4
  forward (N, R, V_n, V_r), 4 inverse (D, S_N, S_R, V_S; 3 without the
  astrometric term; along x only on the rows kept) and 4 half-cost
  transforms of the stamps (P_n, P_r, k_n^2, k_r^2): about 14
  rfft2-equivalents of the unpadded image at 2048^2. The kernels (cropped
  to the larger stamp size), P_D and F_S are computed on a small grid in
  float64.
* The element-wise work (exclusion mask, Fourier-space algebra, V_ast,
  output maps) runs over blocks of rows in ``workers`` threads, with
  block-sized temporaries that stay in cache instead of image-sized ones.
* The bound on the flux hidden under excluded pixels is computed on a grid
  ``LEAK_BLOCK`` = 4 times coarser (block sums of the hidden flux
  convolved with the block maxima of max(|k_n|, |k_r|)): still an upper
  bound of the full-resolution one at every pixel, at 1/16 of its cost;
  it blanks a few more pixels around each masked star core.
* D is unit-variance white noise except at frequencies where both PSFs have
  less than 1e-12 of their zero-frequency power (float32 round-off), which
  are not amplified.

Flux hidden under masks
-----------------------
``hidden_new`` and ``hidden_ref`` estimate the flux each image's scene has
at the excluded pixels, which the exclusion removes: e.g. the core of a
saturated star, or a star under the other image's bad column. Zeroing a
masked star core in both images leaves ``k_r (x) (R M) - k_n (x) (N M)`` in
S, a residual the size of the kernels that no variance term describes;
``max(|k_n|, |k_r|) (x) (hidden_new + hidden_ref) / sqrt(V)`` bounds it, and
output pixels where the bound exceeds ``max_hidden_sigma`` are invalid (NaN,
flagged in ``mask``). The bound grows with the hidden flux, so the invalid
zone around a masked star grows with its brightness. Sky noise under a mask
must not be included (it would blank the borders of every mask).

Steps of :func:`zogy`
---------------------
1. :func:`_check_inputs`, :func:`_check_psf`: shapes, scalars and PSF stamps.
2. :func:`_plan`: F_D, the denominator weights, the padded FFT shape and the
   kernels on a small grid (:func:`_small_grid_kernels`).
3. :func:`_exclusions`: masked, non-finite or negative-variance pixels.
4. :func:`_transforms`: D, S_N and S_R (or S), and V_S, by FFTs.
5. :func:`_hidden_flux_bound`: the bound of the residual of hidden flux.
6. :func:`_output_maps`: S, S_corr, flux and flux_err, invalid pixels NaN.
7. :func:`_result`: the :class:`ZogyResult` with the robust noise figures.
"""

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from .parallel import RowBlocks, threads_for

__all__ = ["LEAK_BLOCK", "ZogyResult", "robust_std", "zogy"]

#: Frequencies where both PSFs have less power than this (relative to the zero
#: frequency) are not amplified in D: below it the float32 transforms are round-off.
_DEN_FLOOR = 1e-12

#: Side (px) of the blocks over which the hidden-flux bound is computed and held constant.
LEAK_BLOCK = 4



@dataclass
class ZogyResult:
    """Outputs of :func:`zogy`, all on the new image's pixel grid.

    Attributes
    ----------
    D : ndarray, float32
        Proper difference image: white noise of unit variance where the
        background dominates; a point source of flux ``f`` appears in it with
        PSF ``P_D`` and total flux ``f * F_D``.
    P_D : ndarray
        PSF of D, odd stamp centred on its central pixel, sum 1.
    F_D : float
        Flux zero point of D (eq. 15).
    S : ndarray, float32
        Matched-filter score image (eq. 12): at a point source ``S = alpha * F_S``.
    S_corr : ndarray, float32
        S divided by its standard deviation including source noise and
        astrometric noise (eq. 25): unit variance in pure noise, the
        detection significance in sigma.
    flux : ndarray, float32
        PSF-photometry flux ``alpha = S / F_S`` of a point source centred on
        each pixel, in units of ``new / F_n`` (new-image e- when F_n = 1);
        positive for a brightening.
    flux_err : ndarray, float32
        One-sigma statistical error of ``flux`` (without the astrometric term).
    F_S : float
        Normalisation of S (eq. 42).
    mask : ndarray of bool
        True where the outputs are NaN (masked, non-finite input, zero
        variance, or within reach of hidden flux; see :func:`zogy`).
    sigma_new, sigma_ref : float
        Background noise (e-) used in the denominators.
    flux_new, flux_ratio_ref : float
        F_n and F_r used.
    astrometric_rms : tuple of float
        ``(sigma_x, sigma_y)`` in pixels used for V_ast.
    scorr_std, d_std : float
        Robust (MAD) standard deviation of S_corr and of D over valid pixels:
        ~1 for a good subtraction.
    """

    D: np.ndarray
    P_D: np.ndarray
    F_D: float
    S: np.ndarray
    S_corr: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    F_S: float
    mask: np.ndarray
    sigma_new: float
    sigma_ref: float
    flux_new: float
    flux_ratio_ref: float
    astrometric_rms: tuple[float, float]
    scorr_std: float
    d_std: float


def _check_psf(psf: np.ndarray, name: str) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or min(psf.shape) < 3 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise ValueError(f"{name} must be a 2-D stamp with odd sides >= 3, got shape {psf.shape}")
    total = psf.sum()
    if not np.all(np.isfinite(psf)) or not total > 0:
        raise ValueError(f"{name} must be finite with a positive sum")
    return psf / total


def _embed(stamp: np.ndarray, shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """Zero array of ``shape`` holding an odd ``stamp`` with its centre at [0, 0], wrapped (ifftshift)."""
    out = np.zeros(shape, dtype=dtype)
    h0, h1 = stamp.shape[0] // 2, stamp.shape[1] // 2
    out[: h0 + 1, : h1 + 1] = stamp[h0:, h1:]
    out[: h0 + 1, -h1:] = stamp[h0:, :h1]
    out[-h0:, : h1 + 1] = stamp[:h0, h1:]
    out[-h0:, -h1:] = stamp[:h0, :h1]
    return out


def _centre_crop(wrapped: np.ndarray, size: int) -> np.ndarray:
    """Centred ``size`` x ``size`` stamp of an array whose origin is at [0, 0] (inverse of _embed)."""
    h = size // 2
    shifted = np.fft.fftshift(wrapped)
    c0, c1 = wrapped.shape[0] // 2, wrapped.shape[1] // 2
    return shifted[c0 - h : c0 + h + 1, c1 - h : c1 + h + 1]


@dataclass
class _SmallGridKernels:
    kn: np.ndarray  # k_n, centred odd stamp
    kr: np.ndarray  # k_r
    P_D: np.ndarray
    F_S: float

    @property
    def reach(self) -> np.ndarray:
        """``max(|k_n|, |k_r|)``: the kernel that bounds the residual of hidden flux."""
        return np.maximum(np.abs(self.kn), np.abs(self.kr))


def _small_grid_kernels(psf_n, psf_r, a, b, Fn, Fr, F_D, size) -> _SmallGridKernels:
    """k_n, k_r, P_D and F_S from the PSF stamps on a small float64 grid."""
    n = fft.next_fast_len(4 * size)
    Pn = fft.fft2(_embed(psf_n, (n, n), np.float64))
    Pr = fft.fft2(_embed(psf_r, (n, n), np.float64))
    Pn2, Pr2 = np.abs(Pn) ** 2, np.abs(Pr) ** 2
    den = np.maximum(a * Pr2 + b * Pn2, _DEN_FLOOR * (a + b))
    kn = fft.ifft2(Fn * Fr**2 * np.conj(Pn) * Pr2 / den).real
    kr = fft.ifft2(Fr * Fn**2 * np.conj(Pr) * Pn2 / den).real
    pd = fft.ifft2(Fr * Fn * Pr * Pn / (F_D * np.sqrt(den))).real
    P_D = _centre_crop(pd, size)
    return _SmallGridKernels(
        kn=_centre_crop(kn, size),
        kr=_centre_crop(kr, size),
        P_D=P_D / P_D.sum(),
        F_S=float(np.sum(Fn**2 * Fr**2 * Pn2 * Pr2 / den) / n**2),
    )


def _excluded_pixels(new, ref, var_new, var_ref, mask, blocks: RowBlocks) -> np.ndarray:
    """True where any input is non-finite, a variance is negative, or ``mask`` is non-zero."""
    out = np.empty(new.shape, dtype=bool)

    def block(rows):
        ok = np.isfinite(new[rows])
        for image in (ref, var_new, var_ref):
            ok &= np.isfinite(image[rows])
        ok &= var_new[rows] >= 0
        ok &= var_ref[rows] >= 0
        if mask is not None:
            ok &= mask[rows] == 0
        np.logical_not(ok, out=out[rows])

    blocks.run(block, new.shape[0], new.shape[1])
    return out


def _stamp_rfft2(stamp: np.ndarray, shape: tuple[int, int], workers: int, out: np.ndarray | None = None) -> np.ndarray:
    """``rfft2(_embed(stamp, shape))`` (complex64) at about half the cost, written into ``out`` if given.

    Only the stamp's rows are non-zero, so the transform along x is done on
    those rows alone; the transform along y then runs in place on the full
    height.
    """
    h0, h1 = stamp.shape[0] // 2, stamp.shape[1] // 2
    rows = np.zeros((stamp.shape[0], shape[1]), dtype=np.float32)
    rows[:, : h1 + 1] = stamp[:, h1:]
    rows[:, -h1:] = stamp[:, :h1]
    along_x = fft.rfft(rows, axis=1, workers=workers)
    if out is None:
        full = np.zeros((shape[0], along_x.shape[1]), dtype=np.complex64)
    else:
        full = out
        full[h0 + 1 : -h0] = 0
    full[: h0 + 1] = along_x[h0:]
    full[-h0:] = along_x[:h0]
    return fft.fft(full, axis=0, workers=workers, overwrite_x=True)


def _forward(image: np.ndarray, excluded: tuple[np.ndarray, np.ndarray], buffer: np.ndarray, blocks: RowBlocks,
             workers: int) -> np.ndarray:
    """rfft2 of ``image`` with the pixels ``excluded`` (row and column indices) set to 0, zero-padded.

    ``buffer`` (float32, the padded shape) must hold 0 outside the image;
    it is reused by every image of a call.
    """
    ny, nx = image.shape

    def fill(rows):
        np.copyto(buffer[rows, :nx], image[rows], casting="same_kind")

    blocks.run(fill, ny, nx)
    buffer[excluded] = 0
    return fft.rfft2(buffer, workers=workers)


def _inverse(spectrum: np.ndarray, shape: tuple[int, int], ny: int, nx: int, workers: int) -> np.ndarray:
    """``irfft2(spectrum, s=shape)[:ny, :nx]``, overwriting ``spectrum``.

    The transform along y runs in place; the one along x only on the ``ny``
    rows that are kept.
    """
    spectrum = fft.ifft(spectrum, axis=0, workers=workers, overwrite_x=True)
    return fft.irfft(spectrum[:ny], n=shape[1], axis=1, workers=workers)[:, :nx]


def _difference_spectra(A, B, Pn, Pr, a, b, Fn, Fr, separate: bool, blocks: RowBlocks) -> None:
    """The ZOGY Fourier-space algebra, in place, one block of rows at a time.

    On entry A = N^, B = R^, Pn = P_n^, Pr = P_r^; on exit Pn = D^ (eq. 13)
    and A = S_N^ = k_n^ N^, B = S_R^ = k_r^ R^ (eqs. 28-29), or, without
    ``separate``, A = S^ = S_N^ - S_R^ (B is then scratch). The scalar
    factors ride on the real arrays, so that each complex array is
    multiplied as few times as possible.
    """
    floor = np.float32(_DEN_FLOOR * (a + b))

    def block(rows):
        n_hat, r_hat, pn, pr = A[rows], B[rows], Pn[rows], Pr[rows]
        weight_n, weight_r, scale, tmp = blocks.scratch(4, pn.shape, np.float32)
        d_hat, part = blocks.scratch(2, pn.shape, np.complex64)
        np.square(pn.real, out=weight_r)
        weight_r += np.square(pn.imag, out=tmp)
        weight_r *= b
        np.square(pr.real, out=weight_n)
        weight_n += np.square(pr.imag, out=tmp)
        weight_n *= a
        np.add(weight_n, weight_r, out=scale)
        np.maximum(scale, floor, out=scale)
        np.reciprocal(scale, out=scale)  # 1 / den
        weight_n *= scale
        weight_n *= Fn * Fr**2 / a  # k_n^ = weight_n conj(P_n^)
        weight_r *= scale
        weight_r *= Fr * Fn**2 / b  # k_r^ = weight_r conj(P_r^)
        np.sqrt(scale, out=scale)
        scale *= Fr  # D^ = (P_r^ N^ - (F_n / F_r) P_n^ R^) F_r / sqrt(den)
        np.multiply(pr, n_hat, out=d_hat)
        np.multiply(pn, r_hat, out=part)
        part *= Fn / Fr
        d_hat -= part
        n_hat *= np.conjugate(pn, out=pn)
        n_hat *= weight_n
        r_hat *= np.conjugate(pr, out=pr)
        r_hat *= weight_r
        if not separate:
            n_hat -= r_hat
        np.multiply(d_hat, scale, out=pn)

    blocks.run(block, A.shape[0], A.shape[1])


def _variance_spectrum(V, Vr, K2n, K2r, blocks: RowBlocks) -> None:
    """``V <- V K2n + Vr K2r`` in place (the transform of V(S_N) + V(S_R), eqs. 26-27); Vr is scratch."""

    def block(rows):
        V[rows] *= K2n[rows]
        Vr[rows] *= K2r[rows]
        V[rows] += Vr[rows]

    blocks.run(block, V.shape[0], V.shape[1])


def _block_max_kernel(kernel: np.ndarray, factor: int) -> np.ndarray:
    """Kernel on a grid ``factor`` times coarser that bounds ``kernel`` (>= 0) between any two blocks.

    ``K_c[J] = max K(factor * J + w)`` over the offsets ``|w| < factor`` (each
    axis): a pixel y of block Y and a pixel x of block X are
    ``factor * (Y - X) + w`` apart with such a w, so ``K(y - x) <= K_c[Y - X]``.
    Odd and centred, like ``kernel``.
    """
    half = np.array(kernel.shape) // 2
    coarse_half = (half + factor - 1) // factor
    pad = factor * coarse_half + factor - 1 - half
    grown = ndimage.maximum_filter(np.pad(kernel, [(p, p) for p in pad]), size=2 * factor - 1, mode="constant")
    return grown[factor - 1 :: factor, factor - 1 :: factor][: 2 * coarse_half[0] + 1, : 2 * coarse_half[1] + 1]


def _convolve(image: np.ndarray, kernel: np.ndarray, workers: int) -> np.ndarray:
    """``image (x) kernel`` in float64 on the grid of ``image`` (zero outside it), ``kernel`` odd and centred."""
    h0, h1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    shape = tuple(fft.next_fast_len(n + 2 * h, real=True) for n, h in zip(image.shape, (h0, h1)))
    spectrum = fft.rfft2(image, s=shape, workers=workers)
    spectrum *= fft.rfft2(kernel, s=shape, workers=workers)
    full = fft.irfft2(spectrum, s=shape, workers=workers, overwrite_x=True)
    return full[h0 : h0 + image.shape[0], h1 : h1 + image.shape[1]]


def _hidden_flux_bound(hidden_maps, excluded: tuple[np.ndarray, np.ndarray], shape: tuple[int, int],
                       kernel: np.ndarray, factor: int, workers: int) -> np.ndarray | None:
    """Upper bound of ``kernel (x) hidden``, constant over ``factor`` x ``factor`` blocks of pixels.

    ``hidden`` is the positive flux of the maps summed, at the ``excluded``
    pixels (row and column indices) only, on an image of ``shape``;
    ``kernel`` >= 0. Each block's hidden flux is summed, and
    the block sums convolved with :func:`_block_max_kernel` on the coarse
    grid: a bound of the full-resolution convolution at every pixel of the
    block, at 1 / factor^2 of its cost. The hidden flux sits in a few
    masked star cores, and the looser bound only widens the blanked zone
    around them by a few pixels.

    Returns
    -------
    ndarray or None
        float64, ``ceil(ny / factor)`` x ``ceil(nx / factor)``: element
        (Y, X) bounds the pixels ``[factor Y, factor (Y + 1)) x
        [factor X, factor (X + 1))``. None when no excluded pixel hides flux.
    """
    ys, xs = excluded
    flux = np.zeros(ys.size)
    for hidden in hidden_maps:
        if hidden is not None:
            values = np.asarray(hidden)[ys, xs]
            flux += np.where(values > 0, values, 0)  # NaN counts as nothing
    if not flux.any():
        return None
    coarse = (-(-shape[0] // factor), -(-shape[1] // factor))
    sums = np.bincount((ys // factor) * coarse[1] + xs // factor, weights=flux, minlength=coarse[0] * coarse[1])
    return _convolve(sums.reshape(coarse), _block_max_kernel(kernel, factor), workers)


def _variance_thresholds(leak: np.ndarray, max_hidden_sigma: float, nx: int, factor: int) -> np.ndarray:
    """``(leak / max_hidden_sigma)^2`` (float32), repeated along x to ``nx`` pixels; one row per block row.

    A pixel whose S variance is below its block's value has a hidden-flux
    bound above ``max_hidden_sigma`` times its S noise. Overwrites ``leak``.
    """
    np.maximum(leak, 0, out=leak)  # FFT round-off
    leak /= max_hidden_sigma
    squared = np.square(leak, out=leak).astype(np.float32)
    return np.broadcast_to(squared[:, :, None], (*squared.shape, factor)).reshape(squared.shape[0], -1)[:, :nx]


def _below_block_rows(values: np.ndarray, rows: slice, thresholds: np.ndarray, factor: int) -> np.ndarray:
    """``values < thresholds`` of the pixel rows ``rows`` (``rows.start`` a multiple of ``factor``).

    ``thresholds`` holds one row per ``factor`` pixel rows (see
    :func:`_variance_thresholds`); compared by broadcasting, without
    repeating them, except on a last, partial block.
    """
    n = rows.stop - rows.start
    part = thresholds[rows.start // factor : -(-rows.stop // factor)]
    if n % factor:
        return values < np.repeat(part, factor, axis=0)[:n]
    return (values.reshape(-1, factor, values.shape[1]) < part[:, None, :]).reshape(values.shape)


def _twice_derivative(image: np.ndarray, rows: slice, axis: int, out: np.ndarray) -> np.ndarray:
    """``2 d image / d axis`` on the image rows ``rows``, into ``out``.

    By the rule of ``np.gradient`` (central differences inside, one-sided
    at the image borders), written out because its overhead per call
    exceeds the arithmetic on a block of rows; doubled, which saves halving
    the central differences. Along y, the rows either side of the slice
    are read.
    """
    if axis == 1:
        part = image[rows]
        np.subtract(part[:, 2:], part[:, :-2], out=out[:, 1:-1])
        np.subtract(part[:, 1], part[:, 0], out=out[:, 0])
        np.subtract(part[:, -1], part[:, -2], out=out[:, -1])
        out[:, 0] *= 2
        out[:, -1] *= 2
        return out
    n = image.shape[0]
    lo, hi = max(rows.start, 1), min(rows.stop, n - 1)  # rows with a neighbour on both sides
    np.subtract(image[lo + 1 : hi + 1], image[lo - 1 : hi - 1], out=out[lo - rows.start : hi - rows.start])
    if rows.start == 0:
        np.subtract(image[1], image[0], out=out[0])
        out[0] *= 2
    if rows.stop == n:
        np.subtract(image[n - 1], image[n - 2], out=out[-1])
        out[-1] *= 2
    return out


def _add_astrometric_variance(total: np.ndarray, S_N: np.ndarray, S_R: np.ndarray, rows: slice,
                              axis_weights: tuple[float, float], scratch: np.ndarray) -> None:
    """``total += sum over axes of weight * ((d S_N / d axis)^2 + (d S_R / d axis)^2)`` on ``rows`` (eqs. 30-33).

    ``axis_weights`` = (sigma_y^2, sigma_x^2); ``scratch``: two arrays shaped like ``total``, stacked.
    """
    both, other = scratch
    for axis, weight in enumerate(axis_weights):
        if weight > 0:
            np.square(_twice_derivative(S_N, rows, axis, both), out=both)
            np.square(_twice_derivative(S_R, rows, axis, other), out=other)
            both += other
            both *= weight / 4
            total += both


def _median(values: np.ndarray):
    """Median of a 1-D array without NaN, as ``np.median`` gives it; NaN if empty.

    A third of ``np.median``'s time: it also partitions out the largest
    value, to look for NaN.
    """
    half = values.size // 2
    if values.size == 0:
        return np.nan
    if values.size % 2:
        return np.partition(values, half)[half]
    part = np.partition(values, (half - 1, half))
    return (part[half - 1] + part[half]) / 2


def robust_std(sample: np.ndarray) -> float:
    """``astropy.stats.mad_std(sample, ignore_nan=True)``: 1.4826 times the median absolute deviation."""
    values = sample[~np.isnan(sample)]
    np.subtract(values, _median(values), out=values)
    np.abs(values, out=values)
    return float(_median(values) * 1.482602218505602)


@dataclass
class _Maps:
    S: np.ndarray
    S_corr: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray


def _output_maps(D, S_parts, V_S, bad, leak, *, floor, axis_weights, max_hidden_sigma, F_S,
                 blocks: RowBlocks) -> _Maps:
    """S, S_corr, flux and flux_err from the inverse transforms, one block of rows at a time.

    ``S_parts`` is ``(S_N, S_R)`` (then V_ast, eqs. 30-33, is added with
    ``axis_weights`` = (sigma_y^2, sigma_x^2)) or ``(S,)``. ``bad`` (the excluded
    pixels) is extended in place with the pixels whose V_S is at most
    ``floor`` and those where the hidden-flux bound ``leak`` (coarse, see
    :func:`_hidden_flux_bound`; or None) exceeds ``max_hidden_sigma`` times
    the S noise; they are set to NaN in every map, D included. flux_err
    overwrites V_S, and without V_ast, S is the given S.
    """
    ny, nx = D.shape
    S = np.empty((ny, nx), dtype=np.float32) if len(S_parts) == 2 else S_parts[0]
    maps = _Maps(S=S, S_corr=np.empty_like(S), flux=np.empty_like(S), flux_err=V_S)
    nan = np.float32(np.nan)
    thresholds = None if leak is None else _variance_thresholds(leak, max_hidden_sigma, nx, LEAK_BLOCK)

    def block(rows):
        v_s, s_corr = V_S[rows], maps.S_corr[rows]
        blank = bad[rows]
        blank |= ~(v_s > floor)  # no unmasked data within a kernel's reach
        if len(S_parts) == 2:
            s = np.subtract(S_parts[0][rows], S_parts[1][rows], out=S[rows])
            v_total = s_corr  # S_corr's rows hold V_total until its square root
            np.copyto(v_total, v_s)
            _add_astrometric_variance(v_total, *S_parts, rows, axis_weights, blocks.scratch(2, v_s.shape, np.float32))
        else:
            s, v_total = S[rows], v_s
        if thresholds is not None:
            blank |= _below_block_rows(v_total, rows, thresholds, LEAK_BLOCK)
        with np.errstate(invalid="ignore"):  # V < 0 only from round-off where nothing is valid (blank)
            np.sqrt(v_total, out=s_corr)
            flux_err = np.sqrt(v_s, out=v_s)
        for image in (s, flux_err, D[rows]):
            np.copyto(image, nan, where=blank)
        np.divide(s, s_corr, out=s_corr)  # NaN where blank, through s
        flux_err /= F_S
        np.divide(s, F_S, out=maps.flux[rows])

    blocks.run(block, ny, nx, multiple=LEAK_BLOCK)
    return maps


def zogy(
    new: np.ndarray, ref: np.ndarray, psf_new: np.ndarray, psf_ref: np.ndarray, *,
    var_new: np.ndarray, var_ref: np.ndarray, sigma_new: float, sigma_ref: float,
    flux_ratio_ref: float = 1.0, flux_new: float = 1.0, astrometric_rms: tuple[float, float] = (0.0, 0.0),
    mask: np.ndarray | None = None, hidden_new: np.ndarray | None = None, hidden_ref: np.ndarray | None = None,
    max_hidden_sigma: float = 1.0, workers: int = -1,
) -> ZogyResult:
    """ZOGY proper difference D, its PSF, S, S_corr and the PSF-photometry flux image.

    Parameters
    ----------
    new, ref : ndarray, shape (ny, nx)
        Background-subtracted new and (resampled) reference images, e-.
    psf_new, psf_ref : ndarray
        PSF stamps (odd sides, centred, any size; normalised here).
    var_new, var_ref : ndarray, shape (ny, nx)
        Full per-pixel variance maps (background + source noise), e-^2.
    sigma_new, sigma_ref : float
        Background noise standard deviation (e-) of each image.
    flux_ratio_ref, flux_new : float
        F_r and F_n (see the module notes): with F_n = 1, F_r is the
        reference flux / new flux of the same star.
    astrometric_rms : (float, float)
        Registration noise ``(sigma_x, sigma_y)`` in pixels for V_ast.
    mask : ndarray, optional
        Any non-zero pixel is excluded (use the union of both images' masks).
    hidden_new, hidden_ref : ndarray, optional
        Best estimate (e-, background-subtracted, sky noise not included;
        only values > 0 at excluded pixels count) of the flux each image's
        scene has at the excluded pixels: see *Flux hidden under masks* in
        the module notes and :func:`~dagster_project.science.difference.hidden_flux`.
    max_hidden_sigma : float
        Largest acceptable bound on that residual, in units of the S noise.
    workers : int
        Threads for the FFTs and the element-wise passes (-1: all cores, as
        in :mod:`scipy.fft`).

    Returns
    -------
    ZogyResult

    Raises
    ------
    ValueError
        On inconsistent shapes, non-positive noise or flux scalings, or bad PSFs.

    Examples
    --------
    A star in both images (twice as bright in the reference) and a new source at (45, 40):

    >>> from dagster_project.science.psf_models import moffat_stamp, render_point_sources
    >>> rng = np.random.default_rng(1)
    >>> star_n = render_point_sources((64, 64), [20.0, 45.0], [20.0, 40.0], [3000.0, 1500.0], 2.5, stamp_size=15)
    >>> star_r = render_point_sources((64, 64), [20.0], [20.0], [6000.0], 3.5, stamp_size=15)
    >>> var_n, var_r = star_n + 100.0, star_r + 100.0
    >>> new, ref = (m + rng.normal(size=m.shape) * np.sqrt(v) for m, v in ((star_n, var_n), (star_r, var_r)))
    >>> result = zogy(new, ref, moffat_stamp(15, 2.5), moffat_stamp(15, 3.5), var_new=var_n, var_ref=var_r,
    ...               sigma_new=10.0, sigma_ref=10.0, flux_ratio_ref=2.0)
    >>> y, x = np.unravel_index(np.nanargmax(result.S_corr), result.S_corr.shape)
    >>> (int(x), int(y)), bool(result.S_corr[y, x] > 10), bool(abs(result.flux[y, x] / 1500 - 1) < 0.15)
    ((45, 40), True, True)
    """
    new, ref = np.asarray(new), np.asarray(ref)
    sx, sy = _check_inputs(new, ref, {"var_new": var_new, "var_ref": var_ref, "mask": mask, "hidden_new": hidden_new,
                                      "hidden_ref": hidden_ref},
                           {"sigma_new": sigma_new, "sigma_ref": sigma_ref, "flux_ratio_ref": flux_ratio_ref,
                            "flux_new": flux_new, "max_hidden_sigma": max_hidden_sigma}, astrometric_rms)
    psf_n, psf_r = _check_psf(psf_new, "psf_new"), _check_psf(psf_ref, "psf_ref")
    plan = _plan(new.shape, psf_n, psf_r, sigma_new, sigma_ref, flux_new, flux_ratio_ref, separate=sx > 0 or sy > 0)
    var_new, var_ref, mask = (None if a is None else np.asarray(a) for a in (var_new, var_ref, mask))
    with RowBlocks(threads_for(workers)) as blocks:
        bad, excluded = _exclusions(new, ref, var_new, var_ref, mask, blocks)
        D, S_parts, V_S = _transforms(new, ref, var_new, var_ref, psf_n, psf_r, excluded, plan, blocks, workers)
        leak = _hidden_flux_bound((hidden_new, hidden_ref), excluded, new.shape, plan.kernels.reach, LEAK_BLOCK,
                                  workers)
        maps = _output_maps(D, S_parts, V_S, bad, leak, floor=_variance_floor(V_S, bad), axis_weights=(sy**2, sx**2),
                            max_hidden_sigma=float(max_hidden_sigma), F_S=plan.kernels.F_S, blocks=blocks)
    return _result(D, maps, bad, plan, sigma_new, sigma_ref, (sx, sy))


def _check_inputs(new, ref, planes: dict, scalars: dict, astrometric_rms) -> tuple[float, float]:
    """Raise ValueError on planes of another shape, a scalar that is not finite and > 0, or a bad
    ``astrometric_rms``; return the latter as ``(sigma_x, sigma_y)``."""
    if new.ndim != 2 or new.shape != ref.shape:
        raise ValueError(f"new and ref must be 2-D images of one shape, got {new.shape} and {ref.shape}")
    for name, arr in planes.items():
        if arr is not None and np.shape(arr) != new.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} differs from image shape {new.shape}")
    for name, value in scalars.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
    sx, sy = (float(v) for v in astrometric_rms)
    if not (np.isfinite(sx) and np.isfinite(sy) and sx >= 0 and sy >= 0):
        raise ValueError(f"astrometric_rms must be two finite values >= 0, got {astrometric_rms}")
    return sx, sy


@dataclass
class _Plan:
    """The scalars, padded FFT shape and small-grid kernels one :func:`zogy` call works with."""

    Fn: float  # F_n
    Fr: float  # F_r
    a: float  # sigma_n^2 F_r^2: weight of |P_r^|^2 in the denominator
    b: float  # sigma_r^2 F_n^2: weight of |P_n^|^2
    F_D: float  # eq. 15
    shape: tuple[int, int]  # padded shape of the transforms
    kernels: _SmallGridKernels
    separate: bool  # S_N and S_R kept apart (V_ast needs them)


def _plan(image_shape, psf_n, psf_r, sigma_new, sigma_ref, flux_new, flux_ratio_ref, separate: bool) -> _Plan:
    """Flux zero points, denominator weights, F_D, the padded shape and the kernels (see the module notes)."""
    Fn, Fr = float(flux_new), float(flux_ratio_ref)
    a = float(sigma_new) ** 2 * Fr**2  # weight of |P_r^|^2 in the denominator
    b = float(sigma_ref) ** 2 * Fn**2
    F_D = Fr * Fn / np.sqrt(a + b)  # eq. 15
    ny, nx = image_shape
    size = max(*psf_n.shape, *psf_r.shape) | 1
    # 5-smooth lengths (the real-input rule) on both axes: the 7s and 11s that the complex rule allows are slower.
    shape = (fft.next_fast_len(ny + size, real=True), fft.next_fast_len(nx + size, real=True))
    kernels = _small_grid_kernels(psf_n, psf_r, a, b, Fn, Fr, F_D, size)
    return _Plan(Fn, Fr, a, b, F_D, shape, kernels, separate)


def _exclusions(new, ref, var_new, var_ref, mask, blocks: RowBlocks) -> tuple[np.ndarray, tuple]:
    """The excluded pixels (:func:`_excluded_pixels`) as a map and as (row, column) indices; ValueError if all are."""
    bad = _excluded_pixels(new, ref, var_new, var_ref, mask, blocks)
    if bad.all():
        raise ValueError("every pixel is masked or non-finite")
    return bad, np.divmod(np.flatnonzero(bad), new.shape[1])


def _variance_floor(V_S: np.ndarray, bad: np.ndarray) -> float:
    """V_S at or below which no unmasked data lie within a kernel's reach: 1e-6 of its median (every 8th pixel)."""
    return 1e-6 * _median(V_S[::8, ::8][~bad[::8, ::8]])


def _transforms(new, ref, var_new, var_ref, psf_n, psf_r, excluded, plan: _Plan, blocks: RowBlocks, workers: int):
    """D (eq. 13), ``(S_N, S_R)`` or ``(S,)`` (eqs. 28-29) and V_S = V(S_N) + V(S_R) (eqs. 26-27) on the image grid.

    The excluded pixels are 0 in every forward transform; one padded buffer
    serves the four of them, and each spectrum is freed (or reused) as soon
    as it is no longer needed.
    """
    ny, nx = new.shape
    shape = plan.shape
    buffer = np.zeros(shape, dtype=np.float32)
    A = _forward(new, excluded, buffer, blocks, workers)
    B = _forward(ref, excluded, buffer, blocks, workers)
    Pn = _stamp_rfft2(psf_n, shape, workers)
    Pr = _stamp_rfft2(psf_r, shape, workers)
    _difference_spectra(A, B, Pn, Pr, plan.a, plan.b, plan.Fn, plan.Fr, plan.separate, blocks)
    D = _inverse(Pn, shape, ny, nx, workers)  # eq. 13
    if plan.separate:
        S_parts = (_inverse(A, shape, ny, nx, workers), _inverse(B, shape, ny, nx, workers))
    else:
        S_parts = (_inverse(A, shape, ny, nx, workers),)
    del A, B

    V = _forward(var_new, excluded, buffer, blocks, workers)
    Vr = _forward(var_ref, excluded, buffer, blocks, workers)
    del buffer
    K2n = _stamp_rfft2(plan.kernels.kn**2, shape, workers, out=Pn)
    K2r = _stamp_rfft2(plan.kernels.kr**2, shape, workers, out=Pr)
    _variance_spectrum(V, Vr, K2n, K2r, blocks)
    del Vr, K2n, K2r, Pn, Pr
    V_S = _inverse(V, shape, ny, nx, workers)  # eqs. 26-27
    return D, S_parts, V_S


def _result(D, maps: _Maps, bad, plan: _Plan, sigma_new, sigma_ref, astrometric_rms) -> ZogyResult:
    """The :class:`ZogyResult`, with the robust standard deviations of S_corr and D on every 4th pixel."""
    sample = (slice(None, None, 4), slice(None, None, 4))
    return ZogyResult(
        D=D,
        P_D=plan.kernels.P_D,
        F_D=float(plan.F_D),
        S=maps.S,
        S_corr=maps.S_corr,
        flux=maps.flux,
        flux_err=maps.flux_err,
        F_S=plan.kernels.F_S,
        mask=bad,
        sigma_new=float(sigma_new),
        sigma_ref=float(sigma_ref),
        flux_new=plan.Fn,
        flux_ratio_ref=plan.Fr,
        astrometric_rms=astrometric_rms,
        scorr_std=robust_std(maps.S_corr[sample]),
        d_std=robust_std(D[sample]),
    )
