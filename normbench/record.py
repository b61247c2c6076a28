"""The local run record: config.yaml, metrics.jsonl, events.jsonl and summary.json.

The record is written independently of W&B, so a tracking failure never loses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

STATUSES = ("completed", "diverged", "interrupted", "failed")
SUMMARY_KEYS = (
    "status",
    "steps",
    "tokens",
    "val_loss",
    "best_val_loss",
    "val_ppl",
    "tokens_per_s",
    "wall_s",
    "n_params",
    "diverged",
    "diverged_at_step",
    "divergence_reason",
    "divergence_detail",
    "events",
    "objective",
    "threads",
    "startup_s",
    "diag",
    "wandb",
)


def new_summary() -> dict[str, Any]:
    """Every summary key, unknown so far; the status stays `failed` unless training ends."""
    return {key: None for key in SUMMARY_KEYS} | {
        "status": "failed",
        "diverged": False,
        "events": 0,
        "diag": {},
    }


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN), so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class NullRecord:
    """The record of a torchrun rank other than 0: rank 0 writes the run's record."""

    def write_config(self, config: dict[str, Any]) -> None:
        pass

    def log(self, row: dict[str, Any]) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _keep_rows(path: Path, last_step: int) -> None:
    """Keep the lines of a JSONL file whose step is at most `last_step` (a resume drops what
    was logged after its checkpoint, so no step is logged twice); a cut last line goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill
        if row.get("step", 0) <= last_step:
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


class RunRecord:
    """The files of one run. `resume_after`: the step of the checkpoint a resumed run
    continues from (rows logged after it are dropped); 0 starts the record afresh."""

    def __init__(self, run_dir: Path, resume_after: int | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_after is not None:
            for name in ("metrics.jsonl", "events.jsonl"):
                _keep_rows(self.dir / name, resume_after)
        self._metrics = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def log(self, row: dict[str, Any]) -> None:
        """One JSON object per line; flushed so a crash keeps every logged step."""
        self._metrics.write(json.dumps(_jsonable(row)) + "\n")
        self._metrics.flush()

    def event(self, event: dict[str, Any]) -> None:
        """One divergence event per line of events.jsonl (the file exists even with none)."""
        self._events.write(json.dumps(_jsonable(event)) + "\n")
        self._events.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        assert summary.get("status") in STATUSES, summary.get("status")
        clean = _jsonable(summary)
        write_atomic(self.dir / "summary.json", json.dumps(clean, indent=2) + "\n")

    def close(self) -> None:
        self._metrics.close()
        self._events.close()
