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

A pass (:func:`scan_landing`) reads the ready files first (structure, sha256),
then asks the catalog once what it holds of their contents (duplicates, files
taken before, files to recover), describes the good ones, and registers them
together with one look-up of their names' earlier versions: a tick of a
thousand files asks a few questions, not a thousand.

Hostile entries (see ``docs/reliability.md``): only regular files are read,
through :func:`~dagster_project.ingest.fits_structure.open_regular` (no link is
followed, a FIFO never blocks); a link, FIFO or device is quarantined without
being opened. Any failure on one file quarantines that file with the failure as
its reason and the scan goes on; only an unreachable catalog stops a scan. A file
is known by its path below the landing folder, so ``a/x.fits`` and ``b/x.fits``
are two files. Where files go is the store's layout (``store.raw_archive_path``, ``store.quarantine_path``):
every path written is checked to lie inside its folder.
"""

import errno
import hashlib
import os
import re
import shutil
import stat as stat_module
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from dagster_project.catalog import Catalog, queries
from dagster_project.catalog.queries import observatory
from dagster_project.catalog.schema import Observation, RawDataFile, RawFileStatus
from dagster_project.ingest.fits_structure import (
    BLOCK,
    ChecksumMismatch,
    FitsStructure,
    InvalidFitsFile,
    StructureLimits,
    inspect_fits_structure,
    open_regular,
    reinspect,
)
from dagster_project.ingest.frames import FrameInfo, describe_frame
from dagster_project.ingest.instruments import InstrumentRegistry
from dagster_project.ingest.names import COMPRESSED_SUFFIXES, FITS_SUFFIXES
from dagster_project.store import quarantine_path, raw_archive_path

#: bytes read at each of the sample points of a waiting file (its content, not only its size, must settle)
SAMPLE_BYTES = 4096
SAMPLE_POINTS = 16
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` fit for one log line: control characters (a newline in a file name) and undecodable bytes escaped."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True)
class LandingEntry:
    """One entry below the landing folder; ``refusal`` says why it is not taken as a FITS file."""

    path: Path
    refusal: str | None = None


def _refusal(path: Path, stat: os.stat_result) -> str | None:
    """Why the entry at ``path`` (``lstat`` result ``stat``) is not read at all, or None for a regular file."""
    if stat_module.S_ISLNK(stat.st_mode):
        return f"symbolic link to {printable(os.readlink(path))!r}: links are never followed"
    if not stat_module.S_ISREG(stat.st_mode):
        kind = {stat_module.S_IFIFO: "named pipe (FIFO)", stat_module.S_IFSOCK: "socket",
                stat_module.S_IFCHR: "character device", stat_module.S_IFBLK: "block device"}
        return f"{kind.get(stat_module.S_IFMT(stat.st_mode), 'special file')}: only regular files are taken"
    return None


def _is_undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk hands undecodable bytes over as surrogate escapes
        return True
    return False


def _is_landing_name(name: str) -> bool:
    lower = name.lower()
    return not name.startswith(".") and lower.endswith(FITS_SUFFIXES + COMPRESSED_SUFFIXES)


def candidate_files(landing_dir: Path) -> list[LandingEntry]:
    """Entries below ``landing_dir`` to take or refuse, oldest first; hidden files and folders skipped.

    Nothing is followed or opened here: a symbolic link (to a file or a folder),
    a FIFO or a device is listed with its refusal, and is never read.
    """
    found: list[tuple[int, LandingEntry]] = []
    for root, dirs, files in os.walk(landing_dir):  # os.walk does not descend into linked folders
        linked = [d for d in dirs if os.path.islink(os.path.join(root, d)) and not d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        for name in (*files, *linked):
            path = Path(root) / name
            if name in files and not _is_landing_name(name):
                continue
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue
            refusal = _refusal(path, stat)
            if refusal is None and _is_undecodable(name):
                refusal = "file name is not valid UTF-8"
            if refusal is None and name.lower().endswith(COMPRESSED_SUFFIXES):
                refusal = "compressed FITS is not taken: decompress it (funpack, gunzip) into the landing folder"
            found.append((stat.st_mtime_ns, LandingEntry(path, refusal)))
    return [entry for _, entry in sorted(found, key=lambda item: (item[0], str(item[1].path)))]


@dataclass
class SeenFile:
    """How a waiting file looked at the previous scan (kept in the sensor cursor)."""

    size: int
    mtime_ns: int
    unchanged_since: float  # epoch seconds when its signature was last seen to change
    ctime_ns: int = 0
    sample: str = ""  # digest of a few blocks spread over the file

    def signature(self) -> tuple:
        return self.size, self.mtime_ns, self.ctime_ns, self.sample


def content_sample(path: Path, size: int) -> str:
    """Digest of ``SAMPLE_POINTS`` blocks spread evenly over the file, its last block included.

    A writer that preallocates the file to its full size and then fills it
    changes no size, and may not move the mtime (mmap); it changes these bytes.
    """
    digest = hashlib.blake2b(digest_size=16)
    with open_regular(path) as fh:
        for k in range(SAMPLE_POINTS):
            fh.seek(max(0, (size - SAMPLE_BYTES) * k // max(1, SAMPLE_POINTS - 1)))
            digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _observe(path: Path, previous: SeenFile | None, now: float) -> SeenFile:
    stat = os.lstat(path)
    sample = content_sample(path, stat.st_size)
    current = SeenFile(stat.st_size, stat.st_mtime_ns, 0.0, stat.st_ctime_ns, sample)
    if previous is not None and previous.signature() == current.signature():
        current.unchanged_since = previous.unchanged_since
    else:
        # a write moves the ctime (which no utime call can set back): a file first seen is
        # quiet since its last change, never since an old mtime preserved by `cp -p` or rsync
        current.unchanged_since = min(now, max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9)
        if previous is not None:
            current.unchanged_since = now
    return current


def _tail_unwritten(path: Path, structure: FitsStructure) -> bool:
    """Whether the last bytes of the last HDU's data are all zero: a preallocated file not yet filled.

    A writer that sets the full size first and fills the file in order writes
    the tail last. Real pixel data practically never ends in 2880 zero bytes;
    a file that does is still taken once unchanged for ``truncated_after``.
    """
    last = next((hdu for hdu in reversed(structure.hdus) if hdu.data_bytes), None)
    if last is None:
        return False
    n = min(BLOCK, last.data_bytes)
    with open_regular(path) as fh:
        fh.seek(last.data_offset + last.data_bytes - n)
        return not fh.read(n).strip(b"\0")


#: why a complete file waits: it has not stayed unchanged for the settle time yet
SETTLING = "settling"


@dataclass(frozen=True)
class Readiness:
    state: str  # "ready", "wait" (``reason`` SETTLING: complete, only not quiet long enough yet) or "reject"
    reason: str = ""
    #: changed within ``truncated_after``: a file whose checksums fail may still be being written
    recent: bool = False
    #: a ready file's structure as assessed (taking it checks that its headers did not change since)
    structure: FitsStructure | None = field(default=None, repr=False, compare=False)


def assess(path: Path, previous: SeenFile | None, now: float, settle_seconds: float,
           truncated_after: float, limits: StructureLimits) -> tuple[Readiness, SeenFile]:
    """Decide whether ``path`` can be taken now.

    A file is ready when the size its FITS headers imply equals its size on
    disk and its signature (size, mtime, ctime and a sample of its content) has
    not changed for ``settle_seconds``. A file that stays incomplete and
    unchanged for ``truncated_after`` seconds is rejected as truncated.
    """
    seen = _observe(path, previous, now)
    quiet_for = now - seen.unchanged_since
    try:
        structure = inspect_fits_structure(path, limits)
    except InvalidFitsFile as exc:
        # a header can look broken only because it is half written
        return (Readiness("reject", exc.reason) if quiet_for >= settle_seconds else Readiness("wait")), seen
    if structure is not None and structure.is_complete:
        if quiet_for < settle_seconds:
            return Readiness("wait", SETTLING), seen
        if quiet_for < truncated_after and _tail_unwritten(path, structure):
            return Readiness("wait"), seen
        return Readiness("ready", recent=quiet_for < truncated_after, structure=structure), seen
    if quiet_for >= truncated_after:
        if structure is None:
            reason = f"truncated: file ends inside its headers after {seen.size} bytes"
        elif structure.actual_size > structure.expected_size:
            reason = f"{structure.actual_size - structure.expected_size} unexpected bytes after the last HDU"
        else:
            reason = (f"truncated: {structure.actual_size} bytes on disk, "
                      f"headers imply {structure.expected_size}")
        return Readiness("reject", reason), seen
    return Readiness("wait"), seen


def sha256_of(path: Path, chunk: int = 4 * 2**20, max_bytes: int | None = None) -> str:
    """SHA-256 of a regular file (never of what a link points at); at most ``max_bytes`` are read."""
    digest = hashlib.sha256()
    read = 0
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            read += len(block)
            if max_bytes is not None and read > max_bytes:
                raise InvalidFitsFile(f"file grew past the limit of {max_bytes} bytes while it was read")
            digest.update(block)
    return digest.hexdigest()


def entry_digest(description: str, landing_path: str) -> str:
    """The catalog's sha256 for an entry that has no content to hash (a link, a FIFO): that of what it is and where."""
    return hashlib.sha256(f"{description}\0{landing_path}".encode("utf-8", "backslashreplace")).hexdigest()


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
    #: a file registered through the operations API that has not landed this long after is missing (seconds)
    missing_after_seconds: float = 3600.0


