"""Side by side with a peer: our difference pipeline against properimage on the same simulated pairs.

The pairs are the first ``--pairs`` pairs of ``injection_recovery.py`` (same
simulator, same seed streams, same injections). Each pair is written to a
temporary directory as FITS (calibrated data in e- with VAR and MASK
extensions), and both tools read those files:

* ours: ``difference_images(new, ref)`` with its defaults, in this process
  (median wall time of ``--repeat`` runs; FITS reading excluded);
* properimage (a public ZOGY implementation, ``properimage.operations.subtract``
  with ``align=True`` and its defaults otherwise), installed only in the
  benchmark environment ``.bench-venv`` (see benchmarks/README.md), run by
  ``properimage_worker.py`` in its own process, one pair per command (it takes
  minutes per 2048x2048 pair). Its wall time covers building its image
  objects, alignment, PSFs, flux-ratio and shift fit and the transforms.

properimage's S_corr is not unit-variance, so it is normalised by a robust
spread (median and MAD of its valid pixels). Both S_corr maps are then searched
by the SAME simple detector (connected pixels with |S_corr| >= 5 after the same
robust normalisation, peak pixel refined by a 3-point parabola), and our
pipeline's own candidate list is scored as well. properimage aligns the new
image onto the reference grid, so its detections are compared with the
injections mapped to that grid by the true transform, and mapped back to the new
grid for classifying false positives. An injection counts for the completeness
only if neither tool has it on a masked/undefined pixel.

Printed: time per pair and the speed ratio, S/N at 50 % completeness, the
completeness table, false positives per frame (positive and negative) and per
Mpix with their causes, for each tool; plot ``docs/img/peer_properimage.png``.

    .venv/bin/python benchmarks/peer_properimage.py            # 3 pairs of 2048x2048 (~35 min, properimage dominates)
    .venv/bin/python benchmarks/peer_properimage.py --quick    # 1 pair of 1024x1024 (~2 min)
    .venv/bin/python benchmarks/peer_properimage.py --workdir /tmp/peer-bench --reuse   # keep outputs; re-runs
                     # properimage only where the simulated inputs changed (e.g. after a calibration change)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import mad_std
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

import injection_recovery as ir  # noqa: E402
import simulated_pairs as sp  # noqa: E402

from dagster_project.science.difference import DifferenceParams, difference_images  # noqa: E402
from dagster_project.science.images import ImagePlanes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 5.0
#: Thresholds tried on properimage's normalised S_corr, to compare at an equal false-positive rate.
THRESHOLD_SCAN = (5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0)
#: properimage PSF models: its default Gaussian fit, and its Karhunen-Loeve PSF.
VARIANTS = {"gauss": "Gaussian-fitted PSF (default)", "kl": "Karhunen-Loeve PSF (fitted_psf=False)"}


def write_planes(path: Path, planes: ImagePlanes) -> None:
    fits.HDUList([
        fits.PrimaryHDU(planes.data.astype(np.float32), header=planes.header),
        fits.ImageHDU(planes.variance.astype(np.float32), name="VAR"),
        fits.ImageHDU(planes.mask, name="MASK"),
    ]).writeto(path, overwrite=True)


def read_planes(path: Path) -> ImagePlanes:
    with fits.open(path, memmap=False) as hdul:
        return ImagePlanes(hdul[0].data.astype(np.float32), hdul["VAR"].data.astype(np.float32),
                           hdul["MASK"].data.astype(np.uint16), hdul[0].header.copy())


def robust_normalise(scorr: np.ndarray, invalid: np.ndarray) -> tuple[np.ndarray, float, float]:
    values = scorr[~invalid]
    centre = float(np.median(values))
    spread = float(mad_std(values))
    return (scorr - centre) / spread, centre, spread


def simple_detect(scorr: np.ndarray, invalid: np.ndarray, threshold: float = THRESHOLD):
    """Peaks of connected regions with |S_corr| >= threshold: (x, y, is_negative, peak)."""
    filled = np.where(invalid, 0.0, scorr)
    xs, ys, neg, peaks = [], [], [], []
    for sign in (1.0, -1.0):
        labels, n = ndimage.label(sign * filled >= threshold, structure=np.ones((3, 3)))
        if n == 0:
            continue
        pos = ndimage.maximum_position(sign * filled, labels, np.arange(1, n + 1))
        for py, px in pos:
            x, y = float(px), float(py)
            if 0 < px < filled.shape[1] - 1:
                a, b, c = sign * filled[py, px - 1], sign * filled[py, px], sign * filled[py, px + 1]
                if a - 2 * b + c < 0:
                    x += float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
            if 0 < py < filled.shape[0] - 1:
                a, b, c = sign * filled[py - 1, px], sign * filled[py, px], sign * filled[py + 1, px]
                if a - 2 * b + c < 0:
                    y += float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
            xs.append(x)
            ys.append(y)
            neg.append(sign < 0)
            peaks.append(sign * filled[py, px])
    return np.array(xs), np.array(ys), np.array(neg, bool), np.array(peaks)


def score(label, inj_grid: sp.Injections, inj_new: sp.Injections, excluded, x, y, negative, to_new, pair, night,
          new_mask, fwhm, area_mpix, args, scorr=None) -> dict:
    """Per-pair record in the format of injection_recovery.summarise (``scorr``: normalised map on the tool's grid)."""
    recovered, matched = ir.match(inj_grid, x, y, negative, args.match_radius)
    spurious = np.flatnonzero(~matched)
    sx, sy = to_new(np.asarray(x)[spurious], np.asarray(y)[spurious])
    truth = sp.truth_catalogue(pair, night)
    causes = ir.classify(np.asarray(sx), np.asarray(sy), new_mask, fwhm, truth, sp.cosmic_rays_on_new_grid(pair),
                         inj_new)
    causes = np.array(causes, dtype=object)
    masked = np.array([ir.masked_within(new_mask, xi, yi, fwhm) for xi, yi in zip(np.atleast_1d(sx), np.atleast_1d(sy))],
                      dtype=bool)
    return dict(index=pair.index, s_diff=inj_new.s_diff, recovered=recovered, excluded=excluded, fp_masked=masked,
                scorr_at=ir.sample_map(scorr, inj_grid.x, inj_grid.y) if scorr is not None else
                np.full(len(inj_new), np.nan), fp_negative=np.asarray(negative, bool)[spurious],
                fp_cause=causes, fp_flagged=np.isin(causes, ["edge", "saturated/bleed"]),
                area_mpix=area_mpix, noise_floor=ir.noise_peaks_expected(area_mpix * 1e6, fwhm),
                eta=ir.zogy_efficiency(pair, night.spec.read_noise_e))


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def run_properimage(args, variant: str, ref_path: Path, new_path: Path, out_path: Path):
    """(seconds, None) or (None, reason) for one properimage subtraction in its own process.

    With ``--reuse``, an earlier output in the work directory is taken instead when the sidecar
    ``.json`` says it was made from byte-identical inputs (its measured time is reported again).
    """
    sidecar = out_path.with_suffix(".json")
    digest = _digest(ref_path, new_path)
    if args.reuse and out_path.exists() and sidecar.exists():
        saved = json.loads(sidecar.read_text())
        if saved.get("inputs_sha256") == digest:
            return saved["seconds"], None
    cmd = [args.bench_python, str(ROOT / "benchmarks" / "properimage_worker.py"), str(ref_path), str(new_path),
           str(out_path), variant]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout:.0f} s"
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["?"])[-1]
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    sidecar.write_text(json.dumps({"inputs_sha256": digest, "seconds": seconds, "load": os.getloadavg()[0]}))
    return seconds, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 pair of 1024x1024")
    parser.add_argument("--pairs", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--size", type=int, default=None, help="default 2048 (quick 1024)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="properimage PSF models to run: gauss (its default) and/or kl")
    parser.add_argument("--spacing", type=int, default=80)
    parser.add_argument("--match-radius", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours per pair")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to properimage per pair")
    parser.add_argument("--bench-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the FITS files and outputs here")
    parser.add_argument("--reuse", action="store_true",
                        help="with --workdir: reuse properimage outputs made from byte-identical inputs")
    args = parser.parse_args()
    n_pairs = args.pairs or (1 if args.quick else 3)
    size = args.size or (1024 if args.quick else 2048)
    # quick (smoke) runs never overwrite the documented figure: they plot into the git-ignored var/
    plot_path = args.plot or (ROOT / "var" / "benchmarks" / "peer_properimage-quick.png" if args.quick
                              else ROOT / "docs" / "img" / "peer_properimage.png")
    if not Path(args.bench_python).exists():
        sys.exit(f"{args.bench_python} not found: install properimage into .bench-venv (benchmarks/README.md)")

    tmp = tempfile.TemporaryDirectory(prefix="peer-") if args.workdir is None else None
    workdir = Path(tmp.name) if tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# peer comparison with properimage ({', '.join(VARIANTS[v] for v in args.variants)}): {n_pairs} pairs of "
          f"{size}x{size}, the first pairs of injection_recovery.py (seed {args.seed}); FITS in {workdir}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    night = sp.make_night(size, args.seed)
    ours_labels = ("ours (pipeline candidates)", "ours (simple detector)")
    records: dict[str, list] = {label: [] for label in ours_labels}
    scans: dict[str, dict[float, list]] = {v: {t: [] for t in THRESHOLD_SCAN} for v in args.variants}
    times: dict[str, list] = {"ours": [], **{v: [] for v in args.variants}}
    print(f"{'pair':>4} {'ours s':>7} " + " ".join(f"{'PI-' + v + ' s':>9} {'ratio':>6}" for v in args.variants)
          + f" {'used':>5} {'load':>11}")
    for i in range(n_pairs):
        pair = sp.make_pair(night, i, args.seed)
        planes, inj = sp.inject(pair, night, np.random.default_rng([args.seed, 20, i]), spacing=args.spacing)
        ref_path, new_path = workdir / f"pair{i}_ref.fits", workdir / f"pair{i}_new.fits"
        write_planes(ref_path, pair.ref.planes)
        write_planes(new_path, planes)
        del planes

        load0 = os.getloadavg()[0]
        new_p, ref_p = read_planes(new_path), read_planes(ref_path)
        ours_t = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = difference_images(new_p, ref_p, DifferenceParams())
            ours_t.append(time.perf_counter() - start)
        ours_s = statistics.median(ours_t)

        outputs = {}
        for v in args.variants:
            out_path = workdir / f"pair{i}_properimage_{v}.fits"
            seconds, failure = run_properimage(args, v, ref_path, new_path, out_path)
            if failure:
                print(f"{i:4d} properimage-{v} FAILED: {failure}")
                continue
            outputs[v] = (seconds, out_path)
        if not outputs:
            continue
        times["ours"].append(ours_s)
        for v, (seconds, _) in outputs.items():
            times[v].append(seconds)
        load1 = os.getloadavg()[0]

        z = result.zogy
        our_invalid = z.mask | ~np.isfinite(z.S_corr)
        our_norm, _, _ = robust_normalise(z.S_corr.astype(np.float64), our_invalid)
        our_map = np.where(our_invalid, np.nan, our_norm)
        pi = {}
        for v, (_, out_path) in outputs.items():
            with fits.open(out_path, memmap=False) as hdul:
                scorr = hdul[0].data.astype(np.float64)
                invalid = hdul["MASK"].data.astype(bool) | ~np.isfinite(scorr)
            norm, _, spread = robust_normalise(scorr, invalid)
            pi[v] = (norm, invalid, spread)
        # injections on the reference grid (properimage's) and the union of exclusions
        rx, ry = (np.asarray(a) for a in pair.new_to_ref(inj.x, inj.y))
        inj_ref = sp.Injections(rx, ry, inj.flux, inj.s_new, inj.s_ref, inj.s_diff)
        excluded = ir.excluded_injections(inj, result.mask, our_invalid)
        for _, invalid, _ in pi.values():
            excluded |= ir.excluded_injections(inj_ref, np.zeros(invalid.shape, np.uint16), invalid)
        fwhm = float(2.0 * np.sqrt(np.count_nonzero(z.P_D >= 0.5 * z.P_D.max()) / np.pi))

        def identity(x, y):
            return x, y

        common = dict(pair=pair, night=night, new_mask=result.mask, fwhm=fwhm, args=args)
        our_area = float(np.count_nonzero(~our_invalid & (result.mask == 0))) / 1e6
        cand = result.candidates
        records[ours_labels[0]].append(score(
            "ours", inj, inj, excluded, cand["x"], cand["y"], cand["is_negative"], identity, area_mpix=our_area,
            scorr=our_map, **common))
        x, y, neg, _ = simple_detect(our_norm, our_invalid)
        records[ours_labels[1]].append(score("ours", inj, inj, excluded, x, y, neg, identity, area_mpix=our_area,
                                             scorr=our_map, **common))
        for v, (norm, invalid, _) in pi.items():
            area = float(np.count_nonzero(~invalid)) / 1e6
            pi_map = np.where(invalid, np.nan, norm)
            for t in THRESHOLD_SCAN:
                x, y, neg, _ = simple_detect(norm, invalid, t)
                scans[v][t].append(score("properimage", inj_ref, inj, excluded, x, y, neg, pair.ref_to_new,
                                         area_mpix=area, scorr=pi_map, **common))
        print(f"{i:4d} {ours_s:7.2f} " + " ".join(
            f"{outputs[v][0]:9.1f} {outputs[v][0] / ours_s:6.1f}" if v in outputs else f"{'failed':>9} {'':>6}"
            for v in args.variants) + f" {int((~excluded).sum()):5d} {load0:5.2f}/{load1:<5.2f}", flush=True)
        del result, new_p, ref_p, pi, our_norm, our_map

    if not times["ours"]:
        sys.exit("properimage failed on every pair")
    ours_med = statistics.median(times["ours"])
    print(f"\n# time per {size}x{size} pair (median over pairs): ours {ours_med:.2f} s (difference_images: background, "
          f"stars, PSFs, registration, resampling, flux scale, ZOGY, detection; median of {args.repeat} runs)")
    for v in args.variants:
        if times[v]:
            med = statistics.median(times[v])
            print(f"  properimage {VARIANTS[v]}: {med:.1f} s (subtract with alignment, no detection) -> ours "
                  f"{med / ours_med:.0f}x faster   goal >= 5x")
    for v in args.variants:
        if times[v]:
            records[f"properimage {v} (simple detector)"] = scans[v][THRESHOLD]
    summaries = []
    for label, recs in records.items():
        if not recs:
            continue
        summary = ir.summarise(recs, size, label=label)
        summaries.append(summary)
        b = summary["s50_boot"]
        print(f"\n## {label}: S/N at 50% completeness {summary['s50_interp']:.2f} (68% [{b[1]:.2f}, {b[2]:.2f}]); "
              f"fit s50 {summary['fit']['s50']:.2f}, width {summary['fit']['width']:.2f}, "
              f"c_max {summary['fit']['c_max']:.3f}; completeness s>=10: {summary['completeness_bright']:.3f}; "
              f"normalised S_corr at the injection / s_diff (8-30): {summary['scorr_efficiency']:.3f}")
        print(f"   false positives per {size}x{size} frame: positive {summary['fp_pos_per_frame']:.1f} "
              f"({summary['fp_pos_per_mpix']:.2f}/Mpix; without edge and saturated/bleed: "
              f"{summary['fp_pos_unflagged_per_2048'] * (size / 2048) ** 2:.1f}), negative "
              f"{summary['fp_neg_per_2048'] * (size / 2048) ** 2:.1f} ({summary['fp_neg_per_mpix']:.2f}/Mpix)")
        print("   causes (positive/negative): " + ", ".join(
            f"{c} {summary['causes_pos'][c]}/{summary['causes_neg'][c]}" for c in ir.CAUSES
            if summary['causes_pos'][c] or summary['causes_neg'][c]))
    ours_fp = summaries[0]["fp_pos_per_frame"]
    for v in args.variants:
        if not times[v]:
            continue
        print(f"\n## properimage {v} at higher thresholds (to compare at an equal false-positive rate: "
              f"ours has {ours_fp:.1f} positive per frame)")
        print(f"{'threshold':>9} {'FP+ /frame':>10} {'FP- /frame':>10} {'S/N at 50%':>10} {'fit s50':>8} "
              f"{'complete s>=10':>14}")
        for t, recs in scans[v].items():
            s_ = ir.summarise(recs, size, label=f"{t}")
            print(f"{t:9.0f} {s_['fp_pos_per_frame']:10.1f} {s_['fp_neg_per_2048'] * (size / 2048) ** 2:10.1f} "
                  f"{s_['s50_interp']:10.2f} {s_['fit']['s50']:8.2f} {s_['completeness_bright']:14.3f}")
    print("\n## completeness per S/N bin")
    print(f"{'s_diff bin':>12} {'n':>5} " + " ".join(f"{s_['label'][:22]:>22}" for s_ in summaries) + f" {'ideal':>6}")
    for rows in zip(*(s_["table"] for s_ in summaries)):
        if rows[0]["n"] == 0:
            continue
        print(f"{rows[0]['lo']:5.1f}-{rows[0]['hi']:<6.1f} {rows[0]['n']:5d} "
              + " ".join(f"{r['fraction']:22.3f}" for r in rows) + f" {rows[0]['ideal']:6.3f}")
    ir.plot_completeness(plot_path, [summaries[0]] + summaries[2:],
                         f"Ours vs properimage, {len(times['ours'])} pairs of {size}x{size}, |S_corr| >= 5")
    print(f"\nplot: {plot_path}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
