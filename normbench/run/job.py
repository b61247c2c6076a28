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
from normbench.run.trainer import Trainer

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
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir).resolve()
    group = str(hc.sweep.dir)[-128:] if hc.mode == RunMode.MULTIRUN else None
    typed = resolve(cfg)  # from here on the typed config
    tokens = load_tokens(typed.data)
    check_data_fits(tokens, typed.model.context)
    config = as_dict(typed)
    config["data"]["fingerprint"] = tokens.fingerprint
    main = dist.is_main()  # under torchrun only rank 0 records, logs and prints
    lock = RunLock.acquire(run_dir) if main else None
    slot = None
    try:
        slot = _place_on_a_gpu(typed, hc.mode == RunMode.MULTIRUN)
        return _train_job(typed, tokens, run_dir, group, config, main, resume_command)
    finally:
        if slot is not None:
            slot.release()
        if lock is not None:
            lock.release()


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
    run_dir: Path
    config: dict[str, Any]
    main: bool  # rank 0 (or no torchrun): the one that records, logs and prints
    record: Record
    stop: StopRequest
    summary: Summary
    logger: Logger
    tokens: TokenSplits
    resume_command: str | None = None  # the command that continues the run


def _train_job(
    cfg: NormbenchConfig,
    tokens: TokenSplits,
    run_dir: Path,
    group: str | None,
    config: dict[str, Any],
    main: bool,
    resume_command: str | None,
) -> float:
    """train_task's body, holding the run directory's lock."""

    resume, keep_until, finished = plan_resume(cfg, run_dir, config, main)
    if finished:
        return _already_finished(cfg, run_dir, main)
    record = RunRecord(run_dir, resume_after=keep_until) if main else NullRecord()
    if resume is not None and main:
        _check_rows(record, resume.get("record_rows") or {}, keep_until)
    job = _Job(
        cfg, run_dir, config, main, record, StopRequest(), Summary(), NullLogger(), tokens,
        resume_command,
    )  # fmt: skip
    try:
        _train(job, group, resume)
    except (KeyboardInterrupt, Terminated, SystemExit) as e:  # a second signal: at once
        job.summary.update(
            status=Status.INTERRUPTED,
            stopped_by="a second signal",
            error=f"{type(e).__name__}: stopped at once; the newest checkpoint is the last "
            "periodic one",
        )
        raise
    except BaseException as e:
        _record_failure(job, e)
        raise
    finally:
        _finish(job)
    if job.summary.status == Status.INTERRUPTED:
        raise Interrupted(str(job.stop.signal), job.summary.steps, resume_command)
    return job.summary.objective


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


def _train(job: _Job, group: str | None, resume: dict[str, Any] | None) -> None:
    """Write the config, open the logger and the checkpointer, train."""

    cfg, run_dir, config, summary = job.cfg, job.run_dir, job.config, job.summary
    job.record.write_config(config)
    previous_id = (resume or {}).get("summary", {}).get("wandb") or {}
    if job.main:
        job.logger = make_logger(
            cfg, run_dir, group=group, config=config, resume_id=previous_id.get("id")
        )
    t = cfg.train
    checkpointer = (
        Checkpointer(
            run_dir, t.ckpt_every, t.ckpt_keep, t.ckpt_every_min, owner=run_identity(config)
        )
        if job.main
        else None
    )
    summary.wandb = job.logger.info  # in every checkpoint: a resume continues this W&B run
    summary.threads = configure_threads(cfg.threads, HydraConfig.get().launcher)
    trainer = Trainer(
        cfg,
        job.tokens,
        job.record,
        job.logger,
        summary,
        stop=job.stop,
        resume=resume,
        config=config,
    )
    trainer.fit(checkpointer)
    measure_layer_removal(trainer)  # with diag.layer_removal, after the final evaluation


def _record_failure(job: _Job, e: BaseException) -> None:
    """The summary says the job failed; a bug (not the user's error) keeps its traceback."""
    job.summary.update(status=Status.FAILED, error=f"{type(e).__name__}: {one_line(str(e), 300)}")
    if job.main and isinstance(e, Exception) and not is_user_error(e):  # a bug: keep it
        try:
            (job.run_dir / "traceback.txt").write_text(traceback.format_exc())
        except OSError:
            pass


def _finish(job: _Job) -> None:
    """However the job ended: write the summary, close the record and the logger, log the
    outcome and say where the run is. A summary that could not be written raises last."""
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
    if unrecorded is not None:
        raise unrecorded


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
