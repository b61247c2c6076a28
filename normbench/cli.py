"""`normbench`: the command line.

    normbench train [overrides]        train one model (a Hydra job)
    normbench train -m [sweep]         a Hydra multirun: one job per combination
    normbench probe [overrides]        gradient / hidden-state norms and output change at init
    normbench compare PATH... [--out]  a report (HTML, tables, figures) from run records
    normbench dashboard PATH...        that report as a W&B Report and workspace view
    normbench prepare [overrides]      download and tokenize the data into the cache
    normbench list [--markdown]        the placements and kinds, with their papers
    normbench --help

`train` checks every job's configuration (and that its data is available) before any job
starts, so bad input gives one line on stderr, exit code 2, and no run directory.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

from normbench.errors import NormbenchError, WriteError
from normbench.run.console import PROG, Interrupted, Terminated, is_user_error, one_line, say
from normbench.run.record.rundir import RENAMED

USAGE = f"""usage: {PROG} <command> [options] [overrides]

Train small GPT language models and compare where the normalization goes.

commands:
  train      train one model; `-m` runs a Hydra multirun sweep over comma-separated values
  probe      dynamics at initialization, no training: per-layer gradient and hidden-state
             norms and the output change after one step, across probe.norms x probe.depths
  compare    a report from run records: index.html, summary.csv/.md, loss curves, stability
             maps (placement x lr x depth), per-layer figures; `compare --help` for options
  dashboard  the compare report of a sweep, published as a W&B Report and workspace view;
             offline, its dashboard.json and the command that publishes it later
  prepare    download and tokenize the data into the token cache (for offline compute nodes)
  list       the placements (norm=...) and kinds (norm.kind=...), with equations and papers

examples:
  {PROG} train norm=pre depth=48
  {PROG} train -m norm=pre,post depth=6,12,24,48 optim.lr=3e-4,1e-3
  {PROG} train norm=deepnorm norm.kind=rmsnorm depth=24
  {PROG} train data=text data.train_path=train.txt data.val_path=valid.txt
  {PROG} train --cfg job          print the composed config ({PROG} train --help: all groups)
  {PROG} probe probe.norms=[pre,post] probe.depths=[6,12,24]
  {PROG} compare multirun/2026-11-24/10-00-00.000000 --x lr --y depth
  {PROG} dashboard multirun/2026-11-24/10-00-00.000000 --project normbench
  {PROG} prepare data=wikitext2

Bad input exits with status 2 and a one-line message; HYDRA_FULL_ERROR=1 shows tracebacks.
"""


# --- one-line errors ------------------------------------------------------------------------


def describe_error(exc: BaseException) -> str:
    """A one-line message for a configuration or input error, with the valid choices."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if isinstance(exc, NormbenchError):
        return one_line(str(exc))
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        options = sorted(exc.options or [])
        if group:
            choices = ", ".join(options) if options else "(none defined)"
            return f"unknown {group} '{name}'; choose one of: {choices}"
        return one_line(str(exc).split("\n")[0])
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override '{exc.override}': {one_line(exc.message, 200)}"
    cause = exc.__cause__
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        exc = cause
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and exc.full_key:
        key = exc.full_key
        if key.startswith("norm.constants."):
            return (
                f"{key}: norm.constants are derived from depth and the placement (and "
                "written to the run's config.yaml); remove the override"
            )
        parent, _, leaf = key.rpartition(".")
        valid = _valid_keys(exc.object_type)
        if valid is not None:
            where = f" under {parent}" if parent else ""
            close = difflib.get_close_matches(leaf, valid, n=1)
            hint = f" (did you mean {'.'.join(filter(None, [parent, close[0]]))}?)" if close else ""
            return f"unknown key '{key}'{hint}; valid keys{where}: {', '.join(valid)}"
        return f"unknown key '{key}'"
    if isinstance(exc, MissingMandatoryValue) and exc.full_key:
        return f"{exc.full_key} is required; set {exc.full_key}=<value>"
    if isinstance(exc, ValidationError) and exc.full_key:
        message = str(exc).split("\n")[0]
        old = RENAMED.get(exc.full_key, {})
        if any(f"'{value}'" in message for value in old):  # a value of an older normbench
            was = "/".join(str(v).lower() for v in old)
            now = ", ".join(f"{str(v).lower()} is now {name}" for v, name in old.items())
            message += f" (it was {was}: {now})"
        return f"{exc.full_key}: {one_line(message, 300)}"
    if isinstance(exc, OmegaConfBaseException) and getattr(exc, "full_key", None):
        return f"{exc.full_key}: {one_line(str(exc).split(chr(10))[0], 300)}"
    return one_line(str(exc).split("\n\n")[0])


def _valid_keys(object_type: Any) -> list[str] | None:
    if is_dataclass(object_type):
        return [f.name for f in fields(object_type)]
    return None


def _fail(message: str, code: int = 2) -> None:
    say(f"{PROG}: error: {message}", "stderr")
    sys.exit(code)


# --- the commands ---------------------------------------------------------------------------

# Each command's function, imported when the command runs: `--help` and `list` never import
# torch or Hydra. train, probe and prepare compose with Hydra and run as Hydra jobs
# (normbench/launch.py); compare and dashboard read records (normbench/analysis/report/).
COMMANDS = {
    "train": "normbench.launch:train",
    "probe": "normbench.launch:probe",
    "compare": "normbench.analysis.report.compare:main",
    "dashboard": "normbench.analysis.report.wandb_report:main",
    "prepare": "normbench.launch:prepare",
    "list": "normbench.model.catalog:main",
}


def command(name: str) -> Callable[[list[str]], None]:
    """The function of the command `name` (its module imported now)."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


# --- signals and exit codes -----------------------------------------------------------------


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminated(signal.Signals(signum).name)


def _exit_code(signal_name: str) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return 128 + getattr(signal, signal_name, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _fail(f"unknown command '{name}'; choose one of: {', '.join(COMMANDS)}")
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra re-raises instead of printing its own multi-line report; we print one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    for signame in ("SIGTERM", "SIGHUP"):  # an ignored one (SIGHUP under nohup) stays ignored
        number = getattr(signal, signame, None)
        if number is not None and signal.getsignal(number) == signal.SIG_DFL:
            signal.signal(number, _on_signal)
    # A log file that cannot be written (a full disk) must not print a traceback per line;
    # the run's own record says what failed.
    logging.raiseExceptions = False
    try:
        command(name)(rest)
    except Interrupted as e:
        _fail(
            f"interrupted by {e.signal_name} after step {e.step}; the checkpoint and the record "
            f"are written; resume with: {e.resume_command or 'the same command'}",
            _exit_code(e.signal_name),
        )
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Terminated as e:
        _fail(f"terminated ({e})", _exit_code(str(e)))
    except Exception as e:
        if user_full_error:
            raise
        if not is_user_error(e) and isinstance(e.__cause__, NormbenchError):
            e = e.__cause__  # e.g. logging's "Unable to configure handler" around ours
        if is_user_error(e):
            message = describe_error(e)
            if isinstance(e, WriteError) and e.resume_command:
                message += f"; once fixed, continue with: {e.resume_command}"
            _fail(message, getattr(e, "exit_code", 2))
        _fail(
            f"{type(e).__name__}: {one_line(str(e), 300)} "
            "(set HYDRA_FULL_ERROR=1 for the traceback)",
            1,
        )
    finally:
        if not user_full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
