"""The pipeline reads top to bottom: no module of provision imports, even inside a function,
one that imports it back. A circle makes a lower layer depend on a higher one (the lock on the
plan and the plan on the lock, cli on lockcli and back) and is how the flow stops reading in
one direction."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "provision"
# Type-only imports (under `if TYPE_CHECKING:`) between the engine's own modules: the engine
# issue (29) splits transfer.py and owns these; a runtime import among them is still a circle.
KNOWN_TYPE_ONLY = {frozenset({"provision.engine", "provision.transfer", "provision.hashing"})}


def module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(REPO).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str], type_only: bool) -> set[str]:
    """The provision modules `path` imports, anywhere in it (functions too); with `type_only`
    also those under `if TYPE_CHECKING:`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if not type_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")  # `from . import paths`: the module
                elif target in modules:
                    found.add(target)  # a name defined in the module (or package) itself
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module"):
            found |= {m for m in modules if m.startswith(f"{name}.")}  # a dispatcher's submodules
    found.discard(name)
    return found


def circles(type_only: bool) -> list[set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports(path, set(files), type_only) for name, path in files.items()}
    # Strongly connected components (Tarjan): each with more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    assert circles(type_only=False) == []


def test_even_type_only_imports_make_no_new_circle():
    assert [c for c in circles(type_only=True) if frozenset(c) not in KNOWN_TYPE_ONLY] == []


def test_the_plan_holds_values_and_imports_nothing_of_the_lock():
    files = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert "provision.lockfile" not in imports(PACKAGE / "plan.py", files, type_only=True)
