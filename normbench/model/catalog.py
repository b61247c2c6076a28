"""The catalogue of placements and kinds, generated from the classes (`normbench list`).

Names, papers, summaries and equations come from the registries and the classes' docstrings,
so the printed catalogue and the README's table (`normbench list --markdown`) cannot drift
from the code.
"""

from __future__ import annotations

from normbench.model.kinds import KINDS
from normbench.model.placements import PLACEMENTS


def equation(cls: type) -> str:
    """The first line of a class's docstring: its equation."""
    return (cls.__doc__ or "").strip().splitlines()[0].strip()


def _options(cls: type) -> str:
    return ", ".join(f"{k}={v}" for k, v in cls.options.items()) or "-"


def catalogue_text() -> str:
    """Plain text: one line per entry (name, paper id, description), then its equation."""
    width = max(len(n) for n in [*PLACEMENTS, *KINDS]) + 2
    lines = ["Placements (norm=<name>)"]
    for name, cls in PLACEMENTS.items():
        lines.append(f"  {name:<{width}}{cls.paper:<12}{cls.summary}")
        lines.append(f"  {'':<{width}}{'':<12}{equation(cls)}")
    lines += ["", "Kinds (norm.kind=<name>)"]
    for name, cls in KINDS.items():
        lines.append(f"  {name:<{width}}{cls.paper:<12}{cls.summary}")
        lines.append(f"  {'':<{width}}{'':<12}{equation(cls)}   options: {_options(cls)}")
    lines += [
        "",
        "Papers are arXiv ids. model.block=parallel applies to: "
        + ", ".join(n for n, c in PLACEMENTS.items() if c.parallel)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def catalogue_markdown() -> str:
    """Markdown tables of the placements and kinds (the README embeds this output)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def link(paper: str) -> str:
        return f"[{paper}](https://arxiv.org/abs/{paper})" if paper != "-" else "-"

    lines = [
        "| `norm=` | block equation | final norm | parallel | paper | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, cls in PLACEMENTS.items():
        lines.append(
            f"| `{name}` | `{cell(equation(cls))}` | {'yes' if cls.final_norm else 'no'} | "
            f"{'yes' if cls.parallel else 'no'} | {link(cls.paper)} | {cell(cls.summary)} |"
        )
    lines += [
        "",
        "| `norm.kind=` | formula | options (defaults) | paper | description |",
        "|---|---|---|---|---|",
    ]
    for name, cls in KINDS.items():
        lines.append(
            f"| `{name}` | `{cell(equation(cls))}` | {_options(cls)} | {link(cls.paper)} | "
            f"{cell(cls.summary)} |"
        )
    return "\n".join(lines) + "\n"
