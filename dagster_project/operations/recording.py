"""Recording operations in the ledger: the pieces sensors, the runner and the CLI share (no Dagster here).

* :data:`OPERATION_TAG` — the Dagster run tag naming the operation a run belongs to; the
  ledger sensor counts an operation's runs by it and links their provenance to it.
* :func:`record_ingest_scan` — one ``ingest.scan`` operation per landing-folder scan that found files.
* :func:`start_wave` — the runs one sensor tick requests (e.g. a wave of product rebuilds) as one
  operation, which the ledger sensor completes once each of their run keys' runs has ended.
* :func:`owner_context` / :func:`owner_is_gone` — an operation run inside a process (``process``)
  records that process, so that the ledger can close it when the process dies.
"""

import getpass
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from dagster_project.catalog import Catalog, queries
from dagster_project.catalog.schema import OperationRun, OperationType
from dagster_project.ingest.landing import IngestOutcome

OPERATION_TAG = "astro/operation_id"

#: how each landing outcome counts in an ingest.scan's summary_counts
_SCAN_COUNTS = {"accepted": "success", "recovered": "success", "quarantined": "failed", "duplicate": "skipped",
                "known": "skipped"}


def current_initiator() -> str:
    """The login name of the person running this command (the ledger's initiator)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (e.g. an anonymous container user)
        return f"uid-{os.getuid()}"


def record_ingest_scan(catalog: Catalog, survey: str, outcomes: Sequence[IngestOutcome],
                       requested: Iterable[Mapping[str, str]], started_at: datetime) -> int:
    """Record a finished landing-folder scan as a completed ``ingest.scan`` operation; returns its id.

    Counts: accepted (and recovered) files succeed, quarantined ones fail (with their
    reasons in failure_summary), duplicates are skipped. ``requested``: the runs the
    scan asked for (``run_key``, ``partition_key``); the ledger sensor adds their Dagster
    run ids to the context once Dagster has created them.
    """
    counts = dict.fromkeys(("success", "failed", "skipped"), 0)
    for outcome in outcomes:
        counts[_SCAN_COUNTS[outcome.status]] += 1
    with catalog.session() as session:
        operation, _ = queries.start_operation(
            session, survey=queries.get_or_create_survey(session, survey), operation_type=OperationType.INGEST_SCAN,
            # a scan that is retried after a crash finds the same files: the same operation
            identity={"raw_file_ids": sorted(o.raw_file_id for o in outcomes)},
            context={"requested_runs": [dict(r) for r in requested], "files": len(outcomes)})
        queries.mark_running(session, operation, started_at=started_at)
        queries.record_progress(session, operation, total=len(outcomes), **counts)
        for outcome in outcomes:
            if outcome.status == "quarantined":
                queries.record_failure(session, operation, "ingest.quarantined", outcome.reason or "quarantined")
        return queries.complete_operation(session, operation).id


def start_wave(catalog: Catalog, survey: str, operation_type: OperationType, run_keys: Sequence[str],
               context: Mapping[str, Any] | None = None) -> int:
    """Record the runs a sensor tick requests as one running operation; returns its id.

    Tag the tick's RunRequests with it (:data:`OPERATION_TAG`). A run key launches at most one
    run, so the same run keys are the same wave: asking again for them returns the operation
    that has them, whether it is still running (a re-evaluated tick) or already completed (a
    tick asking for keys Dagster will skip), never a new one.
    """
    keys = sorted(run_keys)
    identity = {"run_keys": keys}
    with catalog.session() as session:
        survey_row = queries.get_or_create_survey(session, survey)
        known = queries.find_operation(session, survey=survey_row, operation_type=operation_type, identity=identity)
        if known is not None:
            return known.id
        operation, created = queries.start_operation(
            session, survey=survey_row, operation_type=operation_type,
            identity=identity, context={**(context or {}), "run_keys": keys})
        return (queries.mark_running(session, operation) if created else operation).id


def owner_context() -> dict[str, Any]:
    """Who runs an operation in-process: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def owner_is_gone(operation: OperationRun) -> bool:
    """Whether the process recorded by :func:`owner_context` has exited (only knowable on its host)."""
    context = operation.context or {}
    if "pid" not in context or context.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(context["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False
