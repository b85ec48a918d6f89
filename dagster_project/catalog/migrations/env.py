"""Alembic environment for the catalog.

Run through :func:`dagster_project.catalog.db.migrate`, which passes an open
connection in ``config.attributes["connection"]``. From the command line (for
``revision --autogenerate``), give the database with ``-x url=...``::

    alembic -c dagster_project/catalog/alembic.ini -x url=sqlite:///var/catalog.sqlite revision --autogenerate -m "..."
"""

from alembic import context
from sqlalchemy.engine import Connection

from dagster_project.catalog.db import VERSION_TABLE, make_engine
from dagster_project.catalog.schema import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, parent_names) -> bool:
    # The database may be shared (e.g. with Dagster's storage): never touch tables that are not ours.
    return type_ != "table" or name in target_metadata.tables


def render_item(type_: str, obj, autogen_context) -> str | bool:
    # Revisions must not import the models: spell the tz-aware column type out.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_item=render_item,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER by copying tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")

if (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass -x url=<SQLAlchemy URL>")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()
