"""Write a simulated night of raw FITS frames, as a telescope would.

The only I/O of the simulated telescope; the rendering is
:mod:`dagster_project.simulation.telescope`. Used by
``python -m dagster_project simulate-night`` and by tests.

Files
-----
``{INSTRUME}_{YYYYMMDD}_{seq:04d}_{kind}[_{field}]_{band}.fits`` with ``kind``
``bias``, ``flat`` or ``sci``, ``YYYYMMDD`` the local date at the start of the
night and ``seq`` counting from 1 in writing order: biases (afternoon), twilight
flats per band, then the science exposures in time order. Each file is a single
primary HDU, BITPIX = 16 with BZERO = 32768 (uint16 ADU), with CHECKSUM/DATASUM.
Every file (and ``truth.csv``) is written under a hidden temporary name
``.NAME.partial`` in the same folder and renamed into place, so a process
watching the folder never sees a partial ``.fits`` file.

``truth.csv`` is written beside the frames unless ``truth_path`` says where; the
command line puts it outside the folder (``<out>/../truth/``), since the folder
is often a watched landing folder, which is for raw frames only. It lists the injected transients: ``file`` (base name), ``field``,
``band``, ``epoch``, ``ra``, ``dec`` (deg), ``x``, ``y`` (true 0-based position
in the trimmed data section), ``flux_e`` (electrons before the flat field),
``snr_optimal``, then the class of each: ``kind`` (``supernova`` on a galaxy,
``variable`` on a star that brightened by ``flux_e``, ``transient`` hostless),
``host_index`` (index of the host galaxy or star in the field's sky model, -1
without one) and ``host_ra``, ``host_dec`` (the host's catalogue position, empty
without one). :func:`load_truth` reads files written before those four columns
existed with ``kind`` ``unknown``, ``host_index`` -1 and NaN host positions.

With ``artifacts`` (an :class:`~dagster_project.simulation.artifacts.ArtifactRates`),
a second truth file lists every artifact of every science frame, so a benchmark can
tell an artifact's candidates from the transients': ``artifacts.csv`` beside
``truth.csv`` (``<stem>-artifacts.csv`` beside a truth file of another name, see
:func:`artifacts_path_for`), with ``file``, ``field``, ``band``, ``epoch``, ``kind``,
``x0``, ``y0``, ``x1``, ``y1`` (0-based pixels of the trimmed data section),
``ra0``, ``dec0``, ``ra1``, ``dec1`` (the same points through the frame's true WCS),
``width_px``, ``amplitude`` and ``detail``; the meaning of each by kind is in
:mod:`dagster_project.simulation.artifacts`. ``truth.csv`` itself is unchanged.
"""

import csv
import dataclasses
import io
import itertools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits
from astropy.time import Time

from dagster_project.simulation.artifacts import ArtifactRates
from dagster_project.simulation.telescope import (
    DetectorSpec,
    EpochConditions,
    FieldSpec,
    RawFrame,
    Transient,
    band_response,
    draw_epoch_conditions,
    make_detector,
    make_sky_model,
    simulate_bias_frame,
    simulate_flat_frame,
    simulate_science_frame,
)


def _optional_float(text: str) -> float:
    """A number of a truth column that may be empty (no host): NaN for ``""``."""
    return float(text) if text else float("nan")


#: The columns of a truth file written before transients had a class; :func:`load_truth` needs these.
_TRUTH_REQUIRED = ("file", "field", "band", "epoch", "ra", "dec", "x", "y", "flux_e", "snr_optimal")
#: The class columns, and what an older file without them reads as.
_TRUTH_CLASS_DEFAULTS = {"kind": "unknown", "host_index": -1, "host_ra": float("nan"), "host_dec": float("nan")}
TRUTH_COLUMNS = (*_TRUTH_REQUIRED, *_TRUTH_CLASS_DEFAULTS)
_TRUTH_TYPES = {"epoch": int, "host_index": int, "host_ra": _optional_float, "host_dec": _optional_float,
                **{k: float for k in ("ra", "dec", "x", "y", "flux_e", "snr_optimal")}}
_TRUTH_FORMATS = {"ra": "{:.8f}", "dec": "{:.8f}", "x": "{:.4f}", "y": "{:.4f}", "flux_e": "{:.3f}",
                  "snr_optimal": "{:.4f}"}

