"""Per-instrument header conventions.

Any instrument that writes the standard keywords works out of the box. One that
names them differently gets an entry in a YAML file (``ASTRO_INSTRUMENTS_FILE``)
keyed by its ``INSTRUME`` value::

    instruments:
      OLDCAM:
        keywords: {filter: FILTNAME, exptime: EXPOSURE, read_noise: READNOIS}
        frame_types: {science: [light, object], flat: [skyflat]}
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

#: canonical name -> standard FITS keyword
STANDARD_KEYWORDS: Mapping[str, str] = {
    "date_obs": "DATE-OBS",
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
}

#: frame type -> IMAGETYP values (compared case-insensitively)
STANDARD_FRAME_TYPES: Mapping[str, tuple[str, ...]] = {
    "bias": ("bias", "zero", "bias frame"),
    "dark": ("dark", "dark frame"),
    "flat": ("flat", "flatfield", "flat field", "skyflat", "domeflat", "twilight flat"),
    "science": ("object", "science", "light", "light frame", "sci"),
}


@dataclass(frozen=True)
class InstrumentProfile:
    name: str = "default"
    keywords: Mapping[str, str] = field(default_factory=lambda: dict(STANDARD_KEYWORDS))
    frame_types: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(STANDARD_FRAME_TYPES))

    def keyword(self, canonical: str) -> str:
        return self.keywords[canonical]

    def frame_type(self, imagetyp: str) -> str:
        value = imagetyp.strip().lower()
        for kind, names in self.frame_types.items():
            if value in names:
                return kind
        return "unknown"


class InstrumentRegistry:
    """Profiles by ``INSTRUME`` value, falling back to the standard profile."""

    def __init__(self, profiles: Mapping[str, InstrumentProfile] | None = None):
        self._profiles = {k.upper(): v for k, v in (profiles or {}).items()}
        self.default = InstrumentProfile()

    def for_instrument(self, name: str | None) -> InstrumentProfile:
        return self._profiles.get((name or "").strip().upper(), self.default)

    @classmethod
    def from_yaml(cls, path: Path | None) -> "InstrumentRegistry":
        if path is None:
            return cls()
        document = yaml.safe_load(path.read_text()) or {}
        entries = document.get("instruments", {})
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: 'instruments' must be a mapping of INSTRUME value to profile")
        profiles = {}
        for name, entry in entries.items():
            entry = entry or {}
            unknown = set(entry.get("keywords", {})) - set(STANDARD_KEYWORDS)
            if unknown:
                raise ValueError(f"{path}: instrument {name}: unknown keyword names {sorted(unknown)}")
            frame_types = dict(STANDARD_FRAME_TYPES)
            for kind, values in (entry.get("frame_types") or {}).items():
                if kind not in STANDARD_FRAME_TYPES:
                    raise ValueError(f"{path}: instrument {name}: unknown frame type {kind!r}")
                frame_types[kind] = tuple(v.lower() for v in values) + STANDARD_FRAME_TYPES[kind]
            profiles[str(name)] = replace(
                InstrumentProfile(name=str(name)),
                keywords={**STANDARD_KEYWORDS, **entry.get("keywords", {})},
                frame_types=frame_types,
            )
        return cls(profiles)
