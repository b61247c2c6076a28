"""The figures of `normbench compare` (matplotlib, PNG and SVG, readable in print).

Colour always means placement (the same colour in every figure); line style means split
(train solid, validation dashed); an x marks a divergence event.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from normbench.analysis.records import Run
from normbench.analysis.report.figures.style import facet_title, pyplot, save, slug, vocab_suffix
from normbench.analysis.stats import finite, mean_or_nan
from normbench.analysis.table import Axes, describe, fmt, group_runs
from normbench.run.axes import order, short
from normbench.run.data import vocab
from normbench.run.record.summary import Status


def uniform_loss(axes: Axes) -> float:
    """ln(vocab): the loss of a uniform guess over the runs' vocabulary (GPT-2's 50,257 or
    data.vocab_limit)."""
    return math.log(vocab.data_vocab(axes.vocab_limit))


def placement_colors(runs: list[Run]) -> dict[str, Any]:
    plt = pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(str(r.config.get("norm.name")) for r in runs))
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def report_figures(out: Path, runs: list[Run], axes: Axes) -> dict[str, list[Path]]:
    colors = placement_colors(runs)
    return {
        "stability": stability_maps(out, runs, axes),
        "curves": loss_curves(out, runs, axes, colors),
        "layers": layer_profiles(out, runs, axes, colors),
        "divergence": divergence_maps(out, runs, axes),
    }


def loss_curves(out: Path, runs: list[Run], axes: Axes, colors: dict[str, Any]) -> list[Path]:
    """One figure per group: train (solid) and validation (dashed) loss against tokens, an x
    at each divergence event. A group with a blow-up gets a log loss axis."""
    plt = pyplot()
    paths = []
    uniform = uniform_loss(axes)
    for values, members in group_runs(runs, axes.group_by).items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        labelled: set[str] = set()
        seen: list[float] = []
        for run in members:
            norm = str(run.config.get("norm.name"))
            c = colors[norm]
            label = None if norm in labelled else norm
            labelled.add(norm)
            train = [r for r in run.rows("train/loss") if math.isfinite(r["train/loss"])]
            val = [r for r in run.rows("val/loss") if math.isfinite(r["val/loss"])]
            x, y = [r["tokens"] for r in train], [r["train/loss"] for r in train]
            ax.plot(x, y, color=c, lw=1.2, alpha=0.85, label=label)
            vx, vy = [r["tokens"] for r in val], [r["val/loss"] for r in val]
            ax.plot(vx, vy, color=c, lw=1.2, ls="--", marker=".", alpha=0.85)
            seen += y + vy
            for event in run.events:
                before = [r["train/loss"] for r in train if r["step"] <= event["step"]]
                at = (event["tokens"], before[-1] if before else uniform)
                if event["kind"] == "collapse":  # judged on the validation loss: mark it there
                    at = (event["tokens"], event["value"])
                ax.plot(*at, "x", color=c, ms=9, mew=2)
                ax.annotate(event["kind"], at, textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=c)  # fmt: skip
        # where a collapsed run ends (normbench/run/monitor/collapse.py), always in view
        unigram = mean_or_nan(r.unigram_val_ce for r in members)
        if seen and max(seen) > 2 * uniform:  # a blow-up: a log axis shows it and the rest
            ax.set_yscale("log")
        elif seen:
            low = min(min(seen), uniform, unigram if math.isfinite(unigram) else uniform)
            ax.set_ylim(max(0.0, low - 0.5), uniform + 1.0)
        ax.axhline(uniform, color="#999", lw=0.8, ls=":")
        ax.annotate("ln(vocab)", (0, uniform), xycoords=("axes fraction", "data"), fontsize=7,
                    color="#777", xytext=(2, 2), textcoords="offset points")  # fmt: skip
        if math.isfinite(unigram):
            ax.axhline(unigram, color="#e08000", lw=0.8, ls=":")
            ax.annotate("unigram (val)", (1, unigram), xycoords=("axes fraction", "data"),
                        fontsize=7, color="#e08000", xytext=(-2, 2), textcoords="offset points",
                        ha="right")  # fmt: skip
        seeds = sorted({fmt(r.config.get("seed")) for r in members})
        ax.set(xlabel="tokens seen", ylabel="loss (nats per token)")
        ax.set_title(
            f"{facet_title(axes.group_by, values)} (seeds {' '.join(seeds)}){vocab_suffix(axes)}"
        )
        ax.grid(alpha=0.3)
        ax.legend(title="norm (train solid, val dashed)", loc="best")
        paths.append(save(fig, out, f"curves_{slug(facet_title(axes.group_by, values))}"))
    return paths


def _loss_range(runs: list[Run]) -> tuple[float, float]:
    """The colour scale of the stability maps: the completed runs' final validation losses."""
    done = finite(r.summary.get("val_loss") for r in runs if r.status == Status.COMPLETED)
    vmin, vmax = (min(done), max(done)) if done else (0.0, 1.0)
    return vmin, max(vmax, vmin + 1e-6)


