"""Issue 9, defect 3: no header value (INSTRUME, FILTER, OBJECT...) can make the store write outside its root."""

import os
import shutil
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from astropy.io import fits
from dagster import instance_for_test
from sqlalchemy import select

from dagster_project.catalog.schema import (
    CalibrationMaster,
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RunStatus,
)
from dagster_project.cli.runner import process_folder
from dagster_project.simulation.night import simulate_night
from dagster_project.store import (
    RESULT_FILES,
    ProductStore,
    inside,
    quarantine_path,
    raw_archive_path,
    raw_dir,
    safe_path_component,
)
from tests.platform import make_platform

# "{out}" stands for a folder beside the store (absolute, or relative to "/" after "../"s): a test of broken
# code must not write into the system's folders
HOSTILE = [
    "../../../../{out}/x", "../" * 40 + "{out}", "/{out}", "/{out}/", "..", ".", "...", "a/b", "a\\b", "./a",
    "a/..", "~root", "-rf", ".hidden", "ünïcødé/çam", "相机", "a\x00b", "\x00", "a\nb", "\r\n", "a b", "*",
    "$(rm -rf ~)", "x" * 5000, "../" + "y" * 300, "\udcff\udcfe", " ", "\t",
]
SYSTEM = ["/etc", "/", "../../../../tmp/x", "../" * 40 + "etc", "/etc/passwd"]  # never written, only named


