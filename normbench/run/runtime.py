"""The process a run lives in: its device, its CPU threads, the memory allocator, how long it
has been running, and the signals that stop it gracefully. Nothing here knows the model."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal as signals
import sys
import threading
from typing import Any

import torch

from normbench.run import dist, hardware

log = logging.getLogger(__name__)


def tune_cpu_allocator() -> None:
    """Keep freed memory in the process on glibc (Linux) so large tensors are reused.

    The LM head makes a (batch * context, vocab) tensor several times per step; by default
    glibc maps and unmaps each one, and the page faults cost as much as the arithmetic
    (measured: 834 -> 2,349 tokens/s for the default model on a 2-core CPU).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: serve large allocations from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not hand freed memory back at once
    except (OSError, AttributeError):  # not glibc
        pass


def configure_threads(requested: int | None, launcher: Any = None) -> int:
    """Set torch's CPU threads for this job and return how many: `threads`, or by default
    the cores divided among the jobs that run at once under hydra/launcher=joblib (its
    n_jobs; -1 means one job per core), so that parallel jobs do not oversubscribe them."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    if requested is None:
        parallel = 1
        if launcher is not None and "joblib" in str(launcher.get("_target_", "")).lower():
            n = int(launcher.get("n_jobs") or 1)
            parallel = n if n > 0 else max(1, cores + 1 + n)
        requested = max(1, cores // parallel)
    torch.set_num_threads(requested)
    return requested


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def resolve_device(name: str) -> torch.device:
    """This rank's torch device for `device=` (auto: CUDA, else MPS, else the CPU)."""
    return dist.device(hardware.resolve_device(name))


class StopRequest:
    """A graceful stop asked for by SIGINT, SIGTERM or SIGHUP (the terminal closed) during
    training.

    The first signal sets `signal` (the loop finishes its step, writes a checkpoint and the
    record, and ends the run as `interrupted`); a second one stops at once (KeyboardInterrupt
    for Ctrl-C, the usual handler's exception for SIGTERM and SIGHUP). A signal that is
    ignored (SIGHUP under nohup) stays ignored.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.forced: int | None = None  # the second signal's number

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def at_once(self) -> BaseException:
        """The exception of a second signal (one that struck inside a library call may have
        come out as that library's error)."""
        if self.forced == 2:  # SIGINT
            return KeyboardInterrupt()
        return SystemExit(128 + (self.forced or 15))

    @contextlib.contextmanager
    def installed(self) -> Any:
        """Handle SIGINT, SIGTERM and SIGHUP this way while training (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        names = [n for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signals, n)]  # Windows
        previous = {getattr(signals, n): signals.getsignal(getattr(signals, n)) for n in names}
        previous = {s: old for s, old in previous.items() if old != signals.SIG_IGN}

        def handler(signum: int, frame: Any) -> None:
            name = signals.Signals(signum).name
            if self.signal is not None:  # the second signal: stop now
                self.forced = signum
                if signum == signals.SIGINT:
                    raise KeyboardInterrupt
                old = previous[signum]
                if callable(old):
                    old(signum, frame)
                raise SystemExit(128 + signum)
            self.signal = name
            log.warning(
                "%s: stopping after this step with a checkpoint (again to stop at once)", name
            )

        for s in previous:
            signals.signal(s, handler)
        try:
            yield
        finally:
            for s, old in previous.items():
                signals.signal(s, old)
