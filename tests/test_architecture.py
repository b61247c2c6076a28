"""The architecture of docs/architecture.md, checked on the source with `ast`.

Packages are layers that import only downward (model <- run <- analysis and bench <- the
command line); no module imports itself through others and no package imports itself
through others, annotation-only imports (under `if TYPE_CHECKING:`) included; one module
imports Hydra's private API; imports sit at the top of their modules unless they defer
something a command does not need; no folder fakes a sub-package with a file-name prefix;
and functions stay short enough to read. Each check names its exceptions, with their reasons.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from support import REPO

PACKAGE = REPO / "normbench"
# The layers, bottom first, by package; a module may import its own layer and those below.
LAYERS = {
    "normbench.errors": 0,
    "normbench.model": 1,
    "normbench.run": 2,
    "normbench.analysis": 3,
    "normbench.bench": 3,  # a tool standing above one run, beside the analysis
    "normbench.cli": 4,
    "normbench.launch": 4,
    "normbench.launcher": 4,
    "normbench.__main__": 4,
}
# Modules of one layer that must not import each other (siblings, not a stack).
SIBLINGS = [("normbench.analysis", "normbench.bench")]
MAX_FUNCTION_LINES = 60
# The exceptions, each with its reason (also in docs/architecture.md).
LONG_FUNCTIONS: dict[str, str] = {}
PREFIX_GROUPS: dict[str, str] = {}  # "folder/prefix_": why those modules share a prefix
HYDRA_PRIVATE = {"normbench.launch"}
# The only imports inside functions: each defers something that some commands never need.
# Every other import is at the top of its module.
DEFERRED_IMPORTS = {
    "wandb": "W&B: only runs that log to it (logger=wandb) and reports that publish",
    "wandb_workspaces": "the W&B Report API: only `normbench dashboard`",
    "datasets": "only data read from the Hugging Face hub (data=wikitext2)",
    "scipy": "only the statistics that need a distribution (t quantiles, TOST)",
    "matplotlib": "only when a figure is drawn (train and probe import the modules that draw)",
    "liger_kernel": "optional, only the LM-head benchmark (make bench --head)",
    "cut_cross_entropy": "optional, only the LM-head benchmark (make bench --head)",
    "hydra.errors": "the command line's error path: --help and list import no Hydra",
    "omegaconf.errors": "the command line's error path: --help and list import no OmegaConf",
    "normbench.model.kinds": "normbench list imports torch only when catalogue.json is stale",
    "normbench.model.placements": "normbench list imports torch only when catalogue.json is stale",
    "normbench.run.logger": "compare imports torch only to log a report to W&B (--wandb)",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def package_of(module: str, known: dict[str, Path]) -> str:
    """The package a module belongs to (a package's __init__ belongs to the package). The
    modules at the top (`normbench.cli`, `normbench.errors`, ...) stand for themselves: they
    are the layers above and below the packages, not one package."""
    package = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
    return module if package == "normbench" else package


def layer(module: str) -> int:
    if module == "normbench":  # the root __init__: the version, nothing else
        return 0
    for prefix, rank in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS and the docs")


def imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, those under `if TYPE_CHECKING:` included."""
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


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
        for node in imports(ast.parse(path.read_text())):
            edges[name] |= imported(node, known) - {name}
    return edges


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package A -> package B when a module of A imports a module of B (A != B)."""
    known = modules()
    out: dict[str, set[str]] = {package_of(m, known): set() for m in known}
    for a, targets in edges.items():
        out[package_of(a, known)] |= {package_of(b, known) for b in targets}
    return {a: targets - {a} for a, targets in out.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
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


def shared_prefixes(folder: Path) -> dict[str, int]:
    """File-name prefixes (the part before the first `_`) that 3 or more modules share."""
    stems = [p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and "_" in p.stem]
    counts = Counter(re.match(r"[^_]+_", stem).group(0) for stem in stems)
    return {prefix: n for prefix, n in counts.items() if n >= 3}


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_package_imports_itself_through_others():
    assert cycles(package_graph(graph())) == []


def test_layers_import_only_downward():
    upward = [
        f"{a} imports {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a)
    ]
    assert upward == []


def test_siblings_stay_apart():
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    between = [
        f"{a} imports {b}"
        for a, targets in graph().items()
        for b in targets
        if any({top(a), top(b)} == set(pair) for pair in SIBLINGS)
    ]
    assert between == []


def test_one_module_imports_hydras_private_api():
    users = {
        name
        for name, path in modules().items()
        for node in imports(ast.parse(path.read_text()))
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


def test_no_folder_fakes_a_package_with_a_prefix():
    faked = [
        f"{folder.relative_to(REPO)}/{prefix}*: {n} modules"
        for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir())]
        for prefix, n in shared_prefixes(folder).items()
        if f"{folder.relative_to(REPO)}/{prefix}" not in PREFIX_GROUPS
    ]
    assert faked == []


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


def deferred_imports(tree: ast.Module) -> list[str]:
    """The modules imported inside functions."""
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append(node.module or "")
    return found


def test_imports_are_at_the_top_unless_they_defer_something():
    inside = [
        f"{name} imports {module} inside a function"
        for name, path in modules().items()
        for module in deferred_imports(ast.parse(path.read_text()))
        if not any(module == d or module.startswith(d + ".") for d in DEFERRED_IMPORTS)
    ]
    assert inside == []


def test_the_checks_can_fail(tmp_path):
    """The graphs see an upward import and cycles (annotation-only ones included), and a
    folder of prefixed modules is seen."""
    edges = {"normbench.model.a": {"normbench.run.b"}, "normbench.run.b": {"normbench.model.a"}}
    assert cycles(edges) == [["normbench.model.a", "normbench.run.b"]]
    assert layer("normbench.run.b") > layer("normbench.model.a")
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\nimport sys"
    )
    assert {ast.unparse(n) for n in imports(tree)} == {
        "from typing import TYPE_CHECKING",
        "import os",
        "import sys",
    }
    deferred = ast.parse("import os\ndef f():\n    import torch\n    from wandb import init\n")
    assert deferred_imports(deferred) == ["torch", "wandb"]
    for stem in ("judges_a", "judges_b", "judges_c", "lr_a", "lr_b", "plain"):
        (tmp_path / f"{stem}.py").write_text("")
    assert shared_prefixes(tmp_path) == {"judges_": 3}
