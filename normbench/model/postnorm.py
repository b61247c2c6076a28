"""The post-norm family: placements whose residual stream itself passes through Norm.

Post-LN and the placements that keep its normalized stream while fixing its depth problem:
DeepNorm (an up-weighted residual), Admin (a learned per-channel residual weight), ResiDual
(a second, unnormalized stream), B2T (the block input added again) and Mix-LN (Post-LN in the
first blocks only). Every class here has `normalizes_stream = True`; the registry is
`PLACEMENTS` in normbench/model/placements.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.model.block import Block, NormFactory
from normbench.model.kinds import upcast


class PostLN(Block):
    """x = Norm(x + A(x)); x = Norm(x + M(x))"""

    name, paper, final_norm = "post", "1706.03762", False
    summary = "Post-LN (original Transformer): normalize after each residual addition"
    normalizes_stream = True

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.norm_a, self.norm_m = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_a(x + self.attn(x))
        x = self.norm_m(x + self.mlp(x))
        return x


class DeepNorm(Block):
    """x = Norm(alpha*x + A(x)); x = Norm(alpha*x + M(x))

    Decoder-only constants: alpha = (2N)^(1/4); W_v, W_o, W1, W2 initialised with gain
    beta = (8N)^(-1/4) (W_q, W_k gain 1). The fused qkv weight is scaled on its V third only.
    """

    name, paper, final_norm = "deepnorm", "2203.00555", False
    summary = "DeepNorm (DeepNet): post-norm with the residual up-weighted by alpha"
    normalizes_stream, depth_scaled_init = True, False

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        norm: NormFactory,
        *,
        alpha: float,
        beta: float,
        **kw: Any,
    ) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.alpha, self.beta = alpha, beta
        self.norm_a, self.norm_m = norm(), norm()

    @classmethod
    def constants(cls, depth: int, **options: Any) -> dict[str, Any]:
        return {"alpha": (2 * depth) ** 0.25, "beta": (8 * depth) ** -0.25}

    @torch.no_grad()
    def init_placement_(self) -> None:
        _, _, w_v = self.attn.qkv.slices()
        for weight in (w_v, self.attn.proj.weight, self.mlp.fc.weight, self.mlp.proj.weight):
            weight.mul_(self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_a(self.alpha * x + self.attn(x))
        x = self.norm_m(self.alpha * x + self.mlp(x))
        return x


class Admin(Block):
    """x = Norm(omega ⊙ x + F(x)) for F = A, then M; omega a learnable d-vector per sublayer

    Analytic initialization omega = sqrt((L+1)/ln(L+1) - 1) with L = 2N sublayers.
    """

    name, paper, final_norm = "admin", "2004.08249", False
    summary = "Admin: post-norm with a learned per-channel residual weight omega"
    normalizes_stream = True

    def __init__(
        self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, *, omega: float, **kw: Any
    ) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.omega_a = nn.Parameter(torch.full((self.d_model,), omega))
        self.omega_m = nn.Parameter(torch.full((self.d_model,), omega))
        self.norm_a, self.norm_m = norm(), norm()

    @classmethod
    def constants(cls, depth: int, **options: Any) -> dict[str, Any]:
        L = 2 * depth
        return {"omega": math.sqrt((L + 1) / math.log(L + 1) - 1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_a(self.omega_a * x + self.attn(x))
        x = self.norm_m(self.omega_m * x + self.mlp(x))
        return x


class ResiDual(Block):
    """x_a = Norm(x_a + F(x_a)); x_d = x_d + s*F(x_a); output x_a + Norm_f(x_d)

    Two streams: the post-norm stream x_a and the dual stream x_d, which starts from the
    embedding (times s), accumulates every sublayer's output unnormalized, and is kept in
    float32 because it grows with depth. Norm_f (the model's final norm) reads x_d only.
    """

    name, paper, final_norm = "resi_dual", "2304.14802", True
    summary = "ResiDual: a post-norm stream plus a pre-norm-like dual stream, summed at the top"
    normalizes_stream = True
    options = {"dual_scale": float}  # the dual stream accumulates dual_scale * F(x_a)
    streams = ("", "dual")  # (x_a, x_d)

    def __init__(
        self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, *, dual_scale: float, **kw: Any
    ) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.s = dual_scale
        self.norm_a, self.norm_m = norm(), norm()

    @classmethod
    def constants(cls, depth: int, *, dual_scale: float, **options: Any) -> dict[str, Any]:
        return {"dual_scale": dual_scale}

    @classmethod
    def check_options(cls, *, dual_scale: float, **options: Any) -> None:
        if not dual_scale > 0:
            raise ConfigError(f"norm.dual_scale must be > 0 (got {dual_scale})")

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.s * upcast(x)

    def exit(self, stream: tuple[torch.Tensor, torch.Tensor], norm_f: nn.Module) -> torch.Tensor:
        x_a, x_d = stream
        return x_a + norm_f(x_d)

    def forward(self, stream: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x_a, x_d = stream
        f = self.attn(x_a)
        x_a, x_d = self.norm_a(x_a + f), x_d + self.s * upcast(f)
        f = self.mlp(x_a)
        x_a, x_d = self.norm_m(x_a + f), x_d + self.s * upcast(f)
        return x_a, x_d


class B2T(Block):
    """h = Norm(x + A(x)); x = Norm(x + h + M(h))

    Attention as in Post-LN; the block input x skips to the top, past the MLP.
    """

    name, paper, final_norm = "b2t", "2206.00330", False
    summary = "B2T connection: post-norm with the block input added again before the last norm"
    normalizes_stream = True

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, **kw: Any) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.norm_a, self.norm_m = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_a(x + self.attn(x))
        return self.norm_m(x + h + self.mlp(h))


class MixLN(Block):
    """blocks l <= P: x = Norm(x + F(x)) (post); blocks l > P: x = x + F(Norm(x)) (pre)

    P = round(ratio * N), rounding halves up, with ratio = norm.mix_ratio.
    """

    name, paper, final_norm = "mix", "2412.13795", True
    summary = "Mix-LN: Post-LN in the first blocks, Pre-LN in the rest"
    normalizes_stream = True
    options = {"mix_ratio": float}  # blocks l <= round(mix_ratio * depth) are post-norm

    def __init__(
        self, attn: nn.Module, mlp: nn.Module, norm: NormFactory, *, post_blocks: int, **kw: Any
    ) -> None:
        super().__init__(attn, mlp, norm, **kw)
        self.post = self.layer <= post_blocks
        self.norm_a, self.norm_m = norm(), norm()

    @classmethod
    def constants(cls, depth: int, *, mix_ratio: float, **options: Any) -> dict[str, Any]:
        return {"post_blocks": math.floor(mix_ratio * depth + 0.5)}

    @classmethod
    def check_options(cls, *, mix_ratio: float, **options: Any) -> None:
        if not 0 <= mix_ratio <= 1:
            raise ConfigError(f"norm.mix_ratio must be in [0, 1] (got {mix_ratio})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post:
            x = self.norm_a(x + self.attn(x))
            x = self.norm_m(x + self.mlp(x))
        else:
            x = x + self.attn(self.norm_a(x))
            x = x + self.mlp(self.norm_m(x))
        return x
