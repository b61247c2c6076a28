"""`normbench compare`: a report from local run records, with no network and no W&B account.

    normbench compare PATH... [--out DIR] [--x KEY] [--y KEY] [--group-by KEY,...] [--wandb]

PATH is a run directory, a sweep directory (every run below it) or a glob. The report holds
`index.html` (one self-contained page, the figures embedded), `summary.csv` and `summary.md`
(one row per configuration: mean ± std over seeds, diverged count, tokens/s), and figures as
PNG and SVG: loss curves per group coloured by placement with divergence events marked, a
stability map per placement (final validation loss over two axes, diverged cells marked and
counted), per-layer diagnostics, and for each diverged run its last steps layer by layer.

The axes are the config keys that vary across the runs (derived keys such as a kind's eps
left out); the seed is averaged over. `--x`/`--y` choose the stability map's axes (default
lr x depth) and `--group-by` the keys that make one loss-curve figure each (default: every
varying key but the placement and the seed).
"""

from __future__ import annotations

import argparse
import base64
import csv
import glob
import html
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import NormbenchError

# Config keys under their short names (the W&B axes); other keys keep their dotted path.
SHORT = {
    "norm.name": "norm",
    "norm.kind": "norm_kind",
    "depth": "depth",
    "optim.lr": "lr",
    "optim.warmup_steps": "warmup",
    "seed": "seed",
    "optim.schedule": "schedule",
    "model.block": "block",
    "model.qk_norm": "qk_norm",
    "model.d_model": "d_model",
    "model.init": "init",
    "precision": "precision",
    "data.label": "data",
}
LONG = {short: key for key, short in SHORT.items()}
# Not axes: where things were written, values derived from other keys, other commands' keys.
IGNORED = ("logger.", "data.cache_dir", "norm.constants.", "probe")


class CompareError(NormbenchError):
    """Bad input to `normbench compare` (one line, what to change)."""


@dataclass
class Run:
    """One run directory's record."""

    dir: Path
    config: dict[str, Any]  # flattened: {"norm.name": "pre", "optim.lr": 0.001, ...}
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    events: list[dict[str, Any]]
    label: str = ""

    @property
    def status(self) -> str:
        return str(self.summary.get("status"))

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def rows(self, key: str) -> list[dict[str, Any]]:
        return [r for r in self.metrics if r.get(key) is not None]


@dataclass
class Axes:
    """Which keys vary, and how the runs are arranged in the report."""

    varying: list[str]  # dotted keys, axes first in SHORT's order
    x: str
    y: str
    group_by: list[str]
    config_keys: list[str] = field(default_factory=list)  # varying, without the seed


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = tuple(value) if isinstance(value, list) else value
    return flat


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: the rows before it still count
            break
    return rows


def load_run(run_dir: Path) -> Run:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise CompareError(f"{run_dir} is not a readable run record ({type(e).__name__})") from e
    return Run(
        dir=run_dir,
        config=flatten(config),
        summary=summary,
        metrics=_read_jsonl(run_dir / "metrics.jsonl"),
        events=_read_jsonl(run_dir / "events.jsonl"),
    )


def find_runs(paths: list[str]) -> list[Run]:
    """Every run record (a folder with summary.json and config.yaml) under the paths."""
    if not paths:
        raise CompareError("give run directories, sweep directories or globs to compare")
    found: dict[Path, None] = {}
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise CompareError(f"{pattern}: no such file or directory")
        for match in map(Path, matches):
            if (match / "summary.json").is_file():
                found[match.resolve()] = None
            else:
                for summary in sorted(match.rglob("summary.json")):
                    if (summary.parent / "config.yaml").is_file():
                        found[summary.parent.resolve()] = None
    if not found:
        raise CompareError(
            f"no run records (folders with summary.json and config.yaml) under {' '.join(paths)}"
        )
    return [load_run(d) for d in found]


def resolve_key(name: str, runs: list[Run]) -> str:
    key = LONG.get(name, name)
    if not any(key in r.config for r in runs):
        known = sorted(
            {SHORT.get(k, k) for r in runs for k in r.config if not k.startswith(IGNORED)}
        )
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
    order = {k: i for i, k in enumerate(SHORT)}
    keys.sort(key=lambda k: (order.get(k, len(order)), k))
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
    order = {k: i for i, k in enumerate(SHORT)}
    for key in (xk, yk, *groups):
        if key not in varying:  # an axis of the report even with one value
            varying.append(key)
    varying.sort(key=lambda k: order.get(k, len(order)))
    config_keys = [k for k in varying if k != "seed"]
    return Axes(varying=varying, x=xk, y=yk, group_by=groups, config_keys=config_keys)