_ARTIFACT_POINTS = ("x0", "y0", "x1", "y1", "ra0", "dec0", "ra1", "dec1")
ARTIFACT_COLUMNS = ("file", "field", "band", "epoch", "kind", *_ARTIFACT_POINTS, "width_px", "amplitude", "detail")
_ARTIFACT_TYPES = {"epoch": int, **{k: float for k in (*_ARTIFACT_POINTS, "width_px", "amplitude")}}
_ARTIFACT_FORMATS = {**{k: "{:.4f}" for k in ("x0", "y0", "x1", "y1", "width_px")},
                     **{k: "{:.8f}" for k in ("ra0", "dec0", "ra1", "dec1")}, "amplitude": "{:.6g}"}

#: Independent random streams, so changing one part (e.g. n_flats) leaves the others unchanged.
_DETECTOR, _FIELDS, _SKY, _CONDITIONS, _BIAS, _FLAT, _SCIENCE = range(7)

#: UTC schedule of the night relative to 00:00 UTC of the night's date (hours); a
#: Chilean-like site (LONG-OBS = -70.7), so all of it is the same local night.
_BIAS_START_H, _FLAT_START_H, _SCIENCE_START_H, _SCIENCE_END_H = 21.0, 23.75, 25.0, 32.5
_SCIENCE_EXPTIME_S, _OVERHEAD_S = 60.0, 30.0


@dataclass
class SimulatedNight:
    """What :func:`simulate_night` wrote.

    Attributes
    ----------
    out_dir : Path
    paths : dict of str to list of Path
        Written FITS files by kind (``bias``, ``flat``, ``sci``) in writing order.
    truth : list of dict
        Rows of ``truth.csv`` (typed values), one per injected transient.
    truth_path : Path
    conditions : dict of str to EpochConditions
        Conditions of each science frame by file name (seeing, WCS error...).
    summary : dict
        Short JSON-safe overview.
    artifacts : list of dict
        Rows of the artifacts truth file (typed values); empty without ``artifacts``.
    artifacts_path : Path or None
        Where they were written; None when the night was simulated without ``artifacts``.
    """

    out_dir: Path
    paths: dict[str, list[Path]]
    truth: list[dict]
    truth_path: Path
    conditions: dict[str, EpochConditions]
    summary: dict
    artifacts: list[dict] = dataclasses.field(default_factory=list)
    artifacts_path: Path | None = None


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(fh)`` into ``.NAME.partial`` and rename it into place."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_raw_frame(path: Path, frame: RawFrame) -> None:
    """Write ``frame`` as a uint16 primary HDU (BITPIX 16, BZERO 32768) with checksums."""
    hdu = fits.PrimaryHDU(data=frame.data, header=frame.header)
    # A fixed comment: astropy's default is the current time, which would make reruns differ.
    hdu.add_checksum(when="simulated raw frame")
    write_atomically(path, hdu.writeto)


def _load_table(path: Path, columns: tuple[str, ...], types: dict, what: str) -> list[dict]:
    """Rows of the CSV at ``path`` typed by ``types`` (str otherwise); ValueError if one of ``columns`` is missing."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(columns) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing {what} columns {sorted(missing)}")
        return [{k: types.get(k, str)(v) for k, v in row.items()} for row in reader]


def load_truth(path: Path) -> list[dict]:
    """Read ``truth.csv`` back into dicts with typed values (``epoch``, ``host_index`` int, numbers float).

    Every row has the keys of :data:`TRUTH_COLUMNS` in that order; a file
    written before transients had a class reads with ``kind`` ``"unknown"``.
    """
    rows = _load_table(path, _TRUTH_REQUIRED, _TRUTH_TYPES, "truth")
    return [{**row, **{k: default for k, default in _TRUTH_CLASS_DEFAULTS.items() if k not in row}} for row in rows]


def load_artifacts(path: Path) -> list[dict]:
    """Read an artifacts truth file back into dicts with typed values (``epoch`` int, numbers float)."""
    return _load_table(path, ARTIFACT_COLUMNS, _ARTIFACT_TYPES, "artifact")


def artifacts_path_for(truth_path: Path) -> Path:
    """The artifacts truth beside ``truth_path``: ``artifacts.csv`` by ``truth.csv``, else ``<stem>-artifacts.csv``."""
    truth_path = Path(truth_path)
    name = "artifacts.csv" if truth_path.name == "truth.csv" else f"{truth_path.stem}-artifacts.csv"
    return truth_path.with_name(name)


def _table_csv(rows: list[dict], columns: tuple[str, ...], formats: dict) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: formats.get(k, "{}").format(v) for k, v in row.items()})
    return text.getvalue().encode()


def _host_cell(value: float) -> str:
    """A host position on disk: NaN in memory (no host) is an empty cell, which spreadsheets read as missing."""
    return "" if np.isnan(value) else f"{value:.8f}"


def _truth_csv(rows: list[dict]) -> bytes:
    cells = [{**row, "host_ra": _host_cell(row["host_ra"]), "host_dec": _host_cell(row["host_dec"])} for row in rows]
    return _table_csv(cells, TRUTH_COLUMNS, _TRUTH_FORMATS)


def _write_table(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda fh: fh.write(payload))


def frame_name(instrument: str, night: date, seq: int, kind: str, band: str, field: str | None = None) -> str:
    """``{INSTRUME}_{YYYYMMDD}_{seq:04d}_{kind}[_{field}]_{band}.fits``."""
    return f"{instrument}_{night:%Y%m%d}_{seq:04d}_{kind}{'_' + field if field else ''}_{band}.fits"


def free_night(folders: list[Path], start: date, instrument: str = DetectorSpec.instrument) -> date:
    """The first night from ``start`` on whose frames (``{instrument}_{YYYYMMDD}_*``) are in none of ``folders``.

    ``folders`` are searched one level deep too (the raw archive is ``raw/<night>/<name>``), so a night
    already ingested and moved out of the landing folder counts as taken.
    """
    night = start
    while any(next(folder.glob(pattern), None) is not None
              for folder in folders if folder.is_dir()
              for pattern in (f"{instrument}_{night:%Y%m%d}_*", f"*/{instrument}_{night:%Y%m%d}_*")):
        night += timedelta(days=1)
    return night


def _science_schedule(
    n_fields: int, bands: tuple[str, ...], n_epochs: int, midnight_mjd: float, spec: DetectorSpec, seed: int
) -> list[tuple[int, int, int, EpochConditions]]:
    """(field, band, epoch, conditions) of every science exposure, in time order.

    Each epoch visits every field and band in turn; epochs are spread over the night.
    """
    exposure_days = (_SCIENCE_EXPTIME_S + _OVERHEAD_S) / 86400
    block = n_fields * len(bands) * exposure_days
    spacing = max(block, min(1.5 / 24, (_SCIENCE_END_H - _SCIENCE_START_H) / 24 / n_epochs))
    start = midnight_mjd + _SCIENCE_START_H / 24
    schedule = []
    for f in range(n_fields):
        for b, band in enumerate(bands):
            mjds = [start + e * spacing + (f * len(bands) + b) * exposure_days for e in range(n_epochs)]
            rng = np.random.default_rng([seed, _CONDITIONS, f, b])
            series = draw_epoch_conditions(mjds, spec, rng, band=band, exptime=_SCIENCE_EXPTIME_S)
            schedule += [(f, b, e, c) for e, c in enumerate(series)]
    return sorted(schedule, key=lambda item: item[3].mjd)


def simulate_night(
    out_dir,
    *,
    n_fields: int = 2,
    n_epochs: int = 3,
    size: int = 2048,
    bands: tuple[str, ...] = ("r",),
    n_bias: int = 5,
    n_flats: int = 5,
    transients_per_frame: int = 10,
    overscan: int = 32,
    seed: int = 42,
    night: str = "2026-11-21",
    truth_path: Path | str | None = None,
    artifacts: ArtifactRates | None = None,
    artifacts_path: Path | str | None = None,
    variable_fraction: float = 0.0,
) -> SimulatedNight:
    """Simulate and write one night of raw frames into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Created if needed; existing files of the same names are replaced.
    n_fields, n_epochs : int
        Fields ``F001``... each observed ``n_epochs`` times in every band.
        Epoch 0 of each field and band has the best seeing and no transients.
    size : int
        The data section is ``size`` x ``size`` pixels (>= 64).
    bands : tuple of str
        Filters, a subset of :data:`~dagster_project.simulation.telescope.BANDS`.
    n_bias, n_flats : int
        Bias frames, and twilight flats per band (0 and 0 for a night without
        calibration frames).
    transients_per_frame : int
        Transients injected into every science frame of epoch >= 1.
    overscan : int
        Overscan columns (0 for none: no BIASSEC/TRIMSEC keywords).
    seed : int
        Everything is a function of ``seed``: the same seed writes identical bytes.
    night : str
        ``YYYY-MM-DD``, local date at the start of the night.
    truth_path : path-like, optional
        Where ``truth.csv`` goes (its folder is created); default ``out_dir / "truth.csv"``.
    artifacts : ArtifactRates, optional
        Artifacts added to every science frame (e.g.
        :data:`~dagster_project.simulation.artifacts.ARTIFACT_RICH`); with it, and only
        then, the artifacts truth file is written. ``ArtifactRates()`` writes the same
        frames as None, with the truth of the cosmic rays, saturated regions and fixed
        bad columns they always have.
    artifacts_path : path-like, optional
        Where that file goes; default :func:`artifacts_path_for` of the truth path.
    variable_fraction : float
        Share (0-1) of each frame's transients that are variable stars: stars of the
        field brightening by the transient's flux (kind ``variable`` in the truth). The
        default 0 writes the frames a night without variables always had.
    """
    _check_arguments(n_fields, n_epochs, n_bias, n_flats, transients_per_frame, bands)
    if not 0 <= variable_fraction <= 1:
        raise ValueError(f"variable_fraction must be between 0 and 1, got {variable_fraction}")
    night_date = date.fromisoformat(night)
    spec = DetectorSpec(nx=size, ny=size, overscan=overscan)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    detector = make_detector(spec, np.random.default_rng([seed, _DETECTOR]))
    fields = _fields(n_fields, seed)
    midnight = Time(night_date.isoformat(), scale="utc").mjd
    frames = _FrameWriter(out_dir, spec.instrument, night_date)
    _write_calibration(frames, detector, bands, n_bias, n_flats, midnight, seed)
    truth, found, conditions = _write_science(frames, detector, spec, fields, bands, n_epochs, transients_per_frame,
                                              midnight, seed, artifacts, variable_fraction)

    truth_path = out_dir / "truth.csv" if truth_path is None else Path(truth_path)
    _write_table(truth_path, _truth_csv(truth))
    if artifacts is not None:
        artifacts_path = artifacts_path_for(truth_path) if artifacts_path is None else Path(artifacts_path)
        _write_table(artifacts_path, _table_csv(found, ARTIFACT_COLUMNS, _ARTIFACT_FORMATS))
    summary = {
        "night": night,
        "out_dir": str(out_dir),
        "truth": str(truth_path),
        "files": {kind: len(p) for kind, p in frames.paths.items()},
        "fields": {fld.name: {"ra": round(fld.ra_deg, 6), "dec": round(fld.dec_deg, 6)} for fld in fields},
        "bands": list(bands),
        "epochs": n_epochs,
        "size": size,
        "transients": len(truth),
        "transient_kinds": dict(Counter(row["kind"] for row in truth)),
        "seed": seed,
    }
    if artifacts is not None:
        summary["artifacts"] = dict(Counter(row["kind"] for row in found))
        return SimulatedNight(out_dir, frames.paths, truth, truth_path, conditions, summary, found, artifacts_path)
    return SimulatedNight(out_dir, frames.paths, truth, truth_path, conditions, summary)


def _check_arguments(n_fields: int, n_epochs: int, n_bias: int, n_flats: int, transients_per_frame: int,
                     bands: tuple[str, ...]) -> None:
    """ValueError before anything is written: counts out of range, repeated or unknown bands."""
    if n_fields < 1 or n_epochs < 1 or n_bias < 0 or n_flats < 0 or transients_per_frame < 0:
        raise ValueError("need n_fields >= 1, n_epochs >= 1 and non-negative frame and transient counts")
    if not bands or len(set(bands)) != len(bands):
        raise ValueError(f"bands must be a non-empty tuple of distinct names, got {bands!r}")
    for band in bands:
        band_response(band)


def _fields(n_fields: int, seed: int) -> list[FieldSpec]:
    """Fields ``F001``... at random positions (any RA, Dec from -60 to +10 deg)."""
    field_rng = np.random.default_rng([seed, _FIELDS])
    return [
        FieldSpec(f"F{i + 1:03d}", float(field_rng.uniform(0.0, 360.0)), float(field_rng.uniform(-60.0, 10.0)))
        for i in range(n_fields)
    ]


class _FrameWriter:
    """Writes the night's frames under their names, numbered in writing order, and keeps their paths by kind."""

    def __init__(self, out_dir: Path, instrument: str, night: date) -> None:
        self.out_dir, self.instrument, self.night = out_dir, instrument, night
        self.paths: dict[str, list[Path]] = {"bias": [], "flat": [], "sci": []}
        self._sequence = itertools.count(1)

    def write(self, frame: RawFrame, kind: str, band: str, field: str | None = None) -> Path:
        path = self.out_dir / frame_name(self.instrument, self.night, next(self._sequence), kind, band, field)
        write_raw_frame(path, frame)
        self.paths[kind].append(path)
        return path


