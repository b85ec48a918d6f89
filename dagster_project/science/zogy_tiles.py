"""ZOGY on overlapping sub-images, each with its own PSFs, for a PSF that varies over the field.

Conventions
-----------
* Pixel indices are 0-based, in numpy axis order ``(y, x)``; a tile is
  ``tiles[i][j]`` with row ``i`` along y (row 0 at y = 0) and column ``j``
  along x.
* The tile CORES partition the frame into ``n x n`` near-equal rectangles.
  Each core is EXTENDED by ``margin`` px on every side (clipped at the
  frame border); :func:`~dagster_project.science.zogy.zogy`
  runs on the extended tile with that tile's PSFs, and only the core of its
  outputs is kept. The ZOGY kernels reach about one PSF stamp; with a
  margin of at least twice the largest stamp the core pixels see the same
  data as in a full-frame run, so the stitched maps have no seams and, for
  one PSF everywhere, equal the full-frame ones to float32 round-off
  (tested). At the frame border the extended tile ends where the frame
  does, so the border is treated exactly as :func:`zogy` treats it.
* Core edges and margins are multiples of ``LEAK_BLOCK`` (4 px): ZOGY
  bounds the flux hidden under masks on blocks of that size counted from
  the sub-image origin, and aligned tiles put the blocks on the same
  pixels as a full-frame run, so the same pixels are blanked.
* Flux zero points, noise levels, astrometric terms and masks are global:
  only the PSFs change from tile to tile.
"""

from dataclasses import dataclass

import numpy as np

from .zogy import LEAK_BLOCK, ZogyResult, robust_std, zogy

__all__ = ["Tile", "tile_grid", "tile_margin", "zogy_tiled"]


