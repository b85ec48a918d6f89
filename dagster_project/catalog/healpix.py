"""HEALPix spatial index for sky positions (pure functions; the query is ``queries.cone_search``).

Observations and candidates store ``healpix_index``: the NESTED pixel at order
:data:`HEALPIX_ORDER` = 12 (nside 4096, 201 326 592 pixels of ~51.5″). Why 12:
the pixel is about the size of a transient cross-match radius (arcseconds to an
arcminute), so such a cone touches 1–4 pixels and the index alone is nearly as
selective as the exact test, and finer orders would buy little. The index is
an ordinary BIGINT B-tree, the same on SQLite and PostgreSQL.

NESTED numbering makes every coarser pixel a contiguous run of order-12
pixels: coarse pixel ``p`` at order ``k`` holds exactly the fine indices ``i``
with ``i >> 2*(12-k) == p``, i.e. ``p << 2*(12-k) <= i < (p+1) << 2*(12-k)``.
A cone is therefore prefiltered as a handful of index *ranges* (which use the
B-tree) at an order coarse enough to keep the pixel list short, then filtered
exactly by great-circle distance.
"""

import math
from functools import cache

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix
from numpy.typing import ArrayLike

HEALPIX_ORDER = 12
#: order-0 pixel size (rad); order k pixels are this / 2**k
_RESOLUTION_ORDER0 = math.sqrt(math.pi / 3)
#: a cone may span about this many pixel widths of the search order (≲ 80 pixels)
_PIXELS_PER_RADIUS = 4
#: covers rounding in the pixel/cone overlap test; the exact filter removes any extra rows
_PAD_DEG = 1e-7


@cache
def _grid(order: int) -> HEALPix:
    return HEALPix(nside=2**order, order="nested")


def healpix_indices(ra_deg: ArrayLike, dec_deg: ArrayLike) -> np.ndarray:
    """NESTED order-12 pixel of each position (vectorised)."""
    return np.asarray(_grid(HEALPIX_ORDER).lonlat_to_healpix(
        np.asarray(ra_deg, dtype=float) * u.deg, np.asarray(dec_deg, dtype=float) * u.deg), dtype=np.int64)


def healpix_index(ra_deg: float, dec_deg: float) -> int:
    """NESTED order-12 pixel containing (ra, dec) in degrees."""
    return int(healpix_indices(ra_deg, dec_deg))


def search_order(radius_deg: float) -> int:
    """The finest order ≤ 12 whose pixels are at least ``radius / 4`` wide."""
    if radius_deg <= 0:
        return HEALPIX_ORDER
    order = math.floor(math.log2(_PIXELS_PER_RADIUS * _RESOLUTION_ORDER0 / math.radians(radius_deg)))
    return min(max(order, 0), HEALPIX_ORDER)


def cone_index_ranges(ra_deg: float, dec_deg: float, radius_deg: float) -> list[tuple[int, int]] | None:
    """Half-open ranges ``[start, stop)`` of order-12 indices covering the cone; ``None`` for the whole sky."""
    if radius_deg < 0:
        raise ValueError(f"negative cone radius {radius_deg}")
    if radius_deg + _PAD_DEG >= 180:
        return None
    order = search_order(radius_deg)
    pixels = np.sort(_grid(order).cone_search_lonlat(ra_deg * u.deg, dec_deg * u.deg, (radius_deg + _PAD_DEG) * u.deg))
    shift = 2 * (HEALPIX_ORDER - order)
    ranges: list[tuple[int, int]] = []
    for pixel in (int(p) for p in pixels):
        start, stop = pixel << shift, (pixel + 1) << shift
        if ranges and ranges[-1][1] == start:  # neighbours in nested order merge into one range
            ranges[-1] = (ranges[-1][0], stop)
        else:
            ranges.append((start, stop))
    return ranges


def angular_separation_deg(ra1: ArrayLike, dec1: ArrayLike, ra2: ArrayLike, dec2: ArrayLike) -> np.ndarray:
    """Great-circle distance in degrees (Vincenty formula: accurate at all separations)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    dlon = lon2 - lon1
    sin_dlon, cos_dlon = np.sin(dlon), np.cos(dlon)
    sin1, cos1, sin2, cos2 = np.sin(lat1), np.cos(lat1), np.sin(lat2), np.cos(lat2)
    numerator = np.hypot(cos2 * sin_dlon, cos1 * sin2 - sin1 * cos2 * cos_dlon)
    denominator = sin1 * sin2 + cos1 * cos2 * cos_dlon
    return np.degrees(np.arctan2(numerator, denominator))
