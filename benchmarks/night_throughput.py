"""A night's throughput under the platform's daemon, against the same work in plain processes.

Issue 12's goal: a night of 100 frames processed at >= 85 % of the throughput of the same work run without
Dagster (Dagster's share <= 15 %). Two identical sites are set up as ``benchmarks/latency.py`` sets one up
(a simulated night of two fields; masters, the first epoch and its references processed first), then the
night's later frames land all at once (a backlog: what a night's throughput is about):

* **yardstick, plain**: the same work with no Dagster: the landing folder registered by the ingest scan,
  then each frame's chain (raw check, calibration, difference, candidates: the very partition builds the
  assets run, ``pipeline.asset_factory.PARTITION_BUILDS``) in a pool of as many plain processes as the
  daemon runs prompt runs at once (``ASTRO_PROMPT_RUNS``), each paying its imports once;
* **platform**: ``dagster dev`` on ``deploy/dagster.yaml``, as ``make ui`` runs it: the raw-arrival
  sensor registers the frames and requests their runs, the queue launches them.

The clock runs from the first frame landing to the catalog holding the last difference and candidates.
References are not rebuilt during the night on either side (``ASTRO_REFERENCE_REBUILD_GAIN`` set out of
reach), so both do exactly the same work. The plain processes run before the platform and again after it
on a third identical site (A-B-A; ``--no-again`` skips the second): the yardstick is their mean, and their
drift says how much the machine's speed changed meanwhile. Printed: the times, frames per minute, the
ratio, the share of Dagster, and peak RSS.

    .venv/bin/python benchmarks/night_throughput.py [--frames 100] [--size 2048] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import latency

#: references stay those of the first epoch: no rebuild is ever due during the night
NO_REBUILDS = {"ASTRO_REFERENCE_REBUILD_GAIN": "99"}
#: the chain of a frame, as observation_job runs it
CHAIN = ("raw_observation", "calibrated_image", "difference_image", "candidates")

_resources: dict = {}


def _site(root: Path, size: int, frames: int) -> tuple[dict[str, str], list[Path]]:
    """A site whose first epoch is processed; (its environment, the night's later frames, not landed yet)."""
    env = {**latency.environment(root), **NO_REBUILDS}
    os.environ.update(env)
    setup, later = latency.simulate(root, size, frames)
    latency.prepare(setup, root)
    return env, later


def _land_all(frames: list[Path], landing: Path) -> float:
    landing.mkdir(parents=True, exist_ok=True)
    return min(latency.land(path, landing) for path in frames)


def _plain_worker_start(env: dict[str, str]) -> None:
    os.environ.update(env)
    import dagster_project.definitions  # noqa: F401 - the assets, and so their partition builds
    from dagster_project.resources import CatalogResource, resources_from_settings
    from dagster_project.settings import Settings

    settings = Settings.from_env()
    _resources.update(resources_from_settings(settings), catalog=CatalogResource(database_url=settings.database_url))
    gc.freeze()  # as a run worker does (resources/run_priority.py): the imports are not scanned by each collection


def _plain_chain(key: str) -> None:
    from dagster_project.pipeline.asset_factory import PARTITION_BUILDS, resource_keys

    for name in CHAIN:
        build = PARTITION_BUILDS[name]
        build(key, f"plain-{os.getpid()}", **{k: _resources[k] for k in resource_keys(build)})


def _stages(catalog, frames: list[Path]) -> tuple[float, float]:
    """Median calibration and difference processing seconds the builds recorded for the night's frames."""
    calibrations, differences = zip(*latency.stage_seconds(catalog, [f.name for f in frames]))
    return statistics.median(calibrations), statistics.median(differences)


def plain(root: Path, size: int, n_frames: int, processes: int) -> tuple[float, tuple[float, float]]:
    """Seconds for the night with no Dagster; its median stage seconds."""
    env, frames = _site(root, size, n_frames)
    from dagster_project.catalog import Catalog
    from dagster_project.ingest.landing import scan_landing
    from dagster_project.resources import LandingResource, resources_from_settings
    from dagster_project.settings import Settings

    settings = Settings.from_env()
    landing: LandingResource = resources_from_settings(settings)["landing"]
    catalog = Catalog(settings.database_url)
    started = _land_all(frames, settings.landing_dir)
    scan = scan_landing(landing.config(), catalog, landing.registry(), {}, settle_seconds=0.0,
                        truncated_after=landing.truncated_after_seconds)
    keys = [o.observation_key for o in scan.outcomes if o.status == "accepted" and o.observation_key]
    if len(keys) != len(frames):
        raise SystemExit(f"plain: {len(keys)} of {len(frames)} frames registered: {scan.outcomes[:3]}")
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_plain_worker_start, initargs=(env,)) as pool:
        list(pool.map(_plain_chain, keys))
    seconds = time.time() - started
    latency.wait_done(catalog, [f.name for f in frames], 10)  # the same end as the platform's: all recorded
    return seconds, _stages(catalog, frames)


