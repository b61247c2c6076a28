"""Markdown tables, written one way: the report's summary, the records left out, the
verdicts and the probe's tables all use `table`."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any, escape_html: bool = True) -> str:
    """A table cell showing `value` as written: HTML special characters escaped (unless the
    text is escaped already), a `|` (which would end the cell) backslashed, line breaks as
    spaces."""
    text = str(value)
    if escape_html:
        text = html.escape(text, quote=False)
    return " ".join(text.replace("|", "\\|").splitlines())


def table(head: Sequence[Any], rows: Iterable[Sequence[Any]], escape_html: bool = True) -> str:
    """The lines of a table (no newline after the last one)."""
    lines = ["| " + " | ".join(cell(h, escape_html) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c, escape_html) for c in row) + " |" for row in rows]
    return "\n".join(lines)
