"""The fused, chunked LM head + cross-entropy against the unfused computation."""

from __future__ import annotations

import pytest
import torch

from normbench.model.loss import linear_cross_entropy, reference_cross_entropy

from support.models import gpt


def inputs(n=(3, 37), d=24, vocab=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*n, d, generator=g).requires_grad_()
    w = (torch.randn(vocab, d, generator=g) * 0.2).requires_grad_()
    y = torch.randint(0, vocab, n, generator=g)
    return h, w, y


def value_and_grads(fn, h, w, y, bf16=False, **kw):
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn(h, w, y, **kw)
    loss.backward()
    return loss.detach(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("chunk", [1, 16, 111, 4096])  # 111 = all tokens; 16 does not divide
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_the_unfused_loss_and_gradients_in_float32(chunk, reduction):
    h, w, y = inputs()
    ref = value_and_grads(reference_cross_entropy, h, w, y, reduction=reduction)
    got = value_and_grads(linear_cross_entropy, h, w, y, reduction=reduction, chunk=chunk)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_within_bf16_rounding():
    h, w, y = inputs(vocab=2000)
    ref = value_and_grads(reference_cross_entropy, h, w, y, bf16=True)
    got = value_and_grads(linear_cross_entropy, h, w, y, bf16=True, chunk=32)
    exact = value_and_grads(reference_cross_entropy, h, w, y)  # float32
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-3)
    for g_got, g_ref, g_exact in zip(got[1:], ref[1:], exact[1:], strict=True):
        scale = g_exact.abs().max()
        assert (g_got - g_exact).abs().max() <= 0.02 * scale  # bf16 products
        assert (g_got - g_exact).abs().max() <= 2 * (g_ref - g_exact).abs().max() + 1e-3 * scale


def test_without_grad_it_computes_only_the_loss():
    h, w, y = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y, reduction="sum", chunk=10)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference_cross_entropy(h, w, y, reduction="sum").detach())


def test_tied_weights_get_both_gradients():
    """The LM head shares the token embedding: its gradient is the sum of both uses."""
    torch.manual_seed(0)
    model = gpt("pre", depth=2)
    idx = torch.randint(0, 128, (2, 12))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    fused = model.wte.weight.grad.clone()
    model.zero_grad()
    logits, _ = model(idx[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    torch.testing.assert_close(fused, model.wte.weight.grad, rtol=1e-5, atol=1e-7)


def test_bad_reduction():
    h, w, y = inputs()
    with pytest.raises(ValueError, match="mean or sum"):
        linear_cross_entropy(h, w, y, reduction="none")


@pytest.mark.parametrize("bf16", [False, True])
def test_targets_with_underflowing_probability_keep_their_exact_loss(bf16):
    """Rows whose target probability underflows (a loss of hundreds of nats, as in a
    divergence) are recomputed exactly, in either precision."""
    h, w, y = inputs(n=(2, 8), vocab=300)
    with torch.no_grad():
        w.mul_(400.0)  # logits of thousands: most targets get probability 0 in float32
    # the unfused head in the same precision: log-softmax of float32 logits, never underflows
    ref = value_and_grads(reference_cross_entropy, h, w, y, bf16=bf16)
    got = value_and_grads(linear_cross_entropy, h, w, y, bf16=bf16, chunk=5)
    assert ref[0] > 100  # the regime under test
    tol = {"rtol": 1e-2, "atol": 1e-2} if bf16 else {"rtol": 1e-5, "atol": 1e-5}
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_z_loss_value_and_gradient_equal_autograd_on_materialized_logits(chunk):
    from normbench.model.loss import reference_z_loss

    h, w, y = inputs()
    z = 0.05  # large enough that its gradient is far above float32 rounding
    ref = value_and_grads(reference_z_loss, h, w, y, z_loss=z)
    got = value_and_grads(linear_cross_entropy, h, w, y, chunk=chunk, z_loss=z)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain = value_and_grads(linear_cross_entropy, h, w, y, chunk=chunk)
    assert (got[1] - plain[1]).abs().max() > 1e-3  # the z-loss term is really there


def test_z_loss_gradient_survives_bf16():
    """At z = 1e-4 the z-loss changes each probability by ~2e-3 relative, below bf16's
    resolution: rounded after it is added (as the unfused head does), its gradient still
    arrives on average; added to probabilities already rounded to bf16, it would vanish."""
    from normbench.model.loss import reference_z_loss

    h, w, y = inputs(vocab=2000)
    z = 1e-4

    def z_part(fn, bf16, **kw):  # the z-loss's part of grad_W
        with_z = value_and_grads(fn, h, w, y, bf16=bf16, z_loss=z, **kw)[2]
        return with_z - value_and_grads(fn, h, w, y, bf16=bf16, z_loss=0.0, **kw)[2]

    exact = z_part(reference_z_loss, False)
    for got in (z_part(linear_cross_entropy, True, chunk=32), z_part(reference_z_loss, True)):
        # the projection on the exact direction: 1 when it arrives unbiased (bf16 noise
        # around it is larger than the term itself, in the unfused head as well)
        coefficient = float((got * exact).sum() / exact.square().sum())
        assert 0.7 < coefficient < 1.3, coefficient


def test_head_statistics_equal_those_of_the_materialized_logits():
    from normbench.model.loss import HEAD_STATS, logit_stats

    h, w, y = inputs()
    with torch.no_grad():
        _, got = linear_cross_entropy(h, w, y, chunk=16, stats=True, extremes=True)
        _, light = linear_cross_entropy(h, w, y, chunk=16, stats=True)
        want = logit_stats(torch.nn.functional.linear(h, w))
    assert len(got) == len(HEAD_STATS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(light[:3], want[:3], rtol=1e-5, atol=1e-5)
    assert torch.isnan(light[3])  # the largest |logit| costs a pass: only with extremes
