"""The replayer: applies the journal's pending writes to the catalog, in order, exactly once.

Each pass takes the oldest pending entries (up to ``batch``) and applies them in **one** catalog
transaction, each together with its ``applied_writes`` row (``catalog.queries.observatory.add_applied_write``,
idempotency key UNIQUE in the database): first all in one flush, as nearly every batch goes; if anything in it
fails, nothing of it is written and the batch is applied again one entry at a time, each in its own savepoint,
to find which. Only once that transaction has committed does the journal mark them applied. A crash between the
two re-applies nothing: the second attempt finds the key applied with the same content and does nothing.

What happens to an entry that does not apply:

* the catalog is unreachable (connection refused, lost, timed out): the whole pass is rolled back and
  tried again after a backoff that doubles up to ``max_backoff`` seconds; no attempt is counted;
* the catalog refuses it as it stands (``WriteRefused``, a constraint, a value the database rejects, a
  payload that no longer validates): it is dead-lettered in the journal with the reason, and the pass
  goes on with the next entry;
* anything else (a bug): the pass stops before it (what came before is committed), its attempt is
  counted, and after ``max_attempts`` it is dead-lettered with the error, so one entry never holds the
  queue for ever.

Only one replayer works on a journal at a time (an exclusive ``flock`` on ``<journal>.replay-lock``,
released by the kernel when its process dies, SIGKILL included).
"""

import fcntl
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dagster_project.catalog.db import failing_fast_catalog
from dagster_project.catalog.queries import observatory
from dagster_project.catalog.queries.observatory import WriteRefused
from dagster_project.journal.store import Entry, Journal

__all__ = ["OUTAGES", "Applier", "ReplayReport", "Replayer"]

log = logging.getLogger(__name__)

#: what a pass did: the entries applied, those dead-lettered (with why), and the one it stopped at (with what)
_Applied = tuple[list[int], list[tuple[int, str]], "tuple[Entry, Exception] | None"]

#: applies one entry's write to the catalog, in the session given (inside the entry's savepoint)
Applier = Callable[[Session, Entry], None]

#: errors that say the catalog refuses the write as it stands: the entry can never apply
_REFUSALS = (WriteRefused, sa.exc.IntegrityError, sa.exc.DataError, ValueError)
#: errors that say the catalog is away: try the whole pass again later
OUTAGES = (sa.exc.OperationalError, sa.exc.InterfaceError, ConnectionError, TimeoutError)


@dataclass
class ReplayReport:
    applied: int = 0
    dead: int = 0
    #: the reason the catalog could not be reached, when it could not
    outage: str | None = None
    #: another replayer holds the journal
    busy: bool = False
    dead_reasons: list[str] = field(default_factory=list)


