"""`normbench compare`: a report from local run records, with no network and no W&B account.

    normbench compare PATH... [--out DIR] [--x KEY] [--y KEY] [--group-by KEY,...] [--vocab V]
                      [--wandb]

PATH is a run directory, a sweep directory (every run below it) or a glob. The report holds
`index.html` (one self-contained page, the figures embedded), `summary.csv` and `summary.md`
(one row per configuration: mean ± std over seeds, diverged count, tokens/s), and figures as
PNG and SVG: loss curves per group coloured by placement with divergence events marked, a
stability map per placement (final validation loss over two axes, diverged cells marked and
counted), per-layer diagnostics, and for each diverged run its last steps layer by layer.

One report holds one vocabulary (`data.vocab_limit`, normbench/run/vocab.py): losses of runs
with different vocabularies are not comparable (a reduced vocabulary's shared id is an easy
target), so records of several are refused unless `--vocab full` or `--vocab K` picks one.
Every table says which (summary.md and the page above the tables, a `vocab` column in
summary.csv), and so do the loss figures of a reduced vocabulary.

Probe records (`normbench probe` run directories, probe.json) are read too. Records made by a
reproduction preset (config `claim`, configs/experiment/) are judged against the claim
(normbench/analysis/claims.py): `verdicts.md`, `verdicts.json` and a section at the top of the page.

The axes are the config keys that vary across the runs (derived keys such as a kind's eps
left out); the seed is averaged over. `--x`/`--y` choose the stability map's axes (default
lr x depth) and `--group-by` the keys that make one loss-curve figure each (default: every
varying key but the placement and the seed).

Records that cannot be read (a summary.json that is not a JSON object, an empty config.yaml,
...) and run folders with no record yet (a config or metrics but no summary.json: killed
before the first write) are left out of the tables and figures, and listed with the reason
in the report (the Runs section, summary.md) and on stderr, one line each. The report shows
labels and values as data: summary.md escapes & < > and |, summary.csv puts a ' before a text
that a spreadsheet would run as a formula (one beginning with = + - @, a tab or a CR).

Where the report goes: `--out DIR`, by default PATH/compare for one directory, else a new
./compare-<date>. compare writes only there and never deletes what it did not write: every
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
import base64
import contextlib
import csv
import ctypes
import dataclasses
import errno
import glob
import html
import json
import math
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import NormbenchError
from normbench.run import vocab
from normbench.run.rundir import flat

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
    "data.vocab_limit": "vocab_limit",
}
LONG = {short: key for key, short in SHORT.items()}
# Not axes: where things were written, values derived from other keys, other commands' keys.
IGNORED = ("logger.", "data.cache_dir", "norm.constants.", "probe", "claim")


class CompareError(NormbenchError):
    """Bad input to `normbench compare` (one line, what to change)."""


class Unreadable(Exception):
    """A record compare cannot use; the message is the reason (shown in the report)."""


MARKER = ".normbench-report.json"  # in every report folder: the files compare wrote there
REPORT_FORMAT = 1
NO_RECORD = "no record (killed before the first write?)"
# Folders inside a run directory that are never runs themselves and hold no records.
NOT_RUNS = ("checkpoints", "wandb", ".hydra")
# compare's own folders beside a report: one being built, or an old one being removed.
TEMP_NAME = re.compile(r"^\..+\.(tmp|old)-\d+-[0-9a-f]+$")
# Summary keys the report computes with, and the types they may have (or null).
SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        ("steps", "tokens", "val_loss", "best_val_loss", "val_ppl", "tokens_per_s"), (int, float)
    ),
    "diverged_at_step": (int, float),
    "diag": (dict,),
    "wandb": (dict,),
}


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
class Skipped:
    """A record directory left out of the report, and why."""

    dir: Path
    reason: str


@dataclass
class Axes:
    """Which keys vary, and how the runs are arranged in the report."""

    varying: list[str]  # dotted keys, axes first in SHORT's order
    x: str
    y: str
    group_by: list[str]
    config_keys: list[str] = field(default_factory=list)  # varying, without the seed
    vocab_limit: int | None = None  # the runs' one vocabulary (None: GPT-2's full one)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of a record's config (normbench.run.rundir.flat), lists as tuples so that
    values can be grouped."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flat(config).items()}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, up to the first line that is not one."""
    if not path.is_file():
        return []
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: the rows before it still count
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def _parse(path: Path, kind: str) -> Any:
    """The parsed YAML or JSON file, or Unreadable with the reason in a few words."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Unreadable(f"{path.name} is missing") from None
    except OSError as e:
        raise Unreadable(f"{path.name} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise Unreadable(f"{path.name} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError):
        raise Unreadable(f"{path.name} is not valid {kind}") from None


def _read_record(run_dir: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flattened config.yaml and the JSON object in file `name` of a record directory;
    Unreadable when either is not what normbench writes."""
    config = _parse(run_dir / "config.yaml", "YAML")
    if config is None:
        raise Unreadable("config.yaml is empty")
    if not isinstance(config, dict):
        raise Unreadable("config.yaml is not a mapping")
    limit = flat(config).get("data.vocab_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise Unreadable("config.yaml: data.vocab_limit is not a number or null")
    data = _parse(run_dir / name, "JSON")
    if not isinstance(data, dict):
        raise Unreadable(f"{name} is not a JSON object")
    return flatten(config), data


def load_run(run_dir: Path) -> Run:
    """The run record of `run_dir` (Unreadable when it is not one compare can use)."""
    config, summary = _read_record(run_dir, "summary.json")
    for key, types in SUMMARY_TYPES.items():
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            what = "an object" if types == (dict,) else "a number"
            raise Unreadable(f"summary.json: {key} is not {what}")
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
    """The probe record of `run_dir` (Unreadable when it is not one compare can use)."""
    config, table = _read_record(run_dir, "probe.json")
    if not isinstance(table.get("settings"), dict):
        raise Unreadable("probe.json: settings is not an object")
    return Probe(dir=run_dir, config=config, table=table)


@dataclass
class Records:
    """What compare found under its paths."""

    runs: list[Run]
    probes: list[Probe]
    skipped: list[Skipped]  # unreadable records, and runs killed before their first record
    inputs: list[Path]  # the paths (globs expanded) and the record folders, resolved
    vocab_limit: int | None = None  # the one vocabulary reported (select_vocab)


def is_report(folder: Path) -> bool:
    """A folder that `normbench compare` wrote (it holds the marker file)."""
    return (folder / MARKER).is_file()


def _folders(root: Path) -> list[tuple[Path, set[str]]]:
    """`root` and every folder below it with the names of its files, sorted; report
    folders, compare's temporary folders and folders that are never runs left out."""

    def left_out(folder: Path) -> bool:
        return folder.name in NOT_RUNS or bool(TEMP_NAME.match(folder.name)) or is_report(folder)

    if not root.is_dir() or is_report(root):
        return []
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not left_out(Path(top) / d))
        found.append((Path(top), set(files)))
    return found