#: the catalog's column widths for names and paths (RawDataFile.original_name, .landing_path, .stored_path)
NAME_CHARS, PATH_CHARS = 255, 1024


def _clip(text: str, limit: int) -> str:
    """``text`` if it fits its column, else its tail behind an ellipsis (the file name is the informative end)."""
    return text if len(text) <= limit else "\u2026" + text[-(limit - 1):]


def _text(path: Path | str) -> str:
    """A path as catalog text: undecodable bytes of a file name written as backslash escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def catalog_name(config: LandingConfig, path: Path) -> str:
    """The name a landed file is known by: its path relative to the landing folder.

    Two files called ``a.fits`` in two sub-folders are two names, not two versions of one.
    """
    try:
        relative = path.relative_to(config.landing_dir).as_posix()
    except ValueError:
        relative = path.name
    return _clip(_text(relative), NAME_CHARS)


def _transfer(config: LandingConfig, source: Path, target: Path) -> None:
    """Copy or move a regular file into place whole; a link is never followed (``copy2`` copies the link itself).

    A crash leaves either no target or the complete file: a copy (and a move across file systems) is written
    under a temporary name and renamed. A partial file under the target's name would pass for the archived
    copy, and the file would never be taken again.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not config.keep_originals:
        try:
            os.rename(source, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial, follow_symlinks=False)
    os.replace(partial, target)
    if not config.keep_originals:
        source.unlink()


