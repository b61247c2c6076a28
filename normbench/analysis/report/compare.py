"""`normbench compare`: a report from local run records, with no network and no W&B account.

    normbench compare PATH... [--out DIR] [--x KEY] [--y KEY] [--group-by KEY,...] [--vocab V]
                      [--claim NAME]... [--wandb]

PATH is a run directory, a sweep directory (every run below it) or a glob. The report holds
`index.html` (one self-contained page, the figures embedded), `summary.csv` and `summary.md`
(one row per configuration: mean ± std over seeds, diverged and collapsed counts, tokens/s),
and figures as PNG and SVG: loss curves per group coloured by placement with divergence
events marked, a stability map per placement (final validation loss over two axes, diverged
and collapsed cells marked and counted), per-layer diagnostics, and for each diverged run its
last steps layer by layer. A collapsed run (status `collapsed`: it ended at the loss of the
unigram predictor of its training counts) is not counted as completed.

One report holds one vocabulary (`data.vocab_limit`, normbench/run/data/vocab.py): losses of runs
with different vocabularies are not comparable (a reduced vocabulary's shared id is an easy
target), so records of several are refused unless `--vocab full` or `--vocab K` picks one.
Every table says which (summary.md and the page above the tables, a `vocab` column in
summary.csv), and so do the loss figures of a reduced vocabulary.

Probe records (`normbench probe` run directories, probe.json) are read too. Records made by a
reproduction preset (config `claim`, configs/experiment/) are judged against the claim
(normbench/analysis/claims/registry.py): `verdicts.md`, `verdicts.json` and a section at the top of the page.
`--claim NAME` (repeatable) judges the named claims instead, on all the records, whatever
claim they were run for (the LR-sensitivity study's runs, or claim post_shallow on the runs of
experiment=warmup).

The axes are the config keys that vary across the runs (derived keys such as a kind's eps
left out); the seed is averaged over. `--x`/`--y` choose the stability map's axes (default
lr x depth) and `--group-by` the keys that make one loss-curve figure each (default: every
varying key but the placement and the seed).

A sweep over the learning rate (3 values or more: e.g. experiment=lr_sensitivity) also gets
its LR sensitivity (normbench/analysis/sensitivity.py, docs/studies.md): per
configuration, the mean excess of the final loss over the best across the lr grid and the
largest stable lr, with bootstrap intervals over seeds (`lr_sensitivity.md`, `.csv`, `.json`,
a section of the page), and figures of final loss against lr per depth and of both against
depth.

Records that cannot be read (a summary.json that is not a JSON object, an empty config.yaml,
...) and run folders with no record yet (a config or metrics but no summary.json: killed
before the first write) are left out of the tables and figures, and listed with the reason
in the report (the Runs section, summary.md) and on stderr, one line each. The report shows
labels and values as data: summary.md escapes & < > and |, summary.csv puts a ' before a text
that a spreadsheet would run as a formula (one beginning with = + - @, a tab or a CR).

Where the report goes: `--out DIR`, by default PATH/compare for one directory, else a new
./compare-<date>_<time>.<microseconds>-<pid>. compare writes only there and never deletes what it did not write: every
report folder holds `.normbench-report.json`, the list of the files and folders compare wrote
into it. DIR may be a new folder (its parents are created) or compare's own earlier report,
which is replaced: the new report is built in a hidden folder beside it (.DIR.tmp-*) and
swapped in at once (Linux renameat2 RENAME_EXCHANGE: a reader sees the old report or the new,
never none; elsewhere the old one is renamed aside first), then the old one is deleted file
by file, only what its marker lists. A failure or Ctrl-C leaves the old report as it was and
no hidden folder. Refused, with nothing touched (exit 2): a DIR that is a file or a symbolic
link, an existing folder without the marker (a report of an older normbench too: delete it
yourself), a report holding anything its marker does not list, a DIR that is one of the
inputs or holds one. Report folders are never read as records.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from normbench.analysis import sensitivity as lrs
from normbench.analysis.claims.registry import check_claim_names, judge_claims
from normbench.analysis.claims.verdict import verdicts_markdown, write_verdicts
from normbench.analysis.records import (
    CompareError,
    Probe,
    Records,
    Run,
    read_records,
    select_vocab,
)
from normbench.analysis.report.dashboard import build_spec, wandb_groups, write_spec
from normbench.analysis.report.figures import runs as fig
from normbench.analysis.report.figures.dashboard import layout_figure
from normbench.analysis.report.figures.mechanisms import mechanism_curves
from normbench.analysis.report.figures.sensitivity import lr_figures
from normbench.analysis.report.outdir import (
    beside,
    check_out,
    clean_stale,
    default_out,
    discard,
    install,
    remove_report,
    write_marker,
)
from normbench.analysis.report.page import write_html
from normbench.analysis.sensitivity import is_lr_sweep
from normbench.analysis.table import (
    Axes,
    choose_axes,
    describe,
    skipped_markdown,
    summary_rows,
    table_markdown,
    write_csv,
)

# This module is the command: its arguments, and `build_report`, which puts the report
# together from the records (analysis/records.py), the summary table (analysis/table.py), the
# figures (figures/), the verdicts (analysis/claims/) and the page (page.py), in a folder that
# outdir.py installs. (The docstring above is `normbench compare --help`.)


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


def lr_study(tmp: Path, runs: list[Run], axes: Axes, colors: dict[str, Any]) -> dict[str, Any]:
    """An LR-sensitivity sweep's tables and figures (normbench/analysis/sensitivity.py)."""

    found = lrs.cells(runs, axes)
    diffs = lrs.differences(found)
    lrs.write(tmp, found, diffs, axes.vocab_limit)
    return {"cells": found, "diffs": diffs, "figures": lr_figures(tmp, found, axes, colors)}