def _kind(folder: Path, files: set[str]) -> str | None:
    """probe.json or summary.json for a record, NO_RECORD for a run killed before its
    first record (a config or metrics but no record), else None."""
    for name in ("probe.json", "summary.json"):
        if name in files:
            return name
    if files & {"config.yaml", "metrics.jsonl"} or (folder / ".hydra" / "config.yaml").is_file():
        return NO_RECORD
    return None


def read_records(paths: list[str]) -> Records:
    """Every run record (summary.json and config.yaml), probe record (probe.json and
    config.yaml) and record-less run folder under the paths; CompareError when none of
    them can be read."""
    if not paths:
        raise CompareError("give run directories, sweep directories or globs to compare")
    found: dict[Path, str] = {}
    matched: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise CompareError(f"{pattern}: no such file or directory")
        for match in map(Path, matches):
            if not is_report(match):  # a report is never read, so never an input
                matched.append(match.resolve())
            for folder, files in _folders(match):
                kind = _kind(folder, files)
                if kind is not None:
                    found.setdefault(folder.resolve(), kind)
    records = Records([], [], [], matched + list(found))
    for folder, kind in found.items():
        try:
            if kind == NO_RECORD:
                raise Unreadable(NO_RECORD)
            if kind == "summary.json":
                records.runs.append(load_run(folder))
            else:
                records.probes.append(load_probe(folder))
        except Unreadable as e:
            records.skipped.append(Skipped(folder, str(e)))
    if not records.runs and not records.probes:
        where = " ".join(paths)
        if not records.skipped:
            raise CompareError(
                "no run records (folders with summary.json and config.yaml) or probe records "
                f"(probe.json) under {where}"
            )
        shown = "; ".join(f"{s.dir}: {s.reason}" for s in records.skipped[:3])
        more = f"; {len(records.skipped) - 3} more" if len(records.skipped) > 3 else ""
        raise CompareError(
            f"no readable run or probe records under {where} ({shown}{more}); "
            "fix or remove these folders, or give other paths"
        )
    return records