def _transfer_entry(config: LandingConfig, source: Path, target: Path) -> Path | None:
    """Move a link, FIFO or device into the quarantine without opening it; where it went, or None (left in place).

    In copy mode nothing is moved. A FIFO or device is only ever renamed (a
    copy would block on it or read it), so across file systems it stays.
    """
    if config.keep_originals:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError:
        if not source.is_symlink():
            return None
        os.symlink(os.readlink(source), target)  # recreate the link itself, then drop the original
        source.unlink()
    return target


def _write_reason(target: Path, reason: str) -> None:
    # written before the catalog row, so a crash cannot leave a quarantined file without its reason
    reason_path = target.with_name(target.name + ".reason.txt")
    partial = reason_path.with_name(reason_path.name + ".partial")
    partial.write_text(reason + "\n")
    os.replace(partial, reason_path)


def quarantine(config: LandingConfig, catalog: Catalog, path: Path, reason: str, sha256: str,
               duplicate_of=None, regular: bool = True) -> IngestOutcome:
    """Move ``path`` out of the landing folder with its reason; record it in the catalog.

    ``regular=False`` for a link, FIFO or device: it is moved (renamed) but never opened or copied.
    """
    target = quarantine_path(config.quarantine_dir, _text(path.name), duplicate=duplicate_of is not None)
    _write_reason(target, reason)
    size = os.lstat(path).st_size if regular else 0
    stored = str(target) if regular or not config.keep_originals else None
    fields = dict(original_name=catalog_name(config, path), landing_path=_clip(_text(path), PATH_CHARS),
                  stored_path=_clip(_text(stored), PATH_CHARS) if stored else None, size_bytes=size, sha256=sha256)
    with catalog.session() as session:
        survey = queries.get_or_create_survey(session, config.survey)
        if duplicate_of is not None:
            row = queries.register_duplicate_file(session, original=duplicate_of, survey=survey, **fields)
        else:
            row = queries.register_quarantined_file(session, reason=reason, survey=survey, **fields)
        raw_id = str(row.id)
    if regular:
        _transfer(config, path, target)
    else:
        _transfer_entry(config, path, target)
    status = "duplicate" if duplicate_of is not None else "quarantined"
    return IngestOutcome(_text(path), status, raw_id, sha256=sha256, reason=reason)


def refuse_entry(config: LandingConfig, catalog: Catalog, entry: LandingEntry) -> IngestOutcome:
    """Quarantine an entry that is not read (link, FIFO, device) or not taken (name, compression), with its reason."""
    path, reason = entry.path, entry.refusal
    regular = stat_module.S_ISREG(os.lstat(path).st_mode)
    landing_text = _clip(_text(path), PATH_CHARS)
    sha256 = sha256_of(path, max_bytes=config.limits.max_file_bytes) if regular else entry_digest(reason, landing_text)
    with catalog.session() as session:
        known = queries.find_raw_file_by_sha256(session, sha256)
        if known is not None and known.landing_path == landing_text and (
                config.keep_originals or not regular):  # recorded by an earlier scan (copy mode, or left in place)
            return IngestOutcome(_text(path), "known", str(known.id), sha256=sha256, reason=reason)
        known_id = str(known.id) if known is not None else None
    return quarantine(config, catalog, path, reason, sha256, duplicate_of=known_id, regular=regular)