def _run_starts(started: float) -> tuple[float, float]:
    """(landed -> first run requested, the longest a run of the night took from requested to started)."""
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        runs = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= started]
    return (min(r.create_timestamp.timestamp() for r in runs) - started,
            max(r.start_time - r.create_timestamp.timestamp() for r in runs if r.start_time is not None))


def platform(root: Path, size: int, n_frames: int, timeout: float) -> tuple[float, tuple[float, float], tuple]:
    """Seconds for the night under the daemon; its median stage seconds; when its runs were requested and
    started."""
    env, frames = _site(root, size, n_frames)
    from dagster_project.catalog import Catalog
    from dagster_project.settings import Settings

    settings = Settings.from_env()
    catalog = Catalog(settings.database_url)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    daemon = latency.start_platform(env, root / "daemon.log")
    try:
        latency.wait_for_first_tick(root / "daemon.log", timeout)
        started = _land_all(frames, settings.landing_dir)
        done = latency.wait_done(catalog, [f.name for f in frames], timeout)
    finally:
        latency.stop_platform(daemon)
    return max(done.values()) - started, _stages(catalog, frames), _run_starts(started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--quick", action="store_true", help="20 frames of 1024 px")
    parser.add_argument("--no-again", dest="again", action="store_false",
                        help="the plain processes only before the platform, not again after it (A-B, not A-B-A)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.size = 20, 1024
    root = Path(args.workdir or tempfile.mkdtemp(prefix="night-")).resolve()
    from dagster_project.settings import Settings

    processes = Settings.prompt_runs
    print(f"# night throughput: {args.frames} frames of {args.size}x{args.size}, in {root}; "
          f"{processes} processes / prompt runs; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    before, plain_stages = plain(root / "plain", args.size, args.frames, processes)
    print(f"  plain processes: {before:.1f} s", flush=True)
    platform_seconds, platform_stages, (requested, start) = platform(root / "platform", args.size, args.frames,
                                                                     args.timeout)
    print(f"  platform: {platform_seconds:.1f} s", flush=True)
    after, _ = plain(root / "plain-after", args.size, args.frames, processes) if args.again else (before, None)
    print(f"  plain processes again: {after:.1f} s", flush=True)
    # the yardstick on both sides of the platform (A-B-A): a change of the machine's speed during the run
    # shows as a drift between them instead of going into the ratio unseen
    plain_seconds = (before + after) / 2
    ratio = plain_seconds / platform_seconds
    figures = {"frames": args.frames, "size": args.size, "processes": processes, "plain_s": plain_seconds,
               "plain_before_s": before, "plain_after_s": after, "yardstick_drift": after / before,
               "platform_s": platform_seconds, "throughput_ratio": ratio,
               "plain_frames_per_min": 60 * args.frames / plain_seconds,
               "platform_frames_per_min": 60 * args.frames / platform_seconds,
               "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
               "load_average_end": os.getloadavg()[0]}
    print(f"\n| {args.frames} frames of {args.size} px landed at once | landed -> last candidates | frames/min |")
    print("|---|---|---|")
    print(f"| plain processes ({processes}), no Dagster (yardstick: mean of {before:.1f} s before and {after:.1f} s "
          f"after the platform, drift {after / before:.2f}) | {plain_seconds:.1f} s | {figures['plain_frames_per_min']:.1f} |")
    print(f"| the platform's daemon | {platform_seconds:.1f} s | {figures['platform_frames_per_min']:.1f} |")
    print(f"throughput of the platform / plain: {ratio:.2f} (Dagster's share {100 * (1 - ratio):.0f} %; goal >= 0.85)")
    print(f"median seconds a frame's calibration / difference took (as the builds record them): plain "
          f"{plain_stages[0]:.2f} / {plain_stages[1]:.2f}, platform {platform_stages[0]:.2f} / {platform_stages[1]:.2f}")
    print(f"platform: first run requested {requested:.1f} s after the first frame landed; a run's queue and start "
          f"took at most {start:.1f} s")
    figures.update(plain_stages_s=plain_stages, platform_stages_s=platform_stages, first_request_s=requested,
                   longest_start_s=start)
    print(f"peak RSS of a child: {figures['peak_rss_children_mb']:.0f} MB; load average at end "
          f"{figures['load_average_end']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
