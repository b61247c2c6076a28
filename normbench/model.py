"""A small GPT whose blocks are normalization placements (docs/variants.md).

token + learned position embeddings -> `depth` blocks -> final norm (if the placement has
one) -> LM head tied to the token embedding. With `norm=pre`, `norm.kind=layernorm` and
`model.init=gpt2` this is GPT-2's architecture exactly (as in nanoGPT's model.py).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.norm import PLACEMENTS, make_norm


class ResidualProjection(nn.Linear):
    """A linear layer that writes into the residual stream (attention W_o, MLP W2).

    The type marks the role, so depth-scaled initializations find these layers however
    the modules around them are named.
    """


class CausalSelfAttention(nn.Module):
    """A(x): multi-head causal self-attention with a fused qkv projection and W_o."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool = True):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # rows: [W_q; W_k; W_v]
        self.proj = ResidualProjection(d_model, d_model, bias=bias)  # W_o
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """M(x) = W2 GELU(W1 x), width 4d; GELU with GPT-2's tanh approximation."""

    def __init__(self, d_model: int, dropout: float, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=bias)  # W1
        self.act = nn.GELU(approximate="tanh")
        self.proj = ResidualProjection(4 * d_model, d_model, bias=bias)  # W2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class GPT(nn.Module):
    def __init__(
        self,
        *,
        depth: int,
        placement: str,
        norm_kind: str,
        norm_eps: float,
        vocab_size: int = 50304,
        context: int = 256,
        d_model: int = 256,
        n_heads: int = 4,
        dropout: float = 0.0,
        bias: bool = True,
        init: str = "gpt2",
    ):
        super().__init__()
        self.depth, self.context = depth, context
        Block = PLACEMENTS[placement]
        norm = partial(make_norm, norm_kind, d_model, norm_eps)
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                attn=CausalSelfAttention(d_model, n_heads, dropout, bias),
                mlp=MLP(d_model, dropout, bias),
                norm=norm,
                layer=layer,
                depth=depth,
            )
            for layer in range(1, depth + 1)
        )
        self.norm_f = norm() if Block.final_norm else nn.Identity()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.init_weights(init)

    @classmethod
    def from_config(cls, cfg: Any) -> GPT:
        """Build from the composed config (`depth`, `norm.*`, `model.*`)."""
        m = cfg.model
        return cls(
            depth=cfg.depth,
            placement=str(cfg.norm.name.value),
            norm_kind=str(cfg.norm.kind.value),
            norm_eps=cfg.norm.eps,
            vocab_size=m.vocab_size,
            context=m.context,
            d_model=m.d_model,
            n_heads=m.n_heads,
            dropout=m.dropout,
            bias=m.bias,
            init=str(m.init.value),
        )

    @torch.no_grad()
    def init_weights(self, scheme: str) -> None:
        """gpt2: N(0, 0.02), residual projections N(0, 0.02/sqrt(2N)); xavier: Xavier-uniform.

        Embeddings are N(0, 0.02) under both; the LM head shares the token embedding.
        Norm parameters keep their own initialization (gain 1, bias 0).
        """
        std = 0.02
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head:
                if scheme == "gpt2":
                    scale = 1 / math.sqrt(2 * self.depth)
                    is_residual = isinstance(module, ResidualProjection)
                    nn.init.normal_(module.weight, 0.0, std * scale if is_residual else std)
                elif scheme == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    raise ValueError(f"unknown init scheme {scheme!r}")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    def num_params(self) -> int:
        """Number of parameters, the tied LM head counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets, the mean cross-entropy in float32."""
        T = idx.shape[1]
        if T > self.context:
            raise ValueError(f"sequence of length {T} exceeds the context {self.context}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss
