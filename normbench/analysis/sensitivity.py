"""Learning-rate sensitivity of a sweep over the learning rate (Wortsman et al. 2023,
arXiv 2309.14322), as docs/studies.md states the procedure:

- a *cell* is one configuration but the learning rate and the seed (a placement at a depth,
  with a warmup, ...); its runs form a grid of peak learning rates × seeds;
- l(eta, s): a run's final validation loss; +inf for a run that diverged (a detector stopped
  it); a collapsed run keeps its measured loss;
- l0: the loss at initialization, the mean over the cell's runs of the training loss at step 1
  (ln(vocab) for records without it, and the table says so);
- the curve L(eta) = mean over seeds of min(l(eta, s), l0); l* = min over the grid of L;
- **LR sensitivity** = mean over the grid of L(eta) - l*;
- **largest stable lr**: the largest eta at which no seed diverged or collapsed and
  L(eta) <= l* + MARGIN (0.1 nats); 0 ("none") when none is.

Each has a bootstrap interval over seeds (normbench/analysis/stats.py): a resample draws the
cell's seeds with replacement, keeping each seed's runs across the grid together, and
recomputes the statistic, l* included (l0 stays fixed: it is the loss before training). Cells
that differ in one key (the placement, the warmup, the depth) are compared by the difference
of their LR sensitivities, on independent resamples: "higher" or "lower" when its interval
excludes 0, "not resolved (underpowered)" otherwise.

`normbench compare` recognizes such a sweep (the learning rate takes at least MIN_GRID
values) and writes lr_sensitivity.md, .csv and .json, a section of the page and the figures
(normbench/analysis/report/figures/sensitivity.py).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench.analysis import markdown
from normbench.analysis.records import Run, vocab_note
from normbench.analysis.stats import Interval, bootstrap, bootstrap_diff
from normbench.analysis.table import Axes, fmt, group_runs, write_csv
from normbench.run.axes import short
from normbench.run.data import vocab
from normbench.run.record.summary import Status

LR = "optim.lr"
MIN_GRID = 3  # learning rates a sweep needs to be read as an LR-sensitivity sweep
# Nats above l* within which a learning rate counts as stable; the claims' DELTA (a loss
# difference that counts, normbench/analysis/claims/verdict.py) is this margin.
MARGIN = 0.1


@dataclass(frozen=True)
class Seed:
    """One seed's runs across the grid: final loss (+inf when diverged) and failures."""

    seed: Any
    loss: dict[float, float]
    failed: dict[float, Status]  # lr -> DIVERGED | COLLAPSED


@dataclass
class Cell:
    """One configuration's grid and its statistics."""

    values: dict[str, Any]  # the cell's keys (short names) and values
    grid: list[float]
    seeds: list[Seed]
    l0: float
    l0_from: str  # "step 1" or "ln(vocab)"
    sensitivity: Interval | None = None
    stable: Interval | None = None
    curve: dict[float, float] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # runs of another status

    @property
    def l_star(self) -> float:
        return min(self.curve.values())

    @property
    def best_lr(self) -> float:
        return min(self.curve, key=self.curve.__getitem__)

    @property
    def trained(self) -> bool:
        """Did any run of the cell train (neither diverge nor collapse)? A cell in which
        every run failed has l* at the failures' level, and a small sensitivity that says
        only that every lr failed alike: it is flagged, and not compared."""
        return any(lr not in s.failed for s in self.seeds for lr in s.loss)


def is_lr_sweep(runs: list[Run]) -> bool:
    """Does the learning rate take MIN_GRID values or more?"""
    return len({r.config.get(LR) for r in runs if r.config.get(LR) is not None}) >= MIN_GRID


# --- the statistics on a list of seeds ---------------------------------------------------


def curve(seeds: Sequence[Seed], grid: list[float], l0: float) -> dict[float, float]:
    """L(eta): the mean over the seeds that ran eta of min(l(eta, s), l0)."""
    out = {}
    for lr in grid:
        losses = [min(s.loss[lr], l0) for s in seeds if lr in s.loss]
        if losses:
            out[lr] = statistics.fmean(losses)
    return out


def sensitivity(seeds: Sequence[Seed], grid: list[float], l0: float) -> float:
    """mean over the grid of L(eta) - l*."""
    c = curve(seeds, grid, l0)
    return statistics.fmean(c.values()) - min(c.values())


def largest_stable(seeds: Sequence[Seed], grid: list[float], l0: float) -> float:
    """The largest eta with no failed seed and L(eta) <= l* + MARGIN; 0 when none."""
    c = curve(seeds, grid, l0)
    best = min(c.values())
    stable = [
        lr
        for lr, value in c.items()
        if value <= best + MARGIN and not any(lr in s.failed for s in seeds if lr in s.loss)
    ]
    return max(stable, default=0.0)


# --- cells from the records ------------------------------------------------------------


def _final(run: Run) -> float:
    if run.diverged:
        return math.inf
    value = run.summary.get("val_loss")
    return float(value) if value is not None else math.inf


