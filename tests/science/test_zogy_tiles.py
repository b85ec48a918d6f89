"""ZOGY on overlapping tiles: the stitching against a full-frame run with one PSF."""

import numpy as np
import pytest

from dagster_project.science.psf_models import moffat_stamp, render_point_sources
from dagster_project.science.zogy import zogy
from dagster_project.science.zogy_tiles import tile_grid, tile_margin, zogy_tiled

SHAPE = (611, 587)  # sides that 3 tiles do not divide
PSF_NEW = moffat_stamp(25, 3.0)
PSF_REF = moffat_stamp(33, 4.0, ellipticity=0.1, theta_deg=20.0)
MAPS = ("D", "S", "S_corr", "flux", "flux_err")


@pytest.fixture(scope="module")
def planes():
    """Noisy star field (stars also across the border), a masked column, a masked star core and its hidden flux."""
    rng = np.random.default_rng(1)
    n = 300
    x, y = rng.uniform(-5, SHAPE[1] + 5, n), rng.uniform(-5, SHAPE[0] + 5, n)
    flux = 10 ** rng.uniform(3, 5.5, n)
    x[0], y[0], flux[0] = 200.3, 204.6, 3e6  # on a tile boundary (core edges at 204 and 196 px)
    model_new = render_point_sources(SHAPE, x, y, flux, 3.0, stamp_size=25)
    model_ref = 1.6 * render_point_sources(SHAPE, x, y, flux, 4.0, 3.0, 0.1, 20.0, stamp_size=33)
    var_new, var_ref = (model_new + 400).astype(np.float32), (model_ref + 900).astype(np.float32)
    new = (model_new + rng.normal(size=SHAPE) * np.sqrt(var_new)).astype(np.float32)
    ref = (model_ref + rng.normal(size=SHAPE) * np.sqrt(var_ref)).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint16)
    mask[:, 301:303] = 1
    mask[202:208, 197:204] = 1  # the bright star's core
    hidden_new = np.where(mask != 0, model_new, 0).astype(np.float32)
    hidden_ref = np.where(mask != 0, model_ref, 0).astype(np.float32)
    return dict(new=new, ref=ref, var_new=var_new, var_ref=var_ref, sigma_new=20.0, sigma_ref=30.0,
                flux_ratio_ref=1.6, astrometric_rms=(0.05, 0.04), mask=mask, hidden_new=hidden_new,
                hidden_ref=hidden_ref)


def _run_tiled(planes, n, psf_new=PSF_NEW, psf_ref=PSF_REF, **kwargs):
    args = dict(planes)
    new, ref = args.pop("new"), args.pop("ref")
    return zogy_tiled(new, ref, [[psf_new] * n] * n, [[psf_ref] * n] * n, **args, **kwargs)


def test_tile_cores_partition_the_frame_and_the_margins_overlap():
    tiles = tile_grid(SHAPE, 3, 66)
    cover = np.zeros(SHAPE, int)
    for row in tiles:
        for tile in row:
            cover[tile.core] += 1
            for core, ext, n in zip(tile.core, tile.extended, SHAPE):
                assert ext.start == max(core.start - 68, 0) and ext.stop == min(core.stop + 68, n)  # 66 -> 68 px
                assert core.start % 4 == 0 and ext.start % 4 == 0
    assert (cover == 1).all()
    assert tile_margin(PSF_NEW, PSF_REF) == 66
    with pytest.raises(ValueError, match="too small"):
        tile_grid((10, 100), 3, 8)


def test_tiled_zogy_with_one_psf_equals_the_full_frame_run(planes):
    args = dict(planes)
    full = zogy(args.pop("new"), args.pop("ref"), PSF_NEW, PSF_REF, **args)
    tiled = _run_tiled(planes, 3)
    assert full.mask.mean() > 0.01  # masks and the hidden-flux zone take part
    assert np.array_equal(tiled.mask, full.mask)
    for name in MAPS:
        a, b = getattr(full, name), getattr(tiled, name)
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
    # float32 round-off of transforms of other sizes: ~1e-4 sigma, against peaks of 30-1000 sigma
    assert np.nanmax(np.abs(tiled.S_corr - full.S_corr)) < 2e-3
    assert np.nanmax(np.abs(tiled.D - full.D)) < 2e-3
    assert np.nanmax(np.abs(tiled.flux - full.flux) / full.flux_err) < 2e-3
    assert tiled.scorr_std == pytest.approx(full.scorr_std, abs=1e-3)
    assert tiled.F_S == pytest.approx(full.F_S) and np.allclose(tiled.P_D, full.P_D)
    # A margin below the kernels' reach leaves seams at the tile boundaries: the check above can fail.
    seams = _run_tiled(planes, 3, margin=8)
    assert np.nanmax(np.abs(seams.S_corr - full.S_corr)) > 0.05


def test_a_fully_masked_tile_is_invalid_and_the_others_are_unchanged(planes):
    masked = dict(planes, mask=planes["mask"].copy())
    masked["mask"][:300, :300] = 1  # covers tile (0, 0) with its margin
    tiled = _run_tiled(masked, 3)
    args = dict(masked)
    full = zogy(args.pop("new"), args.pop("ref"), PSF_NEW, PSF_REF, **args)
    assert tiled.mask[:204, :196].all() and np.isnan(tiled.S_corr[:204, :196]).all()
    assert np.array_equal(tiled.mask, full.mask)
    assert np.nanmax(np.abs(tiled.S_corr - full.S_corr)) < 2e-3


def test_psfs_are_taken_per_tile(planes):
    # A wider new PSF in the right-hand tiles changes only their cores.
    wide = moffat_stamp(29, 3.6)
    psfs_new = [[PSF_NEW, PSF_NEW, wide] for _ in range(3)]
    args = dict(planes)
    new, ref = args.pop("new"), args.pop("ref")
    mixed = zogy_tiled(new, ref, psfs_new, [[PSF_REF] * 3] * 3, **args)
    same = _run_tiled(planes, 3)
    changed = np.abs(mixed.D - same.D) > 1e-2
    assert changed[:, 392:].mean() > 0.5 and not changed[:, :392].any()
    assert mixed.F_S == same.F_S  # the central tile's


@pytest.mark.parametrize("psfs_ref, message", [([[PSF_REF] * 3] * 2, "n x n"), ([[PSF_REF] * 2] * 3, "n x n")])
def test_bad_psf_grids_raise(planes, psfs_ref, message):
    args = dict(planes)
    with pytest.raises(ValueError, match=message):
        zogy_tiled(args.pop("new"), args.pop("ref"), [[PSF_NEW] * 3] * 3, psfs_ref, **args)
