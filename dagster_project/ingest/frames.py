"""Turn a structurally sound FITS file into a described frame, or say why not.

Headers are read through the frame's instrument profile (:mod:`.instruments`): keyword
aliases, legacy date formats, sexagesimal pointings, filter-wheel positions. What the
platform made of them is kept in the catalog with the raw cards (``RawDataFile.header``):
``header["profile"]`` holds the profile's name, ``standard`` (the standard keywords whose
value differs from the raw header's, e.g. ``EXPTIME`` read from ``ITIME``, ``FILTER`` from
a wheel position; a null value: the raw card does not apply), and for science frames
``wcs``: ``header`` (the frame's own WCS), ``nominal`` (none; ``nominal_wcs`` holds the
cards built from the pointing and the profile's geometry) or ``none`` (none, and no pixel
scale to build one). Calibration reads these (:func:`standard_cards`, :func:`standard_card`).

A science frame needs a position: its celestial WCS, or else a pointing (``RA``/``DEC``),
which the calibration stage refines into a WCS against an earlier frame of the field, or
blocks the observation saying why. A frame with neither is quarantined.
"""

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import FK4, FK5, ICRS, Angle, SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales, wcs_to_celestial_frame

from dagster_project.catalog.schema import Observation, RawDataFile
from dagster_project.catalog.queries import SCHEDULER_KEYWORDS
from dagster_project.ingest.fits_structure import (
    CARD,
    ChecksumMismatch,
    FitsStructure,
    HduLayout,
    InvalidFitsFile,
    open_regular,
    verify_checksums,
)
from dagster_project.ingest.instruments import STANDARD_KEYWORDS, InstrumentProfile, InstrumentRegistry
from dagster_project.keys import field_band_key, observation_key, safe_token
from dagster_project.science.astrometry import nominal_wcs_header
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
    #: science frames: "header" (its own WCS), "nominal" (built from the pointing) or "none"
    wcs_source: str | None = None

    @property
    def field_name(self) -> str:
        return safe_token(self.object_name, "unknown")

    def observation_key(self, sha256: str) -> str:
        return observation_key(self.object_name, self.filter_band, self.observation_time, sha256)

    @property
    def field_band(self) -> str:
        return field_band_key(self.object_name, self.filter_band)


