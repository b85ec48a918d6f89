"""No write is lost while the database is away: 10,000 critical writes (some retried by their clients with the
same key) accepted while a TCP proxy between the API and PostgreSQL is cut, the API killed with SIGKILL and
started again five times on the way; every acknowledged write readable throughout (those applied before the
outage too); once the proxy is restored
the replayer applies them all, exactly once, with no manual step."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from dagster_project.catalog import Catalog
from dagster_project.catalog.db import make_engine
from tests.reliability.proxy import CuttableProxy

ADMIN = "outage-admin-token-0123456789"
WRITES = int(os.environ.get("OUTAGE_WRITES", 10_000))
RESTARTS = 5
CLIENTS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiProcess:
    """``python -m dagster_project api`` as a user starts it, killed and started again by the test."""

    def __init__(self, home: Path, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ASTRO_HOME": str(home), "DATABASE_URL": database_url,
                    "ASTRO_API_ADMIN_TOKEN": ADMIN}
        self.log = open(home / "api.log", "ab")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "dagster_project", "api", "--port", str(self.port)],
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (Path(self.log.name).read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the API did not start")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.mark.slow
def test_ten_thousand_writes_through_an_outage_and_five_kills_land_exactly_once(tmp_path, postgres_url):
    Catalog(postgres_url).migrate()
    with CuttableProxy(("127.0.0.1", 5432)) as proxy:
        through_proxy = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        api = ApiProcess(tmp_path, through_proxy)
        api.start()
        try:
            token = httpx.post(f"{api.url}/tokens", json={"name": "tel", "scopes": ["telescope"]},
                               headers={"Authorization": f"Bearer {ADMIN}"}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            before = applied_before_the_outage(api, headers)
            proxy.cut()
            started = time.monotonic()
            acknowledged = write_through_kills(api, headers)
            assert len(acknowledged) == WRITES
            print(f"{WRITES} writes acknowledged through {RESTARTS} kills in {time.monotonic() - started:.1f} s")

            # every acknowledged write is readable while the catalog is still away
            for obs_unit_id in range(0, WRITES, 997):
                units = httpx.get(f"{api.url}/executed_obs_units/{obs_unit_id}", headers=headers, timeout=10).json()
                assert [u["id"] for u in units] == [acknowledged[obs_unit_id]]
            for obs_unit_id, unit_id in before.items():  # and so is every write applied before it
                units = httpx.get(f"{api.url}/executed_obs_units/{obs_unit_id}", headers=headers, timeout=10).json()
                assert [u["id"] for u in units] == [unit_id]
            assert httpx.get(f"{api.url}/health").json()["journal"]["pending"] == WRITES

            proxy.restore()
            started = time.monotonic()
            deadline = time.monotonic() + 300
            while httpx.get(f"{api.url}/health").json()["journal"]["pending"] and time.monotonic() < deadline:
                time.sleep(0.5)
            counts = httpx.get(f"{api.url}/health").json()["journal"]
            print(f"replayed after the proxy was restored in {time.monotonic() - started:.1f} s")
            assert counts == {"pending": 0, "applied": WRITES + len(before), "dead": 0}
            units = httpx.get(f"{api.url}/executed_obs_units/{WRITES - 1}", headers=headers).json()
            assert [(u["id"], u["buffered"]) for u in units] == [(acknowledged[WRITES - 1], False)]
        finally:
            api.stop()

    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT obs_unit_id, id FROM executed_obs_units")).all()
        applied = connection.scalar(sa.text("SELECT count(*) FROM applied_writes"))
    engine.dispose()
    assert len(rows) == WRITES + len(before) and applied == WRITES + len(before)
    assert {obs_unit_id: str(unit_id) for obs_unit_id, unit_id in rows} == {**acknowledged, **before}


def applied_before_the_outage(api: ApiProcess, headers: dict, count: int = 20) -> dict[int, str]:
    """``count`` units started and applied while the catalog is reachable; obs_unit_id -> unit id."""
    ids = {}
    for n in range(WRITES, WRITES + count):
        body = {"obs_unit_id": n, "instrument": "cam", "start_time": "2026-12-07T00:00:00Z"}
        ids[n] = httpx.post(f"{api.url}/executed_obs_units/start", json=body, headers=headers).json()["ids"]["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{api.url}/health").json()["journal"]["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{api.url}/health").json()["journal"] == {"pending": 0, "applied": count, "dead": 0}
    return ids


def write_through_kills(api: ApiProcess, headers: dict) -> dict[int, str]:
    """Each write until it is acknowledged (a client retries with the same key whatever went wrong); every tenth
    sent twice; the API SIGKILLed and started again ``RESTARTS`` times meanwhile. Returns obs_unit_id -> unit id."""
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    done = threading.Event()
    local = threading.local()  # a connection per client thread, as a telescope's client keeps one

    def write(n: int) -> None:
        body = {"obs_unit_id": n, "instrument": "cam", "start_time": "2026-12-07T01:00:00Z"}
        key = {**headers, "Idempotency-Key": f"start-{n}"}
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=api.url, timeout=10)
        for _ in range(1 + (n % 10 == 0)):
            while True:
                try:
                    answer = local.client.post("/executed_obs_units/start", json=body, headers=key)
                except httpx.HTTPError:
                    time.sleep(0.2)  # the API is down: the telescope tries again with the same key
                    continue
                assert answer.status_code == 202, answer.text
                unit_id = answer.json()["ids"]["id"]
                with lock:
                    assert acknowledged.setdefault(n, unit_id) == unit_id  # a retry gives the same id
                break

    restarts = []

    def killer() -> None:
        for restart in range(RESTARTS):
            target = (restart + 1) * WRITES // (RESTARTS + 1)
            while len(acknowledged) < target and not done.is_set():
                time.sleep(0.01)
            api.kill()
            api.start()
            restarts.append(restart)

    kills = threading.Thread(target=killer, daemon=True)
    kills.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(write, range(WRITES)))
    done.set()
    kills.join(120)
    assert len(restarts) == RESTARTS
    return acknowledged
