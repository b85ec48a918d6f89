"""The simulator's artifacts: each one where its truth row says, reproducible, and none unless asked."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dagster_project.simulation import telescope as sim
from dagster_project.simulation.artifacts import (
    ARTIFACT_RICH,
    FWHM_PER_SIGMA,
    ArtifactRates,
    Distortion,
    Trail,
    chord,
    displaced,
    parse_detail,
    render_trail,
)
from dagster_project.simulation.night import (
    ARTIFACT_COLUMNS,
    TRUTH_COLUMNS,
    load_artifacts,
    load_truth,
    simulate_night,
)

# A uniform flat, no fixed defects and no cosmic rays: what is left above the sky is the artifact.
FLAT = sim.DetectorSpec(nx=256, ny=256, overscan=16, cosmic_ray_rate=0.0, n_hot_columns=0, n_dead_columns=0,
                        flat_pixel_rms=0.0, flat_vignetting=0.0)
FIELD = sim.FieldSpec("F001", ra_deg=30.0, dec_deg=-20.0)
SKY_E = 900.0
NOISE_E = float(np.sqrt(SKY_E + FLAT.read_noise_e**2))
CONDITIONS = sim.EpochConditions(mjd=61000.0, seeing_fwhm_px=2.6, sky_e=SKY_E)
TRUE_WCS = WCS(sim.wcs_header(FIELD, FLAT))  # CONDITIONS has no pointing offset or rotation


def rng(seed):
    return np.random.default_rng(seed)


def empty_sky():
    return sim.SkyModel(*(np.zeros(0) for _ in range(4)))


def stars_at(x, y, flux, exptime=60.0):
    """A sky of stars landing at true pixels ``(x, y)`` with ``flux`` e- in ``r`` over ``exptime``."""
    ra, dec = TRUE_WCS.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    flux = np.broadcast_to(np.asarray(flux, float), np.shape(ra))
    return sim.SkyModel(star_ra=np.asarray(ra), star_dec=np.asarray(dec), star_rate=flux / exptime,
                        star_colour=np.zeros(np.shape(ra)))


def electrons(frame, detector):
    """Detected electrons of the data section: the bias pattern, the frame's level (overscan) and the flat removed."""
    spec = detector.spec
    raw = frame.data.astype(float) - detector.bias_structure_adu
    level = np.median(raw[:, spec.nx :])
    return (raw[:, : spec.nx] - level) * spec.gain / detector.flat


def of_kind(frame, kind):
    return [a for a in frame.artifacts if a.kind == kind]


@pytest.fixture(scope="module")
def flat_detector():
    return sim.make_detector(FLAT, rng(0))


def simulate(detector, sky, seed, artifacts=None, conditions=CONDITIONS, **kwargs):
    return sim.simulate_science_frame(detector, FIELD, sky, conditions, "r", rng(seed), artifacts=artifacts, **kwargs)


# --------------------------------------------------------------------------- defaults


def test_zero_rates_render_the_same_frame_with_the_same_draws():
    spec = sim.DetectorSpec(nx=256, ny=256, overscan=16)  # cosmic rays, hot and dead columns: all on
    detector = sim.make_detector(spec, rng(7))
    sky = sim.make_sky_model(FIELD, spec, rng(1))
    plain_rng, zero_rng = rng(5), rng(5)
    plain = sim.simulate_science_frame(detector, FIELD, sky, CONDITIONS, "r", plain_rng, n_transients=3)
    zero = sim.simulate_science_frame(detector, FIELD, sky, CONDITIONS, "r", zero_rng, n_transients=3,
                                      artifacts=ArtifactRates())
    assert np.array_equal(plain.data, zero.data)
    assert plain.header.tostring() == zero.header.tostring() and plain.transients == zero.transients
    assert plain_rng.bit_generator.state == zero_rng.bit_generator.state  # not one extra draw
    assert plain.artifacts == ()
    kinds = {a.kind for a in zero.artifacts}
    assert {"cosmic_ray", "hot_column", "dead_column"} <= kinds <= {"cosmic_ray", "saturation", "hot_column",
                                                                     "dead_column"}


