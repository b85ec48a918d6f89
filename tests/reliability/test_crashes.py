"""Crash tests with real processes (issue 9, "the suite that keeps it so"): SIGKILL of `process` mid-batch,
of `dagster-daemon run` at the phases of a tick, of a run worker mid-asset, and the database connection
cut mid-transaction by a loopback proxy. After each, with no manual step: every file exactly one
accepted registration and every science observation one completed chain, nothing duplicated
(tests/reliability/invariants.py says exactly what is checked).

Everything here is a real process: `python -m dagster_project process`, `dagster-daemon run` (its code
server and the run workers it spawns), PostgreSQL through a TCP proxy. Kill points are found by
watching the catalog and the Dagster instance from outside (the product has no test hooks), at
several moments of the work. Retries use the operator's settings (ASTRO_RETRY_BACKOFF=2,
ASTRO_RETRY_ATTEMPTS=6) so a recovery takes seconds. Frames are 640 px: the smallest at which the
simulator's star field gives every frame a PSF (so a failure here is a crash's doing, not science's).
"""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from dagster_project.operations.mirror import run_partition_keys
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from dagster_project.catalog import Catalog
from tests.reliability import harness
from tests.reliability.harness import CatalogProbe, Site, start_daemon, start_process, started, wait_for
from tests.reliability.invariants import assert_every_file_once, settled, sha256
from tests.reliability.proxy import LOOPBACK, CuttableProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def instance_of():
    """Opens the Dagster instance of a site (as the platform's processes do) and disposes of it."""
    opened = []

    def open_instance(site: Site) -> DagsterInstance:
        instance = DagsterInstance.from_config(str(site.dagster_home))
        opened.append(instance)
        return instance

    yield open_instance
    for instance in opened:
        instance.dispose()


def checksums(files: list[Path]) -> dict[str, str]:
    return {f.name: sha256(f) for f in files}


# --- 1. `process` killed mid-batch, again and again ----------------------------------------------------------------

#: where each `process` is killed: the first once its scan has registered files (one transaction for the files
#: of a pass; they are then archived one by one) and before any calibration, the next inside a calibration, the
#: next inside a difference; the last runs to the end
PROCESS_KILL_POINTS = [
    ("registering", lambda probe: probe.accepted() >= 1),
    ("calibrating", lambda probe: probe.running("preprocess_runs") >= 1),
    ("differencing", lambda probe: probe.running("difference_runs") >= 1),
]


def test_process_killed_mid_batch_again_and_again_then_run_once_more(tmp_path, catalog_url, instance_of):
    site = Site(tmp_path / "site", catalog_url)
    files = harness.night(tmp_path / "night")
    probe = CatalogProbe(catalog_url)
    killed_at = []
    try:
        for n, (point, reached) in enumerate(PROCESS_KILL_POINTS):
            with started(lambda: start_process(site, tmp_path / "night", f"process-{n}.log")) as proc:
                wait_for(lambda: reached(probe), 120, f"`process` #{n} {point}", interval=0.01, alive=proc)
                proc.sigkill()
                killed_at.append((point, probe.accepted(), probe.count("SELECT count(*) FROM preprocess_runs")))
        with started(lambda: start_process(site, tmp_path / "night", "process-last.log")) as proc:
            assert proc.wait(180) == 0, proc.output()[-4000:]
            output = proc.output()
    finally:
        probe.dispose()
    assert "run(s) failed" not in output, output[-3000:]
    assert killed_at[0][2] == 0, f"the first kill came after a calibration had started: {killed_at}"

    catalog = Catalog(catalog_url)
    instance = instance_of(site)
    outcome = assert_every_file_once(catalog, instance, site.store, checksums(files))
    # each killed run is known as failed (the next `process` closed it), and its work was done again
    killed_runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    assert len(killed_runs) == 2, [(r.job_name, r.status) for r in killed_runs]  # inside calibrate, difference
    for run in killed_runs:
        assert_interrupted_work_redone_once(instance, run.run_id, run.tags["dagster/partition"])
    assert outcome.files == len(files) and outcome.observations == 3 and outcome.candidates > 0
    catalog.engine.dispose()


# --- 2. the daemon killed at the phases of a tick; run workers killed mid-asset ------------------------------------

def drop(files: list[Path], site: Site) -> None:
    """Files appear in the landing folder whole (written beside it, then renamed in), as a careful writer does."""
    staging = site.root / "staging"
    staging.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, staging / f.name)
        (staging / f.name).replace(site.landing / f.name)


def kill_run_worker(daemons, run_id: str, what: str) -> None:
    """SIGKILL of the run worker executing ``run_id`` (never the code server or the daemon)."""
    workers = wait_for(lambda: harness.run_worker_pids(daemons, run_id), 30, f"the run worker of {what}")
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)


