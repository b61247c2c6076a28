"""A small GPT whose blocks are normalization placements (the specification of placements
and kinds: ../shared/docs/variants.md beside the repository).

token + learned position embeddings -> embedding norm (if the placement has one: Peri-LN) ->
`depth` blocks -> final norm (if the placement has one) -> LM head tied to the token
embedding. With `norm=pre`, `norm.kind=layernorm` and
`model.init=gpt2` this is GPT-2's architecture exactly (as in nanoGPT's model.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.model import members
from normbench.model.kinds import KIND_OPTIONS, make_norm, upcast
from normbench.model.loss import linear_cross_entropy, logit_stats, z_coefficients
from normbench.model.members import Embedding, Linear, MemberModule, broadcast
from normbench.model.placements import PLACEMENTS


class Tap(nn.Module):
    """An identity on its arguments, where a forward hook reads an intermediate value: the
    q and k that SDPA receives (with the logit scale), the output logits' statistics. The
    model computes nothing for it; the diagnostics (run/monitor/diag.py) hook it."""

    def forward(self, *values: Any) -> tuple[Any, ...]:
        return values


class ResidualProjection(Linear):
    """A linear layer that writes into the residual stream (attention W_o, MLP W2).

    The type marks the role, so depth-scaled initializations find these layers however
    the modules around them are named.
    """


class FusedQKV(Linear):
    """[W_q; W_k; W_v] stacked in one d -> 3d layer; `slices()` gives each (M, d, d) weight."""

    def slices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weight.chunk(3, dim=1)  # views: initializing them writes into the weight


class QKNorm(MemberModule):
    """QKNorm (2010.04245): q and k L2-normalized per head, logits g * (q . k) with no 1/sqrt(d).

    One learned scalar g per attention layer, initialised to log2(T^2 - T) for training
    sequences of length T (the paper's g0; T = model.context here).
    """

    def __init__(self, context: int):
        super().__init__()
        self.g = nn.Parameter(torch.full((1,), math.log2(context**2 - context)))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k normalized (in float32, cast back), q times g; attend with scale 1."""
        qn = F.normalize(upcast(q), dim=-1) * broadcast(self.g, q)
        kn = F.normalize(upcast(k), dim=-1)
        return qn.to(q.dtype), kn.to(k.dtype)


class QKLayerNorm(nn.Module):
    """qk-layernorm (Wortsman et al. 2309.14322; Dehghani et al. 2302.05442): q and k each
    normalized over the head dimension by a norm of this kind (`layernorm` or `rmsnorm`, one
    per q and k, shared by the heads), before the usual 1/sqrt(d_head) scaled dot product."""

    def __init__(self, kind: str, head_dim: int):
        super().__init__()
        self.q_norm, self.k_norm = make_norm(kind, head_dim), make_norm(kind, head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


# model.qk_norm (the config's choices are generated from this): none; l2: QKNorm; layernorm,
# rmsnorm: qk-layernorm
QK_NORMS = ("none", "l2", "layernorm", "rmsnorm")


def matrix_weights(depth: int, d_model: int, vocab_size: int) -> int:
    """The weights of the model's matrix products: 12 d^2 per block (W_q, W_k, W_v, W_o and
    the MLP's two d x 4d matrices) and the tied LM head (vocab x d). Every placement has them;
    norms, biases and position embeddings come on top (a few percent)."""
    return 12 * d_model * d_model * depth + vocab_size * d_model


class CausalSelfAttention(nn.Module):
    """A(x): multi-head causal self-attention with a fused qkv projection and W_o.

    `qk_norm`: none; l2 (QKNorm, 2010.04245: unit q and k, a learned scale, logit scale 1);
    layernorm or rmsnorm (qk-layernorm: q and k normalized per head, scale 1/sqrt(d_head)).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        bias: bool = True,
        qk_norm: str = "none",
        context: int = 2,
    ):
        super().__init__()
        if qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {qk_norm!r}; choose one of {', '.join(QK_NORMS)}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = FusedQKV(d_model, 3 * d_model, bias=bias)
        self.qk_norm: nn.Module | None = None
        if qk_norm == "l2":
            self.qk_norm = QKNorm(context)
        elif qk_norm != "none":
            self.qk_norm = QKLayerNorm(qk_norm, d_model // n_heads)
        self.proj = ResidualProjection(d_model, d_model, bias=bias)  # W_o
        self.resid_dropout = nn.Dropout(dropout)
        self.scores = Tap()  # sees (q, k, scale) as SDPA does: the attention logits' inputs

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """q, k, v as (..., heads, T, head_dim) for x (..., T, d): (M, B, heads, T, head_dim)
        for the stream (M, B, T, d); and the logit scale (1 with QKNorm's l2)."""
        *lead, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        H = self.n_heads
        q, k, v = (t.view(*lead, T, H, C // H).transpose(-3, -2) for t in (q, k, v))
        scale = 1 / math.sqrt(C // self.n_heads)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
            if isinstance(self.qk_norm, QKNorm):
                scale = 1.0
        return q, k, v, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., T, d): the stream (M, B, T, d), or a member's (B, T, d)."""
        *lead, T, C = x.shape
        q, k, v, scale = self.heads(x)
        self.scores(q, k, scale)
        p = self.dropout if self.training else 0.0
        # every member's sequences as one batch for SDPA
        q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)
        y = y.transpose(1, 2).contiguous().view(*lead, T, C)
        return self.resid_dropout(self.proj(y))

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale + causal mask) as (M, B, heads, T, T), in float32.

        SDPA never materializes these weights; the diagnostics (attention entropy) compute
        them here from the same q and k.
        """
        q, k, _, scale = self.heads(x)
        logits = (upcast(q) @ upcast(k).transpose(-2, -1)) * scale
        T = x.shape[-2]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return logits.masked_fill(~causal, -math.inf).softmax(dim=-1)


class MLP(nn.Module):
    """M(x) = W2 GELU(W1 x), width 4d; GELU with GPT-2's tanh approximation."""

    def __init__(self, d_model: int, dropout: float, bias: bool = True):
        super().__init__()
        self.fc = Linear(d_model, 4 * d_model, bias=bias)  # W1
        self.act = nn.GELU(approximate="tanh")
        self.proj = ResidualProjection(4 * d_model, d_model, bias=bias)  # W2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class GPT(nn.Module):
    """Embeddings, the embedding norm `norm_e` and the final norm `norm_f` where the placement
    has them, `depth` blocks of the chosen placement, the tied LM head.

    Built with one member; `GPT.pack(models)` stacks models of one architecture into a pack
    whose member m is models[m] (normbench/model/members.py): tokens (M, B, T), a residual
    stream (M, B, T, d), a loss per member.

    `norm_options` holds the kind's eps / bias / alpha0 (absent or None: the kind's default);
    `placement_options` the placement's own options (norm.mix_ratio, norm.dual_scale,
    norm.admin_init); `constants` the placement's constants at this depth, as the config
    holds them (`norm.constants`, computed once by run/config/resolve.py), or None to compute
    them here from the options.
    """

    def __init__(
        self,
        *,
        depth: int,
        placement: str,
        norm_kind: str,
        norm_options: dict[str, Any] | None = None,
        placement_options: dict[str, Any] | None = None,
        constants: dict[str, Any] | None = None,
        vocab_size: int = 50304,
        context: int = 256,
        d_model: int = 256,
        n_heads: int = 4,
        dropout: float = 0.0,
        bias: bool = True,
        init: str = "gpt2",
        block: str = "sequential",
        qk_norm: str = "none",
        fused_head: bool = True,
        head_chunk: int = 1024,
    ):
        super().__init__()
        if block not in ("sequential", "parallel"):
            raise ValueError(f"unknown block type {block!r}")
        self.depth, self.context = depth, context
        self.fused_head, self.head_chunk = fused_head, head_chunk
        Block = PLACEMENTS[placement]
        if constants is None:
            constants = Block.constants(depth, **(placement_options or {}))
        self.constants = dict(constants)
        norm = partial(make_norm, norm_kind, d_model, context=context, **(norm_options or {}))
        self.wte = Embedding(vocab_size, d_model)
        self.wpe = Embedding(context, d_model)
        self.norm_e = norm() if Block.embed_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                attn=CausalSelfAttention(d_model, n_heads, dropout, bias, qk_norm, context),
                mlp=MLP(d_model, dropout, bias),
                norm=norm,
                layer=layer,
                depth=depth,
                d_model=d_model,
                parallel=block == "parallel",
                **self.constants,
            )
            for layer in range(1, depth + 1)
        )
        self.norm_f = norm() if Block.final_norm else nn.Identity()
        self.removed: frozenset[int] = frozenset()  # blocks left out of the forward (`without`)
        self.lm_head = Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        # Sees the output logits' statistics (loss.HEAD_STATS) of each forward with targets;
        # the largest |logit| costs a pass over the logits, measured while `extremes` is set.
        self.head_stats, self.extremes = Tap(), False
        self.init_weights(init, depth_scaled=Block.depth_scaled_init)
        for b in self.blocks:
            b.init_placement_()

    @classmethod
    def from_config(cls, cfg: Any) -> GPT:
        """Build from the composed config (`depth`, `norm.*`, `model.*`)."""
        m, n = cfg.model, cfg.norm
        Block = PLACEMENTS[str(n.name)]
        return cls(
            depth=cfg.depth,
            placement=str(n.name),
            norm_kind=str(n.kind),
            norm_options={k: getattr(n, k) for k in KIND_OPTIONS},
            placement_options={k: getattr(n, k) for k in Block.options},
            constants=dict(n.constants) or None,  # resolved: the config's; else computed
            vocab_size=m.vocab_size,
            context=m.context,
            d_model=m.d_model,
            n_heads=m.n_heads,
            dropout=m.dropout,
            bias=m.bias,
            init=str(m.init),
            block=str(m.block),
            qk_norm=str(m.qk_norm),
            fused_head=m.fused_head,
            head_chunk=m.head_chunk,
        )

    @torch.no_grad()
    def init_weights(self, scheme: str, depth_scaled: bool = True) -> None:
        """gpt2: N(0, 0.02), residual projections N(0, 0.02/sqrt(2N)) when `depth_scaled`;
        xavier: Xavier-uniform linear weights (W_q, W_k, W_v each as its own d x d matrix).

        Embeddings are N(0, 0.02) under both; the LM head shares the token embedding. Norm
        parameters and placement parameters keep their own initialization.
        """
        std = 0.02
        for module in self.modules():
            if isinstance(module, Linear) and module is not self.lm_head:
                if scheme == "gpt2":
                    scale = 1 / math.sqrt(2 * self.depth) if depth_scaled else 1.0
                    is_residual = isinstance(module, ResidualProjection)
                    nn.init.normal_(module.weight, 0.0, std * scale if is_residual else std)
                elif scheme == "xavier":
                    parts = module.slices() if isinstance(module, FusedQKV) else [module.weight]
                    for w in parts:
                        for member in w:  # each member's (out, in) matrix
                            nn.init.xavier_uniform_(member)
                else:
                    raise ValueError(f"unknown init scheme {scheme!r}")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    @classmethod
    def pack(cls, models: list[GPT]) -> GPT:
        """One model whose member m is models[m] (each built alone, of one member, all of one
        architecture): their weights stacked along the member dimension, each member
        initialized as its run alone."""
        return members.stack(models)  # type: ignore[return-value]

    @property
    def members(self) -> int:
        """The number of members (runs) this model trains: 1 for a run alone."""
        return self.wte.weight.shape[0]

    def num_params(self) -> int:
        """Number of parameters of one member, the tied LM head counted once."""
        return sum(p.numel() for p in self.parameters()) // self.members

    def tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids as (M, B, T): as given, or (B, T) tokens the same for every member."""
        if idx.dim() == 3:
            if idx.shape[0] != self.members:
                raise ValueError(f"tokens for {idx.shape[0]} members; the model has {self.members}")
            return idx
        return idx.expand(self.members, *idx.shape)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The embedding output entering the blocks, (M, B, T, d) for tokens (M, B, T) or
        (B, T) (`tokens`): token + position embeddings, the embedding norm where the
        placement has one (Peri-LN's Norm_e), then dropout."""
        idx = self.tokens(idx)
        M, T = idx.shape[0], idx.shape[-1]
        if T > self.context:
            raise ValueError(f"sequence of length {T} exceeds the context {self.context}")
        pos = torch.arange(T, device=idx.device).expand(M, T)
        return self.drop(self.norm_e(self.wte(idx) + self.wpe(pos).unsqueeze(1)))

    @torch.no_grad()
    def profile_init(self, idx: torch.Tensor) -> dict[str, Any] | None:
        """Measure a placement's initialization on a batch of tokens `idx`, before training
        (Admin's profiled omega: `Block.profile`): what it measured, for the run record, or
        None where the placement's initialization is fixed. It runs in the model's current
        mode and changes only the parameters it measures: buffers (BatchNorm's running
        statistics) are put back as they were."""
        Block = type(self.blocks[0])
        buffers = [(b, b.clone()) for b in self.buffers()]
        profile = Block.profile(list(self.blocks), self.embed(idx))
        for buffer, saved in buffers:
            buffer.copy_(saved)
        if profile is None:
            return None
        return {"placement": Block.name, "batch": list(idx.shape), **profile}

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The hidden state entering the LM head, (M, B, T, d)."""
        stream = self.blocks[0].enter(self.embed(idx))  # ResiDual: a pair of streams
        for block in self.blocks:
            if block.layer not in self.removed:  # a removed block passes its input on
                stream = block(stream)
        return self.blocks[-1].exit(stream, self.norm_f)

    @contextmanager
    def without(self, *layers: int) -> Iterator[GPT]:
        """The model with blocks `layers` (1-based) removed while inside: each passes its
        input on unchanged, x_{l+1} = x_l (the layer pruning of Sun et al. 2502.05795). The
        rest stays as it is: the embedding norm, the other blocks with their own l, the final
        norm and the head."""
        if not all(1 <= layer <= self.depth for layer in layers):
            raise ValueError(f"blocks {layers} are not all within 1 .. {self.depth}")
        before, self.removed = self.removed, frozenset(layers)
        try:
            yield self
        finally:
            self.removed = before

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        z_loss: float | Sequence[float] = 0.0,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Tokens (M, B, T), or (B, T) for every member alike (`tokens`). Without targets:
        the logits (M, B, T, vocab), None. With targets: None, and each member's
        cross-entropy (M,) (`reduction` mean or sum) in float32, plus its `z_loss` x log(Z)^2
        per token when z_loss > 0 (one coefficient, or one per member), from the fused LM head
        and loss (normbench/model/loss.py), which never materializes the logits. For (B, T)
        tokens and one member the member dimension is dropped: a plain GPT's shapes."""
        alone = idx.dim() == 2
        h = self.hidden(idx)
        if targets is None:
            logits = self.lm_head(h)
            return (logits.squeeze(0) if alone else logits), None
        targets = self.tokens(targets)
        logits = None
        if self.fused_head:
            loss, stats = linear_cross_entropy(
                h,
                self.lm_head.weight,
                targets,
                reduction,
                self.head_chunk,
                z_loss=z_loss,
                stats=True,
                extremes=self.extremes,
            )
        else:  # the unfused head (model.fused_head=false), for comparison
            logits, loss, stats = self._unfused_loss(h, targets, reduction, z_loss)
        self.head_stats(stats)
        if alone:
            loss, logits = loss.squeeze(0), None if logits is None else logits.squeeze(0)
        return logits, loss

    def _unfused_loss(
        self,
        h: torch.Tensor,
        targets: torch.Tensor,
        reduction: str,
        z_loss: float | Sequence[float],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits (M, B, T, V) materialized, each member's loss (M,) and HEAD_STATS (M, 4)."""
        logits = self.lm_head(h)
        losses, stats = [], []
        zs = z_coefficients(z_loss, self.members)
        for flat, y, z in zip(logits.float().flatten(1, 2), targets.flatten(1), zs, strict=True):
            loss = F.cross_entropy(flat, y, reduction=reduction)
            stats.append(logit_stats(flat))
            if z:
                log_z = torch.logsumexp(flat, dim=-1)
                total = log_z.square().mean() if reduction == "mean" else log_z.square().sum()
                loss = loss + z * total
            losses.append(loss)
        return logits, torch.stack(losses), torch.stack(stats)
