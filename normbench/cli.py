"""`normbench`: the command line.

    normbench train [overrides]        train one model (a Hydra job)
    normbench train -m [sweep]         a Hydra multirun: one job per combination
    normbench probe [overrides]        gradient / hidden-state norms and output change at init
    normbench compare PATH... [--out]  a report (HTML, tables, figures) from run records
    normbench prepare [overrides]      download and tokenize the data into the cache
    normbench list [--markdown]        the placements and kinds, with their papers
    normbench --help

`train` checks every job's configuration (and that its data is available) before any job
starts, so bad input gives one line on stderr, exit code 2, and no run directory.
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from normbench.errors import NormbenchError
from normbench.run import dist
from normbench.run.checkpoint import CheckpointWriteError
from normbench.run.config import config_dir
from normbench.run.console import Terminated, is_user_error, one_line, say
from normbench.run.job import Interrupted, check_same_config, train_task
from normbench.run.record import RecordWriteError

log = logging.getLogger("normbench")

PROG = "normbench"
USAGE = f"""usage: {PROG} <command> [options] [overrides]

Train small GPT language models and compare where the normalization goes.

commands:
  train      train one model; `-m` runs a Hydra multirun sweep over comma-separated values
  probe      dynamics at initialization, no training: per-layer gradient and hidden-state
             norms and the output change after one step, across probe.norms x probe.depths
  compare    a report from run records: index.html, summary.csv/.md, loss curves, stability
             maps (placement x lr x depth), per-layer figures; `compare --help` for options
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


# --- preflight: compose and check every job before anything runs ---------------------------


def _loader(args: Any) -> Any:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_automatic_config_search_path(None, None, str(config_dir()))
    if args.config_dir is not None:
        extra = Path(args.config_dir).resolve()
        if not extra.is_dir():
            raise NormbenchError(f"--config-dir {args.config_dir}: no such directory")
        search_path.prepend("command-line", f"file://{extra}", SearchPathQuery(provider="schema"))
    return ConfigLoaderImpl(config_search_path=search_path)


def _compose_base(args: Any, config_name: str) -> DictConfig:
    """The config with Hydra's node, in the mode the command line (or the config) asks for."""
    from hydra.core.utils import setup_globals
    from hydra.types import RunMode

    setup_globals()  # Hydra's resolvers (${now:...}) for the output directory's name
    loader = _loader(args)
    mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
    base = loader.load_configuration(config_name, list(args.overrides), run_mode=mode)
    if not args.multirun and base.hydra.mode == RunMode.MULTIRUN:
        mode = RunMode.MULTIRUN
        base = loader.load_configuration(config_name, list(args.overrides), run_mode=mode)
    with open_dict(base):
        base.hydra.mode = mode  # Hydra leaves it unset for `-m`; the job configs inherit it
    return base


def _is_multirun(cfg: DictConfig) -> bool:
    from hydra.types import RunMode

    return cfg.hydra.mode == RunMode.MULTIRUN


def _basic_sweeper(cfg: DictConfig) -> bool:
    """The basic sweeper's jobs are known before the sweep (the cartesian product); other
    sweepers (Optuna) choose theirs at run time."""
    return str(cfg.hydra.sweeper._target_).endswith("BasicSweeper")


