"""A zoo of hostile landing entries: each is quarantined with its reason, and the scan goes on.

Every test puts one bad entry beside a good frame that arrives after it (a newer
mtime): the good one must be accepted in the same scan. Files are made here,
none is checked in. Run on SQLite and PostgreSQL (``catalog`` fixture).
"""

import io
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from astropy.io import fits
from sqlalchemy import select

from dagster_project.catalog import Catalog
from dagster_project.catalog.schema import Observation, ObservationStatus, RawDataFile, RawFileStatus
from dagster_project.ingest import frames as frames_module
from dagster_project.ingest import landing as landing_module
from dagster_project.ingest.fits_structure import StructureLimits
from dagster_project.ingest.instruments import InstrumentRegistry
from dagster_project.ingest.landing import LandingConfig, printable, scan_landing
from dagster_project.simulation.night import simulate_night

SCAN_TIMEOUT = 60.0  # seconds: a scan that takes longer than this is hanging


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a tiny night: bias, flats and two science frames of one field (128 px)."""
    out = tmp_path_factory.mktemp("night")
    simulate_night(out, n_fields=1, n_epochs=2, size=128, n_bias=2, n_flats=2, transients_per_frame=1, seed=5)
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.fits"))}


def science_frames(frames) -> list[bytes]:
    return [data for name, data in frames.items() if "_sci_" in name]


class Landing:
    """A landing folder, its store and quarantine, and a catalog; ``scan()`` runs one pass (with a time-out)."""

    def __init__(self, root: Path, catalog: Catalog, keep_originals: bool = False):
        self.root = root
        self.catalog = catalog
        self.config = LandingConfig(landing_dir=root / "landing", store_dir=root / "store",
                                    quarantine_dir=root / "quarantine", survey="test",
                                    limits=StructureLimits(max_file_bytes=64 * 2**20), keep_originals=keep_originals)
        self.config.landing_dir.mkdir(parents=True)
        self.seen: dict = {}
        self._age = 0

    @property
    def dir(self) -> Path:
        return self.config.landing_dir

    def put(self, name: str | bytes, data: bytes) -> Path:
        """Write a file; each later one gets a newer mtime, so it is scanned after the earlier ones."""
        path = Path(os.fsdecode(os.path.join(os.fsencode(self.dir), os.fsencode(name))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self._age += 1
        stamp = time.time() - 1000 + self._age
        os.utime(path, (stamp, stamp))
        return path

    def scan(self, settle_seconds: float = 0.0, truncated_after: float = 30.0, linger_seconds: float = 0.0):
        box = {}

        def run():
            try:
                box["result"] = scan_landing(self.config, self.catalog, InstrumentRegistry(), self.seen,
                                             settle_seconds=settle_seconds, truncated_after=truncated_after,
                                             linger_seconds=linger_seconds)
            except Exception as exc:  # handed to the test's thread
                box["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(SCAN_TIMEOUT)
        assert not worker.is_alive(), f"the scan hangs (still running after {SCAN_TIMEOUT:.0f} s)"
        if "error" in box:
            raise box["error"]
        self.seen = box["result"].waiting
        return box["result"]

    def rows(self) -> list[RawDataFile]:
        with self.catalog.session() as session:
            return list(session.scalars(select(RawDataFile).order_by(RawDataFile.arrival_time)))

    def by_status(self, status: RawFileStatus) -> list[RawDataFile]:
        return [r for r in self.rows() if r.status == status]


@pytest.fixture
def landing(tmp_path, catalog) -> Landing:
    return Landing(tmp_path, catalog)


def with_header(data: bytes, checksum: bool = True, **cards) -> bytes:
    """The frame with header cards set (``None`` deletes one); checksums recomputed so only the change matters."""
    with fits.open(io.BytesIO(data)) as hdul:
        for key, value in cards.items():
            if value is None:
                hdul[0].header.remove(key, ignore_missing=True)
            else:
                hdul[0].header[key] = value
        out = io.BytesIO()
        hdul.writeto(out, checksum=checksum)
        return out.getvalue()


def replace_card(data: bytes, keyword: str, image: str) -> bytes:
    """Overwrite the 80-byte card of ``keyword`` with ``image`` byte for byte (astropy would refuse to write it)."""
    header_end = data.index(b"END" + b" " * 77) + 80
    for start in range(0, header_end, 80):
        if data[start:start + 8] == keyword.ljust(8).encode():
            return data[:start] + image.ljust(80).encode() + data[start + 80:]
    raise KeyError(keyword)


def assert_quarantined_then_good_accepted(landing: Landing, bad_reason: str, result) -> RawDataFile:
    (bad,) = landing.by_status(RawFileStatus.QUARANTINED)
    assert bad_reason in bad.quarantine_reason
    accepted = landing.by_status(RawFileStatus.ACCEPTED)
    assert len(accepted) == 1 and accepted[0].original_name == "good.fits"
    assert {o.status for o in result.outcomes} == {"quarantined", "accepted"}
    return bad


# --- defect 1: one file the scan cannot handle quarantines that file, and the scan goes on ------------------------

def test_malformed_header_card_is_quarantined_and_later_files_go_on(landing, frames):
    bad = replace_card(science_frames(frames)[0], "EXPTIME", "EXPTIME = 1.2.3.4")
    landing.put("bad.fits", bad)
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    row = assert_quarantined_then_good_accepted(landing, "malformed header card", result)
    assert "EXPTIME = 1.2.3.4" in row.quarantine_reason
    assert Path(row.stored_path).exists() and "EXPTIME" in Path(row.stored_path + ".reason.txt").read_text()


def test_file_name_that_is_not_utf8_is_quarantined(landing, frames):
    path = landing.put(b"bad-\xff\xfe.fits", science_frames(frames)[0])
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    row = assert_quarantined_then_good_accepted(landing, "not valid UTF-8", result)
    assert row.original_name == "bad-\\xff\\xfe.fits"  # the bytes, escaped, are the name
    assert not path.exists() and Path(row.stored_path).exists()


@pytest.mark.parametrize("keyword, width", [("INSTRUME", 64), ("FILTER", 32), ("OBJECT", 64)])
def test_header_value_longer_than_its_column_is_quarantined(landing, frames, keyword, width):
    landing.put("bad.fits", with_header(science_frames(frames)[0], **{keyword: "X" * (width + 1)}))
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    assert_quarantined_then_good_accepted(landing, f"{keyword} is {width + 1} characters long", result)


def test_infinite_header_value_is_stored_as_valid_json(landing, frames):
    landing.put("inf.fits", replace_card(with_header(science_frames(frames)[0], checksum=False, TELESCOP="x", CHECKSUM=None,
                                                     DATASUM=None), "TELESCOP", "TELESCOP= 1E400"))
    landing.scan()
    (row,) = landing.by_status(RawFileStatus.ACCEPTED)
    assert row.header["TELESCOP"] == "inf"
    with landing.catalog.engine.connect() as connection:  # the stored text parses as strict JSON
        text = connection.execute(sa.text("SELECT CAST(header AS TEXT) FROM raw_data_files")).scalar_one()
    assert "Infinity" not in text and '"inf"' in text


def test_any_unexpected_failure_on_one_file_quarantines_it(landing, frames, monkeypatch):
    real = frames_module.describe_frame

    def flaky(path, structure, registry):
        if path.name == "bad.fits":
            raise RuntimeError("a bug met in the wild")
        return real(path, structure, registry)

    monkeypatch.setattr(landing_module, "describe_frame", flaky)
    landing.put("bad.fits", science_frames(frames)[0])
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    assert_quarantined_then_good_accepted(landing, "could not be taken: RuntimeError: a bug met in the wild", result)


@pytest.mark.postgres
def test_an_unreachable_catalog_stops_the_scan_and_moves_nothing(tmp_path, postgres_url, frames):
    catalog = Catalog(postgres_url)
    catalog.migrate()
    url = sa.make_url(postgres_url)
    gone = Catalog(url.set(database=url.database + "_gone").render_as_string(hide_password=False))
    landing = Landing(tmp_path, gone)
    path = landing.put("good.fits", science_frames(frames)[0])
    with pytest.raises(sa.exc.OperationalError):
        landing.scan()
    assert path.exists()  # left for the next tick: a missing database is no fault of the file
    assert not (tmp_path / "quarantine").exists()
    catalog.engine.dispose()


# --- defect 2 and 4: only regular files are taken; nothing outside the landing folder is read ---------------------

def test_link_to_dev_zero_is_quarantined_without_being_read(landing, frames):
    os.symlink("/dev/zero", landing.dir / "zero.fits")
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    assert_quarantined_then_good_accepted(landing, "symbolic link to '/dev/zero'", result)
    assert not os.path.lexists(landing.dir / "zero.fits")


def test_fifo_does_not_block_the_scan(landing, frames):
    os.mkfifo(landing.dir / "pipe.fits")
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    assert_quarantined_then_good_accepted(landing, "named pipe (FIFO): only regular files are taken", result)


def test_link_to_a_system_file_is_never_copied_in_copy_mode(tmp_path, catalog, frames):
    landing = Landing(tmp_path, catalog, keep_originals=True)
    os.symlink("/etc/passwd", landing.dir / "passwd.fits")
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    assert_quarantined_then_good_accepted(landing, "links are never followed", result)
    secret = Path("/etc/passwd").read_bytes()
    for path in (tmp_path / "quarantine").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path.read_bytes() != secret
    assert os.path.islink(landing.dir / "passwd.fits")  # copy mode leaves the astronomer's folder alone
    again = landing.scan()  # and a second pass records it only once
    assert [o.status for o in again.outcomes if o.path.endswith("passwd.fits")] == ["known"]
    assert len(landing.by_status(RawFileStatus.QUARANTINED)) == 1


def test_link_to_a_valid_frame_outside_is_not_accepted(landing, frames, tmp_path):
    outside = tmp_path / "elsewhere" / "frame.fits"
    outside.parent.mkdir()
    outside.write_bytes(science_frames(frames)[0])
    os.symlink(outside, landing.dir / "frame.fits")
    linked_folder = tmp_path / "elsewhere"
    os.symlink(linked_folder, landing.dir / "night2")
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    quarantined = landing.by_status(RawFileStatus.QUARANTINED)
    assert sorted(r.original_name for r in quarantined) == ["frame.fits", "night2"]
    assert all("links are never followed" in r.quarantine_reason for r in quarantined)
    assert [r.original_name for r in landing.by_status(RawFileStatus.ACCEPTED)] == ["good.fits"]
    assert outside.read_bytes() == science_frames(frames)[0]  # untouched
    assert len(result.outcomes) == 3


# --- defect 5: completeness does not rest on size alone -----------------------------------------------------------

def test_preallocated_file_waits_until_it_is_filled(landing, frames):
    data = science_frames(frames)[0]
    header_end = data.index(b"END" + b" " * 77) // 2880 * 2880 + 2880
    path = landing.put("prealloc.fits", data[:header_end] + bytes(len(data) - header_end))  # full size, zeros
    result = landing.scan()
    assert result.outcomes == [] and str(path) in result.waiting
    with path.open("r+b") as fh:  # the writer fills it
        fh.seek(header_end)
        fh.write(data[header_end:])
    result = landing.scan()
    (row,) = landing.by_status(RawFileStatus.ACCEPTED)
    assert landing_module.sha256_of(Path(row.stored_path)) == row.sha256 == landing_module.hashlib.sha256(
        data).hexdigest()


def timed_scan(landing: Landing, **kwargs):
    started = time.monotonic()
    result = landing.scan(**kwargs)
    return result, time.monotonic() - started


def test_a_file_that_landed_just_before_a_scan_is_taken_by_it_once_settled(landing, frames):
    first, second = science_frames(frames)[:2]
    landing.put("just-landed.fits", first)  # its ctime is now: it has to stay quiet for the settle time
    result, seconds = timed_scan(landing, settle_seconds=0.6, linger_seconds=2.0)
    assert [o.status for o in result.outcomes] == ["accepted"] and result.waiting == {}
    assert 0.6 <= seconds < 2.0
    landing.put("next.fits", second)  # without lingering: left for the next scan
    result, seconds = timed_scan(landing, settle_seconds=0.6)
    assert result.outcomes == [] and len(result.waiting) == 1 and seconds < 0.6


def test_the_scan_does_not_linger_for_files_that_settle_later_or_change_meanwhile(landing, frames):
    first, second = science_frames(frames)[:2]
    landing.put("slow-to-settle.fits", first)
    result, seconds = timed_scan(landing, settle_seconds=30.0, linger_seconds=2.0)
    assert result.outcomes == [] and len(result.waiting) == 1 and seconds < 2.0
    path = landing.put("rewritten.fits", second)
    rewrite = threading.Timer(0.3, lambda: path.write_bytes(second))  # the writer is not done with it
    rewrite.start()
    result, _ = timed_scan(landing, settle_seconds=0.8, linger_seconds=2.0)
    rewrite.join()
    assert str(path) in result.waiting and all(o.path != str(path) for o in result.outcomes)
    assert [r.original_name for r in landing.by_status(RawFileStatus.ACCEPTED)] == ["slow-to-settle.fits"]


def test_content_sample_settles_even_when_size_and_mtime_do_not_move(landing, frames):
    data = science_frames(frames)[0]
    path = landing.put("mmap.fits", data)
    stat = path.stat()
    first = landing.scan(settle_seconds=3600)  # first sight: not quiet long enough
    assert first.outcomes == []
    with path.open("r+b") as fh:  # an mmap-style writer: bytes change, size and mtime are put back
        fh.seek(len(data) // 2)
        fh.write(b"\x01" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = landing.seen[str(path)]
    landing.scan(settle_seconds=3600)
    after = landing.seen[str(path)]
    assert after.sample != before.sample and after.unchanged_since > before.unchanged_since


def test_content_that_changes_during_the_move_is_requeued(landing, frames, monkeypatch):
    data = with_header(science_frames(frames)[0], checksum=False, CHECKSUM=None, DATASUM=None)
    hole = len(data) // 2
    path = landing.put("late-writer.fits", data[:hole] + b"\x07" * 16 + data[hole + 16:])
    real = landing_module._transfer

    def writer_still_at_work(config, source, target):
        real(config, source, target)
        if target.parent.parent.name == "raw":
            with target.open("r+b") as fh:  # the writer's last bytes land in the archived inode
                fh.seek(hole)
                fh.write(data[hole:hole + 16])

    monkeypatch.setattr(landing_module, "_transfer", writer_still_at_work)
    result = landing.scan()
    assert [o.status for o in result.outcomes] == ["quarantined"]
    (row,) = landing.rows()
    assert row.status == RawFileStatus.QUARANTINED and "content changed while it was being taken" in row.quarantine_reason
    assert row.stored_path is None and path.exists()  # back in the landing folder
    with landing.catalog.session() as session:
        assert session.scalar(select(Observation.status)) == ObservationStatus.ARCHIVED
    monkeypatch.setattr(landing_module, "_transfer", real)
    landing.scan()  # complete now: taken again, as the next version of its name
    accepted = landing.by_status(RawFileStatus.ACCEPTED)
    assert [(r.original_name, r.version) for r in accepted] == [("late-writer.fits", 2)]
    assert landing_module.sha256_of(Path(accepted[0].stored_path)) == accepted[0].sha256


# --- defect 6: declared FITS checksums are verified -----------------------------------------------------------------

def test_frame_whose_datasum_does_not_match_is_quarantined(landing, frames):
    data = bytearray(science_frames(frames)[0])
    data[-2880 * 2] ^= 0x01  # one flipped bit in the pixels; the header still declares the old sums
    landing.put("bad.fits", bytes(data))
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan(truncated_after=0.0)
    assert_quarantined_then_good_accepted(landing, "DATASUM does not match the data", result)


def test_checksum_mismatch_of_a_recent_file_waits_then_quarantines(landing, frames):
    data = bytearray(science_frames(frames)[0])
    data[-2880 * 2] ^= 0x01
    path = landing.put("bad.fits", bytes(data))
    first = landing.scan(truncated_after=0.5)  # may still be being written: look again later
    assert first.outcomes == [] and str(path) in first.waiting
    time.sleep(0.6)  # unchanged past truncated_after: corrupted, not in progress
    second = landing.scan(truncated_after=0.5)
    assert [o.status for o in second.outcomes] == ["quarantined"] and "DATASUM" in second.outcomes[0].reason


# --- defect 9, the smaller ones -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["frame.fits.gz", "frame.fits.fz"])
def test_compressed_fits_is_recorded_with_its_reason(landing, frames, name):
    landing.put(name, b"compressed bytes")
    landing.put("good.fits", science_frames(frames)[1])
    result = landing.scan()
    assert_quarantined_then_good_accepted(landing, "compressed FITS is not taken", result)


def test_same_named_files_in_two_subfolders_are_two_files(landing, frames):
    one, two = science_frames(frames)
    landing.put("north/frame.fits", one)
    landing.put("south/frame.fits", two)
    landing.scan()
    rows = landing.by_status(RawFileStatus.ACCEPTED)
    assert sorted((r.original_name, r.version) for r in rows) == [("north/frame.fits", 1), ("south/frame.fits", 1)]
    assert len({r.stored_path for r in rows}) == 2 and all(Path(r.stored_path).exists() for r in rows)
    assert all(Path(r.stored_path).resolve().is_relative_to(landing.config.store_dir.resolve()) for r in rows)


def test_crash_after_the_quarantine_row_keeps_the_reason(landing, frames, monkeypatch):
    path = landing.put("bad.fits", replace_card(science_frames(frames)[0], "EXPTIME", "EXPTIME = 1.2.3.4"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the row and the move")

    monkeypatch.setattr(landing_module, "_transfer", killed)
    with pytest.raises(KeyboardInterrupt):
        scan_landing(landing.config, landing.catalog, InstrumentRegistry(), {}, settle_seconds=0.0,
                     truncated_after=30.0)
    (row,) = landing.rows()
    assert path.exists() and "malformed header card" in Path(row.stored_path + ".reason.txt").read_text()
    monkeypatch.undo()
    result = landing.scan()  # the restarted scan finishes the move
    assert [o.status for o in result.outcomes] == ["recovered"]
    assert Path(row.stored_path).exists() and not path.exists() and len(landing.rows()) == 1


def test_two_scans_taking_identical_content_at_once_do_not_crash(tmp_path, catalog, frames, monkeypatch):
    first, second = Landing(tmp_path / "a", catalog), Landing(tmp_path / "b", catalog)
    data = science_frames(frames)[0]
    first.put("frame.fits", data)
    second.put("copy.fits", data)
    both_checked = threading.Barrier(2, timeout=30)
    real = frames_module.describe_frame

    def in_step(path, structure, registry):  # both have looked the content up before either registers it
        try:
            both_checked.wait()
        except threading.BrokenBarrierError:
            pass  # the retry of the loser: alone now
        return real(path, structure, registry)

    monkeypatch.setattr(landing_module, "describe_frame", in_step)
    results = {}
    threads = [threading.Thread(target=lambda l=l: results.__setitem__(l.root.name, l.scan())) for l in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SCAN_TIMEOUT)
    assert sorted(o.status for r in results.values() for o in r.outcomes) == ["accepted", "duplicate"]
    statuses = sorted(r.status.value for r in first.rows())
    assert statuses == ["accepted", "duplicate"]


# --- a scan registers the files it took together ---------------------------------------------------------------------

def _frames_of_a_night(tmp_path, n: int) -> list[bytes]:
    out = tmp_path / "many"
    simulate_night(out, n_fields=n, n_epochs=1, size=64, n_bias=0, n_flats=0, transients_per_frame=0, seed=9)
    return [p.read_bytes() for p in sorted(out.glob("*_sci_*.fits"))]


def test_a_scan_registers_the_files_it_took_in_one_transaction(landing, tmp_path):
    writes = []  # per committed transaction: whether it inserted raw files
    state = {"inserting": False}

    def on_statement(conn, cursor, statement, *args):
        state["inserting"] |= statement.lstrip().upper().startswith("INSERT INTO RAW_DATA_FILES")

    def on_commit(conn):
        writes.append(state["inserting"])
        state["inserting"] = False

    sa.event.listen(landing.catalog.engine, "before_cursor_execute", on_statement)
    sa.event.listen(landing.catalog.engine, "commit", on_commit)
    for i, data in enumerate(_frames_of_a_night(tmp_path, 5)):
        landing.put(f"f{i}.fits", data)
    result = landing.scan()
    assert [o.status for o in result.outcomes] == ["accepted"] * 5 and result.notes == []
    assert writes.count(True) == 1
    with landing.catalog.session() as session:
        observations = session.scalars(select(Observation)).all()
        assert len(observations) == 5 and all(o.raw_file is not None for o in observations)
    assert all(Path(r.stored_path).exists() for r in landing.rows()) and not list(landing.dir.iterdir())


def test_a_scan_asks_about_its_files_contents_and_names_once_not_once_a_file(landing, tmp_path):
    """Five files: one query for what the catalog holds of their contents (duplicates, files taken before) and one
    for their names' arrivals, however many files; a file met again after that is still a duplicate."""
    selects = []

    def on_statement(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT") and "FROM raw_data_files" in statement:
            selects.append(statement)

    frames = _frames_of_a_night(tmp_path, 5)
    for i, data in enumerate(frames):
        landing.put(f"f{i}.fits", data)
    sa.event.listen(landing.catalog.engine, "before_cursor_execute", on_statement)
    result = landing.scan()
    sa.event.remove(landing.catalog.engine, "before_cursor_execute", on_statement)
    assert [o.status for o in result.outcomes] == ["accepted"] * 5
    assert len([q for q in selects if "sha256 IN" in q]) == 2 and len(selects) <= 3, selects
    landing.put("again.fits", frames[2])
    [again] = landing.scan().outcomes
    assert again.status == "duplicate" and "f2.fits" in again.reason


def test_identical_files_in_one_scan_are_registered_one_by_one(landing, frames):
    """Registered together they break the unique content index: each is then taken alone, as a scan of it would."""
    data = science_frames(frames)[0]
    landing.put("frame.fits", data)
    landing.put("copy.fits", data)
    landing.put("other.fits", science_frames(frames)[1])
    result = landing.scan()
    assert sorted(o.status for o in result.outcomes) == ["accepted", "accepted", "duplicate"]
    duplicate = next(o for o in result.outcomes if o.status == "duplicate")
    assert duplicate.path.endswith("copy.fits") and "frame.fits" in duplicate.reason
    [note] = result.notes  # the sensor logs it: why this tick took its files one by one
    assert "3 files could not be registered together (IntegrityError" in note


def test_a_scan_killed_while_archiving_its_registered_files_is_finished_by_the_next(landing, tmp_path, monkeypatch):
    for i, data in enumerate(_frames_of_a_night(tmp_path, 3)):
        landing.put(f"f{i}.fits", data)
    real, moved = landing_module._transfer, []

    def killed_after_one(config, source, target):
        if moved:
            raise KeyboardInterrupt("killed between the registration and the second move")
        real(config, source, target)
        moved.append(source)

    monkeypatch.setattr(landing_module, "_transfer", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        scan_landing(landing.config, landing.catalog, InstrumentRegistry(), {}, settle_seconds=0.0,
                     truncated_after=30.0)
    assert len(landing.by_status(RawFileStatus.ACCEPTED)) == 3 and len(list(landing.dir.iterdir())) == 2
    monkeypatch.undo()
    result = landing.scan()
    assert [o.status for o in result.outcomes] == ["recovered", "recovered"]
    assert all(Path(r.stored_path).exists() for r in landing.rows()) and not list(landing.dir.iterdir())


def test_names_with_newlines_are_escaped_in_log_lines(landing, frames):
    landing.put("evil\nname.fits", science_frames(frames)[0])
    result = landing.scan()
    (row,) = landing.by_status(RawFileStatus.ACCEPTED)
    assert row.original_name == "evil\nname.fits"  # the catalog keeps the name verbatim
    assert "\n" not in printable(result.outcomes[0].path) and "evil\\nname.fits" in printable(row.original_name)
    assert "\n" not in Path(row.stored_path).name  # and the archive's file name has no control character


def test_printable_escapes_control_and_undecodable_characters():
    assert printable("a\nb\tc\x1b[31m") == "a\\nb\\tc\\x1b[31m"
    assert printable(os.fsdecode(b"x\xff.fits")) == "x\\xff.fits"
    assert printable("Ω-ok.fits") == "Ω-ok.fits"


def test_a_copy_killed_half_way_leaves_no_archived_file_and_the_next_scan_copies_it_whole(tmp_path, catalog, frames,
                                                                                          monkeypatch):
    """Copy mode (`process FOLDER`): a half-written archive copy under its final name would pass for the file
    taken, and the file would never be taken again."""
    landing = Landing(tmp_path, catalog, keep_originals=True)
    path = landing.put("frame.fits", science_frames(frames)[0])

    def killed_half_way(source, target, **kwargs):
        Path(target).write_bytes(Path(source).read_bytes()[:5000])
        raise KeyboardInterrupt("killed inside the copy")

    monkeypatch.setattr(landing_module.shutil, "copy2", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        scan_landing(landing.config, landing.catalog, InstrumentRegistry(), {}, settle_seconds=0.0,
                     truncated_after=30.0)
    (row,) = landing.rows()
    assert not Path(row.stored_path).exists()
    monkeypatch.undo()
    result = landing.scan()
    assert [o.status for o in result.outcomes] == ["recovered"]
    assert Path(row.stored_path).read_bytes() == path.read_bytes() and path.exists()
