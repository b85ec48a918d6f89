"""A WCS for a science frame written without one: solved against an earlier calibrated frame of its field.

Not an asset of its own: a step of ``calibrated_image`` for frames whose ingest found no
celestial WCS (``RawDataFile.header["profile"]["wcs"]`` is ``nominal`` or ``none``, see
``dagster_project/ingest/frames.py``). The *anchors* are calibrated frames of the same
field with a WCS: frames with a WCS of their own before solved ones, earlier frames
before later ones, the same band before others, then the nearest in time. The first
anchor whose stars match gives the solution (``science/astrometry.py``); the nominal WCS
from the frame's pointing, if there is one, guides the match, asterisms do otherwise.
Without an anchor, or when no anchor matches, the observation is blocked with a reason
starting ``no WCS:``; it can be calibrated again (``backfill --status blocked --stage
calibrate``) once its field has a frame with a WCS.
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy.orm import Session

from dagster_project.catalog import queries
from dagster_project.catalog.schema import Observation
from dagster_project.science.astrometry import AstrometryError, WcsSolution, solve_wcs, star_positions
from dagster_project.science.images import ImagePlanes
from dagster_project.science.psf import PSFError, characterize_image
from dagster_project.store import ProductStore

#: anchors tried before the frame is blocked
MAX_ANCHORS = 3
#: largest error of a nominal WCS (the telescope's pointing error) that the guided match corrects, px;
#: beyond it the asterism matcher takes over
MAX_POINTING_ERROR_PX = 100.0
#: header cards of a celestial WCS, removed before the solved one is written
WCS_CARDS = ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2",
             "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2",
             "CROTA1", "CROTA2", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX")


class NoWcs(Exception):
    """The frame has no WCS and none could be solved: the observation is blocked with this reason."""


@dataclass(frozen=True)
class Anchor:
    observation_key: str
    path: str
    filter_band: str
    observation_time: datetime
    solved: bool  # its own WCS was solved against another frame


def needs_solving(raw_header: dict) -> bool:
    """Whether ingest found no celestial WCS in the frame (see ``ingest/frames.py``)."""
    return (raw_header.get("profile") or {}).get("wcs") in ("nominal", "none")


def anchors_for(session: Session, observation: Observation) -> list[Anchor]:
    """Calibrated frames of the observation's field with a WCS, best first (see the module notes)."""
    anchors = [Anchor(obs.observation_id, pre.processed_fits_path, obs.filter_band, obs.observation_time,
                      (pre.wcs_info or {}).get("source") == "solved")
               for obs, pre in queries.calibrated_frames_with_wcs(session, observation)]
    when = observation.observation_time
    anchors.sort(key=lambda a: (a.solved, a.observation_time > when, a.filter_band != observation.filter_band,
                                abs((a.observation_time - when).total_seconds())))
    return [a for a in anchors if Path(a.path).exists()][:MAX_ANCHORS]


def no_anchor_reason(observation: Observation) -> str:
    return (f"no WCS: the frame has none and field {observation.field_name} has no calibrated frame with a WCS "
            f"to solve it against (calibrate one, then this observation again)")


def solve(products: ProductStore, planes: ImagePlanes, quality, anchors: list[Anchor]) -> tuple[WcsSolution, Anchor]:
    """Solve ``planes``' WCS against the first anchor that matches; :class:`NoWcs` with every anchor's reason."""
    first_guess = planes.wcs if planes.wcs.has_celestial else None
    new_sources = star_positions(planes, quality)
    reasons = []
    for anchor in anchors:
        try:
            anchor_planes = products.read_planes(Path(anchor.path))
            anchor_sources = star_positions(anchor_planes, characterize_image(anchor_planes))
            return solve_wcs(new_sources, anchor_sources, anchor_planes.wcs, first_guess,
                             max_offset_px=MAX_POINTING_ERROR_PX), anchor
        except (AstrometryError, PSFError, OSError) as exc:
            reasons.append(f"{anchor.observation_key}: {exc}")
    guide = "guided by the nominal WCS from its pointing" if first_guess is not None else "by asterisms"
    raise NoWcs(f"no WCS: the frame has none and its {len(new_sources)} stars matched none of its field's "
                f"frames ({guide}): " + "; ".join(reasons))


def with_solution(header: fits.Header, solution: WcsSolution, anchor: Anchor) -> fits.Header:
    """``header`` with its (nominal) WCS cards replaced by the solved WCS, and where that came from."""
    header = header.copy()
    for key in WCS_CARDS:
        header.remove(key, ignore_missing=True, remove_all=True)
    header.update(solution.header())
    header["WCSSRC"] = ("solved", "WCS solved against another frame of the field")
    header["WCSANCH"] = (anchor.observation_key, "solved against")
    header["WCSRMS"] = (round(solution.registration.rms, 4), "px, rms of the star match")
    header["WCSNSTAR"] = (solution.registration.n_matched, "stars matched")
    return header


def solved_centre(solution: WcsSolution, shape: tuple[int, int]) -> tuple[float, float]:
    """(ra, dec) in degrees of the data-section centre under the solved WCS."""
    ra, dec = solution.wcs.pixel_to_world_values((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    return float(ra) % 360.0, float(dec)


def record_position(session: Session, observation_key: str, solution: WcsSolution, shape: tuple[int, int]) -> None:
    """The observation's position and pixel scale from its solved WCS (ingest had only the pointing)."""
    ra, dec = solved_centre(solution, shape)
    scale = solution.pixel_scale_arcsec if np.isfinite(solution.pixel_scale_arcsec) else None
    queries.record_solved_position(session, observation_key, ra, dec, scale)
