"""Archive frames that predate today's keyword conventions ingest through an instrument profile (issue 9).

The frames are the simulator's, rewritten as an old camera would have written them:
``DATE-OBS = 'DD/MM/YY'`` with the time of day in ``UT``, ``ITIME`` instead of ``EXPTIME``,
sexagesimal ``RA``/``DEC`` (the pointing), ``FILTER`` as a wheel position, no WCS,
checksums recomputed, and nights without calibration frames. Nothing is checked in.

* the header is read as the profile says (time, exposure, band, pointing), and what a
  profile cannot read is quarantined with its reason; a bad profile is a clear error;
* a frame without a WCS is solved against an earlier calibrated frame of its field (its
  WCS compared with the simulator's true one), or blocked with ``no WCS: ...`` when the
  field has none;
* a night without calibration frames borrows another night's masters (earlier first,
  else later), and says so in the catalog and the asset metadata; without any masters
  it is blocked, or processed as uncalibrated only when the user chose so.
"""

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from dagster import AssetKey, AssetRecordsFilter, instance_for_test
from sqlalchemy import select

from dagster_project.calibration.masters import masters_for
from dagster_project.catalog import Catalog
from dagster_project.catalog.schema import (
    Observation,
    ObservationStatus,
    PreprocessRun,
    RawDataFile,
    RawFileStatus,
    RunStatus,
)
from dagster_project.ingest.fits_structure import StructureLimits
from dagster_project.ingest.instruments import InstrumentRegistry, ProfileError
from dagster_project.ingest.landing import LandingConfig, scan_landing
from dagster_project.cli.runner import process_folder
from dagster_project.settings import Settings
from dagster_project.simulation.night import simulate_night
from dagster_project.store import ProductStore
from tests.platform import make_platform, retry_policy

INSTRUMENT = "SIMCAM"  # the simulator's INSTRUME
PROFILE = {
    "keywords": {"exptime": ["ITIME", "EXPTIME"], "time_obs": "UT"},
    "date_format": "%d/%m/%y",
    "ra_dec_format": "sexagesimal",
    "filter_wheel": {1: "g", 2: "r", 3: "i"},
    "pixel_scale_arcsec": 0.5,
}
WCS_CARDS = ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2",
             "CD1_1", "CD1_2", "CD2_1", "CD2_2", "RADESYS")
WHEEL = {"g": 1, "r": 2, "i": 3}
SIZE = 512  # of the frames run through the pipeline
NO_RETRIES = retry_policy(max_attempts=1)  # a failure is the test's, not something to wait out


def write_profiles(path: Path, profiles: dict) -> Path:
    path.write_text(yaml.safe_dump({"instruments": profiles}))
    return path


def registry(tmp_path: Path, entry: dict | None = None) -> InstrumentRegistry:
    return InstrumentRegistry.from_yaml(write_profiles(tmp_path / "instruments.yaml", {INSTRUMENT: entry or PROFILE}))


def legacy(src: Path, dst: Path, *, shift_days: float = 0.0, keep_wcs: bool = False, pointing: bool = True,
           wheel_position=None) -> Path:
    """``src`` rewritten with an old camera's conventions (see the module notes), observed ``shift_days`` later."""
    with fits.open(src, do_not_scale_image_data=True) as hdul:
        header = hdul[0].header
        moment = Time(header["DATE-OBS"], scale="utc").to_datetime() + timedelta(days=shift_days)
        header["DATE-OBS"] = moment.strftime("%d/%m/%y")
        header["UT"] = moment.strftime("%H:%M:%S.%f")[:11]
        del header["MJD-OBS"]
        header.rename_keyword("EXPTIME", "ITIME")
        header["FILTER"] = WHEEL[header["FILTER"].strip()] if wheel_position is None else wheel_position
        if header["IMAGETYP"].strip() == "object":
            centre = SkyCoord(header["CRVAL1"], header["CRVAL2"], unit="deg")  # where the telescope pointed
            if pointing:
                header["RA"] = centre.ra.to_string(unit=u.hour, sep=":", precision=2, pad=True)
                header["DEC"] = centre.dec.to_string(unit=u.deg, sep=":", precision=1, alwayssign=True, pad=True)
            if not keep_wcs:
                for key in WCS_CARDS:
                    del header[key]
        hdul[0].add_checksum()
        dst.parent.mkdir(parents=True, exist_ok=True)
        hdul.writeto(dst, overwrite=True)
    return dst


