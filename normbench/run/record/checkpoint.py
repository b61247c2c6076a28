"""Checkpoints (`train.ckpt_every`, `train.ckpt_every_min`, `train.ckpt_keep`, `train.resume`):
resume after a kill.

A checkpoint is everything the training loop needs to continue as if it had never stopped:
model, optimizer and scheduler state, the data position (the batch sampler's RNG), every RNG
state, the divergence detectors and the diagnostics' ring buffer, the loop's counters and the
summary so far. It is written atomically (a temporary file, fsync, rename, fsync of the
folder), with its sha256 in a sidecar file written the same way after it, so a file that was
cut short or altered is detected, never silently used. Files are `checkpoints/step_<N>.pt`
in the run directory. Pruning keeps the newest `train.ckpt_keep` checkpoints *that verify*:
a file that does not (cut short, altered, foreign, or without its sidecar) is never counted,
never used and never deleted, and never makes a valid checkpoint go. Leftovers of an
interrupted write (`.step_<N>.pt.tmp-<pid>`, a sidecar whose checkpoint is gone) are removed
when a run next starts in the directory. Loading uses `torch.load(weights_only=True)`: a
checkpoint holds tensors and plain values only.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from normbench.errors import NormbenchError, WriteError
from normbench.model.members import members
from normbench.run.record.files import open_own, read_bounded, refuse_link
from normbench.run.record.files import sha256_file as _sha256
from normbench.run.record.files import write_atomic as _write_atomic

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
# What every checkpoint holds (Trainer.state_dict); a file without them is not one.
STATE_KEYS = frozenset({"step", "evaluated", "config", "model", "optimizer", "scheduler", "rng"})
_NAME = re.compile(r"step_(\d+)\.pt")
# What an interrupted write of this module leaves: `.step_<N>.pt.tmp-<pid>` and the same for
# the sidecar (see normbench/run/record/files.py).
_PARTIAL = re.compile(r"\.step_\d+\.pt(\.sha256)?\.tmp-\d+")


class CheckpointError(NormbenchError):
    """A checkpoint that cannot be read back as written (or does not exist)."""


class CheckpointWriteError(WriteError):
    """A checkpoint that cannot be written (disk full, a size limit, permissions)."""


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run directory, oldest first."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def save(run_dir: Path, step: int, state: dict[str, Any], owner: str = "") -> Path:
    """Write the checkpoint of `step` atomically, with its sidecar: the sha256 of the file
    and the run it belongs to (`owner`, the config's identity: `run_identity`).

    A failure (disk full, a file-size limit, no permission) removes the partial file, keeps
    the older checkpoints, and raises CheckpointWriteError with the reason.
    """
    folder = Path(run_dir) / FOLDER
    path = folder / f"step_{step:08d}.pt"
    replaced = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda f: torch.save(state, f))
        replaced = True
        digest = _sha256(path)
        _write_atomic(sidecar(path), lambda f: f.write(f"{digest}\n{owner}\n".encode()))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        if replaced:  # the new file without its sidecar: it could never be verified
            path.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"
        free = shutil.disk_usage(folder if folder.exists() else run_dir).free
        kept = verified(run_dir)
        what = (
            f"the checkpoint of step {_step(kept[-1])} is kept" if kept else "no earlier checkpoint"
        )
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} in {folder} ({reason}; "
            f"{free / 2**20:,.0f} MiB free); {what}"
        ) from e
    _VERIFIED[path] = _identity(path)
    return path


def sidecar(path: Path) -> Path:
    """The sha256 file of a checkpoint: `step_<N>.pt.sha256`."""
    return path.with_suffix(".pt.sha256")


def _step(path: Path) -> int:
    m = _NAME.fullmatch(path.name)
    return int(m.group(1)) if m else -1


# Checkpoints known to match their sidecar: written by this process or hashed once, keyed by
# path and valid while the file's size and modification time stay as they were.
_VERIFIED: dict[Path, tuple[int, ...]] = {}


def _identity(path: Path) -> tuple[int, ...]:
    a, b = path.stat(), sidecar(path).stat()
    return a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns


SIDECAR_BYTES = 256  # a sidecar is a sha256 and an owner: anything longer is not one
_HEX64 = re.compile(r"[0-9a-f]{64}")


def read_sidecar(path: Path) -> tuple[str, str | None] | None:
    """(sha256, owner) of a checkpoint's sidecar; owner None in a sidecar written before
    owners were recorded; None when the sidecar is missing or not one (bounded read: a link
    to /dev/zero is not read without end)."""
    try:
        lines = read_bounded(sidecar(path), SIDECAR_BYTES).decode("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not _HEX64.fullmatch(lines[0].strip()) or len(lines) > 2:
        return None
    return lines[0].strip(), (lines[1].strip() if len(lines) == 2 else None)


def verifies(path: Path) -> bool:
    """True when the checkpoint's sha256 matches its sidecar (hashed once per file version)."""
    try:
        ident = _identity(path)
        if _VERIFIED.get(path) == ident:
            return True
        side = read_sidecar(path)
        ok = side is not None and _sha256(path) == side[0]
    except OSError:
        return False
    if ok:
        _VERIFIED[path] = ident
    return ok


def owner_of(path: Path) -> str | None:
    """The run a checkpoint belongs to, as its sidecar says (None: not recorded)."""
    side = read_sidecar(path)
    return side[1] if side is not None else None


def verified(run_dir: Path) -> list[Path]:
    """The checkpoints of a run directory that verify, oldest step first."""
    return [p for _, p in checkpoints(run_dir) if verifies(p)]


def prune(run_dir: Path, keep: int, newest: list[Path], owner: str = "") -> list[Path]:
    """Delete all but the `keep` newest verified checkpoints of this run (`owner`); return
    what was deleted.

    `newest` are the checkpoints this process wrote, in the order written: they count as
    newer than any other (a checkpoint of a higher step from before a rewind does not make
    the fresh one go). A file that does not verify, or whose sidecar names another run or
    none (written before owners were recorded), is not counted and not touched: the tool
    deletes only what it knows it wrote for this run.
    """
    ordered = [p for p in verified(run_dir) if p not in newest and owner_of(p) == owner]
    ordered += [p for p in newest if verifies(p)]
    gone = ordered[:-keep] if keep > 0 else ordered
    for old in gone:
        old.unlink(missing_ok=True)
        sidecar(old).unlink(missing_ok=True)
        _VERIFIED.pop(old, None)
    return gone


def clean_leftovers(run_dir: Path) -> list[str]:
    """Remove what interrupted writes left in the checkpoint folder: partial temporary files
    and sidecars whose checkpoint is gone. Call with the run directory's lock held."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        orphan = p.name.endswith(".pt.sha256") and not p.with_suffix("").is_file()
        if p.is_file() and (_PARTIAL.fullmatch(p.name) or orphan):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def unverified(run_dir: Path) -> list[Path]:
    """Checkpoint files that do not verify (cut short, altered, foreign, no sidecar)."""
    return [p for _, p in checkpoints(run_dir) if not verifies(p)]


def load(path: Path) -> dict[str, Any]:
    """A checkpoint whose sha256 matches its sidecar; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"train.resume={path}: no such checkpoint file")
    if not sidecar(path).is_file():
        raise CheckpointError(
            f"checkpoint {path} has no {sidecar(path).name}: it cannot be verified"
        )
    if not verifies(path):
        raise CheckpointError(
            f"checkpoint {path} does not match its sha256 (cut short or altered); it is not used"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that hashes right but is not a checkpoint
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(e).__name__}") from e
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise CheckpointError(f"checkpoint {path} is not a normbench checkpoint")
    return state


