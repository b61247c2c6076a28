"""Which GPU a job of a multirun trains on: the machine's G GPUs, `jobs_per_gpu` (K) jobs at
once on each.

Jobs that run at once (hydra/launcher=gpus, joblib with G x K workers) each claim a slot, an
exclusive lock on `<data.cache_dir>/gpu-slots/gpu<g>.slot<k>.lock`, held while the job
trains and released when its process ends, however it ends. Slots are tried slot-major
(every GPU's first slot, then every GPU's second, ...), so jobs spread over the GPUs before
they share one; a job that finds all G x K slots taken waits for one. Several sweeps on one
machine share the slots of one cache folder.
"""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from normbench.run.record.files import open_own


@dataclass
class GpuSlot:
    """A claimed slot: the GPU, the slot's number on it, and the held lock."""

    gpu: int
    slot: int
    file: IO[Any]

    def release(self) -> None:
        self.file.close()  # closing the file drops the lock


def slots(gpus: int, per_gpu: int) -> list[tuple[int, int]]:
    """Every (gpu, slot) pair, in the order jobs claim them: spread first, then stack."""
    return [(g, k) for k in range(per_gpu) for g in range(gpus)]


def _try(path: Path) -> IO[Any] | None:
    """An exclusive lock on `path` (created, never through a link: files.open_own), or None."""
    f = open_own(path, "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def claim(
    gpus: int, per_gpu: int, folder: Path, *, poll_s: float = 0.5, log: Any = None
) -> GpuSlot:
    """The first free slot of `slots(gpus, per_gpu)` under `folder`, waiting while none is
    free (`log`, if given, is told once that the job waits)."""
    if gpus < 1 or per_gpu < 1:
        raise ValueError(f"need at least one GPU and one job per GPU (got {gpus}, {per_gpu})")
    folder.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        for gpu, slot in slots(gpus, per_gpu):
            held = _try(folder / f"gpu{gpu}.slot{slot}.lock")
            if held is not None:
                return GpuSlot(gpu, slot, held)
        if log is not None and not told:
            log(f"all {gpus} x {per_gpu} GPU slots are taken; waiting for one")
            told = True
        time.sleep(poll_s)
