"""HEALPix index and cone search: exactly the rows within the radius, anywhere on the sky."""

import astropy.units as u
import numpy as np
import pytest
import sqlalchemy as sa
from astropy.coordinates import SkyCoord
from astropy_healpix import HEALPix
from hypothesis import given, settings
from hypothesis import strategies as st

from dagster_project.catalog import Candidate, Observation, cone_search, queries
from dagster_project.catalog.healpix import (
    HEALPIX_ORDER,
    angular_separation_deg,
    cone_index_ranges,
    healpix_index,
    healpix_indices,
    search_order,
)
from tests.catalog import T0, calibrated

ra_st = st.floats(0, 360, exclude_max=True)
dec_st = st.floats(-90, 90)


def test_index_is_nested_order_12():
    grid = HEALPix(nside=4096, order="nested")
    for ra, dec in [(0.0, 0.0), (359.9999, -89.9999), (123.456, 78.9), (45.0, 90.0)]:
        assert healpix_index(ra, dec) == int(grid.lonlat_to_healpix(ra * u.deg, dec * u.deg))
    assert HEALPIX_ORDER == 12
    # nested: the order-k parent is an integer division by 4**(12-k)
    coarse = HEALPix(nside=2**5, order="nested")
    assert healpix_index(123.456, 78.9) >> 2 * (12 - 5) == int(coarse.lonlat_to_healpix(123.456 * u.deg,
                                                                                        78.9 * u.deg))


def test_search_order_gets_coarser_with_radius():
    assert search_order(1 / 3600) == 12
    assert [search_order(r) for r in (0.01, 0.1, 1.0, 10.0, 90.0)] == sorted(
        [search_order(r) for r in (0.01, 0.1, 1.0, 10.0, 90.0)], reverse=True)
    assert search_order(170.0) == 0
    assert cone_index_ranges(0.0, 0.0, 180.0) is None
    with pytest.raises(ValueError):
        cone_index_ranges(0.0, 0.0, -1.0)


def test_separation_matches_astropy():
    rng = np.random.default_rng(1)
    ra1, ra2 = rng.uniform(0, 360, (2, 1000))
    dec1, dec2 = np.degrees(np.arcsin(rng.uniform(-1, 1, (2, 1000))))
    expected = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    np.testing.assert_allclose(angular_separation_deg(ra1, dec1, ra2, dec2), expected, atol=1e-10)


@settings(max_examples=300, deadline=None)
@given(ra=ra_st, dec=dec_st, radius=st.floats(1e-5, 179.0), bearing=st.floats(0, 360),
       fraction=st.floats(0, 1))
def test_every_point_inside_a_cone_falls_in_its_index_ranges(ra, dec, radius, bearing, fraction):
    """The prefilter never loses a row: a point at any distance ≤ radius is inside the ranges."""
    centre = SkyCoord(ra, dec, unit="deg")
    point = centre.directional_offset_by(bearing * u.deg, fraction * radius * u.deg)
    index = healpix_index(point.ra.deg % 360, point.dec.deg)
    ranges = cone_index_ranges(ra, dec, radius)
    assert any(start <= index < stop for start, stop in ranges)
    assert len(ranges) <= 100  # an SQL predicate of reasonable size


