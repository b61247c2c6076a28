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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from normbench.model.gpt import GPT
from normbench.model.members import MemberModule, member_state
from normbench.run import dist, hardware
from normbench.run.config.resolve import as_dict
from normbench.run.config.schema import NormbenchConfig, compile_mode
from normbench.run.data.batches import RandomWindows
from normbench.run.data.tokens import TokenSplits
from normbench.run.data.vocab import record_vocab
from normbench.run.logger import Logger, NullLogger
from normbench.run.monitor.collapse import record_unigram, unigram_of
from normbench.run.monitor.diag import FULL_ONLY, Diagnostics, Values
from normbench.run.monitor.divergence import DivergenceMonitor, Event, describe
from normbench.run.optim import schedule
from normbench.run.pack.grads import MemberGradients
from normbench.run.pack.optim import MemberAdamW, MemberSettings
from normbench.run.pack.plan import architecture_key, packable
from normbench.run.progress import Progress
from normbench.run.record import checkpoint
from normbench.run.record.checkpoint import Checkpointer
from normbench.run.record.summary import FIELDS, Status, Summary
from normbench.run.record.writer import NullRecord, Record
from normbench.run.runtime import StopRequest, process_age, resolve_device, tune_cpu_allocator
from normbench.run.steps import evaluate, finite, forward_backward

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
    lr: list[float]  # each member's learning rate of this step's update
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

    def read(self) -> list[dict[str, float]]:
        """The step's values by name, one row per member: the one host read of the step."""
        if self.ready is not None:
            self.ready.synchronize()
        assert self.host is not None, "read before send"
        return self.values.rows(self.host.tolist())


