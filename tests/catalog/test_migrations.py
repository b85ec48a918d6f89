"""The migrations build exactly the schema of models.py, on SQLite and PostgreSQL, and undo it cleanly."""

import re
import threading

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.schema import CreateTable

from dagster_project.catalog import Base, Catalog, migrate
from dagster_project.catalog.db import VERSION_TABLE, alembic_config, make_engine


def schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "compare_type": True, "target_metadata": Base.metadata})
        return compare_metadata(context, Base.metadata)


def downgrade_to_base(engine: sa.Engine) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")


def test_migrated_schema_matches_models(catalog_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no reliance on the working directory
    migrate(catalog_url)
    engine = make_engine(catalog_url)
    assert schema_diff(engine) == []
    engine.dispose()


def test_constraints_alembic_does_not_compare_match_models(catalog):
    """CHECK names, FK ON DELETE rules and partial-index predicates are outside compare_metadata."""
    inspector = sa.inspect(catalog.engine)
    dialect = catalog.engine.dialect
    for table in Base.metadata.sorted_tables:
        # What the models would create on this dialect (e.g. enum CHECKs only on SQLite).
        expected_checks = set(re.findall(r"CONSTRAINT (\w+) CHECK", str(CreateTable(table).compile(dialect=dialect))))
        assert {c["name"] for c in inspector.get_check_constraints(table.name)} == expected_checks, table.name

        expected_fks = {(fk.parent.name, fk.column.table.name, fk.ondelete) for fk in table.foreign_keys}
        reflected_fks = {(fk["constrained_columns"][0], fk["referred_table"], fk["options"].get("ondelete"))
                         for fk in inspector.get_foreign_keys(table.name)}
        assert reflected_fks == expected_fks, table.name

        expected_partial = {ix.name for ix in table.indexes
                            if ix.dialect_kwargs.get(f"{dialect.name}_where") is not None}
        reflected_partial = {ix["name"] for ix in inspector.get_indexes(table.name)
                             if ix.get("dialect_options", {}).get(f"{dialect.name}_where") is not None}
        assert reflected_partial == expected_partial, table.name


def test_upgrade_downgrade_upgrade(catalog_url):
    engine = make_engine(catalog_url)
    migrate(engine)
    downgrade_to_base(engine)
    assert set(sa.inspect(engine).get_table_names()) <= {VERSION_TABLE}
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT count(*) FROM pg_type WHERE typtype = 'e'")) == 0
    migrate(engine)
    assert schema_diff(engine) == []
    engine.dispose()


def test_migrate_is_idempotent(catalog):
    catalog.migrate()
    catalog.migrate()
    with catalog.engine.connect() as connection:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert connection.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")) == head


def test_concurrent_starters_migrate_once(catalog_url):
    """Several processes starting at once (sensor, run workers, CLI) must not trip over each other."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        catalog = Catalog(catalog_url)
        try:
            barrier.wait()
            catalog.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            catalog.engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(catalog_url)
    assert schema_diff(engine) == []
    engine.dispose()


@pytest.mark.parametrize("statement", ["PRAGMA foreign_keys", "PRAGMA journal_mode", "PRAGMA busy_timeout"])
def test_sqlite_connection_settings(sqlite_url, statement):
    engine = make_engine(sqlite_url)
    with engine.connect() as connection:
        value = connection.exec_driver_sql(statement).scalar()
    engine.dispose()
    assert value == {"PRAGMA foreign_keys": 1, "PRAGMA journal_mode": "wal", "PRAGMA busy_timeout": 30000}[statement]


def test_sqlite_parent_directory_is_created(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'catalog.sqlite'}")
    migrate(engine)
    engine.dispose()
    assert (tmp_path / "deep" / "er" / "catalog.sqlite").exists()
