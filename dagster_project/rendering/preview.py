"""PNG previews of images and candidate cutouts.

Display convention: row 0 of the array is drawn at the *bottom* (origin
lower, as DS9 and ``matplotlib.imshow(origin='lower')`` show FITS images), so
a north-up WCS looks north-up. Pixel values are scaled with astropy's
ZScale interval and an asinh stretch; masked, non-finite and padded pixels are
drawn in a distinct colour.
"""

import io

import numpy as np
from astropy.nddata import Cutout2D, NoOverlapError, block_reduce
from astropy.visualization import AsinhStretch, ZScaleInterval
from PIL import Image, ImageDraw, ImageFont

#: RGB of pixels that carry no usable value (masked, NaN, outside the image).
MASKED_RGB = (200, 40, 160)
_LABEL_HEIGHT = 12
_GAP = 4


def _to_rgb(data: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """ZScale + asinh stretch of the valid pixels into an RGB uint8 array (row 0 first)."""
    values = data[~invalid]
    grey = np.zeros(data.shape, dtype=np.float64)
    if values.size:
        low, high = ZScaleInterval().get_limits(values)
        if high > low:
            grey = AsinhStretch()(np.clip((np.where(invalid, low, data) - low) / (high - low), 0.0, 1.0))
        else:  # a constant image: mid grey
            grey[:] = 0.5
    rgb = np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    rgb[invalid] = MASKED_RGB
    return rgb


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_preview_png(data: np.ndarray, mask: np.ndarray | None = None, max_size: int = 512) -> bytes:
    """PNG preview of a 2-D image, at most ``max_size`` pixels on a side.

    The image is block-averaged by the smallest integer factor that fits
    (edge rows/columns that do not fill a block are dropped), which avoids the
    aliasing of plain subsampling. A block is drawn as masked when at least
    half of its pixels are masked (``mask != 0``) or non-finite; the others
    average their good pixels.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
    mask : ndarray, optional
        Non-zero where pixels are bad (e.g. a MaskBit field).
    max_size : int
        Longest side of the preview in pixels.

    Returns
    -------
    bytes
        PNG of ``(ny // factor)`` rows by ``(nx // factor)`` columns, row 0 at the bottom.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or min(data.shape) < 1:
        raise ValueError(f"need a non-empty 2-D image, got shape {data.shape}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    invalid = ~np.isfinite(data)
    if mask is not None:
        if np.shape(mask) != data.shape:
            raise ValueError(f"mask shape {np.shape(mask)} differs from data shape {data.shape}")
        invalid |= np.asarray(mask) != 0
    factor = max(1, -(-max(data.shape) // max_size))
    if factor > 1:
        good = (~invalid).astype(np.float64)
        total = block_reduce(np.where(invalid, 0.0, data), factor)
        count = block_reduce(good, factor)
        with np.errstate(invalid="ignore", divide="ignore"):
            data = total / count
        invalid = count < 0.5 * factor**2
    return _png(Image.fromarray(np.flipud(_to_rgb(data, invalid))))


def cutout_triplet_png(
    new: np.ndarray,
    ref: np.ndarray,
    diff: np.ndarray,
    x: float,
    y: float,
    size: int = 41,
    scale: int = 4,
) -> bytes:
    """Side-by-side new / reference / difference cutouts centred on 0-based ``(x, y)``.

    Each cutout is ``size`` x ``size`` pixels (padded with the masked colour
    where it runs off the image), scaled independently (ZScale + asinh),
    enlarged ``scale`` times without interpolation and labelled above.

    Returns
    -------
    bytes
        PNG of ``3 * size * scale + 2 * 4`` by ``size * scale + 12`` pixels.
    """
    if size < 3 or scale < 1:
        raise ValueError(f"need size >= 3 and scale >= 1, got {size}, {scale}")
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"cutout centre must be finite, got ({x}, {y})")
    panel = size * scale
    canvas = Image.new("RGB", (3 * panel + 2 * _GAP, panel + _LABEL_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (label, image) in enumerate((("new", new), ("ref", ref), ("diff", diff))):
        image = np.asarray(image, dtype=np.float64)
        if image.ndim != 2:
            raise ValueError(f"{label} image must be 2-D, got shape {image.shape}")
        try:
            cutout = Cutout2D(image, (x, y), size, mode="partial", fill_value=np.nan).data
        except NoOverlapError:
            raise ValueError(f"a cutout at ({x}, {y}) does not overlap the {label} image") from None
        rgb = np.flipud(_to_rgb(cutout, ~np.isfinite(cutout)))
        tile = Image.fromarray(rgb).resize((panel, panel), Image.Resampling.NEAREST)
        left = i * (panel + _GAP)
        canvas.paste(tile, (left, _LABEL_HEIGHT))
        draw.text((left + 2, 0), label, fill=(255, 255, 255), font=font)
    return _png(canvas)