def _files_below(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def _assert_safe_below(root: Path, path: Path) -> None:
    assert path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
    for part in path.relative_to(root).parts:
        assert part not in (".", "..") and not part.startswith(".") and "/" not in part
        assert part.isascii() and part.isprintable() and len(part.encode()) <= 255, part


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_make_paths_inside_the_store(tmp_path, value):
    value = value.replace("{out}", str((tmp_path / "outside").relative_to("/")))
    root = tmp_path / "store"
    store = ProductStore(root)
    paths = [
        store.calibration_master_path(value, "2026-11-21", "bias", None),
        store.calibration_master_path(value, value, "flat", value),
        store.calibration_master_path("CAM", "2026-11-21", "flat", value),
        store.calibrated_path(value, value),
        store.difference_path(value, value),
        store.reference_path(value, 1),
        store.result_dir(value, 2) / "photometry.json",
        *(store.result_file(value, 2, kind) for kind in RESULT_FILES),
    ]
    for path in paths:
        _assert_safe_below(store.root, path)
        store.write_bytes(path, b"product")  # and writing there lands there
        assert path.read_bytes() == b"product"
    assert _files_below(tmp_path) == _files_below(root) | {root}  # nothing beside the store


def test_distinct_values_never_share_a_folder():
    values = HOSTILE + SYSTEM + ["a_b", "a b ", "x", "/x", "x/", "tmp_x", "etc", "unknown", "A/B", "a-b", "a.b", "a:b"]
    tokens = [safe_path_component(v, "unknown") for v in values]
    assert len(set(tokens)) == len(set(values))
    assert all(1 <= len(t) <= 100 for t in tokens)


def test_ordinary_values_are_kept_as_they_are(tmp_path):
    store = ProductStore(tmp_path)
    for value in ("CAM1", "r", "F001-r", "2026-11-21", "F001-r-20261122T010130-d59d00fc", "cam.v2", "SDSS_g"):
        assert safe_path_component(value, "unknown") == value
    assert store.calibration_master_path("SIMCAM", "2026-11-21", "flat", "r") == \
        store.root / "calib" / "SIMCAM" / "2026-11-21" / "flat_r.fits"
    assert store.reference_path("F001-r", 3) == store.root / "references" / "F001-r" / "v3.fits"
    assert safe_path_component(None, "none") == safe_path_component("", "none") == "none"
    # a changed value gets a stable hash suffix, its extension kept
    assert safe_path_component("../../tmp/x", "unknown") == safe_path_component("../../tmp/x", "unknown")
    assert safe_path_component("../../tmp/x", "unknown").startswith("tmp_x_")
    assert safe_path_component("my frame.fits", "frame").endswith(".fits")
    for value in SYSTEM:
        assert "/" not in safe_path_component(value, "unknown") and ".." not in safe_path_component(value, "unknown")
    with pytest.raises(ValueError):
        safe_path_component("x", "../bad")


def test_inside_refuses_escapes_and_links(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert inside(root, root / "a" / "b.fits") == root / "a" / "b.fits"
    assert inside(root, "a/b.fits") == root / "a" / "b.fits"
    for escape in (root / ".." / "outside" / "x", Path("/etc/passwd"), "../outside/x", root / "link" / "x", root,
                   root / "a" / ".." / ".."):
        with pytest.raises(ValueError, match="not inside"):
            inside(root, escape)
    store = ProductStore(root)
    with pytest.raises(ValueError, match="not inside"):
        store.write_bytes(root / "link" / "x.json", b"no")
    with pytest.raises(ValueError, match="not inside"):
        store.write_bytes(root / ".." / "x.json", b"no")
    assert list(outside.iterdir()) == [] and not (tmp_path / "x.json").exists()


def test_raw_and_refused_files_keep_their_names(tmp_path):
    store, quarantine = tmp_path / "store", tmp_path / "quarantine"
    assert raw_dir(store) == store / "raw"
    assert raw_archive_path(store, "2026-11-21", "a.fits", 1) == store / "raw" / "2026-11-21" / "a.fits"
    assert raw_archive_path(store, "2026-11-21", "sub/a.fits", 3) == store / "raw" / "2026-11-21" / "sub" / "a.v3.fits"
    assert raw_archive_path(store, "n", "../../x\nb/./a b\x7f", 2) == store / "raw" / "n" / "x_b" / "a b_.v2"
    with pytest.raises(ValueError, match="not inside"):
        raw_archive_path(store, "../..", "a.fits", 1)
    day = datetime(2026, 11, 22, 23, 59, tzinfo=UTC)
    first = quarantine_path(quarantine, "bad\n.fits", duplicate=False, now=day)
    assert first == quarantine / "20261122" / "bad_.fits" and first.parent.is_dir()
    first.write_bytes(b"")
    assert quarantine_path(quarantine, "bad\n.fits", duplicate=False, now=day).name == "bad_.fits.1"
    assert quarantine_path(quarantine, "a.fits", duplicate=True) == quarantine / "duplicates" / "a.fits"
    assert quarantine_path(quarantine, "..", duplicate=True) == quarantine / "duplicates" / "...1"  # ".." is taken


def test_result_files_are_in_their_build_folder(tmp_path):
    store = ProductStore(tmp_path)
    assert store.result_file("uid", 4, "manifest") == store.root / "results" / "uid" / "r4" / "manifest.json"
    assert {store.result_file("uid", 4, kind).name for kind in RESULT_FILES} == {
        "photometry.json", "candidates_near_target.json", "cutout.png", "manifest.json"}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=oct)
def test_products_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = ProductStore(tmp_path).write_bytes(tmp_path / "p" / "x.json", b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def _make_hostile(folder: Path, instrument: str, band: str) -> None:
    """Rewrite every simulated frame's INSTRUME (and the flats' and science frames' FILTER), checksums kept valid."""
    for path in sorted(folder.glob("*.fits")):
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            hdu = fits.PrimaryHDU(hdul[0].data, hdul[0].header.copy())
        hdu.header["INSTRUME"] = instrument
        if "_bias_" not in path.name:
            hdu.header["FILTER"] = band
        hdu.add_checksum()
        hdu.writeto(path, overwrite=True)


@pytest.mark.slow
def test_a_night_with_hostile_instrument_and_filter_writes_only_inside_the_store(tmp_path):
    night = tmp_path / "night"
    simulate_night(night, n_fields=1, n_epochs=2, size=640, n_bias=2, n_flats=2, transients_per_frame=2, seed=5)
    # short folders, so that INSTRUME='../../../../<target>/x' fits its catalog column (64 characters)
    store_parent, target = Path(tempfile.mkdtemp(prefix="trav")), Path(tempfile.mkdtemp(prefix="trav"))
    try:
        store_dir = store_parent / "store"
        ups = len((store_dir / "calib").parts) - 1  # enough "../" to climb from calib/ to "/"
        instrument = "../" * ups + str(target.relative_to("/")) + "/x"
        band = "/../../../r"  # flat_/../../../r.fits: out of the night's folder
        assert len(instrument) <= 64 and len(band) <= 32
        _make_hostile(night, instrument, band)
        with instance_for_test() as instance:
            platform = make_platform(tmp_path / "platform", f"sqlite:///{tmp_path / 'catalog.sqlite'}", instance,
                                     store_dir=store_dir)
            report = process_folder(night, platform.settings, wait=True, instance=instance, progress=lambda _: None)
        assert list(target.rglob("*")) == [], "wrote outside the store"
        assert list(store_parent.iterdir()) == [store_dir], "wrote beside the store"
        store_root = store_dir.resolve()
        assert not report.failed, [(r.job_name, r.partition_key) for r in report.failed]
        with platform.catalog.session() as session:
            raws = session.scalars(select(RawDataFile)).all()
            assert raws and {r.instrument for r in raws} == {instrument}  # verbatim in the catalog
            masters = session.scalars(select(CalibrationMaster)).all()
            assert sorted(m.kind.value for m in masters) == ["bias", "flat"]
            for master in masters:
                assert master.instrument == instrument
                _assert_safe_below(store_root, Path(master.path))
                assert Path(master.path).exists()
            assert {m.filter_band for m in masters if m.kind.value == "flat"} == {band}
            runs = session.scalars(select(PreprocessRun)).all()
            assert len(runs) == 2 and all(r.status is RunStatus.COMPLETED for r in runs)  # the frames calibrate
            assert all(r.master_bias_id and r.master_flat_id for r in runs)
            for run in runs:
                _assert_safe_below(store_root, Path(run.processed_fits_path))
            statuses = session.scalars(select(Observation.status)).all()
            assert statuses == [ObservationStatus.DIFFERENCED] * 2
            assert {o.filter_band for o in session.scalars(select(Observation))} == {band}
        platform.catalog.engine.dispose()
    finally:
        shutil.rmtree(target)
        shutil.rmtree(store_parent)