def _l0(runs: list[Run], vocab_limit: Any) -> tuple[float, str]:
    first = [
        float(row["train/loss"])
        for r in runs
        for row in r.rows("train/loss")[:1]
        if row.get("step") == 1 and math.isfinite(row["train/loss"])
    ]
    if first:
        return statistics.fmean(first), "step 1"
    return math.log(vocab.data_vocab(vocab_limit)), "ln(vocab)"


def _seeds(runs: list[Run]) -> list[Seed]:
    by_seed: dict[Any, Seed] = {}
    for r in runs:
        s = by_seed.setdefault(r.config.get("seed"), Seed(r.config.get("seed"), {}, {}))
        lr = float(r.config[LR])
        s.loss[lr] = _final(r)
        if r.status.failure:
            s.failed[lr] = r.status
    return [by_seed[k] for k in sorted(by_seed, key=str)]


def cells(runs: list[Run], axes: Axes) -> list[Cell]:
    """The cells of an LR sweep, their statistics and intervals computed."""
    keys = [k for k in axes.config_keys if k != LR]
    if "norm.name" not in keys:  # the placement names every cell, even when it is one
        keys.insert(0, "norm.name")
    found = []
    for values, members in group_runs(runs, keys).items():
        measured = [r for r in members if r.status.finished and r.config.get(LR) is not None]
        if not measured:
            continue
        grid = sorted({float(r.config[LR]) for r in measured})
        l0, l0_from = _l0(measured, axes.vocab_limit)
        cell = Cell(
            {short(k): v for k, v in zip(keys, values, strict=True)},
            grid,
            _seeds(measured),
            l0,
            l0_from,
            left_out=[f"{r.dir} ({r.status})" for r in members if r not in measured],
        )
        cell.curve = curve(cell.seeds, grid, l0)
        cell.sensitivity = bootstrap(cell.seeds, lambda s, c=cell: sensitivity(s, c.grid, c.l0))
        cell.stable = bootstrap(cell.seeds, lambda s, c=cell: largest_stable(s, c.grid, c.l0))
        found.append(cell)
    return found


# --- comparisons -------------------------------------------------------------------------


def _reference(key: str, values: list[Any]) -> Any:
    """The value others are compared with: Pre-LN for the placement, else the first."""
    return "pre" if key == "norm" and "pre" in values else values[0]


def differences(found: list[Cell]) -> list[dict[str, Any]]:
    """Every pair of cells that differ in one key only: the other's LR sensitivity minus the
    reference's, its interval, and what it says."""
    rows = []
    keys = list(found[0].values) if found else []
    for key in keys:
        values = list(dict.fromkeys(c.values[key] for c in found))
        ref = _reference(key, values)
        for cell in found:
            if cell.values[key] == ref:
                continue
            base = {**cell.values, key: ref}
            match = [c for c in found if c.values == base]
            if not match:
                continue
            other = match[0]
            if other.grid != cell.grid:
                continue  # not the same learning rates: their sensitivities do not compare
            d = bootstrap_diff(
                cell.seeds,
                other.seeds,
                lambda s, c=cell: sensitivity(s, c.grid, c.l0),
                statistic_b=lambda s, c=other: sensitivity(s, c.grid, c.l0),
            )
            rest = " ".join(f"{k}={fmt(v)}" for k, v in cell.values.items() if k != key)
            rows.append(
                {
                    "key": key,
                    "value": cell.values[key],
                    "reference": ref,
                    "at": rest,
                    "diff": d,
                    "reads": _reads(d, cell, other),
                }
            )
    return rows


def _reads(d: Interval, cell: Cell, other: Cell) -> str:
    if not (cell.trained and other.trained):
        return "not comparable (a cell where no run trained)"
    if not d.defined:
        return "not resolved (underpowered: fewer than 2 seeds)"
    if d.lo > 0:
        return "higher"
    if d.hi < 0:
        return "lower"
    return "not resolved (underpowered)"


# --- tables ------------------------------------------------------------------------------


def lr_text(value: float) -> str:
    return "none" if value == 0 else f"{value:g}"


def sensitivity_text(cell: Cell) -> str:
    """The sensitivity and its interval, flagged where no run of the cell trained."""
    assert cell.sensitivity is not None
    text = cell.sensitivity.text()
    return text if cell.trained else text + " (no run trained: every lr failed)"


def stable_text(i: Interval) -> str:
    if not i.defined:
        return f"{lr_text(i.estimate)} (n={i.n}, no interval)"
    return f"{lr_text(i.estimate)} [{lr_text(i.lo)}, {lr_text(i.hi)}]"


def grid_text(cell: Cell, grid: list[float]) -> str:
    """'7' for the sweep's whole grid, 'k of K (missing ...)' for a partial one."""
    missing = [lr for lr in grid if lr not in cell.grid]
    if not missing:
        return str(len(cell.grid))
    return f"{len(cell.grid)} of {len(grid)} (missing {', '.join(f'{lr:g}' for lr in missing)})"