def job_configs(args: Any, config_name: str, base: DictConfig | None = None) -> list[DictConfig]:
    """The config of every job that `normbench train` with these arguments would run.

    Mirrors Hydra: a single run composes once; a multirun with the basic sweeper takes the
    cartesian product of the sweep overrides (and `hydra.sweeper.params`), each job with its
    `hydra.job.num` (so `hydra.sweep.subdir` names its folder). Other sweepers choose their
    jobs at run time, so only their base config is checked here. `base`: the composed
    base config, when the caller has it already.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    base = base if base is not None else _compose_base(args, config_name)
    if not _is_multirun(base) or not _basic_sweeper(base):
        return [base]
    loader = _loader(args)
    params = [f"{k}={v}" for k, v in (base.hydra.sweeper.params or {}).items()]
    parser = OverridesParser.create(config_loader=loader)
    parsed = parser.parse_overrides(params + list(args.overrides))
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    configs = []
    for num, job in enumerate(jobs):
        cfg = loader.load_sweep_config(base, job)
        with open_dict(cfg):
            cfg.hydra.mode = base.hydra.mode
            cfg.hydra.job.num, cfg.hydra.job.id = num, str(num)
        configs.append(cfg)
    return configs


def pin_output_dir(args: Any, base: DictConfig) -> tuple[str, Path]:
    """Resolve the run (or sweep) directory of the composed `base` once, check that it can
    be written, and pin it as an override, so that every later composition, Hydra's own
    included, uses the same folder (the default one is named by the time, to the
    microsecond) and the resume command can name it."""
    import tempfile

    from normbench.run.config import ConfigError
    from normbench.run.rundir import override_value

    key = "hydra.sweep.dir" if _is_multirun(base) else "hydra.run.dir"
    pinned = Path(str(OmegaConf.select(base, key))).expanduser()
    try:
        target = pinned.resolve()
    except OSError as e:
        raise ConfigError(f"{key}: {e.strerror}; choose another folder") from e
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={target}: {existing} is a file, not a folder; choose another")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ConfigError(
            f"{key}={target} cannot be written ({e.strerror} in {existing}); "
            f"set {key} to a writable folder"
        ) from e
    # Pinned as given (a relative folder stays relative: it names the W&B group of a sweep).
    args.overrides = [o for o in args.overrides if o.lstrip("+").split("=", 1)[0] != key]
    args.overrides.append(f"{key}={override_value(str(pinned))}")
    return key, target


def preflight(args: Any, config_name: str = "train") -> tuple[str, Any]:
    """Before any job starts: validate every job, make sure its data is tokenized, then take
    the output directory: pinned, locked (returned with its key, hydra.run.dir or
    hydra.sweep.dir; release the lock when the command ends), and checked to hold no other
    configuration's run or sweep. A refused command leaves the directory as it was (no
    .hydra/, no log, no lock file of its own)."""
    from normbench.analysis.claims import check_claim
    from normbench.run.checkpoint import RunLock
    from normbench.run.checkpoint import load as load_checkpoint
    from normbench.run.config import ConfigError, to_container, validate
    from normbench.run.data import load_tokens
    from normbench.run.record import record_files
    from normbench.run.rundir import (
        check_run_dir,
        check_sweep_dir,
        sweep_definition,
        write_sweep_manifest,
    )
    from normbench.run.train import check_data_fits, check_global_batch, resolve_device

    base = _compose_base(args, config_name)
    key, target = pin_output_dir(args, base)
    multirun, basic = _is_multirun(base), _basic_sweeper(base)
    sweeper = OmegaConf.to_container(base.hydra.sweeper, resolve=True)
    checked_data: dict[str, Any] = {}
    jobs: list[tuple[str, dict[str, Any]]] = []
    for cfg in job_configs(args, config_name, base):
        subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir")) if multirun and basic else ""
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)
        check_claim(cfg.claim, config_name)
        if str(cfg.train.resume) == "never" and not multirun and record_files(target):
            raise ConfigError(
                f"train.resume=never but {target} already holds a run record; choose another "
                "hydra.run.dir, or train.resume=auto to continue it"
            )
        if str(cfg.train.resume) not in ("auto", "never"):
            state = load_checkpoint(Path(str(cfg.train.resume)).expanduser())
            check_same_config(state, to_container(cfg))
        resolve_device(str(cfg.device.value))
        check_global_batch(cfg.train.batch_size)
        data_key = OmegaConf.to_yaml(cfg.data, resolve=True)
        if data_key not in checked_data:
            checked_data[data_key] = load_tokens(cfg.data)
        check_data_fits(checked_data[data_key], cfg.model.context)
        jobs.append((subdir, to_container(cfg)))
    definition = sweep_definition(jobs if basic else None, jobs[0][1], sweeper)

    def check() -> None:
        if multirun:
            check_sweep_dir(target, definition)
        else:
            check_run_dir(target, jobs[0][1], key)

    check()  # before the lock, so that a refusal touches nothing
    lock = RunLock.acquire(target)
    try:
        check()  # again under the lock: another process may have written in between
        if multirun:
            write_sweep_manifest(target, definition)
    except BaseException:
        lock.abandon()
        raise
    return key, lock


def _hydra_args(argv: list[str], command: str = "train") -> tuple[Any, Any]:
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.prog = f"{PROG} {command}"
    return parser, parser.parse_args(argv)


# The command that continues the run (or sweep) this process started: printed when it is
# interrupted or stops on a write error (the default output folder is named by the time).
_resume_hint: str | None = None


def cmd_train(argv: list[str]) -> None:
    global _resume_hint
    from hydra._internal.utils import _run_hydra

    from normbench.run.config import register_configs
    from normbench.run.rundir import resume_command

    register_configs()
    parser, args = _hydra_args(argv)
    config_name = args.config_name or "train"
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    key, lock = "", None
    if dist.world()[1] > 1 and not informational:
        key, lock = join_torchrun(args, config_name)
    elif not informational:
        key, lock = preflight(args, config_name)
    if lock is not None:
        _resume_hint = resume_command(argv, key, lock.dir)
    try:
        _run_hydra(
            args=args,
            args_parser=parser,
            task_function=train_task,
            config_path=str(config_dir()),
            config_name=config_name,
        )
    finally:
        if lock is not None:
            lock.release()


def join_torchrun(args: Any, config_name: str) -> tuple[str, Any]:
    """Under torchrun: join the process group; rank 0 checks the job and takes the run
    directory (as preflight, whose result it returns), which every rank then uses (only
    rank 0 writes into it)."""
    from normbench.run.rundir import override_value

    if args.multirun:
        raise NormbenchError("torchrun runs one job per launch; drop -m (sweep outside torchrun)")
    dist.init()
    verdict: tuple[str, str] = ("error", "")
    key, lock = "hydra.run.dir", None
    if dist.is_main():
        try:
            key, lock = preflight(args, config_name)
            verdict = ("ok", str(lock.dir))
        except Exception as e:
            dist.broadcast(("error", ""))
            raise e
    verdict = dist.broadcast(verdict)
    if verdict[0] != "ok":  # rank 0 says what is wrong
        sys.exit(2)
    if not dist.is_main():  # no .hydra folder, no log file: rank 0 writes those
        args.overrides += [
            f"hydra.run.dir={override_value(verdict[1])}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    return key, lock


def cmd_prepare(argv: list[str]) -> None:
    """Tokenize the configured data into the cache; print where it went."""
    from normbench.run.config import register_configs
    from normbench.run.data import load_tokens

    register_configs()
    parser, args = _hydra_args(argv)
    if args.multirun or args.cfg or args.info:
        raise NormbenchError(
            "prepare takes overrides only (e.g. data=wikitext2 data.cache_dir=...)"
        )
    for cfg in job_configs(args, args.config_name or "train"):
        print(load_tokens(cfg.data).describe())


def probe_jobs(args: Any) -> tuple[DictConfig, list[DictConfig]]:
    """The probe's base config and one validated config per placement x depth of
    probe.norms x probe.depths (each as `train norm=<p> depth=<N>` with the same overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from normbench.analysis.claims import check_claim
    from normbench.run.config import validate, validate_probe

    loader = _loader(args)

    def compose(overrides: list[str]) -> DictConfig:
        cfg = loader.load_configuration("probe", overrides, run_mode=RunMode.RUN)
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)
        return cfg

    overrides = list(args.overrides)
    base = compose(overrides)
    validate_probe(base)
    check_claim(base.claim, "probe")
    p = base.probe
    given = {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}
    for key, listed in (("norm", p.norms), ("depth", p.depths)):
        if listed and key in given:
            raise NormbenchError(
                f"{key}=... and probe.{key}s=[...] both choose the {key}; give only one"
            )
    norms = [str(n) for n in p.norms] if p.norms else [str(base.norm.name)]
    depths = list(p.depths) if p.depths else [base.depth]
    jobs = [compose([*overrides, f"norm={n}", f"depth={d}"]) for n in norms for d in depths]
    return base, jobs


