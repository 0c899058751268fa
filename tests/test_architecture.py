"""The shape of src/pqrun, checked from its source (no database, nothing imported):
no import cycle, no module or class too long to read, internals kept private.

Each check has an allow-list of what is known to break it today, with the reason. A
listed entry that no longer breaks the rule fails the test too, so the lists only shrink:
delete the entry when its module is split, moved or documented.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pqrun"

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400

# Modules and classes allowed over the limits, each with the reason. Empty since issue 12
# split the store and the worker; an entry needs a reason and a plan to remove it.
LONG_MODULES_ALLOWED: dict[str, str] = {}
LONG_CLASSES_ALLOWED: dict[str, str] = {}

# Import cycles known today, each as the modules of one strongly connected component.
# None: store <-> handlers and store <-> waiting import each other only under
# TYPE_CHECKING, and cli -> top/webui only inside functions, which run after every
# module has loaded.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Modules with a public name that nothing documents as public, each with the reason.
# Empty: internals live in pqrun._store, pqrun._worker, pqrun._ui or a _module.
UNDOCUMENTED_PUBLIC_NAMES: dict[str, str] = {}

# Public entry points that neither pqrun/__init__.py nor the docs name as `pqrun.x`.
ENTRY_POINTS = {
    "pqrun.top": "pqrun.top.render(), the lines of one `pqrun top` screen (tests read it)",
}


# -- reading the package ---------------------------------------------------------------


def module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its __init__)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported: not those in functions,
    nor those under ``if TYPE_CHECKING:`` (its ``else:`` does run)."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.If):
            if not is_type_checking(statement.test):
                yield from import_time_statements(statement.body)
            yield from import_time_statements(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from import_time_statements(block)
            for handler in statement.handlers:
                yield from import_time_statements(handler.body)
        elif isinstance(statement, ast.With | ast.ClassDef):
            yield from import_time_statements(statement.body)


def imported_modules(name: str, statements: Iterable[ast.AST]) -> set[str]:
    """The package's modules that ``statements`` of module ``name`` import, with relative
    imports resolved; ``from x import y`` counts y when y is a module, else x."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for statement in statements:
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                target = alias.name
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target:
                    found.add(target)
        elif isinstance(statement, ast.ImportFrom):
            if statement.level:
                base = package.split(".")
                base = base[: len(base) - (statement.level - 1)]
                source = ".".join([*base, statement.module] if statement.module else base)
            else:
                source = statement.module or ""
            for alias in statement.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.add(submodule)
                elif source in MODULES:
                    found.add(source)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = imported_modules(name, import_time_statements(tree.body))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def one_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """A path through ``component`` that comes back to its start, to print."""
    start = min(component)
    parents: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if target not in parents:
                parents[target] = node
                queue.append(target)
    raise AssertionError(f"{sorted(component)} holds no cycle")


# -- the checks ------------------------------------------------------------------------


def test_imports_are_resolved_as_python_runs_them() -> None:
    source = """
from . import web_html
from .. import store
from ..models import Job
import pqrun.sync
from pqrun import errors, PgJobStore
if TYPE_CHECKING:
    from pqrun import worker
else:
    from pqrun import policies
try:
    from pqrun import schema
except ImportError:
    from pqrun import limits
def later():
    from pqrun import cli
"""
    statements = import_time_statements(ast.parse(source).body)
    assert imported_modules("pqrun._ui.formatting", statements) == {
        "pqrun",
        "pqrun._ui.web_html",
        "pqrun.errors",
        "pqrun.limits",
        "pqrun.models",
        "pqrun.policies",
        "pqrun.schema",
        "pqrun.store",
        "pqrun.sync",
    }
    package_init = import_time_statements(ast.parse("from .web_html import h").body)
    assert imported_modules("pqrun._ui", package_init) == {"pqrun._ui.web_html"}


def test_no_import_cycle() -> None:
    graph = import_graph()
    found = set(cycles(graph))
    new = [" -> ".join(one_cycle(graph, component)) for component in found - KNOWN_CYCLES]
    assert not new, "import cycles (break them, or import under TYPE_CHECKING):\n" + "\n".join(new)
    gone = [sorted(component) for component in KNOWN_CYCLES - found]
    assert not gone, f"no longer cycles: delete them from KNOWN_CYCLES: {gone}"


def source_lines() -> Iterator[tuple[str, int, list[tuple[str, int]]]]:
    """(path under src/, its lines, its classes with their lines) for every module."""
    for path in MODULES.values():
        text = path.read_text()
        classes = [
            (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
            for node in ast.walk(ast.parse(text, str(path)))
            if isinstance(node, ast.ClassDef)
        ]
        yield path.relative_to(PACKAGE.parent).as_posix(), len(text.splitlines()), classes


def test_no_module_or_class_is_too_long() -> None:
    long_modules = {}
    long_classes = {}
    for path, lines, classes in source_lines():
        if lines > MAX_MODULE_LINES:
            long_modules[path] = lines
        for name, class_lines in classes:
            if class_lines > MAX_CLASS_LINES:
                long_classes[f"{path}:{name}"] = class_lines
    too_long = {
        name: lines
        for name, lines in (long_modules | long_classes).items()
        if name not in LONG_MODULES_ALLOWED and name not in LONG_CLASSES_ALLOWED
    }
    assert not too_long, (
        f"over {MAX_MODULE_LINES} lines a module or {MAX_CLASS_LINES} a class: split "
        f"them: {too_long}"
    )
    fine = (set(LONG_MODULES_ALLOWED) - set(long_modules)) | (
        set(LONG_CLASSES_ALLOWED) - set(long_classes)
    )
    assert not fine, f"short enough now: delete them from the allow-lists: {sorted(fine)}"


def documented_modules() -> set[str]:
    """The modules README.md, docs/*.md or pqrun/__init__.py name, the console scripts'
    modules and what `python -m` runs."""
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        # A part may start with a digit: a Django migration, as migrations.0001_initial.
        for match in re.finditer(r"\bpqrun(?:\.\w+)+", doc.read_text()):
            name = match[0]
            while name not in MODULES:
                name = name.rpartition(".")[0]
            named.add(name)
    init = ast.parse(MODULES["pqrun"].read_text())
    named |= imported_modules("pqrun", ast.walk(init))  # lazy ones too
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for target in project.get("scripts", {}).values():
        named.add(target.partition(":")[0])
    named |= {"pqrun", "pqrun.__main__"}
    return named


def test_internal_modules_are_private() -> None:
    documented = documented_modules()
    public = documented | set(ENTRY_POINTS)
    offenders = sorted(
        name
        for name in MODULES
        if name not in public and not any(part.startswith("_") for part in name.split(".")[1:])
    )
    unexpected = [name for name in offenders if name not in UNDOCUMENTED_PUBLIC_NAMES]
    assert not unexpected, (
        "modules with a public name that no doc names as pqrun.x: move them under a "
        f"_-prefixed package, or give them a leading underscore: {unexpected}"
    )
    settled = sorted(set(UNDOCUMENTED_PUBLIC_NAMES) - set(offenders))
    assert not settled, f"private or documented now: delete from the allow-list: {settled}"
    stale = sorted((set(ENTRY_POINTS) & documented) | (set(ENTRY_POINTS) - set(MODULES)))
    assert not stale, f"documented or gone: delete them from ENTRY_POINTS: {stale}"
