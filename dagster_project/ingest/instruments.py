"""Per-instrument header conventions: instrument profiles.

Any instrument that writes the standard keywords (ISO ``DATE-OBS``, ``EXPTIME``, ``FILTER``
as a band name, a celestial WCS on science frames, ...) works out of the box. One that
does not gets a profile in a YAML file (``ASTRO_INSTRUMENTS_FILE``), keyed by its
``INSTRUME`` value (compared case-insensitively)::

    instruments:
      OLDCAM:
        keywords: {exptime: [ITIME, EXPTIME], time_obs: UT, read_noise: READNOIS}
        frame_types: {science: [light, object], flat: [skyflat]}
        date_format: "%d/%m/%y"
        ra_dec_format: sexagesimal
        filter_wheel: {1: g, 2: r, 3: i}
        pixel_scale_arcsec: 0.5
        rotation_deg: 0.0
        east: left
        site_longitude_deg: -70.7

Options (all optional)
----------------------
``keywords``
    canonical name -> the header keyword that holds it, or a list of keywords tried in
    order (the first one present is read), for a camera whose conventions changed over
    the years. Canonical names: the keys of :data:`STANDARD_KEYWORDS` (``date_obs``,
    ``time_obs``, ``exptime``, ``filter``, ``ra``, ``dec``, ``equinox``, ...).
``frame_types``
    ``bias``/``dark``/``flat``/``science`` -> extra ``IMAGETYP`` values of that type.
``date_format``
    :func:`~datetime.datetime.strptime` format of the ``date_obs`` value, e.g.
    ``"%d/%m/%y"`` (the pre-1997 FITS convention). A format without a time of day is
    combined with the ``time_obs`` keyword (``TIME-OBS`` by default, e.g. ``UT``),
    ``hh:mm:ss[.sss]``. ISO 8601 values are accepted as well. Two-digit years follow
    POSIX: 69-99 are 19xx, 00-68 are 20xx.
``ra_dec_format``
    ``degrees`` (default) or ``sexagesimal``: RA in hours ``hh:mm:ss.s`` and Dec in
    degrees ``±dd:mm:ss`` (colons or spaces). Read from the ``ra``/``dec`` keywords
    (``RA``/``DEC``) only when a science frame has no celestial WCS: it is the pointing.
    An ``equinox`` (``EQUINOX``) other than 2000 is precessed to ICRS (FK4 before 1984).
``filter_wheel``
    wheel position -> band, e.g. ``{1: g, 2: r, 3: i}``; the ``filter`` value is read as
    a position (``2`` or ``'2'``). A value that already is one of the wheel's bands is
    taken as it is; any other value quarantines the frame, naming the positions.
``pixel_scale_arcsec``, ``rotation_deg``, ``east``
    Geometry of the camera, for a science frame without a WCS: a nominal TAN WCS is
    built from its pointing with this pixel scale, rotated by ``rotation_deg`` (the
    ``CROTA2`` convention, default 0: north up) with east ``left`` (default) or
    ``right`` (a mirrored camera). The calibration stage refines it against an earlier
    calibrated frame of the field (see ``dagster_project/calibration/astrometry.py``).
``site_longitude_deg``
    East-positive longitude for frames without ``LONG-OBS``, to tell the local night.

A bad file (unknown option or canonical name, a value of the wrong kind) raises
:class:`ProfileError`, naming the file, the instrument and the key.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

#: canonical name -> standard FITS keyword
STANDARD_KEYWORDS: Mapping[str, str] = {
    "date_obs": "DATE-OBS",
    "time_obs": "TIME-OBS",
    "mjd_obs": "MJD-OBS",
    "exptime": "EXPTIME",
    "filter": "FILTER",
    "imagetyp": "IMAGETYP",
    "object": "OBJECT",
    "airmass": "AIRMASS",
    "gain": "GAIN",
    "read_noise": "RDNOISE",
    "saturate": "SATURATE",
    "instrument": "INSTRUME",
    "biassec": "BIASSEC",
    "trimsec": "TRIMSEC",
    "site_longitude": "LONG-OBS",
    "ra": "RA",
    "dec": "DEC",
    "equinox": "EQUINOX",
}

#: frame type -> IMAGETYP values (compared case-insensitively)
STANDARD_FRAME_TYPES: Mapping[str, tuple[str, ...]] = {
    "bias": ("bias", "zero", "bias frame"),
    "dark": ("dark", "dark frame"),
    "flat": ("flat", "flatfield", "flat field", "skyflat", "domeflat", "twilight flat"),
    "science": ("object", "science", "light", "light frame", "sci"),
}

RA_DEC_FORMATS = ("degrees", "sexagesimal")
EAST = ("left", "right")
#: longest band name the catalog keeps (RawDataFile.filter_band, Observation.filter_band)
MAX_BAND_LENGTH = 32
_OPTIONS = ("keywords", "frame_types", "date_format", "ra_dec_format", "filter_wheel", "pixel_scale_arcsec",
            "rotation_deg", "east", "site_longitude_deg")


class ProfileError(ValueError):
    """An instrument profile that cannot be used; the message names the file, instrument and key."""


@dataclass(frozen=True)
class InstrumentProfile:
    name: str = "default"
    #: canonical name -> keywords tried in order
    keywords: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {k: (v,) for k, v in STANDARD_KEYWORDS.items()})
    frame_types: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(STANDARD_FRAME_TYPES))
    date_format: str | None = None
    ra_dec_format: str = "degrees"
    #: wheel position (as text) -> band
    filter_wheel: Mapping[str, str] | None = None
    pixel_scale_arcsec: float | None = None
    rotation_deg: float = 0.0
    east: str = "left"
    site_longitude_deg: float | None = None

    def keyword(self, canonical: str) -> str:
        """The first keyword of ``canonical`` (what messages name when none is present)."""
        return self.keywords[canonical][0]

    def keyword_in(self, header: Mapping, canonical: str) -> str:
        """The first of ``canonical``'s keywords present in ``header`` (else the first one)."""
        names = self.keywords[canonical]
        return next((k for k in names if k in header), names[0])

    def keyword_names(self, canonical: str) -> str:
        """``ITIME`` or ``ITIME or EXPTIME``, for messages."""
        return " or ".join(self.keywords[canonical])

    def frame_type(self, imagetyp: str) -> str:
        value = imagetyp.strip().lower()
        for kind, names in self.frame_types.items():
            if value in names:
                return kind
        return "unknown"

    def band_of(self, value) -> str:
        """The band a ``filter`` value names: through the filter wheel, if the profile has one.

        Raises ValueError (with the positions) for a value that is neither a position nor a band of the wheel.
        """
        text = _position_text(value)
        if self.filter_wheel is None:
            return text
        if text in self.filter_wheel:
            return self.filter_wheel[text]
        if text in self.filter_wheel.values():
            return text
        raise ValueError(f"is not a position of the {self.name} filter wheel "
                         f"(positions {', '.join(sorted(self.filter_wheel, key=_sort_key))})")


