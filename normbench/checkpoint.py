"""Checkpoints (`train.ckpt_every`, `train.ckpt_keep`, `train.resume`): resume after a kill.

A checkpoint is everything the training loop needs to continue as if it had never stopped:
model, optimizer and scheduler state, the data position (the batch sampler's RNG), every RNG
state, the divergence detectors and the diagnostics' ring buffer, the loop's counters and the
summary so far. It is written atomically (a temporary file, fsync, rename, fsync of the
folder), with its sha256 in a sidecar file written the same way after it, so a file that was
cut short or altered is detected, never silently used. Files are `checkpoints/step_<N>.pt`
in the run directory; the newest `train.ckpt_keep` are kept. Loading uses
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain values only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from normbench.errors import NormbenchError
from normbench.record import sha256_file as _sha256

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pt")


class CheckpointError(NormbenchError):
    """A checkpoint that cannot be read back as written (or does not exist)."""


class CheckpointWriteError(NormbenchError):
    """A checkpoint that cannot be written (disk full, a size limit, permissions)."""

    exit_code = 1


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform can open a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run directory, oldest first."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def save(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write the checkpoint of `step` atomically, then prune to the newest `keep`.

    A failure (disk full, a file-size limit, no permission) removes the partial file, keeps
    the older checkpoints, and raises CheckpointError with the reason.
    """
    folder = Path(run_dir) / FOLDER
    path = folder / f"step_{step:08d}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda f: torch.save(state, f))
        digest = _sha256(path)
        _write_atomic(path.with_suffix(".pt.sha256"), lambda f: f.write(f"{digest}\n".encode()))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        path.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"
        free = shutil.disk_usage(folder if folder.exists() else run_dir).free
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} in {folder} ({reason}; "
            f"{free / 2**20:,.0f} MiB free); the previous checkpoint is kept"
        ) from e
    for _, old in checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    """A checkpoint whose sha256 matches its sidecar; CheckpointError otherwise."""
    path = Path(path)
    sidecar = path.with_suffix(".pt.sha256")
    if not path.is_file():
        raise CheckpointError(f"train.resume={path}: no such checkpoint file")
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path} has no {sidecar.name}: it cannot be verified")
    expected = sidecar.read_text().strip()
    if _sha256(path) != expected:
        raise CheckpointError(
            f"checkpoint {path} does not match its sha256 (cut short or altered); it is not used"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that hashes right but is not a checkpoint
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(e).__name__}") from e


def latest(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, skipping (with a warning) any that do not."""
    for _, path in reversed(checkpoints(run_dir)):
        try:
            return path, load(path)
        except CheckpointError as e:
            log.warning("%s; trying an older checkpoint", e)
    return None


class Checkpointer:
    """Saves the training loop's state into a run directory: every `every` steps (0: only
    at the end) and at the last step, keeping the newest `keep`."""

    def __init__(self, run_dir: Path, every: int, keep: int) -> None:
        self.run_dir, self.every, self.keep = Path(run_dir), every, keep
        self.last: Path | None = None

    def due(self, step: int, max_steps: int) -> bool:
        return step == max_steps or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, state: dict[str, Any]) -> None:
        self.last = save(self.run_dir, step, state, self.keep)


class RunLock:
    """An exclusive lock on a run directory (`.lock`, flock): two processes never write into
    the same run, and a killed process's lock goes with it (a requeue can take over)."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.file = open(Path(run_dir) / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self.file.close()
            raise CheckpointError(
                f"another normbench process is writing into {run_dir}; choose another "
                "hydra.run.dir (or wait for it to end)"
            ) from e
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()  # closing the file drops the flock

    @staticmethod
    def check_free(run_dir: Path) -> None:
        """Raise CheckpointError now if another process holds the run directory's lock."""
        if (Path(run_dir) / ".lock").is_file():
            RunLock(run_dir).release()


def record_files(run_dir: Path) -> list[str]:
    """The run-record files in a run directory (not Hydra's own .hydra/ and log files)."""
    names = ("config.yaml", "metrics.jsonl", "events.jsonl", "summary.json", FOLDER)
    return [n for n in names if (Path(run_dir) / n).exists()]
