"""Registration accuracy: the fitted reference -> new transform against the KNOWN true transform.

Each trial simulates a field twice with the telescope's pure functions and
calibrates both frames (``simulated_pairs.py``): a reference epoch as drawn by the
simulator, and a new epoch whose pointing is shifted by up to 20 px, whose grid
is rotated by a chosen angle (|rotation| <= 0.5 deg relative to the reference)
and whose plate scale differs by a tiny factor (|1 - scale| <= 3e-4, i.e. up to
0.3 px at 1000 px from the centre). Both headers carry the simulator's WCS error
(up to 0.8 px). Both frames share the tangent point, so the true map between
their pixel grids is exactly affine; it is evaluated through the two TRUE WCSs.

The registration runs exactly as in ``difference_images`` (science/difference.py):
background, ``find_stars``, ``estimate_psf``, PSF-fitted positions
(``psf_photometry(fit_positions=True)``), then ``register_images`` with the
header WCSs as first guess and the pipeline's default parameters.

Printed per trial and overall: the RMS and maximum of |fitted(x) - true(x)| over
a 41x41 grid of reference pixels that land inside the new frame (the error the
resampled reference actually carries), the star-residual RMS the pipeline
reports (``Registration.rms``, which also contains the centroid noise of the
stars), the number of matched stars and the method. Goal: RMS <= 0.05 px.

    .venv/bin/python benchmarks/registration_accuracy.py           # 10 trials of 2048x2048 (~2 min)
    .venv/bin/python benchmarks/registration_accuracy.py --quick   # 3 trials of 1024x1024 (~20 s)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import simulated_pairs as sp  # noqa: E402

from dagster_project.science.background import estimate_background  # noqa: E402
from dagster_project.science.difference import DifferenceParams  # noqa: E402
from dagster_project.science.psf import estimate_psf, find_stars, psf_photometry  # noqa: E402
from dagster_project.science.registration import RegistrationError, register_images  # noqa: E402
from dagster_project.simulation.telescope import FieldSpec, draw_epoch_conditions, make_sky_model  # noqa: E402

#: Relative rotations (deg) and plate-scale factors cycled through the trials.
ROTATIONS = (0.0, 0.5, -0.5, 0.25, -0.35, 0.45, -0.1, 0.15, -0.5, 0.3)
SCALES = (1.0, 1.0002, 0.9998, 1.0003, 0.9997, 1.0, 1.0001, 0.9999, 1.00025, 0.99985)


def measured_positions(planes, params: DifferenceParams):
    """PSF-fitted star positions of one image, as ``difference_images`` measures them."""
    bkg = estimate_background(planes.data, planes.mask, box_size=params.bkg_box_size,
                              filter_size=params.bkg_filter_size, rms_map=False)
    image = (planes.data - bkg.background).astype(np.float32)
    stars = find_stars(image, planes.variance, planes.mask, snr_min=params.star_snr_min, max_stars=params.max_stars)
    psf = estimate_psf(image, planes.variance, planes.mask, stars, params.psf_stamp_size,
                       max_stars=params.max_psf_stars, min_stars=params.min_psf_stars)
    pos = psf_photometry(image, planes.variance, planes.mask, psf, stars["x"], stars["y"], fit_positions=True)
    return pos[np.isfinite(pos["flux"])]


def run_trial(night: sp.Night, k: int, seed: int, params: DifferenceParams, grid: int = 41) -> dict:
    rng = np.random.default_rng([seed, 30, k])
    field = FieldSpec(f"R{k:03d}", float(rng.uniform(0, 360)), float(rng.uniform(-60, 10)))
    sky = make_sky_model(field, night.spec, np.random.default_rng([seed, 31, k]))
    ref_c, new_c = draw_epoch_conditions([61000.2, 61000.25], night.spec, np.random.default_rng([seed, 32, k]))
    rotation = ROTATIONS[k % len(ROTATIONS)]
    scale = SCALES[k % len(SCALES)]
    angle = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(2.0, 20.0)
    new_c = dataclasses.replace(
        new_c, rotation_deg=ref_c.rotation_deg + rotation,
        offset_px=(ref_c.offset_px[0] + shift * np.cos(angle), ref_c.offset_px[1] + shift * np.sin(angle)))
    ref = sp.simulate_frame(night, field, sky, ref_c, np.random.default_rng([seed, 33, k, 0]))
    new = sp.simulate_frame(night, field, sky, new_c, np.random.default_rng([seed, 33, k, 1]), scale=scale)
    pair = sp.Pair(k, field, sky, ref, new)

    start = time.perf_counter()
    pos_new = measured_positions(new.planes, params)
    pos_ref = measured_positions(ref.planes, params)
    try:
        reg = register_images(pos_new, pos_ref, new.planes.wcs, ref.planes.wcs,
                              match_radius=params.match_radius_px, max_wcs_offset=params.max_wcs_offset_px,
                              min_matches=params.min_matches, max_rms=params.max_registration_rms_px)
    except RegistrationError as exc:
        return dict(k=k, rotation=rotation, scale=scale, shift=shift, error=str(exc))
    seconds = time.perf_counter() - start

    ny, nx = night.spec.data_shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, grid), np.linspace(0, ny - 1, grid))
    gx, gy = gx.ravel(), gy.ravel()
    tx, ty = (np.asarray(v) for v in pair.ref_to_new(gx, gy))
    inside = (tx >= 0) & (ty >= 0) & (tx <= nx - 1) & (ty <= ny - 1)
    fx, fy = reg.ref_to_new(gx[inside], gy[inside])
    err = np.hypot(fx - tx[inside], fy - ty[inside])
    # how far from affine the truth is (should be ~1e-6 px: same tangent point)
    A = np.column_stack([gx, gy, np.ones_like(gx)])
    coef_x, *_ = np.linalg.lstsq(A, tx, rcond=None)
    coef_y, *_ = np.linalg.lstsq(A, ty, rcond=None)
    nonaffine = float(np.max(np.hypot(A @ coef_x - tx, A @ coef_y - ty)))
    return dict(k=k, rotation=rotation, scale=scale, shift=shift, wcs_error=float(np.hypot(*new_c.wcs_error_px)),
                fwhm_new=new_c.seeing_fwhm_px, fwhm_ref=ref_c.seeing_fwhm_px,
                rms=float(np.sqrt(np.mean(err**2))), max=float(err.max()), centre=float(err[np.argmin(
                    np.hypot(gx[inside] - nx / 2, gy[inside] - ny / 2))]),
                star_rms=reg.rms, n_matched=reg.n_matched, method=reg.method, seconds=seconds,
                nonaffine=nonaffine, n_stars=(len(pos_new), len(pos_ref)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 trials of 1024x1024")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()
    n = args.trials or (3 if args.quick else 10)
    size = args.size or (1024 if args.quick else 2048)
    params = DifferenceParams()
    print(f"# registration accuracy: {n} simulated pairs of {size}x{size} with known transforms, seed {args.seed}; "
          f"load average {os.getloadavg()[0]:.2f}")
    night = sp.make_night(size, args.seed)
    print(f"{'trial':>5} {'rot deg':>7} {'scale-1':>8} {'shift px':>8} {'wcs err':>7} {'FWHM n/r':>9} {'stars n/r':>9} "
          f"{'matched':>7} {'method':>7} {'RMS px':>7} {'max px':>7} {'centre':>7} {'star rms':>8} {'s':>5}")
    rows = []
    for k in range(n):
        r = run_trial(night, k, args.seed, params)
        rows.append(r)
        if "error" in r:
            print(f"{k:5d} {r['rotation']:7.2f} {r['scale'] - 1:8.1e} {r['shift']:8.1f}  FAILED: {r['error']}")
            continue
        print(f"{k:5d} {r['rotation']:7.2f} {r['scale'] - 1:8.1e} {r['shift']:8.1f} {r['wcs_error']:7.2f} "
              f"{r['fwhm_new']:4.2f}/{r['fwhm_ref']:<4.2f} {r['n_stars'][0]:4d}/{r['n_stars'][1]:<4d} "
              f"{r['n_matched']:7d} {r['method']:>7} {r['rms']:7.4f} {r['max']:7.4f} {r['centre']:7.4f} "
              f"{r['star_rms']:8.4f} {r['seconds']:5.1f}", flush=True)
    ok = [r for r in rows if "error" not in r]
    if ok:
        rms_all = float(np.sqrt(np.mean([r["rms"] ** 2 for r in ok])))
        print(f"\noverall RMS of the transform error over the overlap: {rms_all:.4f} px "
              f"(worst trial {max(r['rms'] for r in ok):.4f} px, worst point {max(r['max'] for r in ok):.4f} px) "
              f"-- goal <= 0.05 px; {len(rows) - len(ok)} of {len(rows)} trials failed to register")
        print(f"median star-residual RMS reported by register_images: {np.median([r['star_rms'] for r in ok]):.4f} px; "
              f"truth departs from affine by at most {max(r['nonaffine'] for r in ok):.1e} px")


if __name__ == "__main__":
    main()