class StepBuffers:
    """Where a step's values go: one preallocated device array per layout (light steps and
    full steps have theirs; a row per member), written in one `cat`, and on CUDA one pinned
    host array per layout (a step is read before the next one is sent)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.on_device: dict[int, torch.Tensor] = {}
        self.on_host: dict[int, torch.Tensor] = {}

    def send(self, values: Values) -> tuple[torch.Tensor, Any]:
        """Write the values into their device array and queue its copy to the host; the
        host array and the CUDA event after the copy (None off CUDA: already there)."""
        n = len(values.keys)
        if n not in self.on_device:
            self.on_device[n] = torch.empty(values.members, n, device=self.device)
        array = self.on_device[n]
        vector = torch.cat(values.parts, dim=1, out=array) if n else array
        if self.device.type != "cuda":
            return vector.clone(), None  # the next step writes the same array
        if n not in self.on_host:
            self.on_host[n] = torch.empty(values.members, n, pin_memory=True)
        host = self.on_host[n]
        host.copy_(vector, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready


@dataclass
class Run:
    """One run the trainer trains (a member of its pack): its config, where its rows go, its
    summary, the checkpoint it continues from, and what the loop keeps for it."""

    cfg: NormbenchConfig
    record: Record = field(default_factory=NullRecord)
    logger: Logger = field(default_factory=NullLogger)
    summary: Summary = field(default_factory=Summary)
    resume: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # filled in by the trainer
    batches: RandomWindows | None = None
    monitor: DivergenceMonitor | None = None
    loop: LoopState = field(default_factory=LoopState)
    init_profile: dict[str, Any] | None = None
    lr_of: Callable[[int], float] | None = None  # the learning rate of update step + 1
    status: Status | None = None  # set when the run ends: its member is frozen from then on


class Trainer:
    """The training of a pack of runs of one architecture (a run alone: a pack of one): the
    model with a member per run (normbench/model/members.py), each member's AdamW and
    schedule, batches, detectors and summary, and the diagnostics.

    `Trainer(cfg, tokens, record, logger, summary, resume=...)` trains one run; `Trainer.
    pack(runs, tokens)` several, which share everything but the seed and the optimizer's
    settings (run/pack/plan.py). A run's `resume` is a checkpoint's state (run/record/
    checkpoint.py), from which `fit` continues exactly as if the run had never stopped;
    `record` and `logger` receive the rows (nothing by default, as in a benchmark).
    `tune_allocator=False` keeps glibc's defaults (a benchmark's lever; see run/runtime.py).
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
        run = Run(
            cfg,
            record if record is not None else NullRecord(),
            logger if logger is not None else NullLogger(),
            summary if summary is not None else Summary(),
            resume,
            config or {},
        )
        self._start_up([run], tokens, stop, tune_allocator)

    @classmethod
    def pack(
        cls,
        runs: list[Run],
        tokens: TokenSplits,
        *,
        stop: StopRequest | None = None,
        tune_allocator: bool = True,
    ) -> Trainer:
        """A trainer of `runs` (one architecture; run/pack/plan.py) as one batched model."""
        if len(runs) > 1:
            configs = [as_dict(run.cfg) for run in runs]
            if not all(packable(c) for c in configs):
                raise ValueError(
                    "a run with model.dropout > 0 or diag.layer_removal trains alone, "
                    "not in a pack (run/pack/plan.py)"
                )
            if len({architecture_key(c) for c in configs}) != 1:
                raise ValueError(
                    "the runs of a pack differ in more than the seed and the optimizer's "
                    "settings (run/pack/plan.py)"
                )
        trainer = cls.__new__(cls)
        trainer._start_up(runs, tokens, stop, tune_allocator)
        return trainer

    def _start_up(
        self,
        runs: list[Run],
        tokens: TokenSplits,
        stop: StopRequest | None,
        tune_allocator: bool,
    ) -> None:
        self.t_start = time.perf_counter()
        self.runs, self.tokens = runs, tokens  # the runs still training (the pack's members)
        self.all_runs = list(runs)  # every run, in the pack's order, ended ones too
        self.stop = stop or StopRequest()
        self._build(tune_allocator)
        self._announce()

    # A run alone's parts (the first run's: the pack's shared config is every member's).
    @property
    def cfg(self) -> NormbenchConfig:
        return self.runs[0].cfg

    @property
    def summary(self) -> Summary:
        return self.runs[0].summary

    @property
    def record(self) -> Record:
        return self.runs[0].record

    @property
    def logger(self) -> Logger:
        return self.runs[0].logger

    @property
    def batches(self) -> RandomWindows:
        assert self.runs[0].batches is not None
        return self.runs[0].batches

    @property
    def init_profile(self) -> dict[str, Any] | None:
        return self.runs[0].init_profile

    def _build(self, tune_allocator: bool) -> None:
        """The device, the precision, and everything the steps need; each member's model
        built and initialized as its run alone (seeded by its `seed`), then packed."""
        cfg, t = self.cfg, self.cfg.train
        self.device = resolve_device(str(cfg.device))
        if self.device.type == "cpu" and tune_allocator:
            tune_cpu_allocator()
        self.choice = choose_precision(cfg, self.device, self.runs[0].resume)
        self.precision = self.choice.precision
        if self.choice.warning and dist.is_main():
            log.warning("precision=bf16: %s", self.choice.warning)
        dist.check_global_batch(t.batch_size)
        models = []
        for run in self.runs:
            torch.manual_seed(run.cfg.seed)
            model = GPT.from_config(run.cfg).to(self.device)
            run.init_profile = self._profile_init(run, model)  # before DDP: every rank alike
            models.append(model)
        self.model = models[0] if len(models) == 1 else GPT.pack(models)
        self.members = len(self.runs)
        # The module that runs the steps: DDP under torchrun, compiled with train.compile;
        # the diagnostics' hooks and the optimizer see `model` itself.
        run_module = dist.wrap(self.model)
        self.run, self.measure, self.apply = run_module, self._measure, self._apply
        if (mode := compile_mode(t.compile)) is not None:  # the same functions, compiled
            self.run = torch.compile(run_module, mode=mode)
            self.measure = torch.compile(self._measure, mode=mode, fullgraph=True)
            self.apply = torch.compile(self._apply, mode=mode)  # the optimizer breaks once
        self._build_optimizer()
        self.gradients = MemberGradients(list(self.model.parameters()))
        self.clock = hardware.Clock(self.device)
        self.pending: Pending | None = None
        self.buffers = StepBuffers(self.device)
        M = self.members
        gate = {"dtype": torch.float32, "device": self.device}  # fused AdamW's found_inf
        self.halted = torch.zeros(M, **gate)  # 1 after a non-finite step
        self.frozen = torch.zeros(M, **gate)  # 1 once a member's run ended
        self.tokens_per_step = t.batch_size * cfg.model.context
        self.unigram = unigram_of(self.tokens) if cfg.divergence.collapse.enabled else None
        for run in self.runs:
            c = run.cfg
            run.batches = RandomWindows(self.tokens.train, c.model.context, t.batch_size, c.seed)
            run.monitor = DivergenceMonitor(
                c.divergence,
                max_steps=t.max_steps,
                vocab_size=c.model.vocab_size,
                unigram=self.unigram,
            )
        self.z_loss = tuple(run.cfg.optim.z_loss for run in self.runs)
        self.diag = Diagnostics(
            self.model,
            every=cfg.diag.every,
            per_param=cfg.diag.per_param,
            history=cfg.divergence.history,
            from_init=cfg.diag.from_init,
            attn_rows=cfg.diag.attn_rows,
        )

    def _build_optimizer(self) -> None:
        """Each member's AdamW (run/pack/optim.py: torch's fused kernel on its slice, its own
        settings and gate), its learning rate at every step as one device table (step,
        member), and its clipping threshold."""
        t = self.cfg.train
        optims = [run.cfg.optim for run in self.runs]
        settings = [MemberSettings.of(o) for o in optims]
        fused = self.cfg.optim.fused
        if fused is None:  # torch has fused AdamW kernels for CUDA and (since 2.4) the CPU
            fused = self.device.type in ("cuda", "cpu")
        self.optimizer = MemberAdamW(list(self.model.parameters()), settings, fused=fused)
        for run in self.runs:
            run.lr_of = schedule(run.cfg.optim, t.max_steps)
        table = [[run.lr_of(step) for run in self.runs] for step in range(t.max_steps)]
        self.lrs = torch.tensor(table, dtype=torch.float32, device=self.device)
        clips = [o.grad_clip if o.grad_clip > 0 else math.inf for o in optims]
        self.clips = torch.tensor(clips, dtype=torch.float32, device=self.device)
        self.clipped = any(math.isfinite(c) for c in clips)

    def _profile_init(self, run: Run, model: GPT) -> dict[str, Any] | None:
        """The initialization the placement measures on data (`GPT.profile_init`; None for
        most): at a fresh start on the batch step 1 trains on (the global batch, on every
        rank), drawn from a copy of the training stream so the stream itself is untouched; on
        resume the profile the run started with, never measured again (the measured
        parameters are in the checkpoint's model)."""
        if run.resume is not None:
            return run.resume.get("init_profile")
        c = run.cfg
        first = RandomWindows(self.tokens.train, c.model.context, c.train.batch_size, c.seed)
        x, _ = first.next(self.device)
        return model.profile_init(x)

    def _announce(self) -> None:
        """Each run's first summary values, the W&B config's device and precision, the
        start-up line."""
        device = str(self.device)
        for run in self.runs:
            s = run.summary
            s.update(steps=0, tokens=0, n_params=self.model.num_params(), device=device)
            s.update(self.choice.record())
            run.logger.config_update({"device": device, **self.choice.record()})
            record_vocab(self.tokens.vocab, run.record, run.logger, s)  # data.vocab_limit's
            if run.init_profile is not None:  # e.g. norm.admin_init=profiled
                run.record.write_init_profile(run.init_profile)
                run.logger.config_update({"init_profile": run.init_profile})
                log.info("initialization profiled: %s", run.init_profile["summary"])
            if self.unigram is not None:
                record_unigram(self.unigram, run.logger, s)
        n_params = self.summary.n_params
        log.info(startup_line(self.cfg, n_params, self.device, self.choice, self.tokens))
        if self.members > 1:
            log.info("a pack of %d runs, trained together as one batched model", self.members)

    # --- one step -------------------------------------------------------------------------

    def step(self, step: int) -> StepResult | None:
        """Training step `step` of a run alone (the pack of one): `step_all`'s result."""
        results = self.step_all(step)
        return None if results is None else results[0]

    def flush(self) -> StepResult | None:
        """Finish the pending step of a run alone (`flush_all`)."""
        results = self.flush_all()
        return None if results is None else results[0]

    def step_all(self, step: int) -> list[StepResult | None] | None:
        """Training step `step`: queue its batches, forward and backward pass and statistics;
        finish the step before it (its one host read, each run's detectors); queue this
        step's update, but for the members whose runs that step ended (frozen from then on).
        Returns the earlier step's result per run (None for a run that had ended before it;
        None when no step was pending); `flush_all()` finishes this one. Nothing is logged
        here."""
        launched = self._launch(step)
        results = self.flush_all()
        if results is not None:
            ended = [m for m, r in enumerate(results) if r is not None and r.stopped]
            if ended:
                self._freeze(ended)
            if all(run.status is not None or m in ended for m, run in enumerate(self.runs)):
                return results  # every run has ended: this step's update is never queued
        self._update(launched)
        self.pending = launched
        return results

    def flush_all(self) -> list[StepResult | None] | None:
        """Finish the pending step, if any: read its values and run each run's detectors."""
        if self.pending is None:
            return None
        pending, self.pending = self.pending, None
        return self._finish(pending)

    def _freeze(self, members: list[int]) -> None:
        """No further update for these members (their runs ended)."""
        self.frozen[members] = 1.0

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's batch from its own stream, as (M, B, T) tokens and targets."""
        pairs = [run.batches.next(self.device) for run in self.runs]  # type: ignore[union-attr]
        if len(pairs) == 1:
            x, y = pairs[0][0][None], pairs[0][1][None]
        else:
            x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return x[:, dist.rows()], y[:, dist.rows()]  # this rank's share of the global batch

    def _launch(self, step: int) -> Pending:
        """Queue the batches, the forward and backward pass, the gradients' norms and
        clipping, and the statistics: no host read."""
        chained = self.clock.cuda and self.pending is not None
        start = self.pending.end if chained else self.clock.mark()  # GPU idle counts too
        x, y = self._batch()
        diag = self.diag
        with diag.watch(step):
            loss = forward_backward(self.run, x, y, self.precision, self.z_loss)
        values, ok = self.measure(loss, diag)
        lrs = [run.lr_of(step - 1) for run in self.runs]  # type: ignore[misc]
        return Pending(step, lrs, diag, diag.full, ok, values, start)

    def _measure(self, loss: torch.Tensor, diag: Diagnostics) -> tuple[Values, torch.Tensor]:
        """After the backward pass: each member's gradient norms (before clipping), its
        clipping, its statistics (a row of one array), and whether its update may be
        taken."""
        norms = self.gradients.norms()
        grad_norm = self.gradients.totals(norms)
        diag.on_grads(norms)
        if self.clipped:
            self.gradients.clip_(grad_norm, self.clips)
        values = Values(self.members)
        values.add(["loss", "grad_norm"], torch.stack([loss.float(), grad_norm], dim=1))
        light = diag.light()
        values.add(light.keys, light.values)
        return values, finite(loss, grad_norm)

    def _update(self, pending: Pending) -> None:
        """Queue the update, skipped on the device for a member after a non-finite step
        (and after any later one: `halted` stays set) and for a member whose run ended, the
        rest of the full diagnostics, and the copy of the step's values to the host."""
        extra = self.apply(pending.finite, pending.diag, self.lrs[pending.step - 1])
        pending.values.add(extra.keys, extra.values)
        pending.end = self.clock.mark()
        pending.send(self.buffers)

    def _apply(self, ok: torch.Tensor, diag: Diagnostics, lr: torch.Tensor) -> Values:
        """The gated update and the rest of the full diagnostics around it."""
        self.halted.copy_(torch.maximum(self.halted, (~ok).float()))  # in place: an input
        diag.before_update()
        self.optimizer.step(lr, torch.maximum(self.halted, self.frozen))
        return diag.after_update()

    def _finish(self, pending: Pending) -> list[StepResult | None]:
        """Read a step's values and run each live run's detectors on its row."""
        results: list[StepResult | None] = []
        seconds = self.clock.seconds(pending.start, pending.end)
        for m, (run, row) in enumerate(zip(self.runs, pending.read(), strict=True)):
            if run.status is not None:  # ended before this step: its member is frozen
                results.append(None)
                continue
            loss, grad_norm = row.pop("loss"), row.pop("grad_norm")
            stats: dict[str, Any] = {}
            if row:  # a step that measured the per-layer statistics
                stats = {"step": pending.step, "loss": loss, "grad_norm": grad_norm}
                stats |= {k: v for k, v in row.items() if not k.startswith(FULL_ONLY)}
                pending.diag.push(stats, m)
            assert run.monitor is not None
            events = run.monitor.check(pending.step, loss, grad_norm, stats)
            updated = math.isfinite(loss) and math.isfinite(grad_norm)
            full = {"step": pending.step, **row} if pending.full else None
            result = StepResult(
                pending.step,
                loss,
                grad_norm,
                pending.lr[m] if updated else None,
                stats,
                events,
                stopped=run.monitor.stops(events),
                diag_row=full,
                seconds=seconds,
            )
            results.append(result)
        return results

    def evaluate(self) -> float | None:
        """The validation loss of a run alone (`evaluate_all`)."""
        losses = self.evaluate_all()
        return None if losses is None else losses[0]

    def evaluate_all(self) -> list[float] | None:
        """Each run's validation loss over the whole split; None when a stop request cut it
        short (under torchrun an evaluation is never cut: the ranks must stay in step)."""
        t = self.cfg.train
        cut = None if dist.active() else (lambda: self.stop.requested)
        batch_size = t.eval_batch_size or t.batch_size
        context = self.cfg.model.context
        return evaluate(
            self.run, self.tokens.val, context, batch_size, self.device, self.precision, cut
        )

    # --- the loop -------------------------------------------------------------------------

    def fit(self, checkpointers: Checkpointer | list[Checkpointer | None] | None = None) -> None:
        """Train to `train.max_steps` (or until every run has diverged, or a stop request),
        filling in each run's summary. A run's status becomes `completed`, `collapsed`
        (run/monitor/collapse.py), `diverged` or `interrupted` only at its end; until then an
        interrupted or crashed run still reports how far it got.

        `checkpointers` (run/record/checkpoint.py; one per run, or one for a run alone) are
        asked after every step whether the loop's state is due and save it then and when a
        stop is requested.
        """
        if not isinstance(checkpointers, list):
            checkpointers = [checkpointers] * self.members
        by_run = {id(run): c for run, c in zip(self.all_runs, checkpointers, strict=True)}
        start = self._start()
        self.model.train()
        progress = Progress(self.cfg.train.max_steps, done=start - 1)  # after the lines above
        try:
            with self.stop.installed():
                for step in range(start, self.cfg.train.max_steps + 1):
                    if step == start and all(run.resume is None for run in self.runs):
                        for run in self.runs:
                            run.summary.startup_s = process_age()  # from the command to step 1
                    if self._train_one(step, start, progress, by_run):
                        break
            for run in self.all_runs:
                assert run.monitor is not None
                ended = Status.COLLAPSED if run.monitor.collapsed else Status.COMPLETED
                run.summary.status = run.status or ended
        finally:
            progress.close()
            for run in self.all_runs:
                self._finish_summary(run)

    def _start(self) -> int:
        """The first step to take: 1, or the one after the checkpoint resumed from (whose
        evaluation is redone if a stop had cut it short). The runs of a pack resume from
        checkpoints of the same step."""
        saved = [run.resume for run in self.runs]
        if all(s is None for s in saved):
            return 1
        steps = {-1 if s is None else int(s["step"]) for s in saved}
        if len(steps) != 1:  # run/job.py packs runs by the step they resume from
            raise ValueError(f"the runs of a pack resume from one step (got {sorted(steps)})")
        done = 0
        for m, run in enumerate(self.runs):
            assert run.resume is not None
            done = self.load_state_dict(run.resume, m)
        log.info("resumed after step %d (of %d)", done, self.cfg.train.max_steps)
        if self._eval_due(done) and not all(run.resume["evaluated"] for run in self.runs):  # type: ignore[index]
            self._evaluate_and_log(done)
        return done + 1

    def _train_one(
        self,
        step: int,
        start: int,
        progress: Progress,
        checkpointers: dict[int, Checkpointer | None],
    ) -> bool:
        """Step; log the step it finished; at an evaluation, a checkpoint, a stop request or
        the last step, finish this one too, then evaluate and checkpoint. True when the loop
        ends here (every run ended, or a stop request)."""
        if self._take_all(self.step_all(step), start, progress):
            return True
        if any(run.status is not None for run in self.runs) and self._compact(start, progress):
            return True  # every run ended at this step
        t = self.cfg.train
        stopping = dist.any_rank(self.stop.requested)
        live = [m for m, run in enumerate(self.runs) if run.status is None]
        saving = [
            m
            for m in live
            if (c := checkpointers[id(self.runs[m])]) is not None
            and (c.due(step, t.max_steps) or stopping)
        ]
        if not (stopping or saving or self._eval_due(step)):
            return False  # its values are read during the next step
        if self._take_all(self.flush_all(), start, progress):
            return True
        evaluated = self._eval_due(step) and not stopping and self._evaluate_and_log(step)
        stopping = dist.any_rank(self.stop.requested)
        for m, run in enumerate(self.runs):
            checkpointer = checkpointers[id(run)]
            if run.status is not None or checkpointer is None:
                continue
            if not (stopping or checkpointer.due(step, t.max_steps)):
                continue
            run.summary.tokens = self._tokens(step)
            try:
                checkpointer.save(step, self.state_dict(step, evaluated, m))
            except Exception:
                if self.stop.forced is not None:  # a second signal cut the write short
                    raise self.stop.at_once() from None
                raise
        if stopping:
            log.info("step %d: stopped (%s); checkpoint written", step, self.stop.signal)
            for run in self.runs:
                if run.status is None:
                    run.status = Status.INTERRUPTED
            return True
        return False

    def _take_all(
        self, results: list[StepResult | None] | None, start: int, progress: Progress
    ) -> bool:
        """A finished step of every run; True when every run has ended."""
        if results is None:
            return False
        for run, result in zip(self.runs, results, strict=True):
            if result is not None:
                run.status = self._take(run, result, start, progress)
        return all(run.status is not None for run in self.runs)

    def _take(self, run: Run, result: StepResult, start: int, progress: Progress) -> Status | None:
        """A finished step of one run: its events, its row; `diverged` when a detector
        stopped the run."""
        step = result.step
        for event in result.events:
            self._report(run, event, result.stats)
        if not result.stopped:
            self._log_step(run, result, start, progress)
            return None
        run.summary.steps = step if result.lr is not None else step - 1  # updates taken
        self._log(run, {"step": step, "tokens": self._tokens(step), "train/loss": result.loss})
        run.summary.diag = {k: v for k, v in result.stats.items() if k not in ("loss", "grad_norm")}
        log.info(
            "%sstep %d: stopped (divergence.action=%s)",
            self._who(run),
            step,
            run.cfg.divergence.action,
        )
        return Status.DIVERGED

    def _who(self, run: Run) -> str:
        """How a log line names a run of a pack ('' for a run alone)."""
        if self.members == 1:
            return ""
        o = run.cfg.optim
        m = self.all_runs.index(run) + 1
        return (
            f"[run {m}/{self.members}: lr {o.lr:g}, warmup {o.warmup_steps}, seed {run.cfg.seed}] "
        )

    def _log_step(self, run: Run, result: StepResult, start: int, progress: Progress) -> None:
        """The interval's row at log points, the progress bar, the full diagnostics."""
        loop, step, t = run.loop, result.step, self.cfg.train
        loop.train_time += result.seconds
        loop.interval_time += result.seconds
        loop.interval_losses.append(result.loss)
        run.summary.steps = step
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
            self._log(run, row)
            loop.interval_time, loop.interval_losses = 0.0, []
        if run is self._shown():
            eta = loop.train_time / step * (t.max_steps - step)
            progress.advance(step, row if logged or step == start else None, eta_s=eta)
        if result.diag_row is not None:
            self._log(run, {"step": step, "tokens": self._tokens(step), **result.diag_row})
            run.summary.diag = result.diag_row

    def _compact(self, start: int, progress: Progress) -> bool:
        """Drop the members whose runs ended from the pack: finish the pending step (one
        host read more, once per ended run), then keep only the live members' slices of
        every parameter, buffer, optimizer state, learning rate, gate and diagnostics row,
        so that an ended run costs nothing from here on. True when every run has ended."""
        if self._take_all(self.flush_all(), start, progress):
            return True
        live = [m for m, run in enumerate(self.runs) if run.status is None]
        if len(live) == len(self.runs) or dist.active():  # DDP's buckets keep their shapes
            return False
        index = torch.tensor(live, device=self.device)
        with torch.no_grad():
            for p in self.model.parameters():  # each once: the tied head is the embedding
                p.data, p.grad = p.data.index_select(0, index), None
            for module in self.model.modules():
                if isinstance(module, MemberModule):
                    for name, b in module._buffers.items():
                        if b is not None:
                            module._buffers[name] = b.index_select(0, index)
        self.optimizer.keep(live)
        self.gradients.members = len(live)
        self.diag.keep(live)
        self.lrs = self.lrs.index_select(1, index)
        self.clips, self.halted = self.clips[index], self.halted[index]
        self.frozen = self.frozen[index]
        self.z_loss = tuple(self.z_loss[m] for m in live)
        self.runs = [self.runs[m] for m in live]
        self.members = len(live)
        self.buffers = StepBuffers(self.device)  # arrays of the new number of rows
        log.info("the pack goes on with its %d runs that have not ended", self.members)
        return False

    def _shown(self) -> Run | None:
        """The run whose rows the progress bar shows: the first that has not ended."""
        return next((run for run in self.runs if run.status is None), None)

    def _evaluate_and_log(self, step: int) -> bool:
        """Evaluate and log every live run; False when a stop request cut it short."""
        val_losses = self.evaluate_all()
        if val_losses is None:
            return False
        for m, (run, val_loss) in enumerate(zip(self.runs, val_losses, strict=True)):
            if run.status is not None:
                continue
            ppl = math.exp(val_loss) if val_loss < 700 else math.inf
            row = {"step": step, "tokens": self._tokens(step), "val/loss": val_loss}
            self._log(run, row | {"val/ppl": ppl})
            s = run.summary
            s.val_loss, s.val_ppl = val_loss, ppl
            better = s.best_val_loss is None or val_loss < s.best_val_loss
            if math.isfinite(val_loss) and better:
                s.best_val_loss = val_loss
            log.info(
                "%sstep %d: val/loss %.4f, val/ppl %s",
                self._who(run),
                step,
                val_loss,
                f"{ppl:,.2f}",
            )
            recent = self.diag.recent(m)
            assert run.monitor is not None
            for event in run.monitor.evaluated(step, val_loss):
                self._report(run, event, recent[-1] if recent else {})
        return True

    def _report(self, run: Run, event: Event, stats: dict[str, Any]) -> None:
        """A divergence event: to events.jsonl (with the ring buffer), W&B, the summary."""
        assert run.monitor is not None
        action = "stop" if run.monitor.stops([event]) else "continue"
        entry = event.record(
            tokens=self._tokens(event.step),
            action=action,
            layers=stats,
            history=self.diag.recent(self.runs.index(run)),
        )
        run.record.event(entry)
        run.logger.log({"step": event.step, f"events/{event.kind}": 1})
        s = run.summary
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
        log.info("%sstep %d: divergence event %s", self._who(run), event.step, describe(entry))

    def _log(self, run: Run, row: dict[str, Any]) -> None:
        run.record.log(row)
        run.logger.log(row)

    def _tokens(self, step: int) -> int:
        return step * self.tokens_per_step

    def _eval_due(self, step: int) -> bool:
        return step % self.cfg.train.eval_every == 0 or step == self.cfg.train.max_steps

    def _finish_summary(self, run: Run) -> None:
        s, loop = run.summary, run.loop
        s.tokens = self._tokens(s.steps)
        if loop.train_time > 0 and s.steps > 0:
            s.tokens_per_s = s.steps * self.tokens_per_step / loop.train_time
        s.wall_s = loop.wall_s + time.perf_counter() - self.t_start

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self, step: int, evaluated: bool, member: int = 0) -> dict[str, Any]:
        """Everything the loop needs to continue run `member` after `step`, in a run
        alone's layout (see run/record/checkpoint.py); taken with no step pending (its
        values read)."""
        assert self.pending is None, "a checkpoint with a step still pending"
        run = self.runs[member]
        assert run.batches is not None and run.monitor is not None
        return {
            "step": step,
            "evaluated": evaluated,
            "config": run.config,
            "model": member_state(self.model, member),
            "optimizer": self.optimizer.member_state_dict(member),
            "scheduler": {"last_epoch": step},  # the schedule is a function of the step
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "batches": run.batches.rng.bit_generator.state,
            },
            "monitor": run.monitor.state_dict(),
            "diag": self.diag.state_dict(member),
            "loop": {
                **dataclasses.asdict(run.loop),
                "wall_s": run.loop.wall_s + time.perf_counter() - self.t_start,
            },
            "summary": run.summary.to_dict(),
            "init_profile": run.init_profile,
            "record_rows": run.record.sync(),  # the rows it covers, durable from here on
        }

    def load_state_dict(self, saved: dict[str, Any], member: int = 0) -> int:
        """Continue run `member` from a `state_dict`; returns its step. The device and the
        precision stay those chosen for this process."""
        run = self.runs[member]
        assert run.batches is not None and run.monitor is not None
        checkpoint.load_model(self.model, saved["model"], str(run.cfg.norm.name), member)
        self.optimizer.load_member_state_dict(member, saved["optimizer"])
        torch.set_rng_state(saved["rng"]["torch"])
        if self.device.type == "cuda" and saved["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        run.batches.rng.bit_generator.state = saved["rng"]["batches"]
        run.monitor.load_state_dict(saved["monitor"])
        self.diag.load_state_dict(saved["diag"], member)
        run.loop = LoopState(**saved["loop"])
        fresh = {"device", *self.choice.record()}  # chosen for this process
        kept = {k: v for k, v in saved["summary"].items() if k not in fresh and k in FIELDS}
        run.summary.update(kept)
        return int(saved["step"])
