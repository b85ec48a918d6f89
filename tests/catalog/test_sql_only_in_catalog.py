"""SQL is written in ``catalog/`` only: elsewhere a session is passed to named queries (``catalog.queries``),
never asked for rows itself. Read from the source with ``ast``.

Outside ``dagster_project/catalog/`` the check refuses a call of ``execute``, ``scalar``, ``scalars``, ``get``,
``get_one`` or ``query`` on a session, and any use of SQLAlchemy but its ``Session`` type, its exceptions and
``make_url`` (the settings show a database URL without its password).
"""

import ast
from pathlib import Path

import pytest

import dagster_project

PACKAGE = Path(dagster_project.__file__).parent
SESSION_QUERIES = {"execute", "scalar", "scalars", "get", "get_one", "query"}
SQLALCHEMY_ALLOWED = {("sqlalchemy.orm", "Session"), ("sqlalchemy", "make_url"), ("sqlalchemy", "exc")}

#: file -> why it still does (each entry must still be needed: a stale one fails the test)
STILL_QUERYING: dict[str, str] = {}


def sql_outside_catalog(source: str) -> list[int]:
    """Lines of ``source`` that query a session themselves or use SQLAlchemy beyond what is allowed."""
    found = []
    aliases = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            if any((node.module, a.name) not in SQLALCHEMY_ALLOWED and not node.module.startswith("sqlalchemy.exc")
                   for a in node.names):
                found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SESSION_QUERIES:
            receiver = node.func.value
            name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
            if "session" in name.lower():
                found.append(node.lineno)
    for node in ast.walk(ast.parse(source)):  # `sa.select(...)`, but `sa.exc.IntegrityError` is an exception
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr != "exc"):
            found.append(node.lineno)
    return sorted(set(found))


def test_no_sql_outside_the_catalog():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("catalog/"):
            lines = sql_outside_catalog(path.read_text())
            if lines:
                offenders[relative] = lines
    unexpected = {f: lines for f, lines in offenders.items() if f not in STILL_QUERYING}
    assert not unexpected, f"SQL outside catalog/ (move it into a named query of catalog/queries/): {unexpected}"
    stale = set(STILL_QUERYING) - set(offenders)
    assert not stale, f"no longer querying (remove from STILL_QUERYING): {stale}"


@pytest.mark.parametrize(("source", "caught"), [
    ("rows = session.execute(stmt)", True), ("x = self.session.scalar(q)", True),
    ("import sqlalchemy as sa\nq = sa.select(Observation)", True), ("from sqlalchemy import select", True),
    ("run = session.get_one(Run, 1)", True),
    ("import sqlalchemy as sa\nexcept_ = sa.exc.IntegrityError", False), ("from sqlalchemy.orm import Session", False),
    ("queries.get_result(session, key)", False), ("settings.get('x')", False), ("context.get(key)", False)])
def test_the_check_sees_sql(source, caught):
    assert bool(sql_outside_catalog(source)) is caught
