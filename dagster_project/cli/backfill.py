"""Command line for backfills: ``backfill`` (observations chosen in the catalog), and what ``results backfill``
shares with it: launching a Dagster asset backfill the daemon runs, as one operation of the ledger, and following it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_project.cli.args import PROG, catalog_of, fail, iso_date
from dagster_project.cli.operations import follow
from dagster_project.pipeline.jobs import CALIBRATE_JOB, DIFFERENCE_JOB, IN_PROCESS, JOB_ASSETS, OBSERVATION_JOB
from dagster_project.pipeline.jobs import PRODUCTS_JOB, execution
from dagster_project.settings import Settings

# The command line starts fast: Dagster and the catalog are imported by the commands that use them.
if TYPE_CHECKING:
    from dagster import DagsterInstance

    from dagster_project.catalog import Catalog
    from dagster_project.catalog.schema import OperationRun

#: the module ``workspace.yaml`` loads: the one code location
DEFINITIONS_MODULE = "dagster_project.definitions"

#: --stage → the job whose assets a backfill materializes (observation_job: the whole per-observation chain)
STAGE_JOBS = {"calibrate": CALIBRATE_JOB, "difference": DIFFERENCE_JOB, "all": OBSERVATION_JOB}


def add_subcommands(subparsers) -> None:
    """Add ``backfill`` to the platform's command line."""
    backfill = subparsers.add_parser(
        "backfill", help="(re)process observations chosen in the catalog, as a Dagster backfill run by the daemon")
    backfill.add_argument("--field", help="field name, e.g. F001")
    backfill.add_argument("--band", help="filter band, e.g. r")
    backfill.add_argument("--night-from", type=iso_date, help="first night, YYYY-MM-DD")
    backfill.add_argument("--night-to", type=iso_date, help="last night, YYYY-MM-DD (inclusive)")
    backfill.add_argument("--status", action="append",
                          help="an observation status (e.g. failed, blocked, differenced), never-processed, or "
                          "unfinished (every status but differenced: what a failed or killed run left behind); "
                          "repeatable; default: all but archived")
    backfill.add_argument("--stage", choices=sorted(STAGE_JOBS), default="all",
                          help="calibrate, difference (calibrated observations only) or all (the whole chain)")
    backfill.add_argument("--dry-run", action="store_true", help="list what would run, launch nothing")
    backfill.add_argument("--detach", action="store_true", help="launch and return; the daemon carries on")
    backfill.set_defaults(func=cmd_backfill)



#: the UI's "Materialize selected" over partitions, as a GraphQL mutation of Dagster's public API
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""


class BackfillNotLaunched(RuntimeError):
    """Dagster refused an asset backfill; the message is Dagster's."""


