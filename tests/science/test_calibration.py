"""Calibration: overscan, masters, electrons, variance and masks against known inputs."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from dagster_project.science import calibration as cal
from dagster_project.simulation import telescope as sim
from dagster_project.science.masks import MaskBit, dilate, empty_mask

GAIN, READ_NOISE_E, SATURATE = 1.6, 5.0, 60000.0
SPEC = sim.DetectorSpec(nx=256, ny=256, overscan=16, gain=GAIN, read_noise_e=READ_NOISE_E, saturate_adu=SATURATE,
                        cosmic_ray_rate=0.0)


@pytest.fixture(scope="module")
def detector():
    return sim.make_detector(SPEC, np.random.default_rng(21))


@pytest.fixture(scope="module")
def master_bias(detector):
    frames = [sim.simulate_bias_frame(detector, np.random.default_rng(i), mjd=61000.0, band="r").data for i in range(5)]
    return cal.make_master_bias(frames, biassec=SPEC.biassec, trimsec=SPEC.trimsec)


@pytest.fixture(scope="module")
def master_flat(detector, master_bias):
    # twilight flats do collect cosmic rays: plenty of them here
    flat_detector = dataclasses.replace(detector, spec=dataclasses.replace(SPEC, cosmic_ray_rate=20.0))
    frames = [
        sim.simulate_flat_frame(flat_detector, np.random.default_rng(100 + i), mjd=61000.0, band="r",
                                level_adu=15000.0 + 2000.0 * i).data
        for i in range(5)
    ]
    return cal.make_master_flat(frames, master_bias=master_bias, biassec=SPEC.biassec, trimsec=SPEC.trimsec)


# --------------------------------------------------------------------------- sections and overscan


@pytest.mark.parametrize(
    "section, expected",
    [
        ("[1:2048,1:2048]", (slice(0, 2048), slice(0, 2048))),
        ("[2049:2080,1:2048]", (slice(0, 2048), slice(2048, 2080))),
        (" [ 5:10 , 3:4 ] ", (slice(2, 4), slice(4, 10))),
        ("[7:7,9:9]", (slice(8, 9), slice(6, 7))),
    ],
)
def test_parse_fits_section(section, expected):
    assert cal.parse_fits_section(section) == expected


@pytest.mark.parametrize(
    "section", ["", "1:10,1:10", "[1:10]", "[1:10,1:10,1:2]", "[a:b,c:d]", "[0:10,1:10]", "[10:1,1:10]",
                "[1:10,5:4]", "[1.5:10,1:10]", None, 12],
)
def test_parse_fits_section_refuses_malformed_input(section):
    with pytest.raises(ValueError):
        cal.parse_fits_section(section)


def test_parse_fits_section_checks_bounds():
    assert cal.parse_fits_section("[1:20,1:10]", shape=(10, 20)) == (slice(0, 10), slice(0, 20))
    with pytest.raises(ValueError, match="exceeds"):
        cal.parse_fits_section("[1:21,1:10]", shape=(10, 20))


def test_overscan_removes_a_row_wise_ramp_and_trims():
    rng = np.random.default_rng(0)
    ny, nx, n_over = 200, 120, 24
    ramp = 1000.0 + 0.05 * np.arange(ny)[:, None] + 3.0 * np.sin(np.arange(ny) / 7.0)[:, None]
    raw = ramp + rng.normal(0.0, 3.0, (ny, nx + n_over))
    raw[:, :nx] += 250.0
    raw[50, nx + 3] += 5000.0  # a cosmic ray in the overscan
    corrected = cal.overscan_correct(raw, f"[{nx + 1}:{nx + n_over},1:{ny}]", f"[1:{nx},1:{ny}]")
    assert corrected.dtype == np.float32 and corrected.shape == (ny, nx)
    row_means = corrected.mean(axis=1)
    # each row is off by the error of its level: the mean of 24 overscan pixels
    assert np.std(row_means - 250.0) == pytest.approx(3.0 / np.sqrt(n_over), rel=0.25)
    assert abs(row_means[50] - 250.0) < 4 * 3.0 / np.sqrt(n_over)
    assert abs(np.polyfit(np.arange(ny), row_means, 1)[0]) < 0.1 * 0.05  # the ramp is gone


def test_overscan_correct_without_sections_is_a_float_copy():
    raw = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = cal.overscan_correct(raw)
    assert out.dtype == np.float32 and np.array_equal(out, raw) and not np.shares_memory(out, raw)
    with pytest.raises(ValueError):
        cal.overscan_correct(np.zeros(5))
    with pytest.raises(ValueError, match="does not cover"):
        cal.overscan_correct(np.zeros((10, 12)), "[11:12,1:5]", "[1:10,1:10]")


# --------------------------------------------------------------------------- combining and masters


def test_combine_frames_rejects_outliers_without_losing_efficiency():
    rng = np.random.default_rng(1)
    frames = rng.normal(0.0, 1.0, (5, 300, 400)).astype(np.float32)
    hits = rng.random(frames.shape) < 1e-3
    frames[hits] += 50.0
    combined = cal.combine_frames(list(frames), chunk_pixels=100_000)  # several chunks
    assert combined.dtype == np.float32 and combined.shape == (300, 400)
    assert np.abs(combined).max() < 3.0  # every hit rejected
    assert combined.std() * np.sqrt(5) == pytest.approx(1.0, rel=0.05)  # close to a plain mean's noise


def test_combine_frames_refuses_bad_stacks():
    with pytest.raises(ValueError):
        cal.combine_frames([])
    with pytest.raises(ValueError):
        cal.combine_frames([np.zeros((3, 3)), np.zeros((3, 4))])


def test_master_bias_noise_is_read_noise_over_root_n(detector, master_bias):
    structure = detector.bias_structure_adu
    truth = structure[:, : SPEC.nx] - structure[:, SPEC.nx :].mean(axis=1, keepdims=True)  # what the overscan misses
    residual = master_bias.data - truth
    residual -= np.median(residual)  # the mean bias level and drifts
    per_frame = READ_NOISE_E / GAIN
    # overscan rows (16 px each) add their own error to every frame
    expected = np.sqrt(per_frame**2 * (1 + 1 / 16) + 1 / 12) / np.sqrt(5)
    good = master_bias.mask == 0
    assert residual[good].std() == pytest.approx(expected, rel=0.05)
    assert master_bias.noise == pytest.approx(expected, rel=0.05)
    assert master_bias.n_frames == 5 and master_bias.data.shape == SPEC.data_shape
    assert master_bias.stats["bad_columns"] == list(detector.hot_columns)
    assert np.all(master_bias.mask[:, list(detector.hot_columns)] == MaskBit.BAD_COLUMN)


def test_master_flat_recovers_the_flat_pattern(detector, master_flat):
    good = detector.flat > 0.5
    ratio = master_flat.data[good] / detector.flat[good]
    assert np.median(master_flat.data) == pytest.approx(1.0, abs=1e-6)
    assert np.median(ratio) == pytest.approx(1.0, abs=1e-3)
    # Poisson noise of 5 flats at 15000-23000 ADU: ~0.002 per pixel, and cosmic rays were rejected
    assert ratio.std() == pytest.approx(master_flat.noise, rel=0.1)
    assert ratio.std() < 0.003 and np.abs(ratio - 1).max() < 0.02
    assert np.all(master_flat.mask[:, list(detector.dead_columns)] & MaskBit.FLAT_BAD)
    assert np.count_nonzero(master_flat.mask) == SPEC.ny * len(detector.dead_columns)


def test_masters_need_two_frames_and_positive_flats(master_bias):
    with pytest.raises(ValueError):
        cal.make_master_bias([np.zeros((10, 10))])
    with pytest.raises(ValueError, match="non-positive"):
        cal.make_master_flat([np.zeros((256, 256))] * 2, master_bias=master_bias)
    with pytest.raises(ValueError, match="shape"):
        cal.make_master_flat([np.ones((20, 20))] * 2, master_bias=master_bias)


# --------------------------------------------------------------------------- science frames


def synthetic_raw(electrons_e, rng, *, flat=None, bias=None, gain=GAIN, read_noise=READ_NOISE_E, overscan=16):
    """Raw ADU frame of known electrons: Poisson(e * flat)/gain + bias + read noise, overscan on the right."""
    ny, nx = electrons_e.shape
    flat = np.ones((ny, nx)) if flat is None else flat
    bias = np.zeros((ny, nx)) if bias is None else bias
    rows = 1000.0 + 2.0 * np.sin(np.arange(ny) / 9.0)[:, None]
    raw = np.empty((ny, nx + overscan))
    raw[:, :nx] = rows + bias + rng.poisson(electrons_e * flat) / gain
    raw[:, nx:] = rows
    raw += rng.normal(0.0, read_noise / gain, raw.shape)
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16)


def exact_master(kind, data):
    return cal.MasterFrame(kind, data.astype(np.float32), 1000, 0.0, empty_mask(data.shape))


def test_calibration_recovers_known_electrons_and_variance():
    rng = np.random.default_rng(2)
    ny, nx = 300, 300
    yy, xx = np.mgrid[:ny, :nx]
    flat = (1 + 0.04 * np.cos(xx / 40.0)) * rng.normal(1.0, 0.01, (ny, nx))
    bias = 2.0 * np.sin(yy / 30.0 + xx / 50.0)
    stars = sim.render_moffat_sources((ny, nx), [60.3, 200.7], [80.2, 220.9], [2e5, 4e5], fwhm=3.0)
    truth = 600.0 + stars
    raw = synthetic_raw(truth, rng, flat=flat, bias=bias)
    result = cal.calibrate_science_frame(
        raw, gain=GAIN, read_noise_e=READ_NOISE_E, saturate_adu=SATURATE, master_bias=exact_master("bias", bias),
        master_flat=exact_master("flat", flat), biassec=f"[{nx + 1}:{nx + 16},1:{ny}]", trimsec=f"[1:{nx},1:{ny}]",
    )
    planes = result.planes
    assert planes.data.dtype == np.float32 and planes.variance.dtype == np.float32 and planes.mask.dtype == np.uint16
    pulls = (planes.data - truth) / np.sqrt(planes.variance)
    assert abs(pulls.mean()) < 0.02 and pulls.std() == pytest.approx(1.0, rel=0.03)
    # star fluxes come back in electrons
    for x, y, flux in ((60.3, 80.2, 2e5), (200.7, 220.9, 4e5)):
        box = np.s_[int(y) - 24 : int(y) + 25, int(x) - 24 : int(x) + 25]
        assert (planes.data[box] - 600.0).sum() == pytest.approx(flux, rel=0.02)
    # pure sky: predicted variance equals the empirical one
    sky = np.s_[150:300, 0:150]
    assert planes.variance[sky].mean() == pytest.approx(planes.data[sky].var(), rel=0.05)
    assert result.stats["sky_median_e"] == pytest.approx(600.0, rel=0.01)
    assert result.stats["n_saturated"] == 0
    assert result.stats["n_masked"] == result.stats["n_cosmic_ray_pixels"] <= 5  # no hits were injected
    assert set(result.stats["timings"]) >= {"cosmic_rays_s", "total_s"}


def test_saturation_and_bleed_are_masked():
    rng = np.random.default_rng(3)
    electrons = np.full((120, 100), 500.0)
    electrons[30:80, 50] = 1.2e5  # a bleed trail along column 50
    electrons[52:58, 48:53] = 1.2e5  # the saturated core
    electrons[80:83, 50] = [6e4, 3e4, 1e4]  # the partly filled end of the trail
    raw = synthetic_raw(electrons, rng)
    result = cal.calibrate_science_frame(raw, gain=GAIN, read_noise_e=READ_NOISE_E, saturate_adu=SATURATE,
                                         master_bias=None, master_flat=None, biassec="[101:116,1:120]",
                                         trimsec="[1:100,1:120]", detect_cosmic_rays=False)
    mask = result.planes.mask
    saturated = (mask & MaskBit.SATURATED) != 0
    bleed = (mask & MaskBit.BLEED) != 0
    assert result.stats["n_saturated"] == 50 + 6 * 5 - 6
    assert saturated[29:81, 49:52].all() and saturated[51:59, 47:54].all()  # grown by one pixel
    assert not saturated[:, :46].any() and not saturated[:28].any()
    assert bleed[81:85, 50].all() and bleed[25:29, 50].all()  # the trail continues along its column
    assert not bleed[:, :48].any() and not bleed[:, 53:].any()
    assert "No master bias: overscan level only" in result.history
    assert "No master flat: response taken as 1" in result.history


def test_cosmic_rays_are_masked_but_star_cores_are_not():
    rng = np.random.default_rng(4)
    shape = (384, 384)
    x, y = rng.uniform(15, 369, 60), rng.uniform(15, 369, 60)
    flux = 10 ** rng.uniform(3.5, 5.5, 60)
    stars = sim.render_moffat_sources(shape, x[:30], y[:30], flux[:30], fwhm=2.5)
    stars += sim.render_moffat_sources(shape, x[30:], y[30:], flux[30:], fwhm=3.2, beta=2.6)
    hits = sim.cosmic_ray_image(shape, 120, rng)
    raw = synthetic_raw(800.0 + stars + hits, rng)  # hits get Poisson noise too; negligible
    result = cal.calibrate_science_frame(raw, gain=GAIN, read_noise_e=READ_NOISE_E, saturate_adu=SATURATE,
                                         master_bias=None, master_flat=None, biassec="[385:400,1:384]",
                                         trimsec="[1:384,1:384]")
    flagged = (result.planes.mask & MaskBit.COSMIC_RAY) != 0
    strong = hits > 10 * np.sqrt(800.0 + READ_NOISE_E**2)
    assert flagged[strong].mean() > 0.9
    cores = np.zeros(shape, bool)
    for xi, yi in zip(np.rint(x).astype(int), np.rint(y).astype(int)):
        if not hits[yi - 4 : yi + 5, xi - 4 : xi + 5].any():  # a hit on a star is rightly flagged
            cores[yi - 2 : yi + 3, xi - 2 : xi + 3] = True
    assert cores.sum() > 50 * 25 and not (flagged & cores).any()
    assert result.stats["n_cosmic_ray_pixels"] == flagged.sum()
    # L.A.Cosmic also takes the rims of hits and the mask is grown by COSMIC_RAY_GROW_PX more;
    # away from that hardly anything is flagged (a false pixel grows into a 3x3 patch: count patches)
    rims = ndimage.binary_dilation(hits > 0, np.ones((3, 3), bool), iterations=1 + cal.COSMIC_RAY_GROW_PX)
    assert ndimage.label(flagged & ~rims)[1] < 5


def _sky_with_hits(rng, shape=(384, 384), sky=800.0, n_hits=150):
    hits = sim.cosmic_ray_image(shape, n_hits, rng)
    variance = (sky + READ_NOISE_E**2 + hits).astype(np.float32)
    data = (sky + hits + rng.normal(size=shape) * np.sqrt(sky + READ_NOISE_E**2)).astype(np.float32)
    return data, variance, hits


def test_lacosmic_equals_astroscrappy_and_strips_equal_one_run():
    import astroscrappy

    data, variance, _ = _sky_with_hits(np.random.default_rng(7))
    stars = sim.render_moffat_sources(data.shape, [100.0, 300.5], [250.0, 120.3], [3e5, 8e4], fwhm=2.5)
    data += stars.astype(np.float32)
    variance += stars.astype(np.float32)
    mask = empty_mask(data.shape)
    mask[:, 200] = MaskBit.COSMIC_RAY  # a masked column crossing the strip boundary
    mask[60:64, 30:34] = MaskBit.SATURATED
    found = cal.find_cosmic_rays(data, variance, mask, grow_px=0)
    # astroscrappy's one iteration, given the same excluded pixels (it grows its input mask by 1 px itself)
    excluded = dilate((mask & MaskBit.SATURATED) != 0, 3, 3) | (mask != 0)
    expected, _ = astroscrappy.detect_cosmics(data, inmask=excluded, invar=variance, gain=1.0, satlevel=np.inf,
                                              niter=1, sepmed=True, fsmode="median", **cal.COSMIC_RAY_PARAMS)
    inner = (slice(8, -8), slice(8, -8))  # the filters treat the outer pixels differently
    assert found.sum() > 100 and np.array_equal(found[inner], expected[inner])
    whole = cal._lacosmic(data, variance, dilate(excluded, 1, 1), **cal.COSMIC_RAY_PARAMS)
    assert np.array_equal(found, whole & (mask == 0))  # the threaded strips change nothing
    grown = cal.find_cosmic_rays(data, variance, mask)
    assert np.array_equal(grown, dilate(found, 1, 1) & (mask == 0))


@pytest.mark.parametrize("shape", [(5, 9), (7, 7), (8, 100), (40, 17), (100, 7), (6, 50), (300, 257)])
def test_sepmedfilt7_equals_astroscrappy_bit_for_bit(shape):
    from astroscrappy.utils.median_utils import sepmedfilt7

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    image = (rng.normal(size=shape) * 10).astype(np.float32)
    image[rng.random(shape) < 0.2] = 3.0  # ties
    assert np.array_equal(cal._sepmedfilt7(image), sepmedfilt7(image))


def test_cosmic_ray_next_to_a_bad_column_is_flagged():
    # astroscrappy never tests the neighbours of masked pixels: thin defects are filled instead
    rng = np.random.default_rng(8)
    data, variance, _ = _sky_with_hits(rng, n_hits=0)
    mask = empty_mask(data.shape)
    mask[:, 150] = MaskBit.BAD_COLUMN
    data[:, 150] += 3000.0  # a hot column, as it looks after an imperfect bias subtraction
    data[200:203, 151] += 900.0  # a short track touching it: ~30 sigma per pixel
    variance[200:203, 151] += 900.0
    found = cal.find_cosmic_rays(data, variance, mask)
    assert found[200:203, 151].all()
    assert not found[:, 150].any()  # already masked: no second flag
    # the filled column leaves no edge: its neighbours elsewhere are not flagged
    assert not found[:195, 148:153].any() and not found[210:, 148:153].any()


def test_mask_dilation_equals_binary_dilation_for_bits_and_booleans():
    rng = np.random.default_rng(9)
    bits = np.where(rng.random((60, 70)) < 0.02, MaskBit.COSMIC_RAY, 0).astype(np.uint16)
    bits[5, :] |= np.uint16(MaskBit.BAD_COLUMN)
    for half_height, half_width in ((1, 1), (5, 0), (2, 3)):
        grown = dilate(bits, half_height, half_width)
        structure = np.ones((2 * half_height + 1, 2 * half_width + 1), bool)
        for bit in (MaskBit.COSMIC_RAY, MaskBit.BAD_COLUMN):
            assert np.array_equal((grown & bit) != 0, ndimage.binary_dilation((bits & bit) != 0, structure))
    assert dilate(bits != 0, 1, 1).dtype == bool


def test_bad_pixel_mask_and_master_masks_are_carried(master_bias, master_flat, detector):
    rng = np.random.default_rng(5)
    raw = sim.read_out(detector, rng.poisson(700.0 * detector.flat).astype(float), rng)
    extra = np.zeros(SPEC.data_shape, bool)
    extra[10, 20] = True
    result = cal.calibrate_science_frame(
        raw, gain=GAIN, read_noise_e=READ_NOISE_E, saturate_adu=SATURATE, master_bias=master_bias,
        master_flat=master_flat, biassec=SPEC.biassec, trimsec=SPEC.trimsec, bad_pixel_mask=extra,
        detect_cosmic_rays=False,
    )
    mask = result.planes.mask
    assert mask[10, 20] & MaskBit.BAD_COLUMN
    assert np.all(mask[:, list(detector.hot_columns)] & MaskBit.BAD_COLUMN)
    assert np.all(mask[:, list(detector.dead_columns)] & MaskBit.FLAT_BAD)
    good = mask == 0
    assert np.median(result.planes.data[good]) == pytest.approx(700.0, rel=0.005)
    assert result.planes.variance[good].mean() == pytest.approx(result.planes.data[good].var(), rel=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gain=0.0),
        dict(read_noise_e=-1.0),
        dict(master_bias=cal.MasterFrame("bias", np.zeros((5, 5), np.float32), 2, 0.0, empty_mask((5, 5)))),
        dict(bad_pixel_mask=np.zeros((5, 5), bool)),
        dict(trimsec="[1:300,1:10]"),
    ],
)
def test_calibrate_refuses_bad_input(kwargs):
    args = dict(gain=GAIN, read_noise_e=READ_NOISE_E, saturate_adu=SATURATE, master_bias=None, master_flat=None,
                trimsec="[1:20,1:20]", detect_cosmic_rays=False)
    with pytest.raises(ValueError):
        cal.calibrate_science_frame(np.zeros((20, 24), np.uint16), **{**args, **kwargs})


def test_calibrated_header_keeps_wcs_and_records_history():
    raw = fits.Header()
    for key, value in dict(SIMPLE=True, BITPIX=16, NAXIS=2, NAXIS1=110, NAXIS2=100, BZERO=32768, BSCALE=1,
                           OBJECT="F001", FILTER="r", EXPTIME=60.0, GAIN=1.6, RDNOISE=5.0, SATURATE=60000.0,
                           BIASSEC="[1:10,1:100]", TRIMSEC="[11:110,1:100]", CTYPE1="RA---TAN", CTYPE2="DEC--TAN",
                           CRVAL1=10.0, CRVAL2=-5.0, CRPIX1=60.5, CRPIX2=50.5, CD1_1=-1e-4, CD1_2=0.0, CD2_1=0.0,
                           CD2_2=1e-4, CHECKSUM="abc", DATASUM="1").items():
        raw[key] = value
    rng = np.random.default_rng(6)
    data = rng.normal(1000.0, 3.0, (100, 110)).astype(np.float32)
    result = cal.calibrate_science_frame(data, gain=1.6, read_noise_e=5.0, saturate_adu=60000.0, master_bias=None,
                                         master_flat=None, biassec=raw["BIASSEC"], trimsec=raw["TRIMSEC"],
                                         detect_cosmic_rays=False)
    header = cal.calibrated_header(raw, result)
    for key in ("BIASSEC", "TRIMSEC", "BZERO", "BSCALE", "BITPIX", "NAXIS1", "CHECKSUM", "DATASUM"):
        assert key not in header
    assert header["CRPIX1"] == 50.5 and header["CRPIX2"] == 50.5  # 10 overscan columns on the left were cut
    assert header["BUNIT"] == "electron" and header["GAIN"] == 1.0 and header["RAWGAIN"] == 1.6
    assert header["OBJECT"] == "F001" and header["EXPTIME"] == 60.0 and header["CTYPE1"] == "RA---TAN"
    assert header["SATURATE"] == pytest.approx(1.6 * (60000.0 - 1000.0), rel=1e-3)
    assert list(header["HISTORY"]) == result.history
