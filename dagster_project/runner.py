"""Headless driver: evaluates the platform's own sensors and executes the runs they request.

``python -m dagster_project process <folder>`` uses it so that batch processing
takes exactly the code paths of the daemon: the raw-arrival sensor ingests the
folder (copying instead of moving, since the folder belongs to the astronomer),
and the reference-and-difference sensor decides what runs next. Runs execute in
this process but are recorded in the configured Dagster instance, so the UI
shows them like any other run.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from dagster_project.definitions import defs
from dagster_project.resources import resources_from_settings
from dagster_project.settings import Settings


@dataclass
class RunRecord:
    job_name: str
    partition_key: str
    run_id: str
    success: bool
    seconds: float


@dataclass
class ProcessReport:
    ingest: dict[str, int] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    waiting_files: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.success]


def _apply(result, instance: DagsterInstance) -> list:
    if isinstance(result, SkipReason) or result is None:
        return []
    for request in result.dynamic_partitions_requests or []:
        if request.partition_keys:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(result.run_requests or [])


def process_folder(folder: Path, settings: Settings, *, wait: bool = False, wait_timeout: float = 3600.0,
                   progress: Callable[[str], None] = print, instance: DagsterInstance | None = None) -> ProcessReport:
    """Ingest every FITS file below ``folder`` and run the pipeline on them to completion."""
    instance = instance or DagsterInstance.get()
    resources = resources_from_settings(settings, landing_dir=folder.resolve(), keep_originals=True)
    arrival = defs.resolve_sensor_def("raw_arrival_sensor")
    pipeline = defs.resolve_sensor_def("reference_and_difference_sensor")
    report = ProcessReport()
    attempted: set[str] = set()
    cursor = None
    deadline = time.monotonic() + wait_timeout
    while True:
        context = build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs)
        result = arrival(context)
        requests = _apply(result, instance)
        cursor = result.cursor if isinstance(result, SensorResult) and result.cursor else context.cursor
        _execute(requests, "calibrate_job", instance, resources, attempted, report, progress)
        while requests := [r for r in _apply(pipeline(build_sensor_context(
                instance=instance, resources=resources, definitions=defs)), instance) if r.run_key not in attempted]:
            for request in requests:
                _execute([request], request.job_name, instance, resources, attempted, report, progress)
        waiting = _waiting_files(cursor)
        if not waiting or not wait or time.monotonic() > deadline:
            report.waiting_files = waiting
            break
        progress(f"waiting for {len(waiting)} file(s) still being written ...")
        time.sleep(max(0.5, min(2.0, settings.settle_seconds)))
    return report


def _waiting_files(cursor: str | None) -> list[str]:
    return sorted(json.loads(cursor).get("waiting", {})) if cursor else []


def _execute(requests, job_name: str, instance: DagsterInstance, resources: dict, attempted: set[str],
             report: ProcessReport, progress: Callable[[str], None]) -> None:
    job = defs.resolve_job_def(job_name)
    for request in requests:
        if request.run_key in attempted:
            continue
        attempted.add(request.run_key)
        started = time.monotonic()
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                        resources=resources, raise_on_error=False,
                                        tags={**request.tags, "astro/run_key": request.run_key})
        record = RunRecord(job_name, request.partition_key, result.run_id, result.success,
                           time.monotonic() - started)
        report.runs.append(record)
        mark = "ok  " if record.success else "FAIL"
        progress(f"[{len(report.runs):3d}] {mark} {job_name:<15} {request.partition_key:<40} {record.seconds:6.1f} s")