def _signature(path: Path) -> tuple[int, int, int]:
    stat = os.lstat(path)
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@dataclass(frozen=True)
class Registration:
    """A landed file found good and described, not yet registered: a scan registers those it took together."""

    path: Path
    readiness: Readiness
    info: FrameInfo
    sha256: str


@dataclass(frozen=True)
class Hashed:
    """A file read whole once: its signature before the read, its sha256, and what the catalog holds of that
    content (looked up for a scan's files together: :func:`_look_up_hashed`)."""

    signature: tuple[int, int, int]
    sha256: str
    known: queries.KnownContent | None  # None: not looked up yet


def ingest_file(config: LandingConfig, catalog: Catalog, registry: InstrumentRegistry, path: Path,
                readiness: Readiness, survey_ids: dict[str, object] | None = None, *,
                register: bool = True, declared: observatory.WaitingRegistration | None = None,
                hashed: Hashed | None = None) -> IngestOutcome | Registration | None:
    """Take one file that :func:`assess` found ready (or rejected) into the platform.

    Returns None when the file changed while it was read, or when a recently
    changed file's checksums do not hold yet: it waits for the next scan.
    A scan racing this one for the same content or name loses its insert to the
    database's unique indexes and looks again: the content is then a duplicate.
    ``survey_ids``: a scan's memory of its survey's id (name -> id), so that its files do not look it up each.
    ``register=False``: a good file is returned described (a :class:`Registration`) for
    :func:`register_together`, and only refused, duplicate or recovered files get their outcome here.
    ``declared``: what the telescope registered through the operations API under this file's name; a file of
    another size or sha256 is quarantined with the difference as its reason.
    ``hashed``: the file's sha256 and what the catalog held of it, read by the scan (a second attempt after a
    race reads both again).
    """
    for attempt in range(3):
        try:
            return _ingest_once(config, catalog, registry, path, readiness, survey_ids, register, declared,
                                hashed if attempt == 0 else None)
        except (sa.exc.IntegrityError, queries.ContentAlreadyStored):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def hash_unchanged(config: LandingConfig, path: Path) -> tuple[tuple[int, int, int], str] | None:
    """(the file's signature, its sha256), or None when it changed while it was read."""
    before = _signature(path)
    sha256 = sha256_of(path, max_bytes=config.limits.max_file_bytes)
    return None if _signature(path) != before else (before, sha256)


def _ingest_once(config: LandingConfig, catalog: Catalog, registry: InstrumentRegistry, path: Path,
                 readiness: Readiness, survey_ids: dict[str, object] | None,
                 register: bool = True, declared: observatory.WaitingRegistration | None = None,
                 hashed: Hashed | None = None) -> IngestOutcome | Registration | None:
    if hashed is None:
        read = hash_unchanged(config, path)
        if read is None:
            return None
        hashed = Hashed(*read, known=None)
    elif _signature(path) != hashed.signature:
        return None
    before, sha256 = hashed.signature, hashed.sha256
    mismatch = None if declared is None else observatory.declared_mismatch(declared, before[0], sha256)
    if mismatch is not None:  # before anything else: the telescope said what this file must be
        return quarantine(config, catalog, path, mismatch, sha256)
    known = hashed.known
    if known is None:
        with catalog.session() as session:
            known = queries.known_contents(session, [sha256]).get(sha256, queries.KnownContent())
    taken = _known_outcome(config, catalog, path, sha256, known)
    if taken is not None:
        return taken
    if readiness.state == "reject":
        return quarantine(config, catalog, path, readiness.reason, sha256)
    try:
        structure = reinspect(path, readiness.structure, config.limits)
        if structure is None or not structure.is_complete:
            return None  # it changed since it was assessed
        info = describe_frame(path, structure, registry)
    except InvalidFitsFile as exc:
        if isinstance(exc, ChecksumMismatch) and readiness.recent:
            return None  # a writer that preallocates may not have finished: look again
        return quarantine(config, catalog, path, exc.reason, sha256)
    registration = Registration(path, readiness, info, sha256)
    return _register_accepted(config, catalog, registration, survey_ids) if register else registration


