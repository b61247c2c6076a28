"""The records `normbench compare` reads: run records (summary.json), probe records
(probe.json), each with its config.yaml, and run folders with no record yet.

A record that cannot be read (a summary.json that is not a JSON object, an empty
config.yaml, ...) and a run folder with no record (a config or metrics but no summary.json:
killed before the first write) become a `Skipped` with the reason. Folders that are never
records: a run's own subfolders (`NOT_RUNS`), report folders (they hold `MARKER`) and
compare's hidden folders beside a report (`TEMP_NAME`, normbench/analysis/report/outdir.py).

One report holds one vocabulary (`data.vocab_limit`, normbench/run/data/vocab.py): losses of runs
with different vocabularies are not comparable, so `select_vocab` keeps the records of one.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import NormbenchError
from normbench.run.axes import order
from normbench.run.data import vocab
from normbench.run.record.files import (
    RECORD_BYTES,
    RecordError,
    load_yaml_record,
    read_bounded,
    read_jsonl,
)
from normbench.run.record.rundir import flat
from normbench.run.record.summary import Status


class CompareError(NormbenchError):
    """Bad input to `normbench compare` (one line, what to change)."""


class Unreadable(Exception):
    """A record compare cannot use; the message is the reason (shown in the report)."""


MARKER = ".normbench-report.json"  # in every report folder: the files compare wrote there
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
    "collapsed_at_step": (int, float),
    "diag": (dict,),
    "layer_removal": (dict,),
    "wandb": (dict,),
}


@dataclass
class Run:
    """One run directory's record."""

    dir: Path
    config: dict[str, Any]  # flattened, lists as tuples: {"norm.name": "pre", "optim.lr": 0.001}
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    events: list[dict[str, Any]]
    label: str = ""
    notes: list[str] = field(default_factory=list)  # rows of its record left out, and why

    @property
    def status(self) -> Status:
        return Status(self.summary["status"])  # checked by load_run

    @property
    def diverged(self) -> bool:
        return self.status == Status.DIVERGED

    @property
    def collapsed(self) -> bool:
        """Ended at the loss of the unigram predictor (normbench/run/monitor/collapse.py):
        trained to the end, but not a healthy run."""
        return self.status == Status.COLLAPSED

    @property
    def unigram_val_ce(self) -> float | None:
        """The validation loss of the unigram predictor of its training counts (None in a
        record written before it was measured)."""
        value = (self.summary.get("unigram") or {}).get("val_ce")
        return float(value) if isinstance(value, (int, float)) else None

    def rows(self, key: str) -> list[dict[str, Any]]:
        return [r for r in self.metrics if r.get(key) is not None]


@dataclass
class Skipped:
    """A record directory left out of the report, and why."""

    dir: Path
    reason: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_row_ok(row: dict[str, Any]) -> bool:
    """A metrics row as normbench writes it: an integer step and token count, and every
    other value a number or null."""
    if not (isinstance(row.get("step"), int) and isinstance(row.get("tokens"), int)):
        return False
    return all(_number(v) or v is None for v in row.values())


def event_row_ok(row: dict[str, Any]) -> bool:
    """An event as normbench writes it: an integer step and token count, and its kind."""
    return (
        isinstance(row.get("step"), int)
        and isinstance(row.get("tokens"), int)
        and isinstance(row.get("kind"), str)
        and (_number(row.get("value")) or row.get("value") is None)
    )


def _read_jsonl(path: Path, notes: list[str], row_ok: Any = None) -> list[dict[str, Any]]:
    """The rows of a JSONL file of a record. A line that is not a JSON object, or a row
    `row_ok` refuses, costs only itself: it is left out and named in `notes`; a cut last
    line (a kill) is left out silently; a file that cannot be read is named."""
    try:
        lines = read_jsonl(path)
    except OSError as e:
        notes.append(f"{path}: cannot be read ({e.strerror or e}); its rows are left out")
        return []
    rows = [r for r in lines.rows if row_ok is None or row_ok(r)]
    if lines.damaged:
        notes.append(lines.describe(path))
    if len(rows) < len(lines.rows):
        odd = len(lines.rows) - len(rows)
        notes.append(f"{path}: {odd} rows that are not normbench's; left out, every other row kept")
    return rows


def _parse(path: Path, kind: str) -> Any:
    """The parsed YAML or JSON file, or Unreadable with the reason in a few words."""
    try:
        if kind == "YAML":
            return load_yaml_record(path)
        return json.loads(read_bounded(path, RECORD_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise Unreadable(f"{path.name} is missing") from None
    except OSError as e:
        raise Unreadable(f"{path.name} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise Unreadable(f"{path.name} is not UTF-8 text") from None
    except RecordError as e:
        raise Unreadable(str(e)) from None
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError):
        raise Unreadable(f"{path.name} is not valid {kind}") from None


def _read_record(run_dir: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flattened config.yaml (lists as tuples, so that values can be grouped) and the JSON object in file `name` of a record directory;
    Unreadable when either is not what normbench writes."""
    config = _parse(run_dir / "config.yaml", "YAML")
    if config is None:
        raise Unreadable("config.yaml is empty")
    if not isinstance(config, dict):
        raise Unreadable("config.yaml is not a mapping")
    config = flat(config, tuples=True)
    limit = config.get("data.vocab_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise Unreadable("config.yaml: data.vocab_limit is not a number or null")
    data = _parse(run_dir / name, "JSON")
    if not isinstance(data, dict):
        raise Unreadable(f"{name} is not a JSON object")
    return config, data


def load_run(run_dir: Path) -> Run:
    """The run record of `run_dir` (Unreadable when it is not one compare can use)."""
    config, summary = _read_record(run_dir, "summary.json")
    if summary.get("status") not in {s.value for s in Status}:
        known = ", ".join(s.value for s in Status)
        raise Unreadable(f"summary.json: status is {summary.get('status')!r}, not one of {known}")
    for key, types in SUMMARY_TYPES.items():
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            what = "an object" if types == (dict,) else "a number"
            raise Unreadable(f"summary.json: {key} is not {what}")
    notes: list[str] = []
    return Run(
        dir=run_dir,
        config=config,
        summary=summary,
        metrics=_read_jsonl(run_dir / "metrics.jsonl", notes, metrics_row_ok),
        events=_read_jsonl(run_dir / "events.jsonl", notes, event_row_ok),
        notes=notes,
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


def vocab_of(record: Run | Probe) -> Any:
    """A record's `data.vocab_limit` (None: GPT-2's full vocabulary, also for records
    written before the option existed)."""
    return record.config.get("data.vocab_limit")


def _vocab_names(limits: list[Any]) -> list[str]:
    return [vocab.name(v) for v in sorted(limits, key=order)]


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
