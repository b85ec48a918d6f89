"""The simulator's transient classes: supernovae on galaxies, variables on stars, hostless transients, in the truth."""

import dataclasses

import numpy as np
import pytest
from astropy.wcs import WCS

from dagster_project.simulation import telescope as sim
from dagster_project.simulation.artifacts import ARTIFACT_RICH, ArtifactRates, Distortion, displaced
from dagster_project.simulation.night import TRUTH_COLUMNS, load_truth, simulate_night

# A uniform flat, no fixed defects and no cosmic rays: photometry of a star measures its light only.
FLAT = sim.DetectorSpec(nx=256, ny=256, overscan=16, cosmic_ray_rate=0.0, n_hot_columns=0, n_dead_columns=0,
                        flat_pixel_rms=0.0, flat_vignetting=0.0)
FIELD = sim.FieldSpec("F001", ra_deg=30.0, dec_deg=-20.0)
CONDITIONS = sim.EpochConditions(mjd=61000.0, seeing_fwhm_px=2.6, sky_e=900.0)
TRUE_WCS = WCS(sim.wcs_header(FIELD, FLAT))  # CONDITIONS has no pointing offset or rotation
EXPTIME = CONDITIONS.exptime


def rng(seed):
    return np.random.default_rng(seed)


def stars_at(x, y, flux):
    """A sky of stars landing at true pixels ``(x, y)`` with ``flux`` e- in ``r`` over the exposure."""
    ra, dec = TRUE_WCS.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    flux = np.asarray(flux, float)
    return sim.SkyModel(star_ra=np.asarray(ra), star_dec=np.asarray(dec), star_rate=flux / EXPTIME,
                        star_colour=np.zeros(flux.shape))


def electrons(frame, detector):
    """Detected electrons of the data section: the bias pattern, the frame's level (overscan) and the flat removed."""
    spec = detector.spec
    raw = frame.data.astype(float) - detector.bias_structure_adu
    level = np.median(raw[:, spec.nx :])
    return (raw[:, : spec.nx] - level) * spec.gain / detector.flat


@pytest.fixture(scope="module")
def flat_detector():
    return sim.make_detector(FLAT, rng(0))


@pytest.fixture(scope="module")
def field_sky():
    """A realistic sky of stars and galaxies on a frame with every detector effect."""
    spec = sim.DetectorSpec(nx=384, ny=384, overscan=16)
    return spec, sim.make_detector(spec, rng(7)), sim.make_sky_model(FIELD, spec, rng(1))


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("artifacts", [None, ARTIFACT_RICH])
def test_zero_variable_fraction_is_the_default_frame_with_the_same_draws(field_sky, artifacts):
    spec, detector, sky = field_sky
    plain_rng, zero_rng = rng(5), rng(5)
    plain = sim.simulate_science_frame(detector, FIELD, sky, CONDITIONS, "r", plain_rng, n_transients=12,
                                       artifacts=artifacts)
    zero = sim.simulate_science_frame(detector, FIELD, sky, CONDITIONS, "r", zero_rng, n_transients=12,
                                      artifacts=artifacts, variable_fraction=0.0)
    assert np.array_equal(plain.data, zero.data) and plain.transients == zero.transients
    assert plain.header.tostring() == zero.header.tostring() and plain.artifacts == zero.artifacts
    assert plain_rng.bit_generator.state == zero_rng.bit_generator.state  # not one extra draw
    kinds = {t.kind for t in plain.transients}
    assert kinds == {"supernova", "transient"}  # host_fraction 0.3 of 12, and galaxies on the frame
    for t in plain.transients:
        assert (t.host_index >= 0) == (t.kind == "supernova")
        assert (t.host_ra is None) == (t.kind == "transient")


# --------------------------------------------------------------------------- variables


def test_variables_sit_only_on_reference_stars_far_from_saturation():
    #  too faint for the reference, a good one, one that saturates
    sky = stars_at([60.0, 128.3, 190.0], [60.0, 127.6, 190.0], [60.0, 3e4, 3e6])
    spec = FLAT
    assert sim.variable_star_candidates(sky, "r", CONDITIONS, spec.read_noise_e, spec.full_well_e).tolist() == [1]
    assert sim.variable_star_candidates(sky, "r", CONDITIONS, spec.read_noise_e, spec.full_well_e,
                                        exclude=[1]).tolist() == []


