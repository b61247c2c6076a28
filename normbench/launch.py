"""Launching `normbench train`, `probe` and `prepare`: Hydra's composition, the jobs a
multirun will run, and the preflight that checks every job (and takes its output folder)
before Hydra runs the first.

This is the one module that uses Hydra's private API (`hydra._internal`): its config loader,
the basic sweeper's cartesian product, its argument parser and `_run_hydra`. The task
functions Hydra calls are `normbench.run.job.TrainTask` (one training job, or with
hydra/launcher=packed a pack of them: normbench/launcher.py) and
`normbench.analysis.report.probe.probe_task`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import _run_hydra, create_automatic_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import setup_globals
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from normbench.analysis.claims.registry import check_claim
from normbench.analysis.report.probe import probe_task
from normbench.errors import ConfigError, NormbenchError, WriteError
from normbench.model.gpt import matrix_weights
from normbench.run import dist
from normbench.run.config.checks import validate_probe
from normbench.run.config.resolve import as_dict, resolve
from normbench.run.config.schema import config_dir, register_configs
from normbench.run.console import PROG, Interrupted, say
from normbench.run.data.tokens import check_data_fits, load_tokens
from normbench.run.dist import check_global_batch
from normbench.run.hardware import check_memory
from normbench.run.job import TrainTask, check_same_config
from normbench.run.record.checkpoint import RunLock
from normbench.run.record.checkpoint import load as load_checkpoint
from normbench.run.record.rundir import (
    check_run_dir,
    check_sweep_dir,
    override_value,
    resume_command,
    sweep_definition,
    write_sweep_manifest,
)
from normbench.run.record.writer import record_files
from normbench.run.runtime import resolve_device

# --- composition: the config of every job ---------------------------------------------------


def hydra_args(argv: list[str], command: str = "train") -> tuple[Any, Any]:
    parser = get_args_parser()
    parser.prog = f"{PROG} {command}"
    return parser, parser.parse_args(argv)


def _loader(args: Any) -> Any:
    search_path = create_automatic_config_search_path(None, None, str(config_dir()))
    if args.config_dir is not None:
        extra = Path(args.config_dir).resolve()
        if not extra.is_dir():
            raise NormbenchError(f"--config-dir {args.config_dir}: no such directory")
        search_path.prepend("command-line", f"file://{extra}", SearchPathQuery(provider="schema"))
    return ConfigLoaderImpl(config_search_path=search_path)


def _compose_base(args: Any, config_name: str) -> DictConfig:
    """The config with Hydra's node, in the mode the command line (or the config) asks for."""

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


# --- preflight: check every job and take the output folder before anything runs -------------


def pin_output_dir(args: Any, base: DictConfig) -> tuple[str, Path]:
    """Resolve the run (or sweep) directory of the composed `base` once, check that it can
    be written, and pin it as an override, so that every later composition, Hydra's own
    included, uses the same folder (the default one is named by the time, to the
    microsecond) and the resume command can name it."""
    key = "hydra.sweep.dir" if _is_multirun(base) else "hydra.run.dir"
    given = str(OmegaConf.select(base, key) or "").strip()
    if not given:  # Path("") is the current folder: a record would land among your files
        raise ConfigError(f"{key} is empty; give the folder the run's record goes to")
    pinned = Path(given).expanduser()
    try:
        target = pinned.resolve()
    except OSError as e:
        raise ConfigError(f"{key}: {e.strerror}; choose another folder") from e
    check_names(key, target)
    existing = _existing_parent(target)
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


def _existing_parent(path: Path) -> Path:
    """`path`, or its nearest parent that exists (a name the file system cannot hold, too
    long, does not exist)."""
    while True:
        try:
            if path.exists():
                return path
        except OSError:
            pass
        path = path.parent


