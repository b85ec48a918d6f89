"""Injection-recovery: completeness versus S/N and false positives of the difference pipeline.

For each of several simulated fields, a reference epoch (best seeing) and a new
epoch are simulated with the telescope's pure functions (PSF mismatch, pointing
offsets and rotation, galaxies, cosmic rays, saturated stars with bleed trails,
bad columns) and calibrated as the ``calibrated_image`` asset does (see
``simulated_pairs.py``). Point sources are injected into the NEW calibrated image
on a jittered grid (one per ``--spacing`` px cell, so they never overlap), with
target S/N spread over 3-50, where the S/N is the optimal PSF-weighted S/N in the
difference-image sense::

    s_diff = (s_new**-2 + s_ref**-2)**-0.5

(``s_new``: optimal S/N in the new image's noise, source shot noise included;
``s_ref``: S/N the same flux would have in the reference; both from the
noiseless truth scene, see /work/shared/notes/measuring-detection-depth.md).
``difference_images`` (science/difference.py) then runs with its defaults
(threshold 5) and its candidates are matched to the injections (positive
candidate within ``--match-radius`` px).

Printed: completeness per S/N bin (binomial 68 % intervals), the S/N at 50 %
completeness (linear interpolation of the binned curve, bootstrap error) and an
unbinned fit ``c_max * Phi((s - s50) / w)``, the S_corr actually reached at the
injections relative to s_diff, the ZOGY-optimal limit for the PSFs of each pair,
false positives per frame and per Mpix of unmasked area with their causes, and
a plot of the curve next to the ideal Phi(s - 5) (``docs/img/completeness.png``).

Injections whose central pixel is masked in the new image or in the resampled
reference (saturated stars, bleed trails, cosmic rays, bad columns, the edge of
the overlap), or where S_corr is undefined, are not counted in the completeness
(their number is printed).

    .venv/bin/python benchmarks/injection_recovery.py            # 8 pairs of 2048x2048, ~3 min
    .venv/bin/python benchmarks/injection_recovery.py --quick    # 2 pairs of 1024x1024, ~30 s

References built from several exposures (issue 11): ``--reference-frames K`` simulates K exposures
of the reference epoch; the ideal ``s_ref`` is then that of their optimal co-add (S/N^2 add up), and
``--reference best,coadd`` differences every new image against the best single frame and against
the proper co-add (``science/coadd.py``) of the K, on the same simulated data, and prints both::

    .venv/bin/python benchmarks/injection_recovery.py --reference-frames 3 --reference best,coadd
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize, special
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pngplot  # noqa: E402
import simulated_pairs as sp  # noqa: E402

from dagster_project.science.coadd import coadd_frames  # noqa: E402
from dagster_project.science.difference import DifferenceParams, difference_images  # noqa: E402
from dagster_project.science.masks import MaskBit  # noqa: E402
from dagster_project.science.psf_models import moffat_stamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: S/N bin edges: fine through the transition, coarse on the plateau.
BIN_EDGES = np.array([3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 9.0, 10.0, 12.5, 15.0, 20.0, 30.0, 50.0])

#: False-positive causes, in the order they are assigned.
CAUSES = ("edge", "saturated/bleed", "bad column", "cosmic ray", "star residual", "galaxy residual",
          "next to an injection", "noise")


# --------------------------------------------------------------------------- statistics


def phi(x):
    return 0.5 * (1.0 + special.erf(np.asarray(x) / math.sqrt(2.0)))


def wilson(k: int, n: int, z: float = 1.0) -> tuple[float, float]:
    """Wilson score interval (z = 1: 68 %) of a binomial fraction."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def completeness_table(s: np.ndarray, found: np.ndarray, edges=BIN_EDGES) -> list[dict]:
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (s >= lo) & (s < hi)
        n, k = int(sel.sum()), int(found[sel].sum())
        lo68, hi68 = wilson(k, n)
        rows.append(dict(lo=float(lo), hi=float(hi), n=n, k=k, s_mean=float(s[sel].mean()) if n else float("nan"),
                         fraction=k / n if n else float("nan"), lo68=lo68, hi68=hi68,
                         ideal=float(np.mean(phi(s[sel] - 5.0))) if n else float("nan")))
    return rows