def _write_calibration(frames: _FrameWriter, detector, bands: tuple[str, ...], n_bias: int, n_flats: int,
                       midnight: float, seed: int) -> None:
    """The afternoon's biases, then the twilight flats of each band."""
    for i in range(n_bias):
        rng = np.random.default_rng([seed, _BIAS, i])
        mjd = midnight + _BIAS_START_H / 24 + i * 30.0 / 86400
        frames.write(simulate_bias_frame(detector, rng, mjd=mjd, band=bands[0]), "bias", bands[0])
    for b, band in enumerate(bands):
        for i in range(n_flats):
            rng = np.random.default_rng([seed, _FLAT, b, i])
            mjd = midnight + _FLAT_START_H / 24 + (b * n_flats + i) * 60.0 / 86400
            # twilight fades: each flat has its own level
            frame = simulate_flat_frame(detector, rng, mjd=mjd, band=band, level_adu=rng.uniform(15000.0, 25000.0))
            frames.write(frame, "flat", band)


def _artifact_rows(frame: RawFrame, identity: dict) -> list[dict]:
    """The frame's artifacts as truth rows, each with the frame's ``file, field, band, epoch``."""
    names = ARTIFACT_COLUMNS[len(identity):]
    return [{**identity, **{name: getattr(artifact, name) for name in names}} for artifact in frame.artifacts]