def _value(header: Mapping, key: str):
    value = header.get(key)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _number(header: Mapping, key: str, *, positive: bool = False, allow_zero: bool = True) -> float | None:
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
        Missing or malformed keywords, unknown frame type, unusable data or WCS,
        a science frame with neither a WCS nor a pointing.
    """
    header = structure.primary.values
    profile = registry.for_instrument(str(_value(header, "INSTRUME") or ""))

    def kw(canonical: str) -> str:
        return profile.keyword_in(header, canonical)

    _check_widths(header, kw)
    frame_type = _frame_type(header, profile, kw)
    time, mjd = _checked_time(header, profile, kw)
    observation_time = time.to_datetime(timezone=timezone.utc)
    exposure = _exposure(header, kw, frame_type)
    filter_band = _filter_band(header, profile, kw)
    section = _data_section(header, kw)
    _check_pixels(path, structure)

    ra = dec = pixel_scale = wcs_source = None
    nominal = None
    if frame_type == "science":
        ra, dec, pixel_scale, wcs_source, nominal = _science_position(
            structure.primary, profile, kw, section.nx, section.ny, section.origin)

    longitude = _number(header, kw("site_longitude"))
    if longitude is None:
        longitude = profile.site_longitude_deg or 0.0
    object_name = str(_value(header, kw("object"))).strip() if _value(header, kw("object")) else None
    instrument = str(_value(header, kw("instrument"))).strip()
    standard = {
        "DATE-OBS": time.isot, "EXPTIME": exposure.exptime, "FILTER": filter_band, "OBJECT": object_name,
        "INSTRUME": instrument, "GAIN": exposure.gain, "RDNOISE": exposure.read_noise,
        "SATURATE": exposure.saturate, "AIRMASS": exposure.airmass,
        "BIASSEC": str(section.biassec) if section.biassec else None,
        "TRIMSEC": str(section.trimsec) if section.trimsec else None,
    }
    if mjd is None:  # derived, for products of frames written without it
        standard["MJD-OBS"] = round(float(time.mjd), 8)
    return FrameInfo(
        frame_type=frame_type,
        instrument=instrument,
        filter_band=filter_band,
        object_name=object_name,
        observation_time=observation_time,
        mjd=float(time.mjd),
        night=_night_of(observation_time, longitude),
        exposure_time=exposure.exptime,
        airmass=exposure.airmass,
        gain=exposure.gain,
        read_noise=exposure.read_noise,
        saturate=exposure.saturate,
        naxis1=section.nx,
        naxis2=section.ny,
        ra=ra,
        dec=dec,
        pixel_scale=pixel_scale,
        biassec=standard["BIASSEC"],
        trimsec=standard["TRIMSEC"],
        cards=_catalog_cards(header, profile, kw, standard, wcs_source, nominal),
        wcs_source=wcs_source,
    )


def _frame_type(header: Mapping, profile: InstrumentProfile, kw) -> str:
    """The frame type its ``imagetyp`` says, once every keyword that type requires is there."""
    imagetyp = _value(header, kw("imagetyp"))
    if imagetyp is None:
        raise InvalidFitsFile(f"missing required keyword {profile.keyword_names('imagetyp')}")
    frame_type = profile.frame_type(str(imagetyp))
    if frame_type == "unknown":
        raise InvalidFitsFile(f"{kw('imagetyp')} = {imagetyp!r} is not a known frame type")
    missing = [profile.keyword_names(c) for c in REQUIRED[frame_type] if _value(header, kw(c)) is None]
    if missing:
        raise InvalidFitsFile(f"missing required keyword(s) {', '.join(missing)} for a {frame_type} frame")
    return frame_type


def _checked_time(header: Mapping, profile: InstrumentProfile, kw) -> tuple[Time, float | None]:
    """The start of the exposure, and ``mjd_obs`` if the header has it (it must agree, to 5 s)."""
    time = _observation_time(header, profile, kw)
    mjd = _number(header, kw("mjd_obs"))
    if mjd is not None and abs(mjd - time.mjd) > 1.0 / 86400 * 5:
        raise InvalidFitsFile(f"{kw('mjd_obs')} = {mjd} disagrees with {kw('date_obs')} ({time.mjd:.6f})")
    return time, mjd


@dataclass(frozen=True)
class _Exposure:
    exptime: float  # s
    gain: float  # e-/ADU (required of every frame type, as are the next two)
    read_noise: float  # e-
    saturate: float  # ADU
    airmass: float | None


def _exposure(header: Mapping, kw, frame_type: str) -> _Exposure:
    """Exposure time, detector gain, read noise and saturation, and airmass, each checked."""
    exptime = _number(header, kw("exptime"), positive=True) or 0.0
    if frame_type in ("science", "flat") and exptime <= 0:
        raise InvalidFitsFile(f"{kw('exptime')} must be > 0 for a {frame_type} frame, got {exptime}")
    gain = _number(header, kw("gain"), positive=True, allow_zero=False)
    read_noise = _number(header, kw("read_noise"), positive=True)
    saturate = _number(header, kw("saturate"), positive=True, allow_zero=False)
    airmass = _number(header, kw("airmass"), positive=True, allow_zero=False)
    if airmass is not None and airmass < 1.0 - 1e-3:
        raise InvalidFitsFile(f"{kw('airmass')} = {airmass} is below 1")
    return _Exposure(exptime, gain, read_noise, saturate, airmass)


@dataclass(frozen=True)
class _DataSection:
    biassec: object  # the header values (None: no such keyword)
    trimsec: object
    nx: int  # of the data section (after trimming the overscan)
    ny: int
    origin: tuple[int, int]  # (x, y) of its first pixel in the full frame, 0-based


def _data_section(header: Mapping, kw) -> _DataSection:
    """The 2-D image's data section (``trimsec``, else all of it), its overscan section checked too."""
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
    origin = (data_slices[1].indices(nx)[0], data_slices[0].indices(ny)[0])
    return _DataSection(biassec, trimsec, data_nx, data_ny, origin)


def _catalog_cards(header: Mapping, profile: InstrumentProfile, kw, standard: dict, wcs_source: str | None,
                   nominal: fits.Header | None) -> dict:
    """The raw cards the catalog keeps, and what the profile made of them (``cards["profile"]``)."""
    names = list(KEPT_CARDS) + [kw(c) for c in STANDARD_KEYWORDS]
    cards = {k: _json_safe(header[k]) for k in dict.fromkeys(names)
             if k in header and isinstance(header[k], (str, int, float, bool))}
    block = {"name": profile.name,
             "standard": {k: v for k, v in standard.items() if header.get(k) != v}}
    if wcs_source is not None:
        block["wcs"] = wcs_source
    if nominal is not None:
        block["nominal_wcs"] = {k: nominal[k] for k in nominal}
    cards["profile"] = block
    return cards


