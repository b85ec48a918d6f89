"""Real processes for the crash tests: `process`, `dagster-daemon run` and its run workers, found and
killed by pid through /proc (Linux), and the catalog polled directly while they work."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dagster_project.simulation.night import simulate_night

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DAEMON = Path(sys.executable).parent / "dagster-daemon"

#: the smallest frames whose chain completes reliably with the simulator's star density (at 256 and
#: 512 px too few stars remain for a PSF on most seeds: calibrations fail on science, not on crashes)
SIZE = 640
SEED = 5


def night(folder: Path, *, epochs: int = 3, seed: int = SEED, date: str = "2026-11-21") -> list[Path]:
    """One field x ``epochs`` epochs (the first becomes the reference), 2 bias, 2 flats; the FITS files."""
    simulate_night(folder, n_fields=1, n_epochs=epochs, size=SIZE, n_bias=2, n_flats=2, transients_per_frame=3,
                   seed=seed, night=date, truth_path=folder.parent / f"truth-{folder.name}.csv")
    return sorted(folder.glob("*.fits"))


def instance_yaml(max_concurrent_runs: int | None = None, monitoring: bool = False) -> str:
    """A Dagster instance like deploy/dagster.yaml: SQLite storage under DAGSTER_HOME, sensors in threads."""
    text = "telemetry:\n  enabled: false\nsensors:\n  use_threads: true\n  num_workers: 2\n"
    if max_concurrent_runs is not None:
        text += ("run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
                 f"  config:\n    max_concurrent_runs: {max_concurrent_runs}\n"
                 "    dequeue_interval_seconds: 1\n")
    if monitoring:
        text += ("run_monitoring:\n  enabled: true\n  start_timeout_seconds: 60\n  max_resume_run_attempts: 0\n"
                 "  poll_interval_seconds: 5\n")
    return text


@dataclass
class Site:
    """One platform installation in a temporary folder: its environment, folders and logs."""

    root: Path
    database_url: str
    landing: Path = field(init=False)
    dagster_home: Path = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.landing = self.root / "landing"
        self.dagster_home = self.root / "dagster"
        for folder in (self.landing, self.dagster_home, self.root / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(instance_yaml())
        (self.root / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n      module_name: dagster_project.definitions\n"
            f"      location_name: dagster_project\n      working_directory: {REPO}\n")
        self.env = {
            **os.environ, "ASTRO_HOME": str(self.root), "DAGSTER_HOME": str(self.dagster_home),
            "DATABASE_URL": self.database_url, "ASTRO_LANDING_DIR": str(self.landing), "ASTRO_SURVEY": "test",
            "ASTRO_SETTLE_SECONDS": "0", "ASTRO_SENSOR_INTERVAL": "1", "ASTRO_PRODUCT_QUIET": "0",
            # the ledger and product rebuilds on every loop of the daemon too: the scenarios wait for both
            "ASTRO_BOOKKEEPING_INTERVAL": "1",
            # retries soon and often enough for a test, through the same settings an operator uses
            "ASTRO_RETRY_BACKOFF": "2", "ASTRO_RETRY_ATTEMPTS": "6",
            # one-frame references: the crashes are about runs and rows, and a co-add's rebuilds would only
            # lengthen each scenario (tests/e2e/test_coadd_references.py covers the co-adds)
            "ASTRO_REFERENCE_FRAMES": "1",
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def store(self) -> Path:
        return self.root / "store"

    def log(self, name: str) -> Path:
        return self.root / "logs" / name

    def configure_instance(self, **options) -> None:
        (self.dagster_home / "dagster.yaml").write_text(instance_yaml(**options))

    @contextmanager
    def environment(self) -> Iterator[None]:
        """This site's variables in the test process too (for DagsterInstance.get(), the CLI, Settings)."""
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


# --- processes ---------------------------------------------------------------------------------------------------------