def sweep_grid(found: list[Cell]) -> list[float]:
    """Every learning rate of the sweep."""
    return sorted({lr for c in found for lr in c.grid})


def _failures(cell: Cell) -> str:
    n = sum(len(s.loss) for s in cell.seeds)
    div = sum(v == Status.DIVERGED for s in cell.seeds for v in s.failed.values())
    col = sum(v == Status.COLLAPSED for s in cell.seeds for v in s.failed.values())
    return f"{div}/{n} diverged, {col}/{n} collapsed"


def rows(found: list[Cell], vocab_limit: Any) -> list[dict[str, Any]]:
    """One row per cell (lr_sensitivity.csv, W&B)."""
    out = []
    for c in found:
        s, st = c.sensitivity, c.stable
        assert s is not None and st is not None
        out.append(
            {
                **c.values,
                "vocab": vocab.name(vocab_limit),
                "seeds": len(c.seeds),
                "grid": " ".join(f"{lr:g}" for lr in c.grid),
                "l0": c.l0,
                "l0_from": c.l0_from,
                "l_star": c.l_star,
                "best_lr": c.best_lr,
                "lr_sensitivity": s.estimate,
                "lr_sensitivity_lo": s.lo,
                "lr_sensitivity_hi": s.hi,
                "largest_stable_lr": st.estimate,
                "largest_stable_lr_lo": st.lo,
                "largest_stable_lr_hi": st.hi,
                "interval": s.label,
                "failures": _failures(c),
                "trained": c.trained,
            }
        )
    return out


def cell_table(found: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """The head and rows of the cells' table (lr_sensitivity.md and the page)."""
    keys, grid = list(found[0].values), sweep_grid(found)
    head = [*keys, "lrs", "seeds", "l0", "l*", "best lr", "LR sensitivity", "largest stable lr"]
    body = []
    for c in found:
        assert c.stable is not None
        body.append(
            [fmt(c.values[k]) for k in keys]
            + [
                grid_text(c, grid),
                str(len(c.seeds)),
                f"{c.l0:.3f} ({c.l0_from})",
                f"{c.l_star:.3f}",
                f"{c.best_lr:g}",
                sensitivity_text(c),
                stable_text(c.stable),
            ]
        )
    return head, body


def diff_table(diffs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The head and rows of the differences' table (lr_sensitivity.md and the page)."""
    rows = [
        [
            f"{d['key']}={fmt(d['value'])} vs {fmt(d['reference'])}",
            d["at"],
            d["diff"].text(),
            d["reads"],
        ]
        for d in diffs
    ]
    return ["compared", "at", "difference", "reads"], rows


def markdown_text(found: list[Cell], diffs: list[dict[str, Any]], vocab_limit: Any) -> str:
    """lr_sensitivity.md: the cells, then the differences."""
    grid = sweep_grid(found)
    text = (
        "# LR sensitivity\n\n"
        + markdown.cell(vocab_note(vocab_limit))
        + f" Grid: {', '.join(f'{lr:g}' for lr in grid)}. LR sensitivity: mean over "
        f"the grid of min(loss, l0) - l* (Wortsman et al. 2309.14322); largest stable lr: no "
        f"seed diverged or collapsed and within {MARGIN} nats of l*; bootstrap intervals over "
        "seeds (normbench/analysis/sensitivity.py).\n\n" + markdown.table(*cell_table(found))
    )
    if diffs:
        text += "\n## Differences in LR sensitivity\n\n" + markdown.table(*diff_table(diffs))
    return text


def write(out: Path, found: list[Cell], diffs: list[dict[str, Any]], vocab_limit: Any) -> None:
    """lr_sensitivity.md, .csv and .json in the report folder."""
    table = rows(found, vocab_limit)
    (out / "lr_sensitivity.md").write_text(markdown_text(found, diffs, vocab_limit), "utf-8")
    write_csv(out / "lr_sensitivity.csv", table)
    data = {
        "cells": [
            {
                **row,
                "curve": {f"{lr:g}": v for lr, v in c.curve.items()},
                "runs": {
                    f"{lr:g}": {str(s.seed): _run_value(s, lr) for s in c.seeds if lr in s.loss}
                    for lr in c.grid
                },
            }
            for row, c in zip(table, found, strict=True)
        ],
        "differences": [{**d, "diff": d["diff"].to_dict()} for d in diffs],
    }
    text = json.dumps(_plain(data), indent=1, allow_nan=False)
    (out / "lr_sensitivity.json").write_text(text + "\n", encoding="utf-8")


def _run_value(seed: Seed, lr: float) -> Any:
    """A run's final loss, or 'diverged' (JSON has no infinity)."""
    return seed.failed.get(lr) if math.isinf(seed.loss[lr]) else seed.loss[lr]


def _plain(value: Any) -> Any:
    """JSON-able: a NaN or infinite float (an interval that does not exist) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
