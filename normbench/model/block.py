"""The base of every placement (`norm=<name>`): a block that holds its sublayers.

A block receives its sublayers (attention `A`, the MLP `M`) and a norm factory from the
model; each placement (normbench/model/placements.py, normbench/model/postnorm.py) says only
where the norms go: its `forward` is its equation. The class attributes below are what the
model, the config and the checks read from a placement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from normbench.model.members import Gain

NormFactory = Callable[[], nn.Module]


class Block(nn.Module):
    """Base class: holds the sublayers; subclasses add norms and define forward."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    final_norm: ClassVar[bool]  # whether the model normalizes the stream before the LM head
    # Whether the model normalizes the embedding output before the first block (Norm_e, a
    # model-level norm like the final one: Peri-LN's).
    embed_norm: ClassVar[bool] = False
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

    @classmethod
    def profile(cls, blocks: Sequence[Block], x: torch.Tensor) -> dict[str, Any] | None:
        """An initialization measured on data: called once before training (at a fresh start,
        never on resume) with the model's blocks and the embedding output `x` of a batch of
        training tokens; sets the parameters it measures (Admin's profiled omega) and returns
        what it measured, for the run record, with a one-line `summary` for the log. None: this
        placement's initialization is fixed."""
        return None

    def residual_norms(self) -> dict[str, nn.Module]:
        """The norms whose input is a residual sum such as x + F(x), by sublayer (`attn`,
        `mlp`): in the post-norm family (`normalizes_stream`) `norm_a` closes the attention's
        sum and `norm_m` the MLP's; none for a placement that normalizes a sublayer's input or
        output instead. (Xiong et al.'s Lemma 2 is about those sums' norms.)"""
        return {"attn": self.norm_a, "mlp": self.norm_m} if self.normalizes_stream else {}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kw):
        """A state dict from when a gain (ReZero's a, Admin's omega) was a parameter of the
        block (`blocks.0.a`) loads into the gain module (`blocks.0.a.weight`)."""
        for name, module in self._modules.items():
            if isinstance(module, Gain) and prefix + name in state_dict:
                state_dict[f"{prefix}{name}.weight"] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    # The residual stream is one tensor, except for ResiDual's pair of streams.
    def enter(self, x: torch.Tensor) -> Any:
        """The stream entering the first block, from the embedding."""
        return x

    def exit(self, stream: Any, norm_f: nn.Module) -> torch.Tensor:
        """The hidden state for the LM head, from the stream leaving the last block."""
        return norm_f(stream)
