"""The process's console: lines to stdout or stderr, one-line messages, which errors are the
user's to fix, and the exceptions a signal raises: outside the training loop (`Terminated`),
and after the loop stopped cleanly on it (`Interrupted`).

The command line prints with these, and so does a training job (run/job.py), which sits
below it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from normbench.errors import NormbenchError
from normbench.run.record.files import open_own

PROG = "normbench"  # the command's name, in usage lines and error messages


class Terminated(BaseException):
    """SIGTERM (e.g. a cluster's time limit) or SIGHUP (the terminal closed) outside the
    training loop: unwinds like Ctrl-C so the record is written."""


class Interrupted(BaseException):
    """A run stopped by SIGINT, SIGTERM or SIGHUP after writing its checkpoint and record:
    ends the sweep too, with exit code 128 + the signal's number (130, 143, 129)."""

    def __init__(self, signal_name: str, step: int, resume_command: str | None = None) -> None:
        super().__init__(signal_name)
        self.signal_name, self.step = signal_name, step
        self.resume_command = resume_command  # the command that continues the run


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_user_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (NormbenchError, HydraException, OmegaConfBaseException))


def say(text: str, stream: str = "stdout") -> None:
    """Print a line to sys.stdout or sys.stderr (`stream`). A terminal that is gone (EIO or
    EPIPE after a hang-up) does not stop the shutdown: the stream is replaced by /dev/null,
    so that neither this line nor the final flush fails the process."""
    try:
        print(text, file=getattr(sys, stream), flush=True)
    except (OSError, ValueError):  # ValueError: the stream was closed
        setattr(sys, stream, open(os.devnull, "w"))


class RunLogFile(logging.FileHandler):
    """The run's log file (configs/hydra/job_logging/normbench.yaml): appended to, never
    through a symbolic link in its place (normbench/run/record/files.py, `open_own`)."""

    def _open(self) -> Any:
        return open_own(self.baseFilename, "a", encoding=self.encoding or "utf-8")