def _stability_cell(ax: Any, i: int, j: int, cell: list[Run], vrange: tuple[float, float]) -> float:
    """Cell (i, j) of a stability map: its runs' mean final validation loss (returned: NaN
    when none completed), the count of diverged runs (a red frame, hatched x when none
    completed), of collapsed ones (an orange dashed frame, hatched / when none completed;
    inside the red one when both) or of failed ones."""
    plt = pyplot()
    ok = [
        r.summary["val_loss"]
        for r in cell
        if r.status == Status.COMPLETED and r.summary.get("val_loss") is not None
    ]
    div, col = sum(r.diverged for r in cell), sum(r.collapsed for r in cell)
    value = mean_or_nan(ok)
    text = f"{value:.3f}" if ok else ""
    for count, edge, hatch, inset, style, mark in (
        (div, "#c00000", "xx", 0.0, "solid", f"✕ {div}/{len(cell)} diverged"),
        (col, "#e08000", "//", 0.06 if div else 0.0, "dashed", f"≈ {col}/{len(cell)} collapsed"),
    ):
        if not count:
            continue
        ax.add_patch(
            plt.Rectangle((j - 0.5 + inset, i - 0.5 + inset), 1 - 2 * inset, 1 - 2 * inset,
                          fill=not ok and not inset, facecolor="#d9d9d9", edgecolor=edge, lw=2,
                          ls=style, hatch=hatch if not ok else None)
        )  # fmt: skip
        text = (text + "\n" if text else "") + mark
    if not (ok or div or col):
        text = f"{len(cell)} failed"
    dark = ok and value < sum(vrange) / 2
    color = "#c00000" if div else "#a05000" if col else "white" if dark else "black"
    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    return value


def _stability_panel(
    ax: Any,
    members: list[Run],
    axes: Axes,
    xs: list[Any],
    ys: list[Any],
    vrange: tuple[float, float],
) -> Any:
    """One panel: the runs of one facet over x and y; returns its image (for the colour bar)."""

    value = np.full((len(ys), len(xs)), np.nan)
    for (xv, yv), cell in group_runs(members, [axes.x, axes.y]).items():
        i, j = ys.index(yv), xs.index(xv)
        value[i, j] = _stability_cell(ax, i, j, cell, vrange)
    vmin, vmax = vrange
    image = ax.imshow(value, cmap="viridis", vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), [fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [fmt(v) for v in ys])
    ax.set_xlabel(short(axes.x))
    ax.set_ylabel(short(axes.y))
    return image


def _failures(runs: list[Run], noun: str = "") -> str:
    """`k/n diverged`, and `, c/n collapsed` when any run collapsed."""
    text = f"{sum(r.diverged for r in runs)}/{len(runs)} {noun}diverged"
    if collapsed := sum(r.collapsed for r in runs):
        text += f", {collapsed}/{len(runs)} collapsed"
    return text


def stability_maps(out: Path, runs: list[Run], axes: Axes) -> list[Path]:
    """Per placement: final validation loss over x and y (one panel per value of the other
    varying keys), diverged and collapsed runs marked and counted in their cells."""
    plt = pyplot()
    xs = sorted({r.config.get(axes.x) for r in runs}, key=order)
    ys = sorted({r.config.get(axes.y) for r in runs}, key=order)
    facet_keys = [k for k in axes.config_keys if k not in ("norm.name", axes.x, axes.y)]
    vrange = _loss_range(runs)
    paths = []
    for norm, by_norm in group_runs(runs, ["norm.name"]).items():
        facets = group_runs(by_norm, facet_keys)
        n = len(facets)
        cols = min(n, 3)
        rows_n = math.ceil(n / cols)
        fig, grid = plt.subplots(
            rows_n,
            cols,
            # room for the two-line titles (the counts on a line of their own)
            figsize=(max(4.4, 1.6 + 1.25 * len(xs) * cols), 1.8 + 1.1 * len(ys) * rows_n),
            squeeze=False,
            layout="constrained",
        )
        image = None
        for ax, (values, members) in zip(grid.flat, facets.items(), strict=False):
            image = _stability_panel(ax, members, axes, xs, ys, vrange)
            title = textwrap.fill(f"{facet_title(facet_keys, values)}:", 36 + 8 * len(xs))
            ax.set_title(f"{title}\n{_failures(members)}")
        for ax in list(grid.flat)[n:]:
            ax.axis("off")
        if image is not None:
            fig.colorbar(image, ax=grid, label="final val/loss (nats),\nmean over seeds")
        fig.suptitle(
            f"stability map: norm={fmt(norm[0])}\n({_failures(by_norm, 'runs ')})"
            f"{vocab_suffix(axes)}"
        )
        paths.append(save(fig, out, f"stability_{slug(str(norm[0]))}"))
    return paths


