"""Per-layer diagnostics: values against a direct computation, keys at the configured interval."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from normbench.model.gpt import GPT
from normbench.run.monitor.diag import (
    FULL_ONLY,
    Diagnostics,
    Values,
    attention_logits,
    blame,
    block_names,
)
from normbench.run.optim import build_optimizer
from normbench.run.pack.grads import MemberGradients
from normbench.run.pack.optim import MemberAdamW, MemberSettings
from normbench.run.steps import forward_backward

from support.models import gpt, optim_config, randomize

Optim = optim_config(lr=1e-2)


def one_step(model, diag, x, y, clip=math.inf, *, step=1, optimizer=None):
    """The training loop's order of calls for one step (run/trainer.py), its values read at
    once; returns (the ring buffer's row, the full row or None)."""
    optimizer = optimizer or build_optimizer(model, Optim, torch.device("cpu"))
    gradients = MemberGradients(list(model.parameters()))
    with diag.watch(step):
        loss = forward_backward(model, x, y, "fp32")
    norms = gradients.norms()
    grad_norm = gradients.totals(norms)[0]
    diag.on_grads(norms)
    gradients.clip_(gradients.totals(norms), torch.tensor([clip]))
    light = diag.light()
    diag.before_update()
    optimizer.step()
    extra = diag.after_update()
    (vector,) = torch.cat([light.values, extra.values], dim=1).tolist()  # one member
    values = dict(zip(light.keys + extra.keys, vector, strict=True))
    stats = {}
    if light.keys:
        stats = {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item()}
        stats |= {
            k: v for k, v in values.items() if k in light.keys and not k.startswith(FULL_ONLY)
        }
        diag.push(stats)
    return stats, ({"step": step, **values} if diag.full else None)


class TrainersAdamW:
    """A run alone's AdamW as the trainer takes its step (run/pack/optim.py, one member,
    the lr a float32 number on the device), behind torch's `step()`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.opt = MemberAdamW(list(model.parameters()), [MemberSettings.of(Optim)])
        self.lr = torch.tensor([Optim.lr], dtype=torch.float32)

    def step(self) -> None:
        self.opt.step(self.lr, torch.zeros(1))


def batch(vocab=128, B=3, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def stream_tensors(model, x):
    """The residual stream entering each block and leaving the last, by a manual forward."""
    T = x.shape[1]
    embedded = model.norm_e(model.wte(x) + model.wpe(torch.arange(T)))  # Peri-LN's Norm_e
    stream = model.blocks[0].enter(embedded)
    entering = []
    for block in model.blocks:
        entering.append(stream)
        stream = block(stream)
    return entering, stream


def rms(t):
    return t.double().square().mean().sqrt().item()


@pytest.mark.parametrize("placement", ["pre", "post", "deepnorm", "resi_dual", "rezero", "peri"])
def test_values_match_a_direct_computation(placement):
    torch.manual_seed(0)
    kind = "identity" if placement == "rezero" else "layernorm"
    model = gpt(placement, kind, depth=3)
    if placement == "rezero":
        with torch.no_grad():
            for b in model.blocks:
                b.a.weight.fill_(0.5)  # so the blocks' gradients are not zero
    x, y = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    diag = Diagnostics(model, every=1, per_param=True, history=4)
    stats, row = one_step(model, diag, x, y)
    names = block_names(3)
    assert names == ["block_01", "block_02", "block_03"]

    # gradient norms, per sublayer and per block (the grads are not cleared by the step)
    for name, block in zip(names, model.blocks, strict=True):
        for sub in ("attn", "mlp"):
            direct = math.sqrt(
                sum(p.grad.double().square().sum() for p in getattr(block, sub).parameters())
            )
            assert row[f"grad_norm/{name}/{sub}"] == pytest.approx(direct, rel=1e-5)
        whole = math.sqrt(sum(p.grad.double().square().sum() for p in block.parameters()))
        assert row[f"grad_norm/{name}"] == pytest.approx(whole, rel=1e-5)
        sub = [*block.attn.parameters(), *block.mlp.parameters()]
        rest = [p for p in block.parameters() if all(p is not q for q in sub)]
        assert rest  # norms, or ReZero's gate
        direct = math.sqrt(sum(p.grad.double().square().sum() for p in rest))
        assert row[f"grad_norm/{name}/norm"] == pytest.approx(direct, rel=1e-5)
    embed = math.sqrt(
        model.wte.weight.grad.double().square().sum()
        + model.wpe.weight.grad.double().square().sum()
    )
    assert row["grad_norm/embed"] == pytest.approx(embed, rel=1e-5)
    if placement == "peri":  # Norm_e: a group of its own, in no block
        direct = math.sqrt(sum(p.grad.double().square().sum() for p in model.norm_e.parameters()))
        assert row["grad_norm/embed_norm"] == pytest.approx(direct, rel=1e-5)
    else:
        assert "grad_norm/embed_norm" not in row
    for n, p in model.named_parameters():
        assert row[f"grad_norm/param/{n}"] == pytest.approx(p.grad.norm().item(), rel=1e-5)

    # update-to-weight ratio per block
    for i, name in enumerate(names):
        prefix = f"blocks.{i}."
        old = {n: w for n, w in before.items() if n.startswith(prefix)}
        new = {n: p.detach() for n, p in model.named_parameters() if n.startswith(prefix)}
        delta = math.sqrt(sum((new[n] - old[n]).double().square().sum() for n in old))
        weight = math.sqrt(sum(w.double().square().sum() for w in old.values()))
        assert row[f"update_ratio/{name}"] == pytest.approx(delta / weight, rel=1e-4)
        assert row[f"update_ratio/{name}"] > 0

    # residual stream entering each block and leaving the last, with the old weights
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
        entering, out = stream_tensors(model, x)
    for name, stream in zip([*names, "out"], [*entering, out], strict=True):
        tensors = stream if isinstance(stream, tuple) else (stream,)
        suffixes = ["", "/dual"] if placement == "resi_dual" else [""]
        for suffix, t in zip(suffixes, tensors, strict=True):
            assert row[f"resid_rms/{name}{suffix}"] == pytest.approx(rms(t), rel=1e-5)
            assert row[f"resid_max/{name}{suffix}"] == pytest.approx(t.abs().max().item(), rel=1e-6)

    # attention entropy: from the weights the attention module uses
    inputs = {}
    hooks = [
        b.attn.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0]))
        for n, b in zip(names, model.blocks, strict=True)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for name, block in zip(names, model.blocks, strict=True):
        p = block.attn.attention_probs(inputs[name])
        entropy = -(p * torch.where(p > 0, p.log(), 0)).sum(-1).mean()
        assert row[f"attn_entropy/{name}"] == pytest.approx(entropy.item(), rel=1e-5)
        assert 0 < row[f"attn_entropy/{name}"] < math.log(16)
    # the ring buffer row carries the per-layer statistics (not the heavy extras)
    assert stats["step"] == 1 and diag.recent() == [stats]
    assert not any(
        k.startswith(("attn_entropy/", "update_ratio/", "grad_norm/param/")) for k in stats
    )


def test_gradient_norms_are_taken_before_clipping():
    rows = []
    for clip in (math.inf, 1e-3):
        torch.manual_seed(0)
        model = gpt("pre", depth=2)
        rows.append(
            one_step(
                model, Diagnostics(model, every=1, per_param=False, history=0), *batch(), clip=clip
            )[1]
        )
    for key in rows[0]:
        if key.startswith("grad_norm/"):
            assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-6), key
    assert rows[1]["update_ratio/block_01"] != pytest.approx(rows[0]["update_ratio/block_01"])


def test_attention_probs_are_what_sdpa_applies():
    torch.manual_seed(0)
    for qk_norm in ("none", "l2", "layernorm"):
        model = gpt("pre", depth=1, qk_norm=qk_norm)
        attn = model.blocks[0].attn
        x = torch.randn(2, 16, 32)
        p = attn.attention_probs(x)
        assert p.shape == (2, 4, 16, 16)
        assert torch.allclose(p.sum(-1), torch.ones(2, 4, 16))
        assert (p.triu(diagonal=1) == 0).all()  # causal
        _, _, v, _ = attn.heads(x)
        y = (p @ v).transpose(1, 2).reshape(2, 16, 32)
        assert torch.allclose(attn.proj(y), attn(x), atol=1e-5)


def test_light_steps_only_fill_the_ring_buffer():
    torch.manual_seed(0)
    model = gpt("pre", depth=2)
    diag = Diagnostics(model, every=3, per_param=False, history=2)
    optimizer = build_optimizer(model, Optim, torch.device("cpu"))
    full_rows = []
    for step in range(1, 7):
        stats, full = one_step(model, diag, *batch(seed=step), step=step, optimizer=optimizer)
        full_rows.append(full)
        assert "grad_norm/block_01/attn" in stats and "resid_rms/out" in stats
    assert [r is not None for r in full_rows] == [False, False, True, False, False, True]
    assert [r["step"] for r in diag.recent()] == [5, 6]  # the last `history` steps
    off = Diagnostics(model, every=0, per_param=False, history=0)
    stats, full = one_step(model, off, *batch(), optimizer=optimizer)
    assert stats == {} and full is None and off.recent() == [] and off.scalars == {}


def test_blame_names_the_first_layer_to_blow_up():
    inf = math.inf
    history = [
        {
            "step": 1,
            "loss": 5.0,
            "resid_rms/block_01": 1.0,
            "resid_rms/block_02": 1.0,
            "grad_norm/block_01": 1.0,
        },
        {
            "step": 2,
            "loss": 5.0,
            "resid_rms/block_01": 1.1,
            "resid_rms/block_02": 1.0,
            "grad_norm/block_01": 1.0,
        },
        {
            "step": 3,
            "loss": 9.0,
            "resid_rms/block_01": 1.2,
            "resid_rms/block_02": inf,
            "grad_norm/block_01": 30.0,
        },
        {
            "step": 4,
            "loss": inf,
            "resid_rms/block_01": inf,
            "resid_rms/block_02": inf,
            "grad_norm/block_01": 90.0,
        },
    ]
    out = blame(history)
    assert out["first_nonfinite"] == {"step": 3, "key": "resid_rms/block_02"}
    assert out["largest_growth"][0] == {"key": "grad_norm/block_01", "ratio": pytest.approx(90.0)}
    assert blame([]) == {"first_nonfinite": None, "largest_growth": []}


def test_diagnostics_appear_every_diag_every_steps(tiny_training):
    rows, summary = tiny_training("diag.every=5", "norm=pre")
    diag_rows = [r for r in rows if "resid_rms/out" in r]
    assert [r["step"] for r in diag_rows] == [5, 10, 15, 20]
    for r in diag_rows:
        assert r["tokens"] == r["step"] * 4 * 32
        for key in (
            "grad_norm/block_01/attn",
            "grad_norm/block_02/mlp",
            "grad_norm/block_02",
            "grad_norm/embed",
            "resid_rms/block_01",
            "resid_max/out",
            "update_ratio/block_02",
            "attn_entropy/block_01",
        ):
            assert math.isfinite(r[key]), key
    assert summary["diag"] == {k: v for k, v in diag_rows[-1].items() if k != "tokens"}
    rows, summary = tiny_training("diag.every=0", "norm=pre")
    assert not any("resid_rms/out" in r for r in rows) and summary["diag"] == {}


def test_entropy_is_uniform_attention_when_queries_are_zero():
    """With W_q = 0 every logit is 0, so position t attends uniformly over t + 1 keys."""
    torch.manual_seed(0)
    model = gpt("pre", depth=1)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:32].zero_()
        model.blocks[0].attn.qkv.bias.zero_()
    diag = Diagnostics(model, every=1, per_param=False, history=0)
    _, row = one_step(model, diag, *batch(T=8))
    expected = sum(math.log(t + 1) for t in range(8)) / 8
    assert row["attn_entropy/block_01"] == pytest.approx(expected, rel=1e-5)


def test_attention_logits_are_those_of_the_materialized_products():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 2, 7, 4, generator=g), torch.randn(5, 2, 7, 4, generator=g)
    k[3, 1, 6] *= 40  # a large logit, but in a non-causal pair for every query before 6
    logits = (q @ k.transpose(-2, -1)) * 0.5
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    want_max = logits.masked_fill(~causal, -math.inf).amax()
    want_mean = logits[..., causal].mean()
    for chunk in (1, 2 * 7 * 7 * 2, 1 << 24):  # one batch row at a time, two, all
        peak, mean = attention_logits(q[None], k[None], 0.5, chunk=chunk)  # one member
        assert peak.item() == pytest.approx(want_max.item(), rel=1e-6)
        assert mean.item() == pytest.approx(want_mean.item(), rel=1e-5, abs=1e-6)
        # the 5 rows as 5 members of a pack: each member's own
        peaks, means = attention_logits(q, k, 0.5, chunk=chunk)
        masked = logits.masked_fill(~causal, -math.inf)
        torch.testing.assert_close(peaks, masked.amax((1, 2, 3)), rtol=1e-6, atol=0)
        torch.testing.assert_close(means, logits[..., causal].mean((1, 2)), rtol=1e-5, atol=1e-6)
    upper = logits.masked_fill(causal, -math.inf).amax()
    assert upper > want_max  # the masked pairs hold larger logits: the mask matters


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_new_statistics_match_a_direct_computation(placement):
    """The attention logits from the q and k that SDPA gets, the norm inputs (Post-LN: the
    sum x + A(x) before its norm, Lemma 2's quantity), log Z and the largest |logit|."""
    from normbench.model.loss import logit_stats

    torch.manual_seed(0)
    model = gpt(placement, depth=2)
    randomize(model)
    x, y = batch()
    diag = Diagnostics(model, every=1, per_param=False, history=4)
    entering, _ = stream_tensors(model, x)
    with torch.no_grad():
        block = model.blocks[1]
        attn_in = block.norm_a(entering[1]) if placement == "pre" else entering[1]
        q, k, _, scale = block.attn.heads(attn_in)
        logits = (q @ k.transpose(-2, -1)) * scale
        causal = torch.ones(16, 16, dtype=torch.bool).tril()
        norm_in = entering[1] if placement == "pre" else entering[1] + block.attn(entering[1])
        head = logit_stats(model(x)[0])
    stats, row = one_step(model, diag, x, y)
    assert stats["attn_logit_max/block_02"] == pytest.approx(
        logits.masked_fill(~causal, -math.inf).amax().item(), rel=1e-5
    )
    assert stats["attn_logit_mean/block_02"] == pytest.approx(
        logits[..., causal].mean().item(), rel=1e-4, abs=1e-5
    )
    assert stats["norm_in_rms/block_02/norm_a"] == pytest.approx(rms(norm_in), rel=1e-5)
    for i, name in enumerate(("logz_mean", "logz_max", "logz_sq_mean")):
        assert stats[f"logits/{name}"] == pytest.approx(head[i].item(), rel=1e-5)
    assert "logits/max_abs" not in stats  # a pass over the logits: on full steps only
    assert row["logits/max_abs"] == pytest.approx(head[3].item(), rel=1e-5)
    gain = model.blocks[1].norm_m.weight.mean().item()
    assert row["norm_gain/block_02/norm_m"] == pytest.approx(gain, rel=1e-6)
    assert "norm_in_rms/final" in stats if placement == "pre" else "norm_in_rms/final" not in stats


def test_accumulated_update_is_measured_from_the_initial_weights_across_a_resume():
    torch.manual_seed(0)
    model = gpt("pre", depth=2)
    theta_0 = [p.detach().clone() for p in model.blocks[0].parameters()]
    diag = Diagnostics(model, every=1, per_param=False, history=0, from_init=True)
    optimizer = build_optimizer(model, Optim, torch.device("cpu"))
    rows = []
    for step in (1, 2, 3):
        if step == 3:  # a resume: a new Diagnostics from the saved state
            saved = diag.state_dict()
            diag.close()
            diag = Diagnostics(model, every=1, per_param=False, history=0, from_init=True)
            diag.load_state_dict(saved)
        rows.append(one_step(model, diag, *batch(seed=step), step=step, optimizer=optimizer)[1])
    now = list(model.blocks[0].parameters())
    pairs = zip(now, theta_0, strict=True)
    delta = math.sqrt(sum((a.detach() - b).double().square().sum() for a, b in pairs))
    size = math.sqrt(sum(b.double().square().sum() for b in theta_0))
    assert rows[-1]["from_init/block_01"] == pytest.approx(delta / size, rel=1e-5)
    assert 0 < rows[0]["from_init/block_01"] < rows[-1]["from_init/block_01"]
    off = Diagnostics(model, every=1, per_param=False, history=0)
    assert off.initial is None  # diag.from_init=false keeps no copy


def test_attention_logits_of_the_first_rows_only_with_attn_rows():
    torch.manual_seed(0)
    model = gpt("post", depth=1)
    randomize(model)
    x, y = batch(B=3)
    with torch.no_grad():  # Post-LN: attention reads the stream itself
        q, k, _, scale = model.blocks[0].attn.heads(stream_tensors(model, x)[0][0])
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    per_row = ((q @ k.transpose(-2, -1)) * scale).masked_fill(~causal, -math.inf).amax((1, 2, 3))
    assert per_row[0] < per_row.max()  # the batch's largest logit is not in its first row
    diag = Diagnostics(model, every=0, per_param=False, history=1, attn_rows=1)
    stats, _ = one_step(model, diag, x, y)
    assert stats["attn_logit_max/block_01"] == pytest.approx(per_row[0].item(), rel=1e-5)


def test_attention_logit_max_in_bf16_off_full_steps_is_close_to_the_exact_one():
    """Light steps take the products in q's dtype (bf16 under autocast), full steps in
    float32: the two maxima within bf16's rounding; the mean is float32 in both."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(2, 3, 24, 8, generator=g) * 3).bfloat16()
    k = (torch.randn(2, 3, 24, 8, generator=g) * 3).bfloat16()
    exact_max, exact_mean = attention_logits(q[None], k[None], 0.5, exact=True)
    light_max, light_mean = attention_logits(q[None], k[None], 0.5, exact=False)
    products = (q.double() @ k.double().transpose(-1, -2)).masked_fill(
        torch.ones(24, 24, dtype=torch.bool).triu(1), -math.inf
    )
    assert exact_max.item() == pytest.approx(products.max().item() * 0.5, rel=1e-6)
    assert light_max.item() == pytest.approx(exact_max.item(), rel=2**-7)
    assert light_mean.item() == exact_mean.item()


@pytest.mark.parametrize("placement", ["pre", "resi_dual", "peri"])
def test_a_packs_rows_are_its_members_rows_alone(placement):
    """Diagnostics on a pack (normbench/model/members.py) give each member the row its run
    alone gets, from the same weights, tokens and update: every statistic, light and full
    (a float64 model; the rows are float32 numbers: within a few of their rounding steps)."""
    M = 3
    models = []
    for seed in range(M):
        torch.manual_seed(seed)
        model = gpt(placement, depth=2).double()
        randomize(model)
        models.append(model)
    pack = GPT.pack([copy.deepcopy(m) for m in models])
    xs, ys = zip(*(batch(seed=m) for m in range(M)), strict=True)
    x, y = torch.stack(xs), torch.stack(ys)
    settings = [MemberSettings.of(Optim)] * M
    optimizer = MemberAdamW(list(pack.parameters()), settings)
    gradients = MemberGradients(list(pack.parameters()))
    diag = Diagnostics(pack, every=1, per_param=True, history=2, from_init=True)
    with diag.watch(1):
        _, losses = pack(x, y)
        losses.sum().backward()
    norms = gradients.norms()
    diag.on_grads(norms)
    light = diag.light()
    diag.before_update()
    lr = torch.full((M,), Optim.lr, dtype=torch.float32)
    optimizer.step(lr, torch.zeros(M))
    extra = diag.after_update()
    rows = torch.cat([light.values, extra.values], dim=1).tolist()
    got = Values(M, light.keys + extra.keys).rows(rows)
    for m, model in enumerate(models):
        alone = Diagnostics(model, every=1, per_param=True, history=2, from_init=True)
        opt = TrainersAdamW(model)  # the run alone's, as the trainer takes it
        _, want = one_step(model, alone, xs[m], ys[m], step=1, optimizer=opt)
        assert got[m].keys() == want.keys() - {"step"}
        for key, value in got[m].items():
            assert value == pytest.approx(want[key], rel=1e-6, abs=1e-12), (m, key)
    assert got[0]["grad_norm/block_01"] != got[1]["grad_norm/block_01"]  # members differ
