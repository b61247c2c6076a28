"""`normbench compare`: a report from local run records, with no network and no W&B account.

    normbench compare PATH... [--out DIR] [--x KEY] [--y KEY] [--group-by KEY,...] [--wandb]

PATH is a run directory, a sweep directory (every run below it) or a glob. The report holds
`index.html` (one self-contained page, the figures embedded), `summary.csv` and `summary.md`
(one row per configuration: mean ± std over seeds, diverged count, tokens/s), and figures as
PNG and SVG: loss curves per group coloured by placement with divergence events marked, a
stability map per placement (final validation loss over two axes, diverged cells marked and
counted), per-layer diagnostics, and for each diverged run its last steps layer by layer.

Probe records (`normbench probe` run directories, probe.json) are read too. Records made by a
reproduction preset (config `claim`, configs/experiment/) are judged against the claim
(normbench/claims.py): `verdicts.md`, `verdicts.json` and a section at the top of the page.

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
IGNORED = ("logger.", "data.cache_dir", "norm.constants.", "probe", "claim")


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


def _read_record(run_dir: Path, name: str, what: str) -> tuple[dict[str, Any], Any]:
    """The flattened config.yaml and the parsed JSON file `name` of a record directory."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        data = json.loads((run_dir / name).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise CompareError(f"{run_dir} is not a readable {what} record ({type(e).__name__})") from e
    return flatten(config), data


def load_run(run_dir: Path) -> Run:
    config, summary = _read_record(run_dir, "summary.json", "run")
    return Run(
        dir=run_dir,
        config=config,
        summary=summary,
        metrics=_read_jsonl(run_dir / "metrics.jsonl"),
        events=_read_jsonl(run_dir / "events.jsonl"),
    )


@dataclass
class Probe:
    """One `normbench probe` run directory (probe.json)."""

    dir: Path
    config: dict[str, Any]  # flattened, like Run.config
    table: dict[str, Any]  # probe.json: settings, layers, models, per_seed


def load_probe(run_dir: Path) -> Probe:
    config, table = _read_record(run_dir, "probe.json", "probe")
    return Probe(dir=run_dir, config=config, table=table)


def find_records(paths: list[str]) -> tuple[list[Run], list[Probe]]:
    """Every run record (a folder with summary.json and config.yaml) and every probe record
    (probe.json and config.yaml) under the paths."""
    if not paths:
        raise CompareError("give run directories, sweep directories or globs to compare")
    found: dict[Path, str] = {}
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise CompareError(f"{pattern}: no such file or directory")
        for match in map(Path, matches):
            for name in ("summary.json", "probe.json"):
                candidates = [match / name] if (match / name).is_file() else match.rglob(name)
                for record in sorted(candidates):
                    if (record.parent / "config.yaml").is_file():
                        found[record.parent.resolve()] = name
    if not found:
        raise CompareError(
            "no run records (folders with summary.json and config.yaml) or probe records "
            f"(probe.json) under {' '.join(paths)}"
        )
    runs = [load_run(d) for d, kind in found.items() if kind == "summary.json"]
    probes = [load_probe(d) for d, kind in found.items() if kind == "probe.json"]
    return runs, probes


def find_runs(paths: list[str]) -> list[Run]:
    """Every run record under the paths (probe records left out)."""
    runs, _ = find_records(paths)
    if not runs:
        raise CompareError(f"no run records (folders with summary.json) under {' '.join(paths)}")
    return runs


# --- verdicts on the literature's claims (normbench/claims.py) ----------------------------------


def _values(records: list[Any], key: str) -> str:
    found = sorted({fmt(r.config.get(key)) for r in records if r.config.get(key) is not None})
    return ",".join(found) if found else "-"


def run_setting(runs: list[Run]) -> str:
    """The shared settings of a claim's training runs, in one line."""
    v = lambda key: _values(runs, key)  # noqa: E731
    return (
        f"{len(runs)} runs: norm {v('norm.name')}, kind {v('norm.kind')}, depth {v('depth')}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}; "
        f"{v('train.max_steps')} steps of {v('train.batch_size')} sequences; AdamW lr "
        f"{v('optim.lr')}, warmup {v('optim.warmup_steps')}, betas {v('optim.betas')}, "
        f"grad clip {v('optim.grad_clip')}; {v('precision')}; seeds {v('seed')}; data "
        f"{v('data.label')}"
    )


