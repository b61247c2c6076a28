"""The measures behind the claims judged on learning-rate sweeps (normbench/analysis/claims/
lr.py: claims 4, 5 and 8-12), as the pre-registration in docs/reproductions.md states them.

- **Cells** are lr_sensitivity's (normbench/analysis/sensitivity.py): the runs grouped by
  every config key that varies across them but the learning rate and the seed. A claim
  compares cells that differ in one or two keys (the placement, the warmup, the depth, ...)
  and share every other (`groups`): every such set found in the records is judged, and cells
  of other settings are ignored. Compared cells must share one learning-rate grid.
- **Grid steps.** A largest stable lr is counted in steps of its grid: its index on the grid
  (0 for the smallest lr), and "none" one step below the grid's smallest lr (-1). The grid
  must be geometric (`grid_ratio`): the step is the ratio of its ends to the power
  1/(n - 1) (half a decade in the LR setting, whose lrs 3e-4, 1e-3, ... are half-decades
  rounded), and each lr must lie within half a step of its index's power of it; a grid that
  is not has no count of steps, and the claim is Missing.
- **Intervals.** A difference of cells' statistics, or a contrast of several (`contrast`),
  has stats.bootstrap_samples's interval: each cell's seeds resampled on their own (a seed's
  runs across the grid together), the statistic recomputed on each resample, l* included
  and l0 fixed.
- **Gates.** A cell in which every run diverged or collapsed never trained (Cell.trained);
  `untrained` says which of the compared cells did not, with their numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from normbench.analysis.claims.verdict import OUT_OF_REGIME, Check, Missing, Verdict
from normbench.analysis.records import Run, one_vocab
from normbench.analysis.sensitivity import (
    LR,
    MIN_GRID,
    Cell,
    Seed,
    cells,
    curve,
    largest_stable,
    sensitivity,
    sensitivity_text,
    stable_text,
)
from normbench.analysis.stats import Interval, bootstrap_samples
from normbench.analysis.table import Axes, fmt, varying_keys
from normbench.run.axes import long, order

NAMES = {
    "post": "Post-LN",
    "pre": "Pre-LN",
    "deepnorm": "DeepNorm",
    "admin": "Admin",
    "b2t": "B2T",
    "mix": "Mix-LN",
    "peri": "Peri-LN",
}

Measure = Callable[[Sequence[Seed], Cell], float]  # a cell's statistic on (resampled) seeds


# --- the statistics of a cell on a list of its seeds --------------------------------------


def sens(seeds: Sequence[Seed], cell: Cell) -> float:
    """The LR sensitivity (nats)."""
    return sensitivity(seeds, cell.grid, cell.l0)


def best_loss(seeds: Sequence[Seed], cell: Cell) -> float:
    """l*: the minimum over the grid of the mean curve (nats)."""
    return min(curve(seeds, cell.grid, cell.l0).values())


def step_of(lr: float, grid: list[float]) -> int:
    """A largest stable lr in grid steps: its index on the grid, -1 for none (0)."""
    return -1 if lr == 0 else grid.index(lr)


def stable_steps(seeds: Sequence[Seed], cell: Cell) -> float:
    """The largest stable lr in grid steps."""
    return float(step_of(largest_stable(seeds, cell.grid, cell.l0), cell.grid))


def grid_ratio(grid: list[float]) -> float:
    """The grid's step (the ratio of consecutive lrs); Missing when the grid is too short or
    not geometric."""
    shown = ", ".join(f"{lr:g}" for lr in grid)
    if len(grid) < MIN_GRID:
        raise Missing(f"the lr grid ({shown}) has fewer than {MIN_GRID} learning rates")
    ratio = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1))
    at = [math.log(lr / grid[0]) / math.log(ratio) for lr in grid]
    if any(round(x) != i for i, x in enumerate(at)):
        raise Missing(
            f"the lr grid ({shown}) is not geometric, so a largest stable lr has no count of "
            "grid steps: sweep optim.lr over equal ratios (e.g. 3e-4,1e-3,...,3e-1)"
        )
    return ratio


def contrast(terms: Sequence[tuple[float, Cell]], measure: Measure) -> Interval:
    """sum of weight x measure(cell) over the terms, and its interval: each cell's seeds
    resampled on their own."""

    def statistic(samples: list[Sequence[Seed]]) -> float:
        return sum(w * measure(s, c) for (w, c), s in zip(terms, samples, strict=True))

    return bootstrap_samples([c.seeds for _, c in terms], statistic)


# --- cells of a claim ---------------------------------------------------------------------


def where(runs: list[Run], **values: Any) -> list[Run]:
    """The runs whose config has these values (keys by short name: depth=, warmup=, ...)."""
    return [r for r in runs if all(r.config.get(long(k)) == v for k, v in values.items())]


def lr_cells(runs: list[Run]) -> list[Cell]:
    """The cells of the runs (every varying key but the lr and the seed); none without runs."""
    if not runs:
        return []
    keys = [k for k in varying_keys(runs) if k != "seed"]
    axes = Axes(keys, LR, "depth", [], keys, vocab_limit=one_vocab(runs))
    return cells(runs, axes)


@dataclass
class Group:
    """Cells that share every setting but the compared keys."""

    at: dict[str, Any]  # the settings they share (short names)
    cells: dict[tuple[Any, ...], Cell]  # by their values of the compared keys

    def get(self, *values: Any) -> Cell | None:
        return self.cells.get(values)

    def values(self, i: int) -> list[Any]:
        """The values of the i-th compared key present, ascending."""
        return sorted({k[i] for k in self.cells}, key=order)


def groups(found: list[Cell], keys: Sequence[str]) -> list[Group]:
    """The cells grouped by their values of every key but `keys` (cells without one of
    `keys`, which then does not vary, are left out)."""
    out: dict[tuple[Any, ...], Group] = {}
    for c in found:
        if not all(k in c.values for k in keys):
            continue
        rest = tuple((k, v) for k, v in c.values.items() if k not in keys)
        group = out.setdefault(rest, Group(dict(rest), {}))
        group.cells[tuple(c.values[k] for k in keys)] = c
    return list(out.values())


def pairs(
    found: list[Cell], key: str, choose: Callable[[list[Any]], list[tuple[Any, Any]]]
) -> tuple[list[tuple[dict[str, Any], Cell, Cell]], list[str]]:
    """Every two cells that differ only in `key`, with the (base, other) values that
    `choose` picks among those of their group: (the settings they share, the base cell, the
    other), and the names of the pairs left out for not sharing one lr grid."""
    found_pairs, left_out = [], []
    for g in groups(found, (key,)):
        for a, b in choose(g.values(0)):
            base, other = g.cells[(a,)], g.cells[(b,)]
            if base.grid == other.grid:
                found_pairs.append((g.at, base, other))
            else:
                left_out.append(f"{name(base)} and {name(other)}")
    return found_pairs, left_out


# --- texts --------------------------------------------------------------------------------


def at_text(values: dict[str, Any]) -> str:
    """'Post-LN, depth 2, warmup 30': a cell's (or a group's) settings."""
    return ", ".join(
        NAMES.get(v, str(v)) if k == "norm" else f"{k} {fmt(v)}" for k, v in values.items()
    )


def name(cell: Cell) -> str:
    return at_text(cell.values)


def suffix(at: dict[str, Any], several: bool) -> str:
    """' (depth 8, warmup 30)' naming a comparison's shared settings where there are several
    comparisons of one kind; '' otherwise."""
    return f" ({at_text(at)})" if several and at else ""


def report(v: Verdict, cell: Cell) -> None:
    """The cell's LR sensitivity, largest stable lr and l* in the verdict's measured numbers
    (once)."""
    lines = [
        (f"{name(cell)}: LR sensitivity (nats)", sensitivity_text(cell)),
        (f"{name(cell)}: largest stable lr", stable_text(cell.stable) if cell.stable else "-"),
        (f"{name(cell)}: l* (nats), at lr", f"{cell.l_star:.4g} at {cell.best_lr:g}"),
    ]
    for line in lines:
        if line not in v.measured:
            v.measured.append(line)


def untrained(*compared: Cell) -> str:
    """Which compared cells never trained (every run diverged or collapsed), with their
    numbers; '' when every one trained."""
    out = []
    for c in compared:
        if not c.trained:
            n = sum(len(s.loss) for s in c.seeds)
            out.append(f"{name(c)} never trained (diverged or collapsed {n}/{n} runs)")
    return "; ".join(out)


def check(condition: str, measured: str, decision: str, gate: str) -> Check:
    """The condition decided by stats.py's decision, or out of regime when a gate blocks it
    (the gate's reason and numbers first)."""
    if gate:
        return Check(condition, f"{gate}; {measured}", OUT_OF_REGIME)
    return Check.decided(condition, measured, decision)


def left_out_note(v: Verdict, left_out: list[str]) -> None:
    if left_out:
        note = f"left out, not on one lr grid: {'; '.join(left_out)}"
        v.note = f"{v.note}; {note}" if v.note else note
