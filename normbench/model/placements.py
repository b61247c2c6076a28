"""Normalization placements (`norm=<name>`): one class per block equation (the specification:
../shared/docs/variants.md).

Notation as in the specification: `x` is the residual stream entering the block, `A` causal
self-attention (with its output projection W_o), `M` the MLP W2(act(W1 .)), `F` either
sublayer, `Norm` the selected kind, `N` the number of blocks and `l` the 1-based block index.
A block receives its sublayers and a norm factory from the model, so each class states only
where the norms go: its `forward` is its equation.

This module holds the placements whose residual stream is never normalized (the pre-norm
family, and the controls without norms) and `PLACEMENTS`, the registry of all of them; the
post-norm family, whose stream passes through Norm, is in normbench/model/postnorm.py, and
the base class `Block` in normbench/model/block.py.

Depth-dependent constants (DeepNorm's alpha and beta, Admin's omega, Mix-LN's split) are
computed in one place, each class's `constants()`, which both the model and the logged config
use. Placement-specific initialization (DeepNorm's beta, ReZero's zero) is applied by
`init_placement_()` on top of the model's `model.init`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from normbench.model.block import Block, NormFactory
from normbench.model.members import Gain
from normbench.model.postnorm import B2T, Admin, DeepNorm, MixLN, PostLN, ResiDual


class PreLN(Block):
    """x = x + A(Norm(x)); x = x + M(Norm(x))

    Parallel form (GPT-J, PaLM): x + A(Norm(x)) + M(Norm(x)), one shared input norm.
    """

    name, paper, final_norm, parallel = "pre", "2002.04745", True, True
    summary = "Pre-LN (GPT-2): normalize each sublayer's input; identity residual path"

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.norm_a = norm()
        self.norm_m = None if self.is_parallel else norm()  # parallel: one shared input norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            h = self.norm_a(x)
            return x + self.attn(h) + self.mlp(h)
        x = x + self.attn(self.norm_a(x))
        x = x + self.mlp(self.norm_m(x))
        return x


class SandwichLN(Block):
    """x = x + Norm_out(A(Norm_in(x))); the same for M

    Separate norm parameters in and out, and per sublayer. Parallel form:
    x + Norm_out(A(Norm_in(x))) + Norm_out'(M(Norm_in(x))), one shared input norm.
    """

    name, paper, final_norm, parallel = "sandwich", "2105.13290", True, True
    summary = "Sandwich-LN (CogView): normalize each sublayer's input and its output"

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.norm_a_in, self.norm_a_out = norm(), norm()
        self.norm_m_in = None if self.is_parallel else norm()  # parallel: shared input norm
        self.norm_m_out = norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            h = self.norm_a_in(x)
            return x + self.norm_a_out(self.attn(h)) + self.norm_m_out(self.mlp(h))
        x = x + self.norm_a_out(self.attn(self.norm_a_in(x)))
        x = x + self.norm_m_out(self.mlp(self.norm_m_in(x)))
        return x


class PeriLN(SandwichLN):
    """x = Norm_e(e); x = x + Norm_out(A(Norm_in(x))); the same for M

    Sandwich-LN's block (Output-LN gains learnable, initialised to 1) with the embedding
    output e normalized before the first block (Norm_e, the model's `norm_e`) and the final
    norm before the head, as Kim et al. 2502.02732 define Peri-LN. Parallel form: Sandwich-LN's.
    """

    name, paper = "peri", "2502.02732"
    summary = "Peri-LN: Sandwich-LN's block, with the embedding output normalized too"
    embed_norm = True


class ReorderedLN(Block):
    """x = x + Norm(A(x)); x = x + Norm(M(x))

    Parallel form: x + Norm(A(x)) + Norm'(M(x)).
    """

    name, paper, final_norm, parallel = "reordered", "2501.00656", True, True
    summary = "OLMo-2 reordered norm: normalize each sublayer's output, not its input"

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.norm_a, self.norm_m = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            return x + self.norm_a(self.attn(x)) + self.norm_m(self.mlp(x))
        x = x + self.norm_a(self.attn(x))
        x = x + self.norm_m(self.mlp(x))
        return x


class LNS(Block):
    """x = x + A(Norm(x)/sqrt(l)); x = x + M(Norm(x)/sqrt(l))

    Pre-LN with LayerNorm Scaling. Parallel form: x + A(h) + M(h), h = Norm(x)/sqrt(l).
    Uses the plain N(0, 0.02) init: the 1/sqrt(l) scaling replaces GPT-2's depth scaling.
    """

    name, paper, final_norm, parallel = "lns", "2502.05795", True, True
    summary = "LayerNorm Scaling: Pre-LN with block l's norm outputs scaled by 1/sqrt(l)"
    depth_scaled_init = False

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.scale = 1 / math.sqrt(self.layer)
        self.norm_a = norm()
        self.norm_m = None if self.is_parallel else norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            h = self.norm_a(x) * self.scale
            return x + self.attn(h) + self.mlp(h)
        x = x + self.attn(self.norm_a(x) * self.scale)
        x = x + self.mlp(self.norm_m(x) * self.scale)
        return x


class ReZero(Block):
    """x = x + a*A(x); x = x + a*M(x)

    No norms; one scalar a per block, initialised to 0. Parallel form: x + a*(A(x) + M(x)).
    """

    name, paper, final_norm, parallel = "rezero", "2003.04887", False, True
    uses_norm = False
    summary = "ReZero: no norms; each block's residual branch gated by a scalar that starts at 0"

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.a = Gain((), init=0.0)  # a(y) = a * y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            return x + self.a(self.attn(x) + self.mlp(x))
        x = x + self.a(self.attn(x))
        x = x + self.a(self.mlp(x))
        return x


class NoNorm(Block):
    """x = x + A(x); x = x + M(x)

    No norms anywhere. Parallel form: x + A(x) + M(x).
    """

    name, paper, final_norm, parallel = "none", "-", False, True
    uses_norm = False
    summary = "no normalization anywhere: a control expected to diverge at depth"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            return x + self.attn(x) + self.mlp(x)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return x


PLACEMENTS: dict[str, type[Block]] = {
    cls.name: cls
    for cls in (
        PostLN,
        PreLN,
        SandwichLN,
        PeriLN,
        ReorderedLN,
        DeepNorm,
        Admin,
        ResiDual,
        B2T,
        MixLN,
        LNS,
        ReZero,
        NoNorm,
    )
}