def standard_card(cards: Mapping, key: str):
    """A standard keyword's value as ingest read it: through the instrument profile (``cards["profile"]``),
    else the raw card (rows ingested before profiles were recorded)."""
    standard = (cards.get("profile") or {}).get("standard") or {}
    return standard[key] if key in standard else cards.get(key)


def standard_cards(cards: Mapping) -> dict:
    """The standard keywords whose value the profile changed (None: drop the raw card); see the module notes."""
    return dict((cards.get("profile") or {}).get("standard") or {})


def _text(value) -> str:
    return str(value).strip()


_TIME_DIRECTIVES = ("%H", "%I", "%X", "%T", "%c", "%R")


def _observation_time(header: Mapping, profile: InstrumentProfile, kw) -> Time:
    """UTC start of the exposure: ``date_obs`` as ISO 8601 or in the profile's ``date_format``, and
    ``time_obs`` for a date without a time of day."""
    key = kw("date_obs")
    text = _text(_value(header, key))
    moment = None
    if profile.date_format:
        try:
            moment = datetime.strptime(text, profile.date_format)
        except ValueError:
            moment = None  # perhaps ISO: a camera whose software was updated writes both over the years
        if moment is not None and not any(d in profile.date_format for d in _TIME_DIRECTIVES):
            moment = _with_time_of_day(moment, header, profile, kw, key, text, required=True)
    if moment is None:
        try:
            time = Time(text, format="isot", scale="utc")
        except ValueError:
            formats = f"an ISO time nor {profile.date_format!r}" if profile.date_format else "an ISO time"
            raise InvalidFitsFile(f"{key} = {text!r} is not {formats}") from None
        if "T" in text or _value(header, kw("time_obs")) is None:
            return time
        moment = _with_time_of_day(time.to_datetime(), header, profile, kw, key, text, required=False)
    return Time(moment, scale="utc")


def _with_time_of_day(day: datetime, header, profile: InstrumentProfile, kw, date_key: str, date_text: str, *,
                      required: bool) -> datetime:
    """``day`` at the ``time_obs`` time of day (``hh:mm[:ss[.s]]``, colons or spaces)."""
    key = kw("time_obs")
    value = _value(header, key)
    if value is None:
        if required:
            raise InvalidFitsFile(f"{date_key} = {date_text!r} gives no time of day and "
                                  f"{profile.keyword_names('time_obs')} is missing")
        return day
    parts = re.split(r"[:\s]+", _text(value))
    try:
        hours, minutes, seconds = (float(p) for p in parts + ["0"] * (3 - len(parts)))
    except ValueError:  # not numbers, or more than three parts
        hours = minutes = seconds = math.nan
    if len(parts) < 2 or not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 61):
        raise InvalidFitsFile(f"{key} = {value!r} is not a time of day hh:mm:ss")
    return datetime(day.year, day.month, day.day) + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _filter_band(header: Mapping, profile: InstrumentProfile, kw) -> str | None:
    value = _value(header, kw("filter"))
    if value is None:
        return None
    try:
        return profile.band_of(value)
    except ValueError as exc:
        raise InvalidFitsFile(f"{kw('filter')} = {value!r} {exc}") from None


def _science_position(hdu: HduLayout, profile: InstrumentProfile, kw, nx: int, ny: int,
                      start: tuple[int, int]):
    """(ra, dec, pixel scale, wcs source, nominal WCS cards) of a science frame: from its WCS, else its pointing."""
    header = hdu.values
    from_wcs = _pointing(hdu.card_images, nx, ny)
    if from_wcs is not None:
        return (*from_wcs, "header", None)
    pointing = _header_pointing(header, profile, kw)
    if pointing is None:
        raise InvalidFitsFile(
            "science frame has no celestial WCS (CTYPE1/2, CRVAL, CRPIX, CD or CDELT) and no pointing "
            f"({profile.keyword_names('ra')} and {profile.keyword_names('dec')}) to solve one from")
    ra, dec = pointing
    scale = profile.pixel_scale_arcsec
    if scale is None:
        return ra, dec, None, "none", None
    crpix = (start[0] + (nx + 1) / 2.0, start[1] + (ny + 1) / 2.0)  # the data section's centre, 1-based raw px
    nominal = nominal_wcs_header(ra, dec, scale, crpix, rotation_deg=profile.rotation_deg, east=profile.east)
    return ra, dec, scale, "nominal", nominal


