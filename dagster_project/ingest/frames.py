"""Turn a structurally sound FITS file into a described frame, or say why not."""

import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from dagster_project.catalog.models import Observation, RawDataFile
from dagster_project.catalog.result_lifecycle import SCHEDULER_KEYWORDS
from dagster_project.ingest.fits_structure import FitsStructure, InvalidFitsFile, open_regular
from dagster_project.ingest.instruments import InstrumentRegistry
from dagster_project.keys import field_band_key, observation_key, safe_token
from dagster_project.science.calibration import parse_fits_section

#: canonical keywords each frame type must carry
REQUIRED = {
    "bias": ("date_obs", "imagetyp", "instrument", "gain", "read_noise", "saturate"),
    "dark": ("date_obs", "exptime", "imagetyp", "instrument", "gain", "read_noise", "saturate"),
    "flat": ("date_obs", "exptime", "filter", "imagetyp", "instrument", "gain", "read_noise", "saturate"),
    "science": (
        "date_obs", "exptime", "filter", "imagetyp", "object", "instrument", "gain", "read_noise", "saturate",
    ),
}
#: header cards kept in the catalog (values must be JSON-safe)
KEPT_CARDS = (
    "DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "IMAGETYP", "OBJECT", "AIRMASS", "GAIN", "RDNOISE",
    "SATURATE", "INSTRUME", "TELESCOP", "BIASSEC", "TRIMSEC", "NAXIS1", "NAXIS2", "BITPIX",
    *SCHEDULER_KEYWORDS.values(),
)
#: header values that go into catalog columns, and the widths of those columns
COLUMN_WIDTHS = {
    "instrument": RawDataFile.__table__.c.instrument.type.length,
    "filter": RawDataFile.__table__.c.filter_band.type.length,
    "object": Observation.__table__.c.field_name.type.length,
}


@dataclass(frozen=True)
class FrameInfo:
    """What the platform needs to know about a raw frame (values in header units)."""

    frame_type: str  # bias, dark, flat, science
    instrument: str
    filter_band: str | None
    object_name: str | None
    observation_time: datetime  # UTC
    mjd: float
    night: str  # YYYY-MM-DD, local date at the start of the night
    exposure_time: float  # seconds
    airmass: float | None
    gain: float  # e-/ADU
    read_noise: float  # e-
    saturate: float  # ADU
    naxis1: int  # of the data section (after trimming the overscan)
    naxis2: int
    ra: float | None  # deg, data-section centre, science frames only
    dec: float | None
    pixel_scale: float | None  # arcsec/px
    biassec: str | None
    trimsec: str | None
    cards: dict

    @property
    def field_name(self) -> str:
        return safe_token(self.object_name, "unknown")

    def observation_key(self, sha256: str) -> str:
        return observation_key(self.object_name, self.filter_band, self.observation_time, sha256)

    @property
    def field_band(self) -> str:
        return field_band_key(self.object_name, self.filter_band)