def test_a_variable_is_its_star_brightened_by_the_transient_flux(flat_detector):
    star_flux = 3e4
    sky = stars_at([128.3], [127.6], [star_flux])
    frame = sim.simulate_science_frame(flat_detector, FIELD, sky, CONDITIONS, "r", rng(3), n_transients=1,
                                       snr_range=(80.0, 80.0), variable_fraction=1.0)
    (t,) = frame.transients
    assert (t.kind, t.host_index) == ("variable", 0)
    sx, sy = sim.star_pixels(sky, TRUE_WCS)
    assert np.hypot(t.x - sx[0], t.y - sy[0]) < 0.1  # on the star's true position
    assert (t.host_ra, t.host_dec) == pytest.approx((sky.star_ra[0], sky.star_dec[0]), abs=1e-12)
    assert (t.ra, t.dec) == pytest.approx((sky.star_ra[0], sky.star_dec[0]), abs=1e-9)
    image = electrons(frame, flat_detector)
    yy, xx = np.mgrid[: FLAT.ny, : FLAT.nx]
    r = np.hypot(xx - sx[0], yy - sy[0])
    aperture, annulus = r < 12, (r > 30) & (r < 50)
    measured = (image[aperture] - np.median(image[annulus])).sum()
    noise = np.sqrt(aperture.sum() * (CONDITIONS.sky_e + FLAT.read_noise_e**2) + star_flux + t.flux_e)
    assert t.flux_e > 10 * noise  # the brightening is well measured...
    assert measured - star_flux == pytest.approx(t.flux_e, abs=4 * noise)  # ...and is the transient's flux


def test_variables_move_with_their_star_under_a_local_distortion(flat_detector):
    x, y = np.meshgrid(np.linspace(50.0, 206.0, 5), np.linspace(50.0, 206.0, 5))
    sky = stars_at(x.ravel(), y.ravel(), np.full(x.size, 3e4))
    rates = ArtifactRates(distortions_per_frame=3.0, distortion_shift_px=0.8, distortion_scale_px=100.0)
    frame = sim.simulate_science_frame(flat_detector, FIELD, sky, CONDITIONS, "r", rng(43), n_transients=6,
                                       variable_fraction=1.0, artifacts=rates)
    distortions = tuple(Distortion(a.x0, a.y0, a.x1 - a.x0, a.y1 - a.y0, a.width_px)
                        for a in frame.artifacts if a.kind == "distortion")
    assert distortions and {t.kind for t in frame.transients} == {"variable"}
    sx, sy = sim.star_pixels(sky, TRUE_WCS, distortions)
    ux, uy = sim.star_pixels(sky, TRUE_WCS)
    assert len({t.host_index for t in frame.transients}) == 6  # one variable per star
    for t in frame.transients:
        assert np.hypot(t.x - sx[t.host_index], t.y - sy[t.host_index]) < 1e-3
        assert displaced(ux[t.host_index], uy[t.host_index], distortions) == pytest.approx((t.x, t.y), abs=1e-3)


def test_variable_fraction_takes_its_share_before_the_galaxies(field_sky):
    spec, detector, sky = field_sky
    eligible = sim.variable_star_candidates(sky, "r", CONDITIONS, spec.read_noise_e, spec.full_well_e)
    frame = sim.simulate_science_frame(detector, FIELD, sky, CONDITIONS, "r", rng(8), n_transients=6,
                                       host_fraction=0.3, variable_fraction=1.0)
    assert [t.kind for t in frame.transients] == ["variable"] * 6  # 8 eligible stars inside the edges
    assert len({t.host_index for t in frame.transients}) == 6 and {t.host_index for t in frame.transients} <= set(
        eligible.tolist())
    crowded = sim.simulate_science_frame(detector, FIELD, sky, CONDITIONS, "r", rng(8), n_transients=12,
                                         variable_fraction=1.0)
    # one variable per star: the transients beyond the eligible stars stay hostless
    assert [t.kind for t in crowded.transients] == ["variable"] * 8 + ["transient"] * 4


