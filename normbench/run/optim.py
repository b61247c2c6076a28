"""Optimizer (`optim.*`): AdamW with linear warmup and a decay schedule, its learning rate a
device tensor and its update gated on the device."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from normbench.model.members import shapes_alone
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


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor follows `lr_at` (relative to optim.lr)."""
    lr_of, peak = schedule(optim, max_steps), float(optim.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_of(step) / peak)


def fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer runs torch's fused kernels (which take a tensor lr and a gate)."""
    return bool(optimizer.param_groups[0].get("fused"))


def lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make each group's learning rate a float32 tensor on `device` (fused AdamW only): the
    scheduler then fills it in place (no host value baked into a compiled optimizer step, no
    recompilation when it changes). Called after building and after loading a state, whose
    learning rates are plain numbers or tensors on another device."""
    if not fused(optimizer):  # torch's unfused kernels take a tensor lr only when capturable
        return
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()`, skipped where `skip` (a 0-d float32 tensor on the device, 1 or 0)
    is 1, decided on the device: fused AdamW's `found_inf`, the gate torch's GradScaler uses;
    when it is 1 the weights, both moments and the step count stay bit-identical. torch's
    unfused kernels have no such gate: there `skip` is read on the host (one host read more
    per step, only with optim.fused=false or where no fused kernel exists)."""
    if fused(optimizer):
        optimizer.found_inf = skip  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif not bool(skip):
        optimizer.step()


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters in the numbering of the optimizer's state dict."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_alone(optimizer: torch.optim.Optimizer) -> dict:
    """The state dict of a run alone's optimizer with each moment in its parameter's shape in
    a plain GPT (the member dimension of one dropped), as the model's own state dict: the
    layout of a run's checkpoint."""
    state = optimizer.state_dict()
    state["state"] = {
        n: {k: v[0] if k != "step" and torch.is_tensor(v) and v.dim() else v for k, v in s.items()}
        for n, s in state["state"].items()
    }
    return state


def load_state_alone(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state dict in a run's layout (`state_alone`), or in the optimizer's own."""
    params = _params(optimizer)
    state = {**state, "state": dict(state["state"])}
    for n, s in state["state"].items():
        shape = params[int(n)].shape
        state["state"][n] = {
            k: v.unsqueeze(0) if torch.is_tensor(v) and v.dim() == len(shape) - 1 else v
            for k, v in s.items()
        }
    optimizer.load_state_dict(state)
