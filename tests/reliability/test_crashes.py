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

import shutil
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from dagster_project.catalog import Catalog
from tests.reliability import harness
from tests.reliability.harness import CatalogProbe, Site, start_daemon, start_process, started, wait_for
from tests.reliability.invariants import assert_every_file_once, settled, sha256

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

#: where each `process` is killed: the first while it registers files (some rows committed, some files
#: not yet looked at), the next inside a calibration, the next inside a difference; the last runs to the end
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
                killed_at.append((point, probe.accepted(), probe.observations("differenced")))
        with started(lambda: start_process(site, tmp_path / "night", "process-last.log")) as proc:
            assert proc.wait(180) == 0, proc.output()[-4000:]
            output = proc.output()
    finally:
        probe.dispose()
    assert "run(s) failed" not in output, output[-3000:]
    assert killed_at[0][1] < len(files), f"the first kill came after every file was registered: {killed_at}"

    catalog = Catalog(catalog_url)
    instance = instance_of(site)
    outcome = assert_every_file_once(catalog, instance, site.store, checksums(files))
    # each killed run is known as failed (the next `process` closed it), and its work was done again
    killed_runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    assert len(killed_runs) == 2, [(r.job_name, r.status) for r in killed_runs]  # inside calibrate, difference
    for run in killed_runs:
        redone = instance.get_runs(RunsFilter(job_name=run.job_name, statuses=[DagsterRunStatus.SUCCESS],
                                              tags={"dagster/partition": run.tags["dagster/partition"]}))
        assert len(redone) == 1 and redone[0].tags["astro/attempt"] == "1", redone
    assert outcome.files == len(files) and outcome.observations == 3 and outcome.candidates > 0
    catalog.engine.dispose()
