"""Normalization placements (`norm=<name>`): one class per block equation, see docs/variants.md.

Notation as in the specification: `x` is the residual stream entering the block, `A` causal
self-attention (with its output projection W_o), `M` the MLP W2(act(W1 .)), `F` either
sublayer, `Norm` the selected kind, `N` the number of blocks and `l` the 1-based block index.
A block receives its sublayers and a norm factory from the model, so each class below states
only where the norms go: its `forward` is its equation.

Depth-dependent constants (DeepNorm's alpha and beta, Admin's omega, Mix-LN's split) are
computed in one place, each class's `constants()`, which both the model and the logged config
use. Placement-specific initialization (DeepNorm's beta, ReZero's zero) is applied by
`init_placement_()` on top of the model's `model.init`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.model.kinds import upcast

NormFactory = Callable[[], nn.Module]


class Block(nn.Module):
    """Base class: holds the sublayers; subclasses add norms and define forward."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    final_norm: ClassVar[bool]  # whether the model normalizes the stream before the LM head
    # Whether the residual stream itself passes through Norm (post-norm family). With
    # norm.kind=identity such a placement has nothing bounding its stream.
    normalizes_stream: ClassVar[bool] = False
    parallel: ClassVar[bool] = False  # defines the parallel form x + A(.) + M(.)
    uses_norm: ClassVar[bool] = True  # False: no Norm anywhere (norm.kind must be identity)
    # gpt2 init scales W_o and W2 by 1/sqrt(2N); placements with their own depth scaling
    # (DeepNorm's beta, LNS's 1/sqrt(l)) switch it off.
    depth_scaled_init: ClassVar[bool] = True
    # The placement's own `norm.<option>` keys and their types (the config schema of such a
    # placement is generated from them; `check_options` says what values they may take).
    options: ClassVar[dict[str, type]] = {}
    # Names of the tensors of the residual stream between blocks ("" for a single stream);
    # the diagnostics report each (ResiDual: the post-norm stream and the dual stream).
    streams: ClassVar[tuple[str, ...]] = ("",)

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        norm: NormFactory,
        *,
        layer: int,
        depth: int,
        d_model: int,
        parallel: bool = False,
    ) -> None:
        super().__init__()
        if parallel and not type(self).parallel:
            raise ValueError(f"norm={self.name} has no parallel form")
        self.attn, self.mlp = attn, mlp
        self.layer, self.depth = layer, depth  # 1-based index l, number of blocks N
        self.d_model = d_model
        self.is_parallel = parallel

    @classmethod
    def constants(cls, depth: int, **options: Any) -> dict[str, Any]:
        """The placement's constants at this depth (passed to every block's constructor)."""
        return {}

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise ConfigError (one line naming the key) when an option is out of its range."""

    def init_placement_(self) -> None:
        """Placement-specific initialization, applied after the model's `model.init`."""

    # The residual stream is one tensor, except for ResiDual's pair of streams.
    def enter(self, x: torch.Tensor) -> Any:
        """The stream entering the first block, from the embedding."""
        return x

    def exit(self, stream: Any, norm_f: nn.Module) -> torch.Tensor:
        """The hidden state for the LM head, from the stream leaving the last block."""
        return norm_f(stream)


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
    """x = x + Norm_out(A(Norm_in(x))); the same for M

    The same block as Sandwich-LN; a separate name so that runs carry the citation chosen.
    """

    name, paper = "peri", "2502.02732"
    summary = "Peri-LN: Sandwich-LN's equation under the name of its 2025 analysis"


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
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_parallel:
            return x + self.a * (self.attn(x) + self.mlp(x))
        x = x + self.a * self.attn(x)
        x = x + self.a * self.mlp(x)
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
