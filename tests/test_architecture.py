"""The shape of the code, checked: no import cycles (deferred and TYPE_CHECKING imports count),
the library never imports the web layer, each web surface stands on the shared core, and family
names are written in the family table only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jaxvideo.families import FAMILY_NAMES

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jaxvideo", "webapp")
WEB_ONLY = ("flask", "werkzeug", "marshmallow", "apispec", "webapp")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imported(name: str) -> set[str]:
    """Every name a module imports anywhere in its body (functions and TYPE_CHECKING too)."""
    path = MODULES[name]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_edges(name: str) -> set[str]:
    """The project modules `name` imports (a submodule when it imports one, else its package)."""
    edges = set()
    for target in imported(name):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def cycles() -> list[list[str]]:
    graph = {name: project_edges(name) for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in MODULES:
        if name not in index:
            visit(name)
    return found


def test_no_module_imports_itself_back():
    assert cycles() == []


def test_the_library_never_imports_the_web_layer():
    for name in (m for m in MODULES if m.startswith("jaxvideo")):
        bad = {t for t in imported(name) if t.split(".")[0] in WEB_ONLY}
        assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    ("package", "may_use"),
    [
        ("webapp.core", ("webapp.core",)),
        ("webapp.sdcpp", ("webapp.core", "webapp.sdcpp")),
        # The other surfaces reuse the native translation for <sd_cpp_extra_args> blocks.
        ("webapp.sdapi", ("webapp.core", "webapp.sdapi", "webapp.sdcpp")),
        ("webapp.openai", ("webapp.core", "webapp.openai", "webapp.sdcpp")),
    ],
)
def test_each_web_package_stands_on_the_core(package, may_use):
    for name in (m for m in MODULES if m == package or m.startswith(package + ".")):
        web = {t for t in project_edges(name) if t.startswith("webapp")}
        stray = {t for t in web if not t.startswith(may_use)}
        assert not stray, f"{name} imports {sorted(stray)}"


def test_family_names_are_written_in_the_family_table_only():
    for name, path in MODULES.items():
        if name == "jaxvideo.families":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in FAMILY_NAMES:
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
