"""The training loop (`train.*`): AdamW on random windows, full validation, run record.

The loop knows nothing of placements: it builds `GPT.from_config(cfg)` and trains it.
Divergence is a result, not a crash: the detectors of `divergence.*` (normbench/run/divergence.py)
turn it into events, and with `divergence.action=stop` the run ends with status `diverged`,
the step and the detector. The per-layer diagnostics (normbench/run/diag.py) are measured on the
training step itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from normbench.errors import ConfigError
from normbench.model import GPT
from normbench.run import dist, hardware
from normbench.run.data import RandomWindows, TokenSplits, eval_windows
from normbench.run.diag import Diagnostics
from normbench.run.divergence import DivergenceMonitor, Event, describe
from normbench.run.optim import build_optimizer, build_scheduler
from normbench.run.vocab import record_vocab

log = logging.getLogger(__name__)


def tune_cpu_allocator() -> None:
    """Keep freed memory in the process on glibc (Linux) so large tensors are reused.

    The LM head makes a (batch * context, vocab) tensor several times per step; by default
    glibc maps and unmaps each one, and the page faults cost as much as the arithmetic
    (measured: 834 -> 2,349 tokens/s for the default model on a 2-core CPU).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: serve large allocations from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not hand freed memory back at once
    except (OSError, AttributeError):  # not glibc
        pass


def configure_threads(requested: int | None, launcher: Any = None) -> int:
    """Set torch's CPU threads for this job and return how many: `threads`, or by default
    the cores divided among the jobs that run at once under hydra/launcher=joblib (its
    n_jobs; -1 means one job per core), so that parallel jobs do not oversubscribe them."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    if requested is None:
        parallel = 1
        if launcher is not None and "joblib" in str(launcher.get("_target_", "")).lower():
            n = int(launcher.get("n_jobs") or 1)
            parallel = n if n > 0 else max(1, cores + 1 + n)
        requested = max(1, cores // parallel)
    torch.set_num_threads(requested)
    return requested


def check_global_batch(batch_size: int) -> None:
    """Under torchrun, train.batch_size is the global batch: a multiple of the processes."""
    size = dist.world()[1]
    if batch_size % size:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch; it must be a multiple of "
            f"the {size} processes of torchrun"
        )


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def resolve_device(name: str) -> torch.device:
    """This rank's torch device for `device=` (auto: CUDA, else MPS, else the CPU)."""
    return dist.device(hardware.resolve_device(name))


def choose_precision(
    cfg: Any, device: torch.device, resume: dict[str, Any] | None = None
) -> hardware.PrecisionChoice:
    """The precision of this run (normbench/run/hardware.py). A resumed `auto` run keeps the
    precision it started in, so that one run is one experiment; under torchrun rank 0's
    choice holds for every rank."""
    requested = str(cfg.precision.value)
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


