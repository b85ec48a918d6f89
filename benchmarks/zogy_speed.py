"""Speed and peak memory of a full ZOGY subtraction, with an rfft2 yardstick; then the whole per-frame chain.

Times ``dagster_project.science.zogy.zogy`` through S_corr with every variance
term (source noise of both images from full variance maps, astrometric noise
from a non-zero registration RMS, a mask, and -- when this ``zogy`` has them --
the hidden-flux maps of masked star cores that ``difference_images`` passes) on
synthetic 2048x2048 and 4096x4096 pairs (Moffat stars on a sky of ~1000 e-,
Poisson-like noise, 0.5 % scattered masked pixels plus saturated cores, PSFs of
3.0 and 2.6 px FWHM with the pipeline's 8-FWHM stamps); the same call without
the hidden-flux maps is timed too. Each size runs in its own child processes so
the memory figures are that size's alone.
In the child:

* time: median (and min) wall time of ``--repeat`` calls after one warm-up call,
  next to the median of one ``scipy.fft.rfft2`` of the same image size (float32,
  all cores, as ZOGY uses) measured in the same process: the ratio is
  "rfft2-equivalents", comparable across machines;
* peak memory, in a second, fresh child (inputs built, a tiny warm-up call to
  load the libraries, glibc told to give large blocks back to the kernel at
  once with ``MALLOC_MMAP_THRESHOLD_``), two ways: (1) ``VmHWM`` (the kernel's
  peak resident set) after resetting it with ``/proc/self/clear_refs`` just
  before ONE call: the absolute peak (interpreter, libraries and inputs
  included) and that minus the resident set just before the call, i.e. the extra
  RAM the call needs on top of its inputs; (2) the tracemalloc peak of one call,
  which counts numpy's array allocations (not the FFT library's internal
  scratch: (1) is the honest figure, (2) the cross-check).

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


def make_inputs(size: int, seed: int = 7, *, hidden: bool = True):
    """A synthetic, ZOGY-ready pair as ``difference_images`` passes it to ``zogy()``.

    Background-subtracted images with Poisson-like noise, full variance maps, PSF
    stamps of 8 FWHM, a mask (0.5 % scattered pixels as cosmic-ray hits, plus the
    cores of stars above 50 000 e- as saturated) and, when this ``zogy`` accepts
    them and ``hidden`` is true, the hidden-flux maps (the noiseless flux under
    the masked pixels) the pipeline passes for the saturated-core bound.
    """
    import inspect

    import numpy as np

    from dagster_project.science.psf_models import moffat_stamp
    from dagster_project.simulation.telescope import render_moffat_sources
    from dagster_project.science.zogy import zogy

    rng = np.random.default_rng(seed)
    n_stars = int(2000 * (size / 2048) ** 2)
    x, y = rng.uniform(0, size - 1, (2, n_stars))
    flux = 300.0 * (1 - rng.uniform(0, 0.999, n_stars)) ** (-1 / 0.75)
    sky_n, sky_r = 1000.0, 800.0
    fwhm_n, fwhm_r = 3.0, 2.6
    psf_n = moffat_stamp(int(8 * fwhm_n) | 1, fwhm_n, 3.0)
    psf_r = moffat_stamp(int(8 * fwhm_r) | 1, fwhm_r, 2.8)
    mask = np.where(rng.uniform(0, 1, (size, size)) < 0.005, np.uint16(4), np.uint16(0))
    planes, models = [], []
    for fwhm, beta, sky, ratio in ((fwhm_n, 3.0, sky_n, 1.0), (fwhm_r, 2.8, sky_r, 0.97)):
        model = render_moffat_sources((size, size), x, y, flux * ratio, fwhm, beta).astype(np.float32)
        mask[model > 5e4] |= np.uint16(1)
        var = model + np.float32(sky + 25.0)
        data = model + rng.standard_normal((size, size), dtype=np.float32) * np.sqrt(var)
        planes.append((data, var))
        models.append(model)
    inputs = dict(new=planes[0][0], ref=planes[1][0], psf_new=psf_n, psf_ref=psf_r, var_new=planes[0][1],
                  var_ref=planes[1][1], sigma_new=float(np.sqrt(sky_n + 25)), sigma_ref=float(np.sqrt(sky_r + 25)),
                  flux_ratio_ref=0.97, astrometric_rms=(0.03, 0.025), mask=mask)
    if hidden and "hidden_new" in inspect.signature(zogy).parameters:
        inputs["hidden_new"] = np.where(mask != 0, models[0], np.float32(0))
        inputs["hidden_ref"] = np.where(mask != 0, models[1], np.float32(0))
    return inputs


def child_time(size: int, repeat: int) -> dict:
    """Median time of zogy() and of one rfft2 of the same size, in this process."""
    import numpy as np
    import scipy.fft

    from dagster_project.science.zogy import zogy

    inputs = make_inputs(size)
    start = time.perf_counter()
    result = zogy(**inputs)
    first = time.perf_counter() - start
    scorr_std = result.scorr_std
    del result
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = zogy(**inputs)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        del result
    core = None
    if "hidden_new" in inputs:  # the same call without the hidden-flux bound
        bare = {k: v for k, v in inputs.items() if k not in ("hidden_new", "hidden_ref")}
        core = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = zogy(**bare)
            core.append(time.perf_counter() - start)
            del result
    image = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    scipy.fft.rfft2(image, workers=-1)
    rfft = []
    for _ in range(max(10, 3 * repeat)):
        start = time.perf_counter()
        scipy.fft.rfft2(image, workers=-1)
        rfft.append(time.perf_counter() - start)
    return dict(size=size, repeat=repeat, first_s=first, median_s=statistics.median(times), min_s=min(times),
                times=times, cpu_median_s=statistics.median(cpu), rfft2_median_s=statistics.median(rfft), rfft2_min_s=min(rfft), scorr_std=scorr_std,
                hidden=core is not None, core_median_s=statistics.median(core) if core else None,
                masked_fraction=float(np.mean(inputs["mask"] != 0)))


def child_memory(size: int) -> dict:
    """Peak memory of ONE zogy() call in a fresh process (after a tiny warm-up call that loads the libraries)."""
    from dagster_project.science.zogy import zogy

    small = make_inputs(256)
    zogy(**small)
    del small
    inputs = make_inputs(size)
    baseline = _proc_status("VmRSS")
    reset_ok = _reset_peak_rss()
    result = zogy(**inputs)
    peak = _proc_status("VmHWM")
    output_bytes = sum(a.nbytes for a in (result.D, result.S, result.S_corr, result.flux, result.flux_err, result.mask))
    del result
    tracemalloc.start()
    result = zogy(**inputs)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    input_bytes = sum(v.nbytes for v in inputs.values() if hasattr(v, "nbytes"))
    return dict(baseline_rss=baseline, peak_rss=peak if reset_ok else None,
                peak_extra=(peak - baseline) if reset_ok else None,
                ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                traced_peak=traced_peak, input_bytes=input_bytes, output_bytes=output_bytes)


def run_child(size: int, repeat: int) -> dict:
    """Time in one child process, memory in another (fresh heap; glibc told to return big blocks at once)."""
    out = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    for mode in ("time", "memory"):
        cmd = [sys.executable, __file__, "--child", str(size), "--mode", mode, "--repeat", str(repeat)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


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
    parser.add_argument("--mode", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    if args.child:
        result = child_time(args.child, repeat) if args.mode == "time" else child_memory(args.child)
        print(json.dumps(result))
        return
    sizes = args.sizes or ([1024, 2048] if args.quick else [2048, 4096])

    print(f"# ZOGY speed: full zogy() through S_corr (source-noise and astrometric variance terms, mask, hidden-flux bound), "
          f"{os.cpu_count()} cores; median of {repeat} calls after a warm-up, one child process per size")
    rows = []
    for size in sizes:
        load0 = os.getloadavg()[0]
        r = run_child(size, repeat if size <= 2048 else max(3, repeat // 2))
        r["load"] = (load0, os.getloadavg()[0])
        rows.append(r)
    gb = 1024.0**3
    print(f"{'size':>9} {'median s':>9} {'min s':>7} {'first s':>8} {'rfft2 s':>8} {'rfft2 units':>11} "
          f"{'CPU s':>6} {'no-bound s':>10} {'units':>6} {'peak extra GB':>13} {'peak RSS GB':>11} {'traced GB':>9} "
          f"{'in+out GB':>9} {'load':>11}")
    for r in rows:
        units = r["median_s"] / r["rfft2_median_s"]
        extra = r["peak_extra"] / gb if r["peak_extra"] is not None else float("nan")
        peak = r["peak_rss"] / gb if r["peak_rss"] is not None else r["ru_maxrss"] / gb
        core = r.get("core_median_s") or float("nan")
        print(f"{r['size']:>4}x{r['size']:<4} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['first_s']:8.3f} "
              f"{r['rfft2_median_s']:8.4f} {units:11.1f} {r['cpu_median_s']:6.2f} {core:10.3f} {core / r['rfft2_median_s']:6.1f} "
              f"{extra:13.2f} {peak:11.2f} {r['traced_peak'] / gb:9.2f} "
              f"{(r['input_bytes'] + r['output_bytes']) / gb:9.2f} {r['load'][0]:5.2f}/{r['load'][1]:<5.2f}")
    print("median/min/first s: the call as difference_images makes it"
          + (" (with the hidden-flux maps of masked star cores)" if rows and rows[0].get("hidden") else "")
          + "; CPU s: median process CPU time of a call (all threads; on an idle machine the wall time lies between "
          "CPU s / cores and CPU s);\nno-bound s: the same call without hidden-flux maps; peak extra = kernel peak resident set during one call "
          "minus the resident set before it (inputs held); peak RSS = absolute peak of the child during that call;\n"
          "traced = tracemalloc peak of numpy allocations in the call; in+out = input arrays + output maps. "
          "Goals: 2048x2048 <= 0.6 s (~20 rfft2), 4096x4096 < 4 GB.")
    for r in rows:
        print(f"  {r['size']}: all timed calls {', '.join(f'{t:.3f}' for t in r['times'])} s; "
              f"S_corr robust std {r['scorr_std']:.3f}; masked pixels {100 * r['masked_fraction']:.2f} %")

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
