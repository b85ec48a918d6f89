"""The simulated telescope: geometry, photometry, noise, truth and files against analytic expectations."""

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from photutils.centroids import centroid_com
from scipy import ndimage

from dagster_project.simulation import telescope as sim
from dagster_project.science.psf_models import moffat_stamp, render_point_sources
from dagster_project.simulation.night import TRUTH_COLUMNS, load_truth, simulate_night, write_atomically

SMALL = sim.DetectorSpec(nx=256, ny=256, overscan=16, cosmic_ray_rate=0.0)
CLEAN = dataclasses.replace(SMALL, n_hot_columns=0, n_dead_columns=0)  # no defects under the test star
FIELD = sim.FieldSpec("F001", ra_deg=359.99, dec_deg=-20.0)  # straddles RA = 0


def single_star_sky(ra, dec, rate):
    one = np.array([1.0])
    return sim.SkyModel(star_ra=one * ra, star_dec=one * dec, star_rate=one * rate, star_colour=one * 0.0)


def empty_sky():
    return sim.SkyModel(*(np.zeros(0) for _ in range(4)))


# --------------------------------------------------------------------------- rendering


def test_render_moffat_sources_matches_render_point_sources_for_faint_sources():
    rng = np.random.default_rng(1)
    x, y, flux = rng.uniform(-5, 105, 40), rng.uniform(-5, 85, 40), rng.uniform(10, 500, 40)
    ours = sim.render_moffat_sources((80, 100), x, y, flux, 2.5, 3.0, 0.05, 20.0)
    reference = render_point_sources((80, 100), x, y, flux, 2.5, 3.0, 0.05, 20.0, stamp_size=2 * 10 + 1)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)


def test_bright_source_gets_a_stamp_without_truncation_edge():
    flux = 5e7
    image = sim.render_moffat_sources((301, 301), [150.2], [149.7], [flux], fwhm=3.0, beta=3.0)
    assert image.sum() == pytest.approx(flux, rel=1e-9)
    # the standard 4*FWHM stamp would end 12 px out with a step of ~60 e-; ours fades below 0.5 e-
    assert image[150, 150 + 13] > 20.0
    assert image[150, 0] < 0.5


def test_galaxies_keep_their_flux_and_are_extended():
    psf = moffat_stamp(25, 3.0)
    image = sim.render_galaxies((200, 200), [100.3], [99.6], [1e5], [6.0], [1.0], [0.4], [30.0], psf)
    assert image.sum() == pytest.approx(1e5, rel=1e-6)
    star = sim.render_moffat_sources((200, 200), [100.3], [99.6], [1e5], 3.0)
    assert image.max() < 0.2 * star.max()  # spread over many more pixels than a point source


def test_bleeding_conserves_charge_and_caps_at_full_well():
    column = np.full((100, 1), 500.0)
    column[48:52, 0] = [2e5, 5e5, 5e5, 2e5]
    total = column.sum()
    sim.bleed_full_wells(column, 1e5)
    assert column.sum() == pytest.approx(total)
    assert column.max() == pytest.approx(1e5)
    full = np.flatnonzero(column[:, 0] >= 1e5 - 1e-6)
    assert full.min() < 48 and full.max() > 51  # the trail grew both ways
    assert np.all(np.diff(full) == 1)


def test_cosmic_rays_are_sharp_and_count_as_asked():
    image = sim.cosmic_ray_image((200, 200), 50, np.random.default_rng(3))
    assert image.min() == 0.0 and image.sum() > 50 * 300
    n_tracks = ndimage.label(image > 0, structure=np.ones((3, 3)))[1]
    assert 40 <= n_tracks <= 50  # a few may overlap


# --------------------------------------------------------------------------- frames


@pytest.fixture(scope="module")
def detector():
    return sim.make_detector(SMALL, np.random.default_rng(7))


@pytest.fixture(scope="module")
def clean_detector():
    return sim.make_detector(CLEAN, np.random.default_rng(7))


