"""Throughput of one night on Celery workers (issue 12): one worker against two, and the same night in one process.

The same simulated night (``--fields`` x ``--epochs`` science frames of ``--size`` px, 2 bias, 2 flats; one-frame
references so that each configuration runs the same work) is processed three times, each on fresh PostgreSQL
databases:

1. ``in-process``: ``python -m dagster_project process <night>`` (the platform's headless driver, every run
   executed in that one process; instance on SQLite as ``deploy/dagster.yaml``);
2. ``celery x1`` and ``celery x2``: the platform's normal path with ASTRO_EXECUTOR=celery, as
   ``tests/distributed/test_celery_workers.py`` sets it up: `dagster-daemon run` (sensors, queued runs, at most 4 at
   a time) on the instance of ``deploy/dagster-celery.yaml`` (PostgreSQL), steps executed by 1 or 2
   `dagster-celery` workers (deploy/celery.yaml, one step at a time each); wall time from the files' arrival in the
   landing folder to the night being settled (every observation differenced, every run ended and mirrored).

Peak memory: the largest resident set of the in-process command (wait4), and for Celery the largest sum of the
resident sets of all worker processes, and of the daemon with its code server and run workers, sampled every 0.2 s.

    .venv/bin/python benchmarks/celery_throughput.py --size 1024 --fields 2 --epochs 3
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers: the site, the workers, the settled-night check

from dagster import DagsterInstance  # noqa: E402

from dagster_project.catalog import Catalog  # noqa: E402
from dagster_project.simulation.night import simulate_night  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.distributed.workers import broker_reachable, celery_site, delete_queue, workers  # noqa: E402
from tests.reliability import harness  # noqa: E402
from tests.reliability.invariants import settled  # noqa: E402


def _rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakSampler(threading.Thread):
    """The largest sum of resident sets of the processes ``groups()`` names, per group, sampled every 0.2 s."""

    def __init__(self, groups):
        super().__init__(daemon=True)
        self.groups, self.peaks, self.stopping = groups, {}, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for name, pids in self.groups().items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), _rss_mb(pids))
            time.sleep(0.2)


def in_process(night: Path, root: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of `process` over the night, catalog on a fresh PostgreSQL database."""
    home = root / "dagster"
    home.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    with fresh_postgres_database() as url:
        env = {**os.environ, "ASTRO_HOME": str(root), "DAGSTER_HOME": str(home), "DATABASE_URL": url,
               "ASTRO_SURVEY": "bench", "ASTRO_SETTLE_SECONDS": "0", "ASTRO_PRODUCT_QUIET": "0",
               "ASTRO_REFERENCE_FRAMES": "1"}
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "dagster_project", "process", str(night)], env=env, cwd=root,
                                stdout=(root / "process.log").open("w"), stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        if status != 0:
            raise RuntimeError(f"process failed ({status}); see {root / 'process.log'}")
    return seconds, usage.ru_maxrss / 1024


def on_celery(night: Path, root: Path, n_workers: int, n_science: int) -> tuple[float, dict[str, float]]:
    """Seconds from the files' arrival to the night settled, with ``n_workers`` workers; peak RSS sums (MB)."""
    files = sorted(night.glob("*.fits"))
    with fresh_postgres_database() as catalog_url, fresh_postgres_database() as instance_url, ExitStack() as stack:
        site = celery_site(root, catalog_url, instance_url, ASTRO_REFERENCE_FRAMES="1")
        stack.callback(delete_queue, site.env["ASTRO_CELERY_QUEUE"])
        catalog = Catalog(catalog_url)
        catalog.migrate()  # before the daemon's first tick, so the clock measures the night only
        stack.callback(catalog.engine.dispose)
        stack.enter_context(site.environment())
        instance = DagsterInstance.from_config(str(site.dagster_home))
        stack.callback(instance.dispose)
        started_workers = stack.enter_context(workers(site, [f"worker-{i + 1}" for i in range(n_workers)]))
        daemon = stack.enter_context(harness.started(lambda: harness.start_daemon(site)))
        sampler = PeakSampler(lambda: {
            "workers": [p for w in started_workers for p in [w.pid, *w.session()]],
            "daemon": [daemon.pid, *daemon.session()]})
        sampler.start()
        stack.callback(sampler.stopping.set)
        time.sleep(5)  # the daemon's code server up before the clock starts
        staging = root / "staging"
        staging.mkdir()
        for f in files:
            shutil.copy(f, staging / f.name)
        t0 = time.monotonic()
        for f in files:
            (staging / f.name).replace(site.landing / f.name)
        harness.wait_for(lambda: settled(catalog, instance, n_science), 1800, "the night to be done", interval=0.5,
                         alive=daemon)
        seconds = time.monotonic() - t0
        return seconds, {**sampler.peaks, **_busy(instance)}


def _busy(instance: DagsterInstance) -> dict[str, float]:
    """Seconds the workers spent on steps (a worker taking a step to its STEP_SUCCESS), and runs' mean wall time."""
    from dagster import DagsterEventType

    busy, walls = 0.0, []
    for run in instance.get_runs():
        records = instance.get_records_for_run(run.run_id, of_type={
            DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_SUCCESS, DagsterEventType.RUN_START,
            DagsterEventType.RUN_SUCCESS}).records
        taken: dict[str, float] = {}
        for record in records:
            entry = record.event_log_entry
            kind = entry.dagster_event.event_type
            if kind is DagsterEventType.ENGINE_EVENT and "in celery worker" in (entry.message or ""):
                taken[entry.step_key] = entry.timestamp
            elif kind is DagsterEventType.STEP_SUCCESS and entry.step_key in taken:
                busy += entry.timestamp - taken.pop(entry.step_key)
        record = instance.get_run_record_by_id(run.run_id)
        if record.start_time and record.end_time:
            walls.append(record.end_time - record.start_time)
    return {"busy": busy, "runs": len(walls), "run_wall": sum(walls) / max(len(walls), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temporary folder)")
    args = parser.parse_args()
    if not broker_reachable():
        sys.exit("RabbitMQ is not reachable on 127.0.0.1:5672")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="celery-bench-"))
    night = root / "night"
    simulate_night(night, n_fields=args.fields, n_epochs=args.epochs, size=args.size, n_bias=2, n_flats=2,
                   transients_per_frame=3, seed=5, night="2026-11-21", truth_path=root / "truth.csv")
    n = args.fields * args.epochs
    load = os.getloadavg()[0]
    inproc, inproc_mb = in_process(night, root / "in-process")
    print(f"in-process   {inproc:6.1f} s  {inproc / n:5.2f} s/observation  peak RSS {inproc_mb:5.0f} MB", flush=True)
    for n_workers in (1, 2):
        seconds, peaks = on_celery(night, root / f"celery-{n_workers}", n_workers, n)
        print(f"celery x{n_workers}    {seconds:6.1f} s  {seconds / n:5.2f} s/observation  "
              f"x{inproc / seconds:4.2f} the in-process rate  peak RSS: workers {peaks.get('workers', 0):5.0f} MB, "
              f"daemon + code server + run workers {peaks.get('daemon', 0):5.0f} MB; workers busy {peaks['busy']:.1f} s "
              f"({peaks['busy'] / n:.2f} s/observation); {peaks['runs']:.0f} runs of {peaks['run_wall']:.1f} s "
              "mean (start to end)", flush=True)
    print(f"({n} observations of {args.size} px, {os.cpu_count()} cores, load {load:.1f} at the start; {root})")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
