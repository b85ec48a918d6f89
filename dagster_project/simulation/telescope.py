"""Simulated CCD telescope: pure rendering of raw frames (no I/O).

A night of data is built from a few self-contained ingredients:

* :class:`DetectorSpec` -- geometry and electronics of the camera, realised once
  by :func:`make_detector` into a :class:`DetectorModel` (fixed 2-D bias
  structure, flat-field response, hot and dead columns).
* :class:`FieldSpec` and :class:`SkyModel` -- a static sky of stars and
  galaxies defined in RA/Dec (:func:`make_sky_model`), so every epoch renders
  it through its own WCS.
* :class:`EpochConditions` -- seeing, sky, pointing and WCS error of one
  exposure (:func:`draw_epoch_conditions`).
* :class:`Transient` -- point sources injected into one science frame, each of
  a kind: a supernova on a galaxy, a variable star (a star of the sky model
  that brightens) or a hostless transient.
* :class:`~.artifacts.ArtifactRates` -- optional artifacts of a science frame
  beyond the cosmic rays, bleeds and fixed bad columns every frame has
  (trails, flickering columns, hot pixels, odd bright-star PSFs, local
  distortion, ghosts; :mod:`dagster_project.simulation.artifacts`).

:func:`simulate_bias_frame`, :func:`simulate_flat_frame` and
:func:`simulate_science_frame` return a :class:`RawFrame`; every random number
comes from the ``numpy.random.Generator`` passed in.
:mod:`dagster_project.simulation.night` writes them to disk.

Raw frame conventions
---------------------
* A raw array has shape ``(ny, nx + overscan)``: the data section is columns
  ``0 .. nx-1`` and the overscan strip lies to its right, so
  ``TRIMSEC = DATASEC = '[1:nx,1:ny]'`` and ``BIASSEC = '[nx+1:nx+overscan,1:ny]'``.
* Pixel values are ADU stored as ``uint16`` (FITS BITPIX = 16, BZERO = 32768).
  The ADC clips at 65535; the full well is 5 % above the ``SATURATE`` level so
  every full-well pixel reads at or above ``SATURATE``.
* The TAN WCS (CD matrix) is written for the raw pixel grid; because the
  overscan lies to the right of the data section, CRPIX is the same in the
  trimmed data section and the WCS stays valid after trimming.
* The header WCS is deliberately wrong by ``EpochConditions.wcs_error_px``
  (a CRPIX shift of at most 1 px): a catalogue star at true 0-based pixel
  ``(x, y)`` is predicted by the header WCS at ``(x + ex, y + ey)``. Truth
  positions (:class:`Transient`) are always the true ones.
* Source fluxes (``flux_e``) are electrons collected during the exposure
  *before* the flat-field response, i.e. what photometry on a flat-fielded,
  gain-converted image measures.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.modeling.functional_models import Sersic2D
from astropy.time import Time
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.optimize import brentq
from scipy.signal import fftconvolve

from dagster_project.science.psf_models import (
    DEFAULT_OVERSAMPLE,
    moffat_alpha,
    moffat_stamp,
    moffat_stamps,
    pixel_means,
    subpixel_grid,
)
from dagster_project.simulation.artifacts import (
    Artifact,
    ArtifactRates,
    CosmicRays,
    Distortion,
    OddPsfs,
    add_clipped,
    add_dark_charge,
    displaced,
    draw_distortions,
    draw_flicker_columns,
    draw_hot_pixels,
    draw_odd_psfs,
    draw_trails,
    find_ghosts,
    render_ghost,
    render_trail,
    saturation_artifacts,
    with_sky_positions,
)

#: Largest value a 16-bit ADC can produce.
ADC_MAX = 65535


@dataclass(frozen=True)
class BandResponse:
    """How a filter scales source and sky electron rates relative to ``r``.

    A source of rate ``R`` (e-/s in ``r``) and colour ``c`` (mag) gives
    ``R * throughput * 10**(-0.4 * colour_slope * c)`` in this band.
    """

    throughput: float
    sky: float
    colour_slope: float


#: Supported filters.
BANDS: dict[str, BandResponse] = {
    "g": BandResponse(throughput=0.85, sky=0.55, colour_slope=1.0),
    "r": BandResponse(throughput=1.0, sky=1.0, colour_slope=0.0),
    "i": BandResponse(throughput=0.8, sky=1.6, colour_slope=-0.5),
    "z": BandResponse(throughput=0.5, sky=2.2, colour_slope=-0.8),
}


def band_response(band: str) -> BandResponse:
    """Return the :class:`BandResponse` of ``band``; ValueError if unknown."""
    try:
        return BANDS[band]
    except KeyError:
        raise ValueError(f"unknown band {band!r}; supported: {', '.join(BANDS)}") from None


@dataclass(frozen=True)
class DetectorSpec:
    """Geometry and electronics of the simulated CCD camera.

    Attributes
    ----------
    nx, ny : int
        Size of the data (light-sensitive) section in pixels.
    overscan : int
        Overscan columns to the right of the data section (0 for none).
    gain : float
        e-/ADU.
    read_noise_e : float
        Read noise in electrons.
    bias_level_adu : float
        Mean bias level in ADU.
    bias_structure_adu : float
        Amplitude of the fixed bias pattern (ADU): a row-wise ramp shared by
        the overscan plus a faint 2-D pattern in the data section only.
    bias_drift_adu : float
        rms of the frame-to-frame bias-level change, tracked by the overscan.
    saturate_adu : float
        Raw level (bias included) above which pixels are non-linear; written as
        ``SATURATE``.
    pixel_scale : float
        arcsec per pixel.
    flat_pixel_rms : float
        Pixel-to-pixel rms of the flat-field response.
    flat_vignetting : float
        Fractional response loss at the corners (quadratic in radius).
    n_hot_columns, n_dead_columns : int
        Columns with an elevated bias (+100..300 ADU) and with 10 % response.
    cosmic_ray_rate : float
        Cosmic-ray hits per megapixel per second of exposure.
    instrument, telescope : str
        ``INSTRUME`` and ``TELESCOP`` values.
    site_longitude_deg, site_latitude_deg : float
        Written as ``LONG-OBS``/``LAT-OBS`` (east positive) so readers can
        derive the local night from ``DATE-OBS``.
    """

    nx: int = 2048
    ny: int = 2048
    overscan: int = 32
    gain: float = 1.6
    read_noise_e: float = 5.0
    bias_level_adu: float = 1000.0
    bias_structure_adu: float = 3.0
    bias_drift_adu: float = 2.0
    saturate_adu: float = 60000.0
    pixel_scale: float = 0.5
    flat_pixel_rms: float = 0.01
    flat_vignetting: float = 0.05
    n_hot_columns: int = 2
    n_dead_columns: int = 1
    cosmic_ray_rate: float = 1.2
    instrument: str = "SIMCAM"
    telescope: str = "SIMTEL"
    site_longitude_deg: float = -70.7365
    site_latitude_deg: float = -30.2406

    def __post_init__(self):
        if self.nx < 64 or self.ny < 64:
            raise ValueError(f"data section must be at least 64x64 pixels, got {self.nx}x{self.ny}")
        if self.overscan < 0:
            raise ValueError(f"overscan must be >= 0, got {self.overscan}")
        if self.gain <= 0 or self.read_noise_e < 0 or self.pixel_scale <= 0:
            raise ValueError("gain and pixel_scale must be > 0 and read_noise_e >= 0")
        if not self.bias_level_adu < self.saturate_adu < ADC_MAX / 1.05:
            raise ValueError(f"need bias_level_adu < saturate_adu < {ADC_MAX / 1.05:.0f} ADU")
        if self.n_hot_columns + self.n_dead_columns > self.nx // 4:
            raise ValueError("too many bad columns for the width of the detector")

    @property
    def data_shape(self) -> tuple[int, int]:
        """Shape ``(ny, nx)`` of the trimmed data section."""
        return (self.ny, self.nx)

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Shape ``(ny, nx + overscan)`` of a raw frame."""
        return (self.ny, self.nx + self.overscan)

    @property
    def trimsec(self) -> str | None:
        """FITS section of the data, or None without an overscan."""
        return f"[1:{self.nx},1:{self.ny}]" if self.overscan else None

    @property
    def biassec(self) -> str | None:
        """FITS section of the overscan, or None without one."""
        return f"[{self.nx + 1}:{self.nx + self.overscan},1:{self.ny}]" if self.overscan else None

    @property
    def full_well_e(self) -> float:
        """Charge (e-) at which a pixel overflows into its column neighbours."""
        return 1.05 * (self.saturate_adu - self.bias_level_adu) * self.gain