def test_zero_rate_night_writes_the_same_files(tmp_path):
    options = dict(n_fields=1, n_epochs=2, size=128, n_bias=1, n_flats=1, transients_per_frame=2, seed=4)
    plain = simulate_night(tmp_path / "plain", **options)
    zero = simulate_night(tmp_path / "zero", **options, artifacts=ArtifactRates())
    assert plain.artifacts_path is None and not (tmp_path / "plain" / "artifacts.csv").exists()
    for kind in ("bias", "flat", "sci"):
        for first, second in zip(plain.paths[kind], zero.paths[kind], strict=True):
            assert first.read_bytes() == second.read_bytes()
    assert plain.truth_path.read_bytes() == zero.truth_path.read_bytes()
    assert zero.artifacts_path == tmp_path / "zero" / "artifacts.csv"
    assert {row["kind"] for row in load_artifacts(zero.artifacts_path)} >= {"cosmic_ray", "hot_column"}


@pytest.mark.parametrize(
    "kwargs",
    [dict(trails_per_frame=-1.0), dict(psf_mismatch_fraction=1.5), dict(trail_snr_range=(5.0, 2.0)),
     dict(ghost_radius_px=0.0), dict(hot_pixel_e=(0.0, 10.0))],
)
def test_bad_rates_are_refused(kwargs):
    with pytest.raises(ValueError):
        ArtifactRates(**kwargs)


# --------------------------------------------------------------------------- trails


@pytest.mark.parametrize("angle", [0.0, 0.3, np.pi / 2, 2.0, 2.9])
def test_trail_is_rendered_on_its_band_only_and_carries_its_flux(angle):
    shape = (300, 400)
    x0, y0, x1, y1 = chord(150.3, 120.7, angle, shape)
    for x, y in ((x0, y0), (x1, y1)):  # on the edge of the pixel area
        assert min(abs(x + 0.5), abs(x - 399.5), abs(y + 0.5), abs(y - 299.5)) < 1e-9
    trail = Trail(x0, y0, x1, y1, fwhm_px=2.6, peak_e=100.0, snr_per_px=3.0)
    image = np.zeros(shape)
    render_trail(image, trail)
    yy, xx = np.nonzero(image)
    ux, uy = trail.direction
    assert np.abs((yy - y0) * ux - (xx - x0) * uy).max() <= 5 * trail.sigma_px
    all_y, all_x = np.mgrid[: shape[0], : shape[1]]
    assert yy.size == np.count_nonzero(np.abs((all_y - y0) * ux - (all_x - x0) * uy) <= 5 * trail.sigma_px)
    line_flux = trail.peak_e * np.sqrt(2 * np.pi) * trail.sigma_px  # e- per pixel of length
    assert image.sum() == pytest.approx(line_flux * np.hypot(x1 - x0, y1 - y0), rel=0.02)


def test_glint_flashes_at_its_period():
    trail = Trail(0.0, 10.0, 100.0, 10.0, 2.6, 100.0, 3.0, glint_period_px=40.0, glint_phase_px=7.0,
                  glint_fwhm_px=10.0, glint_base=0.2)
    assert trail.glint(np.array([7.0, 47.0, 87.0])) == pytest.approx([1.0, 1.0, 1.0])
    assert trail.glint(np.array([27.0, 67.0])) == pytest.approx([0.2, 0.2], abs=1e-3)


