"""Optimizer (`optim.*`): AdamW with linear warmup and a decay schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from normbench.run.config.schema import OptimConfig


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


def decay_coefficient(optim: OptimConfig) -> float:
    """The weight decay handed to torch's AdamW, which multiplies the weights by
    1 - lr_t x coefficient at each update (lr_t: the scheduled lr). `coupled`: weight_decay
    itself, so the decay grows with the peak lr; `independent`: weight_decay / optim.lr, so
    that each update decays by weight_decay x lr_t / optim.lr, the schedule's factor alone
    (independent of the peak lr, as in Wortsman et al. 2309.14322)."""
    if str(optim.weight_decay_mode) == "independent":
        return optim.weight_decay / optim.lr
    return optim.weight_decay


def build_optimizer(
    model: nn.Module, optim: OptimConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (linear weights, embeddings), not on norms or biases,
    coupled to the peak lr or independent of it (`optim.weight_decay_mode`).

    `optim.fused` (null: yes where torch has the kernel) picks the fused implementation,
    one pass over each weight instead of several (8x faster on a 2-core CPU for 21M weights).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
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


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor follows `lr_at` (relative to optim.lr)."""
    kwargs = dict(
        lr=optim.lr,
        min_lr=optim.min_lr,
        warmup=optim.warmup_steps,
        max_steps=max_steps,
        schedule=str(optim.schedule),
    )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, **kwargs) / kwargs["lr"]
    )
