"""The local run record: config.yaml, metrics.jsonl, events.jsonl and summary.json (and
vocab.json, the vocabulary mapping of a run with `data.vocab_limit`; init_profile.json, the
initialization a placement measured on data before training, such as Admin's profiled omega).

The record is written independently of W&B, so a tracking failure never loses it. A run
keeps disk space for its summary (`.summary-reserve`, 1 MiB, removed when the run ends), so a
disk that fills up mid-run still ends with a `summary.json` saying `failed` and why.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

import yaml

from normbench.errors import WriteError
from normbench.run.record.files import open_own, read_jsonl, refuse_link, write_atomic
from normbench.run.record.summary import Status, Summary

log = logging.getLogger(__name__)

# Write errors that more space (or a higher limit) would cure.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
RESERVE = ".summary-reserve"
RESERVE_BYTES = 1 << 20
# A temporary file of write_atomic (`.<name>.tmp-<pid>`) left by a kill.
_PARTIAL = re.compile(
    r"\.(config\.yaml|summary\.json|metrics\.jsonl|events\.jsonl|vocab\.json|init_profile\.json)"
    r"\.tmp-\d+"
)


class RecordWriteError(WriteError):
    """A record file that cannot be written (disk full, a file-size limit, permissions)."""


def write_error(path: Path, e: OSError) -> RecordWriteError:
    """The one-line error for a failed write of `path`, with the space left."""
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free"
    except OSError:
        free = ""
    reason = e.strerror or type(e).__name__
    return RecordWriteError(f"could not write {path} ({reason}{free})")


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN), so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# The run-record files of a run directory (not Hydra's own .hydra/ and log files; the
# checkpoint folder counts).
RECORD_NAMES = (
    "config.yaml",
    "metrics.jsonl",
    "events.jsonl",
    "summary.json",
    "vocab.json",
    "init_profile.json",
    "checkpoints",
)


def record_files(run_dir: Path) -> list[str]:
    """The run-record files present in a run directory."""
    return [n for n in RECORD_NAMES if (Path(run_dir) / n).exists()]


class Record(Protocol):
    """Where one run's record goes: RunRecord (the files), or NullRecord (nowhere)."""

    def write_config(self, config: dict[str, Any]) -> None: ...
    def write_vocab(self, mapping: dict[str, Any]) -> None: ...
    def write_init_profile(self, profile: dict[str, Any]) -> None: ...
    def log(self, row: dict[str, Any]) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...
    def sync(self) -> dict[str, int]: ...
    def write_summary(self, summary: Summary) -> None: ...
    def close(self) -> None: ...