@dataclass(frozen=True)
class DetectorModel:
    """One realisation of a :class:`DetectorSpec`'s fixed patterns.

    Attributes
    ----------
    spec : DetectorSpec
    bias_structure_adu : ndarray, shape ``spec.raw_shape``
        Bias pattern added to every frame on top of ``spec.bias_level_adu``.
    flat : ndarray, shape ``spec.data_shape``
        Relative response of each data pixel (median 1), all bands.
    hot_columns, dead_columns : tuple of int
        0-based column indices of the defects in the data section.
    """

    spec: DetectorSpec
    bias_structure_adu: np.ndarray
    flat: np.ndarray
    hot_columns: tuple[int, ...]
    dead_columns: tuple[int, ...]


def make_detector(spec: DetectorSpec, rng: np.random.Generator) -> DetectorModel:
    """Realise the fixed bias pattern, flat field and bad columns of ``spec``."""
    ny, nx = spec.data_shape
    y = np.linspace(0.0, 1.0, ny)[:, None]
    x = np.linspace(0.0, 1.0, nx)[None, :]
    amplitude = spec.bias_structure_adu
    # Row-wise structure is common to data and overscan, so the overscan removes it.
    rows = amplitude * (0.6 * y + 0.4 * np.sin(3 * np.pi * y + rng.uniform(0, 2 * np.pi)))
    structure = np.repeat(rows, nx + spec.overscan, axis=1)
    # The 2-D part lives in the data section only; only a master bias removes it.
    structure[:, :nx] += amplitude * (0.3 * x + 0.1 * rng.standard_normal((1, nx)))
    columns = rng.choice(np.arange(8, nx - 8), spec.n_hot_columns + spec.n_dead_columns, replace=False)
    hot, dead = np.sort(columns[: spec.n_hot_columns]), np.sort(columns[spec.n_hot_columns :])
    structure[:, hot] += rng.uniform(100.0, 300.0, hot.size)

    radius2 = ((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.5
    flat = (1.0 - spec.flat_vignetting * radius2) * rng.normal(1.0, spec.flat_pixel_rms, (ny, nx))
    flat[:, dead] = 0.1
    flat /= np.median(flat)
    return DetectorModel(spec, structure, flat, tuple(int(c) for c in hot), tuple(int(c) for c in dead))


@dataclass(frozen=True)
class FieldSpec:
    """A survey field: ``name`` (``OBJECT``) and pointing centre in degrees (ICRS)."""

    name: str
    ra_deg: float
    dec_deg: float

    def __post_init__(self):
        if not self.name or not -90.0 < self.dec_deg < 90.0:
            raise ValueError(f"field needs a name and -90 < dec < 90, got {self.name!r}, {self.dec_deg}")


def _no_sources() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True)
class SkyModel:
    """The static sources of one field, in world coordinates.

    Rates are electrons per second in ``r`` before the flat-field response;
    :meth:`rates` converts them to another band with the source colours.

    Attributes
    ----------
    star_ra, star_dec, star_rate, star_colour : ndarray
        Point sources (deg, deg, e-/s, mag).
    galaxy_ra, galaxy_dec, galaxy_rate, galaxy_colour : ndarray
        Galaxy centres, total rates and colours.
    galaxy_r_eff_arcsec, galaxy_sersic_n, galaxy_ellipticity : ndarray
        Sersic half-light radius along the major axis, index, and ``1 - b/a``.
    galaxy_theta_deg : ndarray
        Major-axis angle counter-clockwise from +x of an unrotated frame
        (north up, east left).
    """

    star_ra: np.ndarray
    star_dec: np.ndarray
    star_rate: np.ndarray
    star_colour: np.ndarray
    galaxy_ra: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_dec: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_rate: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_colour: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_r_eff_arcsec: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_sersic_n: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_ellipticity: np.ndarray = dataclasses.field(default_factory=_no_sources)
    galaxy_theta_deg: np.ndarray = dataclasses.field(default_factory=_no_sources)

    def rates(self, band: str) -> tuple[np.ndarray, np.ndarray]:
        """Star and galaxy rates (e-/s) in ``band``."""
        response = band_response(band)

        def scaled(rate, colour):
            return rate * response.throughput * 10 ** (-0.4 * response.colour_slope * colour)

        return scaled(self.star_rate, self.star_colour), scaled(self.galaxy_rate, self.galaxy_colour)


def _power_law(n: int, low: float, high: float, slope: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws with cumulative counts ``N(>F) ~ F**-slope`` between ``low`` and ``high``."""
    u = rng.uniform(0.0, 1.0 - (low / high) ** slope, n)
    return low * (1.0 - u) ** (-1.0 / slope)


def wcs_header(
    field: FieldSpec,
    spec: DetectorSpec,
    offset_px: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
) -> fits.Header:
    """TAN WCS cards (CD matrix) of a frame pointed at ``field``.

    The field centre falls on the data-section centre shifted by
    ``offset_px = (dx, dy)``; the pixel grid is rotated by ``rotation_deg``
    (the ``CROTA2`` convention) from north up, east left. CRPIX refers to the
    raw frame and, the overscan being to the right, equally to the trimmed one.
    """
    scale = spec.pixel_scale / 3600.0
    rho = np.deg2rad(rotation_deg)
    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = float(field.ra_deg), float(field.dec_deg)
    header["CRPIX1"] = (spec.nx + 1) / 2.0 + offset_px[0]
    header["CRPIX2"] = (spec.ny + 1) / 2.0 + offset_px[1]
    header["CD1_1"] = -scale * np.cos(rho)
    header["CD1_2"] = -scale * np.sin(rho)
    header["CD2_1"] = -scale * np.sin(rho)
    header["CD2_2"] = scale * np.cos(rho)
    header["RADESYS"] = "ICRS"
    return header


def make_sky_model(
    field: FieldSpec,
    spec: DetectorSpec,
    rng: np.random.Generator,
    *,
    star_density: float = 10.0,
    galaxy_density: float = 0.6,
    margin_px: int = 80,
    star_rate_range: tuple[float, float] = (3.0, 1e6),
    galaxy_rate_range: tuple[float, float] = (5.0, 5e3),
    star_count_slope: float = 0.75,
    galaxy_count_slope: float = 1.0,
) -> SkyModel:
    """Draw the static stars and galaxies of ``field``.

    Sources are uniform on the tangent plane over the data section plus
    ``margin_px`` on every side (room for pointing offsets and PSF wings).
    Rates follow truncated power laws ``N(>R) ~ R**-slope``: 0.75 for stars
    (high-latitude star counts, d log N / dm = 0.3) and 1 for galaxies. With
    the defaults a 2048x2048 frame of 60 s holds ~3300 stars (a handful of
    them saturated) and ~200 galaxies; half-light radii grow with brightness.

    Parameters
    ----------
    star_density, galaxy_density : float
        Sources per square arcminute.
    star_rate_range, galaxy_rate_range : (float, float)
        Rate limits in e-/s (band ``r``).
    """
    if star_density < 0 or galaxy_density < 0 or margin_px < 0:
        raise ValueError("densities and margin must be >= 0")
    width, height = spec.nx + 2 * margin_px, spec.ny + 2 * margin_px
    area_arcmin2 = width * height * (spec.pixel_scale / 60.0) ** 2
    reference = WCS(wcs_header(field, spec))

    def positions(n):
        x = rng.uniform(-margin_px, spec.nx + margin_px, n) - 0.5
        y = rng.uniform(-margin_px, spec.ny + margin_px, n) - 0.5
        return reference.pixel_to_world_values(x, y)

    n_stars = rng.poisson(star_density * area_arcmin2)
    star_ra, star_dec = positions(n_stars)
    n_gal = rng.poisson(galaxy_density * area_arcmin2)
    gal_ra, gal_dec = positions(n_gal)
    gal_rate = _power_law(n_gal, *galaxy_rate_range, galaxy_count_slope, rng)
    r_eff = 0.5 * (gal_rate / galaxy_rate_range[0]) ** 0.25 * rng.lognormal(0.0, 0.3, n_gal)
    return SkyModel(
        star_ra=star_ra,
        star_dec=star_dec,
        star_rate=_power_law(n_stars, *star_rate_range, star_count_slope, rng),
        star_colour=rng.normal(0.6, 0.4, n_stars),
        galaxy_ra=gal_ra,
        galaxy_dec=gal_dec,
        galaxy_rate=gal_rate,
        galaxy_colour=rng.normal(0.8, 0.3, n_gal),
        galaxy_r_eff_arcsec=np.clip(r_eff, 0.3, 4.0),
        galaxy_sersic_n=rng.uniform(0.7, 4.0, n_gal),
        galaxy_ellipticity=rng.uniform(0.0, 0.6, n_gal),
        galaxy_theta_deg=rng.uniform(0.0, 180.0, n_gal),
    )


@dataclass(frozen=True)
class EpochConditions:
    """Observing conditions of one exposure.

    Attributes
    ----------
    mjd : float
        Start of the exposure (UTC).
    exptime : float
        Seconds.
    seeing_fwhm_px : float
        Geometric-mean FWHM of the Moffat PSF in pixels.
    moffat_beta, psf_ellipticity, psf_theta_deg : float
        Remaining Moffat parameters (see :func:`~.psf_models.moffat_profile`).
    sky_e : float
        Sky electrons per pixel over the exposure at the frame centre.
    sky_gradient : (float, float)
        Fractional sky change from the centre to the right and top edges.
    airmass : float
        ``AIRMASS`` header value.
    offset_px : (float, float)
        Pointing offset: where the field centre lands relative to the
        data-section centre, pixels.
    rotation_deg : float
        Rotation of the pixel grid (CROTA2 convention).
    wcs_error_px : (float, float)
        Error of the header WCS: CRPIX is written shifted by this much.
    """

    mjd: float
    exptime: float = 60.0
    seeing_fwhm_px: float = 2.5
    moffat_beta: float = 3.0
    psf_ellipticity: float = 0.0
    psf_theta_deg: float = 0.0
    sky_e: float = 1000.0
    sky_gradient: tuple[float, float] = (0.0, 0.0)
    airmass: float = 1.2
    offset_px: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    wcs_error_px: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.exptime <= 0 or self.sky_e < 0 or self.airmass < 1.0:
            raise ValueError("need exptime > 0, sky_e >= 0 and airmass >= 1")
        if self.seeing_fwhm_px <= 0 or self.moffat_beta <= 1 or not 0 <= self.psf_ellipticity < 1:
            raise ValueError("need seeing_fwhm_px > 0, moffat_beta > 1 and 0 <= psf_ellipticity < 1")

    @property
    def psf(self) -> dict:
        """Keyword arguments of the Moffat PSF for the ``psf_models`` functions."""
        return dict(fwhm=self.seeing_fwhm_px, beta=self.moffat_beta,
                    ellipticity=self.psf_ellipticity, theta_deg=self.psf_theta_deg)


def _random_vectors(n: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` 2-D vectors, shape (n, 2), of length uniform in [low, high] and random direction."""
    angle = rng.uniform(0.0, 2 * np.pi, n)
    length = rng.uniform(low, high, n)
    return np.column_stack([length * np.cos(angle), length * np.sin(angle)])


def draw_epoch_conditions(
    mjds,
    spec: DetectorSpec,
    rng: np.random.Generator,
    *,
    band: str = "r",
    exptime: float = 60.0,
    seeing_arcsec: tuple[float, float] = (1.0, 1.7),
    sky_rate: tuple[float, float] = (10.0, 25.0),
    max_offset_px: float = 20.0,
    max_rotation_deg: float = 0.4,
    max_wcs_error_px: float = 0.8,
) -> list[EpochConditions]:
    """Conditions of a series of exposures of one field in one band.

    Epoch 0 gets the best seeing of the series (it is the natural reference).
    Seeing is uniform in ``seeing_arcsec`` (2.0-3.4 px at 0.5"/px, so the PSF
    stays sampled well enough for cosmic-ray rejection to spare star cores),
    the sky rate (e-/s/px in ``r``) is uniform in ``sky_rate`` and scaled by
    the band, pointing offsets are 2..``max_offset_px`` px in a random
    direction, and the header-WCS error is at most ``max_wcs_error_px``
    (<= 1 px). The airmass is drawn in 1.05..1.6, not derived from the site.
    """
    mjds = np.atleast_1d(np.asarray(mjds, dtype=float))
    if mjds.ndim != 1 or mjds.size == 0:
        raise ValueError("mjds must be a non-empty 1-D sequence")
    if not 0 <= max_wcs_error_px <= 1:
        raise ValueError(f"max_wcs_error_px must be in [0, 1], got {max_wcs_error_px}")
    n = mjds.size
    seeing = rng.uniform(*seeing_arcsec, n) / spec.pixel_scale
    best = int(np.argmin(seeing))
    seeing[[0, best]] = seeing[[best, 0]]
    sky = rng.uniform(*sky_rate, n) * exptime * band_response(band).sky
    gradient = _random_vectors(n, 0.0, 0.05, rng)
    offset = _random_vectors(n, 2.0, max_offset_px, rng)
    error = _random_vectors(n, 0.0, max_wcs_error_px, rng)
    beta = rng.uniform(2.5, 3.5, n)
    ellipticity = rng.uniform(0.0, 0.08, n)
    theta = rng.uniform(0.0, 180.0, n)
    airmass = rng.uniform(1.05, 1.6, n)
    rotation = rng.uniform(-max_rotation_deg, max_rotation_deg, n)
    return [
        EpochConditions(
            mjd=float(mjds[i]),
            exptime=exptime,
            seeing_fwhm_px=float(seeing[i]),
            moffat_beta=float(beta[i]),
            psf_ellipticity=float(ellipticity[i]),
            psf_theta_deg=float(theta[i]),
            sky_e=float(sky[i]),
            sky_gradient=tuple(gradient[i].tolist()),
            airmass=float(airmass[i]),
            offset_px=tuple(offset[i].tolist()),
            rotation_deg=float(rotation[i]),
            wcs_error_px=tuple(error[i].tolist()),
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- rendering


def psf_half_width(fwhm: float) -> int:
    """Half-size (px) of the standard PSF stamp, ``ceil(4 * fwhm)``, as in ``render_point_sources``."""
    return int(np.ceil(4.0 * fwhm))


def _size_classes(required_half: np.ndarray, base_half: int, max_half: int) -> np.ndarray:
    """Round stamp half-sizes up to ``base_half * 2**k`` so sources render in a few batches."""
    ratio = np.maximum(np.asarray(required_half, dtype=float) / base_half, 1.0)
    return np.minimum(base_half * 2 ** np.ceil(np.log2(ratio)).astype(int), max_half)


def _add_stamps(image: np.ndarray, stamps: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> None:
    """Add ``stamps[k]`` to ``image`` with its corner at integer ``(x0[k], y0[k])``, clipped at the edges."""
    ny, nx = image.shape
    _, sy, sx = stamps.shape
    yy = y0[:, None, None] + np.arange(sy)[None, :, None]
    xx = x0[:, None, None] + np.arange(sx)[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    index = np.broadcast_to(yy * nx + xx, inside.shape)
    image += np.bincount(index[inside], weights=stamps[inside], minlength=ny * nx).reshape(ny, nx)


def _batches(n_items: int, pixels_per_item: int, max_pixels: int = 4_000_000):
    """Index slices of at most ``max_pixels`` evaluations each (bounds memory)."""
    step = max(1, max_pixels // pixels_per_item)
    for start in range(0, n_items, step):
        yield slice(start, start + step)


def _stamp_half_widths(flux: np.ndarray, fwhm: float, beta: float, ellipticity: float, floor_e: float,
                       max_half: int) -> np.ndarray:
    """Stamp half-widths at which each source's truncated Moffat wing is below ``floor_e`` (size classes)."""
    base = psf_half_width(fwhm)
    alpha = moffat_alpha(fwhm, beta) / np.sqrt(1.0 - ellipticity)  # major axis
    # central surface brightness over floor_e; the wing falls as (r/alpha)**(-2 beta)
    contrast = np.maximum(flux, 0.0) * (beta - 1.0) / (np.pi * alpha**2 * (1.0 - ellipticity) * floor_e)
    return _size_classes(alpha * contrast ** (1.0 / (2.0 * beta)), base, max_half)


def render_moffat_sources(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fwhm: float,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta_deg: float = 0.0,
    *,
    floor_e: float = 0.5,
    max_half: int = 256,
) -> np.ndarray:
    """Vectorised :func:`~.psf_models.render_point_sources` with flux-dependent stamps.

    Every source is a pixel-integrated Moffat stamp normalised to ``flux``.
    Faint sources use the standard ``ceil(4 fwhm)`` half-width; bright ones a
    stamp wide enough (up to ``max_half``) that the truncated wing is fainter
    than ``floor_e`` per pixel, so saturated stars show no square edges.

    Parameters
    ----------
    shape : (ny, nx)
    x, y : array_like
        0-based pixel positions.
    flux : array_like
        Total flux of each source (any unit; the image is in the same unit).
    fwhm, beta, ellipticity, theta_deg : float
        Moffat parameters as in :func:`~.psf_models.moffat_profile`.

    Returns
    -------
    ndarray, float64
    """
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=float)) for v in np.broadcast_arrays(x, y, flux))
    image = np.zeros(shape, dtype=np.float64)
    half = _stamp_half_widths(flux, fwhm, beta, ellipticity, floor_e, max_half)
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    ny, nx = shape
    visible = (cx + half >= 0) & (cy + half >= 0) & (cx - half < nx) & (cy - half < ny) & (flux != 0)
    for h in np.unique(half[visible]):
        chosen = np.flatnonzero(visible & (half == h))
        for part in _batches(chosen.size, ((2 * h + 1) * DEFAULT_OVERSAMPLE) ** 2):
            k = chosen[part]
            stamps = moffat_stamps(h, x[k] - cx[k], y[k] - cy[k], fwhm, beta, ellipticity, theta_deg)
            _add_stamps(image, stamps * flux[k, None, None], cx[k] - h, cy[k] - h)
    return image


def render_galaxies(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    r_eff_px: np.ndarray,
    sersic_n: np.ndarray,
    ellipticity: np.ndarray,
    theta_deg: np.ndarray,
    psf: np.ndarray,
    oversample: int = DEFAULT_OVERSAMPLE,
) -> np.ndarray:
    """Sersic galaxies convolved with ``psf``, each normalised to its ``flux``.

    Each galaxy is integrated over pixels on a stamp of half-width
    ``6 r_eff`` (8..64 px, in powers of two) with astropy's ``Sersic2D``,
    normalised to unit sum, convolved with ``psf`` (odd-sized, unit sum) by
    FFT and added at its 0-based position ``(x, y)``.
    """
    x, y, flux, r_eff_px, sersic_n, ellipticity, theta_deg = (
        np.atleast_1d(np.asarray(v, dtype=float))
        for v in np.broadcast_arrays(x, y, flux, r_eff_px, sersic_n, ellipticity, theta_deg)
    )
    image = np.zeros(shape, dtype=np.float64)
    half = _size_classes(np.ceil(6.0 * r_eff_px), 8, 64)
    psf_half = psf.shape[0] // 2
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    ny, nx = shape
    reach = half + psf_half
    visible = (cx + reach >= 0) & (cy + reach >= 0) & (cx - reach < nx) & (cy - reach < ny)
    for h in np.unique(half[visible]):
        grid = subpixel_grid(h, oversample)
        chosen = np.flatnonzero(visible & (half == h))
        for part in _batches(chosen.size, grid.size**2):
            k = chosen[part]
            r, n, x0, y0, e, t = (
                v[k, None, None] for v in (r_eff_px, sersic_n, x - cx, y - cy, ellipticity, np.deg2rad(theta_deg))
            )
            fine = Sersic2D.evaluate(grid[None, None, :], grid[None, :, None], 1.0, r, n, x0, y0, e, t)
            stamps = pixel_means(fine, oversample) * flux[k, None, None]
            blurred = fftconvolve(stamps, psf[None], mode="full", axes=(1, 2))
            _add_stamps(image, blurred, cx[k] - h - psf_half, cy[k] - h - psf_half)
    return image


def sky_background(shape: tuple[int, int], sky_e: float, gradient: tuple[float, float]) -> np.ndarray:
    """Sky (e-/px) of ``sky_e`` at the centre, changing linearly by ``gradient`` to the right/top edges."""
    ny, nx = shape
    gx = gradient[0] * np.linspace(-1.0, 1.0, nx)[None, :]
    gy = gradient[1] * np.linspace(-1.0, 1.0, ny)[:, None]
    return sky_e * (1.0 + gx + gy)


def star_pixels(sky: SkyModel, wcs: WCS, distortions: tuple[Distortion, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of the stars of ``sky`` through the true ``wcs``, moved by ``distortions``."""
    return displaced(*wcs.world_to_pixel_values(sky.star_ra, sky.star_dec), distortions)


def _render_stars(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, conditions: EpochConditions,
    odd_psfs: OddPsfs | None,
) -> None:
    """Add the stars to ``image``: all with the frame's PSF, except the ``odd_psfs`` ones with their own."""
    if odd_psfs is None or not odd_psfs.index.size:
        image += render_moffat_sources(image.shape, x, y, flux, **conditions.psf)
        return
    normal = np.ones(x.size, dtype=bool)
    normal[odd_psfs.index] = False
    image += render_moffat_sources(image.shape, x[normal], y[normal], flux[normal], **conditions.psf)
    for k, star in enumerate(odd_psfs.index):
        psf = dict(conditions.psf, ellipticity=float(odd_psfs.ellipticity[k]), theta_deg=float(odd_psfs.theta_deg[k]))
        sx, sy = x[star] + odd_psfs.shift_x[k], y[star] + odd_psfs.shift_y[k]
        cx, cy = int(np.rint(sx)), int(np.rint(sy))
        half = int(_stamp_half_widths(flux[star : star + 1], psf["fwhm"], psf["beta"], psf["ellipticity"],
                                      floor_e=0.5, max_half=256)[0])
        # one star's stamp on its own pixels: a full-frame render per odd star would dominate the cost
        stamp = moffat_stamps(half, [sx - cx], [sy - cy], **psf)[0] * flux[star]
        add_clipped(image, stamp, cx - half, cy - half)


def render_scene(
    sky: SkyModel, wcs: WCS, shape: tuple[int, int], conditions: EpochConditions, band: str, *,
    distortions: tuple[Distortion, ...] = (), odd_psfs: OddPsfs | None = None,
) -> np.ndarray:
    """Noiseless electrons per pixel (before the flat field): sky + stars + galaxies.

    ``wcs`` must be the frame's true WCS; sources are placed where it maps them,
    moved by the local ``distortions`` (which that WCS does not describe). The
    ``odd_psfs`` stars are drawn with their own PSF instead of the frame's.
    """
    star_rate, galaxy_rate = sky.rates(band)
    exptime = conditions.exptime
    image = sky_background(shape, conditions.sky_e, conditions.sky_gradient)
    if sky.star_ra.size:
        x, y = star_pixels(sky, wcs, distortions)
        _render_stars(image, x, y, star_rate * exptime, conditions, odd_psfs)
    if sky.galaxy_ra.size:
        x, y = displaced(*wcs.world_to_pixel_values(sky.galaxy_ra, sky.galaxy_dec), distortions)
        psf = moffat_stamp(2 * psf_half_width(conditions.seeing_fwhm_px) + 1, **conditions.psf)
        image += render_galaxies(
            shape, x, y, galaxy_rate * exptime,
            sky.galaxy_r_eff_arcsec / (3600.0 * np.mean(proj_plane_pixel_scales(wcs))),
            sky.galaxy_sersic_n, sky.galaxy_ellipticity,
            sky.galaxy_theta_deg + conditions.rotation_deg, psf,
        )
    return image


# --------------------------------------------------------------------------- transients


#: The classes of :attr:`Transient.kind`: on a galaxy, on a star, or hostless.
TRANSIENT_KINDS = ("supernova", "variable", "transient")

#: A star may carry a variable when its optimal S/N in the frame is at least this: the reference,
#: deeper than one frame, then lists it even if the reference epoch had somewhat worse seeing.
VARIABLE_MIN_SNR = 20.0

#: ... and when its peak pixel (sky included) stays below this fraction of the full well, so the
#: brightened star is still unsaturated: S/N 100 on such a star adds ~10 % to its flux at most.
VARIABLE_MAX_FILL = 0.5


@dataclass(frozen=True)
class Transient:
    """Truth of a point source injected into one science frame.

    Attributes
    ----------
    x, y : float
        True 0-based position in the trimmed data section.
    ra, dec : float
        Degrees (ICRS), from the frame's true WCS.
    flux_e : float
        Electrons collected before the flat-field response.
    snr_optimal : float
        Optimal PSF-weighted S/N in that frame (see :func:`optimal_snr`).
    kind : str
        One of :data:`TRANSIENT_KINDS`: ``"supernova"`` (placed on a galaxy),
        ``"variable"`` (on a star of the sky model, which brightens by
        ``flux_e``) or ``"transient"`` (hostless).
    host_index : int
        Index of the host in the :class:`SkyModel`: into the ``galaxy_*``
        arrays for a supernova, the ``star_*`` arrays for a variable; -1 for
        a hostless transient.
    host_ra, host_dec : float or None
        The host's catalogue position (deg); None without a host.
    """

    x: float
    y: float
    ra: float
    dec: float
    flux_e: float
    snr_optimal: float
    kind: str = "transient"
    host_index: int = -1
    host_ra: float | None = None
    host_dec: float | None = None


def optimal_snr(flux_e: float, psf: np.ndarray, background_e, read_noise_e: float, response=1.0) -> float:
    """Optimal (PSF-weighted) S/N of a point source.

    ``S/N**2 = sum_i s_i**2 / (b_i + read_noise**2 + s_i)`` with ``s_i =
    flux * response_i * psf_i`` the detected source electrons and ``b_i`` the
    detected background electrons (sky and any underlying sources) of pixel
    ``i``. Flat-fielding scales signal and noise alike, so this is also the
    S/N in the calibrated image.

    Parameters
    ----------
    flux_e : float
        Source electrons before the flat-field response.
    psf : ndarray
        Pixel-integrated PSF at the source position (sums to ~1).
    background_e : float or ndarray
        Detected background electrons per pixel, same shape as ``psf``.
    read_noise_e : float
    response : float or ndarray
        Flat-field response of the pixels.
    """
    signal = flux_e * np.asarray(response) * psf
    return float(np.sqrt(np.sum(signal**2 / (np.asarray(background_e) + read_noise_e**2 + signal))))


def flux_for_snr(snr: float, psf: np.ndarray, background_e, read_noise_e: float, response=1.0) -> float:
    """Flux (e-) whose :func:`optimal_snr` equals ``snr`` (root of a monotonic function)."""
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if not np.any(np.asarray(psf) * np.asarray(response) > 0):
        raise ValueError("the PSF (times the response) has no positive pixel: no flux reaches that S/N")

    def excess(flux):
        return optimal_snr(flux, psf, background_e, read_noise_e, response) - snr

    high = 1.0
    while excess(high) < 0:
        high *= 4.0
    return float(brentq(excess, 0.0, high, rtol=1e-10))


@dataclass
class _Placement:
    """Positions of a frame's transients while they are drawn, and what each one sits on."""

    x: np.ndarray
    y: np.ndarray
    kind: list[str]
    host: np.ndarray

    def assign(self, start: int, kind: str, host: np.ndarray, x: np.ndarray, y: np.ndarray) -> int:
        """Put transients ``start, start + 1, ...`` on ``host`` at ``(x, y)``; returns the next free index."""
        stop = start + host.size
        self.x[start:stop], self.y[start:stop], self.host[start:stop] = x, y, host
        self.kind[start:stop] = [kind] * host.size
        return stop


def _inside(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], edge: int) -> np.ndarray:
    """Indices of the points ``(x, y)`` at least ``edge`` px from the edges of ``shape``."""
    ny, nx = shape
    return np.flatnonzero((x >= edge) & (x <= nx - 1 - edge) & (y >= edge) & (y <= ny - 1 - edge))


def _place_on_galaxies(place: _Placement, sky: SkyModel, wcs: WCS, shape: tuple[int, int], edge: int,
                       fraction: float, rng: np.random.Generator) -> tuple[int, bool]:
    """Move a binomial ``fraction`` of the transients onto galaxies (~half a half-light radius off).

    Returns how many, and whether any galaxy could host one. The draws are
    those the simulator has always made, so frames without variables stay
    the same bit for bit.
    """
    ny, nx = shape
    gx, gy = wcs.world_to_pixel_values(sky.galaxy_ra, sky.galaxy_dec)
    candidates = _inside(gx, gy, shape, edge)
    n_hosted = rng.binomial(place.x.size, fraction) if candidates.size else 0
    if not n_hosted:
        return 0, bool(candidates.size)
    host = rng.choice(candidates, n_hosted)
    spread = 0.5 * sky.galaxy_r_eff_arcsec[host] / (3600.0 * np.mean(proj_plane_pixel_scales(wcs)))
    x = np.clip(gx[host] + rng.normal(0.0, 1.0, n_hosted) * spread, edge, nx - 1 - edge)
    y = np.clip(gy[host] + rng.normal(0.0, 1.0, n_hosted) * spread, edge, ny - 1 - edge)
    return place.assign(0, "supernova", host, x, y), True


def _place_on_stars(place: _Placement, start: int, sky: SkyModel, wcs: WCS, shape: tuple[int, int], edge: int,
                    probability: float, stars: np.ndarray | None, rng: np.random.Generator) -> None:
    """Move a binomial ``probability`` of the transients from ``start`` on onto distinct ``stars``, exactly."""
    sx, sy = wcs.world_to_pixel_values(sky.star_ra, sky.star_dec)
    candidates = _inside(sx, sy, shape, edge)
    if stars is not None:
        candidates = np.intersect1d(candidates, stars)
    if not candidates.size:
        return
    n_variable = min(int(rng.binomial(place.x.size - start, min(probability, 1.0))), candidates.size)
    # distinct stars: two variables on one star would be one brightening in the difference
    host = rng.choice(candidates, n_variable, replace=False)
    place.assign(start, "variable", host, sx[host], sy[host])


def _host_position(sky: SkyModel, kind: str, index: int) -> tuple[float | None, float | None]:
    """Catalogue RA/Dec of a transient's host (None, None for a hostless one)."""
    if kind == "supernova":
        return float(sky.galaxy_ra[index]) % 360.0, float(sky.galaxy_dec[index])
    if kind == "variable":
        return float(sky.star_ra[index]) % 360.0, float(sky.star_dec[index])
    return None, None


def _measured_transient(place: _Placement, i: int, radec: tuple[float, float], target_snr: float,
                        scene_e: np.ndarray, response: np.ndarray, sky: SkyModel, conditions: EpochConditions,
                        read_noise_e: float, half: int) -> Transient:
    """Transient ``i`` of ``place``, at ``radec``, with the flux that gives it ``target_snr`` over the frame's scene."""
    x, y = float(place.x[i]), float(place.y[i])
    cx, cy = int(np.rint(x)), int(np.rint(y))
    psf = moffat_stamp(2 * half + 1, offset=(x - cx, y - cy), **conditions.psf)
    window = np.s_[cy - half : cy + half + 1, cx - half : cx + half + 1]
    background = scene_e[window] * response[window]
    flux = flux_for_snr(target_snr, psf, background, read_noise_e, response[window])
    snr = optimal_snr(flux, psf, background, read_noise_e, response[window])
    kind, host = place.kind[i], int(place.host[i])
    return Transient(x, y, radec[0] % 360.0, radec[1], flux, snr, kind, host, *_host_position(sky, kind, host))


def variable_star_candidates(sky: SkyModel, band: str, conditions: EpochConditions, read_noise_e: float,
                             full_well_e: float, *, exclude=()) -> np.ndarray:
    """Indices of the stars of ``sky`` a variable may sit on in this exposure.

    Those bright enough to be in the reference (optimal S/N of at least
    :data:`VARIABLE_MIN_SNR` over the sky) and far from saturation (peak pixel
    with sky below :data:`VARIABLE_MAX_FILL` of ``full_well_e``), less the
    ``exclude`` ones (e.g. the stars drawn with an odd PSF: the brightening is
    rendered with the frame's PSF).
    """
    flux = sky.rates(band)[0] * conditions.exptime
    half = psf_half_width(conditions.seeing_fwhm_px)
    psf = moffat_stamp(2 * half + 1, **conditions.psf).ravel()
    signal = flux[:, None] * psf[None, :]
    snr = np.sqrt(np.sum(signal**2 / (conditions.sky_e + read_noise_e**2 + signal), axis=1))
    brightest_sky = conditions.sky_e * (1.0 + np.abs(conditions.sky_gradient).sum())  # at a corner
    unsaturated = flux * psf.max() + brightest_sky < VARIABLE_MAX_FILL * full_well_e
    return np.setdiff1d(np.flatnonzero((snr >= VARIABLE_MIN_SNR) & unsaturated), np.asarray(exclude, dtype=int))


def _check_transient_arguments(n: int, host_fraction: float, variable_fraction: float,
                               snr_range: tuple[float, float]) -> None:
    if n < 0 or not 0 <= host_fraction <= 1 or not 0 < snr_range[0] <= snr_range[1]:
        raise ValueError("need n >= 0, 0 <= host_fraction <= 1 and 0 < snr_range[0] <= snr_range[1]")
    if not 0 <= variable_fraction <= 1:
        raise ValueError(f"variable_fraction must be between 0 and 1, got {variable_fraction}")


def draw_transients(
    n: int,
    scene_e: np.ndarray,
    response: np.ndarray,
    wcs: WCS,
    sky: SkyModel,
    conditions: EpochConditions,
    read_noise_e: float,
    rng: np.random.Generator,
    *,
    edge_px: int = 30,
    snr_range: tuple[float, float] = (5.0, 100.0),
    host_fraction: float = 0.3,
    variable_fraction: float = 0.0,
    variable_stars: np.ndarray | None = None,
) -> tuple[Transient, ...]:
    """Choose positions and fluxes of ``n`` transients for one frame.

    Positions are uniform at least ``edge_px`` from the edges, except a
    ``host_fraction`` of them placed on galaxies of the field (offset from the
    nucleus by ~half a half-light radius; kind ``"supernova"``) and a
    ``variable_fraction`` put exactly on stars of ``sky`` (kind
    ``"variable"``: the star brightens by the transient's flux), at most one
    per star. When the two fractions add up to more than 1 the galaxies get
    ``1 - variable_fraction``. Target S/N values are log-uniform in
    ``snr_range`` and converted to fluxes with :func:`flux_for_snr` against the
    frame's own noiseless ``scene_e`` (pre-flat e-) times ``response``, so
    host-galaxy light, the variable's own star and neighbouring stars count as
    background.

    Parameters
    ----------
    variable_fraction : float
        0 (the default) draws no random number for variables, so the
        transients are those of a call without it.
    variable_stars : ndarray of int, optional
        Indices of the stars a variable may sit on (:func:`variable_star_candidates`);
        default: any star inside the edges.
    """
    _check_transient_arguments(n, host_fraction, variable_fraction, snr_range)
    if n == 0:
        return ()
    ny, nx = scene_e.shape
    half = psf_half_width(conditions.seeing_fwhm_px)
    edge = max(edge_px, half)
    if nx <= 2 * edge + 1 or ny <= 2 * edge + 1:
        raise ValueError(f"a {nx}x{ny} frame is too small for transients {edge} px from the edges")
    place = _Placement(rng.uniform(edge, nx - 1 - edge, n), rng.uniform(edge, ny - 1 - edge, n),
                       ["transient"] * n, np.full(n, -1))
    # both fractions are of all n; over 1 together, the galaxies yield to the share of variables asked for
    galaxy_share = min(host_fraction, 1.0 - variable_fraction)
    n_hosted, had_galaxies = _place_on_galaxies(place, sky, wcs, scene_e.shape, edge, galaxy_share, rng)
    if variable_fraction > 0:
        # drawn among the transients left off the galaxies, so variable_fraction is of all n on average
        probability = variable_fraction / (1.0 - galaxy_share) if had_galaxies else variable_fraction
        _place_on_stars(place, n_hosted, sky, wcs, scene_e.shape, edge, probability, variable_stars, rng)
    target = np.exp(rng.uniform(*np.log(snr_range), n))
    ra, dec = wcs.pixel_to_world_values(place.x, place.y)
    return tuple(
        _measured_transient(place, i, (float(ra[i]), float(dec[i])), target[i], scene_e, response, sky, conditions,
                            read_noise_e, half)
        for i in range(n)
    )


# --------------------------------------------------------------------------- detector effects


def cosmic_ray_image(
    shape: tuple[int, int],
    n: int,
    rng: np.random.Generator,
    *,
    mean_length_px: float = 2.0,
    median_charge_e: float = 1200.0,
) -> np.ndarray:
    """Electrons deposited by ``n`` cosmic rays: short, sharp (unblurred) tracks.

    Each hit starts at a uniform position and runs a projected length drawn
    from an exponential of mean ``mean_length_px`` in a random direction; it
    deposits a log-normal charge (median ``median_charge_e``, 0.5 dex-ish
    spread) per pixel of track, so a head-on hit is a single hot pixel.
    """
    return render_cosmic_rays(shape, draw_cosmic_rays(shape, n, rng, mean_length_px=mean_length_px,
                                                      median_charge_e=median_charge_e))


def draw_cosmic_rays(
    shape: tuple[int, int],
    n: int,
    rng: np.random.Generator,
    *,
    mean_length_px: float = 2.0,
    median_charge_e: float = 1200.0,
) -> CosmicRays:
    """The tracks of ``n`` cosmic rays as :func:`cosmic_ray_image` draws them (no draw for ``n <= 0``)."""
    ny, nx = shape
    if n <= 0:
        return CosmicRays(*(np.zeros(0) for _ in range(5)))
    x0, y0 = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    length = rng.exponential(mean_length_px, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    charge = rng.lognormal(np.log(median_charge_e), 0.5, n) * np.maximum(length, 1.0)
    return CosmicRays(x0, y0, length, angle, charge)


def render_cosmic_rays(shape: tuple[int, int], rays: CosmicRays) -> np.ndarray:
    """Electrons of the ``rays`` tracks, sampled every quarter pixel, each pixel of track its share of the charge."""
    ny, nx = shape
    image = np.zeros(shape, dtype=np.float64)
    n = rays.x0.size
    if n == 0:
        return image
    x0, y0, length, angle, charge = rays.x0, rays.y0, rays.length, rays.angle, rays.charge
    steps = np.ceil(length / 0.25).astype(int) + 1  # quarter-pixel sampling of the track
    track = np.repeat(np.arange(n), steps)
    t = (np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)) / np.maximum(steps[track] - 1, 1)
    ix = np.rint(x0[track] + t * length[track] * np.cos(angle[track])).astype(int)
    iy = np.rint(y0[track] + t * length[track] * np.sin(angle[track])).astype(int)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    weights = (charge / steps)[track]
    image += np.bincount(iy[inside] * nx + ix[inside], weights=weights[inside], minlength=ny * nx).reshape(shape)
    return image


def _spill(segment: np.ndarray, charge: float, full_well_e: float) -> None:
    """Fill ``segment`` (a view ordered away from the source) pixel by pixel up to full well with ``charge``."""
    room = np.maximum(full_well_e - segment, 0.0)
    filled = np.cumsum(room)
    k = int(np.searchsorted(filled, charge))
    segment[:k] += room[:k]
    if k < segment.size:
        segment[k] += charge - (filled[k - 1] if k else 0.0)
    # charge beyond the last pixel leaves the chip through the serial register


def bleed_full_wells(electrons: np.ndarray, full_well_e: float) -> np.ndarray:
    """Redistribute charge above ``full_well_e`` along columns, in place.

    Every run of overfull pixels in a column is set to full well and its
    excess charge spills half up, half down the column (the CCD's parallel
    readout direction), filling neighbours to full well: the bleed trails of
    saturated stars. Total charge is conserved unless it reaches the chip edge.
    """
    for column in np.flatnonzero((electrons > full_well_e).any(axis=0)):
        pixels = electrons[:, column]
        changes = np.diff(np.concatenate(([0], (pixels > full_well_e).astype(np.int8), [0])))
        for start, stop in zip(np.flatnonzero(changes == 1), np.flatnonzero(changes == -1)):
            excess = float(np.sum(pixels[start:stop] - full_well_e))
            pixels[start:stop] = full_well_e
            _spill(pixels[stop:], excess / 2, full_well_e)
            _spill(pixels[:start][::-1], excess / 2, full_well_e)
    return electrons


def expose(expected_e: np.ndarray, exptime: float, detector: DetectorModel, rng: np.random.Generator) -> np.ndarray:
    """Detected electrons: Poisson draw of ``expected_e``, plus cosmic rays, then bleeding."""
    return _expose_tracked(expected_e, exptime, detector, rng)[0]


def _expose_tracked(
    expected_e: np.ndarray, exptime: float, detector: DetectorModel, rng: np.random.Generator
) -> tuple[np.ndarray, CosmicRays]:
    """:func:`expose`, and the cosmic rays it added."""
    spec = detector.spec
    electrons = rng.poisson(expected_e).astype(np.float64)
    n_hits = rng.poisson(spec.cosmic_ray_rate * electrons.size / 1e6 * exptime)
    rays = draw_cosmic_rays(electrons.shape, n_hits, rng)
    electrons += render_cosmic_rays(electrons.shape, rays)
    return bleed_full_wells(electrons, spec.full_well_e), rays


def read_out(detector: DetectorModel, electrons: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Raw ``uint16`` frame: bias + drift + structure + read noise (+ ``electrons``/gain in the data section)."""
    spec = detector.spec
    level = spec.bias_level_adu + rng.normal(0.0, spec.bias_drift_adu)
    raw = detector.bias_structure_adu + level + rng.normal(0.0, spec.read_noise_e / spec.gain, spec.raw_shape)
    if electrons is not None:
        raw[:, : spec.nx] += electrons / spec.gain
    return np.clip(np.rint(raw), 0, ADC_MAX).astype(np.uint16)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class RawFrame:
    """A raw frame as the camera writes it.

    Attributes
    ----------
    data : ndarray, uint16, shape ``spec.raw_shape``
        ADU, overscan included.
    header : astropy.io.fits.Header
        Observing keywords (and the header WCS for science frames).
    transients : tuple of Transient
        Sources injected into this frame (science frames only).
    artifacts : tuple of Artifact
        Truth of the frame's artifacts, when the science frame was simulated
        with :class:`~.artifacts.ArtifactRates` (empty otherwise).
    """

    data: np.ndarray
    header: fits.Header
    transients: tuple[Transient, ...] = ()
    artifacts: tuple[Artifact, ...] = ()


def raw_header(
    spec: DetectorSpec,
    *,
    imagetyp: str,
    object_name: str,
    band: str,
    mjd: float,
    exptime: float,
    airmass: float | None = None,
) -> fits.Header:
    """Standard observing keywords of a raw frame (no structural or WCS cards)."""
    header = fits.Header()
    header["DATE-OBS"] = (Time(mjd, format="mjd", scale="utc").isot, "UTC start of exposure")
    header["MJD-OBS"] = (round(float(mjd), 8), "MJD (UTC) start of exposure")
    header["TIMESYS"] = "UTC"
    header["EXPTIME"] = (float(exptime), "exposure time (s)")
    header["FILTER"] = band
    header["IMAGETYP"] = imagetyp
    header["OBJECT"] = object_name
    if airmass is not None:
        header["AIRMASS"] = (round(float(airmass), 4), "airmass at start of exposure")
    header["GAIN"] = (spec.gain, "e-/ADU")
    header["RDNOISE"] = (spec.read_noise_e, "read noise (e-)")
    header["SATURATE"] = (spec.saturate_adu, "raw level of saturation (ADU, bias included)")
    header["BUNIT"] = "adu"
    header["INSTRUME"] = spec.instrument
    header["TELESCOP"] = spec.telescope
    header["LONG-OBS"] = (spec.site_longitude_deg, "site longitude (deg, east positive)")
    header["LAT-OBS"] = (spec.site_latitude_deg, "site latitude (deg)")
    if spec.overscan:
        header["BIASSEC"] = (spec.biassec, "overscan section (FITS, 1-based)")
        header["TRIMSEC"] = (spec.trimsec, "data section to keep (FITS, 1-based)")
        header["DATASEC"] = (spec.trimsec, "light-sensitive section (FITS, 1-based)")
    return header


def simulate_bias_frame(detector: DetectorModel, rng: np.random.Generator, *, mjd: float, band: str) -> RawFrame:
    """A zero-second bias frame (``band`` is the filter-wheel position, irrelevant for the data)."""
    header = raw_header(detector.spec, imagetyp="bias", object_name="bias", band=band, mjd=mjd, exptime=0.0)
    return RawFrame(read_out(detector, None, rng), header)


def simulate_flat_frame(
    detector: DetectorModel,
    rng: np.random.Generator,
    *,
    mjd: float,
    band: str,
    level_adu: float = 20000.0,
    exptime: float = 5.0,
) -> RawFrame:
    """A twilight flat: uniform illumination of ``level_adu`` above bias times the flat response."""
    band_response(band)  # refuse unknown filters
    spec = detector.spec
    if not 0 < level_adu < spec.saturate_adu - spec.bias_level_adu:
        raise ValueError(f"flat level {level_adu} ADU must be positive and below saturation")
    electrons = expose(level_adu * spec.gain * detector.flat, exptime, detector, rng)
    header = raw_header(spec, imagetyp="flat", object_name="flat", band=band, mjd=mjd, exptime=exptime)
    return RawFrame(read_out(detector, electrons, rng), header)


@dataclass(frozen=True)
class _SkyPlan:
    """The artifacts drawn before the scene is rendered, since they change where and how stars land."""

    distortions: tuple[Distortion, ...] = ()
    odd_psfs: OddPsfs | None = None


def _draw_sky_plan(rates: ArtifactRates, sky: SkyModel, band: str, conditions: EpochConditions,
                   shape: tuple[int, int], rng: np.random.Generator) -> _SkyPlan:
    """Local distortions, then the bright stars with an odd PSF (nothing drawn for a zero rate)."""
    distortions = draw_distortions(rates, shape, rng)
    star_flux = sky.rates(band)[0] * conditions.exptime
    return _SkyPlan(distortions, draw_odd_psfs(rates, star_flux, conditions.psf_ellipticity, rng))


def _displace_transients(transients: tuple[Transient, ...], distortions: tuple[Distortion, ...]):
    """Transients moved by the local distortion like every source: ``x, y`` where they land, RA/Dec unchanged."""
    if not transients or not distortions:
        return transients
    x, y = displaced(np.array([t.x for t in transients]), np.array([t.y for t in transients]), distortions)
    return tuple(dataclasses.replace(t, x=float(x[k]), y=float(y[k])) for k, t in enumerate(transients))


def _fixed_column_artifacts(detector: DetectorModel) -> list[Artifact]:
    """Rows of the detector's fixed hot and dead columns (the master bias and flat remove them)."""
    ny, bias = detector.spec.ny, detector.bias_structure_adu
    # columns are drawn at least 8 px from the edges, so both neighbours exist
    excess = [float(bias[:, c].mean() - bias[:, [c - 1, c + 1]].mean()) for c in detector.hot_columns]
    hot = [Artifact("hot_column", float(c), 0.0, float(c), ny - 1.0, 1.0, e)
           for c, e in zip(detector.hot_columns, excess)]
    dead = [Artifact("dead_column", float(c), 0.0, float(c), ny - 1.0, 1.0, float(np.median(detector.flat[:, c])))
            for c in detector.dead_columns]
    return hot + dead


def _expose_with_artifacts(
    scene: np.ndarray, rates: ArtifactRates, plan: _SkyPlan, detector: DetectorModel, sky: SkyModel, band: str,
    conditions: EpochConditions, wcs: WCS, rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[Artifact, ...]]:
    """Trails and ghosts added to the light, flickering columns and hot pixels to the charge, then exposed.

    Returns the detected electrons and the truth of every artifact in them,
    the ones every frame has (cosmic rays, saturation, fixed columns) included.
    """
    spec, shape = detector.spec, detector.spec.data_shape
    x, y = star_pixels(sky, wcs, plan.distortions) if sky.star_ra.size else (np.zeros(0), np.zeros(0))
    flux = sky.rates(band)[0] * conditions.exptime
    noise_e = float(np.sqrt(conditions.sky_e + spec.read_noise_e**2))
    trails = draw_trails(rates, shape, conditions.seeing_fwhm_px, noise_e, rng)
    ghosts = find_ghosts(rates, x, y, flux, shape)
    for trail in trails:
        render_trail(scene, trail)
    for ghost in ghosts:
        render_ghost(scene, ghost)
    expected = scene * detector.flat
    columns, hot = draw_flicker_columns(rates, shape, rng), draw_hot_pixels(rates, shape, rng)
    add_dark_charge(expected, columns, hot)
    electrons, rays = _expose_tracked(expected, conditions.exptime, detector, rng)
    rows = [t.artifact() for t in trails] + [c.artifact(spec.ny) for c in columns]
    rows += hot.artifacts() if hot is not None else []
    rows += plan.odd_psfs.artifacts(x, y, flux, shape) if plan.odd_psfs is not None else []
    rows += [d.artifact() for d in plan.distortions] + [g.artifact() for g in ghosts] + rays.artifacts()
    rows += saturation_artifacts(electrons, spec.full_well_e) + _fixed_column_artifacts(detector)
    return electrons, with_sky_positions(rows, wcs)


def simulate_science_frame(
    detector: DetectorModel,
    field: FieldSpec,
    sky: SkyModel,
    conditions: EpochConditions,
    band: str,
    rng: np.random.Generator,
    *,
    n_transients: int = 0,
    edge_px: int = 30,
    snr_range: tuple[float, float] = (5.0, 100.0),
    host_fraction: float = 0.3,
    variable_fraction: float = 0.0,
    artifacts: ArtifactRates | None = None,
) -> RawFrame:
    """A raw science frame of ``field`` under ``conditions``, with ``n_transients`` injected sources.

    Scene (sky with gradient, stars and galaxies through the epoch's Moffat
    PSF, transients) x flat field -> Poisson -> cosmic rays -> bleeding ->
    bias, read noise, overscan -> ADC. The header carries the observing
    keywords and the TAN WCS with the documented ``wcs_error_px`` applied.

    With ``artifacts`` (:class:`~.artifacts.ArtifactRates`) the frame also
    gets the artifacts it asks for, and ``RawFrame.artifacts`` the truth of
    all of them, the cosmic rays, saturated regions and fixed columns every
    frame has included. Random numbers are drawn for an artifact only when its
    rate is not zero, so ``ArtifactRates()`` renders the same frame as None.
    A local distortion moves the transients too: their ``x, y`` are where
    they land, their RA/Dec their position on the sky. Transient fluxes are
    set for their S/N before trails and ghosts are added (a transient on a
    trail is a little fainter than its ``snr_optimal``).

    A ``variable_fraction`` of the transients are variable stars: the
    brightening of a star of ``sky`` bright enough for the reference and far
    from saturation (:func:`variable_star_candidates`; not one with an odd
    PSF), by the transient's ``flux_e``. ``host_fraction`` is the share of
    supernovae, on galaxies (see :func:`draw_transients`). A zero
    ``variable_fraction`` draws no random number for it.
    """
    spec = detector.spec
    true_wcs = WCS(wcs_header(field, spec, conditions.offset_px, conditions.rotation_deg))
    plan = _SkyPlan() if artifacts is None else _draw_sky_plan(artifacts, sky, band, conditions, spec.data_shape, rng)
    scene = render_scene(sky, true_wcs, spec.data_shape, conditions, band, distortions=plan.distortions,
                         odd_psfs=plan.odd_psfs)
    stars = None
    if variable_fraction > 0:
        odd = plan.odd_psfs.index if plan.odd_psfs is not None else ()
        stars = variable_star_candidates(sky, band, conditions, spec.read_noise_e, spec.full_well_e, exclude=odd)
    transients = draw_transients(
        n_transients, scene, detector.flat, true_wcs, sky, conditions, spec.read_noise_e, rng,
        edge_px=edge_px, snr_range=snr_range, host_fraction=host_fraction, variable_fraction=variable_fraction,
        variable_stars=stars,
    )
    transients = _displace_transients(transients, plan.distortions)
    if transients:
        x, y, flux = np.array([(t.x, t.y, t.flux_e) for t in transients]).T
        scene += render_moffat_sources(spec.data_shape, x, y, flux, **conditions.psf)
    if artifacts is None:
        electrons, found = expose(scene * detector.flat, conditions.exptime, detector, rng), ()
    else:
        electrons, found = _expose_with_artifacts(scene, artifacts, plan, detector, sky, band, conditions, true_wcs,
                                                  rng)
    header = raw_header(
        spec, imagetyp="object", object_name=field.name, band=band, mjd=conditions.mjd,
        exptime=conditions.exptime, airmass=conditions.airmass,
    )
    error = conditions.wcs_error_px
    offset = (conditions.offset_px[0] + error[0], conditions.offset_px[1] + error[1])
    header.update(wcs_header(field, spec, offset, conditions.rotation_deg))
    return RawFrame(read_out(detector, electrons, rng), header, transients, found)
