"""The catalogue of placements and kinds, generated from the classes (`normbench list`).

Names, papers, summaries and equations come from the registries and the classes' docstrings,
so the printed catalogue and the README's table (`normbench list --markdown`) cannot drift
from the code.

The classes are torch modules, and importing torch takes longer than `normbench list`
should. So the catalogue built from them is also kept beside this module
(`catalogue.json`, written by `python -m normbench.model.catalog`) with the sha256 of the
source files it was built from: `normbench list` prints it when those files are unchanged,
and builds the catalogue from the classes again (importing torch) when any of them changed.
`tests/model/test_catalog.py` fails while the kept file is out of date.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from normbench.errors import NormbenchError

HERE = Path(__file__).resolve().parent
KEPT = HERE / "catalogue.json"
# The modules whose classes the catalogue describes (and that it is rebuilt from).
SOURCES = ("block.py", "placements.py", "postnorm.py", "kinds.py")


def equation(cls: type) -> str:
    """The first line of a class's docstring: its equation."""
    return (cls.__doc__ or "").strip().splitlines()[0].strip()


def sources_digest(folder: Path = HERE) -> dict[str, str]:
    """The sha256 of each source file the catalogue is built from."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in SOURCES}


def build() -> dict[str, Any]:
    """The catalogue from the classes themselves (imports torch)."""
    from normbench.model.kinds import KINDS
    from normbench.model.placements import PLACEMENTS

    def entry(cls: type) -> dict[str, Any]:
        return {"paper": cls.paper, "summary": cls.summary, "equation": equation(cls)}

    return {
        "sources": sources_digest(),
        "placements": {
            name: {**entry(cls), "final_norm": cls.final_norm, "parallel": cls.parallel}
            for name, cls in PLACEMENTS.items()
        },
        "kinds": {
            name: {**entry(cls), "options": {k: str(v) for k, v in cls.options.items()}}
            for name, cls in KINDS.items()
        },
    }


def kept(path: Path = KEPT, folder: Path = HERE) -> dict[str, Any] | None:
    """The kept catalogue, or None when it is missing, unreadable or built from other sources."""
    try:
        catalogue = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(catalogue, dict) or catalogue.get("sources") != sources_digest(folder):
        return None
    return catalogue


def catalogue() -> dict[str, Any]:
    """The kept catalogue while it describes the sources as they are, else built anew."""
    return kept() or build()


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "-"


def catalogue_text(c: dict[str, Any]) -> str:
    """Plain text: one line per entry (name, paper id, description), then its equation."""
    width = max(len(n) for n in [*c["placements"], *c["kinds"]]) + 2
    lines = ["Placements (norm=<name>)"]
    for name, e in c["placements"].items():
        lines.append(f"  {name:<{width}}{e['paper']:<12}{e['summary']}")
        lines.append(f"  {'':<{width}}{'':<12}{e['equation']}")
    lines += ["", "Kinds (norm.kind=<name>)"]
    for name, e in c["kinds"].items():
        lines.append(f"  {name:<{width}}{e['paper']:<12}{e['summary']}")
        lines.append(f"  {'':<{width}}{'':<12}{e['equation']}   options: {_options(e['options'])}")
    parallel = ", ".join(n for n, e in c["placements"].items() if e["parallel"])
    lines += ["", f"Papers are arXiv ids. model.block=parallel applies to: {parallel}."]
    return "\n".join(lines) + "\n"


def catalogue_markdown(c: dict[str, Any]) -> str:
    """Markdown tables of the placements and kinds (the README embeds this output)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def link(paper: str) -> str:
        return f"[{paper}](https://arxiv.org/abs/{paper})" if paper != "-" else "-"

    lines = [
        "| `norm=` | block equation | final norm | parallel | paper | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in c["placements"].items():
        lines.append(
            f"| `{name}` | `{cell(e['equation'])}` | {'yes' if e['final_norm'] else 'no'} | "
            f"{'yes' if e['parallel'] else 'no'} | {link(e['paper'])} | {cell(e['summary'])} |"
        )
    lines += [
        "",
        "| `norm.kind=` | formula | options (defaults) | paper | description |",
        "|---|---|---|---|---|",
    ]
    for name, e in c["kinds"].items():
        lines.append(
            f"| `{name}` | `{cell(e['equation'])}` | {_options(e['options'])} | "
            f"{link(e['paper'])} | {cell(e['summary'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """`normbench list [--markdown]`."""
    if argv not in ([], ["--markdown"]):
        raise NormbenchError(f"list takes no arguments but --markdown (got {' '.join(argv)})")
    c = catalogue()
    print(catalogue_markdown(c) if argv else catalogue_text(c), end="")


def write_kept(path: Path = KEPT) -> None:
    """Write the catalogue built from the classes to `path` (catalogue.json)."""
    path.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":  # python -m normbench.model.catalog: refresh catalogue.json
    write_kept()
    print(f"wrote {KEPT}", file=sys.stderr)
