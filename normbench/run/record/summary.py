"""`summary.json`: the one schema of a run's outcome.

The trainer fills it in as training goes (so an interrupted or crashed run still says how far
it got), the job adds what only it knows (the W&B run, the objective, why it stopped), and
the record writes it. Readers (compare, claims, a resume) read it back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """How a run ended: the one definition of every status, what each implies and how the
    reports show it. The value is what summary.json holds (`str(status)` prints it)."""

    COMPLETED = "completed"  # trained to train.max_steps
    # trained to the end, but still at the loss of the unigram predictor (run/monitor/collapse.py)
    COLLAPSED = "collapsed"
    DIVERGED = "diverged"  # a divergence detector stopped it (divergence.action=stop)
    INTERRUPTED = "interrupted"  # a signal stopped it after a checkpoint; the command resumes it
    FAILED = "failed"  # an error stopped it (summary.json's `error`); the status until the end

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """A result, the run's last word: a resume leaves the run alone, and an LR-sensitivity
        study counts it (completed, collapsed, diverged)."""
        return self in (Status.COMPLETED, Status.COLLAPSED, Status.DIVERGED)

    @property
    def trained(self) -> bool:
        """Trained to its last step (completed or collapsed): its final model can be measured."""
        return self in (Status.COMPLETED, Status.COLLAPSED)

    @property
    def failure(self) -> bool:
        """An observed failure to train (diverged or collapsed): wherever a claim says
        "diverges", a failed seed; never a loss in a mean."""
        return self in (Status.DIVERGED, Status.COLLAPSED)

    @property
    def unfinished(self) -> bool:
        """Stopped before a result (interrupted or failed): the W&B run is marked failed and
        summary.json holds the command that continues it."""
        return not self.finished

    @property
    def marker(self) -> str | None:
        """How a figure marks a run of this status (matplotlib's marker), None: unmarked."""
        return {Status.DIVERGED: "x", Status.COLLAPSED: "o"}.get(self)


# Written only when set: why a run stopped early, the error of one that failed, the command
# that continues either, the collapse event of one that met it (run/monitor/collapse.py), and the layer-removal losses
# (diag.layer_removal, run/removal.py).
OPTIONAL = (
    "stopped_by",
    "error",
    "resume_command",
    "collapsed_at_step",
    "collapse_detail",
    "layer_removal",
)


@dataclass
class Summary:
    status: Status = Status.FAILED  # FAILED until training ends
    steps: int | None = None  # training steps taken
    tokens: int | None = None  # training tokens seen (steps x batch x context)
    val_loss: float | None = None  # the last validation loss (nats per token)
    best_val_loss: float | None = None
    val_ppl: float | None = None
    tokens_per_s: float | None = None  # over the training steps alone
    wall_s: float | None = None  # the whole run, resumed parts included
    n_params: int | None = None
    diverged: bool = False
    diverged_at_step: int | None = None  # the first divergence event's step
    divergence_reason: str | None = None  # its detector
    divergence_detail: str | None = None
    events: int = 0  # divergence events recorded
    collapsed_at_step: int | None = None  # the collapse event's step (the run may have left)
    collapse_detail: str | None = None  # its message
    unigram: dict[str, Any] | None = (
        None  # the unigram predictor's losses (run/monitor/collapse.py)
    )
    objective: float | None = None  # what sweepers minimize (normbench/run/monitor/divergence.py)
    threads: int | None = None  # torch CPU threads
    device: str | None = None
    precision: str | None = None  # fp32 | bf16, as chosen (normbench/run/hardware.py)
    precision_reason: str | None = None
    bf16_speedup: float | None = None
    startup_s: float | None = None  # from the command to the first training step
    diag: dict[str, Any] = field(default_factory=dict)  # the last per-layer diagnostics
    layer_removal: dict[str, float] | None = None  # val loss without each block (removal.py)
    vocab: dict[str, Any] | None = None  # data.vocab_limit's mapping, in brief
    wandb: dict[str, Any] | None = None  # the W&B run (id, project, group, url)
    stopped_by: str | None = None  # the signal that stopped an interrupted run
    error: str | None = None  # what made a failed run fail
    resume_command: str | None = None  # an interrupted or failed run: what continues it

    def update(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        """Set several fields at once; an unknown name is an error (a typo, not a new key)."""
        for key, value in {**(values or {}), **more}.items():
            if key not in FIELDS:
                raise KeyError(f"summary.json has no field {key!r}")
            setattr(self, key, Status(value) if key == "status" else value)

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content: every field, those of OPTIONAL only when set."""
        out = {**dataclasses.asdict(self), "status": self.status.value}
        return {k: v for k, v in out.items() if k not in OPTIONAL or v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Summary:
        """A summary read back (keys it does not know, from an older version, are left out)."""
        known = {k: v for k, v in values.items() if k in FIELDS}
        if "status" in known:
            known["status"] = Status(known["status"])
        return cls(**known)


FIELDS = tuple(f.name for f in dataclasses.fields(Summary))
