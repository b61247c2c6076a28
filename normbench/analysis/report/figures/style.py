"""The look every figure of a report shares: pyplot set up for print, the files a figure is
saved as (PNG for the page, SVG for print), and the labels of a figure's title and name."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from normbench.analysis.table import Axes, fmt
from normbench.run.axes import short
from normbench.run.data import vocab


def vocab_suffix(axes: Axes) -> str:
    """` [vocab K]` for a reduced vocabulary (its losses are not comparable with the full
    vocabulary's), nothing for the full one."""
    return "" if axes.vocab_limit is None else f" [{vocab.label(axes.vocab_limit)}]"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    # svg.fonttype none: text stays text in the SVG (searchable, editable for print)
    plt.rcParams.update(
        {"font.size": 9, "axes.titlesize": 9, "legend.fontsize": 8, "svg.fonttype": "none"}
    )
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:120] or "all"


DPI = 110


def save(fig: Any, out: Path, stem: str) -> Path:
    """PNG (embedded in the page) and SVG (for print) side by side; returns the PNG. The
    image is cut to the figure's artists (bbox_inches="tight"), so that every label is inside
    it (a colour bar's label can be longer than a short figure is high)."""
    plt = pyplot()
    png = out / f"{stem}.png"
    fig.savefig(png, dpi=DPI, bbox_inches="tight", pad_inches=0.06)
    fig.savefig(out / f"{stem}.svg", bbox_inches="tight", pad_inches=0.06)
    plt.close(fig)
    return png


def facet_title(keys: list[str], values: tuple[Any, ...]) -> str:
    return (
        ", ".join(f"{short(k)}={fmt(v)}" for k, v in zip(keys, values, strict=True)) or "all runs"
    )