def running_attempts(probe: CatalogProbe, table: str) -> list[tuple[str, str]]:
    """(Dagster run id, observation key) of the attempts the catalog has running in ``table`` (some may have died)."""
    with probe.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(
            f"SELECT a.dagster_run_id, o.observation_id FROM {table} a JOIN observations o ON o.id = a.observation_id "
            "WHERE a.status = 'running'"))]


def kill_workers_mid_asset(daemons, probe: CatalogProbe, stages: dict[str, str],
                           seconds: float) -> dict[str, tuple[str, str]]:
    """For each catalog table of ``stages`` (table -> asset), SIGKILL the worker of the first run seen with a
    running attempt there (inside that asset), whichever stage comes first; returns asset -> (run id, the
    observation it was working on: a run may cover several)."""
    killed: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + seconds
    while len(killed) < len(stages):
        assert time.monotonic() < deadline, f"no run inside {sorted(set(stages.values()) - set(killed))} in time"
        for table, asset in stages.items():
            if asset in killed:
                continue
            for run_id, key in running_attempts(probe, table):
                done = {run for run, _ in killed.values()}
                workers = harness.run_worker_pids(daemons, run_id) if run_id not in done else []
                if len(workers) == 1:
                    os.kill(workers[0], signal.SIGKILL)
                    killed[asset] = (run_id, key)
                    break
        time.sleep(0.01)
    return killed


