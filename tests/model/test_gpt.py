"""The model: GPT-2 itself, torch's reference layer, causality, init, QKNorm, the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.model.gpt import MLP, CausalSelfAttention, ResidualProjection
from normbench.model.kinds import KINDS, make_norm
from normbench.model.members import Linear
from normbench.model.placements import PLACEMENTS, PostLN, PreLN

from support.models import D, H, gpt, randomize
from support.reference import param

T, B = 10, 3


@pytest.mark.parametrize("block_cls, norm_first", [(PreLN, True), (PostLN, False)])
def test_block_equals_torch_transformer_encoder_layer(block_cls, norm_first):
    """Pre-LN and Post-LN equal nn.TransformerEncoderLayer(norm_first=...) with a causal mask."""
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        D,
        H,
        dim_feedforward=4 * D,
        dropout=0.0,
        activation=lambda x: F.gelu(x, approximate="tanh"),
        layer_norm_eps=1e-5,
        batch_first=True,
        norm_first=norm_first,
    ).eval()
    randomize(ref)
    block = block_cls(
        attn=CausalSelfAttention(D, H, dropout=0.0),
        mlp=MLP(D, dropout=0.0),
        norm=lambda: make_norm("layernorm", D, eps=1e-5),
        layer=1,
        depth=1,
        d_model=D,
    ).eval()
    with torch.no_grad():
        block.attn.qkv.weight.copy_(ref.self_attn.in_proj_weight)
        block.attn.qkv.bias.copy_(ref.self_attn.in_proj_bias)
        block.attn.proj.weight.copy_(ref.self_attn.out_proj.weight)
        block.attn.proj.bias.copy_(ref.self_attn.out_proj.bias)
        block.mlp.fc.weight.copy_(ref.linear1.weight)
        block.mlp.fc.bias.copy_(ref.linear1.bias)
        block.mlp.proj.weight.copy_(ref.linear2.weight)
        block.mlp.proj.bias.copy_(ref.linear2.bias)
        for ours, theirs in ((block.norm_a, ref.norm1), (block.norm_m, ref.norm2)):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    x = torch.randn(B, T, D)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    with torch.no_grad():
        expected = ref(x, src_mask=mask, is_causal=True)
        got = block(x)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, x, atol=1e-3)  # the comparison is not vacuous


# --- Pre-LN with model.init=gpt2 is GPT-2 (transformers' GPT2LMHeadModel) --------------------


def hf_gpt2(depth: int, d: int, heads: int, vocab: int, context: int) -> nn.Module:
    """transformers' GPT-2 from a config (nothing downloaded), dropout off, eager attention."""
    import transformers  # a test-only dependency (the dev extra)

    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=d,
        n_layer=depth,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config).eval()


def copy_into_hf(model: nn.Module, hf: nn.Module) -> None:
    """Our weights into GPT-2's modules (its Conv1D stores W transposed: (in, out))."""
    t = hf.transformer
    with torch.no_grad():
        t.wte.weight.copy_(param(model.wte, "weight"))
        t.wpe.weight.copy_(param(model.wpe, "weight"))
        for ours, theirs in zip(model.blocks, t.h, strict=True):
            pairs = [
                (ours.attn.qkv, theirs.attn.c_attn),
                (ours.attn.proj, theirs.attn.c_proj),
                (ours.mlp.fc, theirs.mlp.c_fc),
                (ours.mlp.proj, theirs.mlp.c_proj),
            ]
            for linear, conv in pairs:
                conv.weight.copy_(param(linear, "weight").T)
                conv.bias.copy_(param(linear, "bias"))
            for norm, ln in ((ours.norm_a, theirs.ln_1), (ours.norm_m, theirs.ln_2)):
                ln.weight.copy_(param(norm, "weight"))
                ln.bias.copy_(param(norm, "bias"))
        t.ln_f.weight.copy_(param(model.norm_f, "weight"))
        t.ln_f.bias.copy_(param(model.norm_f, "bias"))