class Replayer:
    """Applies ``journal`` to the catalog at ``database_url`` with ``appliers`` (by entry kind)."""

    def __init__(self, journal: Journal, database_url: str, appliers: Mapping[str, Applier], *, batch: int = 200,
                 max_backoff: float = 30.0, max_attempts: int = 5) -> None:
        self.journal, self.appliers = journal, dict(appliers)
        self.batch, self.max_backoff, self.max_attempts = batch, max_backoff, max_attempts
        self.catalog = failing_fast_catalog(database_url)
        self._migrated = False
        self._lock_path = Path(f"{journal.path}.replay-lock")
        self.wake = threading.Event()

    def replay(self) -> ReplayReport:
        """Apply everything pending now, in passes of ``batch``; stops at an outage (the report says why)."""
        report = ReplayReport()
        with open(self._lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.busy = True
                return report
            try:
                while self._pass(report):
                    pass
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return report

    def _pass(self, report: ReplayReport) -> bool:
        """One batch; True if there may be more to do now."""
        entries = self.journal.pending(limit=self.batch)
        if not entries:
            return False
        try:
            self._migrate()
            applied, dead, stopped_at = self._apply_together(entries) or self._apply_one_by_one(entries)
        except OUTAGES as exc:
            report.outage = _one_line(exc)
            return False
        self.journal.mark_applied(applied)
        for seq, reason in dead:
            self.journal.mark_dead(seq, reason)
            report.dead_reasons.append(reason)
        report.applied += len(applied)
        report.dead += len(dead)
        if stopped_at is not None:
            self._count_attempt(*stopped_at, report)
            return False
        return True

    def _apply_together(self, entries: list[Entry]) -> _Applied | None:
        """The batch in one transaction and one flush, as nearly every batch goes; None when any entry fails (then
        nothing of it is written, and :meth:`_apply_one_by_one` finds which). An outage propagates."""
        applied: list[int] = []
        dead: list[tuple[int, str]] = []
        try:
            with self.catalog.session() as session:
                before = observatory.applied_writes_by_key(session, [e.idempotency_key for e in entries])
                for entry in entries:
                    applier = self.appliers[entry.kind]
                    try:
                        fresh = observatory.check_not_applied(before.get(entry.idempotency_key),
                                                              entry.idempotency_key, entry.content_sha256)
                    except observatory.AppliedWriteConflict as exc:
                        dead.append((entry.seq, f"{type(exc).__name__}: {_one_line(exc)}"))
                        continue
                    if fresh:
                        self._record(session, entry)
                        applier(session, entry)
                    applied.append(entry.seq)
                session.flush()
        except OUTAGES:
            raise
        except Exception:  # a refusal or a bug somewhere in the batch: one by one, each in a savepoint
            return None
        return applied, dead, None

    def _apply_one_by_one(self, entries: list[Entry]) -> _Applied:
        applied: list[int] = []
        dead: list[tuple[int, str]] = []
        stopped_at: tuple[Entry, Exception] | None = None
        with self.catalog.session() as session:
            for entry in entries:
                outcome = self._apply(session, entry)
                if outcome is None:
                    applied.append(entry.seq)
                elif isinstance(outcome, str):
                    dead.append((entry.seq, outcome))
                else:
                    stopped_at = (entry, outcome)
                    break
        return applied, dead, stopped_at

    @staticmethod
    def _record(session: Session, entry: Entry) -> None:
        observatory.add_applied_write(session, write_id=uuid.UUID(entry.write_id),
                                      idempotency_key=entry.idempotency_key, kind=entry.kind,
                                      content_sha256=entry.content_sha256, client=entry.client,
                                      received_at=entry.received_at, journal_seq=entry.seq)

    def _apply(self, session: Session, entry: Entry) -> str | Exception | None:
        """One entry in its own savepoint: None when applied (now or before); the reason when refused; the
        exception when it failed otherwise. An outage propagates."""
        applier = self.appliers.get(entry.kind)
        if applier is None:
            return f"no applier for writes of kind {entry.kind!r}"
        try:
            with session.begin_nested():
                if observatory.check_not_applied(observatory.applied_write(session, entry.idempotency_key),
                                                 entry.idempotency_key, entry.content_sha256):
                    self._record(session, entry)
                    applier(session, entry)
                    session.flush()
        except OUTAGES:
            raise
        except _REFUSALS as exc:
            return f"{type(exc).__name__}: {_one_line(exc)}"
        except Exception as exc:  # a bug, or what no one foresaw: counted, retried, dead-lettered in the end
            return exc
        return None

    def _count_attempt(self, entry: Entry, exc: Exception, report: ReplayReport) -> None:
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        attempts = self.journal.note_failure(entry.seq, reason)
        log.warning("journal entry %s (%s) failed (attempt %s): %s", entry.seq, entry.kind, attempts, reason)
        if attempts >= self.max_attempts:
            self.journal.mark_dead(entry.seq, f"failed {attempts} times; last: {reason}")
            report.dead += 1
            report.dead_reasons.append(reason)

    def _migrate(self) -> None:
        if not self._migrated:
            self.catalog.migrate()
            self._migrated = True

    def run(self, stop: threading.Event, idle_wait: float = 1.0,
            on_report: Callable[[ReplayReport], None] | None = None) -> None:
        """Replay until ``stop`` is set: at once when :attr:`wake` is set, every ``idle_wait`` seconds otherwise,
        backing off while the catalog is away; ``on_report`` is told of each attempt."""
        backoff = 0.0
        while not stop.is_set():
            self.wake.clear()
            try:
                report = self.replay()
            except Exception:  # the journal itself failed (disk): say so, and keep trying
                log.exception("replaying the journal failed")
                report = ReplayReport(outage="journal error")
            if on_report is not None:
                on_report(report)
            if report.outage:
                backoff = min(self.max_backoff, max(0.25, backoff * 2))
                log.info("catalog unreachable, replaying again in %.2f s: %s", backoff, report.outage)
                stop.wait(backoff)
                continue
            backoff = 0.0
            self.wake.wait(idle_wait)

    def close(self) -> None:
        self.catalog.engine.dispose()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:1000]
