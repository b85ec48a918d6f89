"""Master bias and flat for a science frame: built from its night's frames, or borrowed from another night.

Not an asset of its own: a master is a by-product of calibrating the first science
frame of a night and filter, recorded in the catalog (CalibrationMaster, with the
ids of the frames that went in) and reused by the others. It is rebuilt when more
calibration frames of that night have arrived since.

A night without (at least two) calibration frames of a kind borrows the master of the
nearest earlier night that has one or has the frames to build it, else of the nearest
later night; the choice is a note (``MastersChoice.notes``) that the calibrated image
records in the catalog (``PreprocessRun.calibration_note``) and in its metadata. With no
night to borrow from, the frame is blocked (``MastersChoice.blocked_reason``), unless the
user chose to process such frames uncalibrated (``ASTRO_ALLOW_UNCALIBRATED=1``, see
``calibrated_image``).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy.orm import Session

from dagster_project.catalog import queries
from dagster_project.catalog.schema import CalibrationMaster, FrameType, MasterKind
from dagster_project.ingest.frames import standard_card
from dagster_project.science.calibration import MasterFrame, make_master_bias, make_master_flat
from dagster_project.store import ProductStore


MIN_FRAMES = 2


@dataclass(frozen=True)
class MasterInUse:
    master_id: object
    night: str
    path: str
    frame: MasterFrame


@dataclass(frozen=True)
class MastersChoice:
    bias: MasterInUse | None
    flat: MasterInUse | None
    notes: tuple[str, ...]

    @property
    def blocked_reason(self) -> str | None:
        missing = [k for k, m in (("bias", self.bias), ("flat", self.flat)) if m is None]
        if not missing:
            return None
        return f"no master {' or '.join(missing)} for this night or any other night"


def _read_raw(path: str) -> np.ndarray:
    return fits.getdata(path).astype(np.float32)


def _use(master: CalibrationMaster, store: ProductStore) -> MasterInUse:
    return MasterInUse(master.id, master.night, master.path, store.read_master(Path(master.path)))


def _master_of_night(session: Session, store: ProductStore, *, kind: MasterKind, instrument: str, night: str,
                     band: str, bias: MasterInUse | None) -> MasterInUse | None:
    """The master of exactly ``night``: (re)built from its frames if they changed, else the one recorded, else None."""
    frame_type = FrameType.BIAS if kind is MasterKind.BIAS else FrameType.FLAT
    frames = queries.calibration_frames(session, instrument=instrument, night=night, frame_type=frame_type,
                                        filter_band=band or None)
    if len(frames) < MIN_FRAMES:  # a master's noise is measured from the difference of two frames
        frames = []
    existing = queries.master_of_night(session, kind=kind, instrument=instrument, night=night, filter_band=band)
    ids = sorted(str(f.id) for f in frames)
    if frames and not (existing and sorted(existing.input_file_ids) == ids):
        if kind is MasterKind.FLAT and bias is None:
            return _use(existing, store) if existing else None
        raws = [_read_raw(f.stored_path) for f in frames]
        # one camera, one night: every frame shares the readout layout (as its instrument profile reads it)
        sections = {"biassec": standard_card(frames[0].header, "BIASSEC"),
                    "trimsec": standard_card(frames[0].header, "TRIMSEC")}
        if kind is MasterKind.BIAS:
            master = make_master_bias(raws, **sections)
        else:
            master = make_master_flat(raws, master_bias=bias.frame, **sections)
        path = store.calibration_master_path(instrument, night, kind.value, band or None)
        header = fits.Header({"NIGHT": night, "INSTRUME": instrument})
        if band:
            header["FILTER"] = band
        store.write_master(path, master, header)
        existing = queries.upsert_master(
            session, kind=kind, instrument=instrument, night=night, filter_band=band, path=str(path),
            n_frames=len(frames), input_file_ids=ids, stats=master.stats)
    return _use(existing, store) if existing else None


def _other_nights(session: Session, *, kind: MasterKind, instrument: str, night: str, band: str) -> list[str]:
    """Nights with a master of this kind, or the frames to build one: the earlier ones nearest first, then the later."""
    nights = queries.nights_with_calibration(session, kind=kind, instrument=instrument, filter_band=band,
                                             min_frames=MIN_FRAMES)
    nights.discard(night)
    # 'YYYY-MM-DD' sorts chronologically
    return sorted((n for n in nights if n < night), reverse=True) + sorted(n for n in nights if n > night)


def _choose(session: Session, store: ProductStore, *, kind: MasterKind, instrument: str, night: str, band: str,
            bias_for) -> tuple[MasterInUse | None, str | None]:
    """The master of ``night``, else of the nearest other night (earlier first), with a note saying so."""
    kwargs = dict(kind=kind, instrument=instrument, band=band)
    master = _master_of_night(session, store, night=night, bias=bias_for(night), **kwargs)
    if master is not None:
        return master, None
    for other in _other_nights(session, night=night, **kwargs):
        master = _master_of_night(session, store, night=other, bias=bias_for(other), **kwargs)
        if master is not None:
            side = "earlier" if other < night else "later"
            what = kind.value if kind is MasterKind.BIAS else f"{kind.value} {band}"
            return master, (f"no {what} frames on {night}: using the master of {other} "
                            f"(the nearest {side} night with one)")
    return None, None


def masters_for(session: Session, store: ProductStore, *, instrument: str, night: str, band: str) -> MastersChoice:
    """The master bias and flat a science frame of ``night`` and ``band`` is calibrated with."""
    biases: dict[str, tuple[MasterInUse | None, str | None]] = {}

    def bias_of(of_night: str) -> tuple[MasterInUse | None, str | None]:
        if of_night not in biases:
            biases[of_night] = _choose(session, store, kind=MasterKind.BIAS, instrument=instrument, night=of_night,
                                       band="", bias_for=lambda _: None)
        return biases[of_night]

    bias, bias_note = bias_of(night)
    # a flat built for another night is bias-subtracted with that night's (nearest) bias
    flat, flat_note = _choose(session, store, kind=MasterKind.FLAT, instrument=instrument, night=night, band=band,
                              bias_for=lambda of_night: bias_of(of_night)[0])
    return MastersChoice(bias, flat, tuple(n for n in (bias_note, flat_note) if n))
