"""Normalization kinds (`norm.kind=<name>`), as specified in ../shared/docs/variants.md.

Every kind computes in (at least) float32 and casts back to the input's dtype, so that under
bf16 autocast the statistics are never taken in bf16. Each class states which of the options
`eps`, `bias` and `alpha0` it has (`options`); `normbench.run.config.checks.validate` rejects an option
set for a kind that lacks it, and fills in the kind's defaults so the saved config is the one
that ran.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from normbench.model.members import MemberModule, broadcast


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or as is when it already has at least float32's precision (float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class Norm(MemberModule):
    """Base class of the kinds: a registry entry with a name, a paper and its options. Its
    parameters carry the member dimension first (normbench/model/members.py): (M, d) for a
    gain of width d, (M,) for a scalar; the input is (M, ..., d)."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    # The options this kind has, with the kind's defaults (`norm.<option>: null` picks these).
    options: ClassVar[dict[str, Any]] = {}


class LayerNorm(Norm):
    """(x - mean) / sqrt(var + eps) * g + b"""

    name, paper = "layernorm", "1607.06450"
    summary = "subtract the mean, divide by the standard deviation, scale and shift"
    options = {"eps": 1e-5, "bias": True}

    def __init__(self, d: int, *, eps: float, bias: bool) -> None:
        super().__init__()
        self.eps, self.d = eps, d
        self.weight = nn.Parameter(torch.ones(1, d))
        self.bias = nn.Parameter(torch.zeros(1, d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        w = self.weight.to(xf.dtype)
        b = None if self.bias is None else self.bias.to(xf.dtype)
        if self.weight.shape[0] == 1:  # one member: torch's kernel applies the gain and shift
            y = F.layer_norm(
                xf, (self.d,), w.squeeze(0), None if b is None else b.squeeze(0), self.eps
            )
        else:
            y = F.layer_norm(xf, (self.d,), None, None, self.eps) * broadcast(w, xf)
            y = y if b is None else y + broadcast(b, xf)
        return y.to(x.dtype)


class RMSNorm(Norm):
    """x / sqrt(mean(x^2) + eps) * g"""

    name, paper = "rmsnorm", "1910.07467"
    summary = "divide by the root mean square and scale; no centering, no shift"
    options = {"eps": 1e-6}

    def __init__(self, d: int, *, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = xf * rms * broadcast(self.weight, xf)
        return y.to(x.dtype)


class ScaleNorm(Norm):
    """g * x / max(||x||, eps)

    One scalar g, initialised to sqrt(d).
    """

    name, paper = "scalenorm", "1910.05895"
    summary = "project onto the sphere of learned radius g (one scalar, init sqrt(d))"
    options = {"eps": 1e-5}

    def __init__(self, d: int, *, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.full((1,), float(d) ** 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        y = broadcast(self.g, xf) * xf / xf.norm(dim=-1, keepdim=True).clamp(min=self.eps)
        return y.to(x.dtype)


class DyT(Norm):
    """g * tanh(alpha * x) + b

    One scalar alpha, initialised to norm.alpha0; g and b are d-vectors.
    """

    name, paper = "dyt", "2503.10622"
    summary = "Dynamic Tanh: an elementwise tanh(alpha x) with learned scalar alpha, no statistics"
    options = {"alpha0": 0.5, "bias": True}  # 0.5: the paper's official code (some use 1.0)

    def __init__(self, d: int, *, alpha0: float, bias: bool) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha0)))
        self.weight = nn.Parameter(torch.ones(1, d))
        self.bias = nn.Parameter(torch.zeros(1, d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        y = broadcast(self.weight, xf) * torch.tanh(broadcast(self.alpha, xf) * xf)
        if self.bias is not None:
            y = y + broadcast(self.bias, xf)
        return y.to(x.dtype)


class BatchNorm(Norm):
    """(x - mean_b) / sqrt(var_b + eps) * g + b

    Statistics over the batch dimension, separately for each position.

    In training, position t of every sequence is normalized with the mean and (biased)
    variance of position t across the batch, so no token sees statistics of later tokens.
    Each member has its own statistics: the input is (M, B, T, d) (or (B, T, d), one
    member's).
    Running averages of these per-position statistics (momentum 0.1, unbiased variance, as
    torch.nn.BatchNorm1d) normalize at evaluation.
    """

    name, paper = "batchnorm", "1502.03167"
    summary = "normalize each position with statistics over the batch; running averages at eval"
    options = {"eps": 1e-5, "bias": True}
    momentum: ClassVar[float] = 0.1

    def __init__(self, d: int, *, eps: float, bias: bool, context: int) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, d))
        self.bias = nn.Parameter(torch.zeros(1, d)) if bias else None
        self.register_buffer("running_mean", torch.zeros(1, context, d))
        self.register_buffer("running_var", torch.ones(1, context, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # one member's (B, T, d)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        xf = upcast(x)  # (M, B, T, d)
        B, T = xf.shape[1:3]
        if self.training:
            if B < 2:
                raise ValueError("batchnorm needs a batch of at least 2 sequences in training")
            var, mean = torch.var_mean(xf, dim=1, unbiased=False)  # (M, T, d) each
            with torch.no_grad():
                m = self.momentum
                self.running_mean[:, :T].lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var[:, :T].lerp_((var * B / (B - 1)).to(self.running_var.dtype), m)
        else:
            mean = self.running_mean[:, :T].to(xf.dtype)
            var = self.running_var[:, :T].to(xf.dtype)
        y = (xf - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        y = y * broadcast(self.weight, xf)
        if self.bias is not None:
            y = y + broadcast(self.bias, xf)
        return y.to(x.dtype)


class Identity(Norm):
    """x"""

    name, paper = "identity", "-"
    summary = "no normalization (an ablation)"

    def __init__(self, d: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


KINDS: dict[str, type[Norm]] = {
    cls.name: cls for cls in (LayerNorm, RMSNorm, ScaleNorm, DyT, BatchNorm, Identity)
}


# Every kind option (`norm.eps`, `norm.bias`, `norm.alpha0`): the union of the kinds' own.
KIND_OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(o for k in KINDS.values() for o in k.options))


def kind_options(kind: str, **given: Any) -> dict[str, Any]:
    """The options of `kind`, each from `given` when not None, else the kind's default."""
    return {
        k: default if given.get(k) is None else given[k]
        for k, default in KINDS[kind].options.items()
    }


def make_norm(kind: str, d: int, *, context: int = 1, **options: Any) -> Norm:
    """One normalization layer of `kind` and width `d`.

    `options` may hold any of eps, bias and alpha0 (None or absent: the kind's default);
    those the kind lacks are ignored. `context` sizes batchnorm's per-position statistics.
    """
    kwargs = kind_options(kind, **options)
    if kind == BatchNorm.name:
        kwargs["context"] = context
    return KINDS[kind](d, **kwargs)