def load_model(
    model: torch.nn.Module, weights: dict[str, Any], placement: str, member: int = 0
) -> None:
    """A checkpoint's model weights (a run alone's layout) into `model`, or into member
    `member` of a pack (normbench/model/members.py). Weights that are not this model's
    parameters (a checkpoint written while the placement was defined otherwise, such as
    norm=peri before it normalized the embedding) are a one-line CheckpointError, not a
    partial load."""
    alone = members(model) == 1
    if alone:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    else:
        own = model.state_dict(keep_vars=True)
        missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own)
    if missing or unexpected:
        names = [*(f"{n} missing" for n in missing), *(f"{n} unexpected" for n in unexpected)]
        more = f", and {len(names) - 2} more" if len(names) > 2 else ""
        raise CheckpointError(
            f"the checkpoint's model is not this normbench's norm={placement} "
            f"({', '.join(names[:2])}{more}): it was written under an older definition of the "
            "placement; start a new run (another hydra.run.dir, or train.resume=never)"
        )
    if not alone:
        with torch.no_grad():
            for name, value in weights.items():
                target = own[name][member]
                target.copy_(value.reshape(target.shape))


def latest(run_dir: Path, owner: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of this run (`owner`) that verifies, skipping (with a warning
    naming it) any that does not verify, or whose sidecar names another run."""
    for _, path in reversed(checkpoints(run_dir)):
        theirs = owner_of(path)
        if owner is not None and theirs is not None and theirs != owner:
            log.warning(
                "%s belongs to another run (its sidecar says so); trying an older one", path
            )
            continue
        try:
            return path, load(path)
        except CheckpointError as e:
            log.warning("%s; trying an older checkpoint", e)
    return None


class Checkpointer:
    """Saves the training loop's state into a run directory: every `every` steps (0: only
    at the end), at the last step, and once `every_min` minutes of wall time have passed
    since the last checkpoint (or since the Checkpointer was made; 0 or None: never by
    time), keeping the newest `keep` that verify whatever made them due.

    Created with the run directory's lock held: it removes the leftovers of interrupted
    writes and warns (once) about checkpoint files that do not verify, which it leaves alone.
    """

    def __init__(
        self,
        run_dir: Path,
        every: int,
        keep: int,
        every_min: float | None = None,
        owner: str = "",
    ) -> None:
        self.run_dir, self.every, self.keep, self.owner = Path(run_dir), every, keep, owner
        self.every_s = 60 * every_min if every_min else None
        self.saved_at = time.monotonic()
        self.last: Path | None = None
        self.written: list[Path] = []
        removed = clean_leftovers(self.run_dir)
        if removed:
            log.info("removed what interrupted writes left: %s", ", ".join(removed))
        for path in unverified(self.run_dir):
            log.warning(
                "%s does not verify against its sha256 sidecar; it is not used, not counted "
                "and not deleted",
                path,
            )

    def due(self, step: int, max_steps: int) -> bool:
        """Whether the state after `step` is to be saved now."""
        if step == max_steps or (self.every > 0 and step % self.every == 0):
            return True
        return self.every_s is not None and time.monotonic() - self.saved_at >= self.every_s

    def save(self, step: int, state: dict[str, Any]) -> None:
        self.last = save(self.run_dir, step, state, self.owner)
        self.written = [p for p in self.written if p != self.last] + [self.last]
        prune(self.run_dir, self.keep, self.written, self.owner)
        self.saved_at = time.monotonic()  # the next one by time counts from the end of this


class RunLock:
    """An exclusive lock on a run (or sweep) directory (`.lock`, flock): two processes never
    write into the same run, and a killed process's lock goes with it (a requeue can take
    over). `acquire` is re-entrant within a process: the command line takes the lock before
    Hydra writes anything into the directory, and the job takes it again."""

    _held: dict[Path, RunLock] = {}

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir).resolve()
        missing = [p for p in (self.dir, *self.dir.parents) if not p.exists()]
        self.path = self.dir / ".lock"
        refuse_link(self.path)
        self.created_file = not self.path.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.created_dirs = missing  # what to remove again if the run is refused
        self.count = 1
        self.file = open_own(self.path, "r+")
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

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """The lock of `run_dir`, taken now or already held by this process."""
        key = Path(run_dir).resolve()
        held = cls._held.get(key)
        if held is not None:
            held.count += 1
            return held
        lock = cls(key)
        cls._held[key] = lock
        return lock

    def release(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.file.close()  # closing the file drops the flock
            RunLock._held.pop(self.dir, None)

    def abandon(self) -> None:
        """Release, and remove the lock file and folders that taking the lock created (for a
        run refused before it wrote anything)."""
        self.count = 1
        self.release()
        if self.created_file:
            self.path.unlink(missing_ok=True)
        for folder in self.created_dirs:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
