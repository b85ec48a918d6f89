"""Several partitions per run: the per-partition assets materialize a partition range in one run.

A Dagster run costs more than one observation's work (a daemon-launched run waits seconds in
the queue and to start; docs/operations.md measures it), so backfills hand each run up to
``ASTRO_BACKFILL_BATCH`` partitions (Dagster's ``BackfillPolicy.multi_run``, given to the assets
by ``definitions.py`` with :func:`batched_backfill`). Sensors still launch one partition per run,
as frames arrive.

Each partition of a batch is built on its own (:func:`materialize_partitions`): one bad frame
does not stop the others, whose catalog rows and files are written. Dagster, however, records
a step's materializations all or nothing, so if any partition fails the step fails naming them,
and the run's downstream steps do not start; ``backfill --status failed`` (or the backfill's
"re-execute failed") takes them up again.
"""

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    Failure,
    BetaWarning,
    MaterializeResult,
)

__all__ = ["FAILURES_LISTED", "PartitionOutput", "batch_failure", "batched_backfill", "combine_checks",
           "materialize_partitions"]

# BackfillPolicy has been "beta" since Dagster 1.5; the assets given one would warn at every import
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)

#: failure messages listed in a batch's Failure description, the rest counted
FAILURES_LISTED = 10


def batched_backfill(batch_size: int) -> BackfillPolicy:
    """The observation and result assets' policy: at most ``batch_size`` partitions per backfill run."""
    return BackfillPolicy.multi_run(max_partitions_per_run=batch_size)


@dataclass(frozen=True)
class PartitionOutput:
    """What one partition's build reports: its materialization metadata and its check results."""

    metadata: Mapping[str, Any]
    checks: Sequence[AssetCheckResult] = field(default_factory=tuple)


def materialize_partitions(context: AssetExecutionContext,
                           build: Callable[[str], PartitionOutput]) -> MaterializeResult:
    """Run ``build`` for each partition of the run; one materialization (with its own metadata) per partition.

    A single-partition run returns exactly what ``build`` reports (and raises what it raises).
    For a range, every partition is attempted; each one's metadata is attached to its own
    materialization, and each check reports once for the batch: passed only if it passed
    for every partition, with the partitions where it did not. If any partition raised, the
    step fails after the others are done, with a Failure naming each failed partition.
    """
    keys = context.partition_keys
    if len(keys) == 1:
        output = build(keys[0])
        return MaterializeResult(metadata=dict(output.metadata), check_results=list(output.checks))
    outputs: dict[str, PartitionOutput] = {}
    failures: dict[str, BaseException] = {}
    for key in keys:
        try:
            outputs[key] = build(key)
        except Exception as exc:  # noqa: BLE001 - reported below, after the other partitions
            context.log.error(f"partition {key} failed: {type(exc).__name__}: {exc}")
            failures[key] = exc
    if failures:
        raise batch_failure(failures, len(keys))
    for key, output in outputs.items():
        context.add_asset_metadata({**output.metadata, "batch_size": len(keys)}, partition_key=key)
    return MaterializeResult(check_results=combine_checks(outputs))


def batch_failure(failures: Mapping[str, BaseException], n_partitions: int) -> Failure:
    """One Failure for the failed partitions of a batch; retryable unless every failure said it is not."""
    lines = [f"{key}: {_describe(exc)}" for key, exc in list(failures.items())[:FAILURES_LISTED]]
    if len(failures) > FAILURES_LISTED:
        lines.append(f"... and {len(failures) - FAILURES_LISTED} more")
    retryable = any(not isinstance(exc, Failure) or exc.allow_retries for exc in failures.values())
    return Failure(f"{len(failures)} of {n_partitions} partitions failed (the others are done):\n" + "\n".join(lines),
                   metadata={"failed_partitions": ", ".join(failures), "n_failed": len(failures),
                             "n_partitions": n_partitions},
                   allow_retries=retryable)


def _describe(exc: BaseException) -> str:
    return exc.description if isinstance(exc, Failure) and exc.description else f"{type(exc).__name__}: {exc}"


def combine_checks(outputs: Mapping[str, PartitionOutput]) -> list[AssetCheckResult]:
    """Each check once for a batch: passed if it passed for every partition; the worst severity; where it failed."""
    by_name: dict[str, list[tuple[str, AssetCheckResult]]] = {}
    for key, output in outputs.items():
        for result in output.checks:
            by_name.setdefault(result.check_name, []).append((key, result))
    combined = []
    for name, results in by_name.items():
        failed = [(key, r) for key, r in results if not r.passed]
        severity = AssetCheckSeverity.ERROR if any(r.severity is AssetCheckSeverity.ERROR for _, r in failed) \
            else AssetCheckSeverity.WARN
        combined.append(AssetCheckResult(
            check_name=name, passed=not failed, severity=severity,
            metadata={"partitions_checked": len(results), "partitions_failed": len(failed),
                      "failed_partitions": ", ".join(key for key, _ in failed) or "none"}))
    return combined