def probe_setting(probes: list[Probe]) -> str:
    p = probes[0].table.get("settings", {})
    v = lambda key: _values(probes, key)  # noqa: E731
    return (
        f"normbench probe at initialization, fp32: norms "
        f"{','.join(sorted({n for q in probes for n in q.table['settings']['norms']}))}, "
        f"depths {','.join(str(d) for d in sorted({d for q in probes for d in q.table['settings']['depths']}))}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}, "
        f"kind {v('norm.kind')}; {p.get('batches')} batches of {p.get('batch_size')} sequences; "
        f"one AdamW step of lr {p.get('lr') or v('optim.lr')}; seeds "
        f"{','.join(str(s) for s in p.get('seeds', []))}; data {v('data.label')}"
    )


def judge_claims(runs: list[Run], probes: list[Probe]) -> list[Any]:
    """A verdict for every claim that some of the records were run for (config `claim`)."""
    from normbench.claims import CLAIMS, ProbeTable, judge

    verdicts = []
    for name, claim in CLAIMS.items():
        if claim.command == "probe":
            mine = [p for p in probes if p.config.get("claim") == name]
            if not mine:
                continue
            if any("per_seed" not in p.table for p in mine):
                raise CompareError(
                    f"{mine[0].dir}: probe.json has no per-seed rows (written by an older "
                    "normbench); run the probe again"
                )
            table = ProbeTable(
                [row for p in mine for row in p.table["per_seed"]["layers"]],
                [row for p in mine for row in p.table["per_seed"]["models"]],
            )
            verdicts.append(judge(name, table, probe_setting(mine), [str(p.dir) for p in mine]))
        else:
            mine = [r for r in runs if r.config.get("claim") == name]
            if mine:
                verdicts.append(judge(name, mine, run_setting(mine), [str(r.dir) for r in mine]))
    return verdicts


