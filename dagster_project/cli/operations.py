"""Command line for the operations ledger and provenance (registered by ``cli/main.py``).

``operations list``     the ledger, newest first; ``operations show ID [--follow]`` one operation
``provenance TARGET``   which run, inputs, code version and parameters made a file (``--derived``: what was made from it)
``runs tail RUN_ID``    a run's steps as they happen, until it ends

:func:`follow` shows an operation's progress until it completes (``operations show --follow``, and the
backfills of ``cli/backfill.py``).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dagster_project.cli.args import PROG, catalog_of, fail, positive_float, positive_int
from dagster_project.settings import Settings

# The command line starts fast: Dagster and the catalog are imported by the commands that use them.
if TYPE_CHECKING:
    from dagster import DagsterInstance

    from dagster_project.catalog import Catalog
    from dagster_project.catalog.schema import RawDataFile
    from dagster_project.catalog.schema import OperationRun
    from dagster_project.catalog.schema import Artifact, ProcessingStep
    from dagster_project.operations.mirror import OperationProgress

BAR_WIDTH = 30


def add_subcommands(subparsers) -> None:
    """Add ``operations``, ``provenance`` and ``runs`` to the platform's command line."""
    ops = subparsers.add_parser("operations", help="the operations ledger")
    ops_sub = ops.add_subparsers(dest="action", required=True)
    listing = ops_sub.add_parser("list", help="operations, newest first")
    listing.add_argument("--type", help="e.g. backfill.observations, ingest.scan, process.folder")
    listing.add_argument("--status", choices=("queued", "running", "completed"))
    listing.add_argument("--limit", type=positive_int, default=30)
    listing.set_defaults(func=cmd_operations_list)
    show = ops_sub.add_parser("show", help="one operation: counts, failures, context, runs")
    show.add_argument("id", type=int)
    show.add_argument("--follow", action="store_true", help="follow its progress until it completes")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_operations_show)

    prov = subparsers.add_parser("provenance", help="which run and inputs produced a file, or what was made from it")
    prov.add_argument("target", help="a file (absolute, or relative to the store) or an artifact id")
    prov.add_argument("--derived", action="store_true", help="everything derived from it instead")
    prov.add_argument("--json", action="store_true")
    prov.set_defaults(func=cmd_provenance)

    runs = subparsers.add_parser("runs", help="Dagster runs, as the catalog records them")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    tail = runs_sub.add_parser("tail", help="follow a run's steps as they happen; exits when it ends")
    tail.add_argument("run_id", help="a run id, or the start of one that no other run has (e.g. the 8 characters "
                      "the UI shows)")
    tail.add_argument("--interval", type=positive_float, default=0.5, help="seconds between looks")
    tail.set_defaults(func=cmd_runs_tail)



# --- following an operation -----------------------------------------------------------------------------------------

def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#####-----]``: the share of ``total`` that is ``done``."""
    filled = width if total == 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(progress: OperationProgress) -> str:
    """The bar, done/total with successes and failures, and the runs still under way."""
    counts = progress.operation.summary_counts or {}
    done = counts.get("success", 0) + counts.get("failed", 0) + counts.get("skipped", 0)
    return (f"{progress_bar(done, counts.get('total', 0))} {done}/{counts.get('total', 0)} done "
            f"({counts.get('success', 0)} ok, {counts.get('failed', 0)} failed) "
            f"· {progress.running} running · {progress.queued} queued")


def follow(instance: DagsterInstance, catalog: Catalog, operation_id: int, out: TextIO = sys.stdout,
           poll_seconds: float = 1.0) -> int:
    """Show an operation's progress until it completes (exit 0 if it succeeded) or Ctrl-C (exit 0, detached)."""
    from dagster_project.catalog.schema import OperationOutcome
    from dagster_project.operations import mirror

    started, last = time.monotonic(), None
    try:
        while True:
            progress = mirror.sync_operation(instance, catalog, operation_id)
            line = progress_line(progress)
            if out.isatty():  # one line, redrawn
                out.write(f"\r{line} · {time.monotonic() - started:5.0f} s ")
            elif line != last:
                out.write(line + "\n")
            out.flush()
            last = line
            if not progress.operation.is_active:
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        out.write(f"\ndetached: it goes on. Follow again: {PROG} operations show {operation_id} --follow\n")
        return 0
    operation = progress.operation
    out.write(("\n" if out.isatty() else "") + f"operation #{operation.id} {operation.outcome.value}\n")
    _write_failures(operation, out)
    return 0 if operation.outcome == OperationOutcome.SUCCEEDED else 1


def _write_failures(operation: OperationRun, out: TextIO) -> None:
    for failure in operation.failure_summary or []:
        out.write(f"  {failure['count']:>4} x {failure['code']}: {failure['message']}\n")


# --- operations list / show -----------------------------------------------------------------------------------------

