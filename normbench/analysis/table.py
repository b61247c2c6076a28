"""The summary table of `normbench compare`: which config keys are the report's axes, how
runs are grouped and labelled, one row per configuration (seeds aggregated: normbench/
analysis/stats.py), and the table as summary.csv and summary.md.

summary.md shows labels and values as data (normbench/analysis/markdown.py); summary.csv
puts a ' before a text that a spreadsheet would run as a formula (one beginning with = + -
@, a tab or a CR).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench.analysis import markdown
from normbench.analysis.records import CompareError, Run, Skipped, one_vocab, vocab_note
from normbench.analysis.stats import mean, mean_std
from normbench.run.axes import AXES, IGNORED, long, order, short
from normbench.run.data import vocab
from normbench.run.record.summary import Status


@dataclass
class Axes:
    """Which keys vary, and how the runs are arranged in the report."""

    varying: list[str]  # dotted keys, axes first in the order of normbench.run.axes.AXES
    x: str
    y: str
    group_by: list[str]
    config_keys: list[str] = field(default_factory=list)  # varying, without the seed
    vocab_limit: int | None = None  # the runs' one vocabulary (None: GPT-2's full one)


def resolve_key(name: str, runs: list[Run]) -> str:
    """The dotted key of `--x`/`--y`/`--group-by` name `name` (CompareError when no run
    has it)."""
    key = long(name)
    if not any(key in r.config for r in runs):
        known = sorted({short(k) for r in runs for k in r.config if not k.startswith(IGNORED)})
        raise CompareError(f"unknown key '{name}'; the runs have: {', '.join(known)}")
    return key


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys with more than one value across the runs, in axis order.

    A key missing from some records (written before it existed) is not an axis unless the
    records that have it differ.

    A `norm.*` key whose value follows from the placement or the kind (a kind's eps, a
    placement's own option) is not an axis of its own.
    """
    keys = sorted({k for r in runs for k in r.config if not k.startswith(IGNORED)})
    rank = {k: i for i, k in enumerate(AXES)}
    keys.sort(key=lambda k: (rank.get(k, len(rank)), k))
    values = {k: [r.config.get(k) for r in runs] for k in keys}
    # A key that only some records have (one written by an older normbench) varies only if
    # the records that have it disagree.
    varying = [k for k in keys if len({repr(r.config[k]) for r in runs if k in r.config}) > 1]

    def follows(key: str, source: str) -> bool:
        seen: dict[str, str] = {}
        for s, v in zip(values.get(source, []), values[key], strict=True):
            if seen.setdefault(repr(s), repr(v)) != repr(v):
                return False
        return True

    return [
        k
        for k in varying
        if not (
            k.startswith("norm.")
            and k not in ("norm.name", "norm.kind")
            and (follows(k, "norm.name") or follows(k, "norm.kind"))
        )
    ]


def choose_axes(runs: list[Run], x: str | None, y: str | None, group_by: list[str] | None) -> Axes:
    varying = varying_keys(runs)
    xk = resolve_key(x or "lr", runs)
    yk = resolve_key(y or "depth", runs)
    if group_by is None:
        groups = [k for k in varying if k not in ("norm.name", "seed")]
    else:
        groups = [resolve_key(k, runs) for k in group_by]
    rank = {k: i for i, k in enumerate(AXES)}
    for key in (xk, yk, *groups):
        if key not in varying:  # an axis of the report even with one value
            varying.append(key)
    varying.sort(key=lambda k: rank.get(k, len(rank)))
    config_keys = [k for k in varying if k != "seed"]
    return Axes(varying, xk, yk, groups, config_keys, vocab_limit=one_vocab(runs))


def fmt(value: Any) -> str:
    """A config value as labels show it (floats in %g)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe(run: Run, keys: list[str]) -> str:
    """`norm=pre depth=2 ...`: the run's values of `keys`."""
    return " ".join(f"{short(k)}={fmt(run.config.get(k))}" for k in keys)


def group_runs(runs: list[Run], keys: list[str]) -> dict[tuple[Any, ...], list[Run]]:
    """Runs by their values of `keys`, in a stable order (numbers ascending)."""
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.config.get(k) for k in keys), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: tuple(order(v) for v in kv[0])))


