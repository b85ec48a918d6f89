"""Headless driver: evaluates the platform's own sensors and executes the runs they request.

``python -m dagster_project process <folder>`` uses it so that batch processing
takes exactly the code paths of the daemon: the raw-arrival sensor ingests the
folder (copying instead of moving, since the folder belongs to the astronomer),
the reference-and-difference sensor decides what runs next, and the product
rebuild sensor builds ObservationResult products once their debounce has passed.
Runs execute in this process but are recorded in the configured Dagster
instance, so the UI shows them like any other run.

Failed or interrupted work is retried as the daemon would: the sensors ask for it
again under a new run key once its backoff has passed (``sensors/reference_and_difference.py``), and
``process`` waits for those retries like it waits for product debounces, until each
piece of work succeeded or had its ``max_attempts`` (so a permanently failing
partition ends the command, it does not keep it busy). The ledger operations the
sensors start for the runs executed here (reprocessing and rebuild waves) are
completed here as their runs end, and operations of a ``process`` that was killed are
closed (their runs failed, their attempts abandoned) before this one starts.
"""

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, SensorResult, SkipReason, build_sensor_context

from dagster_project.catalog import Catalog, queries
from dagster_project.catalog.schema import utcnow
from dagster_project.catalog.schema import OperationType
from dagster_project.catalog.queries import RetryPolicy
from dagster_project.definitions import defs
from dagster_project.ingest.landing import CATALOG_UNREACHABLE
from dagster_project.pipeline.jobs import IN_PROCESS
from dagster_project.operations import mirror
from dagster_project.operations.mirror import RANGE_TAGS, RUN_KEY_TAG
from dagster_project.operations.recording import OPERATION_TAG, current_initiator, owner_is_gone
from dagster_project.resources import resources_from_settings
from dagster_project.sensors.reference_and_difference import schedule_attempts
from dagster_project.settings import Settings

