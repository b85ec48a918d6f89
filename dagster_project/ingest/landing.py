"""The landing folder: which files are ready, and taking them in.

Used by the raw-arrival sensor and by ``python -m dagster_project process``
alike. Files move, they are never deleted:

* a valid frame is registered in the catalog and moved into the raw archive
  (``<store>/raw/<night>/<name>``, ``<stem>.v<N>.fits`` for later versions);
* a bad file is moved to the quarantine folder, with its reason in the catalog
  and in a ``<name>.reason.txt`` beside it;
* identical content arriving again is recorded as a duplicate of the first and
  moved to the quarantine folder's ``duplicates/``.

The catalog row is committed before the file moves, so a crash in between is
repaired by the next scan: it finds the file still in the landing folder, sees
its hash already registered, and finishes the move.
"""

import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from dagster_project.catalog import Catalog, pipeline_queries, queries, result_lifecycle
from dagster_project.ingest.fits_structure import InvalidFitsFile, StructureLimits, inspect_fits_structure
from dagster_project.ingest.frames import FrameInfo, describe_frame
from dagster_project.ingest.instruments import InstrumentRegistry

FITS_SUFFIXES = (".fits", ".fit", ".fts")


def candidate_files(landing_dir: Path) -> list[Path]:
    """FITS files below ``landing_dir``, oldest first; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(landing_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(FITS_SUFFIXES):
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns if p.exists() else 0, str(p)))


@dataclass
class SeenFile:
    """How a waiting file looked at the previous scan (kept in the sensor cursor)."""

    size: int
    mtime_ns: int
    unchanged_since: float  # epoch seconds when size/mtime were last seen to change


@dataclass(frozen=True)
class Readiness:
    state: str  # "ready", "wait" or "reject"
    reason: str = ""


def assess(path: Path, previous: SeenFile | None, now: float, settle_seconds: float,
           truncated_after: float, limits: StructureLimits) -> tuple[Readiness, SeenFile]:
    """Decide whether ``path`` can be taken now.

    A file is ready when the size its FITS headers imply equals its size on
    disk and neither size nor mtime changed for ``settle_seconds`` (across two
    scans, or by its mtime). A file that stays incomplete and unchanged for
    ``truncated_after`` seconds is rejected as truncated.
    """
    stat = path.stat()
    if previous and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        seen = previous
    else:
        seen = SeenFile(stat.st_size, stat.st_mtime_ns, min(now, stat.st_mtime_ns / 1e9))
    quiet_for = now - max(seen.unchanged_since, stat.st_mtime_ns / 1e9)
    try:
        structure = inspect_fits_structure(path, limits)
    except InvalidFitsFile as exc:
        # a header can look broken only because it is half written
        return (Readiness("reject", exc.reason) if quiet_for >= settle_seconds else Readiness("wait")), seen
    if structure is not None and structure.is_complete:
        return (Readiness("ready") if quiet_for >= settle_seconds else Readiness("wait")), seen
    if quiet_for >= truncated_after:
        if structure is None:
            reason = f"truncated: file ends inside its headers after {stat.st_size} bytes"
        elif structure.actual_size > structure.expected_size:
            reason = f"{structure.actual_size - structure.expected_size} unexpected bytes after the last HDU"
        else:
            reason = (f"truncated: {structure.actual_size} bytes on disk, "
                      f"headers imply {structure.expected_size}")
        return Readiness("reject", reason), seen
    return Readiness("wait"), seen


def sha256_of(path: Path, chunk: int = 4 * 2**20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one landed file."""

    path: str
    status: str  # accepted, quarantined, duplicate, recovered, known (keep_originals: taken before)
    raw_file_id: str
    frame_type: str | None = None
    observation_key: str | None = None
    field_band: str | None = None
    sha256: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LandingConfig:
    landing_dir: Path
    store_dir: Path
    quarantine_dir: Path
    survey: str
    limits: StructureLimits
    #: copy files instead of moving them (for folders that belong to someone, e.g. an archive night)
    keep_originals: bool = False


