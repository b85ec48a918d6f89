"""Engines, migrations and sessions for the catalog (SQLite or PostgreSQL)."""

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Not "alembic_version": Dagster's own storage may share a PostgreSQL database and uses that name.
VERSION_TABLE = "catalog_alembic_version"
#: pg_advisory_lock key serialising concurrent migrate() calls (arbitrary, fixed).
MIGRATION_LOCK_KEY = 0x0CA7A106
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _json_default(value: Any) -> Any:
    # Headers, quality metrics and features often carry numpy values.
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_dumps(value: Any) -> str:
    # NaN and Infinity are not JSON: PostgreSQL refuses them and SQLite would store text no reader parses
    return json.dumps(value, default=_json_default, allow_nan=False)


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """WAL is persistent, so only a new database file switches; while other connections
    are opening the same new file that switch fails at once with "database is locked"
    (the busy timeout does not cover it), hence the retry."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # ":memory:" stays "memory", without error
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str | sa.URL) -> Engine:
    """An engine tuned for the catalog's concurrent writers (sensor, run workers, CLI).

    SQLite: WAL (readers never block the writer), foreign keys on, 30 s busy
    timeout, and every transaction opened with ``BEGIN IMMEDIATE``. Taking the
    write lock up front means a read-then-write transaction waits its turn
    instead of failing with "database is locked" when another writer committed
    in between (busy_timeout cannot rescue a deferred transaction that must
    upgrade its lock). It also makes DDL transactional, which migrations need.
    Keep sessions short: hold none while computing images.
    """
    url = sa.make_url(url)
    if url.drivername == "postgresql":
        # The platform ships psycopg2; SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, json_serializer=_json_dumps)
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, json_serializer=_json_dumps)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    """Alembic configuration built in code, so migrations run from the installed package anywhere."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def migrate(url_or_engine: str | sa.URL | Engine) -> None:
    """``alembic upgrade head``: idempotent, safe to call at every start.

    Concurrent starters are serialised: on PostgreSQL by a session-level advisory
    lock, on SQLite by the ``BEGIN IMMEDIATE`` write lock around the whole upgrade.
    """
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    try:
        with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()
            try:
                with connection.begin():
                    config = alembic_config()
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
            finally:
                if postgres:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    connection.commit()
    finally:
        if engine is not url_or_engine:
            engine.dispose()


class Catalog:
    """The catalog database: an engine, short transactional sessions and migrations."""

    def __init__(self, url: str | sa.URL) -> None:
        self.url = sa.make_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Catalog({self.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed if the block succeeds, rolled back if it raises.

        Objects stay usable after the block (``expire_on_commit=False``).
        """
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        migrate(self.engine)


@cache
def migrated_catalog(database_url: str) -> Catalog:
    """The catalog at ``database_url``, migrated on first use: one engine per process and URL."""
    catalog = Catalog(database_url)
    catalog.migrate()
    return catalog


def failing_fast_catalog(database_url: str, connect_timeout_s: int = 5) -> Catalog:
    """A catalog whose PostgreSQL connections give up after ``connect_timeout_s`` and notice a dead peer (TCP
    keepalives), so that an outage is an error within seconds, not a hang (the operations API's replayer and
    reads: they must answer, or say the catalog is away)."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.update_query_dict({"connect_timeout": str(connect_timeout_s), "keepalives": "1",
                                     "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "2"})
    return Catalog(url)