def submit_asset_backfill(instance: DagsterInstance, asset_names: tuple[str, ...], partition_keys: list[str],
                          tags: dict[str, str], title: str, run_config: dict[str, Any] = IN_PROCESS) -> str:
    """Add an asset backfill to the instance, as the UI's "Materialize selected" over partitions does.

    The daemon turns it into runs following the assets' backfill policy: up to
    ``ASTRO_BACKFILL_BATCH`` partitions per run (``pipeline/batching.py``), downstream assets
    in the same run as their upstream ones. ``run_config`` defaults to in-process steps, as
    the named jobs do (pipeline/jobs.py): the asset job an asset backfill runs has no config of its own.

    Dagster's only public way to create an asset backfill is the GraphQL mutation the UI sends
    (its Python class is private), so this runs it with the ``dagster-graphql`` command on the
    code location of ``workspace.yaml`` and the instance's own ``DAGSTER_HOME``.
    """
    params = {"assetSelection": [{"path": [name]} for name in asset_names], "partitionNames": list(partition_keys),
              "tags": [{"key": key, "value": value} for key, value in tags.items()],
              "title": title, "runConfigData": run_config}
    answer = _graphql(instance, LAUNCH_PARTITION_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if answer["__typename"] != "LaunchBackfillSuccess":
        reasons = [error["message"] for error in answer.get("errors", [])] or [answer.get("message", "")]
        raise BackfillNotLaunched(f"{answer['__typename']}: {'; '.join(reasons)}")
    return answer["backfillId"]


def _graphql(instance: DagsterInstance, document: str, variables: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` of a GraphQL document run by ``dagster-graphql`` against this package's code location."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "answer.json"
        command = [str(Path(sys.executable).with_name("dagster-graphql")), "-m", DEFINITIONS_MODULE,
                   "-t", document, "-v", json.dumps(variables), "-o", str(output)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=scratch,
                              env={**os.environ, "DAGSTER_HOME": instance.root_directory})
        if done.returncode != 0 or not output.exists():
            raise BackfillNotLaunched(f"dagster-graphql exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        answer = json.loads(output.read_text())
    if answer.get("errors"):
        raise BackfillNotLaunched("; ".join(error["message"] for error in answer["errors"]))
    return answer["data"]


@dataclass(frozen=True)
class BackfillTarget:
    """What a command-line backfill materializes: a job's assets over partitions of one kind, as one operation type."""

    job_name: str
    partitions_def_name: str
    operation_type: str  # an OperationType value
    noun: str  # what a partition is, for people


OBSERVATION_BACKFILLS = {stage: BackfillTarget(job, "observations", "backfill.observations", "observation")
                         for stage, job in STAGE_JOBS.items()}
RESULTS_BACKFILL = BackfillTarget(PRODUCTS_JOB, "results", "backfill.results", "result")


def launch_backfill(instance: DagsterInstance, catalog: Catalog, settings: Settings, target: BackfillTarget,
                    partition_keys: list[str], selection: dict[str, Any]) -> tuple[OperationRun, bool]:
    """Record a ``backfill.observations`` / ``backfill.results`` operation and launch its Dagster backfill.

    Returns ``(operation, launched)``: the same job over the same partitions while an
    earlier one is still active is that one, not a second backfill.
    """
    from dagster_project.catalog import queries
    from dagster_project.catalog.schema import OperationOutcome, OperationType
    from dagster_project.operations.recording import OPERATION_TAG, current_initiator

    initiator, job_name = current_initiator(), target.job_name
    with catalog.session() as session:
        operation, created = queries.start_operation(
            session, survey=queries.get_or_create_survey(session, settings.survey),
            operation_type=OperationType(target.operation_type),
            identity={"job": job_name, "partitions": sorted(partition_keys)}, initiator=initiator,
            context={"job_name": job_name, "selection": selection, "partition_count": len(partition_keys)})
    if not created:
        return operation, False
    try:
        # a partition the sensor never added (it stopped in between) would fail the backfill
        instance.add_dynamic_partitions(target.partitions_def_name, partition_keys)
        backfill_id = submit_asset_backfill(
            instance, JOB_ASSETS[job_name], partition_keys, tags={OPERATION_TAG: str(operation.id), "user": initiator},
            title=f"{job_name}: {len(partition_keys)} {target.noun}(s), operation #{operation.id}",
            run_config=dict(execution(settings).config))  # where the steps run: ASTRO_EXECUTOR
    except Exception as exc:
        with catalog.session() as session:
            queries.mark_running(session, operation)
            queries.record_failure(session, operation, "backfill.not_submitted", f"{type(exc).__name__}: {exc}")
            queries.complete_operation(session, operation, OperationOutcome.FAILED)
        raise
    with catalog.session() as session:
        queries.mark_running(session, operation)
        return queries.update_context(session, operation, backfill_id=backfill_id), True


def run_backfill_command(args, settings: Settings, catalog: Catalog, target: BackfillTarget,
                         rows: list[tuple[str, ...]], selection: dict[str, Any]) -> int:
    """The common end of ``backfill`` and ``results backfill``: list the chosen partitions (``rows``: key first),
    then, unless ``--dry-run``, launch and follow (or ``--detach``)."""
    from dagster import DagsterInstance

    if not rows:
        print(f"no {target.noun} matches: nothing to backfill")
        return 0
    print(f"{target.job_name} over {len(rows)} {target.noun}(s):")
    shown = rows if args.dry_run else rows[:10]
    print("\n".join("  " + "  ".join(f"{value:<{width}}" for value, width in zip(row, (44, 8, 8, 10, 12), strict=False))
                    for row in shown))
    if len(shown) < len(rows):
        print(f"  ... and {len(rows) - len(shown)} more")
    if args.dry_run:
        return 0
    instance = DagsterInstance.get()
    if not _backfill_daemon_alive(instance):
        print("warning: no dagster-daemon is running on this instance: the backfill waits until one starts "
              "(`make ui`, or `dagster-daemon run -w workspace.yaml`)")
    operation, launched = launch_backfill(instance, catalog, settings, target, [row[0] for row in rows], selection)
    backfill_id = (operation.context or {}).get("backfill_id")
    if launched:
        print(f"operation #{operation.id}: backfill {backfill_id} launched (Dagster UI: Runs > Backfills)")
    else:
        print(f"the same backfill is already {operation.status} as operation #{operation.id} (backfill {backfill_id})")
    if args.detach:
        print(f"follow it with: {PROG} operations show {operation.id} --follow")
        return 0
    return follow(instance, catalog, operation.id)


def cmd_backfill(args, settings: Settings) -> int:
    from dagster_project.catalog import queries

    if args.night_from and args.night_to and args.night_from > args.night_to:
        return fail(f"--night-from {args.night_from} is after --night-to {args.night_to}")
    catalog = catalog_of(settings)
    selection = {key: value for key, value in (("field", args.field), ("band", args.band),
                                               ("night_from", args.night_from), ("night_to", args.night_to),
                                               ("status", args.status), ("stage", args.stage)) if value}
    filters = dict(field_name=args.field, filter_band=args.band, night_from=args.night_from,
                   night_to=args.night_to, statuses=args.status or ())
    try:
        with catalog.session() as session:
            chosen = queries.observations_for_backfill(session, **filters,
                                                          calibrated_only=args.stage == "difference")
            # only differencing leaves any out: for the other stages the same query again would find the same
            # rows (the second query cost half of a 100,000-observation dry run: benchmarks/scale.py)
            left_out = (len(queries.observations_for_backfill(session, **filters)) - len(chosen)
                        if args.stage == "difference" else 0)
            rows = [(o.observation_id, o.field_name, o.filter_band, o.night, o.status.value) for o in chosen]
    except ValueError as exc:  # e.g. an unknown --status
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if left_out:
        print(f"{left_out} matching observation(s) left out: differencing needs a completed calibration")
    return run_backfill_command(args, settings, catalog, OBSERVATION_BACKFILLS[args.stage], rows, selection)


def _backfill_daemon_alive(instance: DagsterInstance) -> bool:
    """Whether a daemon's backfill loop has reported in lately (else a backfill waits for one)."""
    status = instance.get_daemon_statuses(["BACKFILL"]).get("BACKFILL")
    return bool(status and status.healthy)