def random_sky(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the sphere, plus crowds at RA 0/360 and at both poles."""
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    k = n // 4
    ra[:k] = np.concatenate([rng.uniform(0, 0.5, k // 2), rng.uniform(359.5, 360, k - k // 2)]) % 360
    dec[:k] = rng.uniform(-5, 5, k)
    ra[k:2 * k] = rng.uniform(0, 360, k)
    dec[k:2 * k] = np.where(rng.random(k) < 0.5, 1, -1) * rng.uniform(88.5, 90, k)
    return ra, dec


def insert_observations(session, ra: np.ndarray, dec: np.ndarray) -> None:
    survey = queries.get_or_create_survey(session, "test")
    session.execute(sa.insert(Observation), [
        dict(survey_id=survey.id, observation_id=f"obs-{i}", field_name="F", ra=float(r), dec=float(d),
             healpix_index=int(h), observation_time=T0, night="2026-11-21", filter_band="r", exposure_time=1.0,
             fits_url="/x", status="ingested")
        for i, (r, d, h) in enumerate(zip(ra, dec, healpix_indices(ra, dec), strict=True))])


CONES = [
    (0.0, 0.0, 1 / 3600), (0.1, 0.0, 0.3), (359.9, 1.0, 0.5), (0.0, 0.0, 2.0), (180.0, 0.0, 5.0),
    (10.0, 89.9, 0.5), (200.0, 90.0, 1.5), (0.0, -90.0, 1.0), (300.0, -89.5, 3.0), (45.0, 30.0, 20.0),
    (359.99, -45.0, 60.0), (120.0, 10.0, 120.0), (0.0, 0.0, 179.5), (0.0, 0.0, 180.0),
]


def test_cone_search_equals_brute_force(catalog):
    rng = np.random.default_rng(12)
    ra, dec = random_sky(rng, 4000)
    with catalog.session() as s:
        insert_observations(s, ra, dec)
    truth = SkyCoord(ra, dec, unit="deg")
    with catalog.session() as s:
        for cone_ra, cone_dec, radius in CONES + [tuple(x) for x in zip(ra[:5], dec[:5], [0.0, 1e-4, 0.01, 0.2, 1.0])]:
            found = cone_search(s, Observation, cone_ra, cone_dec, radius)
            separation = truth.separation(SkyCoord(cone_ra, cone_dec, unit="deg")).deg
            expected = {f"obs-{i}" for i in np.flatnonzero(separation <= radius)}
            assert {o.observation_id for o in found} == expected, (cone_ra, cone_dec, radius)
            distances = angular_separation_deg(cone_ra, cone_dec, [o.ra for o in found], [o.dec for o in found])
            assert list(distances) == sorted(distances)  # nearest first


def test_cone_search_on_candidates_with_extra_filters(catalog):
    with catalog.session() as s:
        ref_obs = calibrated(s, 1)
        ref = queries.record_reference(s, "F001", "r", ref_obs, "/ref", 1.0, 21.0, "first", "d")
        run = queries.start_difference_run(s, calibrated(s, 2), ref, {}, "d")
        queries.replace_candidates(s, run, [dict(ra=359.9999, dec=0.0, pixel_x=0.0, pixel_y=0.0, snr=3.0),
                                            dict(ra=0.0001, dec=0.0, pixel_x=1.0, pixel_y=0.0, snr=30.0),
                                            dict(ra=1.0, dec=0.0, pixel_x=2.0, pixel_y=0.0, snr=30.0)])
        near_zero = cone_search(s, Candidate, 0.0, 0.0, 1 / 3600)
        assert sorted(c.ra for c in near_zero) == [0.0001, 359.9999]
        bright = cone_search(s, Candidate, 0.0, 0.0, 1 / 3600, Candidate.snr > 10)
        assert [c.ra for c in bright] == [0.0001]


def test_index_follows_the_position_on_every_orm_write(catalog):
    with catalog.session() as s:
        obs = queries.create_observation(
            s, survey=queries.get_or_create_survey(s, "test"), observation_id="o", field_name="F", ra=10.0,
            dec=20.0, observation_time=T0, night="2026-11-21", filter_band="r", exposure_time=1.0, fits_url="/x")
        assert obs.healpix_index == healpix_index(10.0, 20.0)
    with catalog.session() as s:
        moved = s.get(Observation, obs.id)
        moved.ra, moved.dec = 250.0, -60.0  # e.g. a refined astrometric solution
    with catalog.session() as s:
        assert s.get(Observation, obs.id).healpix_index == healpix_index(250.0, -60.0)
        assert [o.id for o in cone_search(s, Observation, 250.0, -60.0, 1 / 3600)] == [obs.id]
