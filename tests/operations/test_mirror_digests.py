"""The mirror reads a file's bytes once while the file stays as it was, and again as soon as it changes."""

import hashlib
import os
import time

from dagster_project.operations import mirror


def test_an_unchanged_file_is_hashed_once_and_a_rewritten_one_again(tmp_path, monkeypatch):
    reads = []
    monkeypatch.setattr(mirror, "sha256_of", lambda path: reads.append(path) or hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(mirror, "_DIGESTS", mirror._Digests())
    path = tmp_path / "calibrated.fits"
    path.write_bytes(b"a" * 2880)
    later = time.time() + 60
    first, second = mirror.fingerprint(path, later), mirror.fingerprint(path, later)
    assert first == second == (2880, hashlib.sha256(b"a" * 2880).hexdigest()) and len(reads) == 1
    stat = path.stat()
    path.write_bytes(b"b" * 2880)  # same size, and the old mtime put back: only the ctime tells
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert mirror.fingerprint(path, later) == (2880, hashlib.sha256(b"b" * 2880).hexdigest()) and len(reads) == 2


def test_a_file_rewritten_after_the_event_is_not_fingerprinted(tmp_path):
    path = tmp_path / "difference.fits"
    path.write_bytes(b"c" * 2880)
    assert mirror.fingerprint(path, time.time() - 3600) == (None, None)
    assert mirror.fingerprint(tmp_path / "gone.fits", time.time()) == (None, None)


def test_the_cache_keeps_its_newest_entries_only():
    digests = mirror._Digests(size=2)
    for i in range(3):
        digests.put((f"f{i}",), f"d{i}")
    assert digests.get(("f0",)) is None and digests.get(("f1",)) == "d1" and digests.get(("f2",)) == "d2"
