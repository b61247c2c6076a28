"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class NormbenchError(Exception):
    """A problem the user can fix; the message is one line that says what to change."""

    exit_code = 2  # bad input; problems of the machine (a full disk) use 1


class ConfigError(NormbenchError, ValueError):
    """Inconsistent or invalid configuration values."""


class DataError(NormbenchError):
    """Data that cannot be found, downloaded or used."""


class WriteError(NormbenchError):
    """A file of a run that cannot be written (disk full, a size limit, permissions): the
    machine's problem, not the input's; once fixed, the same command continues the run."""

    exit_code = 1
    resume_command: str | None = None  # the command that continues the run, when known