#: the catalog unreachable (a database outage): ``process`` tries again every few seconds, this long at most
CATALOG_PATIENCE_SECONDS = 600.0
CATALOG_PAUSE_SECONDS = 3.0
#: what started a headless run (``process``, ``demo``, ``references rebuild``), on every run it executes
LAUNCHED_BY_TAG = "astro/launched_by"
#: the tag by which Dagster (and its UI: "launched by sensor ...") knows a sensor's runs
SENSOR_NAME_TAG = "dagster/sensor_name"
#: Dagster's console log at INFO: its DEBUG lines (every step event) would drown the progress lines;
#: the full event log of every run stays in the instance (the UI's run page, ``runs tail``)
RUN_CONFIG = {**IN_PROCESS, "loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class RunRecord:
    job_name: str
    partition_key: str
    run_id: str
    success: bool
    seconds: float


@dataclass
class ProcessReport:
    runs: list[RunRecord] = field(default_factory=list)
    waiting_files: list[str] = field(default_factory=list)
    operation_id: int | None = None  # in the operations ledger

    @property
    def failed(self) -> list[RunRecord]:
        """The runs that failed and were not retried successfully (the last run of each job and partition)."""
        last = {(r.job_name, r.partition_key): r for r in self.runs}
        return [r for r in last.values() if not r.success]

    @property
    def failed_attempts(self) -> list[RunRecord]:
        """Every run that failed, retried ones too."""
        return [r for r in self.runs if not r.success]


class HeadlessDaemon:
    """Does what the Dagster daemon would do with this code location's sensors, in this process."""

    def __init__(self, settings: Settings, *, instance: DagsterInstance | None = None,
                 landing_dir: Path | None = None, progress: Callable[[str], None] = print,
                 retry_policy: RetryPolicy | None = None, launched_by: str = "process"):
        self.settings = settings
        self.launched_by = launched_by
        self.instance = instance or DagsterInstance.get()
        self.resources = resources_from_settings(settings, landing_dir=landing_dir, keep_originals=landing_dir is not None,
                                                 retry_policy=retry_policy, own_process_per_run=False)
        self.retry_policy = self.resources["pipeline"].retry_policy()
        self.progress = progress
        self.report = ProcessReport()
        self.attempted: set[str] = set()  # run keys executed here: never twice
        self.named_operations: set[int] = set()  # operations the sensors tagged the executed requests with
        self.arrival_cursor: str | None = None
        self.unmirrored: list[str] = []  # runs executed here whose provenance is not written yet
        self.catalog = self.resources["catalog"].catalog()

    def _tick(self, sensor_name: str, cursor: str | None = None) -> tuple[list, str | None]:
        context = build_sensor_context(instance=self.instance, cursor=cursor, resources=self.resources, definitions=defs)
        result = defs.resolve_sensor_def(sensor_name)(context)
        if isinstance(result, SkipReason) or result is None:
            return [], context.cursor
        for request in result.dynamic_partitions_requests or []:
            if request.partition_keys:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        new_cursor = result.cursor if isinstance(result, SensorResult) and result.cursor else context.cursor
        return [r for r in result.run_requests or [] if r.run_key not in self.attempted], new_cursor

    def run(self, job_name: str, partition_key: str, run_key: str, tags: dict | None = None,
            sensor_name: str | None = None) -> RunRecord:
        """Execute one run; ``sensor_name``: the sensor that requested it (else it is this command's own)."""
        self.attempted.add(run_key)
        named = (tags or {}).get(OPERATION_TAG, "")
        if named.isdigit():  # the sensor's wave (or scan) for this run: completed once its runs ended
            self.named_operations.add(int(named))
        started = time.monotonic()
        tags = {**(tags or {}), RUN_KEY_TAG: run_key, LAUNCHED_BY_TAG: self.launched_by,
                **({SENSOR_NAME_TAG: sensor_name} if sensor_name else {"user": current_initiator()})}
        if self.report.operation_id is not None:
            tags[OPERATION_TAG] = str(self.report.operation_id)
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, partition_key=partition_key, resources=self.resources, raise_on_error=False,
            tags=tags, run_config=RUN_CONFIG)
        record = RunRecord(job_name, partition_key, result.run_id, result.success, time.monotonic() - started)
        self.report.runs.append(record)
        mark = "ok  " if record.success else "FAIL"
        self.progress(f"[{len(self.report.runs):3d}] {mark} {job_name:<15} {partition_key:<40} {record.seconds:6.1f} s")
        self.unmirrored.append(result.run_id)
        self.mirror_pending()
        return record

    def mirror_pending(self) -> None:
        """Provenance and the operation's counts of the runs executed here, now, without waiting for the
        ledger sensor; runs that could not be mirrored (the catalog unreachable) are mirrored later."""
        while self.unmirrored:
            mirror.mirror_run(self.instance, self.catalog, self.resources["store"].store().root, self.unmirrored[0])
            self.unmirrored.pop(0)
        if self.report.operation_id is not None:
            mirror.sync_operation(self.instance, self.catalog, self.report.operation_id)

    @contextmanager
    def operation(self, operation_type: OperationType, identity: Mapping[str, str]) -> Iterator[int]:
        """Record what this daemon does inside the block as one operation of the ledger."""
        with mirror.owned_operation(self.instance, self.catalog, survey=self.settings.survey,
                                    operation_type=operation_type, identity=identity) as operation_id:
            self.report.operation_id = operation_id
            yield operation_id

    def _execute(self, requests, default_job: str, sensor_name: str | None = None) -> int:
        for request in requests:
            tags = dict(request.tags)
            # a request over a partition range (the raw-arrival sensor's runs of several frames): one run each here
            keys = [request.partition_key] if request.partition_key else mirror.run_partition_keys(self.instance, tags)
            self.attempted.add(request.run_key)
            for key in keys:
                single = {k: v for k, v in tags.items() if k not in RANGE_TAGS}
                run_key = request.run_key if len(keys) == 1 else f"{request.run_key}:{key}"
                self.run(request.job_name or default_job, key, run_key, single, sensor_name=sensor_name)
        self._sync_named_operations()
        return len(requests)

    def _sync_named_operations(self) -> None:
        """Bring the sensors' operations for the runs executed here up to date (the ledger sensor may not run)."""
        for operation_id in sorted(self.named_operations):
            if not mirror.sync_operation(self.instance, self.catalog, operation_id).operation.is_active:
                self.named_operations.discard(operation_id)

    def recover_interrupted(self) -> int:
        """Close the operations of headless runs whose process died (as the ledger sensor would): their runs
        still marked started are failed in Dagster and their catalog attempts abandoned, so the sensors
        retry that work. Returns how many operations were closed."""
        with self.catalog.session() as session:
            dead = [op.id for op in queries.active_operations(session) if owner_is_gone(op)]
        for operation_id in dead:
            unfinished = self.instance.get_run_ids(RunsFilter(
                tags={OPERATION_TAG: str(operation_id)},
                statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED]))
            mirror.sync_operation(self.instance, self.catalog, operation_id)
            for run_id in unfinished:
                mirror.mirror_run(self.instance, self.catalog, self.resources["store"].store().root, run_id)
        return len(dead)

    def sync_open_waves(self) -> None:
        """Close the sensors' waves whose runs are over, also those a killed ``process`` started: without
        a daemon no ledger sensor runs to close them, and this process does not know them by name."""
        with self.catalog.session() as session:
            waves = [op.id for op in queries.active_operations(session) if "run_keys" in (op.context or {})]
        for operation_id in waves:
            mirror.sync_operation(self.instance, self.catalog, operation_id)

    def seconds_until_next_retry(self) -> float | None:
        """Seconds until some failed or interrupted work is due to be tried again (0: now); None: none will be."""
        with self.catalog.session() as session:
            planned = queries.plan_next_runs(session)
        attempts = schedule_attempts(self.instance, planned, self.retry_policy)
        if attempts.requests:
            return 0.0
        return min(attempts.waiting.values()) if attempts.waiting else None

    def ingest(self) -> list[str]:
        """One landing scan and the calibrations it asks for; returns the files still being written."""
        requests, self.arrival_cursor = self._tick("raw_arrival_sensor", self.arrival_cursor)
        self._execute(requests, "calibrate_job", "raw_arrival_sensor")
        return sorted(json.loads(self.arrival_cursor).get("waiting", {})) if self.arrival_cursor else []

    def drain(self, wait_for_products: bool = True, timeout: float = 3600.0) -> None:
        """Run references, differences and product rebuilds until nothing is left to do."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            requests, _ = self._tick("reference_and_difference_sensor")
            if self._execute(requests, "difference_job", "reference_and_difference_sensor"):
                continue
            requests, _ = self._tick("product_rebuild_sensor")
            if self._execute(requests, "products_job", "product_rebuild_sensor"):
                continue
            pause = self._seconds_until_next_rebuild() if wait_for_products else None
            if pause is None:
                return
            self.progress(f"products wait for their debounce: next rebuild in {pause:.0f} s")
            time.sleep(min(max(pause, 0.2), max(0.0, deadline - time.monotonic())))

    def _seconds_until_next_rebuild(self) -> float | None:
        catalog = Catalog(self.settings.database_url)
        try:
            with catalog.session() as session:
                waiting = queries.awaiting_debounce(session, utcnow(), self.resources["pipeline"].rebuild_policy())
        finally:
            catalog.engine.dispose()
        if not waiting:
            return None
        return max(0.0, (min(r.next_eligible_run_at for r in waiting) - utcnow()).total_seconds())


def process_folder(folder: Path, settings: Settings, *, wait: bool = False, wait_timeout: float = 3600.0,
                   progress: Callable[[str], None] = print, instance: DagsterInstance | None = None,
                   retry_policy: RetryPolicy | None = None, launched_by: str = "process") -> ProcessReport:
    """Ingest every FITS file below ``folder`` and run the pipeline on them to completion.

    Failed or interrupted work is retried by ``retry_policy`` (default: the settings' ``ASTRO_RETRY_*``),
    within ``wait_timeout``; what still fails after its last attempt is in the report's ``failed``."""
    daemon = HeadlessDaemon(settings, instance=instance, landing_dir=folder.resolve(), progress=progress,
                            retry_policy=retry_policy, launched_by=launched_by)
    deadline = time.monotonic() + wait_timeout
    daemon.recover_interrupted()
    idle_rounds = 0  # rounds that ran nothing although a retry was due: a safety net against spinning
    unreachable_since: float | None = None
    with daemon.operation(OperationType.PROCESS_FOLDER, {"folder": str(folder.resolve())}):
        while True:
            before = len(daemon.report.runs)
            try:  # one round: what the daemon's sensors would do in one tick each, and the runs they ask for
                daemon.mirror_pending()
                waiting = daemon.ingest()
                daemon.drain(wait_for_products=not waiting)
                retry_in = daemon.seconds_until_next_retry()
            except CATALOG_UNREACHABLE as exc:
                # as a daemon's tick would fail and the next one start again: nothing was taken without its
                # row, and runs that failed for it are retried by the sensors once the catalog is back
                now = time.monotonic()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if now - unreachable_since > CATALOG_PATIENCE_SECONDS or now > deadline:
                    raise
                pause = min(CATALOG_PAUSE_SECONDS, max(0.0, deadline - now))
                progress(f"the catalog is unreachable ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]});"
                         f" trying again in {pause:.0f} s")
                time.sleep(pause)
                continue
            unreachable_since = None
            idle_rounds = idle_rounds + 1 if len(daemon.report.runs) == before and retry_in == 0 else 0
            if retry_in is not None and idle_rounds < 3 and time.monotonic() + retry_in <= deadline:
                if retry_in > 0:
                    progress(f"failed or interrupted work is retried in {retry_in:.0f} s ...")
                time.sleep(min(max(retry_in, 0.2), max(0.0, deadline - time.monotonic())))
                continue
            if not waiting or not wait or time.monotonic() > deadline:
                daemon.report.waiting_files = waiting
                daemon.sync_open_waves()
                return daemon.report
            progress(f"waiting for {len(waiting)} file(s) still being written ...")
            time.sleep(max(0.5, min(2.0, settings.settle_seconds)))


def rebuild_reference(field_band: str, settings: Settings, *, progress: Callable[[str], None] = print,
                      instance: DagsterInstance | None = None, launched_by: str = "references rebuild") -> ProcessReport:
    """Re-select the reference of one field and band, then re-run exactly what it made stale."""
    daemon = HeadlessDaemon(settings, instance=instance, progress=progress, launched_by=launched_by)
    if field_band not in daemon.instance.get_dynamic_partitions("field_bands"):
        raise ValueError(f"unknown field and band {field_band!r}")
    with daemon.operation(OperationType.REFERENCE_REBUILD, {"field_band": field_band}):
        daemon.run("reference_job", field_band, f"reference:{field_band}:manual:{time.time_ns()}")
        daemon.drain()
    return daemon.report
