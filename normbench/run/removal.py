"""Layer removal at the end of training (`diag.layer_removal`; Sun et al. 2025, 2502.05795,
"The curse of depth"): the validation loss of the trained model with each block removed in
turn, its input passed on unchanged (x_{l+1} = x_l: `GPT.without`), against the full
model's. A block whose removal costs little contributes little to the trained model.

summary.json's `layer_removal` is {"full": loss, "block_01": loss without block 1, ...}
(the per-block keys of the diagnostics, run/monitor/diag.py's `block_names`); the log (metrics.jsonl
and W&B) gets one row of the same losses as `removal/full`, `removal/block_01`, ....

Every loss, `full` included, is measured here by the uncompiled model on the batches of every
evaluation (run/steps.py's `evaluate`: the whole held-out split, in the run's precision), so
that each difference compares like with like. It costs depth + 1 evaluations. A run that
diverged, or stopped before its final evaluation, is not measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from normbench.model.gpt import GPT
from normbench.run.monitor.diag import block_names
from normbench.run.steps import evaluate

if TYPE_CHECKING:
    from normbench.run.trainer import Trainer

log = logging.getLogger(__name__)


def removal_losses(model: GPT, loss_of: Callable[[GPT], float]) -> dict[str, float]:
    """{"full": loss_of(model), "block_01": loss_of(model without block 1), ...}."""
    losses = {"full": loss_of(model)}
    for layer, name in enumerate(block_names(model.depth), start=1):
        with model.without(layer):
            losses[name] = loss_of(model)
    return losses


def measure_layer_removal(trainer: Trainer) -> dict[str, float] | None:
    """After `trainer.fit()`: with `diag.layer_removal`, the losses of `removal_losses` for
    a run that trained to its last step, into the summary and the log (None otherwise)."""
    cfg, summary = trainer.cfg, trainer.summary
    if not cfg.diag.layer_removal or not summary.status.trained or summary.val_loss is None:
        return None
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size

    def loss_of(model: GPT) -> float:
        val = trainer.tokens.val
        losses = evaluate(
            model, val, cfg.model.context, batch_size, trainer.device, trainer.precision
        )
        assert losses is not None  # no stop callback: never cut short
        return losses[0]  # a run alone: the pack of one

    losses = removal_losses(trainer.model, loss_of)
    summary.layer_removal = losses
    row = {"step": summary.steps, "tokens": summary.tokens}
    row |= {f"removal/{name}": loss for name, loss in losses.items()}
    trainer.record.log(row)
    trainer.logger.log(row)
    costs = ", ".join(
        f"{k[6:]} {v - losses['full']:+.3f}" for k, v in losses.items() if k != "full"
    )
    log.info("layer removal: val/loss %.4f; without block %s", losses["full"], costs)
    return losses