def short(key: str) -> str:
    return SHORT.get(key, key)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe(run: Run, keys: list[str]) -> str:
    return " ".join(f"{short(k)}={fmt(run.config.get(k))}" for k in keys)


def group_runs(runs: list[Run], keys: list[str]) -> dict[tuple[Any, ...], list[Run]]:
    """Runs by their values of `keys`, in a stable order (numbers ascending)."""
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.config.get(k) for k in keys), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: tuple(_order(v) for v in kv[0])))


def _order(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summary_rows(runs: list[Run], axes: Axes) -> list[dict[str, Any]]:
    """One row per configuration (the varying keys but the seed), seeds aggregated."""
    rows = []
    for values, members in group_runs(runs, axes.config_keys).items():
        done = [r for r in members if r.status == "completed"]
        row: dict[str, Any] = {short(k): v for k, v in zip(axes.config_keys, values, strict=True)}
        row["runs"] = len(members)
        row["seeds"] = " ".join(sorted({fmt(r.config.get("seed")) for r in members}))
        row["completed"] = len(done)
        row["diverged"] = sum(r.diverged for r in members)
        row["failed"] = sum(r.status == "failed" for r in members)
        for key in ("val_loss", "best_val_loss"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r.summary.get(key) for r in done])
        row["val_ppl_mean"] = _mean_std([r.summary.get("val_ppl") for r in done])[0]
        at = [r.summary.get("diverged_at_step") for r in members if r.diverged]
        row["diverged_at_steps"] = " ".join(str(s) for s in at)
        row["divergence_reasons"] = " ".join(
            sorted({str(r.summary.get("divergence_reason")) for r in members if r.diverged})
        )
        row["tokens_per_s_mean"] = _mean_std([r.summary.get("tokens_per_s") for r in members])[0]
        row["steps_mean"] = _mean_std([r.summary.get("steps") for r in members])[0]
        rows.append(row)
    return rows


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def table_markdown(rows: list[dict[str, Any]], axes: Axes) -> str:
    keys = [short(k) for k in axes.config_keys]
    head = [*keys, "runs", "val/loss (final)", "best val/loss", "diverged", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        diverged = f"{row['diverged']}/{row['runs']}"
        if row["diverged"]:
            diverged += f" (step {row['diverged_at_steps']}: {row['divergence_reasons']})"
        cells = [fmt(row[k]) for k in keys] + [
            str(row["runs"]),
            _pm(row["val_loss_mean"], row["val_loss_std"]),
            _pm(row["best_val_loss_mean"], row["best_val_loss_std"]),
            diverged,
            f"{row['tokens_per_s_mean']:,.0f}" if row["tokens_per_s_mean"] else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in keys})


# --- the report ---------------------------------------------------------------------------------


def default_out(paths: list[str]) -> Path:
    """`<sweep or run dir>/compare` for one directory; else a dated folder here."""
    if len(paths) == 1 and not glob.has_magic(paths[0]) and Path(paths[0]).is_dir():
        return Path(paths[0]) / "compare"
    return Path(f"compare-{time.strftime('%Y-%m-%d_%H-%M-%S')}")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    svg = path.with_suffix(".svg").name
    alt = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f'<figcaption>{alt} (<a href="{html.escape(svg)}">SVG</a>)</figcaption></figure>'
    )