def test_daemon_killed_at_each_phase_of_a_tick_and_run_workers_killed_mid_asset(tmp_path, instance_of):
    """One night arrives in three parts while `dagster-daemon run` ingests it (move mode): the daemon is
    SIGKILLed after a tick committed its first registrations (before any run request), again right after
    the first run request of a tick (before its cursor), and once more at a moment chosen by a delay; run
    workers are SIGKILLed inside reference_image, difference_image and calibrated_image. Each time the
    daemon is simply started again. At the end every file has one accepted registration and every
    observation one completed chain, with the automatic retries as the only recovery."""
    site = Site(tmp_path / "site", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    files = harness.night(tmp_path / "night", epochs=4)
    calibration = [f for f in files if "_sci_" not in f.name]
    science = [f for f in files if "_sci_" in f.name]
    parts = [calibration + science[:2], science[2:3], science[3:]]
    probe = CatalogProbe(site.database_url)
    instance = instance_of(site)
    catalog = Catalog(site.database_url)
    daemons: list[harness.Started] = []
    phases = []  # what was killed when: (phase, accepted rows, Dagster runs, seconds) or (worker, seconds)
    t0 = time.monotonic()

    def daemon() -> harness.Started:
        daemons.append(start_daemon(site, f"daemon-{len(daemons)}.log"))
        return daemons[-1]

    try:
        # after registering, before the run request: the scan's rows are committed (one transaction), its files
        # being archived
        current = daemon()
        drop(parts[0], site)
        wait_for(lambda: probe.accepted() >= 1, 120, "the first registration", interval=0.005, alive=current)
        current.sigkill()
        phases.append(("registering", probe.accepted(), instance.get_runs_count(), round(time.monotonic() - t0, 1)))
        assert phases[-1][1] >= 1 and phases[-1][2] == 0, phases  # registered, nothing requested yet

        # after the run request, before the cursor: the first calibration run exists, the tick goes on
        current = daemon()
        wait_for(lambda: instance.get_runs_count() >= 1, 120, "the first run request", interval=0.005, alive=current)
        current.sigkill()
        phases.append(("requested", probe.accepted(), instance.get_runs_count(), round(time.monotonic() - t0, 1)))

        # run workers, mid-asset: the reference, a difference
        current = daemon()
        reference = wait_for(lambda: next(iter(instance.get_run_ids(RunsFilter(
            job_name="reference_job", statuses=[DagsterRunStatus.STARTED]))), None), 120, "a reference run",
            interval=0.02, alive=current)
        wait_for(lambda: instance.get_records_for_run(reference, of_type=DagsterEventType.STEP_START).records, 30,
                 "reference_image to start", interval=0.02)
        kill_run_worker(daemons, reference, "reference_image")
        phases.append(("reference worker", round(time.monotonic() - t0, 1)))
        drop(parts[1], site)  # more to calibrate while the first part is differenced
        killed = kill_workers_mid_asset(daemons, probe, {"difference_runs": "difference_image",
                                                         "preprocess_runs": "calibrated_image"}, 120)
        difference, calibrating = killed["difference_image"], killed["calibrated_image"]
        phases.append(("difference and calibration workers", round(time.monotonic() - t0, 1)))

        # the daemon again, at a moment of the tick chosen by a delay after its first registration
        before = probe.accepted()
        drop(parts[2], site)
        wait_for(lambda: probe.accepted() > before, 120, "the third part's registration", interval=0.005,
                 alive=current)
        time.sleep(0.3)
        current.sigkill()
        phases.append(("delay 0.3 s", probe.accepted(), instance.get_runs_count(), round(time.monotonic() - t0, 1)))

        current = daemon()
        wait_for(lambda: settled(catalog, instance, len(science)), 240, "the night to be done", interval=0.5,
                 alive=current)
    finally:
        for started_daemon in daemons:
            started_daemon.destroy()
        probe.dispose()
    phases.append(("settled", round(time.monotonic() - t0, 1)))
    print(f"kills: {phases}")

    outcome = assert_every_file_once(catalog, instance, site.store, checksums(files), landing=site.landing)
    assert outcome.observations == len(science) and outcome.candidates > 0
    reference_key = instance.get_run_by_id(reference).tags["dagster/partition"]
    for (run_id, key), job in (((reference, reference_key), "reference_job"), (difference, "difference_job"),
                               (calibrating, "calibrate_job")):
        # a frame of a field with a reference runs its whole chain in one run (the prompt path), alone or
        # with frames that landed with it (a partition range): the killed run may be one of those
        assert instance.get_run_by_id(run_id).job_name in (job, "observation_job")
        assert_interrupted_work_redone_once(instance, run_id, key)
    catalog.engine.dispose()


def steps(instance: DagsterInstance, run_id: str, event: DagsterEventType) -> set[str]:
    """The steps (assets) of a run that have had ``event`` (STEP_START, STEP_SUCCESS)."""
    return {record.event_log_entry.step_key for record in instance.get_records_for_run(
        run_id, of_type=event).records}


def assert_interrupted_work_redone_once(instance: DagsterInstance, run_id: str, key: str) -> None:
    """The killed run failed inside a step (started, never finished), and that step was later finished for
    ``key`` by exactly one run: whichever redid it (the redo may be a whole chain, itself killed further
    on by this suite and finished by a third run)."""
    assert instance.get_run_by_id(run_id).status is DagsterRunStatus.FAILURE
    interrupted = steps(instance, run_id, DagsterEventType.STEP_START) - steps(
        instance, run_id, DagsterEventType.STEP_SUCCESS)
    assert interrupted, f"run {run_id} was not killed inside a step"
    covering = [r for r in instance.get_runs() if key in run_partition_keys(instance, r.tags)]
    for step in interrupted:
        redone = [r for r in covering if step in steps(instance, r.run_id, DagsterEventType.STEP_SUCCESS)]
        assert len(redone) == 1, (step, key, [(r.job_name, r.status.value, r.tags.get("astro/attempt"),
                                               sorted(steps(instance, r.run_id, DagsterEventType.STEP_SUCCESS)))
                                              for r in covering])


# --- 3. the database connection cut mid-transaction -----------------------------------------------------------------

def through(proxy: CuttableProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    return sa.make_url(url).set(host=LOOPBACK, port=proxy.port).render_as_string(hide_password=False)


#: (what is under way when the connections are cut, for how long new ones are refused)
CUTS = [("registering", lambda probe: probe.accepted() >= 1, 10.0),
        ("differencing", lambda probe: probe.running("difference_runs") >= 1, 12.0)]


def test_database_connections_cut_while_process_ingests_and_differences(tmp_path, postgres_url, instance_of):
    """`process` on a PostgreSQL catalog reached through a loopback proxy: every connection is reset (in the
    middle of whatever transaction it carried) and new ones refused for 10 s while it registers the night,
    and again for 12 s while it differences. The command itself carries on and, once the database is back,
    its automatic retries finish every chain: every file registered once, nothing lost or duplicated."""
    files = harness.night(tmp_path / "night")
    probe = CatalogProbe(postgres_url)  # straight to the server: the test watches while the platform is cut off
    cuts = []
    with CuttableProxy(("127.0.0.1", sa.make_url(postgres_url).port or 5432)) as proxy:
        site = Site(tmp_path / "site", through(proxy, postgres_url))
        try:
            with started(lambda: start_process(site, tmp_path / "night")) as proc:
                for point, reached, seconds in CUTS:
                    wait_for(lambda: reached(probe), 120, f"`process` {point}", interval=0.01, alive=proc)
                    cuts.append((point, proxy.cut()))
                    time.sleep(seconds)
                    proxy.restore()
                assert proc.wait(240) == 0, proc.output()[-5000:]
                output = proc.output()
        finally:
            probe.dispose()
    print(f"cuts (point, connections reset): {cuts}")
    assert all(reset >= 1 for _, reset in cuts), cuts  # each cut broke live connections
    assert "run(s) failed" not in output, output[-3000:]

    catalog = Catalog(postgres_url)
    instance = instance_of(site)
    outcome = assert_every_file_once(catalog, instance, site.store, checksums(files))
    assert outcome.observations == 3 and outcome.candidates > 0
    assert outcome.failed_runs >= 1  # the outage did fail runs: their retries finished the work
    catalog.engine.dispose()
