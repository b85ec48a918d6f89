"""The operations API's critical writes: how long a telescope waits for ``202 buffered``, and how fast the
replayer applies a backlog to PostgreSQL once the database is back.

1. The API is started as a user starts it (``python -m dagster_project api``), its catalog on a PostgreSQL
   port nothing listens on (the database away). One client sends ``--writes`` starts of executed observation
   units, one after the other, each with its own idempotency key: every answer waits for the journal's fsync.
   Printed: p50 / p99 / max per write, and the yardstick measured in the same run, ``GET /health`` over the
   same connection (the HTTP round trip without the journal), each as a ratio.
2. The API is stopped, and a replayer applies the backlog the journal holds to a fresh PostgreSQL database.
   Printed: writes/s, and the yardstick, the same rows written straight by the catalog's query in the same
   batches without the journal (``observatory.start_executed_obs_unit``), as a ratio.

Peak memory: the API's (VmHWM) and this process's.

    .venv/bin/python benchmarks/api_buffering.py [--writes 5000]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagster_project.api.appliers import APPLIERS  # noqa: E402
from dagster_project.catalog import Catalog  # noqa: E402
from dagster_project.catalog.db import make_engine  # noqa: E402
from dagster_project.catalog.queries import observatory  # noqa: E402
from dagster_project.journal import Journal, Replayer  # noqa: E402

ADMIN = "benchmark-admin-" + uuid.uuid4().hex
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def start_api(home: Path, database_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "ASTRO_HOME": str(home), "DATABASE_URL": database_url, "ASTRO_API_ADMIN_TOKEN": ADMIN}
    process = subprocess.Popen([sys.executable, "-m", "dagster_project", "api", "--port", str(port)], env=env,
                               stdout=open(home / "api.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the API did not start: " + (home / "api.log").read_text()[-2000:])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def buffered_writes(url: str, writes: int) -> tuple[list[float], list[float], float]:
    """Seconds per buffered write, per GET /health (the yardstick), and the API's peak RSS (MB)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        token = client.post("/tokens", json={"name": "bench", "scopes": ["telescope"]},
                            headers={"Authorization": f"Bearer {ADMIN}"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        write_times, health_times = [], []
        for n in range(writes):
            body = {"obs_unit_id": n, "instrument": "cam", "start_time": "2026-12-07T01:00:00Z"}
            started = time.perf_counter()
            answer = client.post("/executed_obs_units/start", json=body,
                                 headers={**headers, "Idempotency-Key": f"bench-{n}"})
            write_times.append(time.perf_counter() - started)
            assert answer.status_code == 202, answer.text
            started = time.perf_counter()
            client.get("/health")
            health_times.append(time.perf_counter() - started)
    return write_times, health_times


def direct_inserts(database_url: str, writes: int, batch: int) -> float:
    """Seconds to write ``writes`` units straight through the catalog's query, ``batch`` per transaction."""
    catalog = Catalog(database_url)
    catalog.migrate()
    started = time.perf_counter()
    for first in range(0, writes, batch):
        with catalog.session() as session:
            for n in range(first, min(writes, first + batch)):
                observatory.start_executed_obs_unit(session, id=uuid.uuid4(), obs_unit_id=n, instrument="cam",
                                                    start_time=datetime(2026, 12, 7, 1, tzinfo=UTC))
    elapsed = time.perf_counter() - started
    catalog.engine.dispose()
    return elapsed


def fresh_database(server: sa.Engine) -> tuple[str, str]:
    name = f"bench_api_{uuid.uuid4().hex[:12]}"
    with server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return sa.make_url(SERVER).set(database=name).render_as_string(hide_password=False), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=5000)
    args = parser.parse_args()
    server = make_engine(SERVER).execution_options(isolation_level="AUTOCOMMIT")
    names = []
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        home = Path(tmp)
        away = f"postgresql://postgres@127.0.0.1:{free_port()}/away"
        process, url = start_api(home, away)
        try:
            write_times, health_times = buffered_writes(url, args.writes)
            api_peak = peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
        yard = statistics.median(health_times)
        print(f"# {args.writes} buffered writes, one client, the catalog away (load {os.getloadavg()[0]:.1f})")
        for label, q in (("p50", 50), ("p99", 99), ("max", 100)):
            value = percentile(write_times, q)
            print(f"  buffered write {label}: {value * 1000:6.2f} ms  = {value / yard:5.1f} x GET /health "
                  f"({yard * 1000:.2f} ms median)")
        print(f"  API peak RSS: {api_peak:.0f} MB")

        journal = Journal(home / "api" / "journal.sqlite")
        assert journal.counts()["pending"] == args.writes
        replay_url, name = fresh_database(server)
        names.append(name)
        Catalog(replay_url).migrate()
        replayer = Replayer(journal, replay_url, APPLIERS)
        started = time.perf_counter()
        report = replayer.replay()
        replay_seconds = time.perf_counter() - started
        replayer.close()
        assert report.applied == args.writes and report.dead == 0, report
        direct_url, name = fresh_database(server)
        names.append(name)
        direct_seconds = direct_inserts(direct_url, args.writes, replayer.batch)
        print(f"# replay of the backlog into PostgreSQL (batches of {replayer.batch})")
        print(f"  replay: {args.writes / replay_seconds:7.0f} writes/s ({replay_seconds:.2f} s)")
        print(f"  yardstick, the same rows by the catalog's query without the journal: "
              f"{args.writes / direct_seconds:7.0f} rows/s; replay / yardstick = {direct_seconds / replay_seconds:.2f}")
    with server.connect() as connection:
        for name in names:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"  this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
