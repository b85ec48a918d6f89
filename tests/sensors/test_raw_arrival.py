"""Raw-arrival sensor: complete, growing, truncated, bad, duplicate and re-versioned files; restarts."""

import os
import shutil
import time

import numpy as np
import pytest
from astropy.io import fits
from dagster import SensorResult, SkipReason, instance_for_test
from sqlalchemy import select

from dagster_project.catalog.schema import Observation, RawDataFile, RawFileStatus
from dagster_project.ingest import landing as landing_module
from dagster_project.definitions import defs
from dagster_project.simulation.night import simulate_night
from tests.platform import make_platform

raw_arrival_sensor = defs.resolve_sensor_def("raw_arrival_sensor")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A tiny simulated night: 2 bias, 2 flats, 1 field x 2 epochs at 128 px."""
    out = tmp_path_factory.mktemp("night")
    simulate_night(out, n_fields=1, n_epochs=2, size=128, n_bias=2, n_flats=2, transients_per_frame=1, seed=3)
    return sorted(out.glob("*.fits"))


@pytest.fixture
def platform(tmp_path, sqlite_url):
    with instance_for_test() as instance:
        yield make_platform(tmp_path, sqlite_url, instance)


def science(night):
    return [p for p in night if "_sci_" in p.name]


def raw_rows(platform):
    with platform.catalog.session() as session:
        return session.scalars(select(RawDataFile).order_by(RawDataFile.arrival_time)).all()


def test_complete_files_are_registered_partitioned_and_requested(platform, night):
    for path in night:
        shutil.copy(path, platform.landing / path.name)
    result, cursor = platform.tick(raw_arrival_sensor)
    assert isinstance(result, SensorResult)
    keys = [r.partition_key for r in result.run_requests]
    assert len(keys) == len(science(night)) == 2
    assert all(r.run_key.startswith("calibrate:") for r in result.run_requests)
    added = result.dynamic_partitions_requests[0]
    assert sorted(added.partition_keys) == sorted(keys)
    assert list(platform.landing.iterdir()) == []  # every file taken into the archive
    rows = raw_rows(platform)
    assert {r.status for r in rows} == {RawFileStatus.ACCEPTED}
    assert all(os.path.exists(r.stored_path) for r in rows)
    with platform.catalog.session() as session:
        assert sorted(session.scalars(select(Observation.observation_id))) == sorted(keys)


def test_growing_file_waits_then_is_taken(platform, night):
    source = science(night)[0].read_bytes()
    target = platform.landing / "growing.fits"
    target.write_bytes(source[: len(source) // 2])
    result, cursor = platform.tick(raw_arrival_sensor)
    assert isinstance(result, SkipReason)
    assert platform.waiting(cursor) == [str(target)]
    assert target.exists() and raw_rows(platform) == []
    target.write_bytes(source)
    result, cursor = platform.tick(raw_arrival_sensor, cursor)
    assert len(result.run_requests) == 1
    assert platform.waiting(cursor) == []


def test_file_not_yet_settled_waits(tmp_path, sqlite_url, night):
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, sqlite_url, instance, settle_seconds=60.0)
        shutil.copy(science(night)[0], platform.landing / "fresh.fits")
        os.utime(platform.landing / "fresh.fits")
        result, cursor = platform.tick(raw_arrival_sensor)
        assert isinstance(result, SkipReason) and platform.waiting(cursor)


#: seconds an incomplete file stays unchanged before it is quarantined as truncated, in the test below
TRUNCATED_AFTER = 3.0


def test_truncated_file_is_quarantined_with_reason(tmp_path, sqlite_url, night):
    with instance_for_test() as instance:
        # long enough that the first tick (which may take a second on a loaded machine) sees it still waiting
        platform = make_platform(tmp_path, sqlite_url, instance, truncated_after_seconds=TRUNCATED_AFTER)
        _quarantined_as_truncated(platform, night)


def _quarantined_as_truncated(platform, night):
    source = science(night)[0].read_bytes()
    target = platform.landing / "cut.fits"
    target.write_bytes(source[: len(source) - 5000])
    old = time.time() - 3600
    os.utime(target, (old, old))  # an old mtime proves nothing: the ctime says when it was last written
    result, cursor = platform.tick(raw_arrival_sensor)
    assert platform.waiting(cursor) == [str(target)]
    time.sleep(TRUNCATED_AFTER + 0.1)  # unchanged for longer than truncated_after: the writer is gone
    result, _ = platform.tick(raw_arrival_sensor, cursor)
    (row,) = raw_rows(platform)
    assert row.status == RawFileStatus.QUARANTINED
    assert "truncated" in row.quarantine_reason
    assert os.path.exists(row.stored_path)
    assert "truncated" in open(row.stored_path + ".reason.txt").read()
    assert not target.exists()


def _broken_variants(good: bytes) -> dict[str, bytes]:
    header = fits.Header.fromstring(good[:2880 * 2].decode("ascii", "replace"), sep="")
    missing = fits.PrimaryHDU(np.ones((64, 64), np.int16), header=header)
    del missing.header["EXPTIME"]
    missing.header["NAXIS1"] = 64
    import io

    buffer = io.BytesIO()
    missing.writeto(buffer)
    absurd = bytearray(good)
    pos = absurd.find(b"NAXIS1  =")
    absurd[pos:pos + 80] = b"NAXIS1  =              9999999".ljust(80)
    broken = bytearray(good)
    pos = broken.find(b"END     ")
    broken[pos:pos + 8] = b"EN\x00D   "
    return {
        "notfits.fits": b"this is a text file pretending to be FITS\n" * 100,
        "absurd.fits": bytes(absurd),
        "broken.fits": bytes(broken),
        "missingkw.fits": buffer.getvalue(),
    }


def test_bad_files_are_quarantined_and_good_ones_still_taken(platform, night):
    good = science(night)[0]
    for name, payload in _broken_variants(good.read_bytes()).items():
        (platform.landing / name).write_bytes(payload)
    shutil.copy(good, platform.landing / good.name)
    result, _ = platform.tick(raw_arrival_sensor)
    assert len(result.run_requests) == 1
    rows = {r.original_name: r for r in raw_rows(platform)}
    assert rows[good.name].status == RawFileStatus.ACCEPTED
    reasons = {name: rows[name].quarantine_reason for name in rows if name != good.name}
    assert "not a FITS file" in reasons["notfits.fits"]
    assert "NAXIS1 = 9999999" in reasons["absurd.fits"]
    assert reasons["broken.fits"]
    assert "EXPTIME" in reasons["missingkw.fits"]
    assert all(rows[n].status == RawFileStatus.QUARANTINED for n in reasons)
    assert list(platform.landing.iterdir()) == []


def test_duplicate_content_is_recorded_not_processed_twice(platform, night):
    first = science(night)[0]
    shutil.copy(first, platform.landing / first.name)
    before, _ = platform.tick(raw_arrival_sensor)
    shutil.copy(first, platform.landing / "copy_of_first.fits")
    result, _ = platform.tick(raw_arrival_sensor)
    # only the first file's (not yet launched) run is asked for again, under the same run_key
    assert [r.run_key for r in result.run_requests] == [r.run_key for r in before.run_requests]
    assert not result.dynamic_partitions_requests[0].partition_keys or \
        result.dynamic_partitions_requests[0].partition_keys == before.dynamic_partitions_requests[0].partition_keys
    rows = {r.original_name: r for r in raw_rows(platform)}
    assert rows["copy_of_first.fits"].status == RawFileStatus.DUPLICATE
    assert rows["copy_of_first.fits"].duplicate_of_id == rows[first.name].id


def test_same_name_new_content_is_a_new_version(platform, night):
    first, second = science(night)
    shutil.copy(first, platform.landing / "frame.fits")
    platform.tick(raw_arrival_sensor)
    shutil.copy(second, platform.landing / "frame.fits")
    result, _ = platform.tick(raw_arrival_sensor)
    assert len(result.run_requests) == 1
    rows = sorted((r for r in raw_rows(platform) if r.original_name == "frame.fits"), key=lambda r: r.version)
    assert [r.version for r in rows] == [1, 2]
    assert rows[0].status == RawFileStatus.SUPERSEDED and rows[1].status == RawFileStatus.ACCEPTED
    assert rows[0].stored_path != rows[1].stored_path and all(os.path.exists(r.stored_path) for r in rows)


def test_restart_after_crash_between_register_and_move(platform, night, monkeypatch):
    path = platform.landing / science(night)[0].name
    shutil.copy(science(night)[0], path)
    real_transfer = landing_module._transfer

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("daemon killed")

    monkeypatch.setattr(landing_module, "_transfer", crash)
    with pytest.raises(KeyboardInterrupt):
        platform.tick(raw_arrival_sensor)
    monkeypatch.setattr(landing_module, "_transfer", real_transfer)
    assert path.exists()  # nothing lost
    # a fresh daemon: no cursor at all
    result, cursor = platform.tick(raw_arrival_sensor, None)
    (row,) = raw_rows(platform)
    assert row.status == RawFileStatus.ACCEPTED and os.path.exists(row.stored_path)
    assert not path.exists()
    assert len(result.run_requests) == 1  # the registered observation still gets its run
    # and the next tick asks for the same run_key again, which Dagster de-duplicates
    again, _ = platform.tick(raw_arrival_sensor, cursor)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]
