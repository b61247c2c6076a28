"""The architecture of docs/architecture.md, checked on the source with `ast`.

Three layers import only downward (model <- run <- analysis <- the command line), no
module imports itself through others (no cycles), one module imports Hydra's private API,
and functions and modules stay short enough to read.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO

PACKAGE = REPO / "normbench"
# The layers, bottom first; a module may import its own layer and those below it.
LAYERS = {
    "normbench.errors": 0,
    "normbench.model": 1,
    "normbench.run": 2,
    "normbench.analysis": 3,
    "normbench.cli": 4,
    "normbench.launch": 4,
    "normbench.__main__": 4,
}
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
# The exceptions, each with its reason (also in docs/architecture.md).
LONG_FUNCTIONS: dict[str, str] = {}
LONG_MODULES: dict[str, str] = {}
HYDRA_PRIVATE = {"normbench.launch"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> int:
    for prefix, rank in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS and the docs")


def runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs (those under `if TYPE_CHECKING:` are annotations only)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped
    ]


def imported(node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The package's own modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert node.level == 0, "relative imports are not used in normbench"
        base = node.module or ""
        names = [base, *(f"{base}.{a.name}" for a in node.names)]
    return {n for n in names if n in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in runtime_imports(ast.parse(path.read_text())):
            edges[name] |= imported(node, known) - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_import_only_downward():
    upward = [
        f"{a} imports {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a)
    ]
    assert upward == []


def test_one_module_imports_hydras_private_api():
    users = {
        name
        for name, path in modules().items()
        for node in runtime_imports(ast.parse(path.read_text()))
        if any(
            n.startswith("hydra._internal")
            for n in (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
        )
    }
    assert users <= HYDRA_PRIVATE


def test_functions_are_short():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = f"{name}.{node.name}"
                if lines > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS:
                    long.append(f"{where}: {lines} lines")
    assert long == []


def test_modules_are_short():
    long = [
        f"{name}: {n} lines"
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES and name not in LONG_MODULES
    ]
    assert long == []


def test_the_checks_can_fail():
    """The graph sees an upward import and a cycle when there is one."""
    edges = {"normbench.model.a": {"normbench.run.b"}, "normbench.run.b": {"normbench.model.a"}}
    assert cycles(edges) == [["normbench.model.a", "normbench.run.b"]]
    assert layer("normbench.run.b") > layer("normbench.model.a")
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\nimport sys"
    )
    assert [ast.unparse(n) for n in runtime_imports(tree)] == [
        "from typing import TYPE_CHECKING",
        "import sys",
    ]