def write_dashboard(tmp: Path, runs: list[Run], axes: Axes, verdicts: list[Any]) -> list[Path]:
    """dashboard.json (normbench/analysis/report/dashboard.py) and its layout (dashboard.png), for
    runs logged to W&B, with the verdicts as verdicts.md has them. A failure here is one
    warning: it never fails the report."""

    try:
        spec = build_spec(runs, axes, verdicts_markdown(verdicts) or None)
        if spec is not None:
            write_spec(tmp, spec)
            return [layout_figure(tmp, spec)]
    except Exception as e:  # the dashboard is an extra: the report stands without it
        print(
            f"normbench compare: warning: no dashboard.json ({type(e).__name__}: {e})",
            file=sys.stderr,
            flush=True,
        )
    return []


def write_report(
    tmp: Path, records: Records, axes: Axes | None, verdicts: list[Any], sources: list[str]
) -> tuple[list[dict[str, Any]], dict[str, list[Path]]]:
    """Every file of the report, into the new folder `tmp`; its marker last."""

    runs, probes, skipped = records.runs, records.probes, records.skipped
    rows: list[dict[str, Any]] = []
    figures: dict[str, list[Path]] = {}
    lr: dict[str, Any] | None = None
    if runs and axes is not None:
        rows = summary_rows(runs, axes)
        write_csv(tmp / "summary.csv", rows)
        figures = fig.report_figures(tmp, runs, axes)
        colors = fig.placement_colors(runs)
        figures["mechanisms"] = mechanism_curves(tmp, runs, axes, colors)
        if is_lr_sweep(runs):
            lr = lr_study(tmp, runs, axes, colors)
            figures["lr"] = lr["figures"]
    if rows or skipped:
        text = table_markdown(rows, axes) if rows and axes is not None else ""
        text += ("\n" if text and skipped else "") + skipped_markdown(skipped)
        (tmp / "summary.md").write_text(text, encoding="utf-8")
    if probes:
        figures["probes"] = copy_probe_figures(tmp, probes)
    write_verdicts(tmp, verdicts)
    if runs and axes is not None:
        figures["dashboard"] = write_dashboard(tmp, runs, axes, verdicts)
    write_html(
        tmp, runs, axes, rows, figures, sources, verdicts, probes, skipped, records.vocab_limit, lr
    )
    write_marker(tmp)
    return rows, figures


def check_dashboard_runs(runs: list[Run]) -> None:
    """A dashboard needs runs logged to W&B in a group (a sweep's); say which is missing."""
    if wandb_groups(runs):
        return
    if any(r.summary.get("wandb") for r in runs):  # logged, but not as one sweep
        raise CompareError(
            "no dashboard: these runs were logged to W&B but have no W&B group (a single "
            "run has none); run them as a sweep (train -m), or set logger.group=NAME"
        )
    raise CompareError(
        "no dashboard: none of these runs was logged to W&B (logger=none); rerun the "
        "sweep with logger=wandb"
    )