def _html_table(rows: list[list[str]], head: list[str], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.diverged td { color: #b00; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
.note { color: #555; font-size: 0.9em; }
"""


def write_html(
    out: Path,
    runs: list[Run],
    axes: Axes,
    rows: list[dict[str, Any]],
    figures: dict[str, list[Path]],
    sources: list[str],
) -> Path:
    keys = [short(k) for k in axes.config_keys]
    table_rows = []
    for row in rows:
        table_rows.append(
            [fmt(row[k]) for k in keys]
            + [
                str(row["runs"]),
                _pm(row["val_loss_mean"], row["val_loss_std"]),
                _pm(row["best_val_loss_mean"], row["best_val_loss_std"]),
                f"{row['diverged']}/{row['runs']}",
                row["diverged_at_steps"],
                f"{row['tokens_per_s_mean']:,.0f}" if row["tokens_per_s_mean"] else "-",
            ]
        )
    summary_html = _html_table(
        table_rows,
        [*keys, "runs", "val/loss (final)", "best val/loss", "diverged", "at step", "tokens/s"],
    )
    run_rows = [
        [
            r.label,
            r.status,
            describe(r, axes.varying),
            _cell(r.summary.get("val_loss")),
            str(r.summary.get("diverged_at_step") or ""),
            str(r.summary.get("divergence_reason") or ""),
            str(r.dir),
        ]
        for r in runs
    ]
    runs_html = _html_table(
        run_rows, ["run", "status", "config", "val/loss", "diverged at", "reason", "directory"]
    )
    sections = []
    titles = {
        "stability": "Stability maps: final validation loss, diverged runs marked",
        "curves": "Loss curves (train: solid, validation: dashed; x: divergence event)",
        "layers": "Per-layer diagnostics (last values; for diverged runs, at the failure)",
        "divergence": "Diverged runs: the last steps before the event, layer by layer",
    }
    for name, title in titles.items():
        if figures.get(name):
            body = "".join(_img(p) for p in figures[name])
            sections.append(f"<h2>{html.escape(title)}</h2>{body}")
    n_div = sum(r.diverged for r in runs)
    axes_text = ", ".join(short(k) for k in axes.varying) or "none"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>normbench compare</title>
<style>{CSS}</style></head><body>
<h1>normbench compare: {len(runs)} runs, {n_div} diverged</h1>
<p class="note">From {html.escape(" ".join(sources))}. Varying: {html.escape(axes_text)}.
Stability map axes: x = {html.escape(short(axes.x) if axes.x else "-")}, y =
{html.escape(short(axes.y) if axes.y else "-")}. Means and standard deviations are over seeds;
validation losses of diverged runs are left out of them. Generated
{html.escape(time.strftime("%Y-%m-%d %H:%M:%S"))}.
Files: <a href="summary.csv">summary.csv</a>, <a href="summary.md">summary.md</a>.</p>
<h2>Summary</h2>{summary_html}
{"".join(sections)}
<h2>Runs</h2>{runs_html}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def build_report(
    paths: list[str],
    out: Path | None,
    x: str | None = None,
    y: str | None = None,
    group_by: list[str] | None = None,
) -> tuple[Path, list[Run], Axes, list[dict[str, Any]], dict[str, list[Path]]]:
    """Read the runs and write the report into `out` (replaced whole; built beside it first,
    so that a failure leaves no half-written report)."""
    from normbench import figures as fig

    runs = find_runs(paths)
    axes = choose_axes(runs, x, y, group_by)
    for i, run in enumerate(runs):
        run.label = f"{i:02d} {describe(run, axes.varying)}".strip()
    out = (out or default_out(paths)).resolve()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows = summary_rows(runs, axes)
        write_csv(tmp / "summary.csv", rows)
        (tmp / "summary.md").write_text(table_markdown(rows, axes), encoding="utf-8")
        figures = fig.report_figures(tmp, runs, axes)
        write_html(tmp, runs, axes, rows, figures, paths)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    figures = {k: [out / p.name for p in v] for k, v in figures.items()}
    return out, runs, axes, rows, figures


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise CompareError(f"{message} (see normbench compare --help)")


def main(argv: list[str]) -> None:
    parser = _Parser(
        prog="normbench compare",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories or globs")
    parser.add_argument("--out", type=Path, help="report directory (default: PATH/compare)")
    parser.add_argument("--x", help="stability map x axis (default: lr)")
    parser.add_argument("--y", help="stability map y axis (default: depth)")
    parser.add_argument("--group-by", help="comma-separated keys, one loss-curve figure each")
    parser.add_argument("--wandb", action="store_true", help="also log the report to W&B")
    args = parser.parse_args(argv)
    group_by = [k for k in args.group_by.split(",") if k] if args.group_by is not None else None
    out, runs, axes, rows, figures = build_report(args.paths, args.out, args.x, args.y, group_by)
    if args.wandb:
        from normbench.logger import log_report

        log_report(out, runs, rows, figures)
    print(f"report: {out / 'index.html'}", flush=True)