def check_data_fits(tokens: TokenSplits, context: int) -> None:
    """Each split must hold at least one full window of `context` inputs plus its target."""
    for split, arr in (("train", tokens.train), ("validation", tokens.val)):
        if len(arr) < context + 1:
            raise ConfigError(
                f"model.context={context} is longer than the {split} split ({len(arr)} tokens); "
                "lower model.context or use more data"
            )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: GPT,
    tokens: Any,
    context: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    stop: Callable[[], bool] | None = None,
) -> float | None:
    """Mean next-token cross-entropy over the whole split (every prediction once; under
    torchrun each rank takes every N-th batch and the sums are added up)."""
    was_training = model.training
    model.eval()
    rank, size = dist.world() if dist.active() else (0, 1)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, predictions
    for i, (x, y) in enumerate(eval_windows(tokens, context, batch_size)):
        if stop is not None and stop():  # a stop request: the evaluation is redone on resume
            model.train(was_training)
            return None
        if i % size != rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            _, loss = model(x, y, reduction="sum")
        sums[0] += loss.double()
        sums[1] += y.numel()
    model.train(was_training)
    loss_sum, count = dist.total(sums).tolist()
    return loss_sum / count


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Feedback from the first step: a tqdm bar on a terminal, plain log lines otherwise.

    The bar advances every step (its rate and ETA shown from the first one) and shows the
    loss and tokens/s of each log point; while it is open every log message and warning is
    written through it (tqdm.write), so that no line breaks the bar. Without a terminal a
    line is logged after the first step of the process and at every log point. A terminal
    that is gone (EIO after a hang-up) turns the bar off; it never stops the run.
    """

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self.bar: tqdm | None = None
        self._redirect = contextlib.ExitStack()
        if sys.stderr.isatty() and dist.is_main():
            self._redirect.enter_context(logging_redirect_tqdm())
            logging.captureWarnings(True)
            self._redirect.callback(logging.captureWarnings, False)
            # A terminal that reports no size (a bare pty, `docker exec -t`) makes tqdm hide
            # the bar (it counts 0 rows); a fixed size then ($COLUMNS x $LINES, or 80 x 24).
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (OSError, ValueError):
                sized = False
            fixed = shutil.get_terminal_size()
            self.bar = tqdm(
                total=total,
                initial=done,
                unit="step",
                dynamic_ncols=sized,
                ncols=None if sized else fixed.columns,
                nrows=None if sized else fixed.lines,
                file=sys.stderr,
            )

    def advance(self, step: int, row: dict[str, Any] | None, eta_s: float) -> None:
        """After every step; `row` (train/loss, lr, grad_norm, tokens_per_s) is shown when
        given (at log points and after the first step of the process)."""
        if self.bar is None:
            if row is not None:
                log.info(
                    "step %d/%d | loss %.4f | lr %.2e | grad %.3f | %s tok/s | eta %s",
                    step,
                    self.total,
                    row["train/loss"],
                    row["lr"],
                    row["grad_norm"],
                    f"{row['tokens_per_s']:,.0f}",
                    _eta(eta_s),
                )
            return
        with _terminal_gone_ok():
            self.bar.update(step - self.bar.n)
            if row is not None:
                loss, tok_s = f"{row['train/loss']:.4f}", f"{row['tokens_per_s']:,.0f}"
                self.bar.set_postfix(loss=loss, tok_s=tok_s, refresh=False)
                self.bar.refresh()

    def close(self) -> None:
        with _terminal_gone_ok():
            if self.bar is not None:
                self.bar.close()
        self._redirect.close()


@contextlib.contextmanager
def _terminal_gone_ok() -> Any:
    """Writing to a terminal that is gone (EIO or EPIPE after a hang-up) is not an error."""
    try:
        yield
    except OSError:
        pass


def startup_line(
    cfg: Any,
    n_params: int,
    device: torch.device,
    precision: str,
    reason: str,
    tokens: TokenSplits,
) -> str:
    """The line printed before the first step: the model, where it runs, in what precision
    and why, and the data."""
    return (
        f"model: {cfg.norm.name.value}-{cfg.norm.kind.value}, depth {cfg.depth}, "
        f"d_model {cfg.model.d_model}, {n_params:,} parameters on {device}, {precision} "
        f"({reason}); data {cfg.data.label}: {len(tokens.train):,} train / "
        f"{len(tokens.val):,} validation tokens"
    )


def forward_backward(
    model: GPT,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    clip: float,
    on_grads: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Loss of one batch and, when it is finite, the gradients (clipped to `clip`).

    Returns the loss and the global gradient norm before clipping (NaN when the loss was
    not finite and no backward pass ran). `on_grads` runs between the backward pass and the
    clipping (the diagnostics read the raw gradients there). The caller decides whether to
    take the step.
    """
    with autocast(x.device, precision):
        _, loss = model(x, y)
    # Under torchrun the mean over ranks, so that every rank takes the same decision.
    loss_value, grad_norm = dist.mean(loss.detach()).item(), math.nan
    if math.isfinite(loss_value):
        model.zero_grad(set_to_none=True)
        loss.backward()
        if on_grads is not None:
            on_grads()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
    return loss_value, grad_norm


class StopRequest:
    """A graceful stop asked for by SIGINT, SIGTERM or SIGHUP (the terminal closed) during
    training.

    The first signal sets `signal` (the loop finishes its step, writes a checkpoint and the
    record, and ends the run as `interrupted`); a second one stops at once (KeyboardInterrupt
    for Ctrl-C, the usual handler's exception for SIGTERM and SIGHUP). A signal that is
    ignored (SIGHUP under nohup) stays ignored.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.forced: int | None = None  # the second signal's number

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def at_once(self) -> BaseException:
        """The exception of a second signal (one that struck inside a library call may have
        come out as that library's error)."""
        if self.forced == 2:  # SIGINT
            return KeyboardInterrupt()
        return SystemExit(128 + (self.forced or 15))

    @contextlib.contextmanager
    def installed(self) -> Any:
        """Handle SIGINT, SIGTERM and SIGHUP this way while training (main thread only)."""
        import signal as signals
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        names = [n for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signals, n)]  # Windows
        previous = {getattr(signals, n): signals.getsignal(getattr(signals, n)) for n in names}
        previous = {s: old for s, old in previous.items() if old != signals.SIG_IGN}

        def handler(signum: int, frame: Any) -> None:
            name = signals.Signals(signum).name
            if self.signal is not None:  # the second signal: stop now
                self.forced = signum
                if signum == signals.SIGINT:
                    raise KeyboardInterrupt
                old = previous[signum]
                if callable(old):
                    old(signum, frame)
                raise SystemExit(128 + signum)
            self.signal = name
            log.warning(
                "%s: stopping after this step with a checkpoint (again to stop at once)", name
            )

        for s in previous:
            signals.signal(s, handler)
        try:
            yield
        finally:
            for s, old in previous.items():
                signals.signal(s, old)