def test_wcs_puts_catalogue_star_at_its_rendered_centroid(clean_detector):
    star_ra, star_dec = 0.004, -20.003  # across RA = 0 from the field centre
    conditions = sim.EpochConditions(
        mjd=61000.0, seeing_fwhm_px=3.0, sky_e=800.0, offset_px=(13.4, -7.9), rotation_deg=0.37,
        wcs_error_px=(0.6, -0.5),
    )
    frame = sim.simulate_science_frame(clean_detector, FIELD, single_star_sky(star_ra, star_dec, 12000.0), conditions,
                                       "r", np.random.default_rng(11))
    header_wcs = WCS(frame.header)
    hx, hy = header_wcs.world_to_pixel_values(star_ra, star_dec)
    true_x, true_y = hx - 0.6, hy + 0.5  # header pixel = true pixel + wcs_error_px
    cx, cy = int(round(float(true_x))), int(round(float(true_y)))
    electrons = (frame.data[:, : SMALL.nx].astype(float) - np.median(frame.data[:, SMALL.nx :])) * SMALL.gain
    box = electrons[cy - 12 : cy + 13, cx - 12 : cx + 13]
    box = box - np.median(electrons[cy - 40 : cy + 41, cx - 40 : cx + 41])
    mx, my = centroid_com(box)
    assert np.hypot(cx - 12 + mx - true_x, cy - 12 + my - true_y) < 0.1
    # and the header WCS really is off by the documented error
    assert np.hypot(cx - 12 + mx - hx, cy - 12 + my - hy) == pytest.approx(np.hypot(0.6, 0.5), abs=0.1)


def test_star_flux_is_catalogue_rate_times_exptime_times_flat(clean_detector):
    rate, exptime = 4000.0, 45.0
    conditions = sim.EpochConditions(mjd=61000.0, exptime=exptime, seeing_fwhm_px=2.6, sky_e=700.0)
    frame = sim.simulate_science_frame(clean_detector, FIELD, single_star_sky(FIELD.ra_deg, FIELD.dec_deg, rate),
                                       conditions, "r", np.random.default_rng(5))
    x, y = WCS(sim.wcs_header(FIELD, SMALL)).world_to_pixel_values(FIELD.ra_deg, FIELD.dec_deg)
    yy, xx = np.mgrid[: SMALL.ny, : SMALL.nx]
    r = np.hypot(xx - x, yy - y)
    electrons = frame.data[:, : SMALL.nx].astype(float) * SMALL.gain
    aperture, annulus = r < 20, (r > 30) & (r < 50)
    measured = (electrons[aperture] - np.median(electrons[annulus])).sum()
    cx, cy = int(round(float(x))), int(round(float(y)))
    flat = clean_detector.flat[cy - 2 : cy + 3, cx - 2 : cx + 3].mean()  # response under the star's core
    assert measured == pytest.approx(rate * exptime * flat, rel=0.02)


def test_bias_frame_has_read_noise_and_structure_only(detector):
    frame = sim.simulate_bias_frame(detector, np.random.default_rng(2), mjd=61000.0, band="r")
    assert frame.data.dtype == np.uint16 and frame.data.shape == SMALL.raw_shape
    residual = frame.data.astype(float) - detector.bias_structure_adu
    residual -= residual.mean()  # the frame's bias drift
    expected = np.sqrt((SMALL.read_noise_e / SMALL.gain) ** 2 + 1 / 12)  # + ADC rounding
    assert residual.std() == pytest.approx(expected, rel=0.02)
    assert abs(frame.data.mean() - SMALL.bias_level_adu - detector.bias_structure_adu.mean()) < 5 * SMALL.bias_drift_adu


def test_flat_frame_follows_the_flat_pattern(detector):
    frame = sim.simulate_flat_frame(detector, np.random.default_rng(4), mjd=61000.0, band="r", level_adu=20000.0)
    data = frame.data[:, : SMALL.nx].astype(float) - detector.bias_structure_adu[:, : SMALL.nx] - SMALL.bias_level_adu
    ratio = data / detector.flat
    good = detector.flat > 0.5
    assert np.median(ratio[good]) == pytest.approx(20000.0, rel=0.002)
    # what is left is Poisson + read noise
    expected = np.sqrt(20000.0 * SMALL.gain + SMALL.read_noise_e**2) / SMALL.gain
    assert np.std(data[good] - 20000.0 * detector.flat[good]) == pytest.approx(expected, rel=0.03)


