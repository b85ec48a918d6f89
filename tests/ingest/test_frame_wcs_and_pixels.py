"""What ingest reads of a frame's WCS and pixels, from the bytes as written, agrees with astropy reading all of it."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from dagster_project.ingest import frames
from dagster_project.ingest.fits_structure import InvalidFitsFile, inspect_fits_structure

NX, NY = 120, 90
TAN = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.1, "CRVAL2": 2.2, "CRPIX1": 20.0, "CRPIX2": 70.0}  # off-centre
CD = {"CD1_1": -1.1e-4, "CD1_2": 1e-6, "CD2_1": 2e-6, "CD2_2": 1.1e-4}
FLAVOURS = {
    "tan_cd_icrs": {**TAN, **CD, "RADESYS": "ICRS"},
    "cdelt_crota_fk5": {**TAN, "CDELT1": -1.2e-4, "CDELT2": 1.2e-4, "CROTA2": 12.0, "RADESYS": "FK5", "EQUINOX": 2000.0},
    "fk4_b1950": {**TAN, **CD, "RADESYS": "FK4", "EQUINOX": 1950.0},
    "sip": {**TAN, **CD, "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "A_ORDER": 2, "B_ORDER": 2,
            "A_2_0": 3e-5, "A_0_2": -2e-5, "B_1_1": 4e-5, "B_2_0": 1e-5},
    "tpv": {**TAN, **CD, "CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "PV1_0": 0.0, "PV1_1": 1.0, "PV1_4": 2e-3,
            "PV2_0": 0.0, "PV2_1": 1.0, "PV2_5": -1e-3},
    "galactic": {"CTYPE1": "GLON-TAN", "CTYPE2": "GLAT-TAN", "CRVAL1": 30.0, "CRVAL2": -5.0, "CRPIX1": 60.5,
                 "CRPIX2": 45.5, **CD},
}


def _frame(tmp_path, cards: dict, data=None):
    header = fits.Header()
    header["OBJECT"] = "F001"
    header["COMMENT"] = "CRVAL1 = 0 in a comment is no WCS card"
    header["HISTORY"] = "written by the test"
    for key, value in cards.items():
        header[key] = value
    for i in range(40):
        header[f"JUNK{i}"] = i  # a header's many cards that have nothing to do with its WCS
    pixels = np.random.default_rng(3).normal(100, 5, (NY, NX)).astype(np.float32) if data is None else data
    fits.PrimaryHDU(pixels, header=header).writeto(tmp_path / "f.fits")
    return tmp_path / "f.fits"


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_the_pointing_from_the_wcs_cards_alone_is_astropys_from_the_whole_header(tmp_path, flavour):
    path = _frame(tmp_path, FLAVOURS[flavour])
    ra, dec, scale = frames._pointing(inspect_fits_structure(path).primary.card_images, NX, NY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = WCS(fits.getheader(path), naxis=2).celestial
    sky = full.pixel_to_world((NX - 1) / 2, (NY - 1) / 2).icrs
    assert ra == pytest.approx(sky.ra.deg % 360, abs=1e-10) and dec == pytest.approx(sky.dec.deg, abs=1e-10)
    assert scale == pytest.approx(np.mean(proj_plane_pixel_scales(full)) * 3600, rel=1e-12)


def test_a_header_without_a_celestial_wcs_has_no_pointing(tmp_path):
    path = _frame(tmp_path, {"CTYPE1": "LINEAR", "CTYPE2": "LINEAR"})
    assert frames._pointing(inspect_fits_structure(path).primary.card_images, NX, NY) is None


def test_pixels_are_judged_in_physical_values(tmp_path):
    """BLANK integer pixels are undefined; BSCALE/BZERO apply (a frame that scales to a constant is constant)."""
    raw = np.random.default_rng(4).integers(-1000, 1000, (NY, NX)).astype(np.int16)
    blank = fits.PrimaryHDU(np.full((NY, NX), -32768, np.int16))
    blank.header["BLANK"] = -32768
    blank.writeto(tmp_path / "blank.fits")
    with pytest.raises(InvalidFitsFile, match="only 0% of sampled pixels are finite"):
        frames._check_pixels(tmp_path / "blank.fits", inspect_fits_structure(tmp_path / "blank.fits"))
    flattened = fits.PrimaryHDU(raw)
    flattened.header["BSCALE"], flattened.header["BZERO"] = 0.0, 7.0
    flattened.writeto(tmp_path / "flat.fits", output_verify="silentfix")
    with pytest.raises(InvalidFitsFile, match="pixel data are constant"):
        frames._check_pixels(tmp_path / "flat.fits", inspect_fits_structure(tmp_path / "flat.fits"))
    fits.PrimaryHDU(raw).writeto(tmp_path / "good.fits")
    frames._check_pixels(tmp_path / "good.fits", inspect_fits_structure(tmp_path / "good.fits"))
    with open(tmp_path / "good.fits", "rb") as fh:
        sample = frames._pixel_sample(fh, inspect_fits_structure(tmp_path / "good.fits").primary)
    assert np.array_equal(sample, raw[::max(1, NY // 64), ::max(1, NX // 64)])
