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
* FFTs of the padded size in float32: 4 forward (N, R, V_n, V_r), 4
  inverse (D, S_N, S_R, V_S; 3 without the astrometric term) and 4
  half-cost transforms of the stamps (P_n, P_r, k_n^2, k_r^2): about 10
  rfft2-equivalents; the hidden-flux bound adds one forward, one inverse
  and one stamp transform when some excluded pixel hides flux. The kernels
  (cropped to the larger stamp size), P_D and F_S are computed on a small
  grid in float64.
* D is unit-variance white noise except at frequencies where both PSFs have
  less than 1e-12 of their zero-frequency power (float32 round-off), which
  are not amplified.
"""

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from scipy import fft

#: Frequencies where both PSFs have less power than this (relative to the zero
#: frequency) are not amplified in D: below it the float32 transforms are round-off.
_DEN_FLOOR = 1e-12


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


def _stamp_rfft2(stamp: np.ndarray, shape: tuple[int, int], workers: int) -> np.ndarray:
    """``rfft2(_embed(stamp, shape))`` at about half the cost.

    Only the stamp's rows are non-zero, so the transform along x is done on
    those rows alone; the transform along y then runs on the full height.
    """
    h0, h1 = stamp.shape[0] // 2, stamp.shape[1] // 2
    rows = np.zeros((stamp.shape[0], shape[1]), dtype=np.float32)
    rows[:, : h1 + 1] = stamp[:, h1:]
    rows[:, -h1:] = stamp[:, :h1]
    along_x = fft.rfft(rows, axis=1, workers=workers)
    full = np.zeros((shape[0], along_x.shape[1]), dtype=np.complex64)
    full[: h0 + 1] = along_x[h0:]
    full[-h0:] = along_x[:h0]
    return fft.fft(full, axis=0, workers=workers, overwrite_x=True)


def _centre_crop(wrapped: np.ndarray, size: int) -> np.ndarray:
    """Centred ``size`` x ``size`` stamp of an array whose origin is at [0, 0] (inverse of _embed)."""
    h = size // 2
    shifted = np.fft.fftshift(wrapped)
    c0, c1 = wrapped.shape[0] // 2, wrapped.shape[1] // 2
    return shifted[c0 - h : c0 + h + 1, c1 - h : c1 + h + 1]


def _add_squared_gradient(total: np.ndarray, image: np.ndarray, wx: float, wy: float, buffer: np.ndarray) -> None:
    """``total += wx * (d image / dx)**2 + wy * (d image / dy)**2`` in place.

    Central differences inside, one-sided at the borders (the rule of
    ``np.gradient``), written out with slices into a reused buffer because
    ``np.gradient`` allocates several full-size temporaries, which costs more
    than the arithmetic on 2048^2 images.
    """
    for axis, weight in ((1, wx), (0, wy)):
        if weight == 0:
            continue
        d = np.moveaxis(buffer, axis, 0)
        im = np.moveaxis(image, axis, 0)
        np.subtract(im[2:], im[:-2], out=d[1:-1])
        d[1:-1] *= 0.5
        np.subtract(im[1], im[0], out=d[0])
        np.subtract(im[-1], im[-2], out=d[-1])
        np.square(buffer, out=buffer)
        buffer *= weight
        total += buffer


@dataclass
class _SmallGridKernels:
    kn: np.ndarray  # k_n, centred odd stamp
    kr: np.ndarray  # k_r
    P_D: np.ndarray
    F_S: float


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


def _hidden_flux_leak(hidden_maps, kernels: _SmallGridKernels, excluded: np.ndarray, shape,
                      workers: int) -> np.ndarray | None:
    """Upper bound of ``|k_n| (x) hidden_new + |k_r| (x) hidden_ref`` with one convolution.

    ``max(|k_n|, |k_r|) (x) (hidden_new + hidden_ref)``, counting positive
    hidden flux at excluded pixels only: a slightly looser bound at the
    price of one forward transform instead of two. None when no excluded
    pixel hides any flux.
    """
    source = np.zeros(excluded.shape, dtype=np.float32)
    for hidden in hidden_maps:
        if hidden is None:
            continue
        with np.errstate(invalid="ignore"):
            source += np.where(excluded & (hidden > 0), hidden, np.float32(0))
    if not source.any():
        return None
    ny, nx = excluded.shape
    kernel = np.maximum(np.abs(kernels.kn), np.abs(kernels.kr))
    spectrum = fft.rfft2(source, s=shape, workers=workers)
    spectrum *= _stamp_rfft2(kernel, shape, workers)
    return fft.irfft2(spectrum, s=shape, workers=workers, overwrite_x=True)[:ny, :nx]


def zogy(
    new: np.ndarray,
    ref: np.ndarray,
    psf_new: np.ndarray,
    psf_ref: np.ndarray,
    *,
    var_new: np.ndarray,
    var_ref: np.ndarray,
    sigma_new: float,
    sigma_ref: float,
    flux_ratio_ref: float = 1.0,
    flux_new: float = 1.0,
    astrometric_rms: tuple[float, float] = (0.0, 0.0),
    mask: np.ndarray | None = None,
    hidden_new: np.ndarray | None = None,
    hidden_ref: np.ndarray | None = None,
    max_hidden_sigma: float = 1.0,
    workers: int = -1,
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
    flux_ratio_ref : float
        F_r, with ``flux_new`` = F_n: reference flux / new flux of the same star
        when F_n = 1 (see the module notes).
    flux_new : float
        F_n.
    astrometric_rms : (float, float)
        Registration noise ``(sigma_x, sigma_y)`` in pixels for V_ast.
    mask : ndarray, optional
        Any non-zero pixel is excluded (use the union of both images' masks).
    hidden_new, hidden_ref : ndarray, optional
        Best estimate (e-, background-subtracted; only values > 0 at excluded
        pixels count) of the flux each image's scene has at the excluded
        pixels, which the exclusion removes: e.g. the core of a saturated star,
        or a star under the other image's bad column. Zeroing a masked star
        core in both images leaves ``k_r (x) (R M) - k_n (x) (N M)`` in S, a
        residual the size of the kernels that no variance term describes;
        ``max(|k_n|, |k_r|) (x) (hidden_new + hidden_ref) / sqrt(V)`` bounds
        it, and output pixels where the bound exceeds ``max_hidden_sigma``
        are invalid (NaN, flagged in ``mask``). The bound grows with the
        hidden flux, so the invalid zone around a masked star grows with its
        brightness. Sky noise under a mask must not be included (it would
        blank the borders of every mask): see
        :func:`~dagster_project.science.difference.hidden_flux`.
    max_hidden_sigma : float
        Largest acceptable bound on that residual, in units of the S noise.
    workers : int
        Threads for :mod:`scipy.fft` (-1: all cores).

    Returns
    -------
    ZogyResult

    Raises
    ------
    ValueError
        On inconsistent shapes, non-positive noise or flux scalings, or bad PSFs.
    """
    new = np.asarray(new)
    ref = np.asarray(ref)
    if new.ndim != 2 or new.shape != ref.shape:
        raise ValueError(f"new and ref must be 2-D images of one shape, got {new.shape} and {ref.shape}")
    for name, arr in (("var_new", var_new), ("var_ref", var_ref), ("mask", mask), ("hidden_new", hidden_new),
                      ("hidden_ref", hidden_ref)):
        if arr is not None and np.shape(arr) != new.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} differs from image shape {new.shape}")
    scalars = {"sigma_new": sigma_new, "sigma_ref": sigma_ref, "flux_ratio_ref": flux_ratio_ref, "flux_new": flux_new,
               "max_hidden_sigma": max_hidden_sigma}
    for name, value in scalars.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
    sx, sy = (float(v) for v in astrometric_rms)
    if not (np.isfinite(sx) and np.isfinite(sy) and sx >= 0 and sy >= 0):
        raise ValueError(f"astrometric_rms must be two finite values >= 0, got {astrometric_rms}")
    psf_n = _check_psf(psf_new, "psf_new")
    psf_r = _check_psf(psf_ref, "psf_ref")

    Fn, Fr = float(flux_new), float(flux_ratio_ref)
    a = float(sigma_new) ** 2 * Fr**2  # weight of |P_r^|^2 in the denominator
    b = float(sigma_ref) ** 2 * Fn**2
    F_D = Fr * Fn / np.sqrt(a + b)  # eq. 15

    ny, nx = new.shape
    size = max(*psf_n.shape, *psf_r.shape) | 1
    shape = (fft.next_fast_len(ny + size), fft.next_fast_len(nx + size, real=True))
    kernels = _small_grid_kernels(psf_n, psf_r, a, b, Fn, Fr, F_D, size)

    bad = ~(np.isfinite(new) & np.isfinite(ref) & np.isfinite(var_new) & np.isfinite(var_ref))
    bad |= ~((var_new >= 0) & (var_ref >= 0))
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if bad.all():
        raise ValueError("every pixel is masked or non-finite")
    excluded = bad.copy()  # the pixels zeroed in both images

    def forward(image):
        return fft.rfft2(np.where(bad, np.float32(0), image).astype(np.float32, copy=False), s=shape, workers=workers)

    def inverse(spectrum):
        return fft.irfft2(spectrum, s=shape, workers=workers, overwrite_x=True)[:ny, :nx]

    Pn = _stamp_rfft2(psf_n, shape, workers)
    Pr = _stamp_rfft2(psf_r, shape, workers)
    den = np.square(Pr.real)
    den += np.square(Pr.imag)
    den *= a
    den += b * (np.square(Pn.real) + np.square(Pn.imag))
    np.maximum(den, np.float32(_DEN_FLOOR * (a + b)), out=den)

    A = forward(new)
    A *= Pr  # P_r^ N^
    B = forward(ref)
    B *= Pn  # P_n^ R^
    c = np.multiply(Pn, Pr, out=Pn)
    np.conjugate(c, out=c)
    c /= den  # conj(P_n^ P_r^) / den, so that k_n^ N^ = F_n F_r^2 c A and k_r^ R^ = F_r F_n^2 c B
    del Pr
    T = Fr * A
    T -= Fn * B
    T /= np.sqrt(den, out=den)
    D = inverse(T)  # eq. 13
    del T, den
    c *= Fn * Fr**2
    A *= c  # S_N^
    B *= c
    B *= Fn / Fr  # S_R^
    astrometric = sx > 0 or sy > 0
    if astrometric:
        S_N, S_R = inverse(A), inverse(B)
        S = S_N - S_R
    else:
        A -= B
        S = inverse(A)
    del A, B, c

    V = forward(var_new)
    V *= _stamp_rfft2(kernels.kn**2, shape, workers)
    Vr = forward(var_ref)
    Vr *= _stamp_rfft2(kernels.kr**2, shape, workers)
    V += Vr
    del Vr
    V_S = inverse(V)  # eqs. 26-27
    del V
    # Pixels with (almost) no unmasked data within a kernel's reach have V_S ~ 0.
    bad |= ~(V_S > 1e-6 * np.median(V_S[::8, ::8][~bad[::8, ::8]]))
    V_total = V_S
    if astrometric:  # eqs. 30-33
        V_total = V_S.copy()
        buffer = np.empty_like(V_S)
        for image in (S_N, S_R):
            _add_squared_gradient(V_total, image, sx**2, sy**2, buffer)
        del S_N, S_R, buffer
    leak = _hidden_flux_leak((hidden_new, hidden_ref), kernels, excluded, shape, workers)
    if leak is not None:
        with np.errstate(invalid="ignore"):  # V_total < 0 only from round-off where nothing is valid
            bad |= leak > np.float32(max_hidden_sigma) * np.sqrt(V_total)

    nan = np.float32(np.nan)
    good = ~bad
    S_corr = np.full((ny, nx), nan, dtype=np.float32)
    np.divide(S, np.sqrt(V_total, where=good, out=np.ones_like(V_total)), out=S_corr, where=good)
    flux_err = np.full((ny, nx), nan, dtype=np.float32)
    np.divide(np.sqrt(V_S, where=good, out=np.ones_like(V_S)), kernels.F_S, out=flux_err, where=good)
    S[bad] = nan
    D[bad] = nan
    flux = S / np.float32(kernels.F_S)
    sample = (slice(None, None, 4), slice(None, None, 4))
    return ZogyResult(
        D=D,
        P_D=kernels.P_D,
        F_D=float(F_D),
        S=S,
        S_corr=S_corr,
        flux=flux,
        flux_err=flux_err,
        F_S=kernels.F_S,
        mask=bad,
        sigma_new=float(sigma_new),
        sigma_ref=float(sigma_ref),
        flux_new=Fn,
        flux_ratio_ref=Fr,
        astrometric_rms=(sx, sy),
        scorr_std=float(mad_std(S_corr[sample], ignore_nan=True)),
        d_std=float(mad_std(D[sample], ignore_nan=True)),
    )
