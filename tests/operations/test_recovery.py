"""Automatic recovery (issue 9, defects 7 and 8): work a failed or dead run left unfinished is asked for
again, under a new run key, after an exponential backoff, up to a maximum number of attempts; a stuck
run key never floods the ledger; `process` completes the operations the sensors start; `backfill
--status unfinished` selects every unfinished state; the catalog password never reaches Dagster's config.

Runs fail for real: their catalog is a PostgreSQL server that is down (every connection refused), or
the archived raw file they verify is gone.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus, Definitions, RunsFilter, SensorResult, instance_for_test

import dagster_project
from dagster_project.catalog import queries, schema
from dagster_project.catalog.schema import DifferenceRun, Observation, ObservationStatus, PreprocessRun, RunStatus
from dagster_project.catalog.queries import observations_for_backfill
from dagster_project.catalog.schema import OperationStatus, OperationType
from dagster_project.catalog.queries import RetryPolicy
from dagster_project.cli.main import main as cli_main
from dagster_project.definitions import defs
from dagster_project.products.requests import RequestSpec, submit_requests
from dagster_project.operations.recording import start_wave
from dagster_project.resources import CatalogResource, resources_from_settings
from dagster_project.cli.runner import HeadlessDaemon, process_folder
from dagster_project.sensors.reference_and_difference import ATTEMPT_TAG
from dagster_project.settings import Settings
from dagster_project.simulation.night import simulate_night
from tests.catalog import calibrated, observation
from tests.platform import make_platform, retry_policy

operations_ledger_sensor = defs.resolve_sensor_def("operations_ledger_sensor")

raw_arrival_sensor = defs.resolve_sensor_def("raw_arrival_sensor")
reference_and_difference_sensor = defs.resolve_sensor_def("reference_and_difference_sensor")

#: a catalog whose server is down: nothing listens on this port, every connection is refused
DOWN = "postgresql://astro@127.0.0.1:9/catalog"
RUN_KEY = "dagster/run_key"
BACKOFF = 3.0


def configure(platform, policy: RetryPolicy) -> None:
    platform.resources.update(resources_from_settings(platform.settings, retry_policy=policy))


@pytest.fixture
def platform(tmp_path, catalog_url):
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, catalog_url, instance)
        configure(platform, retry_policy(max_attempts=3, backoff_seconds=BACKOFF))
        yield platform
        platform.catalog.engine.dispose()


def tick(platform, sensor):
    """One evaluation, its new partitions added as the daemon would; returns (run requests, result)."""
    result, _ = platform.tick(sensor)
    if not isinstance(result, SensorResult):
        return [], result
    for request in result.dynamic_partitions_requests or []:
        if request.partition_keys:
            platform.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(result.run_requests or []), result


def launch(platform, request, catalog_url: str | None = None):
    """Execute a sensor's request as the daemon does (its run key and tags), its catalog at ``catalog_url``;
    returns the run's record."""
    resources = dict(platform.resources)
    if catalog_url is not None:
        resources["catalog"] = CatalogResource(database_url=catalog_url)
    result = defs.resolve_job_def(request.job_name or "calibrate_job").execute_in_process(
        instance=platform.instance, partition_key=request.partition_key, resources=resources,
        tags={**request.tags, RUN_KEY: request.run_key}, raise_on_error=False)
    return platform.instance.get_run_record_by_id(result.run_id)


def ingested(platform, n: int = 1) -> str:
    """A registered observation never calibrated (its archived raw file does not exist)."""
    with platform.catalog.session() as s:
        return observation(s, n).observation_id


def calibrated_with_reference(platform) -> str:
    """A calibrated observation whose field has a current reference (made from another frame, differenced)."""
    with platform.catalog.session() as s:
        source = calibrated(s, 1)
        reference = queries.record_reference(s, "F001", "r", source, "/refs/F001-r/v1.fits", seeing=1.0, depth=None,
                                             selection_reason="test", dagster_run_id=None)
        run = queries.start_difference_run(s, source, reference, {}, "diff-1")
        queries.finish_difference_run(s, run, status=RunStatus.SKIPPED, error_message="its field's reference")
        key = calibrated(s, 2).observation_id
    platform.instance.add_dynamic_partitions("observations", [source.observation_id, key])  # as the raw-arrival sensor did
    return key