def build_report(
    paths: list[str],
    out: Path | None,
    x: str | None = None,
    y: str | None = None,
    group_by: list[str] | None = None,
    vocab_choice: str | None = None,
    claims: list[str] | None = None,
    need_wandb: bool = False,
) -> tuple[Path, list[Run], Axes | None, list[dict[str, Any]], dict[str, list[Path]]]:
    """Read the records of one vocabulary (`vocab_choice`, or the only one they have: see
    select_vocab) and write the report into `out` (default: default_out), with the verdicts
    of the claims the records were run for, or of `claims` on all of them.

    `out` must be new or compare's own earlier report (check_out). The report is built in a
    hidden folder beside it and swapped in (install), so that a failure or Ctrl-C leaves the
    earlier report as it was and no half-written one; the earlier report is then deleted
    file by file, as its marker lists them. `need_wandb` (normbench dashboard): refused,
    nothing written, when no run was logged to W&B."""
    records = read_records(paths)
    select_vocab(records, vocab_choice)
    runs, probes = records.runs, records.probes
    if need_wandb:
        check_dashboard_runs(runs)
    out = check_out(out or default_out(paths), records.inputs, paths, given=out is not None)
    axes = choose_axes(runs, x, y, group_by) if runs else None
    for i, run in enumerate(runs):
        run.label = f"{i:02d} {describe(run, axes.varying if axes else [])}".strip()
    verdicts = judge_claims(runs, probes, claims)
    for s in records.skipped:
        print(f"normbench compare: skipped {s.dir}: {s.reason}", file=sys.stderr, flush=True)
    for note in (n for r in runs for n in r.notes):
        print(f"normbench compare: warning: {note}", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)  # what a killed compare left beside it
    tmp = beside(out, "tmp")
    tmp.mkdir()
    try:
        rows, figures = write_report(tmp, records, axes, verdicts, paths)
        old = install(tmp, out)
    except BaseException:
        discard(tmp)
        raise
    if old is not None and not remove_report(old):
        print(
            f"normbench compare: kept {old}: it holds files compare did not write",
            file=sys.stderr,
            flush=True,
        )
    figures = {k: [out / p.name for p in v] for k, v in figures.items()}
    for v in verdicts:
        print(f"{v.title}: {v.outcome}", flush=True)
    return out, runs, axes, rows, figures


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise CompareError(f"{message} (see {self.prog} --help)")


def main(argv: list[str], need_wandb: bool = False, prog: str = "normbench compare") -> Path:
    """The command; returns the report's folder (`need_wandb`: see build_report)."""
    parser = _Parser(
        prog=prog,
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories or globs")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="report folder (default: PATH/compare for one directory, else ./compare-<date>_<time>.<microseconds>-<pid>): "
        "a new folder, or compare's own earlier report, which is replaced (deleting only the "
        "files its .normbench-report.json lists). Refused, nothing touched: a file, any other "
        "existing folder, a report holding files compare did not write, an input, or a "
        "folder holding an input",
    )
    parser.add_argument("--x", help="stability map x axis (default: lr)")
    parser.add_argument("--y", help="stability map y axis (default: depth)")
    parser.add_argument("--group-by", help="comma-separated keys, one loss-curve figure each")
    parser.add_argument(
        "--vocab",
        metavar="V",
        help="report only the records of this vocabulary (data.vocab_limit): full or a number; "
        "needed when they have several, whose losses are not comparable",
    )
    parser.add_argument(
        "--claim",
        action="append",
        metavar="NAME",
        help="judge this claim (repeatable) on all the records, whatever claim they were run "
        "for; without it, records are judged by their config's claim",
    )
    parser.add_argument("--wandb", action="store_true", help="also log the report to W&B")
    args = parser.parse_args(argv)
    if args.claim:
        check_claim_names(args.claim)
    group_by = [k for k in args.group_by.split(",") if k] if args.group_by is not None else None
    out, runs, axes, rows, figures = build_report(
        args.paths, args.out, args.x, args.y, group_by, args.vocab, args.claim, need_wandb
    )
    if args.wandb:
        from normbench.run.logger import log_report

        try:
            log_report(out, runs, rows, figures)
        finally:  # W&B's files in the report are compare's too: the next run replaces them
            write_marker(out)
    print(f"report: {out / 'index.html'}", flush=True)
    return out
