"""The computations the trainer repeats, none of which waits for the device: one batch's loss
and gradients, the finite check that gates the update (the gradients' norms and clipping
per member: run/pack/grads.py); and the validation loss over a split. All in the run's
precision (bf16 autocast, or float32).

Nothing here reads a device value on the host (no `.item()`, no `bool(tensor)`): the
training step's values stay on the device until the trainer reads them all at once
(run/trainer.py). A non-finite loss still runs its backward pass (its gradients are then
non-finite too); `finite` says so on the device, and the optimizer's update is skipped there
(run/pack/optim.py, fused AdamW's gate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

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
) -> list[float] | None:
    """Each member's mean next-token cross-entropy over the whole split (every prediction
    once, the same tokens for every member; under torchrun each rank takes every N-th batch
    and the sums are added up). None when `stop` cut it short. One host read, at the end."""
    was_training = model.training
    model.eval()
    rank, size = dist.world() if dist.active() else (0, 1)
    members = getattr(model, "module", model).members  # under torchrun: DDP's module
    sums = torch.zeros(members + 1, dtype=torch.float64, device=device)  # losses, predictions
    for i, (x, y) in enumerate(eval_windows(tokens, context, batch_size)):
        if stop is not None and stop():  # a stop request: the evaluation is redone on resume
            model.train(was_training)
            return None
        if i % size != rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            _, loss = model(x, y, reduction="sum")
        sums[:members] += loss.double()
        sums[members] += y.numel()
    model.train(was_training)
    *loss_sums, count = dist.total(sums).tolist()
    return [loss_sum / count for loss_sum in loss_sums]


def forward_backward(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    z_loss: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """The loss of one batch, after its backward pass (the gradients replace the old ones):
    for a pack, tokens (M, B, T) and a loss per member, (M,), whose sum is differentiated
    (each member's gradients are its own loss's: members share no parameter).

    Returns the loss, detached, on the device (under torchrun the mean over ranks, so that
    every rank gates alike). The backward pass runs whatever the loss: deciding on the host
    would wait for the forward pass. `z_loss`: the coefficient of log(Z)^2 added to the loss
    (optim.z_loss), one for all or one per member.
    """
    with autocast(x.device, precision):
        _, loss = model(x, y, z_loss=z_loss) if any_z(z_loss) else model(x, y)
    model.zero_grad(set_to_none=True)
    loss.sum().backward()
    return dist.mean(loss.detach())


def any_z(z_loss: float | Sequence[float]) -> bool:
    """Whether any member has a z-loss."""
    return any(z_loss) if isinstance(z_loss, Sequence) else bool(z_loss)


def finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """True (a 0-d bool on the device) when the loss and the global gradient norm are finite."""
    return torch.isfinite(loss) & torch.isfinite(grad_norm)