def _known_outcome(config: LandingConfig, catalog: Catalog, path: Path, sha256: str,
                   known: queries.KnownContent) -> IngestOutcome | None:
    """The outcome of a content the catalog holds already: taken by an earlier run (copy mode), recovered (a
    scan registered it and stopped before moving it), or a duplicate; None for a new content."""
    landing_text = _clip(_text(path), PATH_CHARS)
    if config.keep_originals and known.arrived_from(landing_text):
        return IngestOutcome(_text(path), "known", "", sha256=sha256)  # taken by an earlier run
    stored = known.stored
    if stored is None:
        return None
    stored_path = Path(stored.stored_path or "")
    if stored.landing_path == landing_text and stored.stored_path and not stored_path.exists():
        if stored.status == RawFileStatus.QUARANTINED and stored.quarantine_reason is not None:
            _write_reason(stored_path, stored.quarantine_reason)
        _transfer(config, path, stored_path)
        return IngestOutcome(_text(path), "recovered", str(stored.id),
                             frame_type=stored.frame_type.value if stored.frame_type else None,
                             observation_key=stored.observation_key, sha256=sha256)
    return quarantine(config, catalog, path, f"duplicate of {stored_path.name} (same sha256)", sha256,
                      duplicate_of=str(stored.id))


def _survey_of(session, config: LandingConfig, survey_ids: dict[str, object] | None) -> dict[str, object]:
    """The survey, as the keyword the registration queries take: its id if this scan committed it before."""
    if survey_ids is not None and config.survey in survey_ids:
        return {"survey_id": survey_ids[config.survey]}
    return {"survey": queries.get_or_create_survey(session, config.survey)}


def _register_accepted(config: LandingConfig, catalog: Catalog, registration: Registration,
                       survey_ids: dict[str, object] | None = None) -> IngestOutcome:
    size = os.lstat(registration.path).st_size
    with catalog.session() as session:
        raw, observation, target = _add_rows(session, config, registration, size, _survey_of(session, config,
                                                                                              survey_ids))
        if observation is not None:
            queries.match_observation(session, observation, registration.info.cards)
    return _archive(config, catalog, registration, raw, target, survey_ids)


def _add_rows(session, config: LandingConfig, registration: Registration, size: int, survey: dict,
              arrivals: list[RawDataFile] | None = None) -> tuple[RawDataFile, Observation | None, Path]:
    """A good file's raw-file row, and its observation if a science frame, added (written at the next flush);
    and where it is to be archived."""
    info, path = registration.info, registration.path
    name = catalog_name(config, path)
    targets = []  # where it is archived depends on the version registration gives it (one query, not two)

    def stored_path(version: int) -> str:
        targets.append(raw_archive_path(config.store_dir, info.night, name, version))
        return _clip(_text(targets[-1]), PATH_CHARS)

    raw = queries.register_raw_file(
        session, original_name=name, landing_path=_clip(_text(path), PATH_CHARS),
        stored_path=stored_path, size_bytes=size, sha256=registration.sha256, flush=False, arrivals=arrivals,
        frame_type=info.frame_type, instrument=info.instrument, filter_band=info.filter_band, night=info.night,
        observation_time=info.observation_time, header=info.cards, **survey)
    observation = None
    if info.frame_type == "science":
        observation = queries.create_observation(
            session, raw_file=raw, **survey, observation_id=info.observation_key(registration.sha256),
            field_name=info.field_name, ra=info.ra, dec=info.dec,
            observation_time=info.observation_time, mjd=info.mjd, night=info.night,
            filter_band=info.filter_band, exposure_time=info.exposure_time, fits_url=str(targets[-1]),
            pixel_scale=info.pixel_scale, airmass=info.airmass, instrument=info.instrument,
            naxis1=info.naxis1, naxis2=info.naxis2, flush=False)
    return raw, observation, targets[-1]


def _archive(config: LandingConfig, catalog: Catalog, registration: Registration, raw: RawDataFile, target: Path,
             survey_ids: dict[str, object] | None) -> IngestOutcome:
    """Move (or copy) a registered file into the archive, and check that it is still the content registered."""
    path, sha256, info = registration.path, registration.sha256, registration.info
    raw_id = str(raw.id)
    if survey_ids is not None:  # committed: later files of the scan may name it by id
        survey_ids[config.survey] = raw.survey_id
    _transfer(config, path, target)
    after = sha256_of(target, max_bytes=config.limits.max_file_bytes)
    if after != sha256:
        return _requeue_changed(config, catalog, raw_id, path, target, sha256, after)
    science = info.frame_type == "science"
    return IngestOutcome(_text(path), "accepted", raw_id, frame_type=info.frame_type,
                         observation_key=info.observation_key(sha256) if science else None,
                         field_band=info.field_band if science else None, sha256=sha256)


