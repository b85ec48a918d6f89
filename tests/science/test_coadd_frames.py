"""Co-added references from calibrated frames: registration, flux scale, depth, and the difference they give."""

import numpy as np
import pytest
from astropy.stats import mad_std
from astropy.wcs import WCS

from dagster_project.science.coadd import coadd_frames
from dagster_project.science.difference import DifferenceParams, difference_images
from dagster_project.science.images import ImagePlanes
from dagster_project.science.psf import PSFError
from dagster_project.science.psf_models import render_point_sources

SIZE = 256
SKY = 200.0
READ_NOISE = 5.0
rng_stars = np.random.default_rng(42)
STAR_X, STAR_Y = rng_stars.uniform(12, SIZE - 12, (2, 120))
STAR_FLUX = 10 ** rng_stars.uniform(3.6, 5.6, 120)
PARAMS = DifferenceParams(bkg_box_size=32, star_snr_min=30.0, fft_workers=1)


def exposure(rng, fwhm: float, dx: float = 0.0, dy: float = 0.0, transparency: float = 1.0,
             extra: tuple[float, float, float] | None = None) -> ImagePlanes:
    """A calibrated frame (e-, sky included) of the star field, pointed (dx, dy) px off, with its TAN WCS."""
    x, y, flux = STAR_X + dx, STAR_Y + dy, STAR_FLUX * transparency
    if extra is not None:
        x, y, flux = np.append(x, extra[0] + dx), np.append(y, extra[1] + dy), np.append(flux, extra[2])
    scene = render_point_sources((SIZE, SIZE), x, y, flux, fwhm, beta=3.0)
    expected = SKY + scene
    data = rng.poisson(expected).astype(np.float32) + rng.normal(0, READ_NOISE, (SIZE, SIZE)).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [SIZE / 2 + dx, SIZE / 2 + dy]
    wcs.wcs.cd = [[-1.1e-4, 0.0], [0.0, 1.1e-4]]
    return ImagePlanes(data, (expected + READ_NOISE**2).astype(np.float32), np.zeros((SIZE, SIZE), np.uint16),
                       wcs.to_header())


@pytest.fixture(scope="module")
def epoch():
    rng = np.random.default_rng(11)
    specs = [(2.6, 0.0, 0.0, 1.0), (3.0, 4.3, -2.7, 0.8), (3.4, -3.1, 5.2, 1.1), (2.8, 1.6, 2.2, 0.9)]
    return [exposure(rng, fwhm, dx, dy, t) for fwhm, dx, dy, t in specs], specs


@pytest.fixture(scope="module")
def result(epoch):
    frames, _ = epoch
    return coadd_frames(frames, PARAMS, anchor=0)


def test_each_frame_is_registered_and_scaled_to_the_anchor(result, epoch):
    _, specs = epoch
    assert result.quality["n_inputs"] == 4
    for figures, (_, _, _, transparency) in zip(result.inputs[1:], specs[1:]):
        assert figures["flux_scale"] == pytest.approx(transparency, rel=0.02)
        assert figures["registration_rms_px"] < 0.1
        assert figures["registration_n_matched"] >= 10
    assert result.inputs[0]["flux_scale"] == 1.0 and result.inputs[0]["registration_rms_px"] is None
    assert 0 < result.quality["registration_rms_px"] < 0.1
    assert sum(f["weight"] for f in result.inputs) == pytest.approx(1.0)


def test_the_coadd_keeps_the_anchors_fluxes_and_is_deeper(result, epoch):
    frames, specs = epoch
    planes = result.planes
    assert planes.header["NCOMBINE"] == 4 and planes.header["COADDED"]
    assert WCS(planes.header).wcs.crpix[0] == pytest.approx(SIZE / 2)
    # aperture sums of bright stars: the anchor's electrons (the anchor's own sums, sky subtracted, as yardstick)
    anchor = frames[0].data - np.median(frames[0].data)
    bright = [i for i in np.argsort(STAR_FLUX)[-20:] if 15 < STAR_X[i] < SIZE - 15 and 15 < STAR_Y[i] < SIZE - 15]
    y, x = np.indices(planes.shape)
    ratios = []
    for i in bright:
        inside = np.hypot(x - STAR_X[i], y - STAR_Y[i]) < 8
        ratios.append(planes.data[inside].sum() / anchor[inside].sum())
    assert np.median(ratios) == pytest.approx(1.0, abs=0.02)
    # depth: the information of the frames adds up, so the gain over the anchor is about
    # 2.5 log10 sqrt(sum_j (F_j^2 / sigma_j^2 / fwhm_j^2) / (1 / sigma_0^2 / fwhm_0^2))
    info = [(t**2) / (f["sigma_e"] ** 2 * fwhm**2) for f, (fwhm, _, _, t) in zip(result.inputs, specs)]
    expected_gain = 2.5 * np.log10(np.sqrt(sum(info) / info[0]))
    assert result.quality["depth_gain_mag"] == pytest.approx(expected_gain, abs=0.12)
    assert result.quality["depth_gain_mag"] > 0.4
    assert 2.4 < result.quality["fwhm_px"] < 3.4
    far = np.min(np.hypot(x[..., None] - STAR_X, y[..., None] - STAR_Y), axis=-1) > 10
    # resampling smooths the registered frames' noise a little: per pixel a bit below the white-noise figure
    assert 0.75 * result.coadd.sigma < mad_std(planes.data[far]) < 1.05 * result.coadd.sigma
    assert result.coadd.n_rejected.sum() < 50  # different seeing leaves the star cores alone


def test_a_transient_is_found_at_higher_significance_against_the_coadd(epoch, result):
    frames, _ = epoch
    rng = np.random.default_rng(99)
    transient = (90.3, 170.7, 1500.0)
    new = exposure(rng, 2.9, dx=2.2, dy=-1.4, extra=transient)
    single = difference_images(new, frames[0], PARAMS)
    coadded = difference_images(new, result.planes, PARAMS)
    x, y = transient[0] + 2.2, transient[1] - 1.4

    def peak(diff):
        window = diff.zogy.S_corr[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4]
        return float(np.nanmax(window))

    assert peak(coadded) > 1.1 * peak(single)
    assert peak(coadded) > 5
    assert coadded.quality["scorr_std"] == pytest.approx(1.0, abs=0.15)
    found = coadded.candidates[~coadded.candidates["is_negative"]]
    assert np.min(np.hypot(found["x"] - x, found["y"] - y)) < 1.5


def test_a_frame_without_stars_is_named(epoch):
    frames, _ = epoch
    empty = ImagePlanes(np.random.default_rng(1).normal(SKY, 15, (SIZE, SIZE)).astype(np.float32),
                        np.full((SIZE, SIZE), SKY + 25, np.float32), np.zeros((SIZE, SIZE), np.uint16),
                        frames[0].header)
    with pytest.raises(PSFError, match="frame 1"):
        coadd_frames([frames[0], empty], PARAMS)
    with pytest.raises(ValueError, match="anchor"):
        coadd_frames(frames, PARAMS, anchor=7)