class Started:
    """A process this test started, as the leader of a new session: every process it starts (a daemon's
    code servers and run workers) stays in that session, also once orphaned by a SIGKILL, so
    :meth:`destroy` finds and ends them all by pid."""

    def __init__(self, argv: list[str], site: Site, log_name: str):
        self.log_path = site.log(log_name)
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(argv, cwd=site.root, env=site.env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def session(self) -> list[int]:
        """Every live process of this session but the leader (descendants, and orphans of a killed leader)."""
        return [pid for pid, info in _processes().items() if info.session == self.pid and pid != self.pid]

    def sigkill(self) -> None:
        """SIGKILL of this process only (its children live on, orphaned, as after a real crash)."""
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait()

    def wait(self, seconds: float) -> int:
        return self.popen.wait(seconds)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def destroy(self) -> None:
        """End this process and every process of its session."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for _ in range(3):
            for pid in self.session():
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._log.close()


@dataclass(frozen=True)
class ProcessInfo:
    ppid: int
    session: int
    cmdline: str


def _processes() -> dict[int, ProcessInfo]:
    """pid -> parent, session and command line, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        found[int(entry.name)] = ProcessInfo(int(fields[1]), int(fields[3]), cmdline)
    return found


def open_paths(pid: int) -> list[str]:
    folder = Path(f"/proc/{pid}/fd")
    paths = []
    with suppress(OSError):
        for fd in folder.iterdir():
            with suppress(OSError):
                paths.append(os.readlink(fd))
    return paths


def run_worker_pids(sessions: list[Started], run_id: str) -> list[int]:
    """The run worker of ``run_id`` in the sessions of ``sessions`` (daemons, also killed ones whose
    code servers live on). Dagster's default run launcher asks the code server (`dagster api grpc`) to
    start the run, which it does in a spawned subprocess (`multiprocessing.spawn`); that command line
    names no run, but the worker holds the run's compute-log files open
    (``storage/<run_id>/compute_logs/``) and its `tail` children name them. A worker started as
    `dagster api execute_run` (other launchers) is recognised by its command line."""
    table = _processes()
    leaders = {proc.pid for proc in sessions}
    workers = []
    for pid, info in table.items():
        if info.session not in leaders:
            continue
        if "execute_run" in info.cmdline and run_id in info.cmdline:
            workers.append(pid)
        elif "spawn_main" in info.cmdline:
            children = [c for c, child in table.items() if child.ppid == pid]
            if any(run_id in path for path in open_paths(pid)) or any(run_id in table[c].cmdline for c in children):
                workers.append(pid)
    return workers


def start_process(site: Site, folder: Path, log_name: str = "process.log") -> Started:
    return Started([PYTHON, "-m", "dagster_project", "process", str(folder)], site, log_name)


def start_daemon(site: Site, log_name: str = "daemon.log") -> Started:
    return Started([str(DAEMON), "run", "-w", str(site.root / "workspace.yaml")], site, log_name)


@contextmanager
def started(factory: Callable[[], Started]) -> Iterator[Started]:
    proc = factory()
    try:
        yield proc
    finally:
        proc.destroy()


# --- waiting -----------------------------------------------------------------------------------------------------------

def wait_for(condition: Callable[[], object], seconds: float, what: str, interval: float = 0.05,
             alive: Started | None = None, log: Started | None = None):
    """Poll ``condition`` until it is truthy (and return it); fail after ``seconds`` saying ``what``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        tail = ("\n--- log tail ---\n" + (log or alive).output()[-4000:]) if (log or alive) else ""
        if alive is not None and not alive.alive():
            raise AssertionError(f"{what}: the process ended first (exit {alive.popen.returncode}){tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


class CatalogProbe:
    """Short read-only queries on the catalog, straight to its database (never through the test's proxy)."""

    def __init__(self, url: str):
        url = sa.make_url(url)
        if url.drivername == "postgresql":  # as the catalog does (catalog/db.py): psycopg2, which the platform ships
            url = url.set(drivername="postgresql+psycopg2")
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def count(self, sql: str) -> int:
        try:
            with self.engine.connect() as connection:
                return int(connection.execute(sa.text(sql)).scalar() or 0)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:  # no catalog yet, or SQLite busy
            if "no such table" in str(exc) or "locked" in str(exc) or "does not exist" in str(exc):
                return 0
            raise

    def accepted(self) -> int:
        return self.count("SELECT count(*) FROM raw_data_files WHERE status = 'accepted'")

    def observations(self, status: str) -> int:
        return self.count(f"SELECT count(*) FROM observations WHERE status = '{status}'")

    def running(self, table: str) -> int:
        return self.count(f"SELECT count(*) FROM {table} WHERE status = 'running'")

    def dispose(self) -> None:
        self.engine.dispose()
