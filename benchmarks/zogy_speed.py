"""Speed and peak memory of a full ZOGY subtraction, with an rfft2 yardstick; then the whole per-frame chain.

Times ``dagster_project.science.zogy.zogy`` through S_corr with every variance
term (source noise of both images from full variance maps, astrometric noise
from a non-zero registration RMS, a mask) on synthetic 2048x2048 and 4096x4096
pairs (Moffat stars on a sky of ~1000 e-, Poisson-like noise, 0.5 % masked
pixels, PSFs of 3.0 and 2.6 px FWHM with the pipeline's 8-FWHM stamps). Each
size runs in its own child process so the memory figures are that size's alone.
In the child:

* time: median (and min) wall time of ``--repeat`` calls after one warm-up call,
  next to the median of one ``scipy.fft.rfft2`` of the same image size (float32,
  all cores, as ZOGY uses) measured in the same process: the ratio is
  "rfft2-equivalents", comparable across machines;
* peak memory, two ways: (1) ``VmHWM`` of the child (the kernel's peak resident
  set) after resetting it with ``/proc/self/clear_refs`` just before one call,
  minus the resident set just before it, i.e. the extra RAM the call needs on top
  of its inputs, and the absolute peak (inputs, interpreter and libraries
  included); (2) the tracemalloc peak of that call, which counts numpy's array
  allocations (not the FFT library's internal scratch, hence (1) is the honest
  figure and (2) the cross-check).

Then ``benchmarks/stage_timings.py --size 2048`` is run (unless ``--no-chain``)
for the whole per-frame chain calibrate -> candidates.

The machine is shared: the load average is printed before and after each step.

    .venv/bin/python benchmarks/zogy_speed.py            # 2048 and 4096, then the chain (~3 min)
    .venv/bin/python benchmarks/zogy_speed.py --quick    # 1024 and 2048, no chain (~20 s)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _proc_status(key: str) -> int:
    """Value in bytes of a kB field of /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_inputs(size: int, seed: int = 7):
    """A synthetic, ZOGY-ready pair: background-subtracted images, variance maps, PSF stamps and a mask."""
    import numpy as np

    from dagster_project.science.psf_models import moffat_stamp
    from dagster_project.science.simulation import render_moffat_sources

    rng = np.random.default_rng(seed)
    n_stars = int(2000 * (size / 2048) ** 2)
    x, y = rng.uniform(0, size - 1, (2, n_stars))
    flux = 300.0 * (1 - rng.uniform(0, 0.999, n_stars)) ** (-1 / 0.75)
    sky_n, sky_r = 1000.0, 800.0
    fwhm_n, fwhm_r = 3.0, 2.6
    psf_n = moffat_stamp(int(8 * fwhm_n) | 1, fwhm_n, 3.0)
    psf_r = moffat_stamp(int(8 * fwhm_r) | 1, fwhm_r, 2.8)
    planes = []
    for fwhm, beta, sky, ratio in ((fwhm_n, 3.0, sky_n, 1.0), (fwhm_r, 2.8, sky_r, 0.97)):
        model = render_moffat_sources((size, size), x, y, flux * ratio, fwhm, beta).astype(np.float32)
        var = model + np.float32(sky + 25.0)
        data = model + rng.standard_normal((size, size), dtype=np.float32) * np.sqrt(var)
        planes.append((data, var))
        del model
    mask = (rng.uniform(0, 1, (size, size)) < 0.005).astype(np.uint16)
    return dict(new=planes[0][0], ref=planes[1][0], psf_new=psf_n, psf_ref=psf_r, var_new=planes[0][1],
                var_ref=planes[1][1], sigma_new=float(np.sqrt(sky_n + 25)), sigma_ref=float(np.sqrt(sky_r + 25)),
                flux_ratio_ref=0.97, astrometric_rms=(0.03, 0.025), mask=mask)