def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def cmd_operations_list(args, settings: Settings) -> int:
    from dagster_project.catalog import queries

    with catalog_of(settings).session() as session:
        rows = queries.list_operations(session, operation_type=args.type, status=args.status, limit=args.limit)
        print(f"{'id':>5}  {'type':<22} {'status':<9} {'outcome':<19} {'total':>5} {'ok':>5} {'fail':>5} "
              f"{'skip':>5}  {'created (UTC)':<19}  by")
        for op in rows:
            c = op.summary_counts or {}
            print(f"{op.id:>5}  {op.type:<22} {op.status.value:<9} {op.outcome.value:<19} {c.get('total', 0):>5} "
                  f"{c.get('success', 0):>5} {c.get('failed', 0):>5} {c.get('skipped', 0):>5}  "
                  f"{_when(op.created_at):<19}  {op.initiator_name}")
    return 0


def operation_as_dict(session, operation: OperationRun) -> dict[str, Any]:
    """Everything the ledger knows of one operation, with the runs mirrored for it."""
    from dagster_project.catalog import queries

    return {
        "id": operation.id, "type": operation.type, "survey": operation.survey.name,
        "initiator": operation.initiator_name, "status": operation.status.value, "outcome": operation.outcome.value,
        "summary_counts": operation.summary_counts, "failure_summary": operation.failure_summary,
        "context": operation.context, "created_at": _when(operation.created_at),
        "started_at": _when(operation.started_at), "completed_at": _when(operation.completed_at),
        "runs": [{"dagster_run_id": r.dagster_run_id, "job": r.job_name, "partitions": r.partition_keys,
                  "status": r.status.value} for r in queries.runs_of_operation(session, operation.id)],
    }


def cmd_operations_show(args, settings: Settings) -> int:
    from dagster import DagsterInstance

    from dagster_project.catalog import queries

    catalog = catalog_of(settings)
    if args.follow:
        return follow(DagsterInstance.get(), catalog, args.id)
    with catalog.session() as session:
        try:
            shown = operation_as_dict(session, queries.get_operation(session, args.id))
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
        return 0
    counts = shown["summary_counts"] or {}
    print(f"operation #{shown['id']}  {shown['type']}  ({shown['survey']}, started by {shown['initiator']})")
    print(f"  status      {shown['status']} / {shown['outcome']}")
    print(f"  times       created {shown['created_at']}, started {shown['started_at']}, "
          f"completed {shown['completed_at']} (UTC)")
    print("  counts      " + ", ".join(f"{k} {counts.get(k, 0)}" for k in queries.COUNT_KEYS))
    for failure in shown["failure_summary"] or []:
        print(f"  failure     {failure['count']} x {failure['code']}: {failure['message']}")
    for key, value in (shown["context"] or {}).items():
        print(f"  {key:<11} {json.dumps(value, default=str)[:160]}")
    for run in shown["runs"]:
        print(f"  run         {run['dagster_run_id']}  {run['job']:<16} {','.join(run['partitions']):<40} "
              f"{run['status']}")
    return 0


# --- provenance -----------------------------------------------------------------------------------------------------

def _resolve(session, target: str, store_root: Path) -> tuple[Artifact | RawDataFile, str]:
    """The artifact or raw file ``target`` names (an id or a path), and a note on how it was matched."""
    from dagster_project.catalog import queries
    from dagster_project.ingest.landing import sha256_of
    from dagster_project.operations.mirror import store_relative

    try:
        artifact_id = uuid.UUID(target)
    except ValueError:
        artifact_id = None
    if artifact_id is not None:
        return queries.get_artifact(session, artifact_id), "by id"
    path = Path(target).expanduser()
    path = (path if path.is_absolute() else (Path.cwd() / path if path.exists() else store_root / path)).resolve()
    raw = queries.raw_file_stored_at(session, str(path))
    if raw is not None:
        return raw, "raw file"
    relative = store_relative(path, store_root)
    current = sha256_of(path) if path.is_file() else None
    artifact = queries.producing_artifact(session, relative, current) if current else None
    if artifact is not None:
        return artifact, "the file on disk has these bytes (sha256 verified)"
    artifact = queries.producing_artifact(session, relative)
    if artifact is None:
        raise queries.NotFound(f"no recorded run wrote {relative}")
    note = "the file is gone" if current is None else "the file on disk has changed since (different sha256)"
    return artifact, f"the last recorded write; {note}"


def _lineage_dict(session, artifact: Artifact) -> dict[str, Any]:
    from dagster_project.catalog import queries

    found = queries.lineage(session, artifact)
    run = found.run
    return {
        "artifact": _artifact_dict(artifact),
        "run": {"dagster_run_id": run.dagster_run_id, "job": run.job_name, "partitions": run.partition_keys,
                "status": run.status.value, "started_at": _when(run.started_at), "finished_at": _when(run.finished_at),
                "operation": None if run.operation is None else f"#{run.operation.id} {run.operation.type} "
                                                                 f"by {run.operation.initiator_name}"},
        "step": {"sequence": found.step.sequence, "timestamp": _when(found.step.timestamp),
                 "latency_ms": found.step.latency_ms},
        "parameters": found.parameters,
        "inputs": [{"role": i.role, "path": i.path, "sha256": i.sha256,
                    "raw_file": None if i.raw_data_file is None else
                    f"{i.raw_data_file.original_name} v{i.raw_data_file.version}",
                    "made_by_run": None if i.input_artifact is None else i.input_artifact.step.run.dagster_run_id,
                    "artifact_id": None if i.input_artifact is None else str(i.input_artifact.id)}
                   for i in found.inputs],
    }


