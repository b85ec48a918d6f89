"""The house rules, read from the source with ``ast`` (nothing is imported):

* no import cycle among the modules of ``dagster_project``;
* every import between layers allowed by the layer table of ``docs/architecture.md`` (parsed here, so
  the page and the rule cannot drift apart), Dagster imported only by the layers that may, the catalog's
  schema below its states and queries, and no asset domain importing another;
* no import of Dagster's private modules (``dagster._…``) anywhere in ``dagster_project``
  (:data:`PRIVATE_DAGSTER_ALLOWED` would name an exception with its reason: there is none).
"""

import ast
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dagster_project"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

#: (file, private module) -> why no public API does it. An entry that is no longer needed fails the test too.
PRIVATE_DAGSTER_ALLOWED: dict[tuple[str, str], str] = {}


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
    assert "dagster_project.catalog" in graph["dagster_project.operations.mirror"]  # `from ..catalog import Catalog`


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


# --- layering, as documented in docs/architecture.md ---------------------------------------------

def layer_table(text: str | None = None) -> dict[str, tuple[tuple[str, ...], frozenset[str], bool]]:
    """Layer -> (its module prefixes, the layers it may import, whether it may import Dagster)."""
    text = ARCHITECTURE.read_text() if text is None else text
    rows = text.split("<!-- layers:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    table = {}
    for row in rows:
        name, modules, _what, may_import, dagster = (cell.strip() for cell in row.strip().strip("|").split("|"))
        prefixes = tuple(f"dagster_project.{m}" for m in re.findall(r"`([\w.]+)`", modules))
        allowed = frozenset(x.strip() for x in may_import.split(",") if x.strip() not in ("", "–", "-"))
        table[name] = (prefixes, allowed, dagster == "yes")
    return table


def layer_of(module: str, table) -> str | None:
    best = None
    for name, (prefixes, _, _) in table.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (name, len(prefix))
    return best[0] if best else None


def layering_violations(graph: dict[str, set[str]], table) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        if module == "dagster_project":
            continue
        mine = layer_of(module, table)
        if mine is None:
            found.append(f"{module} is in no layer of docs/architecture.md")
            continue
        for other in sorted(imported):
            theirs = layer_of(other, table)
            if theirs not in (mine, None) and theirs not in table[mine][1]:
                found.append(f"{module} ({mine}) imports {other} ({theirs})")
    return found


def inner_violations(graph: dict[str, set[str]]) -> list[str]:
    """The catalog's schema below its states and queries; no asset domain importing another."""
    found = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            if module.startswith("dagster_project.catalog.schema") and other.startswith(
                    ("dagster_project.catalog.states", "dagster_project.catalog.queries")):
                found.append(f"{module} imports {other}: the schema sits below states and queries")
            if module.startswith("dagster_project.catalog.states") and other.startswith("dagster_project.catalog.queries"):
                found.append(f"{module} imports {other}: states sit below queries")
            mine, theirs = module.split("."), other.split(".")
            if (mine[1:2] == theirs[1:2] == ["assets"] and len(mine) > 3 and len(theirs) > 2
                    and mine[2] != theirs[2]):
                found.append(f"{module} imports {other}: asset domains depend on each other by asset key only")
    return found


def dagster_imports(table) -> list[str]:
    found = []
    for module, path in module_files().items():
        mine = layer_of(module, table)
        if mine is None or table[mine][2]:
            continue
        for node, imported, _ in _imports(path, module):
            if imported.split(".")[0].startswith("dagster") and not imported.startswith("dagster_project"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} ({mine}) imports {imported}")
    return found


def test_every_layer_of_the_page_is_read():
    table = layer_table()
    assert {"science", "catalog", "ingest", "assets", "sensors", "definitions", "drivers"} <= set(table)
    assert table["science"][1] == frozenset() and not table["science"][2]
    assert "catalog" in table["ingest"][1]


def test_imports_follow_the_documented_layers():
    found = layering_violations(import_graph(), layer_table())
    assert not found, "imports against docs/architecture.md's layers:\n" + "\n".join(found)


def test_inside_the_catalog_and_the_assets():
    found = inner_violations(import_graph())
    assert not found, "\n".join(found)


def test_dagster_only_where_the_page_allows_it():
    found = dagster_imports(layer_table())
    assert not found, "Dagster imported below the Dagster layer:\n" + "\n".join(found)


def test_the_layer_rules_catch_what_they_should():
    table = layer_table()
    graph = {"dagster_project.science.zogy": {"dagster_project.catalog.db"},
             "dagster_project.catalog.schema.base": {"dagster_project.catalog.queries.observations"},
             "dagster_project.assets.detection.candidates": {"dagster_project.assets.observations.raw_observation"},
             "dagster_project.newthing": set()}
    assert layering_violations(graph, table) == [
        "dagster_project.newthing is in no layer of docs/architecture.md",
        "dagster_project.science.zogy (science) imports dagster_project.catalog.db (catalog)"]
    assert len(inner_violations(graph)) == 2
    assert layer_of("dagster_project.cli.runner", table) == "drivers"