def trail_model(trails, shape):
    """The trails re-rendered from their truth rows alone."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    model = np.zeros(shape)
    for row in trails:
        length = np.hypot(row.x1 - row.x0, row.y1 - row.y0)
        ux, uy = (row.x1 - row.x0) / length, (row.y1 - row.y0) / length
        across = (yy - row.y0) * ux - (xx - row.x0) * uy
        along = (xx - row.x0) * ux + (yy - row.y0) * uy
        sigma = np.sqrt((row.width_px / FWHM_PER_SIGMA) ** 2 + 1 / 12)  # the pixel's width added
        detail = parse_detail(row.detail)
        glint = 1.0
        if "glint_period_px" in detail:
            period = detail["glint_period_px"]
            offset = np.mod(along - detail["glint_phase_px"] + period / 2, period) - period / 2
            flash = np.exp(-0.5 * (offset * FWHM_PER_SIGMA / detail["glint_fwhm_px"]) ** 2)
            glint = detail["glint_base"] + (1 - detail["glint_base"]) * flash
        model += row.amplitude * np.exp(-0.5 * (across / sigma) ** 2) * glint
    return model


def test_trails_are_where_and_as_bright_as_their_truth_says(flat_detector):
    rates = ArtifactRates(trails_per_frame=6.0, trail_snr_range=(3.0, 100.0), trail_glint_fraction=0.5,
                          trail_glint_period_px=(20.0, 60.0))
    frame = simulate(flat_detector, empty_sky(), 31, rates)
    trails = of_kind(frame, "trail")
    assert len(trails) >= 3 and any("glint_period_px" in t.detail for t in trails)
    assert all(t.width_px == CONDITIONS.seeing_fwhm_px for t in trails)
    assert all(t.amplitude == pytest.approx(parse_detail(t.detail)["snr_per_px"] * NOISE_E, rel=1e-5) for t in trails)
    excess = electrons(frame, flat_detector) - SKY_E
    model = trail_model(trails, FLAT.data_shape)
    # the whole frame is sky + the trails, with Poisson and read noise: nothing else, nothing missing
    pulls = (excess - model) / np.sqrt(NOISE_E**2 + model)
    assert abs(pulls.mean()) < 0.02 and pulls.std() == pytest.approx(1.0, abs=0.03)
    for k, trail in enumerate(trails):
        own = trail_model([trail], FLAT.data_shape)
        core = (own > 0.9 * own.max()) & (model - own < 1.0)  # the centre line, off the other trails
        noise = np.sqrt(NOISE_E**2 + own[core].mean()) / np.sqrt(core.sum())
        assert excess[core].mean() == pytest.approx(own[core].mean(), abs=5 * noise + 0.02 * trail.amplitude), k


def test_a_faint_trail_is_a_few_sigma_per_pixel(flat_detector):
    rates = ArtifactRates(trails_per_frame=2.0, trail_snr_range=(3.0, 3.0), trail_glint_fraction=0.0)
    frame = simulate(flat_detector, empty_sky(), 32, rates)
    trails = of_kind(frame, "trail")
    assert trails and all(t.amplitude == pytest.approx(3 * NOISE_E) for t in trails)
    excess = electrons(frame, flat_detector) - SKY_E
    model = trail_model(trails, FLAT.data_shape)
    line = model > 0.9 * 3 * NOISE_E
    assert line.sum() >= 30
    spread = 5 * np.sqrt(1 + 3 / NOISE_E) / np.sqrt(line.sum())  # in units of the sky noise
    assert excess[line].mean() / NOISE_E == pytest.approx(model[line].mean() / NOISE_E, abs=spread)


# --------------------------------------------------------------------------- dark charge


def test_flickering_columns_and_hot_pixels_change_between_exposures(flat_detector):
    rates = ArtifactRates(flicker_columns_per_frame=3.0, hot_pixels_per_mpix=300.0)
    first, second = simulate(flat_detector, empty_sky(), 21, rates), simulate(flat_detector, empty_sky(), 22, rates)
    one, two = electrons(first, flat_detector) - SKY_E, electrons(second, flat_detector) - SKY_E
    columns, elsewhere = of_kind(first, "flicker_column"), {int(a.x0) for a in of_kind(second, "flicker_column")}
    assert columns and all(c.y1 == FLAT.ny - 1 for c in columns)
    for column in columns:
        x, start = int(column.x0), int(column.y0)
        segment = slice(start, None)
        noise = 1.26 * np.sqrt(NOISE_E**2 + column.amplitude) / np.sqrt(FLAT.ny - start)  # of a median
        assert np.median(one[segment, x]) == pytest.approx(column.amplitude, abs=5 * noise + 2)
        if start >= 20:  # below the leaky defect the column is normal
            assert abs(np.median(one[:start, x])) < 5 * 1.26 * NOISE_E / np.sqrt(start) + 2
        if x not in elsewhere:
            assert np.median(one[segment, x] - two[segment, x]) == pytest.approx(column.amplitude,
                                                                                  abs=7 * noise + 3)
    pixels = of_kind(first, "hot_pixel")
    assert len(pixels) >= 5
    dark_one, dark_two = dark_charge(first), dark_charge(second)
    for pixel in pixels:
        x, y = int(pixel.x0), int(pixel.y0)
        assert one[y, x] == pytest.approx(dark_one[y, x], abs=5 * np.sqrt(NOISE_E**2 + dark_one[y, x]))
        assert abs(two[y, x] - dark_two[y, x]) < 5 * np.sqrt(NOISE_E**2 + dark_two[y, x])  # gone, or its own


def dark_charge(frame):
    """The extra charge of the frame's flickering columns and hot pixels, from their truth rows."""
    dark = np.zeros(FLAT.data_shape)
    for column in of_kind(frame, "flicker_column"):
        dark[int(column.y0) :, int(column.x0)] += column.amplitude
    for pixel in of_kind(frame, "hot_pixel"):
        dark[int(pixel.y0), int(pixel.x0)] += pixel.amplitude
    return dark


