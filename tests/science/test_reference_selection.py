"""Which frames make a reference: the best single frame, or the frames of a co-add."""

import math

import pytest

from dagster_project.science.reference_selection import (
    choose_coadd_frames,
    depth_gain_mag,
    frame_information,
)


def quality(fwhm=3.0, depth=400.0, stars=30, masked=0.01, ellipticity=0.05):
    return {"fwhm_px": fwhm, "depth_5sigma_e": depth, "n_psf_stars": stars, "masked_fraction": masked,
            "ellipticity": ellipticity, "sky_rms_e": 12.0}


def test_a_one_frame_reference_is_the_most_informative_good_frame():
    frames = [quality(3.0, 400), quality(2.4, 300, stars=3), quality(2.6, 350), quality(2.2, 200, masked=0.5)]
    choice = choose_coadd_frames(frames, max_frames=1)
    assert choice.indices == (2,) and choice.anchor == 2
    assert set(choice.excluded) == {0, 1, 3}
    assert choose_coadd_frames([quality(stars=1)], max_frames=1) is None


def test_coadd_takes_every_good_frame_most_informative_first_and_anchors_on_the_best_seeing():
    frames = [quality(3.0, 400), quality(2.5, 350), quality(3.4, 250), quality(2.8, 500, ellipticity=0.5),
              quality(2.0, 900)]
    choice = choose_coadd_frames(frames)
    assert choice.indices == (2, 1, 0, 4)
    assert choice.anchor == 4
    assert choice.excluded == {3: "ellipticity 0.50 (> 0.3)"}
    assert "4 of 4 eligible frame(s) out of 5" in choice.reason


def test_coadd_keeps_at_most_max_frames_and_says_why_the_rest_were_left():
    frames = [quality(depth=100.0 + 10 * i) for i in range(25)]
    choice = choose_coadd_frames(frames, max_frames=20)
    assert choice.indices == tuple(range(20))
    assert set(choice.excluded) == set(range(20, 25))
    assert all("less informative" in why for why in choice.excluded.values())
    with pytest.raises(ValueError, match="max_frames"):
        choose_coadd_frames(frames, max_frames=0)
    assert choose_coadd_frames([quality(fwhm=float("nan"))]) is None


def test_information_adds_up_as_the_proper_coadd_promises():
    one = quality(depth=500.0)
    assert frame_information(one) == pytest.approx(1e-4)
    assert depth_gain_mag([one], [one] * 4) == pytest.approx(2.5 * math.log10(2.0))
    assert depth_gain_mag([one], [one]) == 0.0
    # without a depth, the background-limited S/N^2 of a Gaussian PSF: 1 / (4 pi sigma_psf^2 sky_rms^2)
    no_depth = {"fwhm_px": 2.3548, "sky_rms_e": 10.0}
    assert frame_information(no_depth) == pytest.approx(1 / (4 * math.pi * 100), rel=1e-4)
    assert depth_gain_mag([], [one]) == math.inf
    assert depth_gain_mag([one], [{}]) == -math.inf