def train(
    cfg: Any,
    tokens: TokenSplits,
    record: Any,
    logger: Any,
    summary: dict[str, Any],
    checkpointer: Any = None,
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Train to `train.max_steps` (or divergence), filling in `summary` for the run record.

    The summary is updated as training goes, so an interrupted or crashed run still reports
    how far it got; its status becomes `completed`, `diverged` or `interrupted` only at the
    end. `checkpointer` (normbench/run/checkpoint.py) is asked after every step whether the
    loop's state is due (every `train.ckpt_every` steps, `train.ckpt_every_min` minutes after
    the last one, at the end) and saves it then and when a stop is requested; `resume` is
    such a state, from which the loop continues exactly as if it had never stopped.
    """
    t_start = time.perf_counter()
    stop = stop or StopRequest()
    device = resolve_device(str(cfg.device.value))
    if device.type == "cpu":
        tune_cpu_allocator()
    choice = choose_precision(cfg, device, resume)
    precision = choice.precision
    if choice.warning and dist.is_main():
        log.warning("precision=bf16: %s", choice.warning)
    context, t = cfg.model.context, cfg.train
    torch.manual_seed(cfg.seed)
    check_global_batch(t.batch_size)
    model = GPT.from_config(cfg).to(device)
    # The module that runs the steps: DDP under torchrun, compiled with train.compile; the
    # diagnostics' hooks and the optimizer see `model` itself.
    run = dist.wrap(model)
    run = torch.compile(run) if t.compile else run
    optimizer = build_optimizer(model, cfg.optim, device)
    scheduler = build_scheduler(optimizer, cfg.optim, t.max_steps)
    batches = RandomWindows(tokens.train, context, t.batch_size, seed=cfg.seed)
    eval_bs = t.eval_batch_size or t.batch_size
    tokens_per_step = t.batch_size * context
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    monitor = DivergenceMonitor(
        cfg.divergence, max_steps=t.max_steps, vocab_size=cfg.model.vocab_size
    )
    diag = Diagnostics(
        model, every=cfg.diag.every, per_param=cfg.diag.per_param, history=cfg.divergence.history
    )
    loop = {"train_time": 0.0, "interval_time": 0.0, "interval_losses": [], "wall_s": 0.0}

    summary.update(steps=0, tokens=0, n_params=model.num_params(), device=str(device))
    summary.update(choice.record())
    logger.config_update({"device": str(device), **choice.record()})
    record_vocab(tokens.vocab, record, logger, summary)  # data.vocab_limit's mapping, if any
    log.info(startup_line(cfg, summary["n_params"], device, precision, choice.reason, tokens))

    def state(step: int, evaluated: bool) -> dict[str, Any]:
        """Everything the loop needs to continue after `step` (see normbench/run/checkpoint.py)."""
        return {
            "step": step,
            "evaluated": evaluated,
            "config": config or {},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "batches": batches.rng.bit_generator.state,
            },
            "monitor": monitor.state_dict(),
            "diag": diag.state_dict(),
            "loop": {**loop, "wall_s": loop["wall_s"] + time.perf_counter() - t_start},
            "summary": dict(summary),
        }

    def restore(saved: dict[str, Any]) -> int:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        batches.rng.bit_generator.state = saved["rng"]["batches"]
        monitor.load_state_dict(saved["monitor"])
        diag.load_state_dict(saved["diag"])
        loop.update(saved["loop"])
        fresh = {"device", *choice.record()}  # chosen for this process, above
        summary.update({k: v for k, v in saved["summary"].items() if k not in fresh})
        return int(saved["step"])

    def run_eval(step: int) -> bool:
        """Evaluate and log; False when a stop request cut the evaluation short."""
        # Under torchrun an evaluation is never cut short: ranks must stay in step.
        cut = None if dist.active() else (lambda: stop.requested)
        val_loss = evaluate(run, tokens.val, context, eval_bs, device, precision, stop=cut)
        if val_loss is None:
            return False
        ppl = math.exp(val_loss) if val_loss < 700 else math.inf
        row = {"step": step, "tokens": step * tokens_per_step, "val/loss": val_loss, "val/ppl": ppl}
        record.log(row)
        logger.log(row)
        summary["val_loss"], summary["val_ppl"] = val_loss, ppl
        if math.isfinite(val_loss) and (
            summary["best_val_loss"] is None or val_loss < summary["best_val_loss"]
        ):
            summary["best_val_loss"] = val_loss
        log.info("step %d: val/loss %.4f, val/ppl %s", step, val_loss, f"{ppl:,.2f}")
        return True

    def report(event: Event, stats: dict[str, Any]) -> None:
        """A divergence event: to events.jsonl (with the ring buffer), W&B, the summary."""
        action = "stop" if monitor.stops([event]) else "continue"
        entry = event.record(
            tokens=event.step * tokens_per_step, action=action, layers=stats, history=diag.recent()
        )
        record.event(entry)
        logger.log({"step": event.step, f"events/{event.kind}": 1})
        if not summary["diverged"]:
            summary.update(
                diverged=True,
                diverged_at_step=event.step,
                divergence_reason=event.kind,
                divergence_detail=event.message,
            )
        summary["events"] += 1
        log.info("step %d: divergence event %s", event.step, describe(entry))

    def interval_row(step: int, lr: float, grad_norm: float) -> dict[str, Any]:
        """The log line of `step`: the mean loss and tokens/s since the previous one."""
        losses = loop["interval_losses"]
        return {
            "step": step,
            "tokens": step * tokens_per_step,
            "train/loss": sum(losses) / len(losses),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": len(losses) * tokens_per_step / loop["interval_time"],
        }

    def eval_due(step: int) -> bool:
        return step % t.eval_every == 0 or step == t.max_steps

    start, status = 1, None
    if resume is not None:
        done = restore(resume)
        log.info("resumed after step %d (of %d)", done, t.max_steps)
        start = done + 1
        if eval_due(done) and not resume["evaluated"]:
            run_eval(done)
    model.train()
    progress = Progress(t.max_steps, done=start - 1)  # after every line printed before it
    try:
        with stop.installed():
            for step in range(start, t.max_steps + 1):
                if step == start and resume is None:
                    summary["startup_s"] = process_age()  # from the command to step 1
                tic = time.perf_counter()
                x, y = batches.next(device)
                x, y = x[dist.rows()], y[dist.rows()]  # this rank's share of the global batch
                with diag.watch(step):
                    loss_value, grad_norm = forward_backward(
                        run, x, y, precision, clip, on_grads=diag.on_grads
                    )
                stats = diag.step_stats(loss_value, grad_norm)
                events = monitor.check(step, loss_value, grad_norm)
                for event in events:
                    report(event, stats)
                if monitor.stops(events):  # before the update: the weights stay as they were
                    row = {"step": step, "tokens": step * tokens_per_step, "train/loss": loss_value}
                    record.log(row)
                    logger.log(row)
                    summary["diag"] = {
                        k: v for k, v in stats.items() if k not in ("loss", "grad_norm")
                    }
                    log.info("step %d: stopped (divergence.action=%s)", step, cfg.divergence.action)
                    status = "diverged"
                    break
                lr = scheduler.get_last_lr()[0]
                diag.before_update()
                optimizer.step()
                scheduler.step()
                diag_row = diag.after_update(stats)
                hardware.synchronize(device.type)
                elapsed = time.perf_counter() - tic
                loop["train_time"] += elapsed
                loop["interval_time"] += elapsed
                loop["interval_losses"].append(loss_value)
                summary["steps"] = step
                logged = step % t.log_every == 0 or step == t.max_steps
                row = interval_row(step, lr, grad_norm)
                if logged:
                    record.log(row)
                    logger.log(row)
                    loop["interval_time"], loop["interval_losses"] = 0.0, []
                eta = loop["train_time"] / step * (t.max_steps - step)
                progress.advance(step, row if logged or step == start else None, eta_s=eta)
                if diag_row is not None:
                    row = {"step": step, "tokens": step * tokens_per_step, **diag_row}
                    record.log(row)
                    logger.log(row)
                    summary["diag"] = diag_row
                stopping = dist.any_rank(stop.requested)
                evaluated = eval_due(step) and not stopping and run_eval(step)
                stopping = dist.any_rank(stop.requested)
                if checkpointer is not None and (checkpointer.due(step, t.max_steps) or stopping):
                    summary["tokens"] = step * tokens_per_step
                    try:
                        checkpointer.save(step, state(step, evaluated))
                    except Exception:
                        if stop.forced is not None:  # a second signal cut the write short
                            raise stop.at_once() from None
                        raise
                if stopping:
                    status = "interrupted"
                    log.info("step %d: stopped (%s); checkpoint written", step, stop.signal)
                    break
        summary["status"] = status or "completed"
    finally:
        progress.close()
        summary["tokens"] = summary["steps"] * tokens_per_step
        if loop["train_time"] > 0 and summary["steps"] > 0:
            summary["tokens_per_s"] = summary["steps"] * tokens_per_step / loop["train_time"]
        summary["wall_s"] = loop["wall_s"] + time.perf_counter() - t_start
