"""The training loop (`train.*`): AdamW on random windows, full validation, the run record.

`Trainer` knows nothing of placements: it builds `GPT.from_config(cfg)` and trains it.
`step()` is one training step (a batch, forward and backward, the statistics, the update);
`evaluate()` the validation loss; `fit()` the loop around them (logging, evaluation,
checkpoints, a graceful stop). `make bench` times the same `step()`.

The step never waits for the device. Its values (the loss, the gradient norm, every
per-layer statistic) stay there in one vector, copied to host memory without blocking, and
are read once, one step late: step s is queued (batch, forward, backward, statistics), then
the values of step s - 1 are read and its detectors decide, then the update of step s is
queued unless they stop the run. So the device always has a step's forward and backward
pass to run while the host reads the one before. At evaluations, checkpoints, a stop request
and the last step the step's own values are read before going on. The guarantee
(docs/divergence.md): a non-finite loss or gradient skips its update on the device (the
weights after it are bit-identical to those before); any other detector with
`divergence.action=stop` decides one step late, so the run ends after the update of the
step it fired at, and no later update is taken.

Divergence is a result, not a crash: the detectors of `divergence.*` (run/monitor/divergence.py)
turn it into events, and with `divergence.action=stop` the run ends with status `diverged`,
the step and the detector. The per-layer diagnostics (run/monitor/diag.py) are measured on the
training step itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from normbench.model.gpt import GPT
from normbench.run import dist, hardware
from normbench.run.config.schema import NormbenchConfig, compile_mode
from normbench.run.data.batches import RandomWindows
from normbench.run.data.tokens import TokenSplits
from normbench.run.data.vocab import record_vocab
from normbench.run.logger import Logger, NullLogger
from normbench.run.monitor.collapse import record_unigram, unigram_of
from normbench.run.monitor.diag import FULL_ONLY, Diagnostics, Values
from normbench.run.monitor.divergence import DivergenceMonitor, Event, describe
from normbench.run.optim import (
    build_optimizer,
    build_scheduler,
    load_state_alone,
    lr_on_device,
    schedule,
    state_alone,
    step_unless,
)
from normbench.run.progress import Progress
from normbench.run.record import checkpoint
from normbench.run.record.checkpoint import Checkpointer
from normbench.run.record.summary import FIELDS, Status, Summary
from normbench.run.record.writer import NullRecord, Record
from normbench.run.runtime import StopRequest, process_age, resolve_device, tune_cpu_allocator
from normbench.run.steps import Gradients, evaluate, finite, forward_backward, total_norm

log = logging.getLogger(__name__)


def choose_precision(
    cfg: NormbenchConfig, device: torch.device, resume: dict[str, Any] | None = None
) -> hardware.PrecisionChoice:
    """The precision of this run (run/hardware.py). A resumed `auto` run keeps the precision
    it started in, so that one run is one experiment; under torchrun rank 0's choice holds
    for every rank."""
    requested = str(cfg.precision)
    choice = hardware.pick(requested, device.type, cfg.data.cache_dir)
    saved = (resume or {}).get("summary", {})
    if requested == "auto" and saved.get("precision") not in (None, choice.precision):
        choice = hardware.PrecisionChoice(
            saved["precision"],
            f"kept from the checkpoint ({saved.get('precision_reason')}); this machine alone "
            f"would choose {choice.precision} ({choice.reason})",
            choice.speedup,
        )
    return dist.broadcast(choice) if dist.active() else choice


def startup_line(
    cfg: NormbenchConfig,
    n_params: int,
    device: torch.device,
    choice: hardware.PrecisionChoice,
    tokens: TokenSplits,
) -> str:
    """The line printed before the first step: the model, where it runs, in what precision
    and why, and the data."""
    return (
        f"model: {cfg.norm.name}-{cfg.norm.kind}, depth {cfg.depth}, "
        f"d_model {cfg.model.d_model}, {n_params:,} parameters on {device}, {choice.precision} "
        f"({choice.reason}); data {cfg.data.label}: {len(tokens.train):,} train / "
        f"{len(tokens.val):,} validation tokens"
    )


@dataclass
class LoopState:
    """What the loop accumulates across steps (kept in checkpoints): the training time so
    far, the current logging interval's time and losses, and the wall time of the parts
    before a resume."""

    train_time: float = 0.0  # seconds in training steps, resumed parts included
    interval_time: float = 0.0  # seconds in the steps since the last logged row
    interval_losses: list[float] = field(default_factory=list)  # their losses
    wall_s: float = 0.0  # the whole run's wall time before this process


@dataclass
class StepResult:
    """What one training step measured; `stopped`: a detector ended the run at this step
    (no later update is taken); `lr`: the learning rate of its update, None when the update
    was skipped (a non-finite loss or gradient norm)."""

    step: int
    loss: float
    grad_norm: float
    lr: float | None
    stats: dict[str, Any]  # the per-layer statistics of the step (run/monitor/diag.py)
    events: list[Event] = field(default_factory=list)
    stopped: bool = False
    diag_row: dict[str, Any] | None = None  # the full diagnostics, on diag.every steps
    seconds: float = 0.0


@dataclass
class Pending:
    """A training step queued on the device whose values the host has not read yet."""

    step: int
    lr: float
    diag: Diagnostics  # the instrumentation it was measured with
    full: bool  # a diag.every step
    finite: torch.Tensor  # 0-d bool on the device: the update may be taken
    values: Values  # the loss, the gradient norm and the statistics, one device vector
    start: Any  # Clock marks
    end: Any = None
    host: torch.Tensor | None = None  # the values in host memory (pinned on CUDA)
    ready: Any = None  # the CUDA event after their copy

    def send(self, buffers: StepBuffers) -> None:
        """Queue the copy of the values to host memory (no waiting)."""
        self.host, self.ready = buffers.send(self.values)

    def read(self) -> dict[str, float]:
        """The step's values by name: the one host read of the step."""
        if self.ready is not None:
            self.ready.synchronize()
        assert self.host is not None, "read before send"
        return dict(zip(self.values.keys, self.host.tolist(), strict=True))


