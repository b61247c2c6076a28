"""Read back an offline W&B run file (`run-<id>.wandb`) without the W&B service.

The file is a 7-byte header (b":W&B", magic 0xBEE1, version) followed by a LevelDB-style log:
32 KiB blocks of records, each with a 7-byte header (crc32c, length, type) where type 1 is a
whole record and 2/3/4 are the first, middle and last pieces of a split one. Each record is
a `wandb_internal_pb2.Record` protobuf. (wandb >= 0.20 no longer ships a Python reader.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, payloads = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """The parts of an offline run that tests look at."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records = read_records(self.path)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        run = next(r.run for r, k in zip(self.records, kinds, strict=True) if k == "run")
        self.id, self.project, self.group = run.run_id, run.project, run.run_group
        self.job_type, self.name, self.tags = run.job_type, run.display_name, list(run.tags)
        self.config = {u.key: json.loads(u.value_json) for u in run.config.update}
        for r, k in zip(self.records, kinds, strict=True):  # later config updates
            if k == "config":
                self.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.exit_code: int | None = None
        for r, k in zip(self.records, kinds, strict=True):
            if k == "summary":
                for u in r.summary.update:
                    self.summary[_key(u)] = json.loads(u.value_json)
            elif k == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif k == "metric":
                self.metrics[r.metric.name or r.metric.glob_name] = r.metric
            elif k == "exit":
                self.exit_code = r.exit.exit_code


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run file below `root`, oldest first."""
    return [OfflineRun(p) for p in sorted(Path(root).rglob("run-*.wandb"))]
