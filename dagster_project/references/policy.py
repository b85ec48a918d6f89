"""When to rebuild a field's reference: when frames it does not hold would make its co-add deeper.

The proper co-add's point-source S/N^2 is the sum of its frames' (Zackay & Ofek 2017), so the depth a
new set of frames would reach is known before any pixel is read:
:func:`~dagster_project.science.reference_selection.depth_gain_mag` of the frames the reference would
choose now against the frames it holds. A rebuild is planned when the set differs and the gain reaches
``min_gain_mag``; its run key carries the digest of the new set, so asking again asks for the same run.
"""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from dagster_project.catalog import queries
from dagster_project.catalog.queries import CalibratedFrame, PlannedRun
from dagster_project.keys import field_band_key
from dagster_project.science.reference_selection import choose_coadd_frames, depth_gain_mag

__all__ = ["ReferencePolicy", "frames_for_reference", "rebuilds_due"]


@dataclass(frozen=True)
class ReferencePolicy:
    """How references are built and renewed: ``ASTRO_REFERENCE_*``, whose defaults are the settings'
    (``PipelineConfigResource.reference_policy``)."""

    max_frames: int
    #: rebuild when the frames the reference would take now make it this much deeper (magnitudes)
    min_gain_mag: float
    #: only frames within this many days of the field's first frame (None: all)
    window_days: float | None


def frames_for_reference(frames: list[CalibratedFrame], window_days: float | None) -> list[CalibratedFrame]:
    """The frames a reference may take: those within ``window_days`` of the field's first (all without a window)."""
    if window_days is None or not frames:
        return frames
    start = min(f.observation_time for f in frames)
    return [f for f in frames if f.observation_time - start <= timedelta(days=window_days)]


def rebuilds_due(session: Session, policy: ReferencePolicy) -> list[PlannedRun]:
    """A reference run for each field and band whose current reference the frames chosen now would deepen
    by at least ``policy.min_gain_mag``. One-frame references (``max_frames`` 1) are not renewed this way:
    swapping the template for another single frame is a decision for ``references rebuild``."""
    if policy.max_frames < 2:
        return []
    planned = []
    for reference in queries.current_references(session):
        field_band = field_band_key(reference.field_name, reference.filter_band)
        frames = frames_for_reference(queries.calibrated_frames_of_field_band(session, field_band), policy.window_days)
        choice = choose_coadd_frames([f.quality for f in frames], max_frames=policy.max_frames)
        if choice is None:
            continue
        chosen = [frames[i] for i in choice.indices]
        digest = queries.inputs_digest(f.observation_key for f in chosen)
        if digest == reference.inputs_digest:
            continue
        held = set(queries.reference_input_keys(session, reference))
        current = [f.quality for f in frames if f.observation_key in held]
        gain = depth_gain_mag(current, [f.quality for f in chosen])
        if gain >= policy.min_gain_mag:
            planned.append(PlannedRun(
                "reference_job", field_band, f"reference:{field_band}:{digest[:16]}",
                f"{len(chosen)} frame(s) would make v{reference.version} ({reference.n_inputs} frame(s)) "
                f"{gain:.2f} mag deeper", redo=True))
    return planned
