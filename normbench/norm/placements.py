"""Normalization placements (`norm=<name>`): one class per block equation, see docs/variants.md.

Notation as in the specification: `x` is the residual stream entering the block, `A` causal
self-attention (with its output projection), `M` the MLP, `Norm` the selected kind. A block
receives its sublayers and a norm factory from the model, so each class below states only
where the norms go; its `forward` is its equation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

NormFactory = Callable[[], nn.Module]


class Block(nn.Module):
    """Base class: holds the sublayers; subclasses add norms and define forward."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    final_norm: ClassVar[bool]  # whether the model normalizes the stream before the LM head

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, layer: int, depth: int):
        super().__init__()
        self.attn, self.mlp = attn, mlp
        self.layer, self.depth = layer, depth  # 1-based index l, number of blocks N


class PostLN(Block):
    """x = Norm(x + A(x)); x = Norm(x + M(x))"""

    name, paper, final_norm = "post", "1706.03762", False
    summary = "Post-LN (original Transformer): normalize after each residual addition"

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, layer: int, depth: int):
        super().__init__(attn, mlp, norm, layer, depth)
        self.norm_a, self.norm_m = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_a(x + self.attn(x))
        x = self.norm_m(x + self.mlp(x))
        return x


class PreLN(Block):
    """x = x + A(Norm(x)); x = x + M(Norm(x))"""

    name, paper, final_norm = "pre", "2002.04745", True
    summary = "Pre-LN (GPT-2): normalize each sublayer's input; identity residual path"

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, layer: int, depth: int):
        super().__init__(attn, mlp, norm, layer, depth)
        self.norm_a, self.norm_m = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_a(x))
        x = x + self.mlp(self.norm_m(x))
        return x


PLACEMENTS: dict[str, type[Block]] = {cls.name: cls for cls in (PostLN, PreLN)}
