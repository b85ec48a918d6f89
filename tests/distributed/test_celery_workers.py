"""A night processed by two real Celery workers (issue 12), one of them SIGKILLed while it executes a step.

Everything is real: RabbitMQ on 127.0.0.1:5672 (a queue of the test's own), PostgreSQL for the Dagster
instance (deploy/dagster-celery.yaml) and for the catalog, `dagster-daemon run` with the platform's sensors
launching the runs, and two `dagster-celery worker start` processes (deploy/celery.yaml, one step at a time
each) executing their steps. Once worker-1 has finished a step and is inside another (the step's STEP_START
is in the event log after worker-1 took it), its whole process group is SIGKILLed. The broker gives the
unacknowledged task to worker-2 (acks late), which runs the step again in the same run; the night then ends
with every observation one completed chain, every partition of every asset materialized once, no run failed
or retried by the sensors, nothing duplicated in the catalog or the store (tests/reliability/invariants.py).

Without the broker the test is skipped, unless REQUIRE_RABBITMQ=1 (.ci/run sets it, having started RabbitMQ).
"""

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRunStatus

from dagster_project.catalog import Catalog
from dagster_project.catalog.schema import Candidate, DifferenceRun, PreprocessRun, ReferenceImage
from dagster_project.pipeline.jobs import CELERY_TASK_SETTINGS, celery_config_source, execution
from dagster_project.settings import Settings
from tests.conftest import fresh_postgres_database
from tests.distributed.workers import (
    BROKER,
    StepAttempt,
    Worker,
    broker_reachable,
    celery_site,
    delete_queue,
    step_attempts,
    step_started,
    workers,
)
from tests.reliability import harness
from tests.reliability.invariants import OBSERVATION_ASSETS, assert_every_file_once, settled, sha256

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
#: steps long enough to be killed inside (raw_observation only re-hashes the archived file)
KILLABLE = ("calibrated_image", "reference_image", "difference_image")


@pytest.fixture
def broker() -> str:
    if not broker_reachable():
        message = f"RabbitMQ unreachable at {BROKER}"
        if os.environ.get("REQUIRE_RABBITMQ") == "1":
            pytest.fail(message + " (REQUIRE_RABBITMQ=1)")
        pytest.skip(message)
    return BROKER


def drop(files: list[Path], site: harness.Site) -> None:
    """Files appear in the landing folder whole (written beside it, then renamed in)."""
    staging = site.root / "staging"
    staging.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, staging / f.name)
        (staging / f.name).replace(site.landing / f.name)


def all_attempts(instance: DagsterInstance) -> list[StepAttempt]:
    return [a for run in instance.get_runs() for a in step_attempts(instance, run.run_id)]


def kill_inside_a_step(instance: DagsterInstance, worker: Worker, seconds: float) -> StepAttempt:
    """SIGKILL ``worker`` once it has finished a step and is computing another (one of :data:`KILLABLE`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        mine = [a for a in all_attempts(instance) if a.worker == worker.node]
        if any(a.succeeded for a in mine):
            for attempt in mine:
                if not attempt.succeeded and attempt.step_key in KILLABLE and step_started(instance, attempt):
                    worker.kill()
                    return attempt
        assert worker.alive(), worker.output()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{worker.name} was never seen inside a step after finishing one")


def test_worker_settings_match_the_executor():
    """deploy/celery.yaml gives the workers the task settings the runs' executor sends with (pipeline/jobs.py)."""
    worker = yaml.safe_load((REPO / "deploy" / "celery.yaml").read_text())["execution"]["config"]
    assert worker["config_source"] == dict(CELERY_TASK_SETTINGS)
    assert worker["broker"] == {"env": "ASTRO_CELERY_BROKER"} and worker["backend"] == {"env": "ASTRO_CELERY_BACKEND"}
    settings = Settings(**{**Settings.from_env().__dict__, "executor": "celery", "celery_queue": "q1"})
    celery = execution(settings)
    assert celery.executor_def.name == "celery" and celery.op_retry_policy.max_retries == settings.step_retries
    assert celery.config["execution"]["config"]["config_source"] == {**celery_config_source(settings)}
    assert celery.config["execution"]["config"]["config_source"]["task_default_queue"] == "q1"
    default = execution(Settings(**{**Settings.from_env().__dict__, "executor": "in_process"}))
    assert (default.executor_def, default.op_retry_policy, default.config) == (
        None, None, {"execution": {"config": {"in_process": {}}}})