def test_transient_snr_follows_the_optimal_formula():
    spec = dataclasses.replace(SMALL, flat_pixel_rms=0.0, flat_vignetting=0.0, n_hot_columns=0, n_dead_columns=0)
    detector = sim.make_detector(spec, np.random.default_rng(0))
    conditions = sim.EpochConditions(mjd=61000.0, seeing_fwhm_px=2.8, moffat_beta=2.7, sky_e=900.0)
    frame = sim.simulate_science_frame(detector, FIELD, empty_sky(), conditions, "r", np.random.default_rng(9),
                                       n_transients=8)
    assert len(frame.transients) == 8
    half = sim.psf_half_width(2.8)
    for t in frame.transients:
        assert 30 <= t.x <= spec.nx - 31 and 30 <= t.y <= spec.ny - 31
        assert 5.0 <= t.snr_optimal <= 100.0
        psf = moffat_stamp(2 * half + 1, 2.8, 2.7, offset=(t.x - round(t.x), t.y - round(t.y)))
        signal = t.flux_e * psf
        snr = np.sqrt(np.sum(signal**2 / (900.0 + 5.0**2 + signal)))
        assert t.snr_optimal == pytest.approx(snr, rel=1e-9)
        ra, dec = WCS(sim.wcs_header(FIELD, spec)).pixel_to_world_values(t.x, t.y)
        assert (t.ra, t.dec) == pytest.approx((float(ra) % 360, float(dec)), abs=1e-9)


def test_epoch_conditions_put_best_seeing_first_and_bound_the_wcs_error():
    mjds = 61000.0 + np.arange(6) / 24
    series = sim.draw_epoch_conditions(mjds, SMALL, np.random.default_rng(8), band="i")
    seeing = [c.seeing_fwhm_px for c in series]
    assert seeing[0] == min(seeing)
    assert all(1.0 / 0.5 <= s <= 1.7 / 0.5 for s in seeing)
    assert all(np.hypot(*c.wcs_error_px) <= 0.8 and np.hypot(*c.offset_px) <= 20 for c in series)
    assert all(abs(c.rotation_deg) < 0.5 for c in series)


@pytest.mark.parametrize(
    "build",
    [
        lambda: sim.DetectorSpec(nx=10),
        lambda: sim.DetectorSpec(overscan=-1),
        lambda: sim.DetectorSpec(saturate_adu=900.0),
        lambda: sim.band_response("u"),
        lambda: sim.EpochConditions(mjd=0.0, seeing_fwhm_px=-1.0),
        lambda: sim.EpochConditions(mjd=0.0, airmass=0.9),
        lambda: sim.draw_epoch_conditions([1.0], SMALL, np.random.default_rng(), max_wcs_error_px=2.0),
        lambda: sim.flux_for_snr(0.0, np.ones((3, 3)) / 9, 100.0, 5.0),
        lambda: sim.FieldSpec("F", 10.0, 95.0),
    ],
)
def test_bad_inputs_are_refused(build):
    with pytest.raises(ValueError):
        build()


# --------------------------------------------------------------------------- night on disk


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_night(tmp_path_factory.mktemp("night"), n_fields=2, n_epochs=2, size=256, bands=("r", "g"),
                          n_bias=2, n_flats=2, transients_per_frame=4, seed=3)


def test_night_writes_calibrations_first_then_science_in_time_order(night):
    names = sorted(p.name for p in night.out_dir.iterdir())
    assert names == sorted([p.name for kind in ("bias", "flat", "sci") for p in night.paths[kind]] + ["truth.csv"])
    assert not [n for n in names if n.startswith(".") or n.endswith(".partial")]
    written = night.paths["bias"] + night.paths["flat"] + night.paths["sci"]
    assert [int(p.name.split("_")[2]) for p in written] == list(range(1, 15))
    assert night.paths["bias"][0].name == "SIMCAM_20261121_0001_bias_r.fits"
    assert night.paths["flat"][-1].name == "SIMCAM_20261121_0006_flat_g.fits"
    assert night.paths["sci"][0].name == "SIMCAM_20261121_0007_sci_F001_r.fits"
    mjds = [fits.getheader(p)["MJD-OBS"] for p in written]
    assert mjds == sorted(mjds)
    assert night.summary["files"] == {"bias": 2, "flat": 4, "sci": 8}


