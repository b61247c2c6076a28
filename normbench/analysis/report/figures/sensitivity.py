"""The figures of an LR-sensitivity sweep (normbench/analysis/sensitivity.py):

- `lr_loss_<keys>.png`: final validation loss against the learning rate, one line per
  placement (the curve L(eta): mean over seeds of min(loss, l0)), a band over the seeds' range,
  one panel per depth; an x where a seed diverged (drawn at l0, the loss it is counted at), an
  open circle where one collapsed, a triangle at the largest stable lr; l0 dotted. One figure
  per value of the other keys (the warmup, ...).
- `lr_sensitivity_depth.png`: LR sensitivity and the largest stable lr against depth, with
  their intervals, one colour per placement and a line style per value of the other keys
  (each series shifted by 2 % along the depth axis so that equal values stay visible).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from normbench.analysis.report.figures.style import pyplot, save, slug, vocab_suffix
from normbench.analysis.sensitivity import Cell
from normbench.analysis.table import Axes, fmt
from normbench.run.record.summary import Status

STYLES = ["-", "--", ":", "-."]


def _other(cell: Cell) -> tuple[tuple[str, Any], ...]:
    """The cell's keys but the placement and the depth."""
    return tuple((k, v) for k, v in cell.values.items() if k not in ("norm", "depth"))


def _label(pairs: tuple[tuple[str, Any], ...]) -> str:
    return " ".join(f"{k}={fmt(v)}" for k, v in pairs)


def _draw_cell(ax: Any, cell: Cell, color: Any) -> None:
    grid = list(cell.curve)
    low = [min(min(s.loss[lr], cell.l0) for s in cell.seeds if lr in s.loss) for lr in grid]
    high = [max(min(s.loss[lr], cell.l0) for s in cell.seeds if lr in s.loss) for lr in grid]
    ax.fill_between(grid, low, high, color=color, alpha=0.18, linewidth=0)
    name = str(cell.values.get("norm", ""))
    ax.plot(grid, [cell.curve[lr] for lr in grid], "-", color=color, label=name, marker=".")
    for lr in grid:
        kinds = {s.failed[lr] for s in cell.seeds if lr in s.failed}
        if Status.DIVERGED in kinds:  # at l0: a diverged run's loss is clipped to it
            ax.plot([lr], [cell.l0], Status.DIVERGED.marker, color=color, markersize=8, mew=2)
        if Status.COLLAPSED in kinds:
            marker = Status.COLLAPSED.marker
            ax.plot([lr], [cell.curve[lr]], marker, mfc="none", color=color, markersize=8)
    if cell.stable is not None and cell.stable.estimate > 0:
        lr = cell.stable.estimate
        ax.plot([lr], [cell.curve[lr]], "^", color=color, markersize=8)


def loss_vs_lr(out: Path, found: list[Cell], axes: Axes, colors: dict[str, Any]) -> list[Path]:
    plt = pyplot()
    paths = []
    for other in dict.fromkeys(_other(c) for c in found):
        group = [c for c in found if _other(c) == other]
        depths = list(dict.fromkeys(c.values.get("depth") for c in group))
        fig, axs = plt.subplots(
            1, len(depths), figsize=(4.2 * len(depths) + 0.8, 3.8), squeeze=False, sharey=True
        )
        for ax, depth in zip(axs[0], depths, strict=True):
            for cell in (c for c in group if c.values.get("depth") == depth):
                _draw_cell(ax, cell, colors.get(str(cell.values.get("norm")), "k"))
            l0 = max(c.l0 for c in group)
            ax.axhline(l0, color="0.5", linestyle=":", linewidth=1, label="l0 (init)")
            ax.set_xscale("log")
            ax.set_xlabel("peak learning rate")
            ax.set_title(f"depth {fmt(depth)}" if depth is not None else "")
            ax.grid(alpha=0.3)
        axs[0][0].set_ylabel("final val/loss, min(loss, l0), mean over seeds")
        axs[0][0].legend(loc="lower left")
        n = max(len(c.seeds) for c in group)
        fig.suptitle(
            f"{_label(other)}{vocab_suffix(axes)}: band = seed range (n={n}); "
            "x diverged, o collapsed, ^ largest stable lr"
        )
        fig.tight_layout()
        paths.append(save(fig, out, "lr_loss_" + slug(_label(other) or "all")))
    return paths


def _error_bars(values: list[Any], attr: str, none: float) -> tuple[list[float], list[list[float]]]:
    """Estimates and error bars; a largest stable lr of 0 (none) is drawn at `none`."""

    def at(x: float) -> float:
        return none if attr == "stable" and x == 0 else x

    est = [at(getattr(c, attr).estimate) for c in values]
    lo = [at(getattr(c, attr).lo) for c in values]
    hi = [at(getattr(c, attr).hi) for c in values]
    err = [
        [max(e - low, 0.0) if low == low else 0.0 for e, low in zip(est, lo, strict=True)],
        [max(high - e, 0.0) if high == high else 0.0 for e, high in zip(est, hi, strict=True)],
    ]
    return est, err


def sensitivity_vs_depth(
    out: Path, found: list[Cell], axes: Axes, colors: dict[str, Any]
) -> list[Path]:
    if len({c.values.get("depth") for c in found}) < 2:
        return []
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    others = list(dict.fromkeys(_other(c) for c in found))
    series = dict.fromkeys((str(c.values.get("norm")), _other(c)) for c in found)
    for norm, other in series:
        cs = sorted(
            (c for c in found if str(c.values.get("norm")) == norm and _other(c) == other),
            key=lambda c: c.values.get("depth"),
        )
        # series side by side (a 2 % shift per series) so that equal values stay visible
        shift = 1 + 0.02 * (list(series).index((norm, other)) - (len(series) - 1) / 2)
        depths = [c.values.get("depth") * shift for c in cs]
        style = STYLES[others.index(other) % len(STYLES)]
        label = f"{norm} {_label(other)}".strip()
        for ax, attr in ((left, "sensitivity"), (right, "stable")):
            est, err = _error_bars(cs, attr, none=min(c.grid[0] for c in found) / 3)
            ax.errorbar(
                depths,
                est,
                yerr=err,
                color=colors.get(norm, "k"),
                linestyle=style,
                marker="o",
                capsize=3,
                label=label,
            )
    left.set_ylabel("LR sensitivity (nats)")
    right.set_ylabel("largest stable lr")
    right.set_yscale("log")
    grid = sorted({lr for c in found for lr in c.grid})
    right.set_yticks([grid[0] / 3, *grid], ["none", *(f"{lr:g}" for lr in grid)])
    right.minorticks_off()
    for ax in (left, right):
        ax.set_xlabel("depth")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    n = max(len(c.seeds) for c in found)
    fig.suptitle(
        f"LR sensitivity and largest stable lr{vocab_suffix(axes)}: "
        f"bootstrap intervals over n={n} seeds"
    )
    fig.tight_layout()
    return [save(fig, out, "lr_sensitivity_depth")]


def lr_figures(out: Path, found: list[Cell], axes: Axes, colors: dict[str, Any]) -> list[Path]:
    return loss_vs_lr(out, found, axes, colors) + sensitivity_vs_depth(out, found, axes, colors)