def child(size: int, repeat: int) -> None:
    """Measure one size; print one JSON line."""
    import numpy as np
    import scipy.fft

    from dagster_project.science.zogy import zogy

    inputs = make_inputs(size)
    rss_inputs = _proc_status("VmRSS")

    start = time.perf_counter()
    result = zogy(**inputs)
    first = time.perf_counter() - start
    scorr_std = result.scorr_std
    del result
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = zogy(**inputs)
        times.append(time.perf_counter() - start)
        del result

    image = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    scipy.fft.rfft2(image, workers=-1)
    rfft = []
    for _ in range(max(10, 3 * repeat)):
        start = time.perf_counter()
        scipy.fft.rfft2(image, workers=-1)
        rfft.append(time.perf_counter() - start)
    del image

    # (1) kernel peak resident set during one call
    baseline = _proc_status("VmRSS")
    reset_ok = _reset_peak_rss()
    result = zogy(**inputs)
    peak = _proc_status("VmHWM")
    output_bytes = sum(a.nbytes for a in (result.D, result.S, result.S_corr, result.flux, result.flux_err, result.mask))
    del result
    # (2) numpy allocations seen by tracemalloc during one call
    tracemalloc.start()
    result = zogy(**inputs)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    input_bytes = sum(v.nbytes for v in inputs.values() if hasattr(v, "nbytes"))
    print(json.dumps(dict(
        size=size, repeat=repeat, first_s=first, median_s=statistics.median(times), min_s=min(times),
        times=times, rfft2_median_s=statistics.median(rfft), rfft2_min_s=min(rfft),
        baseline_rss=baseline, rss_after_inputs=rss_inputs, peak_rss=peak if reset_ok else None,
        peak_extra=(peak - baseline) if reset_ok else None, ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        traced_peak=traced_peak, input_bytes=input_bytes, output_bytes=output_bytes, scorr_std=scorr_std,
        cpu_count=os.cpu_count(),
    )))


def run_child(size: int, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), "--repeat", str(repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_chain(size: int, repeat: int) -> tuple[float | None, str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "stage_timings.py"), "--size", str(size), "--repeat", str(repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    text = "\n".join(line for line in out.stdout.splitlines() if not line.startswith("WARNING"))
    match = re.search(r"per-frame chain[^\n]*?\s([0-9.]+)\s+([0-9.]+)\s*$", text, re.M)
    return (float(match.group(1)) if match else None), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024 and 2048 only, 3 repeats, no chain")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per size (default 7, quick 3)")
    parser.add_argument("--no-chain", action="store_true", help="skip the per-frame chain (stage_timings.py)")
    parser.add_argument("--chain-repeat", type=int, default=3)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    if args.child:
        child(args.child, repeat)
        return
    sizes = args.sizes or ([1024, 2048] if args.quick else [2048, 4096])

    print(f"# ZOGY speed: full zogy() through S_corr (source-noise and astrometric variance terms, mask), "
          f"{os.cpu_count()} cores; median of {repeat} calls after a warm-up, one child process per size")
    rows = []
    for size in sizes:
        load0 = os.getloadavg()[0]
        r = run_child(size, repeat if size <= 2048 else max(3, repeat // 2))
        r["load"] = (load0, os.getloadavg()[0])
        rows.append(r)
    gb = 1024.0**3
    print(f"{'size':>9} {'median s':>9} {'min s':>7} {'first s':>8} {'rfft2 s':>8} {'rfft2 units':>11} "
          f"{'peak extra GB':>13} {'peak RSS GB':>11} {'traced GB':>9} {'in+out GB':>9} {'load':>11}")
    for r in rows:
        units = r["median_s"] / r["rfft2_median_s"]
        extra = r["peak_extra"] / gb if r["peak_extra"] is not None else float("nan")
        peak = r["peak_rss"] / gb if r["peak_rss"] is not None else r["ru_maxrss"] / gb
        print(f"{r['size']:>4}x{r['size']:<4} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['first_s']:8.3f} "
              f"{r['rfft2_median_s']:8.4f} {units:11.1f} {extra:13.2f} {peak:11.2f} {r['traced_peak'] / gb:9.2f} "
              f"{(r['input_bytes'] + r['output_bytes']) / gb:9.2f} {r['load'][0]:5.2f}/{r['load'][1]:<5.2f}")
    print("peak extra = kernel peak resident set during one call minus the resident set before it (inputs held); "
          "peak RSS = absolute peak of the child during that call;\ntraced = tracemalloc peak of numpy allocations "
          "in the call; in+out = input arrays + output maps. Goals: 2048x2048 <= 0.6 s (~20 rfft2), 4096x4096 < 4 GB.")
    for r in rows:
        print(f"  {r['size']}: all timed calls {', '.join(f'{t:.3f}' for t in r['times'])} s; "
              f"S_corr robust std {r['scorr_std']:.3f}")

    if not args.no_chain and not args.quick:
        load0 = os.getloadavg()[0]
        start = time.perf_counter()
        chain, text = run_chain(2048, args.chain_repeat)
        print(f"\n# whole per-frame chain, benchmarks/stage_timings.py --size 2048 --repeat {args.chain_repeat} "
              f"(load {load0:.2f} -> {os.getloadavg()[0]:.2f}, {time.perf_counter() - start:.0f} s)")
        print(text)
        if chain is not None:
            print(f"per-frame chain calibrate -> candidates, 2048x2048: {chain:.2f} s   goal < 5 s")


if __name__ == "__main__":
    main()
