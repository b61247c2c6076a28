"""The figures of `normbench probe` (normbench/run/probe.py): per placement, a curve per
depth (`probe_<placement>.png` and .svg), and the placements compared at the largest depth
(`probe.png` and .svg). Three panels each: the weights' gradient norms per block, the
hidden-state norms per block (with the post-norm placements' residual sum before its norm),
and the output change after one AdamW step per depth.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from normbench.analysis.report.figures.style import pyplot


def _depth_ticks(ax: Any, depths: list[int]) -> None:
    """Depths as plain numbers on the log axis."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_locator(NullLocator())  # (the y axis keeps its labels within a decade)


def _curves(ax: Any, rows: list[dict[str, Any]], key: str, label: str, **style: Any) -> None:
    rows = [r for r in rows if r.get(key) is not None]
    ax.plot([r["layer"] for r in rows], [r[key] for r in rows], label=label, **style)


def _presum(ax: Any, rows: list[dict[str, Any]], **style: Any) -> None:
    """The post-norm placements' Lemma 2 quantity beside the hidden norms: the root of the
    mean squared norm of the sum x + M(x) before its norm (none for the other placements)."""
    rows = [r for r in rows if r.get("presum_sq_mlp") is not None]
    if rows:
        ys = [math.sqrt(r["presum_sq_mlp"]) for r in rows]
        ax.plot([r["layer"] for r in rows], ys, linestyle=":", label="_", **style)


def _panels(fig: Any) -> list[Any]:
    """Gradient norms per block, hidden-state norms per block, output change per depth."""
    axes = fig.subplots(1, 3)
    axes[0].set(xlabel="block l", ylabel="gradient norm of weights", yscale="log")
    axes[0].set_title("gradient norm at init (solid: MLP, dashed: attention)", fontsize=9)
    axes[1].set(xlabel="block l (N + 1: output)", ylabel="mean ||x_l||", yscale="log")
    axes[1].set_title("hidden-state norm entering block l (dotted: ||x + M(x)|| before Norm)",
                      fontsize=9)  # fmt: skip
    axes[2].set(xlabel="depth N", ylabel="RMS change", xscale="log", yscale="log")
    axes[2].set_title("output change after one AdamW step", fontsize=9)
    return axes


def _save(fig: Any, run_dir: Path, stem: str) -> list[Path]:
    paths = [run_dir / f"{stem}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.06)
    pyplot().close(fig)
    return paths


def _placement_figure(run_dir: Path, table: dict[str, Any], norm: str) -> list[Path]:
    """`probe_<norm>.png`/.svg: one placement, a curve per depth."""
    plt = pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({r["depth"] for r in table["layers"]})
    fig = plt.figure(figsize=(13, 3.8), layout="constrained")
    axes = _panels(fig)
    for j, depth in enumerate(depths):
        rows = [r for r in table["layers"] if r["norm"] == norm and r["depth"] == depth]
        c = colors[j % len(colors)]
        _curves(axes[0], rows, "grad_mlp", f"N = {depth}", color=c)
        _curves(axes[0], rows, "grad_attn", "_", color=c, linestyle="--")
        _curves(axes[1], rows, "hidden_norm", f"N = {depth}", color=c)
        _presum(axes[1], rows, color=c)
    models = [m for m in table["models"] if m["norm"] == norm]
    axes[2].plot([m["depth"] for m in models], [m["output_change"] for m in models], "o-")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    _depth_ticks(axes[2], depths)
    fig.suptitle(f"normbench probe: norm={norm}")
    return _save(fig, run_dir, f"probe_{norm}")


def _comparison_figure(run_dir: Path, table: dict[str, Any], norms: list[str]) -> list[Path]:
    """`probe.png`/.svg: the placements compared, the per-layer panels at the largest depth."""
    plt = pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({r["depth"] for r in table["layers"]})
    deepest = depths[-1]
    fig = plt.figure(figsize=(13, 3.8), layout="constrained")
    axes = _panels(fig)
    for j, norm in enumerate(norms):
        c = colors[j % len(colors)]
        rows = [r for r in table["layers"] if r["norm"] == norm and r["depth"] == deepest]
        _curves(axes[0], rows, "grad_mlp", norm, color=c)
        _curves(axes[0], rows, "grad_attn", "_", color=c, linestyle="--")
        _curves(axes[1], rows, "hidden_norm", norm, color=c)
        _presum(axes[1], rows, color=c)
        models = [m for m in table["models"] if m["norm"] == norm]
        x, y = [m["depth"] for m in models], [m["output_change"] for m in models]
        axes[2].plot(x, y, "o-", color=c, label=norm)
    for ax in axes:
        ax.legend(fontsize=8)
    _depth_ticks(axes[2], depths)
    fig.suptitle(f"normbench probe: placements compared (per-layer panels at N = {deepest})")
    return _save(fig, run_dir, "probe")


def plot(run_dir: Path, table: dict[str, Any]) -> list[Path]:
    """A figure per placement (`probe_<norm>.png`/.svg) and one comparing them (`probe.png`)."""
    norms = list(dict.fromkeys(r["norm"] for r in table["layers"]))
    written = []
    for norm in norms:
        written += _placement_figure(run_dir, table, norm)
    return written + _comparison_figure(run_dir, table, norms)