def _position_text(value) -> str:
    """``2``, ``2.0`` and ``' 2 '`` are all position ``'2'``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _sort_key(text: str):
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


class InstrumentRegistry:
    """Profiles by ``INSTRUME`` value, falling back to the standard profile."""

    def __init__(self, profiles: Mapping[str, InstrumentProfile] | None = None):
        self._profiles = {k.strip().upper(): v for k, v in (profiles or {}).items()}
        self.default = InstrumentProfile()

    def for_instrument(self, name: str | None) -> InstrumentProfile:
        return self._profiles.get((name or "").strip().upper(), self.default)

    @classmethod
    def from_yaml(cls, path: Path | None) -> "InstrumentRegistry":
        if path is None:
            return cls()
        try:
            document = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read the instruments file ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ProfileError(f"{path}: not valid YAML ({exc})") from None
        document = document or {}
        if not isinstance(document, dict) or not isinstance(document.get("instruments", {}), dict):
            raise ProfileError(f"{path}: 'instruments' must be a mapping of INSTRUME value to profile")
        return cls({str(name): parse_profile(str(name), entry, where=f"{path}: instrument {name}")
                    for name, entry in document.get("instruments", {}).items()})


def parse_profile(name: str, entry, *, where: str | None = None) -> InstrumentProfile:
    """One profile from its YAML mapping; :class:`ProfileError` naming ``where`` (file and instrument) and the key."""
    where = where or f"instrument {name}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ProfileError(f"{where}: the profile must be a mapping of options, not {type(entry).__name__}")

    def fail(key: str, message: str):
        raise ProfileError(f"{where}: {key}: {message}")

    unknown = sorted(set(map(str, entry)) - set(_OPTIONS))
    if unknown:
        fail(unknown[0], f"unknown option (known: {', '.join(_OPTIONS)})")
    keywords = {k: (v,) for k, v in STANDARD_KEYWORDS.items()}
    aliases = entry.get("keywords") or {}
    if not isinstance(aliases, dict):
        fail("keywords", "must be a mapping of canonical name to header keyword(s)")
    for canonical, value in aliases.items():
        if canonical not in STANDARD_KEYWORDS:
            fail(f"keywords.{canonical}", f"unknown canonical name (known: {', '.join(STANDARD_KEYWORDS)})")
        names = _strings(value, f"keywords.{canonical}", "a header keyword", fail)
        keywords[canonical] = tuple(n.upper() for n in names)
    return InstrumentProfile(
        name=name,
        keywords=keywords,
        frame_types=_frame_types(entry.get("frame_types"), fail),
        date_format=_date_format(entry.get("date_format"), fail),
        ra_dec_format=_choice(entry, "ra_dec_format", RA_DEC_FORMATS, fail),
        filter_wheel=_filter_wheel(entry.get("filter_wheel"), fail),
        pixel_scale_arcsec=_number(entry, "pixel_scale_arcsec", fail, low=1e-3, high=3600.0),
        rotation_deg=_number(entry, "rotation_deg", fail, low=-360.0, high=360.0) or 0.0,
        east=_choice(entry, "east", EAST, fail),
        site_longitude_deg=_number(entry, "site_longitude_deg", fail, low=-360.0, high=360.0),
    )


def _frame_types(value, fail) -> dict[str, tuple[str, ...]]:
    frame_types = dict(STANDARD_FRAME_TYPES)
    if value is None:
        return frame_types
    if not isinstance(value, dict):
        fail("frame_types", "must be a mapping of frame type to IMAGETYP values")
    for kind, values in value.items():
        if kind not in STANDARD_FRAME_TYPES:
            fail(f"frame_types.{kind}", f"unknown frame type (known: {', '.join(STANDARD_FRAME_TYPES)})")
        names = _strings(values, f"frame_types.{kind}", "an IMAGETYP value", fail)
        frame_types[kind] = tuple(v.lower() for v in names) + STANDARD_FRAME_TYPES[kind]
    return frame_types


def _strings(value, key: str, what: str, fail) -> list[str]:
    """One string or a non-empty list of them, stripped: the YAML form of keyword aliases and IMAGETYP values."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        fail(key, f"must be {what} or a non-empty list of them, not {value!r}")
    return [n.strip() for n in names]