# --------------------------------------------------------------------------- optics and astrometry


def centroids(image, x, y, half=12):
    """Centre of mass of ``image`` in boxes of ``2 half + 1`` around the pixels nearest ``(x, y)``."""
    found = []
    for xi, yi in zip(x, y):
        cx, cy = int(np.rint(xi)), int(np.rint(yi))
        box = image[cy - half : cy + half + 1, cx - half : cx + half + 1]
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        found.append((cx + (box * xx).sum() / box.sum(), cy + (box * yy).sum() / box.sum()))
    return np.array(found)


GRID = np.meshgrid(np.arange(20, 237, 27.0), np.arange(20, 237, 27.0))


def truth_distortions(frame):
    """The frame's distortions rebuilt from their truth rows alone."""
    rows = of_kind(frame, "distortion")
    distortions = tuple(Distortion(r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0, r.width_px) for r in rows)
    assert all(r.amplitude == pytest.approx(np.hypot(d.shift_x, d.shift_y)) for r, d in zip(rows, distortions))
    return distortions


def test_distortion_moves_sources_by_its_displacement():
    x, y = (g.ravel() + 0.23 for g in GRID)
    sky = stars_at(x, y, 1e4)
    distortion = Distortion(x=128.0, y=110.0, shift_x=0.6, shift_y=-0.3, scale_px=50.0)
    dark = dataclasses.replace(CONDITIONS, sky_e=0.0)
    plain = sim.render_scene(sky, TRUE_WCS, FLAT.data_shape, dark, "r")
    warped = sim.render_scene(sky, TRUE_WCS, FLAT.data_shape, dark, "r", distortions=(distortion,))
    moved = centroids(warped, x, y) - centroids(plain, x, y)
    wx, wy = displaced(x, y, (distortion,))
    expected = np.column_stack([wx - x, wy - y])
    np.testing.assert_allclose(moved, expected, atol=0.01)
    assert np.hypot(*expected.T).max() > 0.5 and np.hypot(*expected.T).min() < 0.01


def test_distortion_in_a_frame_matches_its_truth_rows(flat_detector):
    x, y = (g.ravel() + 0.37 for g in GRID)
    sky, bright = stars_at(x, y, 5e5), dataclasses.replace(CONDITIONS, sky_e=50.0)
    rates = ArtifactRates(distortions_per_frame=3.0, distortion_shift_px=0.8, distortion_scale_px=40.0)
    warped = simulate(flat_detector, sky, 41, rates, bright)
    plain = simulate(flat_detector, sky, 42, None, bright)
    distortions = truth_distortions(warped)
    assert distortions
    wx, wy = displaced(x, y, distortions)
    moved = (centroids(electrons(warped, flat_detector) - 50.0, x, y)
             - centroids(electrons(plain, flat_detector) - 50.0, x, y))
    np.testing.assert_allclose(moved, np.column_stack([wx - x, wy - y]), atol=0.03)
    assert np.hypot(wx - x, wy - y).max() > 0.2


def test_distortion_moves_the_transients_with_the_sky(flat_detector):
    rates = ArtifactRates(distortions_per_frame=3.0, distortion_shift_px=0.8, distortion_scale_px=100.0)
    frame = simulate(flat_detector, empty_sky(), 43, rates, n_transients=6)
    distortions = truth_distortions(frame)
    assert distortions and len(frame.transients) == 6
    for t in frame.transients:  # x, y where they landed, RA/Dec their place on the sky
        tx, ty = TRUE_WCS.world_to_pixel_values(t.ra, t.dec)
        assert displaced(tx, ty, distortions) == pytest.approx((t.x, t.y), abs=2e-3)


