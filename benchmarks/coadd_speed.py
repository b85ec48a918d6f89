"""Time of a co-add of N calibrated frames of one field (default 10 of 2048x2048), with a yardstick.

Simulates a night with N epochs of one field, calibrates every frame as the
``calibrated_image`` asset does (not timed), then times
:func:`~dagster_project.science.coadd.coadd_frames` on them: every frame is
characterized (background, stars, PSF), registered onto the anchor's grid,
resampled, scaled and properly co-added. Printed: seconds (median of
``--repeat``), the same in ``scipy.fft.rfft2`` units of the frame size
measured in the same run (so figures compare across machines), the CPU
seconds of the process (all its threads) during the co-add (less sensitive
than the seconds to other work on shared cores), the peak of the memory NumPy
and Python allocated during the co-add (tracemalloc), the peak resident memory
of the process, and the load average.

    .venv/bin/python benchmarks/coadd_speed.py [--frames 10] [--size 2048] [--repeat 1]
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
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
from dagster_project.science.coadd import coadd_frames
from dagster_project.science.difference import DifferenceParams
from dagster_project.science.images import ImagePlanes
from dagster_project.simulation.night import simulate_night


def _read(path: Path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path, memmap=False) as hdul:
        return hdul[0].data.astype(np.float32), hdul[0].header.copy()


def _calibrated_frames(night: Path) -> list[ImagePlanes]:
    """Every science frame of the simulated night, calibrated with masters of its 5 bias and 5 flats."""
    files = sorted(night.glob("*.fits"))
    bias = [_read(p) for p in files if "_bias_" in p.name]
    flats = [_read(p) for p in files if "_flat_" in p.name]
    sections = {"biassec": bias[0][1].get("BIASSEC"), "trimsec": bias[0][1].get("TRIMSEC")}
    master_bias = make_master_bias([b for b, _ in bias], **sections)
    master_flat = make_master_flat([f for f, _ in flats], master_bias=master_bias, **sections)
    frames = []
    for raw, header in (_read(p) for p in files if "_sci_" in p.name):
        result = calibrate_science_frame(
            raw, gain=header["GAIN"], read_noise_e=header["RDNOISE"], saturate_adu=header["SATURATE"],
            master_bias=master_bias, master_flat=master_flat, **sections)
        planes = result.planes
        frames.append(ImagePlanes(planes.data, planes.variance, planes.mask, calibrated_header(header, result)))
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        night = Path(tmp) / "night"
        start = time.perf_counter()
        simulate_night(night, n_fields=1, n_epochs=args.frames, size=args.size, n_bias=5, n_flats=5, seed=11)
        frames = _calibrated_frames(night)
        prepare_s = time.perf_counter() - start

    times, cpu, peaks, result = [], [], [], None
    for _ in range(args.repeat):
        tracemalloc.start()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = coadd_frames(frames, DifferenceParams(), anchor=0)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    image = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    rfft = []
    for _ in range(5):
        start = time.perf_counter()
        scipy.fft.rfft2(image, workers=-1)
        rfft.append(time.perf_counter() - start)
    seconds, unit = statistics.median(times), statistics.median(rfft)

    print(f"# co-add of {len(frames)} frames of {args.size}x{args.size} (median of {args.repeat}); "
          f"simulating and calibrating them took {prepare_s:.1f} s; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"coadd_frames: {seconds:.2f} s = {seconds / unit:.0f} rfft2 units "
          f"(one rfft2 of {args.size}x{args.size} float32, all cores: {unit:.4f} s); "
          f"CPU {statistics.median(cpu):.2f} s")
    print(f"peak memory allocated during the co-add: {max(peaks) / 2**20:.0f} MB; "
          f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"quality: fwhm={result.quality['fwhm_px']:.2f} px depth_gain={result.quality['depth_gain_mag']:.2f} mag "
          f"registration_rms={result.quality['registration_rms_px']:.3f} px")


if __name__ == "__main__":
    main()
