"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class NormbenchError(Exception):
    """A problem the user can fix; the message is one line that says what to change."""

    exit_code = 2  # bad input; problems of the machine (a full disk) use 1


class ConfigError(NormbenchError, ValueError):
    """Inconsistent or invalid configuration values."""


class DataError(NormbenchError):
    """Data that cannot be found, downloaded or used."""