def cmd_probe(argv: list[str]) -> None:
    """Dynamics at initialization over probe.norms x probe.depths, in one run directory."""
    from functools import partial

    from hydra._internal.utils import _run_hydra

    from normbench.analysis.probe_job import probe_task
    from normbench.run.checkpoint import RunLock
    from normbench.run.config import register_configs, to_container
    from normbench.run.data import load_tokens
    from normbench.run.rundir import check_run_dir
    from normbench.run.train import check_data_fits

    register_configs()
    parser, args = _hydra_args(argv, "probe")
    if args.multirun:
        raise NormbenchError(
            "probe takes lists instead of -m: probe.norms=[pre,post] probe.depths=[6,12,24] "
            "probe.seeds=[0,1]"
        )
    if args.config_name not in (None, "probe"):
        raise NormbenchError("probe uses its own config (configs/probe.yaml); drop --config-name")
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    jobs: list[DictConfig] = []
    lock = None
    if not informational:
        base, jobs = probe_jobs(args)
        checked: dict[str, Any] = {}
        for job in jobs:
            data_key = OmegaConf.to_yaml(job.data, resolve=True)
            if data_key not in checked:
                checked[data_key] = load_tokens(job.data)
            check_data_fits(checked[data_key], job.model.context)
        key, target = pin_output_dir(args, _compose_base(args, "probe"))
        check_run_dir(target, to_container(base), key)  # a probe's folder holds that probe
        lock = RunLock.acquire(target)
        try:
            check_run_dir(target, to_container(base), key)
        except BaseException:
            lock.abandon()
            raise
    try:
        _run_hydra(
            args=args,
            args_parser=parser,
            task_function=partial(probe_task, jobs=jobs),
            config_path=str(config_dir()),
            config_name="probe",
        )
    finally:
        if lock is not None:
            lock.release()


