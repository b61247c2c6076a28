"""An independent re-statement of ../shared/docs/variants.md, written from the specification.

Attention, the MLP and every norm kind are recomputed here from a module's own parameters
with explicit formulas (explicit softmax and mask, the tanh GELU written out, statistics by
hand), and every placement's block equation is restated as a function of those. The tests
compare normbench's modules against these.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from normbench.model.gpt import CausalSelfAttention

# The specification's "final norm before LM head" column, copied from variants.md.
FINAL_NORM = {
    "post": False,
    "pre": True,
    "sandwich": True,
    "peri": True,
    "reordered": True,
    "deepnorm": False,
    "admin": False,
    "resi_dual": True,  # Norm_f, on the dual stream only
    "b2t": False,
    "mix": True,
    "lns": True,
    "rezero": False,
    "none": False,
}
# The placements that normalize the embedding output before the first block: Peri-LN
# (2502.02732; variants.md groups it with Sandwich-LN, which has no such norm).
EMBED_NORM = {"peri"}


def param(module: torch.nn.Module, name: str) -> Tensor | None:
    """A parameter of `module` as a run alone has it (a plain GPT's shape, without the member
    dimension: its state dict), None where the module has none of that name."""
    return module.state_dict(keep_vars=True).get(name)


def linear(x: Tensor, layer: torch.nn.Module) -> Tensor:
    y = x @ param(layer, "weight").T
    return y if layer.bias is None else y + param(layer, "bias")


def attention(attn: CausalSelfAttention, x: Tensor) -> Tensor:
    """A(x) = W_o softmax(mask(q k^T / sqrt(d_head))) v, per head; QKNorm when enabled."""
    B, T, C = x.shape
    h = attn.n_heads
    w_q, w_k, w_v = param(attn.qkv, "weight").chunk(3, dim=0)
    b_q, b_k, b_v = param(attn.qkv, "bias").chunk(3) if attn.qkv.bias is not None else (0, 0, 0)
    q, k, v = (
        (x @ w.T + b).reshape(B, T, h, C // h).transpose(1, 2)
        for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v))
    )
    if attn.qk_norm is not None and not hasattr(attn.qk_norm, "g"):
        raise NotImplementedError("qk-layernorm is tested on its own (tests/model/test_gpt.py)")
    if attn.qk_norm is not None:  # 2010.04245: g * (q/|q|) . (k/|k|)
        q = q / q.norm(dim=-1, keepdim=True) * param(attn.qk_norm, "g")
        k = k / k.norm(dim=-1, keepdim=True)
        scores = q @ k.transpose(-1, -2)
    else:
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // h)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return linear(y.transpose(1, 2).reshape(B, T, C), attn.proj)


def gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def mlp(m: torch.nn.Module, x: Tensor) -> Tensor:
    """M(x) = W2 gelu(W1 x)"""
    return linear(gelu_tanh(linear(x, m.fc)), m.proj)


def norm(n: torch.nn.Module, x: Tensor) -> Tensor:
    """The kind's formula from variants.md, from the layer's own parameters."""
    kind = n.name
    b = param(n, "bias")
    shift = 0 if b is None else b
    if kind == "layernorm":
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + n.eps) * param(n, "weight") + shift
    if kind == "rmsnorm":
        return x / torch.sqrt((x**2).mean(-1, keepdim=True) + n.eps) * param(n, "weight")
    if kind == "scalenorm":
        return param(n, "g") * x / torch.clamp(torch.sqrt((x**2).sum(-1, keepdim=True)), min=n.eps)
    if kind == "dyt":
        return param(n, "weight") * torch.tanh(param(n, "alpha") * x) + shift
    if kind == "batchnorm":  # training mode: statistics over the batch, per position
        mean = x.mean(0, keepdim=True)
        var = ((x - mean) ** 2).mean(0, keepdim=True)
        return (x - mean) / torch.sqrt(var + n.eps) * param(n, "weight") + shift
    if kind == "identity":
        return x
    raise AssertionError(f"no reference for kind {kind}")


def block(blk: torch.nn.Module, x):
    """The placement's equation from variants.md, evaluated with the block's parameters."""
    A = lambda h: attention(blk.attn, h)  # noqa: E731
    M = lambda h: mlp(blk.mlp, h)  # noqa: E731
    name, parallel = blk.name, blk.is_parallel
    if name == "post":
        x = norm(blk.norm_a, x + A(x))
        return norm(blk.norm_m, x + M(x))
    if name == "pre":
        if parallel:
            h = norm(blk.norm_a, x)
            return x + A(h) + M(h)
        x = x + A(norm(blk.norm_a, x))
        return x + M(norm(blk.norm_m, x))
    if name in ("sandwich", "peri"):
        if parallel:
            h = norm(blk.norm_a_in, x)
            return x + norm(blk.norm_a_out, A(h)) + norm(blk.norm_m_out, M(h))
        x = x + norm(blk.norm_a_out, A(norm(blk.norm_a_in, x)))
        return x + norm(blk.norm_m_out, M(norm(blk.norm_m_in, x)))
    if name == "reordered":
        if parallel:
            return x + norm(blk.norm_a, A(x)) + norm(blk.norm_m, M(x))
        x = x + norm(blk.norm_a, A(x))
        return x + norm(blk.norm_m, M(x))
    if name == "deepnorm":
        alpha = (2 * blk.depth) ** 0.25
        x = norm(blk.norm_a, alpha * x + A(x))
        return norm(blk.norm_m, alpha * x + M(x))
    if name == "admin":
        x = norm(blk.norm_a, param(blk.omega_a, "weight") * x + A(x))
        return norm(blk.norm_m, param(blk.omega_m, "weight") * x + M(x))
    if name == "resi_dual":
        x_a, x_d = x
        f = A(x_a)
        x_a, x_d = norm(blk.norm_a, x_a + f), x_d + blk.s * f
        f = M(x_a)
        return norm(blk.norm_m, x_a + f), x_d + blk.s * f
    if name == "b2t":
        h = norm(blk.norm_a, x + A(x))
        return norm(blk.norm_m, x + h + M(h))
    if name == "mix":
        P = math.floor(0.25 * blk.depth + 0.5)  # the tests build Mix-LN with ratio 0.25
        if blk.layer <= P:
            x = norm(blk.norm_a, x + A(x))
            return norm(blk.norm_m, x + M(x))
        x = x + A(norm(blk.norm_a, x))
        return x + M(norm(blk.norm_m, x))
    if name == "lns":
        s = 1 / math.sqrt(blk.layer)
        if parallel:
            h = norm(blk.norm_a, x) * s
            return x + A(h) + M(h)
        x = x + A(norm(blk.norm_a, x) * s)
        return x + M(norm(blk.norm_m, x) * s)
    if name == "rezero":
        a = param(blk.a, "weight")
        if parallel:
            return x + a * (A(x) + M(x))
        x = x + a * A(x)
        return x + a * M(x)
    if name == "none":
        if parallel:
            return x + A(x) + M(x)
        x = x + A(x)
        return x + M(x)
    raise AssertionError(f"no reference for placement {name}")


def gpt_logits(model: torch.nn.Module, idx: Tensor) -> Tensor:
    """The whole model from the specification: embeddings, blocks, final norm, tied head."""
    T = idx.shape[1]
    wte = param(model.wte, "weight")
    x = wte[idx] + param(model.wpe, "weight")[:T]
    name = model.blocks[0].name
    if name in EMBED_NORM:
        x = norm(model.norm_e, x)
    stream = (x, model.blocks[0].s * x) if name == "resi_dual" else x
    for blk in model.blocks:
        stream = block(blk, stream)
    if name == "resi_dual":
        x_a, x_d = stream
        h = x_a + norm(model.norm_f, x_d)
    else:
        h = norm(model.norm_f, stream) if FINAL_NORM[name] else stream
    return h @ wte.T


def admin_profile(model: torch.nn.Module, idx: Tensor) -> list[tuple[float, float, float]]:
    """Admin's profiled omega (2004.08249; Transformer-Clinic's transformer_layer.py), restated
    from a forward pass of `model` on `idx`: (omega_i, Var[omega_i x_(i-1)], Var[F_i(x_(i-1))])
    for every sublayer i in order, where omega_1 = 1, omega_(i+1) is the square root of the
    two variances of sublayer i, and each variance is numpy's over every element of the batch,
    as Transformer-Clinic takes them. The sublayers' inputs and outputs are captured with
    hooks: a model whose omegas were profiled sees, in this pass, the very inputs the
    profile saw, so the omegas it holds must be the ones computed here."""
    seen: list[tuple[Tensor, Tensor]] = []
    hooks = [
        sub.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
        for blk in model.blocks
        for sub in (blk.attn, blk.mlp)
    ]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    rows, omega = [], 1.0
    for x, f in seen:
        var_shortcut = float(np.var((omega * x).double().numpy()))
        var_branch = float(np.var(f.double().numpy()))
        rows.append((omega, var_shortcut, var_branch))
        omega = math.sqrt(var_shortcut + var_branch)
    return rows