def summary_rows(runs: list[Run], axes: Axes) -> list[dict[str, Any]]:
    """One row per configuration (the varying keys but the seed), seeds aggregated."""
    rows = []
    for values, members in group_runs(runs, axes.config_keys).items():
        done = [r for r in members if r.status == Status.COMPLETED]
        row: dict[str, Any] = {short(k): v for k, v in zip(axes.config_keys, values, strict=True)}
        row["vocab"] = vocab.name(axes.vocab_limit)  # every CSV row says what its losses are over
        row["runs"] = len(members)
        row["seeds"] = " ".join(sorted({fmt(r.config.get("seed")) for r in members}))
        row["completed"] = len(done)
        row["diverged"] = sum(r.diverged for r in members)
        collapsed = [r for r in members if r.collapsed]  # not healthy: apart from `completed`
        row["collapsed"] = len(collapsed)
        row["failed"] = sum(r.status == Status.FAILED for r in members)
        for key in ("val_loss", "best_val_loss"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(r.summary.get(key) for r in done)
        row["val_ppl_mean"] = mean(r.summary.get("val_ppl") for r in done)
        row["collapsed_val_loss_mean"] = mean(r.summary.get("val_loss") for r in collapsed)
        row["unigram_val_ce"] = mean(r.unigram_val_ce for r in members)
        at = [r.summary.get("diverged_at_step") for r in members if r.diverged]
        row["diverged_at_steps"] = " ".join(str(s) for s in at)
        row["divergence_reasons"] = " ".join(
            sorted({str(r.summary.get("divergence_reason")) for r in members if r.diverged})
        )
        row["tokens_per_s_mean"] = mean(r.summary.get("tokens_per_s") for r in members)
        row["steps_mean"] = mean(r.summary.get("steps") for r in members)
        rows.append(row)
    return rows


def mean_text(value: float | None, std: float | None) -> str:
    """'mean ± std' of a summary row in 4 decimals ('mean' without a std, '-' without a
    mean)."""
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def speed_text(row: dict[str, Any]) -> str:
    """A summary row's mean tokens/s, with thousands separators ('-' without one)."""
    return f"{row['tokens_per_s_mean']:,.0f}" if row["tokens_per_s_mean"] else "-"


def collapsed_text(row: dict[str, Any]) -> str:
    """`k/n`, and with any collapsed run their mean final val/loss against the unigram
    predictor's (normbench/run/monitor/collapse.py)."""
    text = f"{row['collapsed']}/{row['runs']}"
    if row["collapsed"] and row["collapsed_val_loss_mean"] is not None:
        text += f" (val/loss {row['collapsed_val_loss_mean']:.4f}"
        if row["unigram_val_ce"] is not None:
            text += f"; unigram {row['unigram_val_ce']:.4f}"
        text += ")"
    return text


def table_markdown(rows: list[dict[str, Any]], axes: Axes) -> str:
    """summary.md's table, below the line that says which vocabulary the losses are over."""
    keys = [short(k) for k in axes.config_keys]
    head = [*keys, "runs", "val/loss (final)", "best val/loss", "diverged", "collapsed", "tokens/s"]
    cells = []
    for row in rows:
        diverged = f"{row['diverged']}/{row['runs']}"
        if row["diverged"]:
            diverged += f" (step {row['diverged_at_steps']}: {row['divergence_reasons']})"
        cells.append(
            [fmt(row[k]) for k in keys]
            + [
                str(row["runs"]),
                mean_text(row["val_loss_mean"], row["val_loss_std"]),
                mean_text(row["best_val_loss_mean"], row["best_val_loss_std"]),
                diverged,
                collapsed_text(row),
                speed_text(row),
            ]
        )
    return markdown.cell(vocab_note(axes.vocab_limit)) + "\n\n" + markdown.table(head, cells)


def skipped_markdown(skipped: list[Skipped]) -> str:
    """The records left out of the report, and why (nothing when none was)."""
    if not skipped:
        return ""
    rows = [[s.dir, s.reason] for s in skipped]
    return "## Not in the report\n\n" + markdown.table(["directory", "reason"], rows)


def csv_cell(value: Any) -> Any:
    """A CSV value that a spreadsheet shows as data: a text beginning with = + - @, a tab or
    a carriage return (which it would run as a formula) gets a leading '; numbers stay."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv: one row per configuration, every key of any row a column."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([csv_cell(k) for k in keys])
        for row in rows:
            cells = ["" if row.get(k) is None else row[k] for k in keys]
            writer.writerow([csv_cell(c) for c in cells])
