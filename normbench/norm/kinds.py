"""Normalization kinds (`norm.kind=<name>`), as specified in docs/variants.md.

Every kind upcasts to float32, normalizes, and casts back, so that under bf16 autocast the
statistics are never computed in bf16.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Norm(nn.Module):
    """Base class of the kinds: a registry entry with a name, a paper and a default eps."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    default_eps: ClassVar[float]


class LayerNorm(Norm):
    """(x - mean) / sqrt(var + eps) * g + b"""

    name, paper, default_eps = "layernorm", "1607.06450", 1e-5
    summary = "subtract the mean, divide by the standard deviation, then scale and shift"

    def __init__(self, d: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.float(), self.weight.shape, self.weight.float(), b, self.eps)
        return y.to(x.dtype)


class RMSNorm(Norm):
    """x / sqrt(mean(x^2) + eps) * g"""

    name, paper, default_eps = "rmsnorm", "1910.07467", 1e-6
    summary = "divide by the root mean square, then scale; no centering, no bias"

    def __init__(self, d: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)


KINDS: dict[str, type[Norm]] = {cls.name: cls for cls in (LayerNorm, RMSNorm)}


def make_norm(kind: str, d: int, eps: float, bias: bool = True) -> Norm:
    """Build one normalization layer of the given kind and width."""
    return KINDS[kind](d, eps=eps, bias=bias)