def stage_state(platform, key: str) -> tuple[ObservationStatus, bool, bool]:
    """(observation status, whether a calibration attempt exists, whether a difference attempt exists)."""
    with platform.catalog.session() as s:
        obs = s.scalars(sa.select(Observation).where(Observation.observation_id == key)).one()
        return (obs.status,
                s.scalar(sa.select(PreprocessRun.id).where(PreprocessRun.observation_id == obs.id)) is not None,
                s.scalar(sa.select(DifferenceRun.id).where(DifferenceRun.observation_id == obs.id)) is not None)


# --- (a) work a dead run left unattempted is asked for again, after the backoff and not before -----------------------

@pytest.mark.parametrize("stage", ["calibrate", "difference"])
def test_work_a_failed_run_left_unattempted_is_asked_for_again_after_the_backoff(platform, stage):
    if stage == "calibrate":
        sensor, key, left = raw_arrival_sensor, ingested(platform), ObservationStatus.INGESTED
    else:
        sensor, key, left = reference_and_difference_sensor, calibrated_with_reference(platform), \
            ObservationStatus.PREPROCESSED
    (first,) = tick(platform, sensor)[0]
    assert first.partition_key == key
    record = launch(platform, first, catalog_url=DOWN)  # its database is down: it fails before its attempt began
    assert record.dagster_run.status is DagsterRunStatus.FAILURE
    status, calibration_attempt, difference_attempt = stage_state(platform, key)
    assert status is left and not difference_attempt  # the state a run killed at that moment leaves, too
    assert calibration_attempt is (stage == "difference")

    requests, result = tick(platform, sensor)
    assert time.time() < record.end_time + BACKOFF  # this tick really came before the backoff ended
    assert requests == [] and "to retry" in (result.skip_message or "")

    time.sleep(max(0.0, record.end_time + BACKOFF - time.time()) + 0.1)
    (retry,) = tick(platform, sensor)[0]
    assert retry.partition_key == key
    assert retry.run_key == f"{first.run_key}:a1" != first.run_key  # a key Dagster has not used: it launches
    assert (first.tags[ATTEMPT_TAG], retry.tags[ATTEMPT_TAG]) == ("0", "1")


def test_a_run_left_running_by_a_dead_worker_is_asked_for_again(platform):
    """Killed inside its calibration: the attempt stays running in the catalog; once Dagster knows the run
    ended (run monitoring, or the ledger for a dead `process`), the work is asked for again."""
    key = ingested(platform)
    (first,) = tick(platform, raw_arrival_sensor)[0]
    run = platform.instance.create_run_for_job(defs.resolve_job_def("calibrate_job"),
                                               tags={**first.tags, RUN_KEY: first.run_key, "dagster/partition": key})
    platform.instance.report_run_failed(run, "the run worker died")  # what run monitoring reports
    with platform.catalog.session() as s:  # the attempt it began and never finished
        queries.start_preprocess_run(s, queries.get_observation(s, key), {}, run.run_id)
    assert stage_state(platform, key)[0] is ObservationStatus.PREPROCESSING
    assert tick(platform, raw_arrival_sensor)[0] == []  # before the backoff
    time.sleep(BACKOFF + 0.1)
    (retry,) = tick(platform, raw_arrival_sensor)[0]
    assert retry.run_key == f"{first.run_key}:a1"


# --- (b) retried automatically up to the maximum, then not any more -------------------------------------------------

def test_a_run_failing_on_an_unreachable_database_is_retried_up_to_the_max_then_stops(platform):
    policy = retry_policy(max_attempts=3, backoff_seconds=0.5)
    configure(platform, policy)
    key = ingested(platform)
    launched = []
    deadline = time.monotonic() + 60
    while len(launched) < policy.max_attempts:
        assert time.monotonic() < deadline, f"only {len(launched)} attempt(s) in time"
        for request in tick(platform, raw_arrival_sensor)[0]:
            launched.append((request, launch(platform, request, catalog_url=DOWN)))
        time.sleep(0.1)
    base = launched[0][0].run_key
    assert [r.run_key for r, _ in launched] == [base, f"{base}:a1", f"{base}:a2"]
    assert [r.tags[ATTEMPT_TAG] for r, _ in launched] == ["0", "1", "2"]
    assert all(record.dagster_run.status is DagsterRunStatus.FAILURE for _, record in launched)
    for n in range(1, len(launched)):  # exponential backoff between the end of one attempt and the next
        gap = launched[n][1].start_time - launched[n - 1][1].end_time
        assert gap >= policy.delay_before(n), (n, gap)
    assert policy.delay_before(2) == 2 * policy.delay_before(1)

    time.sleep(policy.delay_before(policy.max_attempts) + 0.2)  # longer than any backoff: still nothing
    requests, result = tick(platform, raw_arrival_sensor)
    assert requests == [] and "given up" in result.skip_message
    assert stage_state(platform, key)[0] is ObservationStatus.INGESTED
    with platform.catalog.session() as s:  # left for a person: `backfill --status unfinished` selects it
        assert [o.observation_id for o in observations_for_backfill(s, statuses=["unfinished"])] == [key]