def cmd_compare(argv: list[str]) -> None:
    """A report (HTML, tables, figures) from local run records; see normbench/analysis/compare.py."""
    from normbench.analysis.compare import main as compare_main

    compare_main(argv)


def cmd_list(argv: list[str]) -> None:
    """Print the placements and kinds, generated from the code (`--markdown`: as tables)."""
    from normbench.model.catalog import catalogue_markdown, catalogue_text

    if argv not in ([], ["--markdown"]):
        raise NormbenchError(f"list takes no arguments but --markdown (got {' '.join(argv)})")
    print(catalogue_markdown() if argv else catalogue_text(), end="")


COMMANDS = {
    "train": cmd_train,
    "probe": cmd_probe,
    "compare": cmd_compare,
    "prepare": cmd_prepare,
    "list": cmd_list,
}


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
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)}")
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra re-raises instead of printing its own multi-line report; we print one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    for name in ("SIGTERM", "SIGHUP"):  # an ignored one (SIGHUP under nohup) stays ignored
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) == signal.SIG_DFL:
            signal.signal(getattr(signal, name), _on_signal)
    # A log file that cannot be written (a full disk) must not print a traceback per line;
    # the run's own record says what failed.
    logging.raiseExceptions = False
    try:
        COMMANDS[command](rest)
        dist.finish()
    except Interrupted as e:
        _fail(
            f"interrupted by {e.signal_name} after step {e.step}; the checkpoint and the record "
            f"are written; resume with: {_resume_hint or 'the same command'}",
            _exit_code(e.signal_name),
        )
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Terminated as e:
        _fail(f"terminated ({e})", _exit_code(str(e)))
    except Exception as e:
        if user_full_error:
            raise
        if is_user_error(e):
            message = describe_error(e)
            if _resume_hint and isinstance(e, (RecordWriteError, CheckpointWriteError)):
                message += f"; once fixed, continue with: {_resume_hint}"
            _fail(message, getattr(e, "exit_code", 2))
        _fail(
            f"{type(e).__name__}: {one_line(str(e), 300)} "
            "(set HYDRA_FULL_ERROR=1 for the traceback)",
            1,
        )
    finally:
        if not user_full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
