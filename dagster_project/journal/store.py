"""The durable local journal of critical writes: what the operations API has promised to apply.

A critical write (``api.critical.critical_operation``) is appended here, and the append is on disk
(SQLite in WAL mode with ``synchronous=FULL``: the commit fsyncs the log) before the client hears
``202 buffered``. The replayer (:mod:`.replayer`) applies the entries to the catalog in order and marks
them applied, or dead with the reason why they can never apply. Nothing else holds the only copy of an
accepted write: Redis or any cache may hold copies of reads, never of writes.

SQLite rather than a file of lines: appends from several threads and processes are serialised by its
lock, a half-written append is rolled back by its log on the next open, and the idempotency key is
UNIQUE, so a write retried by a client is the same entry, whichever process took it.

Tables::

    entries(seq, write_id, idempotency_key UNIQUE, kind, payload, content_sha256, client, received_at,
            response, state: pending | applied | dead, attempts, last_error, applied_at)
    entry_entities(seq, entity, entity_id, lookup)   -- what each entry creates or changes, for smart reads
    tokens(name, token_sha256 UNIQUE, scopes, created_at, revoked_at)   -- the API's clients, hashed

The tokens live here, not in the catalog, because the API must authenticate a telescope while the
catalog database is away.
"""

import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Entity", "Entry", "IdempotencyConflict", "Journal", "Token", "content_digest"]

PENDING, APPLIED, DEAD = "pending", "applied", "dead"
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    write_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    content_sha256 TEXT NOT NULL CHECK (length(content_sha256) = 64),
    client TEXT NOT NULL,
    received_at TEXT NOT NULL,
    response TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'applied', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error TEXT,
    applied_at TEXT,
    CHECK (state != 'dead' OR last_error IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS entries_state_seq ON entries (state, seq);
CREATE TABLE IF NOT EXISTS entry_entities (
    seq INTEGER NOT NULL REFERENCES entries (seq) ON DELETE CASCADE,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    lookup TEXT
);
CREATE INDEX IF NOT EXISTS entry_entities_id ON entry_entities (entity, entity_id);
CREATE INDEX IF NOT EXISTS entry_entities_lookup ON entry_entities (entity, lookup);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


def content_digest(kind: str, payload: Any) -> str:
    """sha256 of a write's kind and its payload in canonical JSON: the same content, the same digest."""
    text = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Entity:
    """One entity an entry creates or changes: its kind (``ExecutedObsUnit``...), id, and a value reads look
    it up by (e.g. the observation unit id)."""

    entity: str
    entity_id: str
    lookup: str | None = None


@dataclass(frozen=True)
class Entry:
    seq: int
    write_id: str
    idempotency_key: str
    kind: str
    payload: Any
    content_sha256: str
    client: str
    received_at: datetime
    response: dict[str, Any]
    state: str
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]


