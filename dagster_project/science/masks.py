"""Bit values of the mask plane shared by every image product."""

from enum import IntFlag

import numpy as np


class MaskBit(IntFlag):
    """Why a pixel is not to be trusted. Stored as ``uint16`` in the MASK extension."""

    SATURATED = 1  # raw value at or above the detector's SATURATE level
    BLEED = 2  # charge bleeding from a saturated star along the readout column
    COSMIC_RAY = 4  # cosmic-ray hit found by L.A.Cosmic (astroscrappy)
    BAD_COLUMN = 8  # detector defect found in the master bias or flat
    EDGE = 16  # outside the overlap of the new image and the resampled reference
    NONFINITE = 32  # NaN or inf in the data or the variance
    FLAT_BAD = 64  # flat-field response too low to trust


MASK_DTYPE = np.uint16


def empty_mask(shape: tuple[int, int]) -> np.ndarray:
    """Return an all-good mask of ``shape``."""
    return np.zeros(shape, dtype=MASK_DTYPE)