# --- one vocabulary per report (normbench/run/vocab.py) -----------------------------------------------


def vocab_of(record: Run | Probe) -> Any:
    """A record's `data.vocab_limit` (None: GPT-2's full vocabulary, also for records
    written before the option existed)."""
    return record.config.get("data.vocab_limit")


def _vocab_names(limits: list[Any]) -> list[str]:
    return [vocab.name(v) for v in sorted(limits, key=_order)]


def one_vocab(records: list[Any]) -> Any:
    """The vocabulary all `records` share; CompareError when they have several (their losses
    are not comparable, so they never share a table)."""
    limits = list({repr(vocab_of(r)): vocab_of(r) for r in records}.values())
    if len(limits) > 1:
        names = _vocab_names(limits)
        raise CompareError(
            f"the records have {len(names)} vocabularies (data.vocab_limit {', '.join(names)}), "
            "whose losses are not comparable; report one at a time with "
            + " or ".join(f"--vocab {n}" for n in names)
        )
    return limits[0] if limits else None


def parse_vocab(text: str) -> int | None:
    """`--vocab`: `full` (or null) or a number K."""
    if text.strip().lower() in ("full", "null", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise CompareError(f"--vocab takes full or a number K (got {text!r})") from None


def select_vocab(records: Records, choice: str | None) -> None:
    """Keep the runs and probes of one vocabulary: `choice` (`--vocab`), or the only one
    the records have (CompareError when they have several and no choice is given)."""
    both = records.runs + records.probes
    if choice is None:
        records.vocab_limit = one_vocab(both)
        return
    limit = parse_vocab(choice)
    if not any(vocab_of(r) == limit for r in both):
        names = _vocab_names(list({repr(vocab_of(r)): vocab_of(r) for r in both}.values()))
        raise CompareError(f"--vocab {choice}: no records of it; they have {', '.join(names)}")
    left = sum(vocab_of(r) != limit for r in both)
    records.runs = [r for r in records.runs if vocab_of(r) == limit]
    records.probes = [p for p in records.probes if vocab_of(p) == limit]
    records.vocab_limit = limit
    if left:
        print(
            f"normbench compare: --vocab {choice}: left out {left} record{'s' * (left > 1)} "
            "of other vocabularies",
            file=sys.stderr,
            flush=True,
        )


def vocab_note(limit: Any) -> str:
    """The line above every table: which vocabulary the losses are over."""
    if limit is None:
        return f"Vocabulary: full (GPT-2's {vocab.GPT2_VOCAB:,} tokens)."
    return (
        f"Vocabulary: {vocab.name(limit)} (data.vocab_limit: the most frequent training tokens "
        "and one shared id for the rest). Losses are comparable only with runs of the same "
        "vocabulary, never with full-vocabulary ones."
    )


def find_records(paths: list[str]) -> tuple[list[Run], list[Probe]]:
    """Every readable run record and probe record under the paths."""
    records = read_records(paths)
    return records.runs, records.probes


def find_runs(paths: list[str]) -> list[Run]:
    """Every run record under the paths (probe records left out)."""
    runs, _ = find_records(paths)
    if not runs:
        raise CompareError(f"no run records (folders with summary.json) under {' '.join(paths)}")
    return runs


# --- verdicts on the literature's claims (normbench/analysis/claims.py) ----------------------------------


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
        f"{v('data.label')}, {vocab.label(one_vocab(runs))}"
    )


def probe_setting(probes: list[Probe]) -> str:
    p = probes[0].table.get("settings", {})
    v = lambda key: _values(probes, key)  # noqa: E731
    norms = {str(n) for q in probes for n in q.table["settings"].get("norms", [])}
    depths = {d for q in probes for d in q.table["settings"].get("depths", [])}
    return (
        f"normbench probe at initialization, fp32: norms {','.join(sorted(norms))}, "
        f"depths {','.join(str(d) for d in sorted(depths, key=_order))}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}, "
        f"kind {v('norm.kind')}; {p.get('batches')} batches of {p.get('batch_size')} sequences; "
        f"one AdamW step of lr {p.get('lr') or v('optim.lr')}; seeds "
        f"{','.join(str(s) for s in p.get('seeds', []))}; data {v('data.label')}, "
        f"{vocab.label(one_vocab(probes))}"
    )


