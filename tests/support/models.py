"""Small models for the model tests: any placement and kind, built directly (no config)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normbench.model.gpt import GPT
from normbench.run.config.schema import OptimConfig, Schedule, WeightDecayMode

D, H = 32, 4
# The placements with options of their own need them (the YAML defaults of configs/norm).
OPTIONS: dict[str, dict[str, Any]] = {
    "mix": {"mix_ratio": 0.25},
    "resi_dual": {"dual_scale": 1.0},
    "admin": {"admin_init": "analytic"},
}


def gpt(placement: str = "pre", kind: str = "layernorm", depth: int = 2, **kw: Any) -> GPT:
    """A GPT of width 32, 4 heads, vocabulary 128, context 16 unless given."""
    options = kw.pop("placement_options", OPTIONS.get(placement))
    return GPT(
        depth=depth,
        placement=placement,
        norm_kind=kind,
        placement_options=options,
        vocab_size=kw.pop("vocab_size", 128),
        context=kw.pop("context", 16),
        d_model=kw.pop("d_model", D),
        n_heads=kw.pop("n_heads", H),
        **kw,
    )


def randomize(module: nn.Module) -> None:
    """Random values for every parameter, so that no term of an equation is trivially 0 or 1
    (ReZero's a, Admin's omega, norm gains and biases, DyT's alpha). Shapes are judged
    without the member dimension (normbench/model/members.py)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() - 1 <= 1:
                p.copy_(0.5 + torch.rand_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.2)


def optim_config(**kw: Any) -> OptimConfig:
    """A complete AdamW config (configs/optim/adamw.yaml's values, but lr 1e-3 and no warmup)
    with `kw` on top."""
    values = dict(
        lr=1e-3,
        warmup_steps=0,
        schedule=Schedule.cosine,
        min_lr=0.0,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.coupled,
        betas=[0.9, 0.95],
        eps=1e-8,
        grad_clip=1.0,
        z_loss=0.0,
        fused=None,
    )
    return OptimConfig(**{**values, **kw})
