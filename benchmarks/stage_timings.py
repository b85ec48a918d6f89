"""Per-stage time of the science chain for one frame (default 2048x2048), with a yardstick.

Simulates a night (bias, flats, a reference epoch and a new epoch of one field),
then times each stage of the per-observation chain as the assets run it, without
Dagster or catalog overhead. What runs once (the night's masters, and the
reference's background, stars and PSF, stored with each reference version) is
printed apart and left out of the per-frame chain. The yardstick is one ``scipy.fft.rfft2`` of the same
size measured in the same run, so figures compare across machines; the CPU seconds of the per-frame
stages (all threads of the process) hardly change with other load on the machine.

    .venv/bin/python benchmarks/stage_timings.py --size 2048 [--repeat 3]
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft
from astropy.io import fits

from dagster_project.science.calibration import (
    calibrate_science_frame,
    calibrated_header,
    make_master_bias,
    make_master_flat,
)
from dagster_project.science.difference import DifferenceParams, characterize_for_difference, difference_images
from dagster_project.science.images import ImagePlanes
from dagster_project.science.psf import characterize_image
from dagster_project.simulation.night import simulate_night
from dagster_project.store import ProductStore


def _median_seconds(fn, repeat: int, cpu: dict | None = None, name: str = "") -> float:
    """Median wall-clock seconds of ``fn()``; with ``cpu``, the median CPU seconds of this process's
    threads go into ``cpu[name]`` (a figure other load on the machine hardly changes)."""
    times, cpu_times = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu[name] = statistics.median(cpu_times)
    return statistics.median(times)


def _read(path: Path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path, memmap=False) as hdul:
        return hdul[0].data.astype(np.float32), hdul[0].header.copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        night = Path(tmp) / "night"
        start = time.perf_counter()
        simulate_night(night, n_fields=1, n_epochs=2, size=args.size, n_bias=5, n_flats=5, seed=11)
        simulate_s = time.perf_counter() - start
        files = sorted(night.glob("*.fits"))
        bias = [_read(p) for p in files if "_bias_" in p.name]
        flats = [_read(p) for p in files if "_flat_" in p.name]
        ref_raw, new_raw = [_read(p) for p in files if "_sci_" in p.name]
        sections = {"biassec": bias[0][1].get("BIASSEC"), "trimsec": bias[0][1].get("TRIMSEC")}

        once: dict[str, float] = {}
        stages: dict[str, float] = {}
        cpu: dict[str, float] = {}
        start = time.perf_counter()
        master_bias = make_master_bias([b for b, _ in bias], **sections)
        master_flat = make_master_flat([f for f, _ in flats], master_bias=master_bias, **sections)
        once["masters (5 bias + 5 flats, once per night)"] = time.perf_counter() - start

        def calibrate(raw_and_header):
            raw, header = raw_and_header
            result = calibrate_science_frame(
                raw, gain=header["GAIN"], read_noise_e=header["RDNOISE"], saturate_adu=header["SATURATE"],
                master_bias=master_bias, master_flat=master_flat, **sections)
            planes = result.planes
            return ImagePlanes(planes.data, planes.variance, planes.mask, calibrated_header(header, result))

        reference = calibrate(ref_raw)
        new = None

        def calibrate_new():
            nonlocal new
            new = calibrate(new_raw)

        name = "calibrate (overscan, bias, flat, gain, variance, masks, L.A.Cosmic)"
        stages[name] = _median_seconds(calibrate_new, args.repeat, cpu, name)
        name = "characterize (background, stars, PSF, seeing)"
        stages[name] = _median_seconds(lambda: characterize_image(new), args.repeat, cpu, name)
        store = ProductStore(Path(tmp) / "store")
        name = "write calibrated FITS (SCI, VAR, MASK)"
        stages[name] = _median_seconds(
            lambda: store.write_planes(Path(tmp) / "store" / "calibrated.fits", new), args.repeat, cpu, name)

        params, characterizations, results = DifferenceParams(), [], []
        once["reference background, stars, PSF (once per reference version)"] = _median_seconds(
            lambda: characterizations.append(characterize_for_difference(reference, params, "reference")),
            args.repeat)
        name = "difference + detection (all steps, reference characterization given)"
        stages[name] = _median_seconds(
            lambda: results.append(difference_images(new, reference, params,
                                                     ref_characterization=characterizations[-1])),
            args.repeat, cpu, name)
        timings = results[-1].timings

        image = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
        rfft = _median_seconds(lambda: scipy.fft.rfft2(image, workers=-1), max(5, args.repeat))

    per_frame = sum(stages.values())
    print(f"# per-stage time for one {args.size}x{args.size} frame (median of {args.repeat}); "
          f"simulating the night took {simulate_s:.1f} s; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'stage':<72} {'seconds':>8} {'rfft2 units':>12} {'CPU s':>7}")
    for name, seconds in {**once, **stages}.items():
        cpu_s = f"{cpu[name]:7.3f}" if name in cpu else ""
        print(f"{name:<72} {seconds:8.3f} {seconds / rfft:12.1f} {cpu_s}")
    for name, seconds in timings.items():
        if name != "total":
            print(f"{'  difference step: ' + name:<72} {seconds:8.3f} {seconds / rfft:12.1f}")
    print(f"{'per-frame chain (calibrate → candidates; once-only excluded)':<72} {per_frame:8.3f} "
          f"{per_frame / rfft:12.1f} {sum(cpu.values()):7.3f}")
    print(f"{'yardstick: one scipy.fft.rfft2 of the same size, float32, all cores':<72} {rfft:8.4f} {1.0:12.1f}")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    quality = results[-1].quality
    print(f"quality: scorr_std={quality['scorr_std']:.3f} registration_rms={quality['registration_rms_px']:.3f} px "
          f"candidates={quality['n_candidates']}")


if __name__ == "__main__":
    main()