def _unique_destination(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    n = 1
    while target.exists():
        target = folder / f"{name}.{n}"
        n += 1
    return target


def _transfer(config: LandingConfig, source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if config.keep_originals:
        shutil.copy2(source, target)
    else:
        shutil.move(str(source), str(target))


def archive_path(config: LandingConfig, night: str, original_name: str, version: int) -> Path:
    stem, dot, suffix = original_name.rpartition(".")
    name = original_name if version == 1 else f"{stem}.v{version}.{suffix}" if dot else f"{original_name}.v{version}"
    return config.store_dir / "raw" / night / name


def quarantine(config: LandingConfig, catalog: Catalog, path: Path, reason: str, sha256: str,
               duplicate_of=None) -> IngestOutcome:
    """Move ``path`` out of the landing folder with its reason; record it in the catalog."""
    folder = config.quarantine_dir / ("duplicates" if duplicate_of is not None else
                                      datetime.now(timezone.utc).strftime("%Y%m%d"))
    target = _unique_destination(folder, path.name)
    with catalog.session() as session:
        survey = queries.get_or_create_survey(session, config.survey)
        if duplicate_of is not None:
            row = queries.register_duplicate_file(
                session, original=duplicate_of, original_name=path.name, landing_path=str(path),
                stored_path=str(target), size_bytes=path.stat().st_size, sha256=sha256, survey=survey)
        else:
            row = queries.register_quarantined_file(
                session, original_name=path.name, landing_path=str(path), stored_path=str(target),
                size_bytes=path.stat().st_size, sha256=sha256, reason=reason, survey=survey)
        raw_id = str(row.id)
    _transfer(config, path, target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    status = "duplicate" if duplicate_of is not None else "quarantined"
    return IngestOutcome(str(path), status, raw_id, sha256=sha256, reason=reason)


def ingest_file(config: LandingConfig, catalog: Catalog, registry: InstrumentRegistry, path: Path,
                readiness: Readiness) -> IngestOutcome:
    """Take one file that :func:`assess` found ready (or rejected) into the platform."""
    sha256 = sha256_of(path)
    with catalog.session() as session:
        if config.keep_originals and pipeline_queries.raw_file_arrived_from(session, sha256, str(path)):
            return IngestOutcome(str(path), "known", "", sha256=sha256)  # taken by an earlier run
        known = queries.find_raw_file_by_sha256(session, sha256)
        if known is not None:
            known_path, known_id = Path(known.stored_path), str(known.id)
            recovering = known.landing_path == str(path) and not known_path.exists()
            known_info = (known.frame_type.value if known.frame_type else None,
                          known.observation.observation_id if known.observation else None)
    if known is not None:
        if recovering:  # registered by a scan that stopped before moving the file
            _transfer(config, path, known_path)
            return IngestOutcome(str(path), "recovered", known_id, frame_type=known_info[0],
                                 observation_key=known_info[1], sha256=sha256)
        return quarantine(config, catalog, path, f"duplicate of {known_path.name} (same sha256)", sha256,
                          duplicate_of=known_id)
    if readiness.state == "reject":
        return quarantine(config, catalog, path, readiness.reason, sha256)
    structure = inspect_fits_structure(path, config.limits)
    try:
        info = describe_frame(path, structure, registry)
    except InvalidFitsFile as exc:
        return quarantine(config, catalog, path, exc.reason, sha256)
    return _register_accepted(config, catalog, path, info, sha256)


def _register_accepted(config: LandingConfig, catalog: Catalog, path: Path, info: FrameInfo,
                       sha256: str) -> IngestOutcome:
    size = path.stat().st_size
    with catalog.session() as session:
        survey = queries.get_or_create_survey(session, config.survey)
        version = queries.next_raw_file_version(session, path.name)
        target = archive_path(config, info.night, path.name, version)
        raw = queries.register_raw_file(
            session, original_name=path.name, landing_path=str(path), stored_path=str(target),
            size_bytes=size, sha256=sha256, frame_type=info.frame_type, instrument=info.instrument,
            filter_band=info.filter_band, night=info.night, observation_time=info.observation_time,
            header=info.cards, survey=survey)
        observation_key = None
        if info.frame_type == "science":
            observation_key = info.observation_key(sha256)
            observation = queries.create_observation(
                session, raw_file=raw, survey=survey, observation_id=observation_key,
                field_name=info.field_name, ra=info.ra, dec=info.dec,
                observation_time=info.observation_time, mjd=info.mjd, night=info.night,
                filter_band=info.filter_band, exposure_time=info.exposure_time, fits_url=str(target),
                pixel_scale=info.pixel_scale, airmass=info.airmass, instrument=info.instrument,
                naxis1=info.naxis1, naxis2=info.naxis2)
            result_lifecycle.match_observation(session, observation, info.cards)
        raw_id = str(raw.id)
    _transfer(config, path, target)
    return IngestOutcome(str(path), "accepted", raw_id, frame_type=info.frame_type,
                         observation_key=observation_key,
                         field_band=info.field_band if observation_key else None, sha256=sha256)


@dataclass
class ScanResult:
    outcomes: list[IngestOutcome]
    waiting: dict[str, SeenFile]  # path -> how it looked, for the next scan


def scan_landing(config: LandingConfig, catalog: Catalog, registry: InstrumentRegistry,
                 seen: dict[str, SeenFile], settle_seconds: float, truncated_after: float,
                 now: float | None = None, max_files: int | None = None) -> ScanResult:
    """One pass over the landing folder: take every ready file, remember the waiting ones.

    A file that disappears or fails unexpectedly is left for the next scan; one
    bad file never stops the others.
    """
    now = time.time() if now is None else now
    outcomes: list[IngestOutcome] = []
    waiting: dict[str, SeenFile] = {}
    for path in candidate_files(config.landing_dir):
        if max_files is not None and len(outcomes) >= max_files:
            if str(path) in seen:  # not looked at this time: keep what we knew
                waiting[str(path)] = seen[str(path)]
            continue
        try:
            readiness, state = assess(path, seen.get(str(path)), now, settle_seconds, truncated_after,
                                      config.limits)
            if readiness.state == "wait":
                waiting[str(path)] = state
                continue
            outcomes.append(ingest_file(config, catalog, registry, path, readiness))
        except FileNotFoundError:
            continue  # moved away by the writer or by a concurrent scan
    return ScanResult(outcomes, waiting)


def encode_seen(seen: dict[str, SeenFile]) -> dict:
    return {path: [s.size, s.mtime_ns, s.unchanged_since] for path, s in seen.items()}


def decode_seen(raw: dict | None) -> dict[str, SeenFile]:
    return {path: SeenFile(int(v[0]), int(v[1]), float(v[2])) for path, v in (raw or {}).items()}


def summarize(outcomes: Iterable[IngestOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts
