"""The model: placements against torch's reference layer, causality, init, norms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.model import GPT, MLP, CausalSelfAttention, ResidualProjection
from normbench.norm import KINDS, PLACEMENTS, make_norm
from normbench.norm.placements import PostLN, PreLN

D, H, T, B = 32, 4, 10, 3


def tiny_gpt(placement: str = "pre", kind: str = "layernorm", depth: int = 2, **kw) -> GPT:
    return GPT(
        depth=depth,
        placement=placement,
        norm_kind=kind,
        norm_eps=KINDS[kind].default_eps,
        vocab_size=kw.pop("vocab_size", 128),
        context=kw.pop("context", 16),
        d_model=kw.pop("d_model", D),
        n_heads=kw.pop("n_heads", H),
        **kw,
    )


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0) * 0.5)


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
    _randomize(ref)
    block = block_cls(
        attn=CausalSelfAttention(D, H, dropout=0.0),
        mlp=MLP(D, dropout=0.0),
        norm=lambda: make_norm("layernorm", D, 1e-5),
        layer=1,
        depth=1,
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


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_causal(placement, kind):
    """Changing token t+1 leaves the logits at positions <= t unchanged."""
    torch.manual_seed(0)
    model = tiny_gpt(placement, kind).eval()
    idx = torch.randint(0, 128, (2, 12))
    t = 5
    changed = idx.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 128
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-4)


def test_final_norm_follows_the_placement():
    assert isinstance(tiny_gpt("pre").norm_f, KINDS["layernorm"])
    assert isinstance(tiny_gpt("post").norm_f, nn.Identity)  # post-norm: no final norm


def test_lm_head_is_tied_to_token_embedding():
    model = tiny_gpt()
    assert model.lm_head.weight is model.wte.weight
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_params() == n_unique


@pytest.mark.parametrize("depth", [1, 6, 24])
def test_gpt2_init_scales_residual_projections_by_depth(depth):
    """N(0, 0.02) everywhere; W_o and W2 N(0, 0.02/sqrt(2N)), found by role, not by name."""
    torch.manual_seed(0)
    model = tiny_gpt(depth=depth, d_model=128, n_heads=4, vocab_size=512)
    residual = [m.weight for m in model.modules() if isinstance(m, ResidualProjection)]
    assert len(residual) == 2 * depth
    other = [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and not isinstance(m, ResidualProjection)
        and m is not model.lm_head
    ]
    want = 0.02 / math.sqrt(2 * depth)
    got = torch.cat([w.flatten() for w in residual]).std().item()
    assert abs(got - want) / want < 0.03, (got, want)
    got_other = torch.cat([w.flatten() for w in other]).std().item()
    assert abs(got_other - 0.02) / 0.02 < 0.03
    assert abs(model.wte.weight.std().item() - 0.02) / 0.02 < 0.03
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_xavier_init_is_uniform_with_the_xavier_bound():
    torch.manual_seed(0)
    model = tiny_gpt(init="xavier", d_model=64)
    w = model.blocks[0].attn.qkv.weight  # fan_in 64, fan_out 192
    bound = math.sqrt(6 / (64 + 192))
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.95 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) / (bound / math.sqrt(3)) < 0.05


def test_layernorm_statistics():
    norm = make_norm("layernorm", 64, 1e-5)
    x = torch.randn(4, 7, 64) * 5 + 3
    y = norm(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(4, 7), atol=1e-3, rtol=0)


def test_rmsnorm_statistics_and_formula():
    norm = make_norm("rmsnorm", 64, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64) + 0.5)
    x = torch.randn(4, 7, 64) * 5 + 3
    y = norm(x)
    unit = y / norm.weight
    torch.testing.assert_close(unit.pow(2).mean(-1).sqrt(), torch.ones(4, 7), atol=1e-4, rtol=0)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(y, expected)
    assert not hasattr(norm, "bias")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_norms_compute_in_float32_under_bf16_autocast(kind):
    """The output is the float32 result rounded once to bf16, not a bf16 computation."""
    torch.manual_seed(0)
    norm = make_norm(kind, 256, KINDS[kind].default_eps)
    x = (torch.randn(8, 256) * 3 + 100).to(torch.bfloat16)  # large mean: bf16 stats would be off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    reference = norm(x.float()).to(torch.bfloat16)
    torch.testing.assert_close(y, reference, atol=0, rtol=0)


def test_loss_is_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    model = tiny_gpt()
    idx = torch.randint(0, 128, (2, 9))
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    expected = F.cross_entropy(logits.reshape(-1, 128), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert abs(loss.item() - math.log(128)) < 0.5  # small init: close to a uniform guess


def test_sequence_longer_than_context_is_rejected():
    model = tiny_gpt(context=8)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 9, dtype=torch.long))