def _layer_values(summary_diag: dict[str, Any], prefix: str) -> tuple[list[int], list[float]]:
    pairs = []
    for key, value in summary_diag.items():
        m = re.fullmatch(rf"{prefix}/block_(\d+)", key)
        if m and value is not None and math.isfinite(value) and value > 0:
            pairs.append((int(m.group(1)), value))
    pairs.sort()
    return [p[0] for p in pairs], [p[1] for p in pairs]


def layer_profiles(out: Path, runs: list[Run], axes: Axes, colors: dict[str, Any]) -> list[Path]:
    """Per group: gradient norm and residual RMS per block, from each run's last diagnostics."""
    plt = pyplot()
    paths = []
    for values, members in group_runs(runs, axes.group_by).items():
        with_diag = [r for r in members if r.summary.get("diag")]
        if not with_diag:
            continue
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        labelled: set[str] = set()
        for run in with_diag:
            norm = str(run.config.get("norm.name"))
            style = dict(color=colors[norm], marker="x" if run.diverged else ".", lw=1.2)
            label = None if norm in labelled else norm
            labelled.add(norm)
            diag = run.summary["diag"]
            a.plot(*_layer_values(diag, "grad_norm"), label=label, **style)
            b.plot(*_layer_values(diag, "resid_rms"), label=label, **style)
        a.set(xlabel="block l", ylabel="gradient norm (before clipping)", yscale="log")
        a.set_title("gradient norm per block")
        b.set(
            xlabel="block l (input of the block)", ylabel="RMS of the residual stream", yscale="log"
        )
        b.set_title("residual stream entering each block")
        for ax in (a, b):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(title="norm (x: diverged, at the failure)")
        steps = sorted({str(r.summary["diag"].get("step")) for r in with_diag})
        fig.suptitle(
            f"{facet_title(axes.group_by, values)}: per-layer diagnostics at step {fmt(' '.join(steps))}"
        )
        paths.append(save(fig, out, f"layers_{slug(facet_title(axes.group_by, values))}"))
    return paths


def _history_panel(fig: Any, ax: Any, history: list[dict[str, Any]], prefix: str) -> None:
    """One statistic (`grad_norm` or `resid_rms`) of every block over the ring buffer's
    steps, in log colour; non-finite values marked."""

    steps = [h["step"] for h in history]
    pattern = rf"{prefix}/block_(\d+)"
    blocks = sorted(
        {int(m.group(1)) for h in history for k in h if (m := re.fullmatch(pattern, k))}
    )
    if not blocks:
        ax.axis("off")
        return
    width = max(2, len(str(max(blocks))))
    grid = np.array(
        [[h.get(f"{prefix}/block_{b:0{width}d}") for h in history] for b in blocks],
        dtype=float,
    )
    bad = ~np.isfinite(grid)
    finite_values = grid[~bad & (grid > 0)]
    norm = (
        LogNorm(vmin=finite_values.min(), vmax=finite_values.max())
        if finite_values.size and finite_values.max() > finite_values.min()
        else None
    )
    shown = np.where(bad | (grid <= 0), np.nan, grid)
    extent = (steps[0] - 0.5, steps[-1] + 0.5, 0.5, len(blocks) + 0.5)
    im = ax.imshow(shown, aspect="auto", origin="lower", cmap="magma", norm=norm, extent=extent)
    ys, xs = np.nonzero(bad)
    ax.plot(np.array(steps)[xs], ys + 1, "s", color="#00bfff", ms=4, label="non-finite")
    ax.set(xlabel="step", ylabel="block l", title=f"{prefix} per block (log colour)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax)


def divergence_maps(out: Path, runs: list[Run], axes: Axes, limit: int = 12) -> list[Path]:
    """For each diverged run (at most `limit`): the ring buffer of its first event, as
    heatmaps of the gradient norm and residual RMS of each block over the last steps."""
    plt = pyplot()
    paths = []
    for run in [r for r in runs if r.diverged and r.events][:limit]:
        event = run.events[0]
        history = event.get("history") or []
        if not history:
            continue
        fig, panels = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        for ax, prefix in zip(panels, ("grad_norm", "resid_rms"), strict=True):
            _history_panel(fig, ax, history, prefix)
        first = event.get("blame", {}).get("first_nonfinite")
        where = f"; first non-finite: {first['key']} at step {first['step']}" if first else ""
        fig.suptitle(
            f"{describe(run, axes.varying)}: {event['kind']} at step {event['step']}{where}"
        )
        paths.append(save(fig, out, f"divergence_{slug(run.label)}"))
    return paths