def _artifact_dict(artifact: Artifact) -> dict[str, Any]:
    return {"id": str(artifact.id), "role": artifact.role, "path": artifact.path, "mime_type": artifact.mime_type,
            "size_bytes": artifact.size_bytes, "sha256": artifact.sha256, "asset": artifact.asset_key,
            "partition": artifact.partition_key, "code_version": artifact.code_version,
            "written_at": _when(artifact.step.timestamp), "run": artifact.step.run.dagster_run_id}


def cmd_provenance(args, settings: Settings) -> int:
    from dagster_project.catalog import queries
    from dagster_project.catalog.schema import RawDataFile

    with catalog_of(settings).session() as session:
        try:
            target, note = _resolve(session, args.target, settings.store_dir)
        except LookupError as exc:  # NotFound is a LookupError
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.derived:
            shown = {"source": args.target, "derived": [_artifact_dict(a)
                                                        for a in queries.derived_artifacts(session, target)]}
        elif isinstance(target, RawDataFile):
            shown = {"raw_file": {"id": str(target.id), "original_name": target.original_name,
                                  "version": target.version, "status": target.status.value, "sha256": target.sha256,
                                  "size_bytes": target.size_bytes, "arrived": _when(target.arrival_time),
                                  "landing_path": target.landing_path},
                     "derived_files": len(queries.derived_artifacts(session, target))}
        else:
            shown = {"matched": note, **_lineage_dict(session, target)}
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
    elif args.derived:
        print(f"{len(shown['derived'])} file(s) derived from {args.target}:")
        for a in shown["derived"]:
            print(f"  {a['written_at']}  {a['role']:<20} {a['path']:<72} run {a['run'][:8]}")
    else:
        _print_tree(shown)
    return 0


def _print_tree(value: Any, indent: int = 0) -> None:
    """Nested dicts and lists as an indented outline (the --json structure, for people)."""
    pad = "  " * indent
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        label = f"{key}:" if isinstance(value, dict) else "-"
        if isinstance(item, dict | list) and item:
            print(f"{pad}{label}")
            _print_tree(item, indent + 1)
        else:
            print(f"{pad}{label} {item if item not in (None, {}, []) else '-'}")


# --- runs tail ------------------------------------------------------------------------------------------------------

def format_step(step: ProcessingStep) -> str:
    """One line per step (and one per file a materialization wrote)."""
    from dagster_project.catalog.schema import StepType

    c = step.content
    what = {
        StepType.MATERIALIZATION: f"{c.get('asset_key')} [{c.get('partition')}]",
        StepType.CHECK_RESULT: f"{c.get('check_name')}: {'passed' if c.get('passed') else 'FAILED'}",
        StepType.FAILURE: f"{c.get('step_key')}: {c.get('code')}: {c.get('message')}",
        StepType.RUN_END: f"{c.get('status')}",
    }.get(step.type, c.get("step_key", ""))
    took = f"  ({step.latency_ms:.0f} ms)" if step.latency_ms is not None else ""
    lines = [f"{step.timestamp:%H:%M:%S.%f}"[:12] + f"  #{step.sequence:<3} {step.type.value:<15} {what}{took}"]
    lines += [f"{'':19}→ {a.path}  {a.mime_type}  {(a.size_bytes or 0) / 2**20:.1f} MB" for a in step.artifacts]
    return "\n".join(lines)


def resolve_run_id(instance: DagsterInstance, text: str) -> str:
    """The id of the one run whose id is ``text`` or starts with it; LookupError when none or several do."""
    text = text.strip().lower()
    if text and instance.get_run_by_id(text) is not None:
        return text
    matches = sorted(r.dagster_run.run_id for r in instance.get_run_records() if r.dagster_run.run_id.startswith(text)) \
        if text else []
    if not matches:
        raise LookupError(f"no Dagster run {text or '(empty id)'} in the instance at {instance.root_directory}")
    if len(matches) > 1:
        shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise LookupError(f"{text} is the start of {len(matches)} run ids ({shown}): give more of it")
    return matches[0]


def cmd_runs_tail(args, settings: Settings) -> int:
    from dagster import DagsterInstance

    from dagster_project.catalog import queries, schema
    from dagster_project.operations import mirror

    instance = DagsterInstance.get()
    try:
        run_id = resolve_run_id(instance, args.run_id)
    except LookupError as exc:
        return fail(exc)
    catalog = catalog_of(settings)
    shown = -1
    try:
        while True:
            status = mirror.mirror_run(instance, catalog, settings.store_dir, run_id)
            with catalog.session() as session:
                for step in queries.steps_after(session, run_id, shown):
                    print(format_step(step), flush=True)
                    shown = step.sequence
            if status in schema.FINISHED:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 130
    print(f"run {run_id} {status.value}")
    return 0 if status == schema.ProcessingRunStatus.COMPLETED else 1
