"""Which calibrated frame becomes a field's reference image."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceChoice:
    index: int
    reason: str


def choose_reference(
    qualities: Sequence[Mapping[str, float]],
    min_psf_stars: int = 5,
    max_masked_fraction: float = 0.2,
    max_ellipticity: float = 0.3,
) -> ReferenceChoice | None:
    """Pick the best-seeing frame among those good enough to be a reference.

    Parameters
    ----------
    qualities : sequence of mapping
        Per frame: ``fwhm_px`` (PSF FWHM, pixels), ``n_psf_stars``, ``ellipticity`` and
        ``masked_fraction`` (0..1), as recorded by the calibration stage.
    min_psf_stars, max_masked_fraction, max_ellipticity : float
        A frame failing any of these is not eligible.

    Returns
    -------
    ReferenceChoice or None
        Index of the chosen frame and a human-readable reason; None when no frame is eligible.
    """
    eligible = []
    for i, q in enumerate(qualities):
        fwhm = q.get("fwhm_px")
        if fwhm is None or not math.isfinite(fwhm) or fwhm <= 0:
            continue
        if q.get("n_psf_stars", 0) < min_psf_stars:
            continue
        if q.get("masked_fraction", 0.0) > max_masked_fraction or q.get("ellipticity", 0.0) > max_ellipticity:
            continue
        eligible.append((fwhm, i))
    if not eligible:
        return None
    fwhm, index = min(eligible)
    return ReferenceChoice(index, f"best seeing (FWHM {fwhm:.2f} px) of {len(eligible)} eligible frame(s) "
                                  f"out of {len(qualities)}")