class StepBuffers:
    """Where a step's values go: one preallocated device vector per layout (light steps and
    full steps have theirs), written in one `cat`, and on CUDA one pinned host vector per
    layout (a step is read before the next one is sent)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.on_device: dict[int, torch.Tensor] = {}
        self.on_host: dict[int, torch.Tensor] = {}

    def send(self, values: Values) -> tuple[torch.Tensor, Any]:
        """Write the values into their device vector and queue its copy to the host; the
        host vector and the CUDA event after the copy (None off CUDA: already there)."""
        n = len(values.keys)
        if n not in self.on_device:
            self.on_device[n] = torch.empty(n, device=self.device)
        vector = torch.cat(values.parts, out=self.on_device[n]) if n else self.on_device[n]
        if self.device.type != "cuda":
            return vector.clone(), None  # the next step writes the same vector
        if n not in self.on_host:
            self.on_host[n] = torch.empty(n, pin_memory=True)
        host = self.on_host[n]
        host.copy_(vector, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready


class Trainer:
    """One run's training: the model, its optimizer and schedule, the batches, the detectors
    and the diagnostics, and the summary they fill in.

    `resume` is a checkpoint's state (run/record/checkpoint.py), from which `fit` continues exactly
    as if the run had never stopped; `record` and `logger` receive the rows (nothing by
    default, as in a benchmark). `tune_allocator=False` keeps glibc's defaults (a benchmark's
    lever; see run/runtime.py).
    """

    def __init__(
        self,
        cfg: NormbenchConfig,
        tokens: TokenSplits,
        record: Record | None = None,
        logger: Logger | None = None,
        summary: Summary | None = None,
        *,
        stop: StopRequest | None = None,
        resume: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        tune_allocator: bool = True,
    ) -> None:
        self.t_start = time.perf_counter()
        self.cfg, self.tokens, self.resume, self.config = cfg, tokens, resume, config or {}
        self.record = record if record is not None else NullRecord()
        self.logger = logger if logger is not None else NullLogger()
        self.summary = summary if summary is not None else Summary()
        self.stop = stop or StopRequest()
        self._build(tune_allocator)
        self._announce()

    def _build(self, tune_allocator: bool) -> None:
        """The device, the precision, and everything the steps need, seeded by `seed`."""
        cfg, t = self.cfg, self.cfg.train
        self.device = resolve_device(str(cfg.device))
        if self.device.type == "cpu" and tune_allocator:
            tune_cpu_allocator()
        self.choice = choose_precision(cfg, self.device, self.resume)
        self.precision = self.choice.precision
        if self.choice.warning and dist.is_main():
            log.warning("precision=bf16: %s", self.choice.warning)
        torch.manual_seed(cfg.seed)
        dist.check_global_batch(t.batch_size)
        self.model = GPT.from_config(cfg).to(self.device)
        self.init_profile = self._profile_init()  # before DDP, which starts every rank alike
        # The module that runs the steps: DDP under torchrun, compiled with train.compile;
        # the diagnostics' hooks and the optimizer see `model` itself.
        run = dist.wrap(self.model)
        self.run, self.measure, self.apply = run, self._measure, self._apply
        if (mode := compile_mode(t.compile)) is not None:  # the same functions, compiled
            self.run = torch.compile(run, mode=mode)
            self.measure = torch.compile(self._measure, mode=mode, fullgraph=True)
            self.apply = torch.compile(self._apply, mode=mode)  # torch's optimizer breaks once
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.max_steps)
        lr_on_device(self.optimizer, self.device)  # after the scheduler: its base lrs numbers
        self.lr_of = schedule(cfg.optim, t.max_steps)
        self.gradients = Gradients(list(self.model.parameters()))
        self.clock = hardware.Clock(self.device)
        self.pending: Pending | None = None
        self.buffers = StepBuffers(self.device)
        self.halted = torch.zeros((), device=self.device)  # 1 after a non-finite step
        self.batches = RandomWindows(self.tokens.train, cfg.model.context, t.batch_size, cfg.seed)
        self.tokens_per_step = t.batch_size * cfg.model.context
        self.clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        self.unigram = unigram_of(self.tokens) if cfg.divergence.collapse.enabled else None
        self.monitor = DivergenceMonitor(
            cfg.divergence,
            max_steps=t.max_steps,
            vocab_size=cfg.model.vocab_size,
            unigram=self.unigram,
        )
        self.diag = Diagnostics(
            self.model,
            every=cfg.diag.every,
            per_param=cfg.diag.per_param,
            history=cfg.divergence.history,
            from_init=cfg.diag.from_init,
            attn_rows=cfg.diag.attn_rows,
        )
        self.loop = LoopState()

    def _profile_init(self) -> dict[str, Any] | None:
        """The initialization the placement measures on data (`GPT.profile_init`; None for
        most): at a fresh start on the batch step 1 trains on (the global batch, on every
        rank), drawn from a copy of the training stream so the stream itself is untouched; on
        resume the profile the run started with, never measured again (the measured
        parameters are in the checkpoint's model)."""
        if self.resume is not None:
            return self.resume.get("init_profile")
        t = self.cfg.train
        first = RandomWindows(
            self.tokens.train, self.cfg.model.context, t.batch_size, self.cfg.seed
        )
        x, _ = first.next(self.device)
        return self.model.profile_init(x)

    def _announce(self) -> None:
        """The summary's first values, the W&B config's device and precision, the start-up
        line."""
        s, device = self.summary, str(self.device)
        s.update(steps=0, tokens=0, n_params=self.model.num_params(), device=device)
        s.update(self.choice.record())
        self.logger.config_update({"device": device, **self.choice.record()})
        record_vocab(self.tokens.vocab, self.record, self.logger, s)  # data.vocab_limit's
        if self.init_profile is not None:  # e.g. norm.admin_init=profiled
            self.record.write_init_profile(self.init_profile)
            self.logger.config_update({"init_profile": self.init_profile})
            log.info("initialization profiled: %s", self.init_profile["summary"])
        if self.unigram is not None:
            record_unigram(self.unigram, self.logger, s)
        log.info(startup_line(self.cfg, s.n_params, self.device, self.choice, self.tokens))

    # --- one step -------------------------------------------------------------------------

    def step(self, step: int) -> StepResult | None:
        """Training step `step`: queue its batch, forward and backward pass and statistics;
        finish the step before it (its one host read, its detectors); queue this step's
        update unless that step stopped the run. Returns the earlier step's result (None
        when there was none pending); `flush()` finishes this one. Nothing is logged here."""
        launched = self._launch(step)
        result = self.flush()
        if result is not None and result.stopped:  # this step's update is never queued
            return result
        self._update(launched)
        self.pending = launched
        return result

    def flush(self) -> StepResult | None:
        """Finish the pending step, if any: read its values and run its detectors."""
        if self.pending is None:
            return None
        pending, self.pending = self.pending, None
        return self._finish(pending)

    def _launch(self, step: int) -> Pending:
        """Queue a batch, the forward and backward pass, the gradients' norms and clipping,
        and the statistics: no host read."""
        chained = self.clock.cuda and self.pending is not None
        start = self.pending.end if chained else self.clock.mark()  # GPU idle counts too
        x, y = self.batches.next(self.device)
        x, y = x[dist.rows()], y[dist.rows()]  # this rank's share of the global batch
        diag = self.diag
        with diag.watch(step):
            loss = forward_backward(self.run, x, y, self.precision, self.cfg.optim.z_loss)
        values, ok = self.measure(loss, diag)
        return Pending(step, self.lr_of(step - 1), diag, diag.full, ok, values, start)

    def _measure(self, loss: torch.Tensor, diag: Diagnostics) -> tuple[Values, torch.Tensor]:
        """After the backward pass: the gradients' norms (before clipping), the clipping,
        the step's statistics in one vector, and whether the update may be taken."""
        norms = self.gradients.norms()
        grad_norm = total_norm(norms)
        diag.on_grads(norms)
        self.gradients.clip_(grad_norm, self.clip)
        values = Values()
        values.add(["loss", "grad_norm"], torch.stack([loss.float(), grad_norm]))
        light = diag.light()
        values.add(light.keys, light.values)
        return values, finite(loss, grad_norm)

    def _update(self, pending: Pending) -> None:
        """Queue the update, skipped on the device after a non-finite step (and after any
        later one: `halted` stays set), the rest of the full diagnostics, and the copy of
        the step's values to the host."""
        extra = self.apply(pending.finite, pending.diag)
        self.scheduler.step()
        pending.values.add(extra.keys, extra.values)
        pending.end = self.clock.mark()
        pending.send(self.buffers)

    def _apply(self, ok: torch.Tensor, diag: Diagnostics) -> Values:
        """The gated update and the rest of the full diagnostics around it."""
        self.halted.copy_(torch.maximum(self.halted, (~ok).float()))  # in place: an input
        diag.before_update()
        step_unless(self.optimizer, self.halted)
        return diag.after_update()

    def _finish(self, pending: Pending) -> StepResult:
        """Read a step's values and run the detectors on them."""
        row = pending.read()
        loss, grad_norm = row.pop("loss"), row.pop("grad_norm")
        stats: dict[str, Any] = {}
        if row:  # a step that measured the per-layer statistics
            stats = {"step": pending.step, "loss": loss, "grad_norm": grad_norm}
            stats |= {k: v for k, v in row.items() if not k.startswith(FULL_ONLY)}
            pending.diag.push(stats)
        events = self.monitor.check(pending.step, loss, grad_norm, stats)
        updated = math.isfinite(loss) and math.isfinite(grad_norm)
        full = {"step": pending.step, **row} if pending.full else None
        return StepResult(
            pending.step,
            loss,
            grad_norm,
            pending.lr if updated else None,
            stats,
            events,
            stopped=self.monitor.stops(events),
            diag_row=full,
            seconds=self.clock.seconds(pending.start, pending.end),
        )

    def evaluate(self) -> float | None:
        """The validation loss over the whole split; None when a stop request cut it short
        (under torchrun an evaluation is never cut: the ranks must stay in step)."""
        t = self.cfg.train
        cut = None if dist.active() else (lambda: self.stop.requested)
        batch_size = t.eval_batch_size or t.batch_size
        context = self.cfg.model.context
        return evaluate(
            self.run, self.tokens.val, context, batch_size, self.device, self.precision, cut
        )

    # --- the loop -------------------------------------------------------------------------

    def fit(self, checkpointer: Checkpointer | None = None) -> None:
        """Train to `train.max_steps` (or divergence, or a stop request), filling in the
        summary. Its status becomes `completed`, `collapsed` (run/monitor/collapse.py), `diverged` or
        `interrupted` only at the end; until then an interrupted or crashed run still reports
        how far it got.

        `checkpointer` (run/record/checkpoint.py) is asked after every step whether the loop's state
        is due and saves it then and when a stop is requested.
        """
        start = self._start()
        self.model.train()
        progress = Progress(self.cfg.train.max_steps, done=start - 1)  # after the lines above
        status: Status | None = None
        try:
            with self.stop.installed():
                for step in range(start, self.cfg.train.max_steps + 1):
                    if step == start and self.resume is None:
                        self.summary.startup_s = process_age()  # from the command to step 1
                    status = self._train_one(step, start, progress, checkpointer)
                    if status is not None:
                        break
            ended = Status.COLLAPSED if self.monitor.collapsed else Status.COMPLETED
            self.summary.status = status or ended
        finally:
            progress.close()
            self._finish_summary()

    def _start(self) -> int:
        """The first step to take: 1, or the one after the checkpoint resumed from (whose
        evaluation is redone if a stop had cut it short)."""
        if self.resume is None:
            return 1
        done = self.load_state_dict(self.resume)
        log.info("resumed after step %d (of %d)", done, self.cfg.train.max_steps)
        if self._eval_due(done) and not self.resume["evaluated"]:
            self._evaluate_and_log(done)
        return done + 1

    def _train_one(
        self, step: int, start: int, progress: Progress, checkpointer: Checkpointer | None
    ) -> Status | None:
        """Step; log the step it finished; at an evaluation, a checkpoint, a stop request or
        the last step, finish this one too, then evaluate and checkpoint. The run's final
        status if it ends here."""
        if (status := self._take(self.step(step), start, progress)) is not None:
            return status
        t = self.cfg.train
        stopping = dist.any_rank(self.stop.requested)
        saving = checkpointer is not None and checkpointer.due(step, t.max_steps)
        if not (stopping or saving or self._eval_due(step)):
            return None  # its values are read during the next step
        if (status := self._take(self.flush(), start, progress)) is not None:
            return status
        evaluated = self._eval_due(step) and not stopping and self._evaluate_and_log(step)
        stopping = dist.any_rank(self.stop.requested)
        if checkpointer is not None and (saving or stopping):
            self.summary.tokens = self._tokens(step)
            try:
                checkpointer.save(step, self.state_dict(step, evaluated))
            except Exception:
                if self.stop.forced is not None:  # a second signal cut the write short
                    raise self.stop.at_once() from None
                raise
        if stopping:
            log.info("step %d: stopped (%s); checkpoint written", step, self.stop.signal)
            return Status.INTERRUPTED
        return None

    def _take(self, result: StepResult | None, start: int, progress: Progress) -> Status | None:
        """A finished step: its events, its row; `diverged` when a detector stopped the run."""
        if result is None:
            return None
        step = result.step
        for event in result.events:
            self._report(event, result.stats)
        if not result.stopped:
            self._log_step(result, start, progress)
            return None
        self.summary.steps = step if result.lr is not None else step - 1  # updates taken
        self._log({"step": step, "tokens": self._tokens(step), "train/loss": result.loss})
        self.summary.diag = {
            k: v for k, v in result.stats.items() if k not in ("loss", "grad_norm")
        }
        log.info("step %d: stopped (divergence.action=%s)", step, self.cfg.divergence.action)
        return Status.DIVERGED

    def _log_step(self, result: StepResult, start: int, progress: Progress) -> None:
        """The interval's row at log points, the progress bar, the full diagnostics."""
        loop, step, t = self.loop, result.step, self.cfg.train
        loop.train_time += result.seconds
        loop.interval_time += result.seconds
        loop.interval_losses.append(result.loss)
        self.summary.steps = step
        # Step 1 is always logged: its train/loss is the loss at initialization (the first
        # batch before any update), the l0 of an LR-sensitivity study (analysis/sensitivity.py).
        logged = step % t.log_every == 0 or step in (1, t.max_steps)
        losses = loop.interval_losses
        row = {
            "step": step,
            "tokens": self._tokens(step),
            "train/loss": sum(losses) / len(losses),
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": len(losses) * self.tokens_per_step / loop.interval_time,
        }
        if logged:
            self._log(row)
            loop.interval_time, loop.interval_losses = 0.0, []
        eta = loop.train_time / step * (t.max_steps - step)
        progress.advance(step, row if logged or step == start else None, eta_s=eta)
        if result.diag_row is not None:
            self._log({"step": step, "tokens": self._tokens(step), **result.diag_row})
            self.summary.diag = result.diag_row

    def _evaluate_and_log(self, step: int) -> bool:
        """Evaluate and log; False when a stop request cut the evaluation short."""
        val_loss = self.evaluate()
        if val_loss is None:
            return False
        ppl = math.exp(val_loss) if val_loss < 700 else math.inf
        self._log(
            {"step": step, "tokens": self._tokens(step), "val/loss": val_loss, "val/ppl": ppl}
        )
        s = self.summary
        s.val_loss, s.val_ppl = val_loss, ppl
        if math.isfinite(val_loss) and (s.best_val_loss is None or val_loss < s.best_val_loss):
            s.best_val_loss = val_loss
        log.info("step %d: val/loss %.4f, val/ppl %s", step, val_loss, f"{ppl:,.2f}")
        recent = self.diag.recent()
        for event in self.monitor.evaluated(step, val_loss):
            self._report(event, recent[-1] if recent else {})
        return True

    def _report(self, event: Event, stats: dict[str, Any]) -> None:
        """A divergence event: to events.jsonl (with the ring buffer), W&B, the summary."""
        action = "stop" if self.monitor.stops([event]) else "continue"
        entry = event.record(
            tokens=self._tokens(event.step),
            action=action,
            layers=stats,
            history=self.diag.recent(),
        )
        self.record.event(entry)
        self.logger.log({"step": event.step, f"events/{event.kind}": 1})
        s = self.summary
        if event.kind == "collapse":  # not a divergence: the run trains on
            s.update(collapsed_at_step=event.step, collapse_detail=event.message)
        elif not s.diverged:
            s.update(
                diverged=True,
                diverged_at_step=event.step,
                divergence_reason=event.kind,
                divergence_detail=event.message,
            )
        s.events += 1
        log.info("step %d: divergence event %s", event.step, describe(entry))

    def _log(self, row: dict[str, Any]) -> None:
        self.record.log(row)
        self.logger.log(row)

    def _tokens(self, step: int) -> int:
        return step * self.tokens_per_step

    def _eval_due(self, step: int) -> bool:
        return step % self.cfg.train.eval_every == 0 or step == self.cfg.train.max_steps

    def _finish_summary(self) -> None:
        s, loop = self.summary, self.loop
        s.tokens = self._tokens(s.steps)
        if loop.train_time > 0 and s.steps > 0:
            s.tokens_per_s = s.steps * self.tokens_per_step / loop.train_time
        s.wall_s = loop.wall_s + time.perf_counter() - self.t_start

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self, step: int, evaluated: bool) -> dict[str, Any]:
        """Everything the loop needs to continue after `step` (see run/record/checkpoint.py);
        taken with no step pending (its values read)."""
        assert self.pending is None, "a checkpoint with a step still pending"
        return {
            "step": step,
            "evaluated": evaluated,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": state_alone(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "batches": self.batches.rng.bit_generator.state,
            },
            "monitor": self.monitor.state_dict(),
            "diag": self.diag.state_dict(),
            "loop": {
                **dataclasses.asdict(self.loop),
                "wall_s": self.loop.wall_s + time.perf_counter() - self.t_start,
            },
            "summary": self.summary.to_dict(),
            "init_profile": self.init_profile,
            "record_rows": self.record.sync(),  # the rows it covers, durable from here on
        }

    def load_state_dict(self, saved: dict[str, Any]) -> int:
        """Continue from a `state_dict`; returns its step. The device and the precision stay
        those chosen for this process."""
        checkpoint.load_model(self.model, saved["model"], str(self.cfg.norm.name))
        load_state_alone(self.optimizer, saved["optimizer"])
        lr_on_device(self.optimizer, self.device)
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if self.device.type == "cuda" and saved["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        self.batches.rng.bit_generator.state = saved["rng"]["batches"]
        self.monitor.load_state_dict(saved["monitor"])
        self.diag.load_state_dict(saved["diag"])
        self.loop = LoopState(**saved["loop"])
        fresh = {"device", *self.choice.record()}  # chosen for this process
        kept = {k: v for k, v in saved["summary"].items() if k not in fresh and k in FIELDS}
        self.summary.update(kept)
        return int(saved["step"])