def test_process_retries_a_permanently_failing_partition_up_to_the_max_and_returns(platform, tmp_path):
    key = ingested(platform)  # its archived raw file is missing: raw_observation fails every time
    folder = tmp_path / "empty"
    folder.mkdir()
    lines: list[str] = []
    started = time.monotonic()
    report = process_folder(folder, platform.settings, instance=platform.instance, progress=lines.append,
                            retry_policy=retry_policy(max_attempts=3, backoff_seconds=0.3), wait_timeout=300)
    assert time.monotonic() - started < 120
    attempts = [r for r in report.failed_attempts if r.partition_key == key]
    assert len(attempts) == 3 and {r.job_name for r in attempts} == {"calibrate_job"}
    keys = [platform.instance.get_run_by_id(r.run_id).tags[RUN_KEY] for r in attempts]
    assert len(set(keys)) == 3 and keys[1:] == [f"{keys[0]}:a1", f"{keys[0]}:a2"]
    assert report.failed == [attempts[-1]] and len(report.runs) == 3
    assert any("retried in" in line for line in lines)
    with platform.catalog.session() as s:
        assert not queries.active_operations(s)


# --- (c) backfill selects every unfinished state --------------------------------------------------------------------

def test_backfill_selects_every_unfinished_state(platform, monkeypatch, capsys):
    with platform.catalog.session() as s:
        source = calibrated(s, 90)
        reference = queries.record_reference(s, "F001", "r", source, "/refs/v1.fits", seeing=1.0, depth=None,
                                             selection_reason="test", dagster_run_id=None)

        def differenced(n: int, status: RunStatus | None) -> Observation:
            obs = calibrated(s, n)
            run = queries.start_difference_run(s, obs, reference, {}, f"diff-{n}")
            if status is not None:
                queries.finish_difference_run(s, run, status=status, error_message="boom")
            return obs

        ingested_ = observation(s, 1)
        preprocessing = observation(s, 2)
        queries.start_preprocess_run(s, preprocessing, {}, "run-2")
        preprocessed = calibrated(s, 3)
        differencing = differenced(4, None)
        done = differenced(5, RunStatus.SKIPPED)  # (a completed one is differenced once its candidates are stored)
        calibration_failed = observation(s, 6)
        queries.finish_preprocess_run(s, queries.start_preprocess_run(s, calibration_failed, {}, "run-6"),
                                      status=RunStatus.FAILED, error_message="boom")
        difference_failed = differenced(7, RunStatus.FAILED)
        blocked = observation(s, 8)
        queries.finish_preprocess_run(s, queries.start_preprocess_run(s, blocked, {}, "run-8"),
                                      status=RunStatus.BLOCKED, error_message="no master flat")
        archived = observation(s, 9)
        queries.set_status(s, archived, ObservationStatus.ARCHIVED, reason="replaced")
        unfinished = [ingested_, preprocessing, preprocessed, differencing, calibration_failed, difference_failed,
                      blocked, source]  # the reference's own frame was never differenced either
        expected = {o.observation_id: o.status for o in unfinished}
        assert {o.status for o in unfinished} == set(ObservationStatus) - {ObservationStatus.DIFFERENCED,
                                                                           ObservationStatus.ARCHIVED}
        chosen = {o.observation_id for o in observations_for_backfill(s, statuses=["unfinished"])}
        assert chosen == set(expected)
        assert done.observation_id not in chosen and archived.observation_id not in chosen

    monkeypatch.setenv("DATABASE_URL", platform.settings.database_url)
    capsys.readouterr()
    assert cli_main(["backfill", "--status", "unfinished", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"over {len(expected)} observation(s)" in out
    assert all(key in out for key in expected) and done.observation_id not in out


# --- (d) the ledger: one operation per real campaign, none left running -------------------------------------------

def test_ticks_over_a_stuck_run_key_create_one_reprocess_operation(platform):
    configure(platform, retry_policy())  # the default backoff: nothing is retried while the test runs
    with platform.catalog.session() as s:
        calibrated(s, 1)  # its field has no reference: the sensor asks for one
    (request,) = tick(platform, reference_and_difference_sensor)[0]
    assert request.job_name == "reference_job"
    assert launch(platform, request, catalog_url=DOWN).dagster_run.status is DagsterRunStatus.FAILURE
    cursor, asked = None, []
    for _ in range(8):  # the daemon's ticks, every few seconds; the run key is still what the catalog plans
        asked += tick(platform, reference_and_difference_sensor)[0]
        _, cursor = platform.tick(operations_ledger_sensor, cursor)
    with platform.catalog.session() as s:
        waves = queries.list_operations(s, operation_type=OperationType.REPROCESS_CAMPAIGN)
        assert len(waves) == 1
        (wave,) = waves
        assert wave.status is OperationStatus.COMPLETED and wave.summary_counts["failed"] == 1
        assert not queries.active_operations(s)
    assert asked == []  # within the backoff nothing is asked for again (and the old key would be skipped)
    # the same run keys are the same campaign, also once it is over
    assert start_wave(platform.catalog, "test", OperationType.REPROCESS_CAMPAIGN, [request.run_key]) == wave.id


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """One field, two epochs at 640 px (the smallest the PSF fit is happy with)."""
    night = tmp_path_factory.mktemp("night")
    summary = simulate_night(night, n_fields=1, n_epochs=2, size=640, n_bias=2, n_flats=2, transients_per_frame=2,
                             seed=5).summary
    return night, summary["fields"]["F001"]


@pytest.fixture
def night_platform(tmp_path, sqlite_url):
    with instance_for_test() as instance:
        platform = make_platform(tmp_path, sqlite_url, instance)
        yield platform
        platform.catalog.engine.dispose()


@pytest.mark.slow
def test_a_clean_process_leaves_no_operation_running(night, night_platform):
    folder, field = night
    submit_requests(night_platform.catalog, [RequestSpec(
        name="f001", target_name="F001 centre", ra=field["ra"], dec=field["dec"], filter_band="r", exposure_time=60,
        n_epochs=2, cadence_hours=1.0)], "test")
    report = process_folder(folder, night_platform.settings, instance=night_platform.instance,
                            progress=lambda _: None)
    assert not report.failed and report.runs
    with night_platform.catalog.session() as s:
        assert not queries.active_operations(s), queries.active_operations(s)
        by_type = {t: queries.list_operations(s, operation_type=t) for t in OperationType}
        assert by_type[OperationType.REPROCESS_CAMPAIGN] and by_type[OperationType.PRODUCT_REBUILD_WAVE]
        for operation in by_type[OperationType.REPROCESS_CAMPAIGN] + by_type[OperationType.PRODUCT_REBUILD_WAVE]:
            assert operation.outcome is schema.OperationOutcome.SUCCEEDED, operation


@pytest.mark.slow
def test_differences_failed_by_a_database_outage_are_retried_and_succeed(night, night_platform):
    folder, _ = night
    policy = retry_policy(max_attempts=3, backoff_seconds=1.0)
    daemon = HeadlessDaemon(night_platform.settings, instance=night_platform.instance, landing_dir=folder,
                            progress=lambda _: None, retry_policy=policy)
    daemon.ingest()  # both frames calibrated
    requests, _ = daemon._tick("reference_and_difference_sensor")
    assert [r.job_name for r in requests] == ["reference_job"]
    daemon._execute(requests, "reference_job")
    requests, _ = daemon._tick("reference_and_difference_sensor")
    assert len(requests) == 2 and {r.job_name for r in requests} == {"difference_job"}
    working = daemon.resources
    daemon.resources = {**working, "catalog": CatalogResource(database_url=DOWN)}  # the database goes down
    daemon._execute(requests, "difference_job")
    daemon.resources = working  # and comes back
    assert len(daemon.report.failed) == 2
    with night_platform.catalog.session() as s:
        assert set(s.scalars(sa.select(Observation.status))) == {ObservationStatus.PREPROCESSED}

    report = process_folder(folder, night_platform.settings, instance=night_platform.instance,
                            progress=lambda _: None, retry_policy=policy)
    assert not report.failed
    retried = [night_platform.instance.get_run_by_id(r.run_id) for r in report.runs if r.job_name == "difference_job"]
    assert len(retried) == 2 and all(r.tags[RUN_KEY].endswith(":a1") and r.tags[ATTEMPT_TAG] == "1" for r in retried)
    with night_platform.catalog.session() as s:
        assert set(s.scalars(sa.select(Observation.status))) == {ObservationStatus.DIFFERENCED}
        assert not queries.active_operations(s)
    assert not night_platform.instance.get_run_ids(RunsFilter(statuses=[DagsterRunStatus.STARTED]))


@pytest.mark.slow
def test_process_killed_mid_calibration_is_recovered_by_the_next_process(night, tmp_path, monkeypatch):
    """SIGKILL of `process` inside a calibration; the next `process` finishes every frame, no manual step."""
    folder, _ = night
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    for name, value in {"ASTRO_HOME": str(tmp_path), "DAGSTER_HOME": str(home), "DATABASE_URL": url,
                        "ASTRO_SURVEY": "test", "ASTRO_SETTLE_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)
    worker = subprocess.Popen([sys.executable, "-m", "dagster_project", "process", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = DagsterInstance.from_config(str(home))
    platform = make_platform(tmp_path, url, instance)
    deadline = time.monotonic() + 120

    def calibrating() -> bool:  # a short transaction each time: SQLite's writer must not wait for us
        with platform.catalog.session() as s:
            return bool(s.scalar(sa.select(sa.func.count()).where(PreprocessRun.status == RunStatus.RUNNING)))

    while not calibrating():  # killed inside calibrated_image, while its attempt is running
        assert worker.poll() is None, "`process` ended before any calibration started"
        assert time.monotonic() < deadline, "no calibration started in time"
        time.sleep(0.02)
    worker.kill()
    worker.wait()
    (killed,) = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))  # nobody told Dagster

    report = process_folder(folder, platform.settings, instance=instance, progress=lambda _: None,
                            retry_policy=retry_policy(max_attempts=3, backoff_seconds=0.5))
    assert not report.failed
    assert instance.get_run_by_id(killed.run_id).status is DagsterRunStatus.FAILURE
    with platform.catalog.session() as s:
        assert set(s.scalars(sa.select(Observation.status))) == {ObservationStatus.DIFFERENCED}
        assert not queries.active_operations(s)
    again = [instance.get_run_by_id(r.run_id) for r in report.runs
             # its retry: a calibration, or the whole chain once its field has a reference (the prompt path)
             if r.job_name in ("calibrate_job", "observation_job") and r.partition_key == killed.tags["dagster/partition"]]
    assert len(again) == 1 and again[0].tags[ATTEMPT_TAG] in ("0", "1")


# --- (e) the catalog's password never reaches Dagster's config ------------------------------------------------------

SECRET_URL = "postgresql://astro:hunter2-do-not-show@db.example.org:5432/catalog"


def test_the_catalog_url_from_the_environment_is_an_env_var_in_dagster_config(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", SECRET_URL)
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    resources = resources_from_settings(Settings.from_env())
    repository = Definitions(resources=resources).get_repository_def()
    config = {name: resource.config_schema.as_field().default_value
              for name, resource in repository.get_top_level_resources().items()}
    assert config["catalog"] == {"database_url": {"env": "DATABASE_URL"}}
    assert "hunter2" not in json.dumps(config, default=str)
    assert resources["catalog"].url() == SECRET_URL  # resolved when used, also outside Dagster


@pytest.mark.slow
def test_the_webserver_graphql_does_not_serve_the_catalog_password(monkeypatch, tmp_path):
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql, \
        infer_repository_selector

    monkeypatch.setenv("DATABASE_URL", SECRET_URL)
    monkeypatch.setenv("ASTRO_HOME", str(tmp_path))
    query = """query Resources($selector: RepositorySelector!) {
      allTopLevelResourceDetailsOrError(repositorySelector: $selector) {
        __typename
        ... on ResourceDetailsList { results { name configuredValues { key value type }
                                               configFields { name defaultValueAsJson } } }
      }
    }"""
    definitions = Path(dagster_project.__file__).parent / "definitions.py"
    with instance_for_test() as instance, define_out_of_process_context(str(definitions), "defs", instance) as context:
        result = execute_dagster_graphql(context, query, variables={"selector": infer_repository_selector(context)})
    assert result.errors is None
    resources = {r["name"]: r for r in result.data["allTopLevelResourceDetailsOrError"]["results"]}
    assert {"key": "database_url", "value": "DATABASE_URL", "type": "ENV_VAR"} in resources["catalog"]["configuredValues"]
    assert "hunter2" not in json.dumps(result.data)