def moment_ellipticity(image, x, y, half=8):
    """``(a**2 - b**2) / (a**2 + b**2)`` from the second moments in a box around ``(x, y)``."""
    cx, cy = int(np.rint(x)), int(np.rint(y))
    box = image[cy - half : cy + half + 1, cx - half : cx + half + 1]
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    mx, my = (box * xx).sum() / box.sum(), (box * yy).sum() / box.sum()
    qxx, qyy = (box * (xx - mx) ** 2).sum(), (box * (yy - my) ** 2).sum()
    qxy = (box * (xx - mx) * (yy - my)).sum()
    return np.hypot(qxx - qyy, 2 * qxy) / (qxx + qyy)


def test_bright_stars_get_an_odd_psf_and_faint_ones_do_not(flat_detector):
    x, y = (g.ravel()[::2] + 0.3 for g in GRID)
    flux = np.where(np.arange(x.size) % 2 == 0, 5e5, 5e3)
    sky, bright = stars_at(x, y, flux), dataclasses.replace(CONDITIONS, sky_e=50.0)
    rates = ArtifactRates(psf_mismatch_fraction=1.0, psf_mismatch_ellipticity=0.3, psf_mismatch_shift_px=0.5)
    odd = simulate(flat_detector, sky, 51, rates, bright)
    plain = simulate(flat_detector, sky, 52, None, bright)
    rows = of_kind(odd, "psf_mismatch")
    assert len(rows) == int((flux >= rates.psf_mismatch_min_flux_e).sum())
    odd_e, plain_e = electrons(odd, flat_detector) - 50.0, electrons(plain, flat_detector) - 50.0
    for row in rows:
        assert row.amplitude == pytest.approx(5e5)
        assert centroids(odd_e, [row.x0], [row.y0])[0] == pytest.approx((row.x1, row.y1), abs=0.02)
        assert centroids(plain_e, [row.x0], [row.y0])[0] == pytest.approx((row.x0, row.y0), abs=0.02)
        e = parse_detail(row.detail)["ellipticity"]
        expected = (1 - (1 - e) ** 2) / (1 + (1 - e) ** 2)
        assert moment_ellipticity(odd_e, row.x1, row.y1) > moment_ellipticity(plain_e, row.x0, row.y0) + expected / 2


def test_ghost_of_a_bright_star_is_reflected_through_the_centre(flat_detector):
    sky = stars_at([60.0, 200.0], [70.0, 40.0], [2e7, 1e5])
    rates = ArtifactRates(ghost_fraction=0.01, ghost_min_flux_e=1e6, ghost_radius_px=15.0)
    frame = simulate(flat_detector, sky, 61, rates)
    (ghost,) = of_kind(frame, "ghost")  # the faint star makes none
    assert (ghost.x0, ghost.y0) == pytest.approx((60.0, 70.0), abs=1e-6)
    assert (ghost.x1, ghost.y1) == pytest.approx((195.0, 185.0), abs=1e-6)
    assert ghost.width_px == 30.0 and ghost.amplitude == pytest.approx(0.01 * 2e7 / (np.pi * 15.0**2))
    yy, xx = np.mgrid[: FLAT.ny, : FLAT.nx]
    r = np.hypot(xx - ghost.x1, yy - ghost.y1)
    excess = electrons(frame, flat_detector) - SKY_E
    inner, outer = excess[r < 13], excess[(r > 17) & (r < 30)]
    noise = np.sqrt(NOISE_E**2 + ghost.amplitude) / np.sqrt(inner.size)
    assert inner.mean() == pytest.approx(ghost.amplitude, abs=5 * noise)
    assert abs(outer.mean()) < 5 * NOISE_E / np.sqrt(outer.size)


# --------------------------------------------------------------------------- what every frame has


