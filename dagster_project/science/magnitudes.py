"""Limiting magnitudes, labelled with the system they are in.

Conventions
-----------
* Fluxes are in electrons (e-) of the image they were measured on.
* ``calibrated``: the header gives a photometric zero point ``MAGZP`` for the image's counts, as
  ZTF's images do (``mag = MAGZP - 2.5 log10(counts in ADU)``, counts = e- / ``GAIN``).
* ``instrumental``: without a zero point, ``mag = -2.5 log10(e- per second)`` (``EXPTIME``): comparable
  between frames of one instrument and band, not with catalogues. A negative instrumental magnitude
  (bright in e-/s) is normal and is why the system must be said.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LimitingMagnitude", "limiting_magnitude"]


@dataclass(frozen=True)
class LimitingMagnitude:
    """A magnitude and its system (``calibrated`` or ``instrumental``) and unit, e.g. for the UI."""

    value: float
    system: str
    unit: str

    @property
    def label(self) -> str:
        return f"{self.value:.2f} ({self.system}, {self.unit})"


def limiting_magnitude(flux_e: float, header: Mapping) -> LimitingMagnitude | None:
    """The magnitude of a point source of ``flux_e`` electrons (e.g. the 5-sigma depth) in the image of ``header``.

    Parameters
    ----------
    flux_e : float
        Flux in electrons (> 0).
    header : mapping
        The image's header: ``MAGZP`` (and ``GAIN``, e-/ADU, default 1) for a calibrated magnitude,
        else ``EXPTIME`` (s) for an instrumental one.

    Returns
    -------
    LimitingMagnitude or None
        None when ``flux_e`` is not positive or the header gives neither a zero point nor an exposure time.

    Examples
    --------
    >>> limiting_magnitude(500.0, {"EXPTIME": 60.0}).label
    '-2.30 (instrumental, mag of e-/s)'
    >>> limiting_magnitude(500.0, {"MAGZP": 26.0, "GAIN": 2.0}).label
    '20.01 (calibrated, mag)'
    """
    if not (isinstance(flux_e, (int, float)) and math.isfinite(flux_e) and flux_e > 0):
        return None
    zero_point, gain, exptime = (_positive_or_none(header.get(k)) for k in ("MAGZP", "GAIN", "EXPTIME"))
    if zero_point is not None:
        return LimitingMagnitude(zero_point - 2.5 * math.log10(flux_e / (gain or 1.0)), "calibrated", "mag")
    if exptime is not None:
        return LimitingMagnitude(-2.5 * math.log10(flux_e / exptime), "instrumental", "mag of e-/s")
    return None


def _positive_or_none(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