def test_pre_ln_is_gpt2_logit_for_logit():
    """norm=pre, layernorm, tied head, tanh GELU: the same logits as GPT2LMHeadModel.

    The initialization is compared on its own (below); here every parameter is random.
    """
    torch.manual_seed(0)
    depth, vocab, context = 3, 96, 16
    model = gpt("pre", depth=depth, vocab_size=vocab, context=context).eval()
    randomize(model)  # weights large enough that every nonlinearity matters (GELU's form too)
    hf = hf_gpt2(depth, D, H, vocab, context)
    copy_into_hf(model, hf)
    assert hf.lm_head.weight is hf.transformer.wte.weight  # GPT-2 ties the head too
    idx = torch.randint(0, vocab, (B, context))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert ours.std() > 0.1  # not vacuous: the logits are not all ~0
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()


def test_gpt2_init_has_gpt2s_statistics():
    """model.init=gpt2 draws every parameter with the std GPT2LMHeadModel's own init uses."""
    torch.manual_seed(0)
    depth, d, vocab, context = 6, 64, 256, 64
    ours = gpt("pre", depth=depth, d_model=d, vocab_size=vocab, context=context)
    hf = hf_gpt2(depth, d, H, vocab, context)
    hf_params = dict(hf.transformer.named_parameters())
    for i, blk in enumerate(ours.blocks):
        h = f"h.{i}."
        pairs = {
            "attn.c_attn": blk.attn.qkv,
            "attn.c_proj": blk.attn.proj,
            "mlp.c_fc": blk.mlp.fc,
            "mlp.c_proj": blk.mlp.proj,
        }
        for name, linear in pairs.items():
            theirs, mine = hf_params[h + name + ".weight"], linear.weight
            n = mine.numel()
            # two sample stds of n draws: relative difference ~ 1/sqrt(n); allow 6 of those
            assert abs(mine.std() / theirs.std() - 1) < 6 / math.sqrt(n), name
            assert torch.count_nonzero(linear.bias) == torch.count_nonzero(
                hf_params[h + name + ".bias"]
            )
    for emb, theirs in ((ours.wte, hf.transformer.wte), (ours.wpe, hf.transformer.wpe)):
        assert abs(emb.weight.std() / theirs.weight.std() - 1) < 0.05


# --- causality -----------------------------------------------------------------------------


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_causal(placement, kind):
    """Changing token t+1 leaves the logits at positions <= t unchanged.

    In training mode, so that batchnorm normalizes with the statistics of the batch.
    """
    torch.manual_seed(0)
    model = gpt(placement, kind).train()
    idx = torch.randint(0, 128, (3, 12))
    t = 5
    changed = idx.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 7) % 128
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_causal_with_qk_norm(block):
    torch.manual_seed(0)
    model = gpt("pre", qk_norm="l2", block=block).eval()
    idx = torch.randint(0, 128, (2, 12))
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 7) % 128
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)


# --- QKNorm (2010.04245) --------------------------------------------------------------------


