"""Divergence detectors (`divergence.*`): when a run fails, as events with their evidence.

Each detector watches one signal of the training loop and fires an `Event` with the measured
value and the threshold it crossed:

- `nonfinite`: the loss or the global gradient norm is NaN or infinite. Always stops the
  run: no update can be taken from a non-finite gradient.
- `spike`: the training loss stays above a running reference (an exponential moving average
  of the loss over the steps that were not flagged) by `rel_margin * ref` or by `abs_margin`
  (whichever is crossed first) for `patience` consecutive steps.
- `grad_explosion`: the global gradient norm (before clipping) stays above `factor` times its
  running median over the last `window` steps for `patience` consecutive steps.
- `stagnation`: from step max(`after` x train.max_steps, `min_steps`) on, the mean loss of
  the last `window` steps is still within `rel` of ln(vocab), the loss of a uniform guess:
  the model has not started to learn (fires once).
- `attention_logit_growth`: the largest attention logit of any layer (run/monitor/diag.py's
  `attn_logit_max/...`) stays above `threshold` for `patience` consecutive measured steps:
  the instability of Wortsman et al. 2309.14322 (Sec. 3.1), which qk-layernorm prevents.
- `output_logit_drift`: the mean log Z of the output logits (`logits/logz_mean`) stays more
  than `threshold` nats from its value at the first measured step for `patience` measured
  steps: their output-logit divergence (Sec. 3.2), which the z-loss prevents.

The last two read the per-layer statistics, measured on every step while
`divergence.history` > 0 (else every `diag.every` steps).
- `collapse` (run/monitor/collapse.py): well into training, the validation and training losses
  still at the level of the unigram predictor of the training split's counts. Never stops
  a run; a run it holds for at its last evaluation ends with status `collapsed`.

`divergence.action=stop` ends the run at the first event (status `diverged`);
`continue` records every event and trains on. A detector that fired re-arms once its signal
is back below the threshold (`spike` takes the current loss as its new reference), so one
episode gives one event. The run's objective for sweepers (`objective`) ranks a collapsed run
after every completed one, and a diverged run after those.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from normbench.run.config.schema import DivergenceConfig
from normbench.run.monitor.collapse import CollapseDetector
from normbench.run.monitor.diag import blame
from normbench.run.record.summary import Status, Summary

DETECTORS = (
    "nonfinite",
    "spike",
    "grad_explosion",
    "stagnation",
    "collapse",
    "attention_logit_growth",
    "output_logit_drift",
)


@dataclass
class Event:
    """One divergence event: what fired, at which step, the value and the threshold."""

    step: int
    kind: str  # one of DETECTORS
    value: float | None  # the measured quantity (None: not a number)
    threshold: float | None  # what it was compared with (None for `nonfinite`)
    message: str  # one readable line, e.g. "loss 9.1 > 6.2 (ema 4.8 + 30%) for 5 steps"
    detail: dict[str, Any] = field(default_factory=dict)

    def record(
        self, *, tokens: int, action: str, layers: dict[str, Any], history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The line of events.jsonl: the event, the per-layer statistics at its step
        (`layers`), the ring buffer of the steps before it (`history`, its step last) and
        which layer went first (`blame`)."""
        return {
            "step": self.step,
            "tokens": tokens,
            "kind": self.kind,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "action": action,
            **self.detail,
            "blame": blame(history),
            "layers": layers,
            "history": history,
        }


def describe(record: dict[str, Any]) -> str:
    """One line for the console: the detector, what it measured, and the layer to look at."""
    line = f"{record['kind']}: {record['message']}"
    culprit = record["blame"]
    if record["kind"] in ("stagnation", "collapse"):  # nothing blew up: no layer to name
        return line
    if culprit["first_nonfinite"]:
        return f"{line}; first non-finite: {culprit['first_nonfinite']['key']}"
    if culprit["largest_growth"]:
        top = culprit["largest_growth"][0]
        return f"{line}; largest growth: {top['key']} x{top['ratio']:.3g}"
    return line


class _Stateful:
    """The mutable fields of a detector (`STATE`) as plain values, for checkpoints."""

    STATE: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, deque) else v
            for k, v in vars(self).items()
            if k in self.STATE
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.STATE:
            current = getattr(self, key)
            if isinstance(current, deque):
                current.clear()
                current.extend(state[key])
            else:
                setattr(self, key, state[key])