class IdempotencyConflict(ValueError):
    """The idempotency key is in the journal already, with other content."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        super().__init__(f"idempotency key {entry.idempotency_key!r} was used for other content "
                         f"(write {entry.write_id}, {entry.kind})")


def _now_text() -> str:
    return datetime.now(UTC).isoformat()


class Journal:
    """The journal file at ``path``: one connection per thread, each commit fsync'd."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Writers of this process take turns here: SQLite's own busy handler would have them sleep 1-100 ms
        # between tries of its lock, and a burst of writes from a few threads would wait mostly on those sleeps.
        self._write_lock = threading.Lock()
        self._connection().executescript(_SCHEMA)  # IF NOT EXISTS: safe for several processes opening it at once

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                         check_same_thread=True)
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: the log is fsync'd at every commit, so an acknowledged write survives a power cut
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        with self._write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # --- appending -------------------------------------------------------------------------------------------------

    def append(self, *, kind: str, payload: Any, client: str, idempotency_key: str | None,
               response: dict[str, Any], entities: Sequence[Entity] = (), write_id: str | None = None
               ) -> tuple[Entry, bool]:
        """Append a write, durably; ``(entry, True)``. A key already in the journal with the same content gives
        ``(that entry, False)`` (a client's retry), with other content :class:`IdempotencyConflict`.

        ``idempotency_key`` None: derived from the client and the content, so an identical retry without a key is
        the same write too.
        """
        digest = content_digest(kind, payload)
        key = idempotency_key or f"derived:{client}:{digest}"
        write_id = write_id or str(uuid.uuid4())
        with self._transaction() as connection:
            before = self._by_key(connection, key)
            if before is not None:
                if before.content_sha256 != digest:
                    raise IdempotencyConflict(before)
                return before, False
            cursor = connection.execute(
                "INSERT INTO entries (write_id, idempotency_key, kind, payload, content_sha256, client, received_at,"
                " response) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (write_id, key, kind, json.dumps(payload, sort_keys=True), digest, client, _now_text(),
                 json.dumps(response)))
            seq = cursor.lastrowid
            connection.executemany("INSERT INTO entry_entities (seq, entity, entity_id, lookup) VALUES (?, ?, ?, ?)",
                                   [(seq, e.entity, e.entity_id, e.lookup) for e in entities])
            return self._by_key(connection, key), True

    def _by_key(self, connection: sqlite3.Connection, key: str) -> Entry | None:
        row = connection.execute("SELECT * FROM entries WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else self._entry(row)

    @staticmethod
    def _entry(row: sqlite3.Row) -> Entry:
        return Entry(seq=row["seq"], write_id=row["write_id"], idempotency_key=row["idempotency_key"],
                     kind=row["kind"], payload=json.loads(row["payload"]), content_sha256=row["content_sha256"],
                     client=row["client"], received_at=datetime.fromisoformat(row["received_at"]),
                     response=json.loads(row["response"]), state=row["state"], attempts=row["attempts"],
                     last_error=row["last_error"])

    # --- reading ---------------------------------------------------------------------------------------------------

    def pending(self, limit: int = 500, after_seq: int = 0) -> list[Entry]:
        """Entries not applied yet, oldest first (the replayer's order)."""
        connection = self._connection()
        rows = connection.execute("SELECT * FROM entries WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
                                  (after_seq, limit)).fetchall()
        return [self._entry(row) for row in rows]

    def touching(self, entity: str, *, entity_id: str | None = None, lookup: str | None = None,
                 applied_too: bool = False) -> list[Entry]:
        """Entries that create or change ``entity`` with this id (or lookup value), oldest first: the pending ones,
        and with ``applied_too`` the applied ones as well (what smart reads show while the catalog is away)."""
        column, value = ("entity_id", entity_id) if entity_id is not None else ("lookup", lookup)
        states = "('pending', 'applied')" if applied_too else "('pending')"
        connection = self._connection()
        rows = connection.execute(
            "SELECT DISTINCT e.* FROM entries e JOIN entry_entities x ON x.seq = e.seq "
            f"WHERE e.state IN {states} AND x.entity = ? AND x.{column} = ? ORDER BY e.seq",
            (entity, value)).fetchall()
        return [self._entry(row) for row in rows]

    def touching_any(self, entity: str, lookups: Sequence[str]) -> list[Entry]:
        """Entries, pending or applied, that touch ``entity`` under any of ``lookups`` (a bulk's names), oldest
        first, in one query per 500 lookups."""
        connection = self._connection()
        found: dict[int, Entry] = {}
        for start in range(0, len(lookups), 500):
            chunk = list(lookups[start:start + 500])
            for row in connection.execute(
                    "SELECT DISTINCT e.* FROM entries e JOIN entry_entities x ON x.seq = e.seq WHERE "
                    f"e.state IN ('pending', 'applied') AND x.entity = ? AND x.lookup IN ({','.join('?' * len(chunk))})",
                    (entity, *chunk)):
                found[row["seq"]] = self._entry(row)
        return [found[seq] for seq in sorted(found)]

    def by_key(self, key: str) -> Entry | None:
        return self._by_key(self._connection(), key)

    def dead_letters(self, limit: int = 100) -> list[Entry]:
        connection = self._connection()
        rows = connection.execute("SELECT * FROM entries WHERE state = 'dead' ORDER BY seq DESC LIMIT ?",
                                  (limit,)).fetchall()
        return [self._entry(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall()
        return {PENDING: 0, APPLIED: 0, DEAD: 0, **{state: n for state, n in rows}}

    # --- what the replayer records ---------------------------------------------------------------------------------

    def mark_applied(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._transaction() as connection:
            connection.executemany("UPDATE entries SET state = 'applied', applied_at = ?, attempts = attempts + 1 "
                                   "WHERE seq = ? AND state = 'pending'", [(_now_text(), s) for s in seqs])

    def mark_dead(self, seq: int, reason: str) -> None:
        with self._transaction() as connection:
            connection.execute("UPDATE entries SET state = 'dead', last_error = ?, attempts = attempts + 1 "
                               "WHERE seq = ? AND state = 'pending'", (reason, seq))

    def note_failure(self, seq: int, reason: str) -> int:
        """An attempt at entry ``seq`` failed but may succeed later; its attempts so far."""
        with self._transaction() as connection:
            connection.execute("UPDATE entries SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                               (reason, seq))
            return connection.execute("SELECT attempts FROM entries WHERE seq = ?", (seq,)).fetchone()[0]

    # --- tokens ----------------------------------------------------------------------------------------------------

    def add_token(self, name: str, token_sha256: str, scopes: Sequence[str]) -> None:
        with self._transaction() as connection:
            connection.execute("INSERT INTO tokens (name, token_sha256, scopes, created_at) VALUES (?, ?, ?, ?)",
                               (name, token_sha256, " ".join(sorted(scopes)), _now_text()))

    def revoke_token(self, name: str) -> bool:
        with self._transaction() as connection:
            cursor = connection.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                                        (_now_text(), name))
            return cursor.rowcount == 1

    def token_by_hash(self, token_sha256: str) -> Token | None:
        row = self._connection().execute(
            "SELECT name, scopes FROM tokens WHERE token_sha256 = ? AND revoked_at IS NULL", (token_sha256,)).fetchone()
        return None if row is None else Token(row["name"], frozenset(row["scopes"].split()))

    def tokens(self) -> list[dict[str, Any]]:
        return [dict(row) | {"scopes": row["scopes"].split()} for row in self._connection().execute(
            "SELECT name, scopes, created_at, revoked_at FROM tokens ORDER BY name")]

