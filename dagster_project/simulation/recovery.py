"""Injection–recovery bookkeeping: which injected transients did the pipeline find?"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord


@dataclass(frozen=True)
class RecoveryReport:
    n_injected: int
    n_recovered: int
    n_bright: int  # injected with S/N >= bright_snr
    n_bright_recovered: int
    bright_snr: float
    recovered_mask: np.ndarray  # per injected source

    @property
    def bright_fraction(self) -> float:
        return self.n_bright_recovered / self.n_bright if self.n_bright else float("nan")


def match_injections(
    injected: Sequence[dict],
    detected: Sequence[dict],
    radius_arcsec: float = 1.5,
    bright_snr: float = 10.0,
) -> RecoveryReport:
    """Match injected sources to positive detections of the same file by sky position.

    Parameters
    ----------
    injected : sequence of dict
        Rows with ``file``, ``ra``, ``dec`` (deg) and ``snr_optimal``.
    detected : sequence of dict
        Rows with ``file``, ``ra``, ``dec`` (deg) and ``is_negative``.
    radius_arcsec : float
        Largest separation counted as a match.
    bright_snr : float
        Injections at or above this optimal S/N count as "bright".
    """
    recovered = np.zeros(len(injected), dtype=bool)
    by_file: dict[str, list[dict]] = {}
    for row in detected:
        if not row.get("is_negative"):
            by_file.setdefault(row["file"], []).append(row)
    for i, row in enumerate(injected):
        found = by_file.get(row["file"])
        if not found:
            continue
        sky = SkyCoord(ra=[d["ra"] for d in found] * u.deg, dec=[d["dec"] for d in found] * u.deg)
        separation = SkyCoord(ra=row["ra"] * u.deg, dec=row["dec"] * u.deg).separation(sky)
        recovered[i] = bool(np.min(separation.arcsec) <= radius_arcsec)
    snr = np.array([float(r["snr_optimal"]) for r in injected])
    bright = snr >= bright_snr
    return RecoveryReport(
        n_injected=len(injected),
        n_recovered=int(recovered.sum()),
        n_bright=int(bright.sum()),
        n_bright_recovered=int((recovered & bright).sum()),
        bright_snr=bright_snr,
        recovered_mask=recovered,
    )