class NullRecord:
    """The record of a torchrun rank other than 0 (rank 0 writes the run's record), and of
    a benchmark's steps."""

    def write_config(self, config: dict[str, Any]) -> None:
        pass

    def write_vocab(self, mapping: dict[str, Any]) -> None:
        pass

    def write_init_profile(self, profile: dict[str, Any]) -> None:
        pass

    def log(self, row: dict[str, Any]) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        pass

    def sync(self) -> dict[str, int]:
        return {}

    def write_summary(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        pass


def _keep_rows(path: Path, last_step: int) -> int:
    """Keep the rows of a JSONL file whose step is at most `last_step` (a resume drops what
    was logged after its checkpoint, so no step is logged twice); return how many. A cut
    last line goes too; a damaged line elsewhere costs only itself, and is named."""
    if not path.is_file():
        return 0
    lines = read_jsonl(path)
    if lines.damaged:
        log.warning("%s", lines.describe(path))
    kept = [row for row in lines.rows if _step_of(row) <= last_step]
    odd = sum(_step_of(row) == math.inf for row in lines.rows)
    if odd:
        log.warning("%s: %d rows without a numeric step; left out", path, odd)
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
    return len(kept)


def _step_of(row: dict[str, Any]) -> float:
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


class RunRecord:
    """The files of one run. `resume_after`: the step of the checkpoint a resumed run
    continues from (rows logged after it are dropped); 0 starts the record afresh.

    Every write that fails raises RecordWriteError naming the file and the space left; the
    summary is written even on a full disk (the space kept in `.summary-reserve` is given
    back for it).
    """

    def __init__(self, run_dir: Path, resume_after: int | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.iterdir():  # temporary files of a killed write
            if _PARTIAL.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)
        self._reserve = self.dir / RESERVE
        self._metrics = self._events = None
        self.rows = {"metrics": 0, "events": 0}  # the rows of each file, kept ones included
        self._guard(self._reserve, self._keep_space)
        if resume_after is not None:
            for name in self.rows:
                path = self.dir / f"{name}.jsonl"
                self.rows[name] = self._guard(path, lambda p=path: _keep_rows(p, resume_after))
        self._metrics = self._guard(self.dir / "metrics.jsonl", lambda: self._open("metrics"))
        self._events = self._guard(self.dir / "events.jsonl", lambda: self._open("events"))

    def _open(self, name: str) -> Any:
        return open_own(self.dir / f"{name}.jsonl", "a", encoding="utf-8")

    def _keep_space(self) -> None:
        refuse_link(self._reserve)
        try:
            with open_own(self._reserve, "wb") as f:
                try:  # blocks the file system really allocates (not a sparse file)
                    os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
                except (AttributeError, OSError) as e:
                    if getattr(e, "errno", None) in NO_SPACE:
                        raise
                    f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            if not self._reserve.is_symlink():
                self._reserve.unlink(missing_ok=True)
            raise

    def _guard(self, path: Path, write: Any) -> Any:
        try:
            return write()
        except OSError as e:
            raise write_error(path, e) from e

    def write_config(self, config: dict[str, Any]) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        self._guard(self.dir / "config.yaml", lambda: write_atomic(self.dir / "config.yaml", text))

    def write_vocab(self, mapping: dict[str, Any]) -> None:
        """vocab.json: the vocabulary mapping of `data.vocab_limit` (normbench/run/data/vocab.py)."""
        path, text = self.dir / "vocab.json", json.dumps(mapping, indent=1) + "\n"
        self._guard(path, lambda: write_atomic(path, text))

    def write_init_profile(self, profile: dict[str, Any]) -> None:
        """init_profile.json: what the placement measured on data before training
        (`GPT.profile_init`: Admin's profiled omega, per sublayer, and the variances behind it)."""
        path = self.dir / "init_profile.json"
        text = json.dumps(_jsonable(profile), indent=1) + "\n"
        self._guard(path, lambda: write_atomic(path, text))

    def _append(self, f: Any, path: Path, row: dict[str, Any]) -> None:
        line = json.dumps(_jsonable(row)) + "\n"
        self._guard(path, lambda: (f.write(line), f.flush()))

    def log(self, row: dict[str, Any]) -> None:
        """One JSON object per line; flushed so a crash keeps every logged step."""
        self._append(self._metrics, self.dir / "metrics.jsonl", row)
        self.rows["metrics"] += 1

    def event(self, event: dict[str, Any]) -> None:
        """One divergence event per line of events.jsonl (the file exists even with none)."""
        self._append(self._events, self.dir / "events.jsonl", event)
        self.rows["events"] += 1

    def sync(self) -> dict[str, int]:
        """Make the appended rows durable (fsync; called before each checkpoint, so that a
        resume after a crash of the machine finds every row the checkpoint covers); return
        how many rows each file holds, for the checkpoint to record."""
        for name, f in (("metrics", self._metrics), ("events", self._events)):
            if f is not None:
                self._guard(self.dir / f"{name}.jsonl", lambda f=f: os.fsync(f.fileno()))
        return dict(self.rows)

    def write_summary(self, summary: Summary) -> None:
        """summary.json, atomically; on a full disk the reserved space is given back first."""
        assert isinstance(summary.status, Status), summary.status
        path = self.dir / "summary.json"
        text = json.dumps(_jsonable(summary.to_dict()), indent=2) + "\n"
        try:
            write_atomic(path, text)
        except OSError as e:
            if e.errno not in NO_SPACE or not self._reserve.exists():
                raise write_error(path, e) from e
            self._reserve.unlink(missing_ok=True)
            self._guard(path, lambda: write_atomic(path, text))

    def close(self) -> None:
        """Close the files (a failed last flush loses at most a cut line, which every reader
        skips) and give the reserved space back."""
        for f in (self._metrics, self._events):
            if f is None:
                continue
            try:
                f.close()
            except OSError:
                pass
        self._reserve.unlink(missing_ok=True)
