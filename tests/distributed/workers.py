"""Celery workers for the distributed tests and the throughput benchmark: the broker, a platform site whose
steps go to Celery (instance and catalog on PostgreSQL), real `dagster-celery` workers started and SIGKILLed by
pid, and what the Dagster event log says about which worker executed which step."""

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance

from tests.reliability.harness import REPO, Site, Started, wait_for

BROKER = os.environ.get("ASTRO_CELERY_BROKER", "pyamqp://guest@127.0.0.1:5672//")
BIN = Path(sys.executable).parent
#: the engine event a Celery worker reports when it starts a step (dagster_celery/tasks.py), and its metadata key
DELEGATED = "in celery worker"
WORKER_KEY = "Celery worker"


def broker_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    with suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def delete_queue(queue: str) -> None:
    """Remove the test's queue from the broker (each test has its own, so other work on the broker is untouched)."""
    from kombu import Connection

    with suppress(Exception), Connection(BROKER, connect_timeout=5) as connection:
        connection.default_channel.queue_delete(queue)


def postgres_instance_env(url: str) -> dict[str, str]:
    """deploy/dagster-celery.yaml's DAGSTER_PG_* variables for the database at ``url``."""
    parts = sa.make_url(url)
    env = {"DAGSTER_PG_HOST": parts.host, "DAGSTER_PG_USERNAME": parts.username, "DAGSTER_PG_DB": parts.database,
           "DAGSTER_PG_PORT": str(parts.port or 5432)}
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


def celery_site(root: Path, catalog_url: str, instance_url: str, **env: str) -> Site:
    """A site (tests/reliability/harness.py) with the instance of deploy/dagster-celery.yaml and ASTRO_EXECUTOR=celery,
    on a queue of its own."""
    site = Site(root, catalog_url)
    (site.dagster_home / "dagster.yaml").write_text((REPO / "deploy" / "dagster-celery.yaml").read_text())
    site.env.update(postgres_instance_env(instance_url))
    site.env.update({"ASTRO_EXECUTOR": "celery", "ASTRO_CELERY_BROKER": BROKER, "ASTRO_CELERY_BACKEND": "rpc://",
                     "ASTRO_CELERY_QUEUE": f"astro-test-{uuid.uuid4().hex[:10]}",
                     "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env})
    return site


class Worker(Started):
    """`dagster-celery worker start` as `make workers` starts it (deploy/celery.yaml, one step at a time), the
    leader of its own session: :meth:`kill` SIGKILLs its whole process group (the CLI, the Celery main process
    and its pool process) at once, as a machine that dies would."""

    def __init__(self, site: Site, name: str):
        self.name = name
        super().__init__([str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                          "-y", str(REPO / "deploy" / "celery.yaml"), "-n", name, "-q", site.env["ASTRO_CELERY_QUEUE"],
                          "--", "--concurrency", "1"], site, f"{name}.log")

    @property
    def node(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def ready(self, seconds: float = 90) -> None:
        wait_for(lambda: f"{self.node} ready." in self.output(), seconds, f"{self.name} to be ready", interval=0.2,
                 alive=self)

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, seconds: float = 30) -> None:
        """Warm shutdown (SIGTERM to the Celery main process), then whatever is left is killed."""
        if self.alive():
            for pid in self.session():
                if "celery -A" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    break
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(seconds)
        self.destroy()


@contextmanager
def workers(site: Site, names: list[str]) -> Iterator[list[Worker]]:
    started = []
    try:
        for name in names:
            started.append(Worker(site, name))
        for worker in started:
            worker.ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


@dataclass(frozen=True)
class StepAttempt:
    """A step of a run as a Celery worker took it: which worker, when, and the attempt's end (None: never)."""

    run_id: str
    step_key: str
    worker: str
    started: float
    succeeded: bool


def step_attempts(instance: DagsterInstance, run_id: str) -> list[StepAttempt]:
    """Every time a Celery worker took a step of ``run_id``, in order, and whether that attempt succeeded (a
    STEP_SUCCESS of the step before the next attempt of it)."""
    records = instance.get_records_for_run(run_id, of_type={DagsterEventType.ENGINE_EVENT,
                                                             DagsterEventType.STEP_SUCCESS}).records
    attempts: list[list] = []
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event.event_type is DagsterEventType.ENGINE_EVENT and DELEGATED in (entry.message or ""):
            worker = event.event_specific_data.metadata[WORKER_KEY].value
            attempts.append([entry.step_key, worker, entry.timestamp, False])
        elif event.event_type is DagsterEventType.STEP_SUCCESS:
            for attempt in reversed(attempts):
                if attempt[0] == entry.step_key:
                    attempt[3] = True
                    break
    return [StepAttempt(run_id, *attempt) for attempt in attempts]


def step_started(instance: DagsterInstance, attempt: StepAttempt) -> bool:
    """Whether the step of ``attempt`` is computing (its STEP_START logged after the worker took it)."""
    records = instance.get_records_for_run(attempt.run_id, of_type=DagsterEventType.STEP_START).records
    return any(r.event_log_entry.step_key == attempt.step_key and r.event_log_entry.timestamp >= attempt.started
               for r in records)