def _equinox_frame(header: Mapping, kw):
    """The frame of a header pointing: ICRS for J2000 (or none given), else FK5/FK4 of its equinox."""
    key = kw("equinox")
    value = _value(header, key)
    if value is None:
        return "icrs"
    text = _text(value).upper()
    try:
        year = float(text.lstrip("JB"))
    except ValueError:
        raise InvalidFitsFile(f"{key} = {value!r} is not an equinox (e.g. 2000 or B1950)") from None
    if not 1800 <= year <= 2200:
        raise InvalidFitsFile(f"{key} = {value!r} is not a plausible equinox")
    if abs(year - 2000.0) < 1e-6 and not text.startswith("B"):
        return "icrs"
    if text.startswith("B") or (not text.startswith("J") and year < 1984):
        return FK4(equinox=Time(year, format="byear"))
    return FK5(equinox=Time(year, format="jyear"))


def _header_pointing(header: Mapping, profile: InstrumentProfile, kw) -> tuple[float, float] | None:
    """ICRS (ra, dec) in degrees from the ``ra``/``dec`` keywords, in the profile's ``ra_dec_format``; None if absent."""
    ra_key, dec_key = kw("ra"), kw("dec")
    ra_value, dec_value = _value(header, ra_key), _value(header, dec_key)
    if ra_value is None or dec_value is None:
        return None
    frame = _equinox_frame(header, kw)
    sexagesimal = profile.ra_dec_format == "sexagesimal"
    ra = dec = math.nan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            if sexagesimal:
                ra_angle, dec_angle = Angle(_text(ra_value), unit=u.hourangle), Angle(_text(dec_value), unit=u.deg)
                ok = 0 <= ra_angle.hour < 24
            else:
                ra_angle, dec_angle = Angle(float(ra_value), unit=u.deg), Angle(float(dec_value), unit=u.deg)
                ok = 0 <= ra_angle.deg <= 360
            coord = SkyCoord(ra_angle, dec_angle, frame=frame).icrs
            ra, dec = float(coord.ra.deg), float(coord.dec.deg)
    except (ValueError, TypeError, IndexError):
        ok = False
    if not ok or not (math.isfinite(ra) and math.isfinite(dec)):
        hint = "" if sexagesimal else " (sexagesimal values need ra_dec_format: sexagesimal in the instrument profile)"
        expected = "RA hh:mm:ss in hours, Dec ±dd:mm:ss" if sexagesimal else "degrees"
        raise InvalidFitsFile(f"{ra_key} = {ra_value!r}, {dec_key} = {dec_value!r} is not a pointing in "
                              f"{expected}{hint}")
    return ra % 360.0, dec


def _check_widths(header: Mapping, kw) -> None:
    """Values the catalog stores in fixed-width columns must fit them (PostgreSQL refuses, SQLite would not)."""
    for canonical, width in COLUMN_WIDTHS.items():
        value = _value(header, kw(canonical))
        if value is not None and len(str(value).strip()) > width:
            raise InvalidFitsFile(f"{kw(canonical)} is {len(str(value).strip())} characters long; "
                                  f"the catalog keeps at most {width}")