def _value(header: fits.Header, key: str):
    value = header.get(key)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _number(header: fits.Header, key: str, *, positive: bool = False, allow_zero: bool = True) -> float | None:
    value = _value(header, key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidFitsFile(f"{key} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidFitsFile(f"{key} = {value!r} is not finite")
    if positive and (number < 0 or (number == 0 and not allow_zero)):
        raise InvalidFitsFile(f"{key} = {number} must be {'>' if not allow_zero else '>='} 0")
    return number


def _night_of(time: datetime, longitude_deg: float) -> str:
    """Local calendar date at the start of the night (local solar time minus 12 h)."""
    local = time + timedelta(hours=longitude_deg / 15.0 - 12.0)
    return local.date().isoformat()


def describe_frame(path: Path, structure: FitsStructure, registry: InstrumentRegistry) -> FrameInfo:
    """Validate headers and data of a complete FITS file and describe it.

    Raises
    ------
    InvalidFitsFile
        Missing or malformed keywords, unknown frame type, unusable data or WCS.
    """
    header = structure.primary_header
    profile = registry.for_instrument(str(_value(header, "INSTRUME") or ""))
    kw = profile.keyword
    _check_widths(header, kw)
    imagetyp = _value(header, kw("imagetyp"))
    if imagetyp is None:
        raise InvalidFitsFile(f"missing required keyword {kw('imagetyp')}")
    frame_type = profile.frame_type(str(imagetyp))
    if frame_type == "unknown":
        raise InvalidFitsFile(f"{kw('imagetyp')} = {imagetyp!r} is not a known frame type")
    missing = [kw(c) for c in REQUIRED[frame_type] if _value(header, kw(c)) is None]
    if missing:
        raise InvalidFitsFile(f"missing required keyword(s) {', '.join(missing)} for a {frame_type} frame")

    try:
        time = Time(str(_value(header, kw("date_obs"))), format="isot", scale="utc")
    except ValueError:
        raise InvalidFitsFile(f"{kw('date_obs')} = {_value(header, kw('date_obs'))!r} is not an ISO time") from None
    mjd = _number(header, kw("mjd_obs"))
    if mjd is not None and abs(mjd - time.mjd) > 1.0 / 86400 * 5:
        raise InvalidFitsFile(f"{kw('mjd_obs')} = {mjd} disagrees with {kw('date_obs')} ({time.mjd:.6f})")
    observation_time = time.to_datetime(timezone=timezone.utc)

    exptime = _number(header, kw("exptime"), positive=True) or 0.0
    if frame_type in ("science", "flat") and exptime <= 0:
        raise InvalidFitsFile(f"{kw('exptime')} must be > 0 for a {frame_type} frame, got {exptime}")
    gain = _number(header, kw("gain"), positive=True, allow_zero=False)
    read_noise = _number(header, kw("read_noise"), positive=True)
    saturate = _number(header, kw("saturate"), positive=True, allow_zero=False)
    airmass = _number(header, kw("airmass"), positive=True, allow_zero=False)
    if airmass is not None and airmass < 1.0 - 1e-3:
        raise InvalidFitsFile(f"{kw('airmass')} = {airmass} is below 1")

    primary = structure.hdus[0]
    if header.get("NAXIS") != 2:
        raise InvalidFitsFile(f"primary HDU must hold a 2-D image, NAXIS = {header.get('NAXIS')}")
    ny, nx = int(header["NAXIS2"]), int(header["NAXIS1"])
    if nx < 16 or ny < 16:
        raise InvalidFitsFile(f"image of {nx}x{ny} pixels is too small to be a detector frame")
    biassec, trimsec = _value(header, kw("biassec")), _value(header, kw("trimsec"))
    try:
        data_slices = parse_fits_section(str(trimsec)) if trimsec else (slice(0, ny), slice(0, nx))
        if biassec:
            parse_fits_section(str(biassec))
    except ValueError as exc:
        raise InvalidFitsFile(f"bad section keyword: {exc}") from None
    data_ny = len(range(*data_slices[0].indices(ny)))
    data_nx = len(range(*data_slices[1].indices(nx)))
    if data_nx == 0 or data_ny == 0:
        raise InvalidFitsFile(f"{kw('trimsec')} = {trimsec!r} selects no pixels of a {nx}x{ny} image")

    _check_pixels(path)

    ra = dec = pixel_scale = None
    if frame_type == "science":
        ra, dec, pixel_scale = _pointing(header, data_nx, data_ny)

    longitude = _number(header, kw("site_longitude")) or 0.0
    cards = {k: _json_safe(header[k]) for k in KEPT_CARDS
             if k in header and isinstance(header[k], (str, int, float, bool))}
    return FrameInfo(
        frame_type=frame_type,
        instrument=str(_value(header, kw("instrument"))).strip(),
        filter_band=str(_value(header, kw("filter"))).strip() if _value(header, kw("filter")) else None,
        object_name=str(_value(header, kw("object"))).strip() if _value(header, kw("object")) else None,
        observation_time=observation_time,
        mjd=float(time.mjd),
        night=_night_of(observation_time, longitude),
        exposure_time=exptime,
        airmass=airmass,
        gain=gain,
        read_noise=read_noise,
        saturate=saturate,
        naxis1=data_nx,
        naxis2=data_ny,
        ra=ra,
        dec=dec,
        pixel_scale=pixel_scale,
        biassec=str(biassec) if biassec else None,
        trimsec=str(trimsec) if trimsec else None,
        cards=cards,
    )


def _check_widths(header: fits.Header, kw) -> None:
    """Values the catalog stores in fixed-width columns must fit them (PostgreSQL refuses, SQLite would not)."""
    for canonical, width in COLUMN_WIDTHS.items():
        value = _value(header, kw(canonical))
        if value is not None and len(str(value).strip()) > width:
            raise InvalidFitsFile(f"{kw(canonical)} is {len(str(value).strip())} characters long; "
                                  f"the catalog keeps at most {width}")


class ChecksumMismatch(InvalidFitsFile):
    """The declared CHECKSUM/DATASUM do not match: a corrupted file, or one whose writer has not finished."""


def _json_safe(value):
    """A header value the catalog's JSON can hold: a non-finite float (``1E400``) is kept as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _verify_checksums(hdul: fits.HDUList) -> None:
    """CHECKSUM and DATASUM (FITS Standard 4.0, appendix J), where the file declares them."""
    for index, hdu in enumerate(hdul):
        if "DATASUM" in hdu.header and hdu.verify_datasum() == 0:
            raise ChecksumMismatch(f"HDU {index}: DATASUM does not match the data (corrupted, or still being written)")
        if "CHECKSUM" in hdu.header and hdu.verify_checksum() == 0:
            raise ChecksumMismatch(f"HDU {index}: CHECKSUM does not match the HDU (corrupted, or still being written)")


def _check_pixels(path: Path) -> None:
    """The declared checksums must hold, and the data must decode and not be empty of information."""
    try:
        with open_regular(path) as fh, fits.open(fh, memmap=False, lazy_load_hdus=True) as hdul:
            _verify_checksums(hdul)
            data = hdul[0].data
            if data is None:
                raise InvalidFitsFile("primary HDU holds no data")
            sample = np.asarray(data[:: max(1, data.shape[0] // 64), :: max(1, data.shape[1] // 64)], dtype=float)
    except InvalidFitsFile:
        raise
    except Exception as exc:  # astropy/numpy raise many types on corrupt data
        raise InvalidFitsFile(f"pixel data cannot be read ({type(exc).__name__}: {exc})") from None
    finite = np.isfinite(sample)
    if finite.mean() < 0.5:
        raise InvalidFitsFile(f"only {finite.mean():.0%} of sampled pixels are finite")
    if np.nanmax(sample) == np.nanmin(sample):
        raise InvalidFitsFile("pixel data are constant")


def _pointing(header: fits.Header, nx: int, ny: int) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as exc:
            raise InvalidFitsFile(f"WCS cannot be parsed ({exc})") from None
    if not wcs.has_celestial or wcs.celestial.naxis != 2:
        raise InvalidFitsFile("science frame has no celestial WCS (CTYPE1/2, CRVAL, CRPIX, CD or CDELT)")
    try:
        sky = wcs.celestial.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0).icrs
        scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)
    except Exception as exc:
        raise InvalidFitsFile(f"WCS cannot be evaluated ({exc})") from None
    if not (np.isfinite(sky.ra.deg) and np.isfinite(sky.dec.deg)) or not 0.01 < scale < 100:
        raise InvalidFitsFile(f"WCS is not plausible (centre {sky}, pixel scale {scale:.3g} arcsec)")
    return float(sky.ra.deg) % 360.0, float(sky.dec.deg), scale
