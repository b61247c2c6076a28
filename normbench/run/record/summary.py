"""`summary.json`: the one schema of a run's outcome.

The trainer fills it in as training goes (so an interrupted or crashed run still says how far
it got), the job adds what only it knows (the W&B run, the objective, why it stopped), and
the record writes it. Readers (compare, claims, a resume) read it back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# `collapsed`: trained to the end, but still at the loss of the unigram predictor
# (run/monitor/collapse.py); like `completed` and `diverged` a finished run, unlike `completed` not a
# healthy one.
STATUSES = ("completed", "collapsed", "diverged", "interrupted", "failed")
FINISHED = ("completed", "collapsed", "diverged")  # a resume leaves these runs alone
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
    status: str = "failed"  # one of STATUSES ("failed" until training ends)
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
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content: every field, those of OPTIONAL only when set."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if k not in OPTIONAL or v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Summary:
        """A summary read back (keys it does not know, from an older version, are left out)."""
        return cls(**{k: v for k, v in values.items() if k in FIELDS})


FIELDS = tuple(f.name for f in dataclasses.fields(Summary))
