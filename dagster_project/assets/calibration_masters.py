"""Master bias and flat for a science frame: built from its night's frames, or borrowed from an earlier night.

Not an asset of its own: a master is a by-product of calibrating the first science
frame of a night and filter, recorded in the catalog (CalibrationMaster, with the
ids of the frames that went in) and reused by the others. It is rebuilt when more
calibration frames of that night have arrived since.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy.orm import Session

from dagster_project.catalog import queries
from dagster_project.catalog.models import CalibrationMaster, FrameType, MasterKind
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
        return f"no master {' or '.join(missing)} for this night or any earlier one"


def _read_raw(path: str) -> np.ndarray:
    return fits.getdata(path).astype(np.float32)


def _use(master: CalibrationMaster, store: ProductStore) -> MasterInUse:
    return MasterInUse(master.id, master.night, master.path, store.read_master(Path(master.path)))


def _ensure(session: Session, store: ProductStore, *, kind: MasterKind, instrument: str, night: str,
            band: str, bias: MasterInUse | None) -> tuple[MasterInUse | None, str | None]:
    frame_type = FrameType.BIAS if kind is MasterKind.BIAS else FrameType.FLAT
    frames = queries.calibration_frames(session, instrument=instrument, night=night, frame_type=frame_type,
                                        filter_band=band or None)
    if len(frames) < MIN_FRAMES:  # a master's noise is measured from the difference of two frames
        frames = []
    existing = queries.latest_master(session, instrument=instrument, kind=kind, filter_band=band,
                                     on_or_before_night=night)
    ids = sorted(str(f.id) for f in frames)
    if frames and not (existing and existing.night == night and sorted(existing.input_file_ids) == ids):
        if kind is MasterKind.FLAT and bias is None:
            return None, None
        raws = [_read_raw(f.stored_path) for f in frames]
        # one camera, one night: every frame shares the readout layout
        sections = {"biassec": frames[0].header.get("BIASSEC"), "trimsec": frames[0].header.get("TRIMSEC")}
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
        return _use(existing, store), None
    if existing is None:
        return None, None
    note = None if existing.night == night else f"no {kind.value} frames on {night}: using the master of {existing.night}"
    return _use(existing, store), note


def masters_for(session: Session, store: ProductStore, *, instrument: str, night: str, band: str) -> MastersChoice:
    """The master bias and flat a science frame of ``night`` and ``band`` is calibrated with."""
    bias, bias_note = _ensure(session, store, kind=MasterKind.BIAS, instrument=instrument, night=night, band="",
                              bias=None)
    flat, flat_note = _ensure(session, store, kind=MasterKind.FLAT, instrument=instrument, night=night, band=band,
                              bias=bias)
    return MastersChoice(bias, flat, tuple(n for n in (bias_note, flat_note) if n))
