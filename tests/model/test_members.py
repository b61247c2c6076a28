"""A pack (normbench/model/members.py): M models of one architecture stacked along a member
dimension compute exactly what each computes alone, and never mix."""

from __future__ import annotations

import pytest
import torch

from normbench.model.gpt import GPT
from normbench.model.members import MemberModule, member_state, stack

from support.models import gpt, randomize

B, T, V = 3, 12, 128
M = 3

# Every layer with parameters, through the placements and options that use them.
CASES = [
    ("pre", "layernorm", {}),
    ("post", "rmsnorm", {}),
    ("peri", "layernorm", {"block": "parallel"}),
    ("resi_dual", "layernorm", {}),
    ("admin", "rmsnorm", {}),
    ("deepnorm", "scalenorm", {}),
    ("mix", "dyt", {}),
    ("rezero", "identity", {}),
    ("pre", "batchnorm", {}),
    ("pre", "layernorm", {"qk_norm": "l2"}),
    ("sandwich", "rmsnorm", {"qk_norm": "layernorm"}),
    ("pre", "layernorm", {"fused_head": False}),
]


def members(placement: str, kind: str, dtype: torch.dtype = torch.float64, **kw) -> list[GPT]:
    """M models of one architecture, each from its own seed, with random gains and shifts."""
    models = []
    for seed in range(M):
        torch.manual_seed(seed)
        model = gpt(placement, kind, depth=3, **kw).to(dtype)
        randomize(model)
        models.append(model)
    return models


def tokens(seed: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def alone(model: GPT, x: torch.Tensor, y: torch.Tensor, z: float) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y, z_loss=z)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("placement, kind, options", CASES)
def test_a_pack_computes_each_members_loss_and_gradients_as_the_run_alone(placement, kind, options):
    """float64: every member's loss and every gradient equal the run alone's within 1e-10,
    with each member's own tokens and own z-loss coefficient."""
    models = members(placement, kind, **options)
    pack = GPT.pack(members(placement, kind, **options))
    assert pack.members == M and pack.num_params() == models[0].num_params()
    x, y = tokens(0, M, B, T), tokens(1, M, B, T)
    zs = (0.0, 1e-3, 1e-2)
    _, losses = pack(x, y, z_loss=zs)
    assert losses.shape == (M,)
    losses.sum().backward()
    named = dict(pack.named_parameters())
    for m, model in enumerate(models):
        want = alone(model, x[m], y[m], zs[m])
        torch.testing.assert_close(losses[m].detach(), want, rtol=1e-10, atol=1e-10)
        for name, p in model.named_parameters():
            torch.testing.assert_close(
                named[name].grad[m], p.grad.view(named[name].shape[1:]), rtol=1e-10, atol=1e-10
            )
    assert len({round(float(v), 6) for v in losses.detach()}) == M  # the members differ


def test_float32_losses_and_shared_tokens():
    """float32 within 1e-5; (B, T) tokens are every member's, at evaluation too."""
    models = members("pre", "layernorm", torch.float32)
    pack = GPT.pack(models).eval()
    x, y = tokens(2, B, T), tokens(3, B, T)
    with torch.no_grad():
        _, losses = pack(x, y, reduction="sum")
        logits, _ = pack(x)
        for m, model in enumerate(models):
            model.eval()
            torch.testing.assert_close(
                losses[m], model(x, y, reduction="sum")[1], rtol=1e-5, atol=0
            )
            torch.testing.assert_close(logits[m], model(x)[0], rtol=1e-5, atol=1e-5)


def test_a_member_fed_nan_leaves_the_others_bit_identical():
    """A non-finite weight in member 1: its loss and gradients are NaN; members 0 and 2 get
    exactly (bit for bit) the loss and gradients of the pack without it."""
    clean = GPT.pack(members("pre", "layernorm"))
    poisoned = GPT.pack(members("pre", "layernorm"))
    with torch.no_grad():
        poisoned.blocks[1].attn.qkv.weight[1, 0, 0] = float("nan")
    x, y = tokens(4, M, B, T), tokens(5, M, B, T)
    results = []
    for pack in (clean, poisoned):
        _, losses = pack(x, y)
        losses.sum().backward()
        results.append((losses.detach(), {n: p.grad for n, p in pack.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    assert torch.isnan(got[1]) and torch.isfinite(want).all()
    assert torch.equal(got[[0, 2]], want[[0, 2]])
    for name, grad in got_grads.items():
        assert torch.equal(grad[[0, 2]], want_grads[name][[0, 2]]), name
    assert torch.isnan(got_grads["wte.weight"][1]).any()


def test_every_parameter_and_buffer_carries_the_member_dimension():
    """Nothing in the model is shared between members: each tensor is a member module's."""
    for placement, kind, options in CASES:
        model = gpt(placement, kind, depth=2, **options)
        owned = {
            id(t)
            for m in model.modules()
            if isinstance(m, MemberModule)
            for t in [*m._parameters.values(), *m._buffers.values()]
            if t is not None
        }
        tensors = [*model.parameters(), *model.buffers()]
        assert all(id(t) in owned and t.shape[0] == 1 for t in tensors), placement


def test_state_dicts_are_in_a_run_alone_layout():
    """A run alone's state dict has a plain GPT's shapes (no member dimension) and loads
    back; member m of a pack gives exactly its model's state dict."""
    models = members("rezero", "identity")
    model = models[0]
    state = model.state_dict()
    assert state["wte.weight"].shape == (V, 32)
    assert state["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert state["blocks.0.a.weight"].shape == ()
    fresh = gpt("rezero", "identity", depth=3).double()
    fresh.load_state_dict(state)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True)
    )
    pack = stack(models)
    for m, one in enumerate(models):
        got, want = member_state(pack, m), one.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert pack.lm_head.weight is pack.wte.weight  # still tied


def test_a_checkpoint_from_before_the_gains_were_modules_loads():
    """ReZero's a and Admin's omega were parameters of the block (`blocks.0.a`): such a state
    dict still loads."""
    model = gpt("rezero", "identity", depth=2)
    state = {k.replace(".a.weight", ".a"): v for k, v in model.state_dict().items()}
    state["blocks.1.a"] = torch.tensor(0.25)
    fresh = gpt("rezero", "identity", depth=2)
    fresh.load_state_dict(state)
    assert fresh.blocks[1].a.weight.item() == 0.25


def test_stack_refuses_models_of_different_architectures():
    with pytest.raises(ValueError, match="differ in architecture"):
        stack([gpt("pre", depth=2), gpt("pre", depth=2, d_model=64)])
    with pytest.raises(ValueError, match="one member each"):
        stack([stack([gpt("pre", depth=2), gpt("pre", depth=2)]), gpt("pre", depth=2)])
