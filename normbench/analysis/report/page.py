"""index.html, the report's one self-contained page: the verdicts on the literature's claims,
the probes' figures, the summary table, the figures (embedded as PNG, each with a link to its
SVG) and every run, with the records left out and why. Labels and values are escaped: the
page shows them as data.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from normbench.analysis.claims.verdict import css_class
from normbench.analysis.records import Probe, Run, Skipped, vocab_note
from normbench.analysis.sensitivity import MARGIN, cell_table, diff_table, sweep_grid
from normbench.analysis.table import (
    Axes,
    collapsed_text,
    describe,
    fmt,
    mean_text,
    speed_text,
)
from normbench.run.axes import short
from normbench.run.data import vocab


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    svg = path.with_suffix(".svg").name
    alt = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f'<figcaption>{alt} (<a href="{html.escape(svg)}">SVG</a>)</figcaption></figure>'
    )


def _html_table(
    rows: list[list[str]], head: list[str], cls: str = "", row_classes: list[str] | None = None
) -> str:
    out = [f'<table class="{cls}"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        tr = f'<tr class="{html.escape(row_classes[i])}">' if row_classes else "<tr>"
        out.append(tr + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
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
.note { color: #555; font-size: 0.9em; } .vocab { font-weight: bold; }
.verdict { border: 1px solid #ccc; padding: 0 1em; margin: 1em 0; }
.reproduced { color: #080; } .not-reproduced { color: #b00; }
.inconclusive { color: #555; } .mixed { color: #a60; }
.inconclusive-underpowered { color: #a60; } .inconclusive-out-of-regime { color: #557; }
"""


def _verdict_html(v: Any) -> str:
    measured = _html_table([[q, m] for q, m in v.measured], ["quantity", "measured"])
    checks = _html_table(
        [[c.condition, c.measured, c.outcome] for c in v.checks],
        ["condition", "measured", "outcome"],
        row_classes=[css_class(c.outcome) for c in v.checks],
    )
    outcome = css_class(v.outcome)
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


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _summary_html(axes: Axes, rows: list[dict[str, Any]]) -> str:
    keys = [short(k) for k in axes.config_keys]
    table_rows = [
        [fmt(row[k]) for k in keys]
        + [
            str(row["runs"]),
            mean_text(row["val_loss_mean"], row["val_loss_std"]),
            mean_text(row["best_val_loss_mean"], row["best_val_loss_std"]),
            f"{row['diverged']}/{row['runs']}",
            row["diverged_at_steps"],
            collapsed_text(row),
            speed_text(row),
        ]
        for row in rows
    ]
    head = [*keys, "runs", "val/loss (final)", "best val/loss", "diverged", "at step"]
    head += ["collapsed", "tokens/s"]
    return _html_table(table_rows, head)


def _run_list_html(runs: list[Run], axes: Axes) -> str:
    run_rows = [
        [
            r.label,
            r.status,
            describe(r, axes.varying),
            _cell(r.summary.get("val_loss")),
            str(r.summary.get("diverged_at_step") or r.summary.get("collapsed_at_step") or ""),
            str(r.summary.get("divergence_reason") or ("collapse" if r.collapsed else "")),
            str(r.dir),
        ]
        for r in runs
    ]
    head = ["run", "status", "config", "val/loss", "event at", "reason", "directory"]
    return _html_table(run_rows, head)


FIGURE_TITLES = {
    "stability": "Stability maps: final validation loss, diverged and collapsed runs marked",
    "curves": "Loss curves (train: solid, validation: dashed; x: divergence event)",
    "layers": "Per-layer diagnostics (last values; for diverged runs, at the failure)",
    "divergence": "Diverged runs: the last steps before the event, layer by layer",
    "mechanisms": "Attention logits and log Z over training (x: divergence event)",
    "dashboard": "W&B dashboard (dashboard.json; publish: normbench dashboard --publish "
    "dashboard.json): its layout",
}


def _figures_html(figures: dict[str, list[Path]]) -> str:
    sections = []
    for name, title in FIGURE_TITLES.items():
        if figures.get(name):
            body = "".join(_img(p) for p in figures[name])
            sections.append(f"<h2>{html.escape(title)}</h2>{body}")
    return "".join(sections)


def _runs_html(
    runs: list[Run], axes: Axes, rows: list[dict[str, Any]], figures: dict[str, list[Path]]
) -> str:
    axes_text = ", ".join(short(k) for k in axes.varying) or "none"
    return f"""<p class="note">Varying: {html.escape(axes_text)}.
Stability map axes: x = {html.escape(short(axes.x) if axes.x else "-")}, y =
{html.escape(short(axes.y) if axes.y else "-")}. Means and standard deviations are over seeds;
validation losses of diverged and collapsed runs are left out of them (a collapsed run's is
beside its count, with the loss of the unigram predictor of the training counts).
Files: <a href="summary.csv">summary.csv</a>, <a href="summary.md">summary.md</a>.</p>
<h2>Summary</h2><p class="vocab">{html.escape(vocab_note(axes.vocab_limit))}</p>{_summary_html(axes, rows)}
{_figures_html(figures)}
<h2>Runs</h2>{_run_list_html(runs, axes)}"""


