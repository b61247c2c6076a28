"""The computations the trainer repeats, none of which waits for the device: one batch's loss
and gradients, the gradients' norms and clipping, the finite check that gates the update;
and the validation loss over a split. All in the run's precision (bf16 autocast, or float32).

Nothing here reads a device value on the host (no `.item()`, no `bool(tensor)`): the
training step's values stay on the device until the trainer reads them all at once
(run/trainer.py). A non-finite loss still runs its backward pass (its gradients are then
non-finite too); `finite` says so on the device, and the optimizer's update is skipped there
(run/optim.py `step_unless`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
) -> float | None:
    """Mean next-token cross-entropy over the whole split (every prediction once; under
    torchrun each rank takes every N-th batch and the sums are added up). None when `stop`
    cut it short. One host read, at the end."""
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
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, z_loss: float = 0.0
) -> torch.Tensor:
    """The loss of one batch, after its backward pass (the gradients replace the old ones).

    Returns the loss, detached, on the device (under torchrun the mean over ranks, so that
    every rank gates alike). The backward pass runs whatever the loss: deciding on the host
    would wait for the forward pass. `z_loss`: the coefficient of log(Z)^2 added to the loss
    (optim.z_loss).
    """
    with autocast(x.device, precision):
        _, loss = model(x, y, z_loss=z_loss) if z_loss else model(x, y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return dist.mean(loss.detach())


class Gradients:
    """The gradients of `params`: each one's L2 norm in one fused (foreach) kernel, their
    global norm from those, and clipping that reuses it (no second pass over the gradients,
    as `clip_grad_norm_` would make after the diagnostics' own)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def norms(self) -> torch.Tensor:
        """The float32 vector of each parameter's gradient norm (0 for one without)."""
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        if not present:
            return torch.zeros(len(self.params))
        grads = [self.params[i].grad for i in present]
        norms = torch.stack(torch._foreach_norm(grads)).float()
        if len(present) == len(self.params):
            return norms
        if present not in self._index:  # built once, not copied to the device every step
            self._index[present] = torch.tensor(present, device=norms.device)
        full = torch.zeros(len(self.params), device=norms.device)
        return full.index_copy_(0, self._index[present], norms)

    def clip_(self, total: torch.Tensor, max_norm: float) -> None:
        """Scale the gradients by min(1, max_norm / total) (torch's clip_grad_norm_ rule);
        nothing when max_norm is infinite."""
        if max_norm != float("inf"):
            grads = [p for p in self.params if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(grads, max_norm, total, foreach=True)


def total_norm(norms: torch.Tensor) -> torch.Tensor:
    """The global L2 norm of the gradients from their per-tensor norms."""
    return torch.linalg.vector_norm(norms)


def finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """True (a 0-d bool on the device) when the loss and the global gradient norm are finite."""
    return torch.isfinite(loss) & torch.isfinite(grad_norm)
