"""Optimizer settings (`optim.*`): the learning rate's warmup and decay schedule, weight decay
coupled to the peak lr or independent of it, and a plain AdamW for a one-off step (the
probe's). Training's AdamW, each member's on its slice of a pack's parameters with its
update gated on the device, is run/pack/optim.py's."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from normbench.model.members import shapes_alone
from normbench.run.config.schema import OptimConfig
from normbench.run.pack.optim import decay_coefficient


def lr_at(
    step: int, *, lr: float, min_lr: float, warmup: int, max_steps: int, schedule: str
) -> float:
    """Learning rate of update number `step + 1`, given `step` completed updates (0-based).

    Warmup: linear, lr * (step + 1) / warmup for the first `warmup` updates. Then, with
    progress p = (step - warmup) / (max_steps - warmup) in [0, 1): cosine or linear decay
    from lr towards min_lr (reached at p = 1, just after the last update), constant lr, or
    inverse_sqrt: lr * sqrt(warmup / (step + 1)), floored at min_lr.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "inverse_sqrt":
        return max(min_lr, lr * math.sqrt(max(warmup, 1) / (step + 1)))
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def build_optimizer(
    model: nn.Module, optim: OptimConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (linear weights, embeddings), not on norms or biases,
    coupled to the peak lr or independent of it (`optim.weight_decay_mode`). A parameter's
    shape is judged without its member dimension (model/members.py): a norm's gain (M, d) is
    a vector.

    `optim.fused` (null: yes where torch has the kernel) picks the fused implementation,
    one pass over each weight instead of several (8x faster on a 2-core CPU for 21M weights).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = shapes_alone(model)
    decay = [p for p in params if len(shapes[id(p)]) >= 2]
    no_decay = [p for p in params if len(shapes[id(p)]) < 2]
    groups = [
        {"params": decay, "weight_decay": decay_coefficient(optim)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = optim.fused
    if fused is None:  # torch has fused AdamW kernels for CUDA and (since 2.4) the CPU
        fused = device.type in ("cuda", "cpu") and all(p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused
    )


def schedule(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """The learning rate of update number `step + 1` (`lr_at` with this config's values)."""
    return functools.partial(
        lr_at,
        lr=optim.lr,
        min_lr=optim.min_lr,
        warmup=optim.warmup_steps,
        max_steps=max_steps,
        schedule=str(optim.schedule),
    )