def test_night_files_are_complete_standard_fits(night):
    required = ("DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "IMAGETYP", "OBJECT", "GAIN", "RDNOISE", "SATURATE",
                "INSTRUME", "TELESCOP", "BIASSEC", "TRIMSEC")
    for kind, paths in night.paths.items():
        for path in paths:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a checksum mismatch is a warning
                with fits.open(path, checksum=True) as hdul:
                    header, data = hdul[0].header, hdul[0].data
            assert header["BITPIX"] == 16 and header["BZERO"] == 32768 and data.dtype == np.uint16
            assert data.shape == (256, 256 + 32)
            assert all(key in header for key in required), path.name
            assert Time(header["DATE-OBS"], scale="utc").mjd == pytest.approx(header["MJD-OBS"], abs=1e-6)
            assert header["IMAGETYP"] == {"bias": "bias", "flat": "flat", "sci": "object"}[kind]
            if kind == "sci":
                wcs = WCS(header)
                assert wcs.wcs.ctype[0] == "RA---TAN" and "CD1_1" in header and "AIRMASS" in header
                assert header["OBJECT"] in path.name and header["FILTER"] == path.stem[-1]


def test_truth_table_matches_frames_and_reads_back(night):
    rows = load_truth(night.truth_path)
    assert len(rows) == len(night.truth) == 4 * 4  # (2 fields x 2 bands at epoch 1) x 4 transients
    assert list(rows[0]) == list(TRUTH_COLUMNS)
    for row, original in zip(rows, night.truth):
        assert row["file"] == original["file"] and row["epoch"] == 1
        assert row["x"] == pytest.approx(original["x"], abs=1e-4)
        header = fits.getheader(night.out_dir / row["file"])
        error = night.conditions[row["file"]].wcs_error_px
        hx, hy = WCS(header).world_to_pixel_values(row["ra"], row["dec"])
        assert (hx - error[0], hy - error[1]) == pytest.approx((row["x"], row["y"]), abs=2e-3)
        assert 5 <= row["snr_optimal"] <= 100 and row["flux_e"] > 0
    best = {}
    for name, cond in night.conditions.items():
        key = name.split("_sci_")[1]
        best.setdefault(key, []).append((cond.mjd, cond.seeing_fwhm_px))
    assert all(min(v)[1] == min(s for _, s in v) for v in best.values())  # epoch 0 has the best seeing


def test_same_seed_writes_identical_bytes(night, tmp_path):
    again = simulate_night(tmp_path, n_fields=2, n_epochs=2, size=256, bands=("r", "g"), n_bias=2, n_flats=2,
                           transients_per_frame=4, seed=3)
    for kind in ("bias", "flat", "sci"):
        for first, second in zip(night.paths[kind], again.paths[kind]):
            assert first.read_bytes() == second.read_bytes()
    assert night.truth_path.read_bytes() == again.truth_path.read_bytes()


def test_night_without_calibration_frames_or_overscan(tmp_path):
    result = simulate_night(tmp_path, n_fields=1, n_epochs=1, size=128, n_bias=0, n_flats=0, overscan=0)
    assert [p.name for p in tmp_path.glob("*.fits")] == ["SIMCAM_20261121_0001_sci_F001_r.fits"]
    header = fits.getheader(result.paths["sci"][0])
    assert "BIASSEC" not in header and "TRIMSEC" not in header and header["NAXIS1"] == 128
    assert load_truth(result.truth_path) == []


def test_failed_write_leaves_nothing_behind(tmp_path):
    def explode(fh):
        fh.write(b"SIMPLE  =")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "x.fits", explode)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs", [dict(n_epochs=0), dict(bands=("r", "r")), dict(bands=("y",)), dict(night="21/11/2026"), dict(size=32)]
)
def test_simulate_night_refuses_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        simulate_night(tmp_path, **{"size": 128, "n_bias": 0, "n_flats": 0, **kwargs})


def test_load_truth_refuses_missing_columns(tmp_path):
    path = Path(tmp_path) / "truth.csv"
    path.write_text("file,ra\nx.fits,1.0\n")
    with pytest.raises(ValueError, match="missing truth columns"):
        load_truth(path)