class SpikeDetector(_Stateful):
    """Loss above an EMA reference by a relative or absolute margin for `patience` steps."""

    STATE = ("ref", "count")

    def __init__(
        self, rel_margin: float | None, abs_margin: float | None, patience: int, ema: float
    ):
        self.rel, self.abs, self.patience, self.decay = rel_margin, abs_margin, patience, ema
        self.ref: float | None = None
        self.count = 0

    def threshold(self) -> float:
        assert self.ref is not None
        margins = [] if self.rel is None else [self.rel * abs(self.ref)]
        margins += [] if self.abs is None else [self.abs]
        return self.ref + min(margins)

    def update(self, step: int, loss: float) -> Event | None:
        if self.ref is None:
            self.ref = loss
            return None
        limit = self.threshold()
        if loss <= limit:
            self.count = 0
            self.ref = self.decay * self.ref + (1 - self.decay) * loss
            return None
        self.count += 1
        if self.count < self.patience:
            return None
        ref, self.ref, self.count = self.ref, loss, 0  # the new level is the next reference
        return Event(
            step,
            "spike",
            loss,
            limit,
            f"loss {loss:.4g} > {limit:.4g} (reference {ref:.4g}) for {self.patience} steps",
            {"reference": ref, "patience": self.patience},
        )


class GradExplosionDetector(_Stateful):
    """Gradient norm above `factor` x its running median for `patience` consecutive steps."""

    STATE = ("history", "count")

    def __init__(self, factor: float, window: int, min_steps: int, patience: int):
        self.factor, self.min_steps, self.patience = factor, min_steps, patience
        self.history: deque[float] = deque(maxlen=window)
        self.count = 0

    def update(self, step: int, grad_norm: float) -> Event | None:
        if len(self.history) < self.min_steps:
            self.history.append(grad_norm)
            return None
        med = median(self.history)
        limit = self.factor * med
        self.history.append(grad_norm)
        if grad_norm <= limit:
            self.count = 0
            return None
        self.count += 1
        if self.count != self.patience:  # fire once per episode, at the patience-th step
            return None
        return Event(
            step,
            "grad_explosion",
            grad_norm,
            limit,
            f"gradient norm {grad_norm:.4g} > {self.factor:g} x running median {med:.4g} "
            f"for {self.patience} steps",
            {"median": med, "factor": self.factor, "patience": self.patience},
        )


class StagnationDetector(_Stateful):
    """From step max(after x max_steps, min_steps) on, the mean loss of the last `window`
    steps still within `rel` of ln(vocab)."""

    STATE = ("losses", "fired")

    def __init__(
        self, rel: float, after: float, min_steps: int, window: int, max_steps: int, vocab: int
    ):
        self.start = max(1, min_steps, math.ceil(after * max_steps))
        self.uniform = math.log(vocab)
        self.rel, self.limit = rel, (1 - rel) * self.uniform
        self.losses: deque[float] = deque(maxlen=window)
        self.fired = False

    def update(self, step: int, loss: float) -> Event | None:
        self.losses.append(loss)
        if self.fired or step < self.start:
            return None
        mean = sum(self.losses) / len(self.losses)
        if mean < self.limit:
            return None
        self.fired = True
        return Event(
            step,
            "stagnation",
            mean,
            self.limit,
            f"mean loss {mean:.4g} of the last {len(self.losses)} steps is within "
            f"{self.rel:.0%} of ln(vocab) = {self.uniform:.4g} after {step} steps",
            {"ln_vocab": self.uniform},
        )


class ThresholdDetector(_Stateful):
    """A statistic of the measured steps (`measure`) above `threshold` for `patience`
    consecutive of them, once per episode; subclasses say what is measured."""

    kind: str
    STATE = ("count",)

    def __init__(self, threshold: float, patience: int):
        self.limit, self.patience, self.count = threshold, patience, 0

    def measure(self, stats: dict[str, Any]) -> tuple[float, dict[str, Any], str] | None:
        """The watched value of a step's statistics, its evidence and a description of it
        (None: this step measured nothing)."""
        raise NotImplementedError

    def update(self, step: int, stats: dict[str, Any]) -> Event | None:
        measured = self.measure(stats)
        if measured is None:
            return None
        value, evidence, what = measured
        if not value > self.limit:  # NaN: the `nonfinite` detector's
            self.count = 0
            return None
        self.count += 1
        if self.count != self.patience:
            return None
        message = f"{what} > {self.limit:g} for {self.patience} measured steps"
        return Event(step, self.kind, value, self.limit, message, evidence)


class AttentionLogitGrowth(ThresholdDetector):
    """The largest `attn_logit_max/<layer>` of a step."""

    kind = "attention_logit_growth"

    def measure(self, stats: dict[str, Any]) -> tuple[float, dict[str, Any], str] | None:
        layers = {k: v for k, v in stats.items() if k.startswith("attn_logit_max/")}
        if not layers:
            return None
        key = max(layers, key=lambda k: layers[k])
        layer = key.split("/", 1)[1]
        return layers[key], {"layer": layer}, f"largest attention logit {layers[key]:.4g} ({layer})"


