"""One training job: the Hydra task function of `normbench train`.

A job takes its run directory's lock, decides what to resume (`plan_resume`), trains
(`Trainer.fit`, run/trainer.py; then, with diag.layer_removal, run/removal.py), and whatever
happens writes the summary, closes the logger and says where the run is. `launch.py` hands
`train_task` to Hydra, once per job.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from normbench.errors import ConfigError
from normbench.run import dist, gpus, hardware
from normbench.run.config.resolve import as_dict, resolve
from normbench.run.config.schema import NormbenchConfig
from normbench.run.console import Interrupted, Terminated, is_user_error, one_line, say
from normbench.run.data.tokens import TokenSplits, check_data_fits, load_tokens
from normbench.run.logger import Logger, NullLogger, make_logger
from normbench.run.monitor.divergence import objective
from normbench.run.record import checkpoint
from normbench.run.record.checkpoint import Checkpointer, RunLock
from normbench.run.record.files import RECORD_BYTES, read_bounded
from normbench.run.record.rundir import check_run_dir, differences, run_identity
from normbench.run.record.summary import Status, Summary
from normbench.run.record.writer import (
    NullRecord,
    Record,
    RecordWriteError,
    RunRecord,
    record_files,
)
from normbench.run.removal import measure_layer_removal
from normbench.run.runtime import StopRequest, configure_threads
from normbench.run.trainer import Run, Trainer

log = logging.getLogger("normbench")


def plan_resume(
    cfg: NormbenchConfig, run_dir: Path, config: dict[str, Any], main: bool = True
) -> tuple[dict[str, Any] | None, int, bool]:
    """(checkpoint state or None, the step the record keeps rows up to, already finished).

    First of all, a run directory whose record was written by another configuration is
    refused (for a finished run too: its results are never returned for another config).
    train.resume=auto continues from the newest valid checkpoint in the run directory
    (a SLURM requeue runs the same command there); a run that already finished (completed,
    collapsed or diverged) is left alone. never: the run directory must hold no run record. A path: that checkpoint.

    Under torchrun only rank 0 (`main`) checks whose the directory is: it holds the lock and
    writes the record, and another rank that starts late could find rank 0's new record
    files before its config.yaml (a run record it would refuse as nobody's).
    """

    mode = str(cfg.train.resume)
    existing = record_files(run_dir) if main else []
    if mode == "never":
        if existing:
            raise ConfigError(
                f"train.resume=never but {run_dir} already holds a run record "
                f"({', '.join(existing)}); choose another hydra.run.dir, or train.resume=auto"
            )
        return None, 0, False
    if main:
        check_run_dir(run_dir, config)
    if mode == "auto":
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():
            try:
                text = read_bounded(summary_path, RECORD_BYTES)
                status = Status(json.loads(text).get("status"))
            except (OSError, json.JSONDecodeError, AttributeError, ValueError):
                status = None
            if status is not None and status.finished:
                return None, 0, True
        found = checkpoint.latest(run_dir, run_identity(config))
        if found is None:
            return None, 0, False
        path, state = found
    else:
        path = Path(mode).expanduser()
        state = checkpoint.load(path)
    check_same_config(state, config, path)
    return state, int(state["step"]), False


def check_same_config(state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """A checkpoint resumes only the configuration that wrote it (but for where it logs)."""
    diffs = differences(state.get("config", {}), config)
    if diffs:
        raise ConfigError(
            f"the checkpoint {path} was written with another config ({diffs[0]}); resume with "
            "the same config, or start a new run (another hydra.run.dir, or train.resume=never)"
        )


@dataclass(frozen=True)
class Place:
    """Where a job runs, from its Hydra config: its run directory, its sweep's W&B group (a
    multirun's), whether it is a multirun's job, and the launcher (for its threads)."""

    run_dir: Path
    group: str | None
    multirun: bool
    launcher: Any

    @classmethod
    def current(cls) -> Place:
        """The place of the job Hydra is running now."""
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        group = str(hc.sweep.dir)[-128:] if multirun else None
        return cls(Path(hc.runtime.output_dir).resolve(), group, multirun, hc.launcher)


class TrainTask:
    """The task of `normbench train`, as Hydra's launchers run it: one job (`__call__`), or
    the jobs of a pack trained together (`pack`, by hydra/launcher=packed:
    normbench/launcher.py). `resume_command`, the command that continues the run, goes into
    the summary of a run that was interrupted or failed."""

    def __init__(self, resume_command: str | None = None) -> None:
        self.resume_command = resume_command

    def __call__(self, cfg: DictConfig) -> float:
        return train_task(cfg, self.resume_command)

    def pack(self, jobs: list[tuple[DictConfig, Place]]) -> list[float | BaseException]:
        return pack_task(jobs, self.resume_command)


def train_task(cfg: DictConfig, resume_command: str | None = None) -> float:
    """One Hydra job: train, write the run record, log to W&B; return the objective.

    The objective (for sweepers that optimize) is the best validation loss, or for a run
    that collapsed or diverged a finite penalty worse than any completed run
    (`divergence.objective`). `resume_command`, the command that continues the run, goes
    into the summary of a run that was interrupted or failed.

    The config the run is checked against and records is the resolved config with its
    data's fingerprint (`data.fingerprint`): a run is never continued or returned on other
    tokens than it trained on.
    """
    (value,) = pack_task([(cfg, Place.current())], resume_command, alone=True)
    assert not isinstance(value, BaseException)  # a job alone raises it
    return value


def pack_task(
    jobs: list[tuple[DictConfig, Place]], resume_command: str | None, alone: bool = False
) -> list[float | BaseException]:
    """Jobs of one architecture (run/pack/plan.py) trained together as one pack: each takes
    its run directory's lock, plans its resume and writes its own record and W&B run, as a
    job alone does; a job whose run already finished only returns its objective, and jobs
    that resume from different steps train as one pack per step. Returns each job's
    objective, or the exception that ended it (`alone`: a single job, whose exception is
    raised as it is)."""
    typed = [resolve(cfg) for cfg, _ in jobs]  # from here on the typed configs
    tokens = load_tokens(typed[0].data)  # one architecture: one data
    check_data_fits(tokens, typed[0].model.context)
    main = dist.is_main()  # under torchrun only rank 0 records, logs and prints
    locks: list[RunLock] = []
    slot = None
    values: list[float | BaseException | None] = [None] * len(jobs)
    try:
        prepared: list[tuple[int, _Job]] = []
        for i, ((_, place), cfg) in enumerate(zip(jobs, typed, strict=True)):
            config = as_dict(cfg)
            config["data"]["fingerprint"] = tokens.fingerprint
            if main:
                locks.append(RunLock.acquire(place.run_dir))
            job = _prepare(cfg, tokens, place, config, main, resume_command)
            if isinstance(job, _Job):
                prepared.append((i, job))
            else:
                values[i] = job  # already finished: its objective
        if prepared:
            first = prepared[0][1]
            slot = _place_on_a_gpu(first.cfg, first.place.multirun)
        # Members resume from their newest valid checkpoints; a kill can leave them at
        # different steps (one cut short mid-write): each step's members train as a pack.
        by_step: dict[int, list[tuple[int, _Job]]] = {}
        for i, job in prepared:
            by_step.setdefault(int((job.resume or {}).get("step", 0)), []).append((i, job))
        for group in by_step.values():
            trained = _train_jobs([job for _, job in group], alone)
            for (i, _), value in zip(group, trained, strict=True):
                values[i] = value
    finally:
        if slot is not None:
            slot.release()
        for lock in locks:
            lock.release()
    return [v for v in values if v is not None]


def _place_on_a_gpu(cfg: NormbenchConfig, multirun: bool) -> gpus.GpuSlot | None:
    """A multirun's job on a machine with several GPUs (not under torchrun): the GPU of the
    slot it claims (run/gpus.py), made the current device; None elsewhere."""
    if not multirun or dist.active() or hardware.resolve_device(str(cfg.device)) != "cuda":
        return None
    count = torch.cuda.device_count()
    if count < 2:
        return None
    folder = Path(cfg.data.cache_dir).expanduser() / "gpu-slots"
    slot = gpus.claim(count, cfg.jobs_per_gpu, folder, log=log.info)
    torch.cuda.set_device(slot.gpu)
    log.info("on GPU %d of %d (slot %d of %d)", slot.gpu, count, slot.slot + 1, cfg.jobs_per_gpu)
    return slot


@dataclass
class _Job:
    """What a job holds while it trains, and what its end writes and closes."""

    cfg: NormbenchConfig
    place: Place
    config: dict[str, Any]
    main: bool  # rank 0 (or no torchrun): the one that records, logs and prints
    record: Record
    stop: StopRequest
    summary: Summary
    logger: Logger
    tokens: TokenSplits
    resume: dict[str, Any] | None = None  # the checkpoint it continues from
    resume_command: str | None = None  # the command that continues the run
    checkpointer: Checkpointer | None = None

    @property
    def run_dir(self) -> Path:
        return self.place.run_dir


def _prepare(
    cfg: NormbenchConfig,
    tokens: TokenSplits,
    place: Place,
    config: dict[str, Any],
    main: bool,
    resume_command: str | None,
) -> _Job | float:
    """A job, holding its run directory's lock, ready to train: its resume planned and its
    record opened; or the objective of a run that already finished."""
    resume, keep_until, finished = plan_resume(cfg, place.run_dir, config, main)
    if finished:
        return _already_finished(cfg, place.run_dir, main)
    record = RunRecord(place.run_dir, resume_after=keep_until) if main else NullRecord()
    if resume is not None and main:
        _check_rows(record, resume.get("record_rows") or {}, keep_until)
    return _Job(
        cfg, place, config, main, record, StopRequest(), Summary(), NullLogger(), tokens,
        resume, resume_command,
    )  # fmt: skip


def _train_jobs(jobs: list[_Job], alone: bool) -> list[float | BaseException]:
    """Train the jobs (one pack) and finish each, whatever happens: each one's objective,
    or the exception that ended it (raised as it is for a job `alone`)."""
    stop = StopRequest()  # one process: one signal stops every run of the pack
    for job in jobs:
        job.stop = stop
    failure: BaseException | None = None
    try:
        _train(jobs)
    except (KeyboardInterrupt, Terminated, SystemExit) as e:  # a second signal: at once
        for job in jobs:
            job.summary.update(
                status=Status.INTERRUPTED,
                stopped_by="a second signal",
                error=f"{type(e).__name__}: stopped at once; the newest checkpoint is the "
                "last periodic one",
            )
        failure = e
    except BaseException as e:
        for job in jobs:
            _record_failure(job, e)
        failure = e
    unrecorded = [_finish(job) for job in jobs]
    if alone and unrecorded[0] is not None:  # raised last, as from a `finally`
        raise unrecorded[0]
    if failure is not None:
        if alone or not isinstance(failure, Exception):
            raise failure
        return [failure] * len(jobs)
    values: list[float | BaseException] = []
    for job, error in zip(jobs, unrecorded, strict=True):
        if error is not None:
            values.append(error)
        elif job.summary.status == Status.INTERRUPTED:
            values.append(Interrupted(str(stop.signal), job.summary.steps, job.resume_command))
        else:
            values.append(job.summary.objective)
    if alone and isinstance(values[0], BaseException):
        raise values[0]
    return values


def _check_rows(record: RunRecord, covered: dict[str, int], step: int) -> None:
    """Say (naming the file) when the record holds fewer rows than the checkpoint resumed
    from covers: rows that never reached the disk before the machine stopped."""
    for name, rows in covered.items():
        held = record.rows.get(name, 0)
        if held < rows:
            log.warning(
                "%s holds %d rows up to step %d, but the checkpoint covers %d: %d rows were "
                "lost before they reached the disk; the run goes on without them",
                record.dir / f"{name}.jsonl", held, step, rows, rows - held,
            )  # fmt: skip


def _already_finished(cfg: NormbenchConfig, run_dir: Path, main: bool) -> float:
    """A run that already finished: say so, return its objective."""

    text = read_bounded(run_dir / "summary.json", RECORD_BYTES)
    summary = Summary.from_dict(json.loads(text))
    if main:
        log.info("%s already %s; nothing to do", run_dir, summary.status)
        say(f"run_dir: {run_dir}")
    return summary.objective or objective(summary, cfg.train.max_steps, cfg.divergence.penalty)


def _train(jobs: list[_Job]) -> None:
    """Write each config, open each logger and checkpointer, train the pack (a job alone:
    the pack of one)."""
    runs = []
    for job in jobs:
        cfg, run_dir, config, summary = job.cfg, job.run_dir, job.config, job.summary
        job.record.write_config(config)
        previous = (job.resume or {}).get("summary", {}).get("wandb") or {}
        if job.main:
            job.logger = make_logger(
                cfg, run_dir, group=job.place.group, config=config, resume_id=previous.get("id")
            )
            t = cfg.train
            job.checkpointer = Checkpointer(
                run_dir, t.ckpt_every, t.ckpt_keep, t.ckpt_every_min, owner=run_identity(config)
            )
        summary.wandb = job.logger.info  # in every checkpoint: a resume continues this W&B run
        summary.threads = configure_threads(cfg.threads, job.place.launcher)
        runs.append(Run(cfg, job.record, job.logger, summary, job.resume, config))
    trainer = Trainer.pack(runs, jobs[0].tokens, stop=jobs[0].stop)
    trainer.fit([job.checkpointer for job in jobs])
    if len(jobs) == 1:  # diag.layer_removal (a job alone: run/pack/plan.py), after the end
        measure_layer_removal(trainer)


def _record_failure(job: _Job, e: BaseException) -> None:
    """The summary says the job failed; a bug (not the user's error) keeps its traceback."""
    job.summary.update(status=Status.FAILED, error=f"{type(e).__name__}: {one_line(str(e), 300)}")
    if job.main and isinstance(e, Exception) and not is_user_error(e):  # a bug: keep it
        try:
            (job.run_dir / "traceback.txt").write_text(traceback.format_exc())
        except OSError:
            pass


def _finish(job: _Job) -> RecordWriteError | None:
    """However the job ended: write the summary, close the record and the logger, log the
    outcome and say where the run is. Returns the error of a summary that could not be
    written (raised last)."""
    cfg, summary = job.cfg, job.summary
    summary.objective = objective(summary, cfg.train.max_steps, cfg.divergence.penalty)
    summary.wandb = job.logger.info
    if job.stop.requested and summary.stopped_by is None:
        summary.stopped_by = job.stop.signal
    if summary.status.unfinished:
        summary.resume_command = job.resume_command
    unrecorded = None
    try:
        job.record.write_summary(summary)
    except RecordWriteError as e:  # even the space kept for it was not enough
        unrecorded = e
    job.record.close()
    job.logger.finish(summary.to_dict(), failed=summary.status.unfinished)
    if job.main:
        _log_outcome(summary, job.run_dir)
        say(f"run_dir: {job.run_dir}")
    return unrecorded


def _log_outcome(summary: Summary, run_dir: Path) -> None:
    status = summary.status
    if status == Status.DIVERGED:
        log.info(
            "diverged at step %s (%s: %s); events in %s",
            summary.diverged_at_step,
            summary.divergence_reason,
            summary.divergence_detail,
            run_dir / "events.jsonl",
        )
    elif status == Status.COLLAPSED:
        log.info(
            "collapsed onto the unigram predictor: val/loss %.4f against its %.4f (%s); "
            "events in %s",
            summary.val_loss,
            (summary.unigram or {}).get("val_ce", float("nan")),
            summary.collapse_detail,
            run_dir / "events.jsonl",
        )
    elif status == Status.COMPLETED:
        log.info(
            "done: val/loss %.4f, %s tokens/s, %.0f s",
            summary.val_loss,
            f"{summary.tokens_per_s:,.0f}",
            summary.wall_s,
        )
