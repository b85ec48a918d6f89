"""The two partition keys, built in one place.

* observation: ``<field>-<band>-<UTC yyyymmddThhmmss>-<sha256[:8]>`` — readable,
  sortable by time, unique by content;
* field and band: ``<field>-<band>`` — the reference image's partition.

Characters outside ``[A-Za-z0-9_.]`` become ``_`` so that any OBJECT/FILTER
value makes a valid Dagster partition key.
"""

import re
from datetime import datetime

_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def safe_token(value: str | None, fallback: str) -> str:
    return _UNSAFE.sub("_", value or "").strip("_") or fallback


def field_band_key(field_name: str | None, filter_band: str | None) -> str:
    return f"{safe_token(field_name, 'unknown')}-{safe_token(filter_band, 'none')}"


def observation_key(field_name: str | None, filter_band: str | None, time: datetime, sha256: str) -> str:
    return f"{field_band_key(field_name, filter_band)}-{time.strftime('%Y%m%dT%H%M%S')}-{sha256[:8]}"


def field_band_of(observation_key_: str) -> str:
    """The ``<field>-<band>`` part of an observation key."""
    return observation_key_.rsplit("-", 2)[0]