def true_wcs(path: Path, conditions) -> WCS:
    """The simulator's true WCS of a frame: its header WCS without the deliberate error (a CRPIX shift)."""
    wcs = WCS(fits.getheader(path))
    wcs.wcs.crpix = wcs.wcs.crpix - np.asarray(conditions.wcs_error_px)
    return wcs


def max_error_px(wcs: WCS, truth: WCS, shape) -> float:
    """Largest distance (px of ``truth``) between where the two put the sky over a grid of the frame."""
    y, x = np.mgrid[0:shape[0]:16, 0:shape[1]:16]
    ra, dec = wcs.pixel_to_world_values(x.ravel(), y.ravel())
    tx, ty = truth.world_to_pixel_values(ra, dec)
    return float(np.max(np.hypot(tx - x.ravel(), ty - y.ravel())))


# --- profiles ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, fragment", [
    ({"date_format": "%Y"}, "date_format: '%Y' does not give the day, month and year"),
    ({"date_format": 5}, "date_format: must be a strptime format"),
    ({"ra_dec_format": "hms"}, "ra_dec_format: must be one of degrees, sexagesimal, not 'hms'"),
    ({"filter_wheel": {1: ""}}, "filter_wheel.1: the band must be a name"),
    ({"filter_wheel": ["g", "r"]}, "filter_wheel: must be a non-empty mapping of wheel position to band"),
    ({"filter_wheel": {1: "g", "1": "r"}}, "filter_wheel.1: position given twice"),
    ({"pixel_scale_arcsec": -0.5}, "pixel_scale_arcsec: must be between"),
    ({"pixel_scale_arcsec": "fine"}, "pixel_scale_arcsec: must be a number, not 'fine'"),
    ({"rotation_deg": "north"}, "rotation_deg: must be a number"),
    ({"east": "up"}, "east: must be one of left, right, not 'up'"),
    ({"keywords": {"exposure": "ITIME"}}, "keywords.exposure: unknown canonical name"),
    ({"keywords": {"exptime": []}}, "keywords.exptime: must be a header keyword or a non-empty list"),
    ({"keywords": {"exptime": 7}}, "keywords.exptime: must be a header keyword"),
    ({"pixelscale": 0.5}, "pixelscale: unknown option"),
    ({"frame_types": {"light": ["object"]}}, "frame_types.light: unknown frame type"),
    (["not", "a", "mapping"], "the profile must be a mapping of options"),
])
def test_a_bad_profile_is_an_error_naming_the_instrument_and_key(tmp_path, entry, fragment):
    path = write_profiles(tmp_path / "instruments.yaml", {"OLDCAM": entry})
    with pytest.raises(ProfileError) as error:
        InstrumentRegistry.from_yaml(path)
    assert str(error.value).startswith(f"{path}: instrument OLDCAM: "), error.value
    assert fragment in str(error.value)