def _truth_row(transient: Transient, identity: dict) -> dict:
    """The truth row of ``transient``, after the frame's ``file, field, band, epoch`` (NaN host position: no host)."""
    t = transient
    no_host = float("nan")
    return dict(**identity, ra=t.ra, dec=t.dec, x=t.x, y=t.y, flux_e=t.flux_e, snr_optimal=t.snr_optimal,
                kind=t.kind, host_index=t.host_index, host_ra=no_host if t.host_ra is None else t.host_ra,
                host_dec=no_host if t.host_dec is None else t.host_dec)


def _write_science(frames: _FrameWriter, detector, spec: DetectorSpec, fields: list[FieldSpec],
                   bands: tuple[str, ...], n_epochs: int, transients_per_frame: int, midnight: float,
                   seed: int, artifacts: ArtifactRates | None = None, variable_fraction: float = 0.0,
                   ) -> tuple[list[dict], list[dict], dict[str, EpochConditions]]:
    """The science exposures in time order: their transients' and artifacts' truth rows, and each one's conditions."""
    skies = [make_sky_model(fld, spec, np.random.default_rng([seed, _SKY, f])) for f, fld in enumerate(fields)]
    truth: list[dict] = []
    found: list[dict] = []
    conditions: dict[str, EpochConditions] = {}
    for f, b, epoch, cond in _science_schedule(len(fields), bands, n_epochs, midnight, spec, seed):
        field, band = fields[f], bands[b]
        frame = simulate_science_frame(
            detector, field, skies[f], cond, band, np.random.default_rng([seed, _SCIENCE, f, b, epoch]),
            n_transients=transients_per_frame if epoch >= 1 else 0, artifacts=artifacts,
            variable_fraction=variable_fraction,
        )
        path = frames.write(frame, "sci", band, field.name)
        conditions[path.name] = cond
        truth += [_truth_row(t, dict(file=path.name, field=field.name, band=band, epoch=epoch))
                  for t in frame.transients]
        found += _artifact_rows(frame, dict(file=path.name, field=field.name, band=band, epoch=epoch))
    return truth, found, conditions