@dataclass(frozen=True)
class Tile:
    """One tile of a :func:`tile_grid`.

    Attributes
    ----------
    core : (slice, slice)
        ``(rows, columns)`` of the pixels this tile's outputs fill.
    extended : (slice, slice)
        The core grown by the margin on every side, clipped to the frame:
        the sub-image ZOGY runs on.
    """

    core: tuple[slice, slice]
    extended: tuple[slice, slice]

    @property
    def core_in_extended(self) -> tuple[slice, slice]:
        """The core in the coordinates of the extended sub-image."""
        return tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(self.core, self.extended))

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True for the 0-based positions ``(x, y)`` (px) inside the extended tile."""
        rows, cols = self.extended
        return (y >= rows.start - 0.5) & (y < rows.stop - 0.5) & (x >= cols.start - 0.5) & (x < cols.stop - 0.5)


def tile_margin(*stamps: np.ndarray) -> int:
    """Margin (px) of the tiles for these PSF stamps: twice the largest stamp side (see the module notes)."""
    return 2 * max(max(np.shape(s)) for s in stamps)


def tile_grid(shape: tuple[int, int], n_tiles: int, margin: int) -> list[list[Tile]]:
    """``n_tiles`` x ``n_tiles`` tiles whose cores partition an image of ``shape`` = ``(ny, nx)``.

    Core edges fall on multiples of ``LEAK_BLOCK`` px (except the frame's
    far borders) and ``margin`` is rounded up to one (see the module notes).

    Returns
    -------
    list of lists of Tile
        ``tiles[i][j]``: row ``i`` along y, column ``j`` along x.

    Raises
    ------
    ValueError
        ``n_tiles < 1``, ``margin < 0``, or a side too short for ``n_tiles`` cores.
    """
    if n_tiles < 1 or margin < 0:
        raise ValueError(f"need n_tiles >= 1 and margin >= 0, got {n_tiles} and {margin}")
    if min(shape) < n_tiles * LEAK_BLOCK:
        raise ValueError(f"a {shape} image is too small for {n_tiles} tiles per side")
    margin = -(-margin // LEAK_BLOCK) * LEAK_BLOCK
    edges = [np.append((np.linspace(0, n, n_tiles + 1)[:-1] / LEAK_BLOCK).round().astype(int) * LEAK_BLOCK, n)
             for n in shape]

    def axis_slices(k: int, axis: int) -> tuple[slice, slice]:
        """(core, extended) along ``axis`` of the ``k``-th tile."""
        lo, hi, n = int(edges[axis][k]), int(edges[axis][k + 1]), shape[axis]
        return slice(lo, hi), slice(max(lo - margin, 0), min(hi + margin, n))

    rows = [axis_slices(i, 0) for i in range(n_tiles)]
    cols = [axis_slices(j, 1) for j in range(n_tiles)]
    return [[Tile(core=(r[0], c[0]), extended=(r[1], c[1])) for c in cols] for r in rows]


def zogy_tiled(
    new: np.ndarray,
    ref: np.ndarray,
    psfs_new: list[list[np.ndarray]],
    psfs_ref: list[list[np.ndarray]],
    *,
    var_new: np.ndarray,
    var_ref: np.ndarray,
    mask: np.ndarray | None = None,
    hidden_new: np.ndarray | None = None,
    hidden_ref: np.ndarray | None = None,
    margin: int | None = None,
    **kwargs,
) -> ZogyResult:
    """:func:`~dagster_project.science.zogy.zogy` with one pair of PSFs per tile, stitched (see the module notes).

    Parameters
    ----------
    new, ref, var_new, var_ref, mask, hidden_new, hidden_ref
        Full-frame planes, as for :func:`zogy`.
    psfs_new, psfs_ref : list of lists of ndarray
        ``n x n`` PSF stamps, ``psfs_new[i][j]`` for tile ``(i, j)`` of
        :func:`tile_grid` (row ``i`` along y).
    margin : int, optional
        Overlap (px) of each tile with its neighbours; default
        :func:`tile_margin` of every stamp given.
    **kwargs
        The scalar arguments of :func:`zogy` (``sigma_new``, ``sigma_ref``,
        ``flux_ratio_ref``, ``flux_new``, ``astrometric_rms``,
        ``max_hidden_sigma``, ``workers``), the same for every tile.

    Returns
    -------
    ZogyResult
        Maps stitched from the tile cores. A tile whose extended sub-image is
        entirely masked is NaN and flagged in ``mask``. ``scorr_std`` and
        ``d_std`` are recomputed over the stitched maps; ``flux`` and
        ``flux_err`` use each tile's own ``F_S``; ``P_D`` and ``F_S`` are
        those of the computed tile nearest the frame centre (``F_D`` and the
        scalars do not depend on the PSFs).

    Raises
    ------
    ValueError
        PSF grids that are not square and of one size, every pixel masked,
        or any error of :func:`zogy`.

    Examples
    --------
    With one pair of PSFs on every tile the stitched maps are the whole-frame ones, to round-off:

    >>> from dagster_project.science.psf_models import moffat_stamp
    >>> new, ref = np.random.default_rng(0).normal(size=(2, 96, 96))
    >>> psf_n, psf_r = moffat_stamp(9, 2.0), moffat_stamp(9, 2.5)
    >>> kw = dict(var_new=np.ones((96, 96)), var_ref=np.ones((96, 96)), sigma_new=1.0, sigma_ref=1.0)
    >>> tiled = zogy_tiled(new, ref, [[psf_n] * 2] * 2, [[psf_r] * 2] * 2, **kw)
    >>> bool(np.allclose(tiled.S_corr, zogy(new, ref, psf_n, psf_r, **kw).S_corr, rtol=0, atol=1e-4))
    True
    """
    n_tiles = _check_grids(psfs_new, psfs_ref)
    new = np.asarray(new)
    if margin is None:
        margin = tile_margin(*(s for grid in (psfs_new, psfs_ref) for row in grid for s in row))
    planes = {"new": new, "ref": ref, "var_new": var_new, "var_ref": var_ref, "mask": mask,
              "hidden_new": hidden_new, "hidden_ref": hidden_ref}
    _check_planes(planes, new.shape, mask)
    stitched = _Stitched.empty(new.shape)
    for i, row in enumerate(tile_grid(new.shape, n_tiles, margin)):
        for j, tile in enumerate(row):
            if mask is not None and np.all(mask[tile.extended]):  # e.g. outside the reference's footprint
                continue
            stitched.add(tile, _zogy_on_tile(tile, planes, psfs_new[i][j], psfs_ref[i][j], kwargs))
    return stitched.result()


def _check_grids(psfs_new, psfs_ref) -> int:
    """Tiles per side of the two PSF grids; ValueError unless both are n x n."""
    n_tiles = len(psfs_new)
    if n_tiles < 1 or len(psfs_ref) != n_tiles or any(len(r) != n_tiles for r in (*psfs_new, *psfs_ref)):
        raise ValueError("psfs_new and psfs_ref must both be n x n grids of stamps")
    return n_tiles


def _check_planes(planes: dict, shape: tuple[int, int], mask) -> None:
    """ValueError for a plane of another shape than the image, or a mask that excludes every pixel."""
    for name, plane in planes.items():
        if plane is not None and np.shape(plane) != shape:
            raise ValueError(f"{name} shape {np.shape(plane)} differs from image shape {shape}")
    if mask is not None and np.all(mask):
        raise ValueError("every pixel is masked or non-finite")


def _zogy_on_tile(tile: Tile, planes: dict, psf_new, psf_ref, kwargs: dict) -> ZogyResult:
    """:func:`zogy` on the extended sub-image of ``tile`` with its PSFs."""
    sub = {name: None if plane is None else np.asarray(plane)[tile.extended] for name, plane in planes.items()}
    return zogy(sub.pop("new"), sub.pop("ref"), psf_new, psf_ref, **sub, **kwargs)


#: The maps of a :class:`ZogyResult` that are stitched from the tile cores.
_MAPS = ("D", "S", "S_corr", "flux", "flux_err")


@dataclass
class _Stitched:
    """The full-frame maps filled tile by tile, and the computed tile nearest the frame centre."""

    maps: dict
    bad: np.ndarray
    centre: np.ndarray
    nearest: tuple | None = None  # (distance of the tile centre to the frame centre, its ZogyResult)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "_Stitched":
        nan = np.float32(np.nan)
        maps = {name: np.full(shape, nan, dtype=np.float32) for name in _MAPS}
        return cls(maps, np.ones(shape, dtype=bool), np.array(shape) / 2.0)

    def add(self, tile: Tile, result: ZogyResult) -> None:
        """Copy the core of the tile's outputs into the maps."""
        inner = tile.core_in_extended
        for name, out in self.maps.items():
            out[tile.core] = getattr(result, name)[inner]
        self.bad[tile.core] = result.mask[inner]
        distance = np.hypot(*(np.mean([s.start, s.stop]) - c for s, c in zip(tile.core, self.centre)))
        if self.nearest is None or distance < self.nearest[0]:
            self.nearest = (distance, result)

    def result(self) -> ZogyResult:
        """The stitched :class:`ZogyResult`: noise figures of the stitched maps, P_D and scalars of the central tile."""
        central = self.nearest[1]
        sample = (slice(None, None, 4), slice(None, None, 4))
        return ZogyResult(
            **self.maps,
            P_D=central.P_D,
            F_D=central.F_D,
            F_S=central.F_S,
            mask=self.bad,
            sigma_new=central.sigma_new,
            sigma_ref=central.sigma_ref,
            flux_new=central.flux_new,
            flux_ratio_ref=central.flux_ratio_ref,
            astrometric_rms=central.astrometric_rms,
            scorr_std=robust_std(self.maps["S_corr"][sample]),
            d_std=robust_std(self.maps["D"][sample]),
        )