def register_together(config: LandingConfig, catalog: Catalog, registrations: list[Registration],
                      survey_ids: dict[str, object] | None = None) -> list[tuple[RawDataFile, Path]]:
    """Register the good files a scan described in one transaction: their rows inserted in one flush, the
    question whether any request waits for a frame asked once. Returns each file's row and archive path.

    Per file, registering is mostly the catalog's fixed costs (a transaction, a flush, a commit): a tick that
    takes a thousand files pays them once. Raises what the database raised (then nothing was written): a
    concurrent scan took one of these files, or two of them hold the same bytes.
    """
    sizes = [os.lstat(r.path).st_size for r in registrations]
    names = [(catalog_name(config, r.path), r.sha256) for r in registrations]
    with catalog.session() as session:
        survey = _survey_of(session, config, survey_ids)
        arrivals = queries.arrivals_of(session, names)
        with session.no_autoflush:  # the registrations need not see each other's rows: one flush after
            rows = [_add_rows(session, config, r, size, survey, arrivals[name])
                    for r, size, name in zip(registrations, sizes, names, strict=True)]
        session.flush()
        queries.match_observations(session, [(observation, r.info.cards) for r, (_, observation, _) in
                                             zip(registrations, rows) if observation is not None])
    return [(raw, target) for raw, _, target in rows]


def _requeue_changed(config: LandingConfig, catalog: Catalog, raw_id: str, path: Path, target: Path,
                     sha256: str, after: str) -> IngestOutcome:
    """The bytes changed between the hash and the move (a writer still at work): undo the acceptance.

    The registration is quarantined (its observation archived) with the reason,
    and the file goes back to the landing folder, to be taken again, as a new
    version, once it is complete.
    """
    reason = (f"content changed while it was being taken (sha256 {sha256[:12]}... at registration, "
              f"{after[:12]}... after the move): returned to the landing folder to be taken again once complete")
    with catalog.session() as session:
        queries.requeue_raw_file(session, raw_id, reason)
    if config.keep_originals:
        target.unlink()  # our copy; the original is still in the landing folder
    else:
        os.replace(target, path)
    return IngestOutcome(_text(path), "quarantined", raw_id, sha256=sha256, reason=reason)


@dataclass
class ScanResult:
    outcomes: list[IngestOutcome]
    waiting: dict[str, SeenFile]  # path -> how it looked, for the next scan
    #: files that could not even be quarantined this time (left in place for the next scan), with why
    errors: list[str] = field(default_factory=list)
    #: what else a person should know of the pass (its files taken one by one, and why)
    notes: list[str] = field(default_factory=list)


#: the catalog itself is unreachable: no file is at fault, the whole scan is retried at the next tick
CATALOG_UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


def _quarantine_after_error(config: LandingConfig, catalog: Catalog, path: Path, exc: Exception) -> IngestOutcome:
    """Any failure on one file quarantines that file with the failure as its reason."""
    reason = f"could not be taken: {type(exc).__name__}: {printable(str(exc))}"[:2000]
    landing_text = _clip(_text(path), PATH_CHARS)
    try:
        sha256 = sha256_of(path, max_bytes=config.limits.max_file_bytes)
    except Exception:  # unreadable: identify it by what happened where
        sha256 = entry_digest(reason, landing_text)
    with catalog.session() as session:
        known = queries.find_raw_file_by_sha256(session, sha256)
        known_id = str(known.id) if known is not None else None
    return quarantine(config, catalog, path, reason, sha256, duplicate_of=known_id)


@dataclass(frozen=True)
class _Read:
    """A ready (or rejected) file of the scan, read whole: what it looked like and its content's sha256."""

    entry: LandingEntry
    readiness: Readiness
    state: SeenFile
    signature: tuple[int, int, int]
    sha256: str
    now: float  # when the pass looked at it


def _take(scan: "_Scan", entry: LandingEntry, seen: SeenFile | None, now: float
          ) -> tuple[IngestOutcome | None, SeenFile | None, bool]:
    """One entry: (its outcome or None, how it looked if it must wait, whether it waits only to settle). A file
    to take is read (hashed) into ``scan.read``; what the catalog holds of the contents is asked for all of them
    together afterwards (:func:`_take_read_files`)."""
    if entry.refusal is not None:
        return refuse_entry(scan.config, scan.catalog, entry), None, False
    readiness, state = assess(entry.path, seen, now, scan.settle_seconds, scan.truncated_after, scan.config.limits)
    if readiness.state == "wait":
        return None, state, readiness.reason == SETTLING
    read = hash_unchanged(scan.config, entry.path)
    if read is None:  # it changed while it was read
        return None, _looked_again(entry.path, state, now), False
    scan.read.append(_Read(entry, readiness, state, *read, now))
    return None, None, False


def _looked_again(path: Path, state: SeenFile, now: float) -> SeenFile:
    """How a file not taken this time looked: unchanged since now if it changed since it was assessed."""
    if _signature(path) != (state.size, state.mtime_ns, state.ctime_ns):
        state.unchanged_since = now
    return state