def test_a_night_across_two_workers_with_one_killed_mid_step(tmp_path, broker):
    files = harness.night(tmp_path / "night", epochs=3)
    science = [f for f in files if "_sci_" in f.name]
    with fresh_postgres_database() as catalog_url, fresh_postgres_database() as instance_url:
        site = celery_site(tmp_path / "site", catalog_url, instance_url)
        catalog = Catalog(catalog_url)
        t0 = time.monotonic()
        try:
            with site.environment():
                instance = DagsterInstance.from_config(str(site.dagster_home))
                with workers(site, ["worker-1", "worker-2"]) as (first, second), \
                        harness.started(lambda: harness.start_daemon(site)) as daemon:
                    ready = time.monotonic() - t0
                    drop(files, site)
                    killed = kill_inside_a_step(instance, first, 240)
                    killed_at = time.monotonic() - t0
                    harness.wait_for(lambda: settled(catalog, instance, len(science)), 300, "the night to be done",
                                     interval=0.5, alive=daemon)
                    done = time.monotonic() - t0
                    check_the_night(catalog, instance, site, files, killed, first, second)
                print(f"workers ready {ready:.0f} s; {first.name} killed inside {killed.step_key} at {killed_at:.0f} s;"
                      f" night settled at {done:.0f} s")
                instance.dispose()
        finally:
            catalog.engine.dispose()
            delete_queue(site.env["ASTRO_CELERY_QUEUE"])


def check_the_night(catalog: Catalog, instance: DagsterInstance, site: harness.Site, files: list[Path],
                    killed: StepAttempt, first: Worker, second: Worker) -> None:
    # every file one accepted registration, every observation one completed chain, no artifact or row twice
    outcome = assert_every_file_once(catalog, instance, site.store, {f.name: sha256(f) for f in files},
                                     landing=site.landing)
    science = [f for f in files if "_sci_" in f.name]
    assert outcome.observations == len(science) and outcome.candidates > 0

    # the killed step: taken again by the other worker in the same run, which then succeeded
    retried = [a for a in step_attempts(instance, killed.run_id) if a.step_key == killed.step_key]
    assert [(a.worker, a.succeeded) for a in retried] == [(first.node, False), (second.node, True)], retried
    starts = [r for r in instance.get_records_for_run(killed.run_id, of_type=DagsterEventType.STEP_START).records
              if r.event_log_entry.step_key == killed.step_key]
    assert len(starts) == 2
    assert instance.get_run_by_id(killed.run_id).status is DagsterRunStatus.SUCCESS

    # both workers executed steps to the end; no run failed, none was run again by the sensors
    attempts = [a for a in (step_attempts(instance, r.run_id) for r in instance.get_runs()) for a in a]
    assert {a.worker for a in attempts if a.succeeded} == {first.node, second.node}
    runs = instance.get_runs()
    assert all(r.status is DagsterRunStatus.SUCCESS for r in runs), [(r.job_name, r.status) for r in runs]
    per_partition = Counter((r.job_name, r.tags.get("dagster/partition")) for r in runs)
    assert set(per_partition.values()) == {1}, per_partition

    # every partition of every asset materialized exactly once
    for asset in OBSERVATION_ASSETS:
        for partition in instance.get_dynamic_partitions("observations"):
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=10).records
            assert len(records) == 1, (asset, partition, len(records))
    for partition in instance.get_dynamic_partitions("field_bands"):
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("reference_image"), asset_partitions=[partition]), limit=10).records
        assert len(records) == 1, ("reference_image", partition, len(records))

    # the catalog: one calibration and one difference row per observation, candidates once, one reference
    with catalog.session() as s:
        for table in (PreprocessRun, DifferenceRun):
            per_observation = Counter(s.scalars(sa.select(table.observation_id)))
            assert len(per_observation) == len(science) and set(per_observation.values()) == {1}, table
        assert s.scalar(sa.select(sa.func.count()).select_from(ReferenceImage)) == 1
        twice = s.execute(sa.select(Candidate.observation_id, Candidate.pixel_x, Candidate.pixel_y)
                          .group_by(Candidate.observation_id, Candidate.pixel_x, Candidate.pixel_y)
                          .having(sa.func.count() > 1)).all()
        assert not twice
    # the store: no temporary file left, each observation's products once (fixed names)
    leftovers = [p for p in site.store.rglob("*") if p.is_file() and (p.name.startswith(".") or "partial" in p.name)]
    assert not leftovers, leftovers