class OutputLogitDrift(ThresholdDetector):
    """|logits/logz_mean - its value at the first measured step|."""

    kind = "output_logit_drift"
    STATE = ("count", "reference")

    def __init__(self, threshold: float, patience: int):
        super().__init__(threshold, patience)
        self.reference: float | None = None

    def measure(self, stats: dict[str, Any]) -> tuple[float, dict[str, Any], str] | None:
        if (log_z := stats.get("logits/logz_mean")) is None:
            return None
        if self.reference is None:
            self.reference = log_z
        drift = abs(log_z - self.reference)
        what = (
            f"mean log Z {log_z:.4g} is {drift:.4g} nats from its first value {self.reference:.4g}"
        )
        return drift, {"logz_mean": log_z, "reference": self.reference}, what


class DivergenceMonitor:
    """All detectors of `divergence.*`; `check` returns the events of one training step."""

    def __init__(
        self,
        cfg: DivergenceConfig,
        *,
        max_steps: int,
        vocab_size: int,
        unigram: dict[str, Any] | None = None,  # run/monitor/collapse.py's reference (collapse)
    ):
        self.stop_on_event = str(cfg.action) == "stop"
        c = cfg.collapse
        self.collapse = (  # needs the unigram reference (a benchmark has none)
            CollapseDetector(c.margin, c.after, c.min_steps, c.window, max_steps, unigram)
            if c.enabled and unigram is not None
            else None
        )
        s, g, st = cfg.spike, cfg.grad_explosion, cfg.stagnation
        self.spike = (
            SpikeDetector(s.rel_margin, s.abs_margin, s.patience, s.ema) if s.enabled else None
        )
        self.grad = (
            GradExplosionDetector(g.factor, g.window, g.min_steps, g.patience)
            if g.enabled
            else None
        )
        self.stagnation = (
            StagnationDetector(st.rel, st.after, st.min_steps, st.window, max_steps, vocab_size)
            if st.enabled
            else None
        )
        self.thresholds: dict[str, ThresholdDetector] = {
            d.kind: d(c.threshold, c.patience)
            for d, c in (
                (AttentionLogitGrowth, cfg.attention_logit_growth),
                (OutputLogitDrift, cfg.output_logit_drift),
            )
            if c.enabled
        }

    def check(
        self, step: int, loss: float, grad_norm: float, stats: dict[str, Any] | None = None
    ) -> list[Event]:
        """The events fired by this step's loss, gradient norm and per-layer statistics
        (`stats`, run/monitor/diag.py's; empty on steps that measure none), before the update.

        A non-finite loss or gradient norm is always an event (`nonfinite`, not
        configurable): no update can be taken from it. The other detectors skip that step.
        """
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            value = loss if not math.isfinite(loss) else grad_norm
            return [Event(step, "nonfinite", None, None, f"non-finite {what} ({value})")]
        events = []
        if self.spike is not None and (event := self.spike.update(step, loss)):
            events.append(event)
        if self.grad is not None and (event := self.grad.update(step, grad_norm)):
            events.append(event)
        if self.stagnation is not None and (event := self.stagnation.update(step, loss)):
            events.append(event)
        for detector in self.thresholds.values():
            if event := detector.update(step, stats or {}):
                events.append(event)
        if self.collapse is not None:
            self.collapse.update(step, loss)
        return events

    def evaluated(self, step: int, val_loss: float) -> list[Event]:
        """The events fired by the validation loss at `step` (`collapse`)."""
        found = self.collapse.evaluated(step, val_loss) if self.collapse is not None else None
        return [Event(**found)] if found is not None else []

    @property
    def collapsed(self) -> bool:
        """Whether `collapse` held at the last evaluation (the run's outcome at its end)."""
        return self.collapse is not None and self.collapse.holds

    def detectors(self) -> dict[str, Any]:
        found = {"spike": self.spike, "grad_explosion": self.grad, "stagnation": self.stagnation}
        found["collapse"] = self.collapse
        return {name: d for name, d in found.items() if d is not None} | self.thresholds

    def state_dict(self) -> dict[str, Any]:
        return {name: d.state_dict() for name, d in self.detectors().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, d in self.detectors().items():
            if name in state:
                d.load_state_dict(state[name])

    def stops(self, events: list[Event]) -> bool:
        """Whether these events end the run (a non-finite step always does, `collapse` never)."""
        stopping = [e for e in events if e.kind != "collapse"]
        return any(e.kind == "nonfinite" for e in events) or (self.stop_on_event and bool(stopping))


def objective(summary: Summary, max_steps: int, penalty: float) -> float:
    """The value a sweeper minimizes: the best validation loss of a completed run, capped at
    `penalty`; a collapsed run gets `penalty`, after every completed run (its losses measure
    the token frequencies, not its settings); a diverged or unfinished run gets
    penalty + 1 - (its fraction of the steps), so it ranks after every completed run, and
    later divergence ranks before earlier."""
    best = summary.best_val_loss
    if summary.status == Status.COMPLETED and best is not None and math.isfinite(best):
        return min(best, penalty)
    if summary.status == Status.COLLAPSED:
        return penalty
    done = (summary.steps or 0) / max(1, max_steps)
    return penalty + 1.0 - done
