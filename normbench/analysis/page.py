"""index.html: one self-contained page of the report, its figures embedded."""

from __future__ import annotations

import base64
import html
import shutil
import time
from pathlib import Path
from typing import Any

from normbench.analysis.records import Probe, Run, Skipped, vocab_note
from normbench.analysis.table import Axes, describe, fmt, mean_std_cell, number_cell, short
from normbench.run import vocab


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
.note { color: #555; font-size: 0.9em; } .vocab { font-weight: bold; }
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
                mean_std_cell(row["val_loss_mean"], row["val_loss_std"]),
                mean_std_cell(row["best_val_loss_mean"], row["best_val_loss_std"]),
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
            number_cell(r.summary.get("val_loss")),
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
<h2>Summary</h2><p class="vocab">{html.escape(vocab_note(axes.vocab_limit))}</p>{summary_html}
{"".join(sections)}
<h2>Runs</h2>{runs_html}"""


def _skipped_html(skipped: list[Skipped]) -> str:
    if not skipped:
        return ""
    rows = [[str(s.dir), s.reason] for s in skipped]
    return "<h3>Not in the report</h3>" + _html_table(rows, ["directory", "reason"])


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
) -> Path:
    verdicts, probes, skipped = verdicts or [], probes or [], skipped or []
    parts = []
    if verdicts:
        files = '<a href="verdicts.md">verdicts.md</a>, <a href="verdicts.json">verdicts.json</a>'
        parts.append(
            f'<h2>Verdicts on the literature\'s claims</h2><p class="note">Thresholds fixed in '
            f"normbench/analysis/claims.py before any run; means ± std over seeds. Files: {files}.</p>"
            + "".join(_verdict_html(v) for v in verdicts)
        )
    if figures.get("probes"):
        names = ", ".join(html.escape(str(p.dir)) for p in probes)
        parts.append(
            f'<h2>Probes at initialization</h2><p class="note">From {names}. '
            f"{html.escape(vocab_note(vocab_limit))}</p>"
            + "".join(_img(p) for p in figures["probes"])
        )
    if runs and axes is not None:
        parts.append(_runs_html(runs, axes, rows, figures) + _skipped_html(skipped))
    elif skipped:
        parts.append("<h2>Runs</h2>" + _skipped_html(skipped))
    n_div = sum(r.diverged for r in runs)
    title = f"{len(runs)} runs, {n_div} diverged" if runs else ""
    if probes:
        title += (", " if title else "") + f"{len(probes)} probe{'s' * (len(probes) > 1)}"
    if skipped:
        title += f", {len(skipped)} not readable"
    if runs or probes:
        title += f"; {vocab.label(vocab_limit)}"
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
