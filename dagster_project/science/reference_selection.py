"""Which calibrated frames make a field's reference image: the frames of its co-add (one for a one-frame reference)."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CoaddChoice", "choose_coadd_frames", "depth_gain_mag", "frame_information"]


@dataclass(frozen=True)
class CoaddChoice:
    """The frames a co-added reference is built from.

    Attributes
    ----------
    indices : tuple of int
        Chosen frames, most informative first.
    anchor : int
        The chosen frame with the best seeing: the co-add takes its grid and flux scale.
    reason : str
        Human-readable summary.
    excluded : dict
        Index -> why that frame was not chosen.
    """

    indices: tuple[int, ...]
    anchor: int
    reason: str
    excluded: dict[int, str]


def frame_information(quality: Mapping[str, float]) -> float:
    """Point-source S/N^2 per unit flux a frame brings to a co-add, ``(5 / depth_5sigma_e)^2``.

    The proper co-add's S/N^2 is the sum of its frames' (Zackay & Ofek 2017), so these add up. Without a
    depth, ``1 / (fwhm_px^2 sky_rms_e^2)`` (the background-limited figure up to a constant) is used.
    """
    depth = quality.get("depth_5sigma_e")
    if depth is not None and math.isfinite(depth) and depth > 0:
        return (5.0 / depth) ** 2
    fwhm, rms = quality.get("fwhm_px"), quality.get("sky_rms_e")
    if fwhm and rms and math.isfinite(fwhm * rms) and fwhm > 0 and rms > 0:
        return 1.0 / (4.0 * math.pi * (fwhm / 2.3548) ** 2 * rms**2)
    return 0.0


def depth_gain_mag(current: Sequence[Mapping[str, float]], candidate: Sequence[Mapping[str, float]]) -> float:
    """How much deeper (magnitudes) a co-add of ``candidate`` frames would be than one of ``current``.

    Examples
    --------
    >>> one = {"depth_5sigma_e": 500.0}
    >>> round(depth_gain_mag([one], [one, one, one, one]), 3)  # four equal frames: 2.5 log10 sqrt(4)
    0.753
    """
    before = sum(frame_information(q) for q in current)
    after = sum(frame_information(q) for q in candidate)
    if after <= 0:
        return float("-inf")
    return float("inf") if before <= 0 else 1.25 * math.log10(after / before)


def choose_coadd_frames(
    qualities: Sequence[Mapping[str, float]],
    *,
    max_frames: int = 20,
    min_psf_stars: int = 5,
    max_masked_fraction: float = 0.2,
    max_ellipticity: float = 0.3,
) -> CoaddChoice | None:
    """Pick the frames of a co-added reference: every good frame, the most informative first, up to ``max_frames``.

    Parameters
    ----------
    qualities : sequence of mapping
        Per frame, as the calibration stage records them: ``fwhm_px``, ``n_psf_stars``, ``ellipticity``,
        ``masked_fraction``, ``depth_5sigma_e`` (or ``sky_rms_e``). Frames that failed a check, or lie
        outside a date window, are left out by the caller.
    max_frames : int
        At most this many frames (the proper co-add gains little from the least informative ones).
    min_psf_stars, max_masked_fraction, max_ellipticity : float
        A frame failing any of these is not eligible .

    Returns
    -------
    CoaddChoice or None
        None when no frame is eligible.

    Examples
    --------
    >>> frames = [{"fwhm_px": 3.0, "n_psf_stars": 40, "depth_5sigma_e": 400.0},
    ...           {"fwhm_px": 2.5, "n_psf_stars": 40, "depth_5sigma_e": 300.0},
    ...           {"fwhm_px": 2.8, "n_psf_stars": 2, "depth_5sigma_e": 250.0}]
    >>> choice = choose_coadd_frames(frames)
    >>> choice.indices, choice.anchor, choice.excluded
    ((1, 0), 1, {2: 'only 2 PSF stars (< 5)'})
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    excluded: dict[int, str] = {}
    eligible = []
    for i, q in enumerate(qualities):
        problem = _ineligible(q, min_psf_stars, max_masked_fraction, max_ellipticity)
        if problem:
            excluded[i] = problem
        else:
            eligible.append(i)
    if not eligible:
        return None
    ranked = sorted(eligible, key=lambda i: -frame_information(qualities[i]))
    chosen, dropped = ranked[:max_frames], ranked[max_frames:]
    excluded.update({i: f"less informative than the {max_frames} chosen" for i in dropped})
    anchor = min(chosen, key=lambda i: qualities[i]["fwhm_px"])
    reason = (f"{len(chosen)} of {len(eligible)} eligible frame(s) out of {len(qualities)}, the most informative "
              f"first; anchor: best seeing (FWHM {qualities[anchor]['fwhm_px']:.2f} px)")
    return CoaddChoice(tuple(chosen), anchor, reason, dict(sorted(excluded.items())))


def _ineligible(q: Mapping[str, float], min_psf_stars: int, max_masked_fraction: float,
                max_ellipticity: float) -> str | None:
    fwhm = q.get("fwhm_px")
    if fwhm is None or not math.isfinite(fwhm) or fwhm <= 0:
        return "no PSF FWHM"
    if q.get("n_psf_stars", 0) < min_psf_stars:
        return f"only {q.get('n_psf_stars', 0)} PSF stars (< {min_psf_stars})"
    if q.get("masked_fraction", 0.0) > max_masked_fraction:
        return f"{q['masked_fraction']:.0%} masked (> {max_masked_fraction:.0%})"
    if q.get("ellipticity", 0.0) > max_ellipticity:
        return f"ellipticity {q['ellipticity']:.2f} (> {max_ellipticity})"
    if frame_information(q) <= 0:
        return "no depth or sky noise"
    return None