def judge_claims(runs: list[Run], probes: list[Probe]) -> list[Any]:
    """A verdict for every claim that some of the records were run for (config `claim`)."""
    from normbench.analysis.claims import CLAIMS, ProbeTable, judge

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


def _markdown_safe(v: Any) -> Any:
    """A copy of verdict `v` whose texts (which hold config values: the setting, the
    note) show in markdown as written, HTML special characters escaped."""
    e = lambda text: html.escape(str(text), quote=False)  # noqa: E731
    return dataclasses.replace(
        v,
        title=e(v.title),
        source=e(v.source),
        statement=e(v.statement),
        setting=e(v.setting),
        note=e(v.note),
        measured=[(e(q), e(m)) for q, m in v.measured],
        checks=[
            dataclasses.replace(c, condition=e(c.condition), measured=e(c.measured))
            for c in v.checks
        ],
    )


def write_verdicts(out: Path, verdicts: list[Any]) -> None:
    """verdicts.md and verdicts.json (nothing when no record was run for a claim)."""
    if not verdicts:
        return
    text = "# Verdicts\n\n" + "\n".join(_markdown_safe(v).markdown() for v in verdicts)
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
    return Axes(varying, xk, yk, groups, config_keys, vocab_limit=one_vocab(runs))


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
        row["vocab"] = vocab.name(axes.vocab_limit)  # every CSV row says what its losses are over
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


def md_cell(value: Any) -> str:
    """A markdown table cell showing `value` as written: HTML special characters escaped,
    a `|` (which would end the cell) backslashed, line breaks as spaces."""
    text = html.escape(str(value), quote=False).replace("|", "\\|")
    return " ".join(text.splitlines())


def table_markdown(rows: list[dict[str, Any]], axes: Axes) -> str:
    keys = [short(k) for k in axes.config_keys]
    head = [*keys, "runs", "val/loss (final)", "best val/loss", "diverged", "tokens/s"]
    lines = ["| " + " | ".join(map(md_cell, head)) + " |", "|" + "---|" * len(head)]
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
        lines.append("| " + " | ".join(map(md_cell, cells)) + " |")
    return md_cell(vocab_note(axes.vocab_limit)) + "\n\n" + "\n".join(lines) + "\n"


def skipped_markdown(skipped: list[Skipped]) -> str:
    """The records left out of the report, and why (nothing when none was)."""
    if not skipped:
        return ""
    lines = ["## Not in the report", "", "| directory | reason |", "|---|---|"]
    lines += [f"| {md_cell(s.dir)} | {md_cell(s.reason)} |" for s in skipped]
    return "\n".join(lines) + "\n"


def csv_cell(value: Any) -> Any:
    """A CSV value that a spreadsheet shows as data: a text beginning with = + - @, a tab or
    a carriage return (which it would run as a formula) gets a leading '; numbers stay."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([csv_cell(k) for k in keys])
        for row in rows:
            cells = ["" if row.get(k) is None else row[k] for k in keys]
            writer.writerow([csv_cell(c) for c in cells])


# --- the report ---------------------------------------------------------------------------------


def default_out(paths: list[str]) -> Path:
    """`<sweep or run dir>/compare` for one directory; else a dated folder here."""
    if len(paths) == 1 and not glob.has_magic(paths[0]) and Path(paths[0]).is_dir():
        return Path(paths[0]) / "compare"
    return Path(f"compare-{time.strftime('%Y-%m-%d_%H-%M-%S')}")


# --- where the report goes: never over anything compare did not write ---------------------------


def _tree(root: Path) -> tuple[list[str], list[str]]:
    """The files (symbolic links included, never followed) and the folders below `root`,
    as sorted POSIX paths relative to it."""
    files, folders = [], []
    for top, dirs, names in os.walk(root):
        rel = Path(top).relative_to(root)
        for d in list(dirs):
            if (Path(top) / d).is_symlink():
                dirs.remove(d)
                names.append(d)
            else:
                folders.append((rel / d).as_posix())
        files += [(rel / n).as_posix() for n in names]
    return sorted(files), sorted(folders)


def _parents(files: list[str]) -> set[str]:
    return {p.as_posix() for f in files for p in Path(f).parents if p != Path(".")}


def _plain(rel: Any) -> bool:
    """A relative POSIX path that stays inside its folder."""
    if not isinstance(rel, str) or not rel:
        return False
    path = Path(rel)
    return not path.is_absolute() and ".." not in path.parts and rel == path.as_posix()


@dataclass
class Written:
    """What compare wrote into a report folder (its marker): the files and the folders."""

    files: list[str]
    folders: list[str]

    def all_folders(self) -> set[str]:
        return set(self.folders) | _parents(self.files)


def read_marker(folder: Path) -> Written | None:
    """What compare wrote into report `folder`, or None when the folder is not a report (no
    marker, or one that compare would not have written)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != REPORT_FORMAT:
        return None
    files, folders = marker.get("files"), marker.get("folders")
    if not isinstance(files, list) or not isinstance(folders, list):
        return None
    if not all(map(_plain, files + folders)):
        return None
    return Written(files, folders)


