"""Backfill throughput and Dagster's per-run overhead, measured with a real `dagster-daemon`.

Simulates a night, processes it in-process (`process`), then times, on a throw-away instance
configured like ``deploy/dagster.yaml`` (queued runs, at most 2 at a time):

1. a trivial partition — the difference of a field's reference frame, which is skipped at once —
   run in this process (``execute_in_process``) and as a daemon-launched run (a one-partition
   asset backfill) with Dagster's default multiprocess executor and with the in-process
   executor the platform uses;
2. the whole per-observation chain (``observation_job``) of every observation in this process,
   one after the other: the work itself;
3. the same chain as the asset backfill the ``backfill`` command launches, run by a daemon
   whose code location batches 1, 4 and 8 partitions per run (``--batches``;
   ``ASTRO_BACKFILL_BATCH``): wall time from submission to the last run's end (observations
   per minute) and per-run timings.

    .venv/bin/python benchmarks/backfill_overhead.py --size 1024 --fields 2 --epochs 6 --batches 1 4 8
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster_project.pipeline.jobs import IN_PROCESS

REPO = Path(__file__).resolve().parents[1]
EXECUTORS = {"multiprocess": {"execution": {"config": {"multiprocess": {}}}},  # Dagster's default
             "in_process": IN_PROCESS}  # the jobs' default, and what `backfill` uses


def _environment(root: Path) -> None:
    """Point the platform and Dagster at ``root`` (before the code location is imported: it reads them)."""
    home = root / "dagster"
    home.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    os.environ.update({"ASTRO_HOME": str(root), "DAGSTER_HOME": str(home), "ASTRO_SURVEY": "bench",
                       "DATABASE_URL": f"sqlite:///{root / 'catalog.sqlite'}", "ASTRO_SETTLE_SECONDS": "0",
                       "ASTRO_SENSOR_INTERVAL": "5"})


def _start_daemon(log: Path, batch: int) -> subprocess.Popen:
    """A daemon whose code location batches ``batch`` partitions per backfill run (the policy is read at import)."""
    from dagster import DagsterInstance

    os.environ["ASTRO_BACKFILL_BATCH"] = str(batch)
    instance = DagsterInstance.get()  # its storage exists before the daemon opens it too
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                               str(REPO / "workspace.yaml")], cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not instance.get_daemon_statuses(["BACKFILL"])["BACKFILL"].healthy:
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon did not come up; see {log}")
        time.sleep(1)
    return daemon


def _stop(daemon: subprocess.Popen) -> None:
    daemon.terminate()
    try:
        daemon.wait(60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _backfill(instance, job: str, keys: list[str], label: str, run_config: dict) -> dict:
    """Submit the asset backfill of the job's assets the ``backfill`` command launches, wait for its runs;
    wall time from submission and per-run timings."""
    from dagster import DagsterRun, RunsFilter
    from dagster_project.operations.mirror import FINISHED_STATUSES

    from dagster_project.cli.backfill import submit_asset_backfill
    from dagster_project.pipeline.jobs import JOB_ASSETS
    from dagster_project.operations.mirror import run_partition_keys

    tags = {"bench": label}
    started = time.time()
    backfill_id = submit_asset_backfill(instance, JOB_ASSETS[job], keys, tags, f"bench {label}", run_config)
    submitted = time.time()  # the GraphQL mutation's own cost (a dagster-graphql process) is submit_s
    runs_filter = RunsFilter(tags=DagsterRun.tags_for_backfill_id(backfill_id))
    while True:
        records = instance.get_run_records(runs_filter)
        covered = sum(len(run_partition_keys(instance, r.dagster_run.tags)) for r in records)
        if covered >= len(keys) and all(r.dagster_run.status in FINISHED_STATUSES for r in records):
            break
        time.sleep(1)
    failed = [r.dagster_run.run_id for r in records if r.dagster_run.status.value != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{label}: runs failed: {failed}")
    created = min(r.create_timestamp.timestamp() for r in records)
    return {
        "runs": len(records),
        "submit_s": submitted - started,
        "wall_s": max(r.end_time for r in records) - submitted,
        "pickup_s": created - submitted,  # until the backfill daemon's iteration creates the runs
        "launch_s": statistics.median(r.start_time - r.create_timestamp.timestamp() for r in records),
        "execute_s": statistics.median(r.end_time - r.start_time for r in records),
        "run_s": statistics.median(r.end_time - r.create_timestamp.timestamp() for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8],
                        help="partitions per run (ASTRO_BACKFILL_BATCH) of the backfills to compare")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="backfill-bench-", ignore_cleanup_errors=True) as tmp:
        _environment(Path(tmp))
        _measure(Path(tmp), args)


def _measure(root: Path, args: argparse.Namespace) -> None:
    """Simulate and process a night, time runs in this process and under the daemon, print the tables."""
    import sqlalchemy as sa
    from dagster import DagsterInstance

    from dagster_project.catalog.schema import ReferenceImage
    from dagster_project.definitions import defs
    from dagster_project.resources import resources_from_settings
    from dagster_project.cli.runner import process_folder
    from dagster_project.settings import Settings
    from dagster_project.simulation.night import simulate_night

    settings, instance = Settings.from_env(), DagsterInstance.get()
    night = simulate_night(root / "night", n_fields=args.fields, n_epochs=args.epochs, size=args.size, seed=11)
    report = process_folder(night.out_dir, settings, instance=instance, progress=lambda _: None)
    if report.failed:
        raise RuntimeError(f"processing the night failed: {report.failed}")
    keys = sorted({r.partition_key for r in report.runs if r.job_name == "calibrate_job"})
    resources = resources_from_settings(settings)
    with resources["catalog"].catalog().session() as session:
        # a reference frame's own difference is skipped at once: a run with next to no work
        trivial = session.scalars(sa.select(ReferenceImage).where(ReferenceImage.is_current)).first() \
            .source_observation.observation_id

    def in_process(job: str, key: str) -> float:
        start = time.perf_counter()
        assert defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=key, resources=resources, tags={"bench": "in-process"}).success
        return time.perf_counter() - start

    trivial_in_process = statistics.median(in_process("difference_job", trivial) for _ in range(3))
    chain = [in_process("observation_job", key) for key in keys]

    daemon = _start_daemon(root / "daemon.log", 1)
    try:
        trivial_runs = {name: _backfill(instance, "difference_job", [trivial], f"trivial-{name}", config)
                        for name, config in EXECUTORS.items()}
    finally:
        _stop(daemon)
    backfills = {}
    for batch in args.batches:
        daemon = _start_daemon(root / f"daemon-{batch}.log", batch)
        try:
            backfills[batch] = _backfill(instance, "observation_job", keys, f"chain-{batch}", EXECUTORS["in_process"])
        finally:
            _stop(daemon)

    _print_figures(args.size, len(keys), trivial_in_process, trivial_runs, chain, backfills)


def _print_figures(size: int, n: int, trivial_in_process: float, trivial_runs: dict, chain: list[float],
                   backfills: dict) -> None:
    """Markdown tables, as docs/operations.md shows them."""
    print(f"\n{n} observations of {size}x{size} px, {os.cpu_count()} cores, at most 2 runs at a time\n")
    print("| one run | queued→started (s) | started→ended (s) | queued→ended (s) |")
    print("|---|---|---|---|")
    print(f"| trivial partition (a skipped difference), `execute_in_process` in this process | - | - | "
          f"{trivial_in_process:.1f} |")
    for name, t in trivial_runs.items():
        print(f"| same, launched by the daemon, {name} executor | {t['launch_s']:.1f} | {t['execute_s']:.1f} | "
              f"{t['run_s']:.1f} |")
    print(f"| whole chain of one observation, `execute_in_process` (median of {n}) | - | - | "
          f"{statistics.median(chain):.1f} |")
    for batch, b in backfills.items():
        print(f"| one run of a daemon backfill, up to {batch} partition(s) per run (median; queued includes waiting "
              f"for a slot) | {b['launch_s']:.1f} | {b['execute_s']:.1f} | {b['run_s']:.1f} |")
    print(f"\n| backfill of the whole chain, {n} observations | runs | wall (s) | observations / minute | "
          "until the daemon picked it up (s) |")
    print("|---|---|---|---|---|")
    print(f"| in this process, one after the other | - | {sum(chain):.0f} | {60 * n / sum(chain):.1f} | - |")
    for batch, b in backfills.items():
        print(f"| daemon backfill, up to {batch} partition(s) per run | {b['runs']} | {b['wall_s']:.0f} | "
              f"{60 * n / b['wall_s']:.1f} | {b['pickup_s']:.0f} |")

if __name__ == "__main__":
    main()