def _date_format(value, fail) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "%" not in value:
        fail("date_format", f"must be a strptime format such as '%d/%m/%y', not {value!r}")
    sample = datetime(2001, 2, 3, 4, 5, 6)
    try:
        parsed = datetime.strptime(sample.strftime(value), value)
    except ValueError as exc:
        fail("date_format", f"{value!r} is not a usable strptime format ({exc})")
    if parsed.date() != sample.date():
        fail("date_format", f"{value!r} does not give the day, month and year of a date")
    return value


def _choice(entry: Mapping, key: str, choices: tuple[str, ...], fail) -> str:
    value = entry.get(key, choices[0])
    if value not in choices:
        fail(key, f"must be one of {', '.join(choices)}, not {value!r}")
    return value


def _number(entry: Mapping, key: str, fail, *, low: float, high: float) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(key, f"must be a number, not {value!r}")
    if not low <= value <= high:
        fail(key, f"must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


def _filter_wheel(value, fail) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        fail("filter_wheel", "must be a non-empty mapping of wheel position to band, e.g. {1: g, 2: r}")
    wheel = {}
    for position, band in value.items():
        if isinstance(position, bool) or not isinstance(position, (int, str)) or not str(position).strip():
            fail(f"filter_wheel.{position}", "a position must be a number or a name")
        if not isinstance(band, str) or not band.strip() or len(band.strip()) > MAX_BAND_LENGTH:
            fail(f"filter_wheel.{position}",
                 f"the band must be a name of 1 to {MAX_BAND_LENGTH} characters, not {band!r}")
        text = _position_text(position)
        if text in wheel:
            fail(f"filter_wheel.{position}", "position given twice")
        wheel[text] = band.strip()
    return wheel