def test_qk_norm_attention_is_g_times_cosine_similarity():
    """softmax(g * q_hat . k_hat) v per head, causal, no 1/sqrt(d_head); g0 = log2(T^2 - T)."""
    torch.manual_seed(0)
    context = 16
    attn = CausalSelfAttention(D, H, dropout=0.0, qk_norm="l2", context=context).eval()
    assert attn.qk_norm.g.item() == pytest.approx(math.log2(context**2 - context))
    randomize(attn)
    with torch.no_grad():
        attn.qk_norm.g.fill_(3.7)
    x = torch.randn(B, T, D)
    q, k, v = (
        (x @ w.T + b).view(B, T, H, D // H).transpose(1, 2)
        for w, b in zip(
            param(attn.qkv, "weight").chunk(3), param(attn.qkv, "bias").chunk(3), strict=True
        )
    )
    cos = F.cosine_similarity(q.unsqueeze(3), k.unsqueeze(2), dim=-1)  # (B, H, T, T)
    scores = (3.7 * cos).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    expected = y @ param(attn.proj, "weight").T + param(attn.proj, "bias")
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in attn.qk_norm.parameters()) == 1  # one scalar per layer


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_qk_layernorm_normalizes_q_and_k_per_head_then_scales_by_sqrt_d_head(kind):
    """qk-layernorm (2309.14322): softmax(N_q(q) . N_k(k) / sqrt(d_head)) v per head, N over
    the head dimension with its own gain (and shift, for LayerNorm), shared by the heads."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(D, H, dropout=0.0, qk_norm=kind).eval()
    randomize(attn)
    hd = D // H
    with torch.no_grad():  # gains and shifts away from their initial 1 and 0
        for p in attn.qk_norm.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(B, T, D)
    q, k, v = (
        (x @ w.T + b).view(B, T, H, hd).transpose(1, 2)
        for w, b in zip(
            param(attn.qkv, "weight").chunk(3), param(attn.qkv, "bias").chunk(3), strict=True
        )
    )

    def norm(t, module):
        if kind == "layernorm":
            mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
            return (t - mu) / torch.sqrt(var + 1e-5) * module.weight + module.bias
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * module.weight

    qn, kn = norm(q, attn.qk_norm.q_norm), norm(k, attn.qk_norm.k_norm)
    scores = (qn @ kn.transpose(-1, -2) / math.sqrt(hd)).masked_fill(
        torch.ones(T, T).triu(1).bool(), float("-inf")
    )
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    expected = y @ param(attn.proj, "weight").T + param(attn.proj, "bias")
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    per_norm = 2 * hd if kind == "layernorm" else hd  # gain (and shift) over d_head
    assert sum(p.numel() for p in attn.qk_norm.parameters()) == 2 * per_norm


# --- the rest of the model -----------------------------------------------------------------


def test_final_norm_follows_the_placement():
    assert isinstance(gpt("pre").norm_f, KINDS["layernorm"])
    assert isinstance(gpt("post").norm_f, nn.Identity)  # post-norm: no final norm


def test_lm_head_is_tied_to_token_embedding():
    model = gpt()
    assert model.lm_head.weight is model.wte.weight
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_params() == n_unique


@pytest.mark.parametrize("depth", [1, 6, 24])
def test_gpt2_init_scales_residual_projections_by_depth(depth):
    """N(0, 0.02) everywhere; W_o and W2 N(0, 0.02/sqrt(2N)), found by role, not by name."""
    torch.manual_seed(0)
    model = gpt(depth=depth, d_model=128, n_heads=4, vocab_size=512)
    residual = [m.weight for m in model.modules() if isinstance(m, ResidualProjection)]
    assert len(residual) == 2 * depth
    other = [
        m.weight
        for m in model.modules()
        if isinstance(m, Linear)
        and not isinstance(m, ResidualProjection)
        and m is not model.lm_head
    ]
    want = 0.02 / math.sqrt(2 * depth)
    got = torch.cat([w.flatten() for w in residual]).std().item()
    assert abs(got - want) / want < 0.03, (got, want)
    got_other = torch.cat([w.flatten() for w in other]).std().item()
    assert abs(got_other - 0.02) / 0.02 < 0.03
    assert abs(model.wte.weight.std().item() - 0.02) / 0.02 < 0.03
    biases = [m.bias for m in model.modules() if isinstance(m, Linear) and m.bias is not None]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_xavier_init_treats_q_k_v_as_separate_matrices():
    """Xavier-uniform with the bound of a d x d matrix for each of W_q, W_k, W_v (not of the
    fused d x 3d layer), and of d x 4d for W1."""
    torch.manual_seed(0)
    model = gpt(init="xavier", d_model=64)
    for w, (fan_in, fan_out) in (
        *((w, (64, 64)) for w in model.blocks[0].attn.qkv.weight.chunk(3)),
        (model.blocks[0].mlp.fc.weight, (64, 256)),
    ):
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.95 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) / (bound / math.sqrt(3)) < 0.05


def test_loss_is_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    model = gpt()
    idx = torch.randint(0, 128, (2, 9))
    logits, _ = model(idx[:, :-1])
    none, loss = model(idx[:, :-1], idx[:, 1:])
    assert none is None  # with targets the logits are never materialized
    expected = F.cross_entropy(logits.reshape(-1, 128), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    summed = model(idx[:, :-1], idx[:, 1:], reduction="sum")[1]
    torch.testing.assert_close(summed, expected * idx[:, 1:].numel())
    assert abs(loss.item() - math.log(128)) < 0.5  # small init: close to a uniform guess


def test_sequence_longer_than_context_is_rejected():
    model = gpt(context=8)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 9, dtype=torch.long))