def test_an_unreadable_instruments_file_is_an_error_naming_it(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("instruments: {OLDCAM: [unclosed\n")
    with pytest.raises(ProfileError, match=f"{broken}: not valid YAML"):
        InstrumentRegistry.from_yaml(broken)
    with pytest.raises(ProfileError, match="cannot read the instruments file"):
        InstrumentRegistry.from_yaml(tmp_path / "missing.yaml")
    listed = write_profiles(tmp_path / "list.yaml", ["OLDCAM"])
    with pytest.raises(ProfileError, match="'instruments' must be a mapping"):
        InstrumentRegistry.from_yaml(listed)


def test_a_bad_instruments_file_stops_every_command_with_one_line(tmp_path, monkeypatch, capsys):
    from dagster_project.cli.main import main

    path = write_profiles(tmp_path / "instruments.yaml", {"OLDCAM": {"east": "up"}})
    monkeypatch.setenv("ASTRO_INSTRUMENTS_FILE", str(path))
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match=f"ASTRO_INSTRUMENTS_FILE: {path}: instrument OLDCAM: east: "):
        Settings.from_env()
    assert main(["status"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: ASTRO_INSTRUMENTS_FILE: {path}: instrument OLDCAM: east: must be one of left, right, not 'up'"]


def test_the_uncalibrated_choice_is_explicit(monkeypatch):
    monkeypatch.delenv("ASTRO_ALLOW_UNCALIBRATED", raising=False)
    assert Settings.from_env().allow_uncalibrated is False
    monkeypatch.setenv("ASTRO_ALLOW_UNCALIBRATED", "1")
    assert Settings.from_env().allow_uncalibrated is True
    monkeypatch.setenv("ASTRO_ALLOW_UNCALIBRATED", "perhaps")
    with pytest.raises(ValueError, match="ASTRO_ALLOW_UNCALIBRATED must be 1 or 0"):
        Settings.from_env()


# --- ingest through the landing scan ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_night(tmp_path_factory):
    """Bias, flats and two science frames of one field, 128 px."""
    out = tmp_path_factory.mktemp("small")
    return simulate_night(out, n_fields=1, n_epochs=2, size=128, n_bias=2, n_flats=2, transients_per_frame=0, seed=5)


class Landing:
    def __init__(self, root: Path, catalog: Catalog, registry: InstrumentRegistry):
        self.catalog, self.registry = catalog, registry
        self.config = LandingConfig(landing_dir=root / "landing", store_dir=root / "store",
                                    quarantine_dir=root / "quarantine", survey="test",
                                    limits=StructureLimits(max_file_bytes=64 * 2**20))
        self.config.landing_dir.mkdir(parents=True)

    def scan(self) -> dict[str, RawDataFile]:
        result = scan_landing(self.config, self.catalog, self.registry, {}, settle_seconds=0.0, truncated_after=30.0)
        assert not result.errors, result.errors
        with self.catalog.session() as session:
            rows = session.scalars(select(RawDataFile)).all()
            for row in rows:
                _ = row.observation  # loaded while the session is open
            return {r.original_name: r for r in rows}


def test_legacy_frames_ingest_with_time_exposure_band_and_pointing(tmp_path, catalog, small_night):
    landing = Landing(tmp_path, catalog, registry(tmp_path))
    originals = {p.name: p for kind in ("bias", "flat", "sci") for p in small_night.paths[kind]}
    for name, path in originals.items():
        legacy(path, landing.config.landing_dir / name, shift_days=3)
    rows = landing.scan()
    assert {n: r.status for n, r in rows.items()} == {n: RawFileStatus.ACCEPTED for n in originals}, \
        {n: r.quarantine_reason for n, r in rows.items()}
    for name, path in originals.items():
        header = fits.getheader(path)
        row = rows[name]
        expected = Time(header["DATE-OBS"], scale="utc").to_datetime() + timedelta(days=3)
        assert abs((row.observation_time.replace(tzinfo=None) - expected).total_seconds()) < 0.01
        assert row.night == "2026-11-24"
        assert row.filter_band == "r"
        assert row.header["FILTER"] == 2 and row.header["profile"]["standard"]["FILTER"] == "r"
        if row.frame_type.value == "flat":
            assert row.header["profile"]["standard"]["EXPTIME"] == header["EXPTIME"]
        if row.frame_type.value != "science":
            continue
        observation = row.observation
        assert observation.exposure_time == header["EXPTIME"] == 60.0
        assert observation.filter_band == "r"
        pointing = SkyCoord(observation.ra, observation.dec, unit="deg")
        assert pointing.separation(SkyCoord(header["CRVAL1"], header["CRVAL2"], unit="deg")).arcsec < 1.0
        assert observation.pixel_scale == 0.5
        assert row.header["profile"]["wcs"] == "nominal"
        nominal = row.header["profile"]["nominal_wcs"]
        assert (nominal["CRVAL1"], nominal["CRVAL2"]) == pytest.approx((observation.ra, observation.dec))
        assert (nominal["CRPIX1"], nominal["CRPIX2"]) == (64.5, 64.5)  # centre of the 128 px data section


def test_what_a_profile_cannot_read_is_quarantined_with_its_reason(tmp_path, catalog, small_night):
    first, second = small_night.paths["sci"]
    landing = Landing(tmp_path, catalog, registry(tmp_path))
    legacy(first, landing.config.landing_dir / "no_pointing.fits", pointing=False)
    legacy(second, landing.config.landing_dir / "wheel_7.fits", wheel_position=7)
    rows = landing.scan()
    assert rows["no_pointing.fits"].status == RawFileStatus.QUARANTINED
    assert "no celestial WCS" in rows["no_pointing.fits"].quarantine_reason
    assert "no pointing (RA and DEC)" in rows["no_pointing.fits"].quarantine_reason
    assert rows["wheel_7.fits"].status == RawFileStatus.QUARANTINED
    assert rows["wheel_7.fits"].quarantine_reason == \
        "FILTER = 7 is not a position of the SIMCAM filter wheel (positions 1, 2, 3)"


@pytest.mark.parametrize("entry, reason", [
    (None, "missing required keyword(s) EXPTIME for a science frame"),
    ({"keywords": {"exptime": "ITIME"}}, "DATE-OBS = '22/11/26' is not an ISO time"),
    ({"keywords": {"exptime": "ITIME"}, "date_format": "%d/%m/%y"},
     "DATE-OBS = '22/11/26' gives no time of day and TIME-OBS is missing"),
])
def test_without_the_profile_options_legacy_frames_are_quarantined(tmp_path, catalog, small_night, entry, reason):
    landing = Landing(tmp_path, catalog, registry(tmp_path, entry) if entry else InstrumentRegistry())
    legacy(small_night.paths["sci"][0], landing.config.landing_dir / "old.fits")
    row = landing.scan()["old.fits"]
    assert row.status == RawFileStatus.QUARANTINED
    assert row.quarantine_reason == reason


def test_a_sexagesimal_pointing_needs_the_profile_to_say_so(tmp_path, catalog, small_night):
    landing = Landing(tmp_path, catalog, registry(tmp_path, {**PROFILE, "ra_dec_format": "degrees"}))
    legacy(small_night.paths["sci"][0], landing.config.landing_dir / "old.fits")
    row = landing.scan()["old.fits"]
    assert row.status == RawFileStatus.QUARANTINED
    assert "is not a pointing in degrees" in row.quarantine_reason
    assert "ra_dec_format: sexagesimal" in row.quarantine_reason


# --- masters of another night ------------------------------------------------------------------------------------------

def _calibration_night(out: Path, night: str, seed: int) -> list[Path]:
    simulated = simulate_night(out / night, n_fields=1, n_epochs=1, size=64, n_bias=2, n_flats=2,
                               transients_per_frame=0, seed=seed, night=night)
    return simulated.paths["bias"] + simulated.paths["flat"]


def test_a_night_without_calibrations_borrows_the_nearest_earlier_night_else_a_later_one(tmp_path, catalog):
    landing = Landing(tmp_path, catalog, InstrumentRegistry())
    for night, seed in (("2026-11-19", 1), ("2026-11-25", 2), ("2026-11-28", 3)):
        for path in _calibration_night(tmp_path / "sim", night, seed):
            shutil.copy(path, landing.config.landing_dir / path.name)
    assert all(r.status == RawFileStatus.ACCEPTED for r in landing.scan().values())
    store = ProductStore(tmp_path / "store")
    with catalog.session() as session:
        same = masters_for(session, store, instrument=INSTRUMENT, night="2026-11-25", band="r")
        between = masters_for(session, store, instrument=INSTRUMENT, night="2026-11-22", band="r")
        before_all = masters_for(session, store, instrument=INSTRUMENT, night="2026-11-10", band="r")
        other_band = masters_for(session, store, instrument=INSTRUMENT, night="2026-11-22", band="g")
    assert (same.bias.night, same.flat.night, same.notes) == ("2026-11-25", "2026-11-25", ())
    assert (between.bias.night, between.flat.night) == ("2026-11-19", "2026-11-19")
    assert between.notes == ("no bias frames on 2026-11-22: using the master of 2026-11-19 (the nearest earlier "
                             "night with one)", "no flat r frames on 2026-11-22: using the master of 2026-11-19 "
                             "(the nearest earlier night with one)")
    assert (before_all.bias.night, before_all.flat.night) == ("2026-11-19", "2026-11-19")
    assert all("the nearest later night with one" in n for n in before_all.notes) and len(before_all.notes) == 2
    assert other_band.flat is None and other_band.bias.night == "2026-11-19"
    assert other_band.blocked_reason == "no master flat for this night or any other night"


# --- through the pipeline -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Night 2026-11-21 as written today: calibrations and F001's first two epochs. The archive:
    F001's third epoch and all of F002 written two nights later, in the old conventions, without WCS and
    without calibration frames that night.

    512 px: the simulated sky has about 10-20 PSF stars (S/N >= 30, isolated) per 512 px frame, too few
    for a PSF at 256 px; seed 2 gives F001 about 20 per frame."""
    root = tmp_path_factory.mktemp("archive")
    night = simulate_night(root / "sim", n_fields=2, n_epochs=3, size=SIZE, n_bias=3, n_flats=3,
                           transients_per_frame=0, seed=2)
    modern, old = root / "modern", root / "old"
    modern.mkdir()
    legacy_of = {}
    for path in night.paths["bias"] + night.paths["flat"]:
        shutil.copy(path, modern / path.name)
    f001 = [p for p in night.paths["sci"] if "_F001_" in p.name]
    for path in f001[:2]:
        shutil.copy(path, modern / path.name)
    for path in f001[2:] + [p for p in night.paths["sci"] if "_F002_" in p.name]:
        legacy_of[path.name] = legacy(path, old / path.name, shift_days=2)
    return night, modern, old


@pytest.fixture(scope="module")
def processed_archive(archive, tmp_path_factory):
    night, modern, old = archive
    root = tmp_path_factory.mktemp("platform")
    profiles = write_profiles(root / "instruments.yaml", {INSTRUMENT: PROFILE})
    with instance_for_test() as instance:
        platform = make_platform(root, f"sqlite:///{root / 'catalog.sqlite'}", instance, instruments_file=profiles)
        first = process_folder(modern, platform.settings, instance=instance, progress=lambda _: None,
                               retry_policy=NO_RETRIES)
        assert not first.failed, [(r.job_name, r.partition_key) for r in first.failed]
        second = process_folder(old, platform.settings, instance=instance, progress=lambda _: None,
                                retry_policy=NO_RETRIES)
        yield platform, second, night
        platform.catalog.engine.dispose()


def _observations(platform) -> dict[str, tuple[Observation, PreprocessRun | None]]:
    with platform.catalog.session() as session:
        rows = session.scalars(select(Observation)).all()
        return {o.raw_file.original_name: (o, o.preprocess_run) for o in rows}


def test_a_frame_without_wcs_is_solved_against_an_earlier_frame_of_its_field(processed_archive):
    platform, _, night = processed_archive
    observations = _observations(platform)
    f001 = sorted(n for n in observations if "_F001_" in n)
    name = f001[2]
    observation, run = observations[name]
    assert run.status == RunStatus.COMPLETED, (observation.status_reason, run.error_message)
    assert observation.status == ObservationStatus.DIFFERENCED, observation.status_reason
    assert run.wcs_aligned and run.wcs_info["source"] == "solved"
    anchor = next(n for n in f001[:2] if observations[n][0].observation_id == run.wcs_info["anchor"])
    assert anchor == f001[1]  # the nearest earlier frame with a WCS of its own
    assert run.registration_quality < 0.3 and run.wcs_info["n_stars"] >= 6
    assert f"WCS solved against {run.wcs_info['anchor']}" in run.calibration_note

    solved = WCS(fits.getheader(run.processed_fits_path, "SCI"))
    truth = true_wcs(night.paths["sci"][[p.name for p in night.paths["sci"]].index(name)], night.conditions[name])
    shape = (SIZE, SIZE)
    # The solution inherits the anchor's own header-WCS error (the simulator's, <= 0.8 px), nothing more
    anchor_error = float(np.hypot(*night.conditions[anchor].wcs_error_px))
    error = max_error_px(solved, truth, shape)
    print(f"solved WCS: {error:.3f} px from the truth at worst (anchor's own error {anchor_error:.3f} px), "
          f"{run.wcs_info['n_stars']} stars, rms {run.registration_quality:.3f} px, {run.wcs_info['method']} match")
    assert error <= anchor_error + 0.15, (error, anchor_error)
    nominal = WCS(fits.Header(observations[name][0].raw_file.header["profile"]["nominal_wcs"]))
    assert max_error_px(nominal, truth, shape) > error + 1.0  # the pointing alone is much worse
    centre = SkyCoord(*truth.pixel_to_world_values((SIZE - 1) / 2, (SIZE - 1) / 2), unit="deg")
    assert SkyCoord(observation.ra, observation.dec, unit="deg").separation(centre).arcsec < 1.0


def test_a_frame_whose_field_has_no_frame_with_wcs_is_blocked_with_the_reason(processed_archive):
    platform, report, _ = processed_archive
    observations = _observations(platform)
    f002 = [n for n in observations if "_F002_" in n]
    assert len(f002) == 3
    for name in f002:
        observation, run = observations[name]
        assert observation.status == ObservationStatus.BLOCKED
        assert run.status == RunStatus.BLOCKED
        assert observation.status_reason.startswith("no WCS: the frame has none and field F002 has no calibrated "
                                                     "frame with a WCS"), observation.status_reason
    assert sorted(r.partition_key for r in report.failed) == sorted(observations[n][0].observation_id for n in f002)


def test_a_night_without_calibrations_uses_another_nights_masters_and_says_so(processed_archive):
    platform, _, _ = processed_archive
    observations = _observations(platform)
    name = sorted(n for n in observations if "_F001_" in n)[2]
    observation, run = observations[name]
    assert observation.night == "2026-11-23"
    assert run.calibration_applied
    with platform.catalog.session() as session:
        run = session.get(PreprocessRun, run.id)
        assert (run.master_bias.night, run.master_flat.night) == ("2026-11-21", "2026-11-21")
    assert "no bias frames on 2026-11-23: using the master of 2026-11-21" in run.calibration_note
    assert "no flat r frames on 2026-11-23: using the master of 2026-11-21" in run.calibration_note
    record = platform.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("calibrated_image"), asset_partitions=[observation.observation_id]),
        limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert metadata["calibration_note"].value == run.calibration_note
    assert metadata["master_bias_night"].value == "2026-11-21" and metadata["calibration"].value == "bias and flat"
    assert metadata["wcs_source"].value == "solved"


@pytest.mark.parametrize("allow", [False, True], ids=["blocked", "uncalibrated_by_choice"])
def test_without_any_masters_a_frame_is_blocked_or_uncalibrated_by_explicit_choice(tmp_path, archive, allow):
    night, _, _ = archive
    folder = tmp_path / "old"
    sci = [p for p in night.paths["sci"] if "_F001_" in p.name][0]
    legacy(sci, folder / sci.name, keep_wcs=True)  # no calibration frames on any night
    profiles = write_profiles(tmp_path / "instruments.yaml", {INSTRUMENT: PROFILE})
    with instance_for_test() as instance:
        platform = make_platform(tmp_path / "platform", f"sqlite:///{tmp_path / 'catalog.sqlite'}", instance,
                                 instruments_file=profiles, allow_uncalibrated=allow)
        report = process_folder(folder, platform.settings, instance=instance, progress=lambda _: None,
                                retry_policy=NO_RETRIES)
        (observation, run), = _observations(platform).values()
        if not allow:
            assert observation.status == ObservationStatus.BLOCKED and run.status == RunStatus.BLOCKED
            assert observation.status_reason == (
                "no master bias or flat for this night or any other night "
                "(ASTRO_ALLOW_UNCALIBRATED=1 processes such frames without, recorded as uncalibrated)")
            assert [r.job_name for r in report.failed] == ["calibrate_job"]
        else:
            assert not report.failed, [(r.job_name, r.partition_key) for r in report.failed]
            assert run.status == RunStatus.COMPLETED and not run.calibration_applied
            assert run.master_bias_id is None and run.master_flat_id is None
            assert run.calibration_note.startswith("uncalibrated by the user's choice (ASTRO_ALLOW_UNCALIBRATED=1): "
                                                   "no master bias or flat for this night or any other night")
            metadata = platform.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey("calibrated_image"),
                                   asset_partitions=[observation.observation_id]), limit=1
            ).records[0].asset_materialization.metadata
            assert metadata["calibration"].value == "uncalibrated (user's choice): overscan and gain only"
            assert metadata["calibration_note"].value == run.calibration_note
            history = str(fits.getheader(run.processed_fits_path, 0)["HISTORY"])
            assert "No master bias" in history and "No master flat" in history
        platform.catalog.engine.dispose()