def test_cosmic_rays_saturation_and_fixed_columns_get_truth_rows():
    spec = dataclasses.replace(FLAT, cosmic_ray_rate=5.0, n_hot_columns=2, n_dead_columns=1)
    detector = sim.make_detector(spec, rng(3))
    frame = simulate(detector, stars_at([128.2], [100.6], [5e7]), 71, ArtifactRates())
    rays = of_kind(frame, "cosmic_ray")
    assert 5 <= len(rays) <= 60  # Poisson of 5 / Mpix / s x 0.066 Mpix x 60 s = 20
    excess = electrons(frame, detector) - SKY_E
    starts = [(int(np.rint(r.x0)), int(np.rint(r.y0))) for r in rays]
    hit = [excess[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].max() > 5 * NOISE_E for x, y in starts
           if 0 <= x < spec.nx and 0 <= y < spec.ny and abs(x - 128) > 15 and x not in detector.dead_columns]
    assert len(hit) >= 3
    assert np.mean(hit) > 0.9
    (saturated,) = [r for r in of_kind(frame, "saturation") if r.x0 <= 128 <= r.x1 and r.y0 <= 101 <= r.y1]
    assert saturated.y1 - saturated.y0 > 2 * (saturated.x1 - saturated.x0 + 1)  # the bleed runs along the column
    assert saturated.amplitude == pytest.approx(spec.full_well_e) and parse_detail(saturated.detail)["pixels"] > 50
    assert frame.data[101, 128] >= spec.saturate_adu
    hot, dead = of_kind(frame, "hot_column"), of_kind(frame, "dead_column")
    assert [int(r.x0) for r in hot] == list(detector.hot_columns) and all(99 < r.amplitude < 301 for r in hot)
    assert [int(r.x0) for r in dead] == list(detector.dead_columns) and dead[0].amplitude == pytest.approx(0.1,
                                                                                                           rel=0.01)


def test_artifact_rows_carry_their_sky_positions():
    detector = sim.make_detector(FLAT, rng(0))
    offset = dataclasses.replace(CONDITIONS, offset_px=(5.0, -3.0), rotation_deg=0.2, wcs_error_px=(0.4, -0.3))
    frame = simulate(detector, empty_sky(), 81, ArtifactRates(trails_per_frame=5.0), offset)
    header_wcs = WCS(frame.header)
    assert frame.artifacts
    for row in frame.artifacts:
        hx, hy = header_wcs.world_to_pixel_values(row.ra1, row.dec1)
        assert (hx - 0.4, hy + 0.3) == pytest.approx((row.x1, row.y1), abs=1e-3)


# --------------------------------------------------------------------------- reproducibility and the night


def test_same_seed_same_artifacts_other_seed_others():
    sky = sim.make_sky_model(FIELD, FLAT, rng(2))
    detector = sim.make_detector(dataclasses.replace(FLAT, cosmic_ray_rate=1.2), rng(0))
    first, again, other = (simulate(detector, sky, seed, ARTIFACT_RICH, n_transients=2) for seed in (9, 9, 10))
    assert np.array_equal(first.data, again.data) and first.artifacts == again.artifacts
    assert first.transients == again.transients
    assert not np.array_equal(first.data, other.data) and first.artifacts != other.artifacts


def test_artifact_rich_night_writes_a_truth_row_per_artifact(tmp_path):
    rates = dataclasses.replace(ARTIFACT_RICH, trails_per_frame=3.0, distortions_per_frame=3.0,
                                distortion_scale_px=30.0)
    options = dict(n_fields=1, n_epochs=2, size=128, n_bias=0, n_flats=0, transients_per_frame=2, seed=6,
                   artifacts=rates)
    night = simulate_night(tmp_path / "a", **options)
    assert night.artifacts_path == tmp_path / "a" / "artifacts.csv"
    rows = load_artifacts(night.artifacts_path)
    assert list(rows[0]) == list(ARTIFACT_COLUMNS) and len(rows) == len(night.artifacts)
    for row, original in zip(rows, night.artifacts):
        assert row["kind"] == original["kind"] and row["file"] == original["file"]
        assert row["x0"] == pytest.approx(original["x0"], abs=1e-4)
        assert row["amplitude"] == pytest.approx(original["amplitude"], rel=1e-5)
    assert {p.name for p in night.paths["sci"]} == {row["file"] for row in rows}
    assert {"trail", "distortion", "hot_column", "dead_column"} <= {row["kind"] for row in rows}
    assert sum(night.summary["artifacts"].values()) == len(rows)
    truth = load_truth(night.truth_path)  # the transients' truth is as it always was
    assert list(truth[0]) == list(TRUTH_COLUMNS) and len(truth) == 2
    again = simulate_night(tmp_path / "b", **options, truth_path=tmp_path / "truth" / "night-b.csv")
    assert again.artifacts_path == tmp_path / "truth" / "night-b-artifacts.csv"
    assert night.artifacts_path.read_bytes() == again.artifacts_path.read_bytes()
    for first, second in zip(night.paths["sci"], again.paths["sci"], strict=True):
        assert first.read_bytes() == second.read_bytes()
        assert fits.getheader(first)["IMAGETYP"] == "object"