def test_variable_fraction_out_of_range_is_refused(flat_detector, tmp_path):
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="variable_fraction"):
            sim.simulate_science_frame(flat_detector, FIELD, stars_at([100.0], [100.0], [3e4]), CONDITIONS, "r",
                                       rng(0), n_transients=2, variable_fraction=bad)
        with pytest.raises(ValueError, match="variable_fraction"):
            simulate_night(tmp_path / "night", size=128, n_bias=0, n_flats=0, variable_fraction=bad)
    assert not (tmp_path / "night").exists() or not list((tmp_path / "night").iterdir())  # nothing written


# --------------------------------------------------------------------------- supernovae


def test_supernovae_lie_within_a_few_half_light_radii_of_their_host(field_sky):
    spec, detector, sky = field_sky
    conditions = dataclasses.replace(CONDITIONS, offset_px=(6.0, -4.0), rotation_deg=0.2)
    frame = sim.simulate_science_frame(detector, FIELD, sky, conditions, "r", rng(4), n_transients=12,
                                       host_fraction=1.0)
    wcs = WCS(sim.wcs_header(FIELD, spec, conditions.offset_px, conditions.rotation_deg))
    gx, gy = wcs.world_to_pixel_values(sky.galaxy_ra, sky.galaxy_dec)
    r_eff_px = sky.galaxy_r_eff_arcsec / spec.pixel_scale
    assert [t.kind for t in frame.transients] == ["supernova"] * 12
    for t in frame.transients:
        g = t.host_index
        assert (t.host_ra, t.host_dec) == pytest.approx((sky.galaxy_ra[g] % 360, sky.galaxy_dec[g]), abs=1e-12)
        # offsets are normal with sigma half a half-light radius per axis: 3 r_eff is 6 sigma
        assert np.hypot(t.x - gx[g], t.y - gy[g]) < 3 * r_eff_px[g]


# --------------------------------------------------------------------------- truth on disk


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_night(tmp_path_factory.mktemp("classes"), n_fields=1, n_epochs=3, size=512, n_bias=0,
                          n_flats=0, transients_per_frame=10, seed=5, variable_fraction=0.4)


def test_kinds_are_written_and_read_back(night):
    rows = load_truth(night.truth_path)
    assert list(rows[0]) == list(TRUTH_COLUMNS) and len(rows) == len(night.truth) == 20
    assert {row["kind"] for row in rows} == {"supernova", "variable", "transient"}
    assert night.summary["transient_kinds"] == {k: sum(r["kind"] == k for r in rows) for k in
                                                {r["kind"] for r in rows}}
    for row, original in zip(rows, night.truth, strict=True):
        assert (row["kind"], row["host_index"]) == (original["kind"], original["host_index"])
        assert (row["host_index"] >= 0) == (row["kind"] != "transient")
        if row["kind"] == "transient":
            assert np.isnan(row["host_ra"]) and np.isnan(row["host_dec"]) and np.isnan(original["host_ra"])
        else:
            assert (row["host_ra"], row["host_dec"]) == pytest.approx((original["host_ra"], original["host_dec"]),
                                                                      abs=1e-8)
    cells = night.truth_path.read_text().splitlines()[1:]
    assert all(line.endswith(",-1,,") == (",transient," in line) for line in cells)  # no host: empty cells


def test_truth_hosts_are_where_the_classes_say(night):
    rows = load_truth(night.truth_path)
    for row in rows:
        separation = np.hypot((row["ra"] - row["host_ra"]) * np.cos(np.deg2rad(row["dec"])),
                              row["dec"] - row["host_dec"]) * 3600.0
        if row["kind"] == "variable":
            assert separation < 0.05 * 0.5  # on its star: within 0.05 px of 0.5"
        elif row["kind"] == "supernova":
            assert separation < 3 * 4.0  # within 3 of the largest half-light radii (4")
    stars = [(row["file"], row["host_index"]) for row in rows if row["kind"] == "variable"]
    assert len(stars) == len(set(stars))  # one variable per star and frame


def test_truth_written_before_classes_still_loads_as_unknown(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("file,field,band,epoch,ra,dec,x,y,flux_e,snr_optimal\n"
                    "a.fits,F001,r,1,30.00000000,-20.00000000,10.0000,20.0000,1000.000,12.0000\n")
    (row,) = load_truth(path)
    assert list(row) == list(TRUTH_COLUMNS)
    assert (row["kind"], row["host_index"], row["epoch"], row["flux_e"]) == ("unknown", -1, 1, 1000.0)
    assert np.isnan(row["host_ra"]) and np.isnan(row["host_dec"])