def _take_read_files(scan: "_Scan") -> None:
    """The files read this pass, taken: the catalog asked once what it holds of their contents (duplicates,
    files taken before), then each described into ``scan.pending`` or given its outcome."""
    if not scan.read:
        return
    with scan.catalog.session() as session:
        known = queries.known_contents(session, [read.sha256 for read in scan.read])
    for read in scan.read:
        _guarded(scan, read.entry.path, lambda r=read: _take_read(scan, r, known.get(r.sha256)))
    scan.read.clear()


def _take_read(scan: "_Scan", read: _Read, known: queries.KnownContent | None) -> None:
    config, path = scan.config, read.entry.path
    outcome = ingest_file(config, scan.catalog, scan.registry, path, read.readiness, scan.survey_ids,
                          register=False, declared=scan.declared.get(catalog_name(config, path)),
                          hashed=Hashed(read.signature, read.sha256, known or queries.KnownContent()))
    if isinstance(outcome, Registration):
        scan.pending.append(outcome)
    elif outcome is None:  # not taken this time: it changed since it was read, or its checksums do not hold yet
        scan.result.waiting[_text(path)] = _looked_again(path, read.state, read.now)
    else:
        scan.result.outcomes.append(outcome)


@dataclass
class _Scan:
    """What a pass over the landing folder carries from file to file."""

    config: LandingConfig
    catalog: Catalog
    registry: InstrumentRegistry
    settle_seconds: float
    truncated_after: float
    max_files: int | None
    result: ScanResult = field(default_factory=lambda: ScanResult([], {}))
    #: the survey's id, once a file of this scan has been registered under it
    survey_ids: dict[str, object] = field(default_factory=dict)
    #: files read (hashed) this pass, taken together once the pass has looked at every entry
    read: list[_Read] = field(default_factory=list)
    #: good files described, registered together at the end of the pass
    pending: list[Registration] = field(default_factory=list)
    #: what the operations API registered and waits to land, by name
    declared: dict[str, observatory.WaitingRegistration] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        taken = len(self.result.outcomes) + len(self.read) + len(self.pending)
        return self.max_files is not None and taken >= self.max_files


def scan_landing(config: LandingConfig, catalog: Catalog, registry: InstrumentRegistry,
                 seen: dict[str, SeenFile], settle_seconds: float, truncated_after: float,
                 now: float | None = None, max_files: int | None = None, linger_seconds: float = 0.0) -> ScanResult:
    """One pass over the landing folder: take every ready file, remember the waiting ones.

    One bad file never stops the others: any failure on a file quarantines it
    with the failure as its reason, and the scan goes on. Only an unreachable
    catalog stops the scan (nothing is moved without its row, so the next tick
    simply starts again). ``linger_seconds``: complete files that only have to
    stay unchanged a moment longer (they landed less than ``settle_seconds``
    ago) are looked at again once they have, if that is at most this long
    after the pass, rather than at the next scan (a sensor's next tick is
    seconds away). The good files are registered together at the end
    (:func:`register_together`), then archived.
    """
    now = time.time() if now is None else now
    scan = _Scan(config, catalog, registry, settle_seconds, truncated_after, max_files)
    scan.declared = _registrations_waiting(config, catalog)
    settling: list[LandingEntry] = []
    for entry in candidate_files(config.landing_dir):
        key = _text(entry.path)
        if scan.full:
            if key in seen:  # not looked at this time: keep what we knew
                scan.result.waiting[key] = seen[key]
            continue
        if _take_into(scan, entry, seen.get(key), now):
            settling.append(entry)
    if settling and linger_seconds > 0:
        _look_again(scan, settling, linger_seconds)
    _take_read_files(scan)
    _register_pending(scan)
    _settle_declared(scan)
    return scan.result


def _registrations_waiting(config: LandingConfig, catalog: Catalog) -> dict[str, observatory.WaitingRegistration]:
    """The files the operations API registered that have not landed, by name; those registered more than
    ``missing_after_seconds`` ago are marked missing first (they still wait: a late file is taken)."""
    with catalog.session() as session:
        observatory.mark_missing_registrations(session, timedelta(seconds=config.missing_after_seconds))
        return observatory.waiting_registrations(session)


def _settle_declared(scan: _Scan) -> None:
    """The registrations whose files this scan took: arrived, or mismatched (the file was quarantined for not
    being what was declared)."""
    landed = []
    for outcome in scan.result.outcomes:
        declared = scan.declared.get(catalog_name(scan.config, Path(outcome.path)))
        if declared is None or not outcome.raw_file_id:
            continue
        mismatch = None if outcome.sha256 == declared.sha256 else (
            outcome.reason or f"sha256 {outcome.sha256} where {declared.sha256} was declared")
        landed.append((declared.id, uuid.UUID(outcome.raw_file_id), mismatch))
    if not landed:
        return
    try:
        with scan.catalog.session() as session:
            observatory.settle_registrations(session, landed)
    except CATALOG_UNREACHABLE:
        raise
    except Exception as exc:  # the files are taken; their registrations are settled by no later scan: say so
        scan.result.errors.append(f"{len(landed)} registered files landed but their registrations could not be "
                                  f"settled: {type(exc).__name__}: {printable(str(exc))[:500]}")


