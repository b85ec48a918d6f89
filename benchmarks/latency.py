"""Prompt processing: seconds from a raw frame landing to its candidates in the catalog, with the platform's daemon.

What a new user sees with ``make ui`` running (``dagster dev``: a daemon with its sensors and run queue, the
webserver, one code server), runs launched as Dagster launches them, and frames written into the landing folder. A night is simulated;
its calibration frames and first epoch are processed first (masters, calibrated frames, references),
then the daemon is started and the later frames land one at a time (``--singles``), then several at
once (``--burst``). For each frame the clock runs from the moment it appears in the landing folder
(written elsewhere, then renamed in, as a telescope's writer should) to the moment the catalog holds
its difference and candidates (one transaction; ``queries.differences_recorded_for_files``).

Printed: per frame the latency; p50 / p95 / max of the singles; when the last of the burst was done;
the yardstick, the science of a frame (calibration + difference processing times the assets record)
measured in the same run, and each latency as a multiple of it; peak RSS of the daemon and its runs.

    .venv/bin/python benchmarks/latency.py [--size 2048] [--singles 8] [--burst 6] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def environment(root: Path) -> dict[str, str]:
    home = root / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return {"ASTRO_HOME": str(root), "DAGSTER_HOME": str(home), "DATABASE_URL": f"sqlite:///{root / 'catalog.sqlite'}",
            "ASTRO_SURVEY": "latency"}


def simulate(root: Path, size: int, n_new: int) -> tuple[list[Path], list[Path]]:
    """(setup files: calibration frames and each field's first epoch, later science frames in landing order)."""
    from dagster_project.simulation.night import simulate_night

    n_fields = 2
    epochs = 1 + -(-n_new // n_fields)
    night = root / "night"
    simulate_night(night, n_fields=n_fields, n_epochs=epochs, size=size, transients_per_frame=10, seed=7)
    science = sorted(p for p in night.glob("*.fits") if "_sci_" in p.name)
    setup = sorted(p for p in night.glob("*.fits") if "_sci_" not in p.name) + science[:n_fields]
    return setup, science[n_fields:n_fields + n_new]


def prepare(setup: list[Path], root: Path) -> None:
    """Masters, calibrated first epochs and references, processed headless before the clock starts."""
    from dagster_project.cli.runner import process_folder
    from dagster_project.settings import Settings

    folder = root / "setup"
    folder.mkdir()
    for path in setup:
        shutil.copy(path, folder / path.name)
    report = process_folder(folder, Settings.from_env(), wait=True, progress=lambda _: None)
    if report.failed:
        raise SystemExit(f"setting up failed: {[r.job_name for r in report.failed]}")
    if not report.runs:
        raise SystemExit("setting up ran nothing")


def land(path: Path, landing: Path) -> float:
    """Write ``path`` beside the landing folder, rename it in (atomic); the time it appeared."""
    staging = landing.parent / "staging"
    staging.mkdir(exist_ok=True)
    shutil.copy(path, staging / path.name)
    os.replace(staging / path.name, landing / path.name)
    return time.time()


def wait_done(catalog, names: list[str], timeout: float) -> dict[str, float]:
    """Poll the catalog until each file's difference is recorded; name -> time seen. One query a poll, however
    many files wait (the poll shares the machine with the work it waits for)."""
    from dagster_project.catalog import queries

    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(names):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s; done: {sorted(done)} of {names}")
        with catalog.session() as session:
            recorded = queries.differences_recorded_for_files(session, [n for n in names if n not in done])
        done.update((name, time.time()) for name in recorded)
        time.sleep(0.2)
    return done


def stage_seconds(catalog, names: list[str]) -> list[tuple[float, float]]:
    """(calibration, difference) processing time the assets recorded, per frame."""
    from dagster_project.catalog import queries

    seconds = []
    with catalog.session() as session:
        for name in names:
            observation = queries.latest_raw_file_version(session, name).observation
            seconds.append((observation.preprocess_run.processing_time_seconds or 0.0,
                            observation.difference_run.processing_time_seconds or 0.0))
    return seconds


def science_seconds(catalog, names: list[str]) -> list[float]:
    """Calibration + difference processing time the assets recorded, per frame."""
    return [calibration + difference for calibration, difference in stage_seconds(catalog, names)]


def start_platform(env: dict[str, str], log: Path) -> subprocess.Popen:
    """The platform as ``make ui`` starts it: ``dagster dev`` (webserver, daemon, and one code server that
    both use; a bare ``dagster-daemon run -w workspace.yaml`` would start a code server of its own and
    replace it at every workspace reload, a minute apart, each importing the code location again)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    return subprocess.Popen([str(BIN / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
                             "-p", str(port)], cwd=REPO, env={**os.environ, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_platform(platform: subprocess.Popen, timeout: float = 120.0) -> None:
    """Ctrl-C, as a user stops ``make ui`` (its daemon and webserver are given a minute each to shut down);
    whatever of its session is left after ``timeout`` is killed."""
    platform.send_signal(signal.SIGINT)
    try:
        platform.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(platform.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    platform.wait()


def wait_for_first_tick(log: Path, timeout: float) -> None:
    """Until the daemon has evaluated the raw-arrival sensor once (its code location loaded, its loops up)."""
    deadline = time.monotonic() + timeout
    while "raw_arrival_sensor skipped" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not tick within {timeout:.0f} s: see {log}")
        time.sleep(0.5)


def _measure(frames: list[Path], landing: Path, catalog, args) -> tuple[list[float], list[float], dict[str, float]]:
    """Singles (one at a time, each waited for) then one burst: (single latencies, burst latencies, when each
    single landed)."""
    singles, landed_at = [], {}
    for path in frames[:args.singles]:
        landed = landed_at[path.name] = land(path, landing)
        singles.append(wait_done(catalog, [path.name], args.timeout)[path.name] - landed)
        print(f"  single {path.name}: {singles[-1]:.1f} s", flush=True)
        time.sleep(args.gap)
    burst = frames[args.singles:args.singles + args.burst]
    landed = {path.name: land(path, landing) for path in burst}
    done = wait_done(catalog, list(landed), args.timeout)
    bursts = [done[name] - landed[name] for name in landed]
    for name in landed:
        print(f"  burst  {name}: {done[name] - landed[name]:.1f} s", flush=True)
    return singles, bursts, landed_at


def single_phases(catalog, landed_at: dict[str, float]) -> dict[str, list[float]]:
    """Where each single's time went, from its run's record: landed -> run requested (the sensor tick),
    requested -> started (the queue and the run worker's start), started -> ended (the steps)."""
    from dagster import DagsterInstance, RunsFilter

    from dagster_project.catalog import queries

    phases: dict[str, list[float]] = {"tick": [], "queue and start": [], "steps": []}
    with catalog.session() as session, DagsterInstance.get() as instance:
        for name, landed in landed_at.items():
            key = queries.latest_raw_file_version(session, name).observation.observation_id
            runs = instance.get_run_records(RunsFilter(tags={"dagster/partition": key}), ascending=True)
            if not runs or runs[0].start_time is None or runs[0].end_time is None:
                continue
            created = runs[0].create_timestamp.timestamp()
            phases["tick"].append(created - landed)
            phases["queue and start"].append(runs[0].start_time - created)
            phases["steps"].append(runs[0].end_time - runs[0].start_time)
    return phases


def _percentile(values: list[float], q: float) -> float:
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1]) if len(values) > 1 else values[0]


def _report(singles: list[float], bursts: list[float], science: list[float], args) -> dict:
    yardstick = statistics.median(science)
    figures = {
        "size": args.size, "singles": len(singles), "burst": len(bursts),
        "single_p50_s": statistics.median(singles), "single_p95_s": _percentile(singles, 95),
        "single_max_s": max(singles), "burst_all_done_s": max(bursts) if bursts else None,
        "science_per_frame_s": yardstick,
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "load_average_end": os.getloadavg()[0],
    }
    print(f"\nlanded -> candidates in the catalog, {args.size}x{args.size}, make ui (dagster dev) on deploy/dagster.yaml")
    print("| what landed | p50 | p95 | max | x science of a frame |")
    print("|---|---|---|---|---|")
    print(f"| one frame at a time ({len(singles)}) | {figures['single_p50_s']:.1f} s | {figures['single_p95_s']:.1f} s | "
          f"{figures['single_max_s']:.1f} s | {figures['single_p95_s'] / yardstick:.1f} (p95) |")
    if bursts:
        print(f"| {len(bursts)} at once | {statistics.median(bursts):.1f} s | - | {max(bursts):.1f} s (all done) | "
              f"{max(bursts) / yardstick:.1f} (all done) |")
    print(f"yardstick: science of a frame (calibration + difference, as the assets record it), median "
          f"{yardstick:.2f} s; goals p95 <= 15 s, burst of 6 <= 30 s")
    print(f"peak RSS of a child (daemon, run workers): {figures['peak_rss_children_mb']:.0f} MB; "
          f"load average at end {figures['load_average_end']:.2f}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--singles", type=int, default=8)
    parser.add_argument("--burst", type=int, default=6)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between singles")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="1024 px, 3 singles, a burst of 2")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.singles, args.burst = 1024, 3, 2
    root = Path(args.workdir or tempfile.mkdtemp(prefix="latency-")).resolve()
    env = environment(root)
    os.environ.update(env)
    from dagster_project.catalog import Catalog
    from dagster_project.settings import Settings

    print(f"# latency: {args.size}x{args.size}, {args.singles} singles, burst of {args.burst}, in {root}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    setup, frames = simulate(root, args.size, args.singles + args.burst)
    prepare(setup, root)
    settings = Settings.from_env()
    catalog = Catalog(settings.database_url)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    daemon = start_platform(env, root / "daemon.log")
    try:
        wait_for_first_tick(root / "daemon.log", args.timeout)  # a daemon starting is not what a frame waits for
        singles, bursts, landed_at = _measure(frames, settings.landing_dir, catalog, args)
    finally:
        stop_platform(daemon)
    figures = _report(singles, bursts, science_seconds(catalog, [p.name for p in frames[:len(singles) + len(bursts)]]),
                      args)
    figures["single_phases_s"] = phases = single_phases(catalog, landed_at)
    print("where a single's time went (its run's record), min-median-max: " + "; ".join(
        f"{phase} {min(v):.1f}-{statistics.median(v):.1f}-{max(v):.1f} s" for phase, v in phases.items() if v))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