def write_marker(folder: Path) -> None:
    """Record every file and folder now in `folder` as written by compare."""
    files, folders = _tree(folder)
    marker = {
        "written_by": "normbench compare",
        "format": REPORT_FORMAT,
        "files": [f for f in files if f != MARKER],
        "folders": folders,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def unlisted(folder: Path, written: Written) -> list[str]:
    """What report `folder` holds that its marker does not list (added by someone else)."""
    files, folders = _tree(folder)
    listed, allowed = set(written.files) | {MARKER}, written.all_folders()
    return [f for f in files if f not in listed] + [d for d in folders if d not in allowed]


def check_out(out: Path, inputs: list[Path], paths: list[str], given: bool) -> Path:
    """The absolute report folder for `out`, or CompareError when writing there could
    touch anything but compare's own earlier report."""
    name = f"--out {out}" if given else f"the default report folder {out}"
    other = "give --out a new folder"
    if given:
        default = default_out(paths)
        where = os.path.join(paths[0], "compare") if default.name == "compare" else None
        where = where or "a new dated folder here"
        other = f"choose another --out (the default is {where})"
    absolute = Path(os.path.abspath(out))
    if absolute.parent == absolute:
        raise CompareError(f"{name} is the root of the file system; {other}")
    target = absolute.parent.resolve() / absolute.name
    for path in inputs:
        if path == target:
            raise CompareError(f"{name} is one of the inputs; {other}")
        if target in path.parents:
            raise CompareError(f"{name} contains the input {path}; {other}")
    if target.is_symlink():
        raise CompareError(f"{name} is a symbolic link; give a folder path, or {other}")
    if target.exists() and not target.is_dir():
        raise CompareError(f"{name} is a file, not a folder; {other}")
    if target.is_dir():
        written = read_marker(target)
        if written is None:
            raise CompareError(
                f"{name} exists and is not a normbench compare report (no {MARKER}); choose a "
                "new folder — compare never deletes what it did not write"
            )
        extra = unlisted(target, written)
        if extra:
            raise CompareError(
                f"{name} holds {extra[0]}, which compare did not write; move it out of the "
                "report or choose another --out — compare never deletes what it did not write"
            )
    return target


RENAME_NOREPLACE, RENAME_EXCHANGE, AT_FDCWD = 1, 2, -100


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Linux renameat2(2): True when done, False where the system or the file system lacks
    it (then the caller falls back to rename); OSError on any other failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def _beside(out: Path, kind: str) -> Path:
    """A fresh hidden name beside `out` for a report being built (tmp) or removed (old)."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def install(built: Path, out: Path) -> Path | None:
    """Move the report `built` to `out`. An earlier report at `out` is swapped out in one
    step (renameat2 RENAME_EXCHANGE: readers see the old report or the new, never none) or,
    where that is not available, renamed aside first. Returns where the old report now is."""
    if not os.path.lexists(out):
        if not _renameat2(built, out, RENAME_NOREPLACE):
            os.rename(built, out)
        return None
    if _renameat2(built, out, RENAME_EXCHANGE):
        return built
    aside = _beside(out, "old")
    os.rename(out, aside)
    try:
        os.rename(built, out)
    except BaseException:
        os.rename(aside, out)
        raise
    return aside


def remove_report(folder: Path) -> bool:
    """Delete a report folder file by file: only what its marker lists, then the folders
    that are left empty. Anything else (added since) stays, and so does the folder; returns
    whether the folder is gone."""
    written = read_marker(folder)
    if written is None:
        return False
    for rel in written.files:
        path = folder / rel
        inside = all(not (folder / p).is_symlink() for p in Path(rel).parents if p != Path("."))
        if inside and os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            path.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    for rel in sorted(written.all_folders(), key=lambda p: -len(Path(p).parts)):
        with contextlib.suppress(OSError):  # not empty: it holds something else now
            (folder / rel).rmdir()
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def discard(built: Path) -> None:
    """Remove a report folder being built (compare's own, from mkdir on) after a failure."""
    if not os.path.lexists(built):
        return
    if is_report(built):  # complete, or the old report after a swap: by its marker
        remove_report(built)
    else:
        shutil.rmtree(built, ignore_errors=True)


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


def write_report(
    tmp: Path, records: Records, axes: Axes | None, verdicts: list[Any], sources: list[str]
) -> tuple[list[dict[str, Any]], dict[str, list[Path]]]:
    """Every file of the report, into the new folder `tmp`; its marker last."""
    from normbench.analysis import figures as fig

    runs, probes, skipped = records.runs, records.probes, records.skipped
    rows: list[dict[str, Any]] = []
    figures: dict[str, list[Path]] = {}
    if runs and axes is not None:
        rows = summary_rows(runs, axes)
        write_csv(tmp / "summary.csv", rows)
        figures = fig.report_figures(tmp, runs, axes)
    if rows or skipped:
        text = table_markdown(rows, axes) if rows and axes is not None else ""
        text += ("\n" if text and skipped else "") + skipped_markdown(skipped)
        (tmp / "summary.md").write_text(text, encoding="utf-8")
    if probes:
        figures["probes"] = copy_probe_figures(tmp, probes)
    write_verdicts(tmp, verdicts)
    write_html(
        tmp, runs, axes, rows, figures, sources, verdicts, probes, skipped, records.vocab_limit
    )
    write_marker(tmp)
    return rows, figures


def build_report(
    paths: list[str],
    out: Path | None,
    x: str | None = None,
    y: str | None = None,
    group_by: list[str] | None = None,
    vocab_choice: str | None = None,
) -> tuple[Path, list[Run], Axes | None, list[dict[str, Any]], dict[str, list[Path]]]:
    """Read the records of one vocabulary (`vocab_choice`, or the only one they have: see
    select_vocab) and write the report into `out` (default: default_out).

    `out` must be new or compare's own earlier report (check_out). The report is built in a
    hidden folder beside it and swapped in (install), so that a failure or Ctrl-C leaves the
    earlier report as it was and no half-written one; the earlier report is then deleted
    file by file, as its marker lists them."""
    records = read_records(paths)
    select_vocab(records, vocab_choice)
    runs, probes = records.runs, records.probes
    out = check_out(out or default_out(paths), records.inputs, paths, given=out is not None)
    axes = choose_axes(runs, x, y, group_by) if runs else None
    for i, run in enumerate(runs):
        run.label = f"{i:02d} {describe(run, axes.varying if axes else [])}".strip()
    verdicts = judge_claims(runs, probes)
    for s in records.skipped:
        print(f"normbench compare: skipped {s.dir}: {s.reason}", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(out, "tmp")
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
        raise CompareError(f"{message} (see normbench compare --help)")


def main(argv: list[str]) -> None:
    parser = _Parser(
        prog="normbench compare",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories or globs")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="report folder (default: PATH/compare for one directory, else ./compare-<date>): "
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
    parser.add_argument("--wandb", action="store_true", help="also log the report to W&B")
    args = parser.parse_args(argv)
    group_by = [k for k in args.group_by.split(",") if k] if args.group_by is not None else None
    out, runs, axes, rows, figures = build_report(
        args.paths, args.out, args.x, args.y, group_by, args.vocab
    )
    if args.wandb:
        from normbench.run.logger import log_report

        try:
            log_report(out, runs, rows, figures)
        finally:  # W&B's files in the report are compare's too: the next run replaces them
            write_marker(out)
    print(f"report: {out / 'index.html'}", flush=True)