def s50_interpolated(s: np.ndarray, found: np.ndarray, edges=BIN_EDGES) -> float:
    """S/N where the binned completeness first crosses 50 % (linear interpolation between bin means)."""
    table = [r for r in completeness_table(s, found, edges) if r["n"] > 0]
    for a, b in zip(table, table[1:]):
        if a["fraction"] < 0.5 <= b["fraction"]:
            t = (0.5 - a["fraction"]) / (b["fraction"] - a["fraction"])
            return a["s_mean"] + t * (b["s_mean"] - a["s_mean"])
    if table and table[0]["fraction"] >= 0.5:
        return table[0]["s_mean"]
    return float("nan")


def bootstrap_s50(s, found, n_boot=500, seed=1) -> tuple[float, float, float]:
    """Median, 16th and 84th percentiles of the interpolated S/N at 50 % over bootstrap resamples."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, s.size, s.size)
        values.append(s50_interpolated(s[idx], found[idx]))
    values = np.array(values)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    return tuple(float(v) for v in np.percentile(values, [50, 16, 84]))


def fit_completeness(s, found) -> dict:
    """Maximum-likelihood fit of ``c_max * Phi((s - s50) / w)`` to the unbinned outcomes."""
    s = np.asarray(s, float)
    k = np.asarray(found, float)

    def nll(p):
        s50, logw, logit_c = p
        c = 1.0 / (1.0 + math.exp(-logit_c))
        prob = np.clip(c * phi((s - s50) / math.exp(logw)), 1e-9, 1 - 1e-9)
        return -np.sum(k * np.log(prob) + (1 - k) * np.log(1 - prob))

    best = optimize.minimize(nll, [5.0, 0.0, 4.0], method="Nelder-Mead",
                             options=dict(xatol=1e-4, fatol=1e-6, maxiter=4000))
    s50, logw, logit_c = best.x
    # 1-sigma error of s50 from the numerical Hessian of the log-likelihood
    try:  # over (s50, log w) at the best c_max (c_max often sits at 1, where its direction is flat)
        h = 1e-3
        hess = np.zeros((2, 2))
        for i in range(2):
            for j in range(2):
                def f(di, dj):
                    p = best.x.copy()
                    p[i] += di
                    p[j] += dj
                    return nll(p)
                hess[i, j] = (f(h, h) - f(h, -h) - f(-h, h) + f(-h, -h)) / (4 * h * h)
        err = float(math.sqrt(np.linalg.inv(hess)[0, 0]))
    except (np.linalg.LinAlgError, ValueError):
        err = float("nan")
    return dict(s50=float(s50), s50_err=err, width=float(math.exp(logw)), c_max=float(1 / (1 + math.exp(-logit_c))))


def noise_peaks_expected(area_px: float, fwhm_px: float, u: float = 5.0) -> float:
    """Expected number of maxima above ``u`` of a smooth unit Gaussian field filtered by a Gaussian PSF."""
    sigma = fwhm_px / 2.3548
    lam2 = 1.0 / (2.0 * sigma**2)
    return area_px * lam2 * u * math.exp(-u * u / 2) / (2 * math.pi) ** 1.5


def zogy_efficiency(pair: sp.Pair, read_noise: float) -> float:
    """ZOGY-optimal S/N of a faint transient over the s_diff yardstick, for the true PSFs of the pair.

    Background-limited: ``F_S = sum_k |Pn|^2 |Pr|^2 / (s_n^2 |Pr|^2 + s_r^2 |Pn|^2)`` (ZOGY eq. 42 with
    F_n = F_r = 1) against ``s_diff^2 = 1 / (s_n^2 / sum Pn^2 + s_r^2 / sum Pr^2)``. < 1 because the
    two PSFs differ in shape: no subtraction can reach s_diff then. With several reference frames the
    reference is their ideal co-add: ``|Pr|^2 / s_r^2`` becomes ``sum_k |Pr_k|^2 / s_k^2``.
    """
    size = 127
    pn = moffat_stamp(size, **pair.new.conditions.psf)
    vn = pair.new.conditions.sky_e + read_noise**2
    Pn = np.abs(np.fft.fft2(pn)) ** 2
    ref_information, ref_unit = np.zeros_like(Pn), 0.0
    for ref in pair.refs:
        pr = moffat_stamp(size, **ref.conditions.psf)
        vr = ref.conditions.sky_e + read_noise**2
        ref_information += np.abs(np.fft.fft2(pr)) ** 2 / vr
        ref_unit += np.sum(pr**2) / vr
    fs = np.sum(Pn * ref_information / (vn * ref_information + Pn)) / pn.size
    sdiff2 = 1.0 / (vn / np.sum(pn**2) + 1.0 / ref_unit)
    return float(math.sqrt(fs / sdiff2))


# --------------------------------------------------------------------------- matching and classification


def excluded_injections(inj: sp.Injections, mask: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Injections whose nearest pixel is masked (any bit) or has no valid S_corr."""
    ix = np.clip(np.rint(inj.x).astype(int), 0, mask.shape[1] - 1)
    iy = np.clip(np.rint(inj.y).astype(int), 0, mask.shape[0] - 1)
    return (mask[iy, ix] != 0) | invalid[iy, ix]