def _lr_html(lr: dict[str, Any], vocab_limit: Any) -> str:
    """The LR-sensitivity section: one row per configuration, the differences, the figures."""

    found, diffs = lr["cells"], lr["diffs"]
    if not found:
        return ""
    grid = sweep_grid(found)
    text = (
        f'<h2>LR sensitivity</h2><p class="note">{html.escape(vocab_note(vocab_limit))} '
        "Per configuration over the grid "
        f"{html.escape(', '.join(f'{x:g}' for x in grid))}: the mean over the grid of "
        "min(final loss, l0) - l* (Wortsman et al. 2309.14322), and the largest lr with no "
        f"diverged or collapsed seed within {MARGIN} nats of l*; bootstrap intervals over seeds. "
        'Files: <a href="lr_sensitivity.md">lr_sensitivity.md</a>, '
        '<a href="lr_sensitivity.csv">.csv</a>, <a href="lr_sensitivity.json">.json</a>.</p>'
    )
    head, cells = cell_table(found)
    text += _html_table(cells, head)
    if diffs:
        head, rows = diff_table(diffs)
        text += "<h3>Differences in LR sensitivity</h3>" + _html_table(rows, head)
    return text + "".join(_img(p) for p in lr["figures"])


def _skipped_html(skipped: list[Skipped]) -> str:
    if not skipped:
        return ""
    rows = [[str(s.dir), s.reason] for s in skipped]
    return "<h3>Not in the report</h3>" + _html_table(rows, ["directory", "reason"])


def _verdicts_html(verdicts: list[Any]) -> str:
    files = '<a href="verdicts.md">verdicts.md</a>, <a href="verdicts.json">verdicts.json</a>'
    return (
        f'<h2>Verdicts on the literature\'s claims</h2><p class="note">Thresholds fixed in '
        f"normbench/analysis/claims/verdict.py before any run, with the rules; measured: means ± std over "
        "seeds; each condition decided by its 95% bootstrap interval over seeds (or TOST), "
        f"never by a point estimate. Files: {files}.</p>"
        + "".join(_verdict_html(v) for v in verdicts)
    )


def _probes_html(probes: list[Probe], figures: list[Path], vocab_limit: Any) -> str:
    names = ", ".join(html.escape(str(p.dir)) for p in probes)
    return (
        f'<h2>Probes at initialization</h2><p class="note">From {names}. '
        f"{html.escape(vocab_note(vocab_limit))}</p>" + "".join(_img(p) for p in figures)
    )


def _title(runs: list[Run], probes: list[Probe], skipped: list[Skipped], vocab_limit: Any) -> str:
    n_div = sum(r.diverged for r in runs)
    title = f"{len(runs)} runs, {n_div} diverged" if runs else ""
    if n_col := sum(r.collapsed for r in runs):
        title += f", {n_col} collapsed"
    if probes:
        title += (", " if title else "") + f"{len(probes)} probe{'s' * (len(probes) > 1)}"
    if skipped:
        title += f", {len(skipped)} not readable"
    if runs or probes:
        title += f"; {vocab.label(vocab_limit)}"
    return title


def write_html(
    out: Path,
    runs: list[Run],
    axes: Axes | None,
    rows: list[dict[str, Any]],
    figures: dict[str, list[Path]],
    sources: list[str],
    verdicts: list[Any] | None = None,
    probes: list[Probe] | None = None,
    skipped: list[Skipped] | None = None,
    vocab_limit: Any = None,
    lr: dict[str, Any] | None = None,
) -> Path:
    """index.html in `out`, from the summary rows and the figures already written there
    (`lr`: an LR-sensitivity sweep's cells, differences and figures)."""
    verdicts, probes, skipped = verdicts or [], probes or [], skipped or []
    parts = []
    if verdicts:
        parts.append(_verdicts_html(verdicts))
    if lr:
        parts.append(_lr_html(lr, vocab_limit))
    if figures.get("probes"):
        parts.append(_probes_html(probes, figures["probes"], vocab_limit))
    if runs and axes is not None:
        parts.append(_runs_html(runs, axes, rows, figures) + _skipped_html(skipped))
    elif skipped:
        parts.append("<h2>Runs</h2>" + _skipped_html(skipped))
    title = _title(runs, probes, skipped, vocab_limit)
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
