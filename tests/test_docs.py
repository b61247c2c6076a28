"""The documentation names what exists: every repository path that the README, docs/ and
the package's docstrings and comments name is a file or folder of the repository.

A path is a run of path characters that starts at one of the repository's top folders
(`normbench/`, `tests/`, `configs/`, `docs/`, `sweeps/`, `.ci/`) or, inside the package,
at one of its sub-packages (`run/trainer.py` means `normbench/run/trainer.py`). Paths with a
placeholder (`<name>`, `*`, `{...}`) name a family of files and are skipped; so are paths
under `../shared/`, which lies beside the repository, not in it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from support import REPO

TOP = ("normbench", "tests", "configs", "docs", "sweeps", ".ci")
PACKAGES = tuple(p.name for p in (REPO / "normbench").iterdir() if (p / "__init__.py").is_file())
# A path: a top folder, then path characters; it ends at a file with an extension or a `/`.
TOPS, SUBS = "|".join(map(re.escape, TOP)), "|".join(PACKAGES)
PATH = re.compile(r"(?<![\w./-])(\.\./shared/)?((?:" + TOPS + r")/(?:[\w./<>*{}-]*[\w/*>}])?)")
PACKAGE_PATH = re.compile(r"(?<![\w./-])((?:" + SUBS + r")/[\w./<>*{}-]*\.py)\b")


def is_family(path: str) -> bool:
    return any(c in path for c in "<>*{}")


def named_paths(text: str, in_package: bool = False) -> set[str]:
    """The repository paths `text` names (relative to the repository's root)."""
    found = set()
    for shared, path in PATH.findall(text):
        if not shared and not is_family(path):
            found.add(path.rstrip("./"))
    if in_package:
        found |= {f"normbench/{p}" for p in PACKAGE_PATH.findall(text) if not is_family(p)}
    return found


def prose_of_module(path: Path) -> str:
    """A module's docstrings and comments: the prose in which it names files."""
    source = path.read_text(encoding="utf-8")
    parts = [
        ast.get_docstring(node) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    parts += [tok.string for tok in tokens if tok.type == tokenize.COMMENT]
    return "\n".join(parts)


def documents() -> dict[str, tuple[str, bool]]:
    docs = {"README.md": ((REPO / "README.md").read_text(encoding="utf-8"), False)}
    for path in sorted((REPO / "docs").rglob("*.md")):
        docs[str(path.relative_to(REPO))] = (path.read_text(encoding="utf-8"), False)
    for path in sorted((REPO / "normbench").rglob("*.py")):
        docs[str(path.relative_to(REPO))] = (prose_of_module(path), True)
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        docs[str(path.relative_to(REPO))] = (path.read_text(encoding="utf-8"), False)
    return docs


def test_every_named_path_exists():
    missing = [
        f"{where} names {path}"
        for where, (text, in_package) in documents().items()
        for path in sorted(named_paths(text, in_package))
        if not (REPO / path).exists()
    ]
    assert missing == []


def test_the_check_sees_paths():
    text = (
        "see normbench/run/trainer.py, `tests/test_nothing.py` and configs/norm/<name>.yaml; "
        "the spec ../shared/docs/variants.md; docs/."
    )
    assert named_paths(text) == {"normbench/run/trainer.py", "tests/test_nothing.py", "docs"}
    assert named_paths("run/trainer.py and model/gpt.py", in_package=True) == {
        "normbench/run/trainer.py",
        "normbench/model/gpt.py",
    }
