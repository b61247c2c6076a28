"""The layout of a sweep's W&B dashboard, drawn from its dashboard.json: `dashboard.png`.

One box per block of the report, top to bottom as in W&B (normbench/analysis/report/wandb_report.py
builds the same blocks): the header, the runs table and parallel coordinates, the lr panels,
the line-panel grids (the first MAX_GRIDS, then how many more), the verdicts. Each panel box
names its metrics, so that the page shows what the published report will hold without an
account.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from normbench.analysis.report.figures.style import pyplot, save

MAX_GRIDS = 3
WIDTH = 10.0  # inches; one row of boxes per line of the layout
ROW = 1.15


def _rows(spec: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(heading, one text per box) per row of the layout."""
    c = spec["header"]["counts"]
    axes = "; ".join(f"{k}: {', '.join(v)}" for k, v in spec["header"]["axes"].items())
    rows = [
        (
            "header",
            [
                f"{c['runs']} runs: {c['completed']} completed, {c['diverged']} diverged, "
                f"{c['collapsed']} collapsed\n{axes}"
            ],
        ),  # fmt: skip
        (
            f"runs table, grouped by {', '.join(spec['table']['groupby']) or '-'}",
            [
                "columns: " + ", ".join(spec["table"]["columns"]),
                "parallel coordinates: "
                + " | ".join(next(iter(col.values())) for col in spec["parallel"]),
            ],
        ),
    ]
    if spec["lr"]:
        rows.append(
            ("final loss against lr, a run set per placement",
             [f"{p['title']}\n{', '.join(s['name'] for s in p['runsets'])}" for p in spec["lr"]])
        )  # fmt: skip
    panels = [f"{p['title']}\n{_keys(p['y'])} vs {p['x']}" for p in spec["curves"]["panels"]]
    grids = spec["curves"]["grids"] if panels else []
    for grid in grids[:MAX_GRIDS]:
        rows.append((f"training: {grid['title']}, grouped by placement", panels))
    if len(grids) > MAX_GRIDS:
        rows.append((f"... {len(grids) - MAX_GRIDS} more grids of the same panels", []))
    if spec.get("verdicts"):
        count = spec["verdicts"].count("\n### ")
        rows.append(("verdicts", [f"the verdicts table ({max(count, 1)} claims)"]))
    return rows


def _keys(ys: list[str]) -> str:
    return ys[0] if len(ys) == 1 else f"{ys[0]} ... ({len(ys)} metrics)"


def layout_figure(out: Path, spec: dict[str, Any]) -> Path:
    """dashboard.png and .svg in `out`: the blocks of the report, as boxes."""
    plt = pyplot()
    rows = _rows(spec)
    height = 0.9 + ROW * len(rows)
    fig = plt.figure(figsize=(WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.text(0.15, 0.45, f"W&B report: {spec['title']}", fontsize=11, weight="bold", va="center")
    top = 0.9
    for heading, boxes in rows:
        ax.text(0.15, top + 0.12, heading, fontsize=8.5, style="italic", va="center")
        n = max(len(boxes), 1)
        width = (WIDTH - 0.3 - 0.1 * (n - 1)) / n
        for i, text in enumerate(boxes):
            x = 0.15 + i * (width + 0.1)
            ax.add_patch(
                plt.Rectangle((x, top + 0.25), width, ROW - 0.38, fc="#f4f6fb", ec="#8a94a6")
            )
            chars = max(12, int(width * 15))
            lines = [w for line in text.split("\n") for w in textwrap.wrap(line, chars)]
            body = "\n".join(lines[:4]) + ("\n..." if len(lines) > 4 else "")
            ax.text(x + 0.08, top + 0.32, body, fontsize=7, va="top", family="monospace")
        top += ROW
    return save(fig, out, "dashboard")
