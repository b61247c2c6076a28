"""The one markdown writer of the analysis layer: summary.md, verdicts.md and probe.md.

Values are shown as data, never as markup: HTML special characters are escaped in every
text and cell (labels and config values come from the records), and so are the brackets of
markdown's links and images (`[text](url)`, `![alt](url)`: a label could otherwise embed a
remote image); in a table cell a `|` (which would end the cell) is backslashed and line
breaks become spaces.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any


def text(value: Any) -> str:
    """`value` in markdown prose, shown as written (HTML special characters and the brackets
    of links and images escaped)."""
    escaped = html.escape(str(value), quote=False)
    return escaped.replace("[", "\\[").replace("]", "\\]")


def cell(value: Any) -> str:
    """`value` in a markdown table cell, shown as written."""
    escaped = text(value).replace("|", "\\|")
    return " ".join(escaped.splitlines())


def table(head: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (every line ending in a newline)."""
    lines = [_row(head), "|" + "---|" * len(head)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"
