"""The computations the trainer repeats: one batch's loss and gradients, and the validation
loss over a split, in the run's precision (bf16 autocast, or float32)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from normbench.model.gpt import GPT
from normbench.run import dist
from normbench.run.data.batches import eval_windows


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
    torchrun each rank takes every N-th batch and the sums are added up). None when `stop`
    cut it short."""
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


def forward_backward(
    model: GPT,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    clip: float,
    on_grads: Callable[[], None] | None = None,
    z_loss: float = 0.0,
) -> tuple[float, float]:
    """Loss of one batch and, when it is finite, the gradients (clipped to `clip`).

    Returns the loss and the global gradient norm before clipping (NaN when the loss was
    not finite and no backward pass ran). `on_grads` runs between the backward pass and the
    clipping (the diagnostics read the raw gradients there). The caller decides whether to
    take the step. `z_loss`: the coefficient of log(Z)^2 added to the loss (optim.z_loss).
    """
    with autocast(x.device, precision):
        _, loss = model(x, y, z_loss=z_loss) if z_loss else model(x, y)
    # Under torchrun the mean over ranks, so that every rank takes the same decision.
    loss_value, grad_norm = dist.mean(loss.detach()).item(), math.nan
    if math.isfinite(loss_value):
        model.zero_grad(set_to_none=True)
        loss.backward()
        if on_grads is not None:
            on_grads()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
    return loss_value, grad_norm