def match(inj: sp.Injections, x, y, negative, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(recovered per injection, matched per detection): positive detections within ``radius`` px."""
    x, y, negative = np.asarray(x, float), np.asarray(y, float), np.asarray(negative, bool)
    recovered = np.zeros(len(inj), bool)
    matched = np.zeros(x.size, bool)
    pos = np.flatnonzero(~negative)
    if pos.size and len(inj):
        d, j = cKDTree(np.column_stack([x[pos], y[pos]])).query(np.column_stack([inj.x, inj.y]),
                                                               distance_upper_bound=radius)
        hit = np.isfinite(d)
        recovered[hit] = True
        matched[pos[j[hit]]] = True
    return recovered, matched


def classify(x, y, mask: np.ndarray, fwhm: float, truth: sp.TruthCatalogue, cosmic_xy: np.ndarray,
             inj: sp.Injections, *, edge_margin: float | None = None, cosmic_radius: float = 2.0,
             injection_radius: float = 8.0) -> list[str]:
    """Cause of each spurious detection at new-grid (x, y), first matching rule of :data:`CAUSES`.

    edge: within ``2 FWHM`` of the frame border or of an EDGE pixel; saturated/bleed: a SATURATED or
    BLEED pixel within 2 FWHM (the pipeline's ``is_saturated`` rule); bad column: a BAD_COLUMN or
    FLAT_BAD pixel within 1 FWHM (e.g. a source split in two by a masked column); cosmic ray: a true cosmic-ray hit
    (>= 100 e-, new image or reference) within ``cosmic_radius`` px; star residual: inside the 1-sigma
    radius (at least 1.5 FWHM) of a true star whose peak is >= 1 sky sigma; galaxy residual: within 2 r_eff + 1.5 FWHM of a true
    galaxy; next to an injection: within ``injection_radius`` px of an injected source (a split or
    offset detection of it); noise: none of these.
    """
    ny, nx = mask.shape
    edge_margin = 2.0 * fwhm if edge_margin is None else edge_margin
    r_flag = 2.0 * fwhm
    h = int(math.ceil(r_flag))
    star_tree = cKDTree(truth.star_xy) if len(truth.star_xy) else None
    gal_tree = cKDTree(truth.galaxy_xy) if len(truth.galaxy_xy) else None
    cr_tree = cKDTree(cosmic_xy) if len(cosmic_xy) else None
    inj_tree = cKDTree(np.column_stack([inj.x, inj.y])) if len(inj) else None
    max_star_r = float(truth.star_radius.max()) if len(truth.star_radius) else 0.0
    max_gal_r = float(truth.galaxy_radius.max()) if len(truth.galaxy_radius) else 0.0
    def core_bits(xi, yi):  # mask bits within one FWHM
        ix, iy = int(round(xi)), int(round(yi))
        r = int(math.ceil(fwhm))
        sl = (slice(max(iy - r, 0), min(iy + r + 1, ny)), slice(max(ix - r, 0), min(ix + r + 1, nx)))
        yy, xx = np.mgrid[sl]
        near = (xx - xi) ** 2 + (yy - yi) ** 2 <= fwhm**2
        return int(np.bitwise_or.reduce(mask[sl][near].ravel())) if near.any() else 0

    causes = []
    for xi, yi in zip(np.atleast_1d(x), np.atleast_1d(y)):
        ix, iy = int(round(xi)), int(round(yi))
        sl = (slice(max(iy - h, 0), min(iy + h + 1, ny)), slice(max(ix - h, 0), min(ix + h + 1, nx)))
        yy, xx = np.mgrid[sl]
        near = (xx - xi) ** 2 + (yy - yi) ** 2 <= r_flag**2
        bits = int(np.bitwise_or.reduce(mask[sl][near].ravel())) if near.any() else 0
        point = (xi, yi)
        if (xi < edge_margin or yi < edge_margin or xi > nx - 1 - edge_margin or yi > ny - 1 - edge_margin
                or bits & MaskBit.EDGE):
            causes.append("edge")
        elif bits & (MaskBit.SATURATED | MaskBit.BLEED):
            causes.append("saturated/bleed")
        elif core_bits(xi, yi) & (MaskBit.BAD_COLUMN | MaskBit.FLAT_BAD):
            causes.append("bad column")
        elif cr_tree is not None and cr_tree.query_ball_point(point, cosmic_radius):
            causes.append("cosmic ray")
        elif star_tree is not None and any(
                math.hypot(*(truth.star_xy[j] - point)) <= truth.star_radius[j]
                for j in star_tree.query_ball_point(point, max_star_r)):
            causes.append("star residual")
        elif gal_tree is not None and any(
                math.hypot(*(truth.galaxy_xy[j] - point)) <= truth.galaxy_radius[j]
                for j in gal_tree.query_ball_point(point, max_gal_r)):
            causes.append("galaxy residual")
        elif inj_tree is not None and inj_tree.query_ball_point(point, injection_radius):
            causes.append("next to an injection")
        else:
            causes.append("noise")
    return causes


def masked_within(mask: np.ndarray, x: float, y: float, radius: float) -> bool:
    """Whether any pixel within ``radius`` px of (x, y) is masked."""
    ny, nx = mask.shape
    ix, iy, r = int(round(x)), int(round(y)), int(math.ceil(radius))
    sl = (slice(max(iy - r, 0), min(iy + r + 1, ny)), slice(max(ix - r, 0), min(ix + r + 1, nx)))
    yy, xx = np.mgrid[sl]
    near = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return bool(np.any(mask[sl][near] != 0))


def sample_map(image: np.ndarray, x, y, half: int = 4) -> np.ndarray:
    """Cubic-spline value of ``image`` at each (x, y) from a local cutout; NaN if the cutout has NaN or leaves the frame.

    (Bilinear interpolation would under-read a peak that falls between pixels by several per cent.)
    """
    out = np.full(np.size(x), np.nan)
    ny, nx = image.shape
    for k, (xi, yi) in enumerate(zip(np.atleast_1d(x), np.atleast_1d(y))):
        ix, iy = int(round(xi)), int(round(yi))
        if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
            continue
        cut = np.asarray(image[iy - half: iy + half + 1, ix - half: ix + half + 1], dtype=np.float64)
        if np.all(np.isfinite(cut)):
            out[k] = ndimage.map_coordinates(cut, [[yi - iy + half], [xi - ix + half]], order=3, mode="nearest")[0]
    return out


# --------------------------------------------------------------------------- one pair


def run_pair(night: sp.Night, index: int, seed: int, args) -> dict[str, dict]:
    """Simulate and inject one pair; difference and score it against each reference of ``args.reference``."""
    t0 = time.perf_counter()
    pair = sp.make_pair(night, index, seed, args.reference_frames)
    planes, inj = sp.inject(pair, night, np.random.default_rng([seed, 20, index]), spacing=args.spacing)
    t_sim = time.perf_counter() - t0
    records = {}
    for kind in args.reference:
        t0 = time.perf_counter()
        reference, built = reference_planes(pair, kind)
        records[kind] = score(pair, night, planes, inj, reference, args, t_sim, built, time.perf_counter() - t0)
    return records


def reference_planes(pair: sp.Pair, kind: str):
    """The best single reference frame, or the proper co-add of all the reference frames (and its figures)."""
    if kind == "best":
        return pair.ref.planes, {}
    result = coadd_frames([r.planes for r in pair.refs], DifferenceParams(), anchor=0)
    return result.planes, result.quality


def score(pair: sp.Pair, night: sp.Night, planes, inj: sp.Injections, reference, args, t_sim: float,
          built: dict, t_reference: float) -> dict:
    """Difference ``planes`` against ``reference`` and score its candidates against the injections."""
    t0 = time.perf_counter()
    result = difference_images(planes, reference, DifferenceParams())
    t_diff = time.perf_counter() - t0
    z = result.zogy
    invalid = z.mask | ~np.isfinite(z.S_corr)
    excluded = excluded_injections(inj, result.mask, invalid)
    cand = result.candidates
    recovered, matched = match(inj, cand["x"], cand["y"], cand["is_negative"], args.match_radius)
    scorr_at = sample_map(np.where(invalid, np.nan, z.S_corr).astype(np.float64), inj.x, inj.y)
    fwhm_d = float(2.0 * np.sqrt(np.count_nonzero(z.P_D >= 0.5 * z.P_D.max()) / np.pi))
    truth = sp.truth_catalogue(pair, night)
    cosmic = sp.cosmic_rays_on_new_grid(pair)
    spurious = np.flatnonzero(~matched)
    causes = classify(np.asarray(cand["x"])[spurious], np.asarray(cand["y"])[spurious], result.mask, fwhm_d,
                      truth, cosmic, inj)
    unmasked = ~invalid & (result.mask == 0)
    fp_xy = np.column_stack([np.asarray(cand["x"])[spurious], np.asarray(cand["y"])[spurious]])
    d_inj, j_inj = cKDTree(np.column_stack([inj.x, inj.y])).query(fp_xy) if len(spurious) else (np.zeros(0), np.zeros(0, int))
    record = dict(
        index=pair.index,
        seeing_new=pair.new.conditions.seeing_fwhm_px, seeing_ref=pair.ref.conditions.seeing_fwhm_px,
        rotation_deg=pair.new.conditions.rotation_deg - pair.ref.conditions.rotation_deg,
        s_diff=inj.s_diff, s_new=inj.s_new, s_ref=inj.s_ref, recovered=recovered, excluded=excluded,
        scorr_at=scorr_at,
        fp_negative=np.asarray(cand["is_negative"])[spurious], fp_cause=np.array(causes, dtype=object),
        fp_sharpness=np.asarray(cand["sharpness"])[spurious], fp_significance=np.asarray(cand["significance"])[spurious],
        fp_flagged=~np.asarray(cand["is_good"], dtype=bool)[spurious],  # saturated, edge or sharp
        fp_masked=np.asarray(cand["masked_fraction"])[spurious] > 0,
        fp_xy=fp_xy, fp_inj_dist=d_inj, fp_inj_s=inj.s_diff[j_inj], fp_inj_found=recovered[j_inj],
        area_mpix=float(unmasked.sum()) / 1e6, frame_mpix=float(unmasked.size) / 1e6,
        fwhm_pd=fwhm_d, noise_floor=noise_peaks_expected(float(unmasked.sum()), fwhm_d),
        eta=zogy_efficiency(pair, night.spec.read_noise_e),
        quality=result.quality, timings=result.timings, t_sim=t_sim, t_diff=t_diff,
        reference=built, t_reference=t_reference,
        n_dropped_masked=int(cand.meta.get("n_dropped_masked", 0)),
    )
    return record


# --------------------------------------------------------------------------- report


def print_pair_row(index: int, kind: str, r: dict) -> None:
    use = ~r["excluded"] & (r["s_diff"] >= 10)
    q = r["quality"]
    print(f"{index:4d} {kind:>5} {r['seeing_new']:6.2f}/{r['seeing_ref']:<6.2f} {r['rotation_deg']:6.2f} "
          f"{r['s_diff'].size:5d} {int(r['excluded'].sum()):6d} {r['recovered'][use].mean():11.3f} "
          f"{int(np.sum(~r['fp_negative'])):4d} {int(np.sum(r['fp_negative'])):4d} {q['registration_rms_px']:8.3f} "
          f"{q['flux_ratio']:6.3f} {q['scorr_std']:9.3f} {r['t_sim']:6.1f} {r['t_reference']:6.1f} "
          f"{r['t_diff']:6.1f}", flush=True)


def summarise(records: list[dict], frame_side: int, label: str = "ours") -> dict:
    s = np.concatenate([r["s_diff"] for r in records])
    rec = np.concatenate([r["recovered"] for r in records])
    exc = np.concatenate([r["excluded"] for r in records])
    scorr = np.concatenate([r["scorr_at"] for r in records])
    use = ~exc
    s_u, rec_u = s[use], rec[use]
    table = completeness_table(s_u, rec_u)
    boot = bootstrap_s50(s_u, rec_u)
    fit = fit_completeness(s_u, rec_u)
    eff_sel = use & (s >= 8) & (s <= 30) & np.isfinite(scorr)
    efficiency = float(np.median(scorr[eff_sel] / s[eff_sel])) if eff_sel.any() else float("nan")
    n_frames = len(records)
    scale = (frame_side / 2048.0) ** 2  # per 2048x2048 frame
    fp_pos = [int(np.sum(~r["fp_negative"])) for r in records]
    fp_neg = [int(np.sum(r["fp_negative"])) for r in records]
    fp_pos_unflagged = [int(np.sum(~r["fp_negative"] & ~r["fp_flagged"])) for r in records]
    fp_pos_clear = [int(np.sum(~r["fp_negative"] & ~r["fp_flagged"] & ~r["fp_masked"])) for r in records]
    area = sum(r["area_mpix"] for r in records)
    causes_pos = {c: int(sum(np.sum((r["fp_cause"] == c) & ~r["fp_negative"]) for r in records)) for c in CAUSES}
    causes_neg = {c: int(sum(np.sum((r["fp_cause"] == c) & r["fp_negative"]) for r in records)) for c in CAUSES}
    return dict(
        label=label, n_frames=n_frames, frame_side=frame_side, n_injected=int(s.size), n_excluded=int(exc.sum()),
        n_used=int(use.sum()), table=table, s50_interp=s50_interpolated(s_u, rec_u), s50_boot=boot, fit=fit,
        scorr_efficiency=efficiency, eta_zogy=float(np.mean([r["eta"] for r in records])),
        completeness_bright=float(rec_u[s_u >= 10].mean()) if np.any(s_u >= 10) else float("nan"),
        fp_pos_per_frame=float(np.mean(fp_pos)), fp_pos_per_2048=float(np.mean(fp_pos)) / scale,
        fp_pos_unflagged_per_2048=float(np.mean(fp_pos_unflagged)) / scale,
        fp_pos_clear_per_2048=float(np.mean(fp_pos_clear)) / scale,
        fp_neg_per_2048=float(np.mean(fp_neg)) / scale,
        fp_pos_per_mpix=float(np.sum(fp_pos)) / area, fp_neg_per_mpix=float(np.sum(fp_neg)) / area,
        fp_pos_list=fp_pos, fp_neg_list=fp_neg, causes_pos=causes_pos, causes_neg=causes_neg,
        noise_floor_per_2048=float(np.mean([r["noise_floor"] for r in records])) / scale,
        area_mpix_per_frame=area / n_frames,
    )


def print_summary(summary: dict, records: list[dict]) -> None:
    side = summary["frame_side"]
    print(f"\n## completeness vs S/N ({summary['label']}; {summary['n_frames']} pairs of {side}x{side}; "
          f"{summary['n_used']} injections used, {summary['n_excluded']} on masked pixels not counted)")
    print(f"{'s_diff bin':>12} {'n':>5} {'found':>6} {'complete':>9} {'68% interval':>15} {'ideal Phi(s-5)':>15}")
    for r in summary["table"]:
        if r["n"] == 0:
            continue
        print(f"{r['lo']:5.1f}-{r['hi']:<6.1f} {r['n']:5d} {r['k']:6d} {r['fraction']:9.3f} "
              f"  [{r['lo68']:.3f},{r['hi68']:.3f}] {r['ideal']:15.3f}")
    b = summary["s50_boot"]
    f = summary["fit"]
    print(f"S/N at 50% completeness (interpolated): {summary['s50_interp']:.2f}  "
          f"(bootstrap median {b[0]:.2f}, 68% [{b[1]:.2f}, {b[2]:.2f}])   goal <= 5.5, ideal 5.0")
    print(f"fit c_max*Phi((s-s50)/w): s50 = {f['s50']:.2f} +- {f['s50_err']:.2f}, w = {f['width']:.2f} (ideal 1), "
          f"c_max = {f['c_max']:.3f}")
    print(f"completeness for s_diff >= 10: {summary['completeness_bright']:.3f}")
    print(f"median S_corr at the injection / s_diff (8 <= s_diff <= 30): {summary['scorr_efficiency']:.3f}; "
          f"ZOGY-optimal S/N / s_diff for these PSF pairs (background-limited): {summary['eta_zogy']:.3f} "
          f"-> best achievable s50 ~ {5.0 / summary['eta_zogy']:.2f}")
    print(f"\n## false positives ({summary['label']}; unmatched candidates, scaled to a 2048x2048 frame; "
          f"{summary['area_mpix_per_frame']:.2f} unmasked Mpix per frame)")
    print(f"positive: {summary['fp_pos_per_2048']:.1f} per frame ({summary['fp_pos_per_mpix']:.2f} per Mpix), "
          f"per pair {summary['fp_pos_list']}; not flagged (is_good: not saturated, edge or sharp): "
          f"{summary['fp_pos_unflagged_per_2048']:.1f} per frame; also clear of any masked pixel within "
          f"1 FWHM: {summary['fp_pos_clear_per_2048']:.1f} per frame   goal <= 3")
    print(f"negative: {summary['fp_neg_per_2048']:.1f} per frame ({summary['fp_neg_per_mpix']:.2f} per Mpix), "
          f"per pair {summary['fp_neg_list']}")
    print(f"noise floor (Gaussian-field peaks above 5 sigma, one sign, for the P_D FWHM): "
          f"{summary['noise_floor_per_2048']:.1f} per frame")
    print(f"{'cause':<22} {'positive':>9} {'negative':>9}")
    for c in CAUSES:
        print(f"{c:<22} {summary['causes_pos'][c]:9d} {summary['causes_neg'][c]:9d}")


def print_false_positives(records: list[dict]) -> None:
    print(f"\n{'pair':>4} {'x':>7} {'y':>7} {'sign':>4} {'signif':>7} {'sharp':>6} {'flagged':>7} {'masked':>6} "
          f"{'nearest injection: px, s_diff, found':>37}  cause")
    for r in records:
        for k in range(len(r["fp_cause"])):
            print(f"{r['index']:4d} {r['fp_xy'][k, 0]:7.1f} {r['fp_xy'][k, 1]:7.1f} "
                  f"{'-' if r['fp_negative'][k] else '+':>4} {r['fp_significance'][k]:7.2f} "
                  f"{r['fp_sharpness'][k]:6.2f} {str(bool(r['fp_flagged'][k])):>7} {str(bool(r['fp_masked'][k])):>6}"
                  f" {r['fp_inj_dist'][k]:17.1f} {r['fp_inj_s'][k]:8.1f} {str(bool(r['fp_inj_found'][k])):>10}"
                  f"  {r['fp_cause'][k]}")


def plot_completeness(path: Path, summaries: list[dict], title: str) -> None:
    s_grid = np.exp(np.linspace(np.log(3.0), np.log(50.0), 200))
    series = [pngplot.Series(list(s_grid), list(phi(s_grid - 5.0)), "ideal Phi(S/N - 5)", color=(90, 90, 90),
                             dashed=True)]
    colors = [(214, 39, 40), (31, 119, 180), (44, 160, 44)]
    for summary, color in zip(summaries, colors):
        rows = [r for r in summary["table"] if r["n"] > 0]
        fit = summary["fit"]
        s50 = summary["s50_interp"]
        series.append(pngplot.Series(
            [r["s_mean"] for r in rows], [r["fraction"] for r in rows],
            f"{summary['label']}: S/N50 = {s50:.2f}, {summary['fp_pos_per_2048']:.1f} FP/frame",
            color=color, kind="points", yerr_lo=[r["lo68"] for r in rows], yerr_hi=[r["hi68"] for r in rows]))
        series.append(pngplot.Series(
            list(s_grid), list(fit["c_max"] * phi((s_grid - fit["s50"]) / fit["width"])),
            f"{summary['label']} fit: s50 {fit['s50']:.2f}, width {fit['width']:.2f}", color=color, width=2))
    axes = pngplot.Axes(xlim=(3.0, 50.0), ylim=(0.0, 1.05), xlog=True,
                        xticks=[3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 50], yticks=[0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0],
                        xlabel="injected S/N (optimal, difference image: (s_new^-2 + s_ref^-2)^-1/2)",
                        ylabel="completeness", title=title,
                        hlines=[(0.5, (150, 150, 150))],
                        vlines=[(5.0, (150, 150, 150)), (5.5, (214, 39, 40), "goal 5.5")])
    path.parent.mkdir(parents=True, exist_ok=True)
    pngplot.plot(path, axes, series)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 pairs of 1024x1024 (smoke run)")
    parser.add_argument("--pairs", type=int, default=None, help="number of pairs (default 8, quick 2)")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 2048, quick 1024)")
    parser.add_argument("--spacing", type=int, default=80, help="injection grid spacing (px)")
    parser.add_argument("--match-radius", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG path (default docs/img/completeness.png; quick: var/benchmarks/completeness-quick.png)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--list-fp", action="store_true", help="print every false positive with its cause")
    parser.add_argument("--reference-frames", type=int, default=1,
                        help="exposures of the reference epoch per pair (default 1)")
    parser.add_argument("--reference", type=lambda text: text.split(","), default=None,
                        help="comma-separated: best (best single frame), coadd (proper co-add of the reference "
                             "frames); default best for one reference frame, else best,coadd")
    args = parser.parse_args()
    if args.reference_frames < 1:
        parser.error("--reference-frames must be at least 1")
    args.reference = args.reference or (["best"] if args.reference_frames == 1 else ["best", "coadd"])
    unknown = set(args.reference) - {"best", "coadd"}
    if unknown:
        parser.error(f"--reference: unknown kind(s) {', '.join(sorted(unknown))} (best, coadd)")
    n_pairs = args.pairs or (2 if args.quick else 8)
    size = args.size or (1024 if args.quick else 2048)
    # quick (smoke) runs never overwrite the documented figure: they plot into the git-ignored var/
    plot_path = args.plot or (ROOT / "var" / "benchmarks" / "completeness-quick.png" if args.quick
                              else ROOT / "docs" / "img" / "completeness.png")

    print(f"# injection-recovery: {n_pairs} pairs of {size}x{size}, grid spacing {args.spacing} px, "
          f"seed {args.seed}, threshold {DifferenceParams().threshold} (difference_images defaults), "
          f"{args.reference_frames} reference frame(s), references: {', '.join(args.reference)}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    night = sp.make_night(size, args.seed)
    records = {kind: [] for kind in args.reference}
    print(f"{'pair':>4} {'ref':>5} {'FWHM new/ref':>13} {'drot':>6} {'inj':>5} {'masked':>6} {'found s>=10':>11} "
          f"{'FP+':>4} {'FP-':>4} {'reg rms':>8} {'F_r':>6} {'scorr_std':>9} {'t_sim':>6} {'t_ref':>6} {'t_diff':>6}")
    for i in range(n_pairs):
        for kind, r in run_pair(night, i, args.seed, args).items():
            records[kind].append(r)
            print_pair_row(i, kind, r)
    summaries = [summarise(records[kind], size, label=kind) for kind in args.reference]
    for summary in summaries:
        print_summary(summary, records[summary["label"]])
        if args.list_fp:
            print_false_positives(records[summary["label"]])
    if len(summaries) == 2:
        a, b = summaries
        print(f"\nS/N at 50% completeness: {b['label']} {b['s50_interp']:.2f} / {a['label']} {a['s50_interp']:.2f} = "
              f"{b['s50_interp'] / a['s50_interp']:.3f} (the ideal s_diff uses the optimal co-add of the "
              f"{args.reference_frames} reference frames)")
    plot_completeness(plot_path, summaries,
                      f"Injection-recovery, {n_pairs} simulated pairs of {size}x{size}, threshold 5 sigma")
    print(f"\nplot: {plot_path}")
    if args.json:
        args.json.write_text(json.dumps(_jsonable(dict(summaries=summaries)), indent=1))
        print(f"json: {args.json}")
    print(f"total {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
