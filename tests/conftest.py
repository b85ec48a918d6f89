"""Database fixtures shared by the whole test suite.

* ``sqlite_url``: a SQLite file in the test's tmp_path (empty, not migrated).
* ``postgres_url``: a fresh, uniquely named, empty database on the server in
  ``TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
  dropped afterwards. Unreachable server: the test is skipped, or fails when
  ``REQUIRE_POSTGRES=1``. Tests using it are marked ``postgres`` automatically.
* ``catalog_url``: both of the above (ids ``sqlite`` and ``postgres``).
* ``catalog``: a migrated :class:`~dagster_project.catalog.Catalog` on ``catalog_url``.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from dagster_project.catalog import Catalog
from dagster_project.catalog.db import make_engine

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "postgres_url" in fixtures or "[postgres" in item.nodeid:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """URL of a new, empty database on the test server, dropped on exit (skip or fail when unreachable)."""
    server_url = sa.make_url(os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    # AUTOCOMMIT: CREATE/DROP DATABASE refuse to run in a transaction. Short timeout: fail fast when down.
    server = make_engine(server_url.update_query_dict({"connect_timeout": "5"})).execution_options(
        isolation_level="AUTOCOMMIT")
    name = f"test_catalog_{uuid.uuid4().hex[:16]}"
    try:
        with server.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        server.dispose()
        message = f"PostgreSQL unreachable at {server_url.render_as_string(hide_password=True)}: {exc.orig}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    catalog = Catalog(catalog_url)
    catalog.migrate()
    yield catalog
    catalog.engine.dispose()