def _json_safe(value):
    """A header value the catalog's JSON can hold: a non-finite float (``1E400``) is kept as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


#: NumPy dtypes of the FITS BITPIX values (big-endian, as the standard stores them)
_PIXEL_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: rows and columns sampled along each axis to judge the pixels
_SAMPLES_PER_AXIS = 64


def _check_pixels(path: Path, structure: FitsStructure) -> None:
    """The declared checksums must hold, and the data must decode and not be empty of information."""
    primary = structure.primary
    if not primary.data_bytes:
        raise InvalidFitsFile("primary HDU holds no data")
    try:
        with open_regular(path) as fh:
            verify_checksums(fh, structure)
            sample = _pixel_sample(fh, primary)
    except InvalidFitsFile:
        raise
    except OSError as exc:
        raise InvalidFitsFile(f"pixel data cannot be read ({type(exc).__name__}: {exc})") from None
    finite = np.isfinite(sample)
    if finite.mean() < 0.5:
        raise InvalidFitsFile(f"only {finite.mean():.0%} of sampled pixels are finite")
    if np.nanmax(sample) == np.nanmin(sample):
        raise InvalidFitsFile("pixel data are constant")


def _pixel_sample(fh, hdu: HduLayout) -> np.ndarray:
    """Every k-th pixel of every k-th row of the first image plane, in physical values (BSCALE, BZERO; BLANK as NaN).

    Read row by row at the offsets the structure gives: astropy would parse the header again and read every pixel.
    """
    dtype = np.dtype(_PIXEL_DTYPES[int(hdu.values["BITPIX"])])
    ny, nx = hdu.data_shape[-2:]
    row_step, column_step = max(1, ny // _SAMPLES_PER_AXIS), max(1, nx // _SAMPLES_PER_AXIS)
    rows = []
    for row in range(0, ny, row_step):
        fh.seek(hdu.data_offset + row * nx * dtype.itemsize)
        line = fh.read(nx * dtype.itemsize)
        if len(line) != nx * dtype.itemsize:
            raise InvalidFitsFile("pixel data cannot be read: the file ends inside them")
        rows.append(np.frombuffer(line, dtype=dtype)[::column_step])
    raw = np.array(rows)
    scale, zero = _number(hdu.values, "BSCALE"), _number(hdu.values, "BZERO")
    sample = raw.astype(float) * (1.0 if scale is None else scale) + (zero or 0.0)
    blank = hdu.values.get("BLANK") if dtype.kind in "iu" else None
    if isinstance(blank, int) and not isinstance(blank, bool):
        sample[raw == blank] = np.nan
    return sample


#: keywords WCSLIB and astropy read for a WCS: papers I-IV (alternates and ``i_j`` forms included), SIP, the
#: pre-2012 SCAMP TPV convention (PV), and NAXIS; everything else in a header is irrelevant to it
_WCS_KEYWORD = re.compile(
    r"(WCSAXES|CTYPE|CUNIT|CRVAL|CDELT|CRPIX|CROTA|CNAME|CRDER|CSYER|PC\d|CD\d|PV\d|PS\d|LONPOLE|LATPOLE|RADESYS|"
    r"RADECSYS|EQUINOX|EPOCH|WCSNAME|MJD|DATE|TIMESYS|NAXIS|A_|B_|AP_|BP_|CPDIS|CQDIS|CPERR|CQERR|DP\d|DQ\d|D2IM|"
    r"RESTFR|RESTWAV|SPECSYS|SSYS|VELOSYS|VELANGL|ZSOURCE|OBSGEO)")


def wcs_card_images(card_images: str) -> str:
    """The cards of a header (its text, 80 characters a card) that can bear on its WCS.

    ``WCS(header)`` re-serializes and re-verifies every card of the header four times, most of the time of
    building it for a typical frame; on these cards alone it builds the same WCS.

    Examples
    --------
    >>> text = "".join(f"{card:<80}" for card in ("OBJECT  = 'M31'", "CTYPE1  = 'RA---TAN'", "END"))
    >>> wcs_card_images(text).rstrip()
    "CTYPE1  = 'RA---TAN'"
    """
    cards = (card_images[i:i + CARD] for i in range(0, len(card_images), CARD))
    return "".join(card for card in cards if _WCS_KEYWORD.match(card))


def _pointing(card_images: str, nx: int, ny: int) -> tuple[float, float, float] | None:
    """(ra, dec, pixel scale) of the data-section centre from the header's WCS; None if it has no celestial WCS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(wcs_card_images(card_images), naxis=2)
        except Exception as exc:
            raise InvalidFitsFile(f"WCS cannot be parsed ({exc})") from None
    if not wcs.has_celestial:
        return None
    # ``celestial`` builds a new WCS (a third of this function's time): only when other axes must be dropped
    two_celestial_axes = wcs.naxis == 2 and sorted((wcs.wcs.lng, wcs.wcs.lat)) == [0, 1]
    celestial = wcs if two_celestial_axes else wcs.celestial
    if celestial.naxis != 2:
        return None
    try:
        ra, dec = _icrs_centre(celestial, (nx - 1) / 2.0, (ny - 1) / 2.0)
        scale = float(np.mean(proj_plane_pixel_scales(celestial)) * 3600.0)
    except Exception as exc:
        raise InvalidFitsFile(f"WCS cannot be evaluated ({exc})") from None
    if not (np.isfinite(ra) and np.isfinite(dec)) or not 0.01 < scale < 100:
        raise InvalidFitsFile(f"WCS is not plausible (centre RA {ra:.6g}, Dec {dec:.6g} deg, "
                              f"pixel scale {scale:.3g} arcsec)")
    return ra % 360.0, dec, scale


def _icrs_centre(celestial: WCS, x: float, y: float) -> tuple[float, float]:
    """ICRS (ra, dec) in degrees of pixel (x, y), 0-based. A WCS already in ICRS is evaluated directly: going
    through ``SkyCoord`` costs half a millisecond a frame for nothing."""
    if isinstance(wcs_to_celestial_frame(celestial), ICRS):
        world = celestial.all_pix2world([[x, y]], 0)[0]
        return float(world[celestial.wcs.lng]), float(world[celestial.wcs.lat])
    sky = celestial.pixel_to_world(x, y).icrs
    return float(sky.ra.deg), float(sky.dec.deg)