def write_verdicts(out: Path, verdicts: list[Any]) -> None:
    """verdicts.md and verdicts.json (nothing when no record was run for a claim)."""
    if not verdicts:
        return
    text = "# Verdicts\n\n" + "\n".join(v.markdown() for v in verdicts)
    (out / "verdicts.md").write_text(text, encoding="utf-8")
    data = [v.to_dict() for v in verdicts]
    (out / "verdicts.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


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
.verdict { border: 1px solid #ccc; padding: 0 1em; margin: 1em 0; }
.reproduced { color: #080; } .not-reproduced { color: #b00; }
.partly-reproduced { color: #a60; } .inconclusive { color: #555; }
"""


def _verdict_html(v: Any) -> str:
    measured = _html_table([[q, m] for q, m in v.measured], ["quantity", "measured"])
    checks = _html_table(
        [[c.condition, c.measured, "yes" if c.held else "no"] for c in v.checks],
        ["condition", "measured", "held"],
    )
    outcome = v.outcome.replace(" ", "-")
    return (
        f'<div class="verdict"><h3>{html.escape(v.title)}: '
        f'<span class="{outcome}">{html.escape(v.outcome)}</span></h3>'
        f"<p><i>Claim</i> ({html.escape(v.source)}): {html.escape(v.statement)}</p>"
        f'<p class="note"><i>Setting</i>: {html.escape(v.setting)}</p>'
        + (measured if v.measured else "")
        + (checks if v.checks else "")
        + (f'<p class="note">{html.escape(v.note)}</p>' if v.note else "")
        + "</div>"
    )


def _runs_html(
    runs: list[Run], axes: Axes, rows: list[dict[str, Any]], figures: dict[str, list[Path]]
) -> str:
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
    axes_text = ", ".join(short(k) for k in axes.varying) or "none"
    return f"""<p class="note">Varying: {html.escape(axes_text)}.
Stability map axes: x = {html.escape(short(axes.x) if axes.x else "-")}, y =
{html.escape(short(axes.y) if axes.y else "-")}. Means and standard deviations are over seeds;
validation losses of diverged runs are left out of them.
Files: <a href="summary.csv">summary.csv</a>, <a href="summary.md">summary.md</a>.</p>
<h2>Summary</h2>{summary_html}
{"".join(sections)}
<h2>Runs</h2>{runs_html}"""


def write_html(
    out: Path,
    runs: list[Run],
    axes: Axes | None,
    rows: list[dict[str, Any]],
    figures: dict[str, list[Path]],
    sources: list[str],
    verdicts: list[Any] | None = None,
    probes: list[Probe] | None = None,
) -> Path:
    verdicts, probes = verdicts or [], probes or []
    parts = []
    if verdicts:
        files = '<a href="verdicts.md">verdicts.md</a>, <a href="verdicts.json">verdicts.json</a>'
        parts.append(
            f'<h2>Verdicts on the literature\'s claims</h2><p class="note">Thresholds fixed in '
            f"normbench/claims.py before any run; means ± std over seeds. Files: {files}.</p>"
            + "".join(_verdict_html(v) for v in verdicts)
        )
    if figures.get("probes"):
        names = ", ".join(html.escape(str(p.dir)) for p in probes)
        parts.append(
            f'<h2>Probes at initialization</h2><p class="note">From {names}.</p>'
            + "".join(_img(p) for p in figures["probes"])
        )
    if runs and axes is not None:
        parts.append(_runs_html(runs, axes, rows, figures))
    n_div = sum(r.diverged for r in runs)
    title = f"{len(runs)} runs, {n_div} diverged" if runs else ""
    if probes:
        title += (", " if title else "") + f"{len(probes)} probe{'s' * (len(probes) > 1)}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>normbench compare</title>
<style>{CSS}</style></head><body>
<h1>normbench compare: {html.escape(title)}</h1>
<p class="note">From {html.escape(" ".join(sources))}. Generated
{html.escape(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>
{"".join(parts)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def copy_probe_figures(out: Path, probes: list[Probe]) -> list[Path]:
    """Each probe's comparison figure (probe.png and .svg), renamed probe<i>."""
    copied = []
    for i, probe in enumerate(probes):
        stem = "probe" if len(probes) == 1 else f"probe{i}"
        for ext in ("png", "svg"):
            source = probe.dir / f"probe.{ext}"
            if source.is_file():
                shutil.copyfile(source, out / f"{stem}.{ext}")
        if (out / f"{stem}.png").is_file():
            copied.append(out / f"{stem}.png")
    return copied


def build_report(
    paths: list[str],
    out: Path | None,
    x: str | None = None,
    y: str | None = None,
    group_by: list[str] | None = None,
) -> tuple[Path, list[Run], Axes | None, list[dict[str, Any]], dict[str, list[Path]]]:
    """Read the records and write the report into `out` (replaced whole; built beside it
    first, so that a failure leaves no half-written report)."""
    from normbench import figures as fig

    runs, probes = find_records(paths)
    axes = choose_axes(runs, x, y, group_by) if runs else None
    for i, run in enumerate(runs):
        run.label = f"{i:02d} {describe(run, axes.varying if axes else [])}".strip()
    verdicts = judge_claims(runs, probes)
    out = (out or default_out(paths)).resolve()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows: list[dict[str, Any]] = []
        figures: dict[str, list[Path]] = {}
        if runs and axes is not None:
            rows = summary_rows(runs, axes)
            write_csv(tmp / "summary.csv", rows)
            (tmp / "summary.md").write_text(table_markdown(rows, axes), encoding="utf-8")
            figures = fig.report_figures(tmp, runs, axes)
        if probes:
            figures["probes"] = copy_probe_figures(tmp, probes)
        write_verdicts(tmp, verdicts)
        write_html(tmp, runs, axes, rows, figures, paths, verdicts, probes)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    figures = {k: [out / p.name for p in v] for k, v in figures.items()}
    for v in verdicts:
        print(f"{v.title}: {v.outcome}", flush=True)
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
