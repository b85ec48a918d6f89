"""PNG previews: size, orientation, masking and degenerate input."""

import io

import numpy as np
import pytest
from PIL import Image

from dagster_project.rendering.preview import MASKED_RGB, cutout_triplet_png, image_preview_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def sky(shape, seed=0):
    return np.random.default_rng(seed).normal(1000.0, 30.0, shape)


@pytest.mark.parametrize("shape, max_size, expected", [((600, 1000), 512, (300, 500)), ((2048, 2048), 512, (512, 512)),
                                                         ((300, 200), 512, (300, 200)), ((513, 100), 512, (256, 50))])
def test_preview_is_block_reduced_to_fit(shape, max_size, expected):
    assert decode(image_preview_png(sky(shape), max_size=max_size)).shape == expected + (3,)


def test_preview_draws_row_zero_at_the_bottom_and_masked_pixels_in_colour():
    data = sky((64, 64))
    data[:8] += 5000.0  # a bright band along the first rows
    mask = np.zeros((64, 64), np.uint16)
    mask[30:34, 40:44] = 4
    image = decode(image_preview_png(data, mask))
    assert image[-8:, :, 0].mean() > 250 and image[:8, :, 0].mean() < 235  # bright rows at the bottom
    assert (image[64 - 34 : 64 - 30, 40:44] == MASKED_RGB).all()
    assert not (image[:20] == MASKED_RGB).all(axis=2).any()


def test_block_reduction_averages_instead_of_aliasing():
    data = np.full((64, 64), 50.0)
    data[:, :32] = np.tile([0.0, 100.0], (64, 16))  # alternating columns: subsampling keeps only one phase
    data += np.random.default_rng(1).normal(0.0, 1.0, data.shape)
    image = decode(image_preview_png(data, max_size=32)).astype(float)
    assert image.shape == (32, 32, 3)
    assert abs(image[:, :16].mean() - image[:, 16:].mean()) < 10  # both halves average to 50


@pytest.mark.parametrize("data", [np.full((50, 40), np.nan), np.full((50, 40), 7.0), np.zeros((1, 1))])
def test_preview_survives_degenerate_images(data):
    assert decode(image_preview_png(data)).shape[:2] == data.shape


def test_fully_masked_preview_is_all_mask_colour():
    image = decode(image_preview_png(sky((40, 40)), np.ones((40, 40), np.uint16)))
    assert (image == MASKED_RGB).all()


@pytest.mark.parametrize("kwargs", [dict(data=np.zeros(5)), dict(data=np.zeros((4, 4)), mask=np.zeros((3, 3))),
                                    dict(data=np.zeros((4, 4)), max_size=0)])
def test_preview_refuses_bad_input(kwargs):
    with pytest.raises(ValueError):
        image_preview_png(**kwargs)


def test_cutout_triplet_has_three_labelled_panels():
    new = sky((200, 200))
    new[100, 120] += 1e4  # a point at (x, y) = (120, 100)
    ref, diff = sky((200, 200), 1), new - sky((200, 200), 2)
    image = decode(cutout_triplet_png(new, ref, diff, x=120.0, y=100.0, size=41, scale=4))
    assert image.shape == (41 * 4 + 12, 3 * 41 * 4 + 2 * 4, 3)
    labels, panels = image[:12], image[12:]
    assert labels.max() > 200  # some white text
    centre = panels[20 * 4 : 21 * 4, 20 * 4 : 21 * 4]  # the central pixel of the first panel
    assert centre.min() > 250


def test_cutout_at_the_corner_is_padded_with_the_mask_colour():
    data = sky((100, 100))
    image = decode(cutout_triplet_png(data, data, data, x=0.0, y=0.0, size=21, scale=2))
    panel = image[12:, : 21 * 2]
    # (0, 0) is the bottom-left image pixel: the padding is left of and below it
    assert (panel[-20:, :] == MASKED_RGB).all() and (panel[:, :20] == MASKED_RGB).all()
    assert not (panel[:20, -20:] == MASKED_RGB).all(axis=2).any()


def test_cutout_handles_nan_and_constant_images():
    nan, flat = np.full((50, 50), np.nan), np.full((50, 50), 3.0)
    assert decode(cutout_triplet_png(nan, flat, nan, 25, 25)).shape == (41 * 4 + 12, 3 * 41 * 4 + 8, 3)


@pytest.mark.parametrize("kwargs", [dict(size=2), dict(scale=0), dict(x=500.0), dict(x=np.nan)])
def test_cutout_refuses_bad_input(kwargs):
    data = np.zeros((50, 50))
    with pytest.raises(ValueError):
        cutout_triplet_png(data, data, data, **{"x": 10.0, "y": 10.0, **kwargs})
