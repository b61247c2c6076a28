"""Each norm kind: its output statistics, its formula, its options, float32 under bf16."""

from __future__ import annotations

import math

import pytest
import torch

from normbench.model.kinds import KINDS, kind_options, make_norm

from support.reference import param

D = 64


def tokens(*shape: int) -> torch.Tensor:
    """Inputs far from normalized: mean 3, std 5."""
    return torch.randn(*shape, D) * 5 + 3


def random_affine(norm: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.rand_like(p) + 0.5)


def test_layernorm_is_zero_mean_unit_variance_per_token_before_the_affine():
    norm = make_norm("layernorm", D)
    random_affine(norm)
    x = tokens(4, 7)
    with torch.no_grad():
        unit = (norm(x) - norm.bias) / norm.weight
    torch.testing.assert_close(unit.mean(-1), torch.zeros(4, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(unit.var(-1, unbiased=False), torch.ones(4, 7), atol=1e-3, rtol=0)


def test_rmsnorm_has_unit_rms_before_the_gain_and_no_bias():
    norm = make_norm("rmsnorm", D)
    random_affine(norm)
    x = tokens(4, 7)
    with torch.no_grad():
        y = norm(x)
    unit = y / norm.weight
    torch.testing.assert_close(unit.pow(2).mean(-1).sqrt(), torch.ones(4, 7), atol=1e-4, rtol=0)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(y, expected)
    assert unit.mean(-1).abs().min() > 0.1  # not centered: the mean of x survives
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_scalenorm_output_norm_equals_g():
    norm = make_norm("scalenorm", D)
    assert param(norm, "g").shape == () and norm.g.item() == pytest.approx(
        math.sqrt(D)
    )  # init sqrt(d)
    with torch.no_grad():
        norm.g.fill_(2.5)
    y = norm(tokens(4, 7)).detach()
    torch.testing.assert_close(y.norm(dim=-1), torch.full((4, 7), 2.5))
    assert sum(p.numel() for p in norm.parameters()) == 1


def test_dyt_is_bounded_by_g_plus_b_and_is_its_formula():
    norm = make_norm("dyt", D, alpha0=0.8)
    assert param(norm, "alpha").shape == () and norm.alpha.item() == pytest.approx(0.8)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D))
        norm.bias.copy_(torch.randn(D))
    x = tokens(4, 7) * 100  # saturates tanh: the bound is reached
    y = norm(x).detach()
    bound = norm.weight.abs() + norm.bias.abs()
    assert (y.abs() <= bound + 1e-6).all()
    assert ((bound - y.abs()) < 1e-3).float().mean() > 0.3
    x = tokens(4, 7)
    expected = norm.weight * torch.tanh(0.8 * x) + norm.bias
    torch.testing.assert_close(norm(x).detach(), expected)


def test_batchnorm_normalizes_each_position_over_the_batch():
    norm = make_norm("batchnorm", D, context=16).train()
    x = tokens(8, 10) + torch.arange(10.0)[:, None] * 10  # a different mean at each position
    y = norm(x).detach()
    torch.testing.assert_close(y.mean(0), torch.zeros(10, D), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(10, D), atol=1e-3, rtol=0)


def test_batchnorm_position_t_does_not_depend_on_later_positions():
    torch.manual_seed(0)
    norm = make_norm("batchnorm", D, context=16).train()
    random_affine(norm)
    x = tokens(4, 10)
    changed = x.clone()
    changed[:, 6:] = torch.randn(4, 4, D) * 20
    a, b = norm(x).detach(), norm(changed).detach()
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_batchnorm_evaluates_with_its_running_per_position_statistics():
    norm = make_norm("batchnorm", D, context=16).train()
    x = tokens(8, 10)
    norm(x)  # one training step: running = 0.9 * initial + 0.1 * batch statistics
    mean, var = x.mean(0), x.var(0, unbiased=True)
    running_mean, running_var = param(norm, "running_mean"), param(norm, "running_var")
    torch.testing.assert_close(running_mean[:10], 0.1 * mean)
    torch.testing.assert_close(running_var[:10], 0.9 + 0.1 * var)
    assert (running_mean[10:] == 0).all()  # positions never seen keep the initial values
    norm.eval()
    one = x[:1]  # at evaluation a single sequence is enough: no batch statistics
    expected = (one - running_mean[:10]) / torch.sqrt(running_var[:10] + 1e-5)
    torch.testing.assert_close(norm(one).detach(), expected)


def test_batchnorm_needs_two_sequences_in_training():
    norm = make_norm("batchnorm", D, context=16).train()
    with pytest.raises(ValueError, match="at least 2"):
        norm(tokens(1, 10))


def test_identity_is_the_identity():
    x = tokens(2, 3)
    assert make_norm("identity", D)(x) is x


@pytest.mark.parametrize("kind", ["layernorm", "dyt", "batchnorm"])
def test_bias_option_removes_the_shift(kind):
    with_bias = make_norm(kind, D, context=4)
    without = make_norm(kind, D, context=4, bias=False)
    assert with_bias.bias is not None and without.bias is None
    assert sum(p.numel() for p in with_bias.parameters()) == D + sum(
        p.numel() for p in without.parameters()
    )


def test_kind_defaults_come_from_the_kind():
    assert kind_options("layernorm") == {"eps": 1e-5, "bias": True}
    assert kind_options("rmsnorm") == {"eps": 1e-6}
    assert kind_options("rmsnorm", eps=1e-8) == {"eps": 1e-8}
    assert kind_options("dyt", alpha0=None) == {"alpha0": 0.5, "bias": True}
    assert make_norm("layernorm", D, eps=None).eps == 1e-5
    assert make_norm("rmsnorm", D).eps == 1e-6


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_norms_compute_in_float32_under_bf16_autocast(kind, training):
    """The output is the float32 result rounded once to bf16, not a bf16 computation."""
    torch.manual_seed(0)
    norm = make_norm(kind, 256, context=8).train(training)
    random_affine(norm)
    x = (torch.randn(8, 4, 256) * 3 + 100).to(torch.bfloat16)  # large mean: bf16 stats are off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    reference = norm(x.float()).to(torch.bfloat16)
    torch.testing.assert_close(y, reference, atol=0, rtol=0)