def check_names(key: str, target: Path) -> None:
    """Every folder name of the output path within the file system's limit (255 bytes on
    most), so that the first mkdir never fails after the checks passed."""
    try:
        limit = os.pathconf(_existing_parent(target), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for part in target.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(
                f"{key}: the folder name {part[:40]}... is {len(os.fsencode(part))} bytes long, "
                f"more than this file system allows ({limit}); choose a shorter name"
            )


def preflight(args: Any, config_name: str = "train") -> tuple[str, Any]:
    """Before any job starts: validate every job, make sure its data is tokenized, then take
    the output directory: pinned, locked (returned with its key, hydra.run.dir or
    hydra.sweep.dir; release the lock when the command ends), and checked to hold no other
    configuration's run or sweep. A refused command leaves the directory as it was (no
    .hydra/, no log, no lock file of its own)."""

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
        jobs.append((subdir, _check_job(cfg, config_name, target, multirun, checked_data)))
    _check_subdirs(target, [subdir for subdir, _ in jobs] if multirun and basic else [])
    definition = sweep_definition(jobs if basic else None, jobs[0][1], sweeper)

    def check() -> None:
        if multirun:
            check_sweep_dir(target, definition)
        else:
            check_run_dir(target, jobs[0][1], key)

    then = (lambda: write_sweep_manifest(target, definition)) if multirun else None
    return key, _lock(target, check, then)


def _check_subdirs(sweep_dir: Path, subdirs: list[str]) -> None:
    """Every job of a sweep in a folder of its own (`hydra.sweep.subdir`), each a folder
    name within the limit: two jobs in one folder would train into each other's record."""
    seen: dict[str, int] = {}
    for num, subdir in enumerate(subdirs):
        if subdir in seen:
            raise ConfigError(
                f"hydra.sweep.subdir gives jobs {seen[subdir]} and {num} the same folder "
                f"{sweep_dir / subdir}; make it name each job, e.g. with ${{hydra.job.num}}"
            )
        seen[subdir] = num
        check_names("hydra.sweep.subdir", sweep_dir / subdir)


def _check_job(
    composed: DictConfig,
    config_name: str,
    target: Path,
    multirun: bool,
    checked_data: dict[str, Any],
) -> dict[str, Any]:
    """One job's checks: its config, its claim, its data (tokenized once per distinct data
    config, into `checked_data`), what it resumes, its device and batch, and that its model
    fits in the memory free on the device. Returns the job's resolved config as plain values,
    with its data's fingerprint (`data.fingerprint`)."""
    cfg = resolve(composed)
    config = as_dict(cfg)
    check_claim(cfg.claim, config_name)
    data_key = json.dumps(config["data"], sort_keys=True)
    if data_key not in checked_data:
        checked_data[data_key] = load_tokens(cfg.data)
    check_data_fits(checked_data[data_key], cfg.model.context)
    config["data"]["fingerprint"] = checked_data[data_key].fingerprint
    if str(cfg.train.resume) == "never" and not multirun and record_files(target):
        raise ConfigError(
            f"train.resume=never but {target} already holds a run record; choose another "
            "hydra.run.dir, or train.resume=auto to continue it"
        )
    if str(cfg.train.resume) not in ("auto", "never"):
        path = Path(str(cfg.train.resume)).expanduser()
        check_same_config(load_checkpoint(path), config, path)
    device = resolve_device(str(cfg.device))
    check_global_batch(cfg.train.batch_size)
    weights = matrix_weights(cfg.depth, cfg.model.d_model, cfg.model.vocab_size)
    what = f"model.d_model={cfg.model.d_model}, depth={cfg.depth}"
    check_memory(what, weights, device.type)
    return config


def _lock(target: Path, check: Callable[[], None], then: Callable[[], None] | None = None) -> Any:
    """Take the output folder's lock, checking it before (so that a refusal touches nothing)
    and again under the lock (another process may have written in between); `then` runs
    under the lock. A refusal abandons the lock."""

    check()
    lock = RunLock.acquire(target)
    try:
        check()
        if then is not None:
            then()
    except BaseException:
        lock.abandon()
        raise
    return lock


def join_torchrun(args: Any, config_name: str) -> tuple[str, Any]:
    """Under torchrun: join the process group; rank 0 checks the job and takes the run
    directory (as preflight, whose result it returns), which every rank then uses (only
    rank 0 writes into it)."""

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


# --- the commands ---------------------------------------------------------------------------


def run(args: Any, parser: Any, task: Callable[..., Any], config_name: str, lock: Any) -> None:
    """Hand `task` to Hydra, which runs the job (or the sweep's jobs); then release `lock`
    (the output folder's, or None) and leave torchrun's process group."""
    try:
        with _without_hydras_job_error():
            _run_hydra(
                args=args,
                args_parser=parser,
                task_function=task,
                config_path=str(config_dir()),
                config_name=config_name,
            )
    finally:
        if lock is not None:
            lock.release()
        dist.finish()


class _DropLine:
    """sys.stderr without the lines that start with `prefix` (everything else passes)."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self.stream, self.prefix = stream, prefix

    def write(self, text: str) -> int:
        return len(text) if text.startswith(self.prefix) else self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding: the stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def _without_hydras_job_error() -> Iterator[None]:
    """Hydra writes `Error executing job with overrides: [...]` to stderr before it re-raises
    a job's exception (hydra.core.utils.JobReturn.return_value); the command line then prints
    its own one line for it, so Hydra's is dropped."""
    stream = sys.stderr
    sys.stderr = _DropLine(stream, "Error executing job with overrides:")  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stderr = stream


def _informational(args: Any) -> bool:
    """--help, --hydra-help, --cfg, --info, --shell-completion: Hydra prints, nothing runs."""
    return bool(args.help or args.hydra_help or args.cfg or args.info or args.shell_completion)


def train(argv: list[str]) -> None:
    """`normbench train`: check every job, take the output folder, run the job or sweep."""
    register_configs()
    parser, args = hydra_args(argv)
    config_name = args.config_name or "train"
    key, lock = "", None
    if dist.world()[1] > 1 and not _informational(args):
        key, lock = join_torchrun(args, config_name)
    elif not _informational(args):
        key, lock = preflight(args, config_name)
    # The command that continues this run (or sweep): printed when it is interrupted or
    # stops on a write error, and kept in an interrupted run's summary.json (the default
    # output folder is named by the time, so "the same command" would start another).
    hint = resume_command(argv, key, lock.dir) if lock is not None else None
    try:
        run(args, parser, TrainTask(hint), config_name, lock)
    except (Interrupted, WriteError) as e:
        e.resume_command = e.resume_command or hint
        raise
    if lock is not None and dist.is_main():
        say_next(lock.dir)


def say_next(record: Path) -> None:
    """The last line of a command that wrote a record: the command that reports on it."""
    say(f"next: {PROG} compare {record}   (a report: tables, loss curves, figures)", "stderr")


def prepare(argv: list[str]) -> None:
    """Tokenize the configured data into the cache; print where it went."""
    register_configs()
    parser, args = hydra_args(argv)
    if args.multirun or args.cfg or args.info:
        raise NormbenchError(
            "prepare takes overrides only (e.g. data=wikitext2 data.cache_dir=...)"
        )
    for cfg in job_configs(args, args.config_name or "train"):
        print(load_tokens(cfg.data).describe())


def probe_jobs(args: Any) -> tuple[Any, list[Any]]:
    """The probe's base config and one validated config per placement x depth of
    probe.norms x probe.depths (each as `train norm=<p> depth=<N>` with the same overrides)."""

    loader = _loader(args)

    def compose(overrides: list[str]) -> Any:
        cfg = loader.load_configuration("probe", overrides, run_mode=RunMode.RUN)
        with open_dict(cfg):
            del cfg["hydra"]
        return resolve(cfg)

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


def probe(argv: list[str]) -> None:
    """Dynamics at initialization over probe.norms x probe.depths, in one run directory."""

    register_configs()
    parser, args = hydra_args(argv, "probe")
    if args.multirun:
        raise NormbenchError(
            "probe takes lists instead of -m: probe.norms=[pre,post] probe.depths=[6,12,24] "
            "probe.seeds=[0,1]"
        )
    if args.config_name not in (None, "probe"):
        raise NormbenchError("probe uses its own config (configs/probe.yaml); drop --config-name")
    jobs: list[Any] = []
    lock = None
    if not _informational(args):
        base, jobs = probe_jobs(args)
        checked: dict[str, Any] = {}
        for job in jobs:
            data_key = json.dumps(as_dict(job)["data"], sort_keys=True)
            if data_key not in checked:
                checked[data_key] = load_tokens(job.data)
            check_data_fits(checked[data_key], job.model.context)
        key, target = pin_output_dir(args, _compose_base(args, "probe"))
        # a probe's folder holds that probe
        lock = _lock(target, lambda: check_run_dir(target, as_dict(base), key))
    run(args, parser, partial(probe_task, jobs=jobs), "probe", lock)
    if lock is not None:
        say_next(lock.dir)