def _take_into(scan: _Scan, entry: LandingEntry, seen: SeenFile | None, now: float) -> bool:
    """Take one entry into the scan's result; whether it waits only to settle."""
    key = _text(entry.path)
    scan.result.waiting.pop(key, None)
    taken = _guarded(scan, entry.path, lambda: _take(scan, entry, seen, now))
    if taken is None:
        return False
    outcome, state, settling = taken
    if state is not None:
        scan.result.waiting[key] = state
    if outcome is not None:
        scan.result.outcomes.append(outcome)
    return settling


def _guarded(scan: _Scan, path: Path, step):
    """What ``step()`` returns; None when it failed: a file that vanished is left alone, any other failure
    quarantines the file (its outcome put in the scan's result, or, when even that failed, said in its errors).
    Only an unreachable catalog stops the scan."""
    try:
        return step()
    except FileNotFoundError:
        return None  # moved away by the writer or by a concurrent scan
    except CATALOG_UNREACHABLE:
        raise
    except Exception as exc:
        outcome = _quarantine_or_note(scan.config, scan.catalog, path, exc, scan.result)
        if outcome is not None:
            scan.result.outcomes.append(outcome)
        return None


def _register_pending(scan: _Scan) -> None:
    """The described files registered together, then each archived; when they cannot be registered together
    (a concurrent scan took one, two hold the same bytes, the database refuses a row, a file vanished), each
    on its own, as a scan of that file alone would."""
    if not scan.pending:
        return
    try:
        rows = register_together(scan.config, scan.catalog, scan.pending, scan.survey_ids)
    except CATALOG_UNREACHABLE:
        raise
    except Exception as exc:  # any reason: the files taken one by one each meet it, or not, on their own
        scan.result.notes.append(f"{len(scan.pending)} files could not be registered together "
                                 f"({type(exc).__name__}: {printable(str(exc))[:500]}): taken one by one")
        rows = None
    for index, registration in enumerate(scan.pending):
        if rows is None:
            step = (lambda r=registration: ingest_file(scan.config, scan.catalog, scan.registry, r.path,
                                                       r.readiness, scan.survey_ids))
        else:
            step = (lambda r=registration, row=rows[index]: _archive(scan.config, scan.catalog, r, *row,
                                                                     scan.survey_ids))
        outcome = _guarded(scan, registration.path, step)
        if outcome is not None:
            scan.result.outcomes.append(outcome)
    scan.pending.clear()


def _look_again(scan: _Scan, settling: list[LandingEntry], linger_seconds: float) -> None:
    """The settling files once they have been quiet for ``settle_seconds``, if that is within ``linger_seconds``."""
    waiting = scan.result.waiting
    due = {_text(e.path): waiting[_text(e.path)].unchanged_since + scan.settle_seconds for e in settling}
    settling = [e for e in settling if due[_text(e.path)] - time.time() <= linger_seconds]
    if not settling:
        return
    time.sleep(max(0.0, max(due[_text(e.path)] for e in settling) - time.time()) + 0.01)
    for entry in settling:
        if scan.full:
            return
        _take_into(scan, entry, waiting[_text(entry.path)], time.time())


def _quarantine_or_note(config: LandingConfig, catalog: Catalog, path: Path, exc: Exception,
                        result: ScanResult) -> IngestOutcome | None:
    try:
        return _quarantine_after_error(config, catalog, path, exc)
    except CATALOG_UNREACHABLE:
        raise
    except Exception as second:  # e.g. the quarantine folder is not writable: leave the file, say so
        result.errors.append(f"{printable(str(path))}: {type(exc).__name__}: {printable(str(exc))}; "
                             f"quarantining it failed too ({type(second).__name__}: {printable(str(second))})")
        return None


def encode_seen(seen: dict[str, SeenFile]) -> dict:
    return {path: [s.size, s.mtime_ns, s.unchanged_since, s.ctime_ns, s.sample] for path, s in seen.items()}


def decode_seen(raw: dict | None) -> dict[str, SeenFile]:
    return {path: SeenFile(int(v[0]), int(v[1]), float(v[2]), *([int(v[3]), str(v[4])] if len(v) >= 5 else []))
            for path, v in (raw or {}).items()}


def summarize(outcomes: Iterable[IngestOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts
