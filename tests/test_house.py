"""The house rules, read from the source with ``ast`` (nothing is imported):

* no import cycle among the modules of ``dagster_project``;
* no import of Dagster's private modules (``dagster._…``) anywhere in ``dagster_project``,
  but for the one named in :data:`PRIVATE_DAGSTER_ALLOWED`, with the reason.
"""

import ast
import warnings
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dagster_project"

#: (file, private module) -> why no public API does it. An entry that is no longer needed fails the test too.
PRIVATE_DAGSTER_ALLOWED = {
    ("cli/operations.py", "dagster._core.execution.backfill"):
        "Dagster 1.13 has no public Python API that creates an asset backfill (PartitionBackfill)",
}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path, module: str) -> Iterator[tuple[ast.stmt, str, tuple[str, ...]]]:
    """(statement, imported module, names taken from it) for every import in the file, at any depth."""
    is_package = path.name == "__init__.py"
    with warnings.catch_warnings():  # e.g. a reST escape in a docstring: not this test's business
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield node, base, tuple(alias.name for alias in node.names)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports.

    ``from a.b import c`` depends on ``a.b.c`` when that is a module, else on ``a.b`` (``c`` is a name
    defined there); ``import a.b.c`` on ``a.b.c``. Importing a submodule runs its packages' ``__init__``
    first, but that edge is not counted: a package importing its own children is how packages are built.
    """
    modules = module_files(package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for _, imported, names in _imports(path, module):
            targets = [f"{imported}.{n}" if f"{imported}.{n}" in modules else imported for n in names] or [imported]
            graph[module].update(t for t in map(known, targets) if t is not None and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_private(module: str, names: tuple[str, ...]) -> bool:
    parts = module.split(".")
    return parts[0] == "dagster" and (any(p.startswith("_") for p in parts[1:])
                                      or (len(parts) == 1 and any(n.startswith("_") for n in names)))


def private_dagster_imports(package: Path = PACKAGE) -> list[tuple[str, int, str]]:
    """(file relative to the package, line, module) of every import of a private Dagster module or name."""
    found = []
    for module, path in module_files(package).items():
        for node, imported, names in _imports(path, module):
            if _is_private(imported, names):
                found.append((path.relative_to(package).as_posix(), node.lineno, imported))
    return found


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "dagster_project.catalog.states" in graph["dagster_project.catalog.queries.operations"]
    assert "dagster_project.catalog" in graph["dagster_project.sensors.ledger"]  # `from ..catalog import Catalog`


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in dagster_project:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_dagster_imports():
    found = private_dagster_imports()
    unexpected = [f"dagster_project/{file}:{line} imports {module}" for file, line, module in found
                  if (file, module) not in PRIVATE_DAGSTER_ALLOWED]
    assert not unexpected, "imports of Dagster's private modules:\n" + "\n".join(unexpected)
    stale = set(PRIVATE_DAGSTER_ALLOWED) - {(file, module) for file, _, module in found}
    assert not stale, f"allowed private imports no longer made (remove them from PRIVATE_DAGSTER_ALLOWED): {stale}"


def test_private_import_detection():
    assert _is_private("dagster._core.storage.tags", ("RUN_KEY_TAG",))
    assert _is_private("dagster", ("_check",))
    assert not _is_private("dagster", ("DagsterRunStatus",))
    assert not _is_private("dagster_shared", ())
