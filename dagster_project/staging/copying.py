"""Copy the files of a staging request from the raw archive to ``<staging root>/<destination>/<name>``.

Every path is made from the catalog's own records (the archive copy of each file, the name it landed under,
the destination checked when the request was accepted) and checked to lie below its root (``store.inside``)
before anything is opened: no name sent through the API reaches outside the staging root. Each file is written
under a temporary name, its sha256 computed as it is copied and compared with the archive's, then renamed into
place, so a staged file is whole or absent. Progress is recorded after every chunk (``CHUNK_BYTES``); a
cancellation asked for meanwhile is honoured there, and the request ends cancelled with what was copied so far.
"""

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagster_project.catalog import Catalog, queries
from dagster_project.catalog.queries import observatory
from dagster_project.catalog.schema import OperationOutcome, OperationType, StagingStatus
from dagster_project.store import inside

__all__ = ["CHUNK_BYTES", "StagingOutcome", "stage"]

CHUNK_BYTES = 16 * 2**20

#: told (files done, files in all, bytes done, bytes in all) as the copy goes
Progress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class StagingOutcome:
    status: StagingStatus
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    reason: str | None
    operation_id: int


class _Cancelled(Exception):
    pass


def stage(catalog: Catalog, staging_id: uuid.UUID, staging_root: Path, dagster_run_id: str, survey: str,
          on_progress: Progress | None = None) -> StagingOutcome:
    """Carry out the staging request ``staging_id`` (it must be requested): claim it, copy its files, record the
    end (completed, cancelled or failed with the reason) in the request and in a ``staging.copy`` operation."""
    with catalog.session() as session:
        operation, _ = queries.start_operation(
            session, survey=queries.get_or_create_survey(session, survey), operation_type=OperationType.STAGING_COPY,
            identity={"staging_id": str(staging_id)}, context={"dagster_run_id": dagster_run_id})
        operation_id = queries.mark_running(session, operation).id
        request, files = observatory.claim_staging(session, staging_id, dagster_run_id, operation_id)
        destination, status, reason = request.destination, request.status, request.status_reason
    done_files = done_bytes = 0
    total_bytes = sum(f.size_bytes for f in files)
    if status is StagingStatus.STAGING:
        try:
            target_dir = inside(staging_root, destination)
            for staged in files:
                done_bytes = _copy(catalog, staging_id, staged, target_dir, done_files, done_bytes, len(files),
                                   total_bytes, on_progress)
                done_files += 1
                _progress(catalog, staging_id, done_files, done_bytes, len(files), total_bytes, on_progress)
            status, reason = StagingStatus.COMPLETED, None
        except _Cancelled:
            status, reason = StagingStatus.CANCELLED, f"cancelled after {done_files} of {len(files)} files"
        except (OSError, ValueError) as exc:  # the disk, a vanished archive copy, a checksum: the request fails
            status, reason = StagingStatus.FAILED, f"{type(exc).__name__}: {exc}"
        with catalog.session() as session:
            observatory.finish_staging(session, staging_id, status, reason)
    _record_in_ledger(catalog, operation_id, status, reason, done_files, len(files))
    return StagingOutcome(status, done_files, len(files), done_bytes, total_bytes, reason, operation_id)


def _copy(catalog: Catalog, staging_id: uuid.UUID, staged: observatory.StagedFile, target_dir: Path,
          done_files: int, done_bytes: int, total_files: int, total_bytes: int, on_progress: Progress | None) -> int:
    """One file copied whole (temporary name, sha256 checked, rename); the bytes done after it."""
    target = inside(target_dir, staged.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.staging")
    digest = hashlib.sha256()
    try:
        with open(staged.source, "rb") as source, open(partial, "wb") as sink:
            while chunk := source.read(CHUNK_BYTES):
                sink.write(chunk)
                digest.update(chunk)
                done_bytes += len(chunk)
                _progress(catalog, staging_id, done_files, done_bytes, total_files, total_bytes, on_progress)
            sink.flush()
            os.fsync(sink.fileno())
        if digest.hexdigest() != staged.sha256:
            raise ValueError(f"{staged.name}: the archive copy's sha256 is {digest.hexdigest()}, not {staged.sha256}")
        os.replace(partial, target)
    except BaseException:  # cancelled, failed, killed: no partial file is left behind
        partial.unlink(missing_ok=True)
        raise
    return done_bytes


def _progress(catalog: Catalog, staging_id: uuid.UUID, files_done: int, bytes_done: int, files_total: int,
              bytes_total: int, on_progress: Progress | None) -> None:
    with catalog.session() as session:
        cancel = observatory.record_staging_progress(session, staging_id, files_done, min(bytes_done, bytes_total))
    if on_progress is not None:
        on_progress(files_done, files_total, bytes_done, bytes_total)
    if cancel:
        raise _Cancelled


def _record_in_ledger(catalog: Catalog, operation_id: int, status: StagingStatus, reason: str | None,
                      done: int, total: int) -> None:
    outcome = {StagingStatus.COMPLETED: OperationOutcome.SUCCEEDED, StagingStatus.CANCELLED: OperationOutcome.CANCELLED,
               StagingStatus.FAILED: OperationOutcome.FAILED}[status]
    with catalog.session() as session:
        queries.record_progress(session, operation_id, total=total, success=done,
                                failed=total - done if status is StagingStatus.FAILED else 0)
        if reason is not None and status is StagingStatus.FAILED:
            queries.record_failure(session, operation_id, "staging.failed", reason)
        queries.complete_operation(session, operation_id, outcome)
