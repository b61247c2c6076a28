"""The post-norm family: placements whose residual stream itself passes through Norm.

Post-LN and the placements that keep its normalized stream while fixing its depth problem:
DeepNorm (an up-weighted residual), Admin (a learned per-channel residual weight), ResiDual
(a second, unnormalized stream), B2T (the block input added again) and Mix-LN (Post-LN in the
first blocks only). Every class here has `normalizes_stream = True`; the registry is
`PLACEMENTS` in normbench/model/placements.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.model.block import Block, NormFactory
from normbench.model.kinds import upcast
from normbench.model.members import Gain


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


# norm.admin_init: how Admin's omega starts (Admin.constants, Admin.profile).
ADMIN_INITS = ("analytic", "profiled")


class Admin(Block):
    """x = Norm(omega ⊙ x + F(x)) for F = A, then M; omega a learnable d-vector per sublayer

    norm.admin_init=analytic: every omega starts at sqrt((L+1)/ln(L+1) - 1), L = 2N sublayers
    (the O(log N) closed form of the authors' admin-torch). profiled: the paper's profiling
    (2004.08249; Transformer-Clinic), one forward pass on a batch of training tokens before
    training, sublayer by sublayer i = 1 .. 2N: omega_1 = 1, omega_{i+1} =
    sqrt(Var[omega_i x_{i-1}] + Var[F_i(x_{i-1})]), each variance a scalar over every element
    of the batch; every channel of omega_i gets the one value.
    """

    name, paper, final_norm = "admin", "2004.08249", False
    summary = "Admin: post-norm with a learned per-channel residual weight omega"
    normalizes_stream = True
    options = {"admin_init": str}  # analytic | profiled (ADMIN_INITS)

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        norm: NormFactory,
        *,
        omega: float | None,
        **kw: Any,
    ) -> None:
        super().__init__(attn, mlp, norm, **kw)
        # omega None: profiled at start (`profile`); until then 1, as Transformer-Clinic's
        # profiling run starts (omega_1 = 1 is also the profile's first value)
        self.profiled = omega is None
        start = 1.0 if omega is None else omega
        self.omega_a = Gain((self.d_model,), init=start)  # omega(x) = omega ⊙ x
        self.omega_m = Gain((self.d_model,), init=start)
        self.norm_a, self.norm_m = norm(), norm()

    @classmethod
    def constants(cls, depth: int, *, admin_init: str, **options: Any) -> dict[str, Any]:
        """omega's closed form at this depth; None when it is profiled (init_profile.json)."""
        if admin_init == "profiled":
            return {"omega": None}
        L = 2 * depth
        return {"omega": math.sqrt((L + 1) / math.log(L + 1) - 1)}

    @classmethod
    def check_options(cls, *, admin_init: str, **options: Any) -> None:
        if admin_init not in ADMIN_INITS:
            raise ConfigError(
                f"norm.admin_init must be one of {', '.join(ADMIN_INITS)} (got {admin_init!r})"
            )

    def sublayers(self) -> list[tuple[str, nn.Module, Gain, nn.Module]]:
        """(name, F, its omega, its norm) of the block's two sublayers, in order."""
        return [
            ("attn", self.attn, self.omega_a, self.norm_a),
            ("mlp", self.mlp, self.omega_m, self.norm_m),
        ]

    @classmethod
    @torch.no_grad()
    def profile(cls, blocks: Sequence[Block], x: torch.Tensor) -> dict[str, Any] | None:
        """norm.admin_init=profiled: each omega_i set in turn, in the forward pass that uses
        it, from the variances of the sublayers before it (see the class); None: analytic."""
        admins = [b for b in blocks if isinstance(b, Admin) and b.profiled]
        if not admins or len(admins) != len(blocks):
            return None
        omega, rows = 1.0, []
        for block in admins:
            for name, F, gain, norm in block.sublayers():
                f = F(x)
                gain.weight.fill_(omega)
                shortcut = gain(x)
                var_shortcut, var_branch = _variance(shortcut), _variance(f)
                rows.append(
                    {
                        "block": block.layer,
                        "sublayer": name,
                        "omega": omega,
                        "var_shortcut": var_shortcut,
                        "var_branch": var_branch,
                    }
                )
                omega = math.sqrt(var_shortcut + var_branch)
                x = norm(shortcut + f)
        omegas = [r["omega"] for r in rows]
        return {
            "option": "norm.admin_init=profiled",
            "rule": "omega_1 = 1; omega_(i+1) = sqrt(var_shortcut_i + var_branch_i), "
            "var_shortcut_i = Var[omega_i x_(i-1)], var_branch_i = Var[F_i(x_(i-1))], "
            "each over every element of the batch (2004.08249; Transformer-Clinic)",
            "sublayers": rows,
            "summary": f"omega {min(omegas):.4g} .. {max(omegas):.4g} over {len(rows)} sublayers",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_a(self.omega_a(x) + self.attn(x))
        x = self.norm_m(self.omega_m(x) + self.mlp(x))
        return x


def _variance(t: torch.Tensor) -> float:
    """The population variance of every element of `t` (numpy's var, as Transformer-Clinic
    takes it), in float64."""
    return float(t.double().var(correction=0))


class ResiDual(Block):
    """x_a, x_d = e, s*e; x_a = Norm(x_a + F(x_a)); x_d = x_d + s*F(x_a); output x_a + Norm_f(x_d)

    Two streams from the embedding output e: the post-norm stream x_a and the dual stream
    x_d, which accumulates every sublayer's output unnormalized (the Pre-LN-like path) and is
    kept in float32 because it grows with depth. Norm_f (the model's final norm) reads x_d
    only. s = norm.dual_scale is the paper's down-scaling of x_d for FP16 (2304.14802,
    Appendix G.3), as its code has it (resi_dual.py: `res = x * dec_res_input_norm_scale`,
    resi_dual_layers.py: `res = res + x * dec_res_input_norm_scale`; 1.0 in its IWSLT and
    WMT configs, 0.05 in OPUS): x_d is s times the paper's, s = 1 is the paper's equation,
    and any s gives the output of s = 1 with Norm_f's eps divided by s^2 (layernorm, rmsnorm,
    batchnorm) or by s (scalenorm); a DyT Norm_f computes tanh(alpha * s * x_d) instead.
    """

    name, paper, final_norm = "resi_dual", "2304.14802", True
    summary = "ResiDual: a post-norm stream plus a pre-norm-like dual stream, summed at the top"
    normalizes_stream = True
    options = {"dual_scale": float}  # s: x_d starts at s*e and accumulates s*F(x_a)
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

    def residual_norms(self) -> dict[str, nn.Module]:
        return super().residual_norms() if self.post else {}  # a pre block: the input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post:
            x = self.norm_a(x + self.attn(x))
            x = self.norm_m(x + self.mlp(x))
        else:
            x = x + self.attn(self.norm_a(x))
            x = x + self.mlp(self.norm_m(x))
        return x
