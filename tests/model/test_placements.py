"""Every placement against its equation in ../shared/docs/variants.md, its constants, its init, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normbench.model.gpt import GPT, FusedQKV, ResidualProjection
from normbench.model.placements import PLACEMENTS

from support import reference as ref
from support.models import D, gpt, randomize

T, B = 10, 3
PARALLEL = ["pre", "sandwich", "peri", "reordered", "lns", "rezero", "none"]  # variants.md


def test_the_registry_is_the_specification():
    assert sorted(PLACEMENTS) == sorted(ref.FINAL_NORM)
    assert sorted(n for n, c in PLACEMENTS.items() if c.parallel) == sorted(PARALLEL)
    assert sorted(n for n, c in PLACEMENTS.items() if not c.uses_norm) == ["none", "rezero"]


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_block_output_is_its_equation(placement, kind):
    """Each block (every layer, so Mix-LN's post and pre blocks both) equals variants.md."""
    torch.manual_seed(0)
    model = gpt(placement, kind, depth=4).double()
    randomize(model)
    x = torch.randn(B, T, D, dtype=torch.float64)
    for blk in model.blocks:
        stream = (x, 2 * torch.randn_like(x)) if placement == "resi_dual" else x
        with torch.no_grad():
            got, want = blk(stream), ref.block(blk, stream)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        out = got[0] if placement == "resi_dual" else got
        assert not torch.allclose(out, x, atol=1e-3)  # not vacuous


@pytest.mark.parametrize("placement", PARALLEL)
def test_parallel_block_is_its_equation(placement):
    torch.manual_seed(0)
    model = gpt(placement, depth=2, block="parallel").double()
    randomize(model)
    x = torch.randn(B, T, D, dtype=torch.float64)
    for blk in model.blocks:
        with torch.no_grad():
            torch.testing.assert_close(blk(x), ref.block(blk, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("placement", sorted(set(PLACEMENTS) - set(PARALLEL)))
def test_no_parallel_form_for_post_norm_placements(placement):
    with pytest.raises(ValueError, match="no parallel form"):
        gpt(placement, block="parallel")


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_model_is_embeddings_blocks_final_norm_head(placement):
    """The whole model, with the final norm exactly where the specification has one."""
    torch.manual_seed(0)
    model = gpt(placement, depth=3).double()
    randomize(model)
    idx = torch.randint(0, 128, (B, T))
    with torch.no_grad():
        got, _ = model(idx)
        want = ref.gpt_logits(model, idx)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    has_final = not isinstance(model.norm_f, nn.Identity)
    assert has_final == ref.FINAL_NORM[placement]
    has_embed_norm = not isinstance(model.norm_e, nn.Identity)
    assert has_embed_norm == (placement in ref.EMBED_NORM)


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_peri_ln_is_sandwich_ln_with_the_embedding_normalized(block):
    """2502.02732: the same blocks as Sandwich-LN, and x_0 = Norm_e(e) before the first; with
    the same weights, Peri-LN's logits are Sandwich-LN's run on Norm_e(e)."""
    torch.manual_seed(0)
    peri = gpt("peri", depth=2, block=block).double()
    randomize(peri)
    sandwich = gpt("sandwich", depth=2, block=block).double()
    sandwich.load_state_dict({k: v for k, v in peri.state_dict().items() if "norm_e" not in k})
    idx = torch.randint(0, 128, (B, T))
    e = peri.wte(idx) + peri.wpe(torch.arange(T))
    x = ref.norm(peri.norm_e, e)
    with torch.no_grad():
        for blk in sandwich.blocks:
            x = blk(x)
        want = ref.norm(sandwich.norm_f, x) @ ref.param(sandwich.wte, "weight").T
        torch.testing.assert_close(peri(idx)[0], want, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(sandwich(idx)[0], want, atol=1e-3)  # Norm_e matters
    fresh = gpt("peri", "rmsnorm")  # Norm_e is of the selected kind, its gain starts at 1
    assert fresh.norm_e.name == "rmsnorm" and bool((fresh.norm_e.weight == 1).all())


@pytest.mark.parametrize(
    "kind, power, eps",
    # scalenorm's eps only bounds ||x_d|| from below: here ||x_d|| is ~45, s*||x_d|| ~2.3
    [("layernorm", 2, 1e-2), ("rmsnorm", 2, 1e-2), ("scalenorm", 1, 3.0)],
)
def test_resi_dual_scale_divides_the_final_norms_eps(kind, power, eps):
    """2304.14802 (App. G.3) and its code: x_d starts at s*e and adds s*F, so x_d is s times
    the paper's, and Norm_f(s*y) with eps is Norm_f(y) with eps/s^2 (eps/s for scalenorm):
    the logits at s are those at s = 1 with that eps, and not those at s = 1 as they are."""
    torch.manual_seed(0)
    s = 0.05
    scaled = gpt("resi_dual", kind, depth=3, placement_options={"dual_scale": s},
                 norm_options={"eps": eps}).double()  # fmt: skip
    randomize(scaled)
    paper = gpt("resi_dual", kind, depth=3, placement_options={"dual_scale": 1.0},
                norm_options={"eps": eps}).double()  # fmt: skip
    paper.load_state_dict(scaled.state_dict())
    idx = torch.randint(0, 128, (B, T))
    e = scaled.wte(idx) + scaled.wpe(torch.arange(T))
    x_a, x_d = scaled.blocks[0].enter(e)
    assert torch.equal(x_a, e) and torch.equal(x_d, s * e)  # both streams start from e
    with torch.no_grad():
        got = scaled(idx)[0]
        assert (got - paper(idx)[0]).abs().max() > 1e-3  # s is not an invariance
        paper.norm_f.eps = eps / s**power
        torch.testing.assert_close(got, paper(idx)[0], rtol=1e-9, atol=1e-9)
        assert [blk.norm_a.eps for blk in paper.blocks] == [eps] * 3  # only Norm_f's


# --- constants at several depths (values computed by hand from the formulas) ------------

DEEPNORM = {
    1: (1.1892071150, 0.5946035575),
    6: (1.8612097182, 0.3799178428),
    48: (3.1301691601, 0.2259005009),
}
ADMIN_OMEGA = {1: 1.3155674365, 6: 2.0170092187, 48: 4.4948331789}
MIX_P = {1: 0, 6: 2, 48: 12}  # round(0.25 N), halves up (1.5 -> 2)


@pytest.mark.parametrize("depth", [1, 6, 48])
def test_deepnorm_constants(depth):
    alpha, beta = DEEPNORM[depth]
    c = PLACEMENTS["deepnorm"].constants(depth)
    assert c["alpha"] == pytest.approx((2 * depth) ** 0.25, rel=1e-12)
    assert c["beta"] == pytest.approx((8 * depth) ** -0.25, rel=1e-12)
    assert (c["alpha"], c["beta"]) == pytest.approx((alpha, beta), rel=1e-9)


@pytest.mark.parametrize("depth", [1, 6, 48])
def test_admin_omega(depth):
    L = 2 * depth
    omega = PLACEMENTS["admin"].constants(depth, admin_init="analytic")["omega"]
    assert omega == pytest.approx(math.sqrt((L + 1) / math.log(L + 1) - 1), rel=1e-12)
    assert omega == pytest.approx(ADMIN_OMEGA[depth], rel=1e-9)
    model = gpt("admin", depth=depth, d_model=8, n_heads=2, vocab_size=16)
    for blk in model.blocks:  # a learnable d-vector per sublayer, initialised to omega
        for gain in (blk.omega_a, blk.omega_m):
            w = ref.param(gain, "weight")
            assert isinstance(gain.weight, nn.Parameter) and w.shape == (8,)
            torch.testing.assert_close(w.detach(), torch.full((8,), omega))
    # analytic: nothing to measure; the profile leaves the model as it was
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert model.profile_init(torch.randint(0, 16, (2, 8))) is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert PLACEMENTS["admin"].constants(depth, admin_init="profiled") == {"omega": None}


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_admin_profiled_omega_is_the_papers_profile(kind):
    """norm.admin_init=profiled: omega_1 = 1, omega_(i+1) = sqrt(Var[omega_i x] + Var[F_i(x)]),
    against a restatement from hooks and numpy (support/reference.py); nothing else moves."""
    torch.manual_seed(0)
    model = gpt("admin", kind, depth=3, placement_options={"admin_init": "profiled"}).double()
    randomize(model)  # random weights and norm gains (the omegas are measured over them)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = torch.randint(0, 128, (B, T))
    profile = model.profile_init(idx)
    assert profile["placement"] == "admin" and profile["batch"] == [B, T]
    want = ref.admin_profile(model, idx)
    got = profile["sublayers"]
    assert [(r["block"], r["sublayer"]) for r in got] == [
        (layer, sub) for layer in (1, 2, 3) for sub in ("attn", "mlp")
    ]
    weights = [g.weight for blk in model.blocks for g in (blk.omega_a, blk.omega_m)]
    for row, weight, (omega, var_shortcut, var_branch) in zip(got, weights, want, strict=True):
        assert isinstance(weight, nn.Parameter) and weight.requires_grad
        torch.testing.assert_close(weight.detach(), torch.full_like(weight, omega))
        assert row["omega"] == pytest.approx(omega, rel=1e-12)
        assert row["var_shortcut"] == pytest.approx(var_shortcut, rel=1e-12)
        assert row["var_branch"] == pytest.approx(var_branch, rel=1e-12)
    assert want[0][0] == 1.0 and len({round(w[0], 6) for w in want}) == 6  # not vacuous
    for n, p in model.named_parameters():  # only the omegas are set
        assert ("omega" in n) or torch.equal(p, before[n]), n


def test_admin_profile_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    options = {"admin_init": "profiled"}
    model = gpt("admin", "batchnorm", depth=2, placement_options=options)
    before = [b.clone() for b in model.buffers()]
    assert before and model.training
    assert model.profile_init(torch.randint(0, 128, (B, T))) is not None
    assert all(torch.equal(b, s) for b, s in zip(model.buffers(), before, strict=True))


@pytest.mark.parametrize("depth", [1, 6, 48])
def test_mix_ln_split(depth):
    P = MIX_P[depth]
    assert PLACEMENTS["mix"].constants(depth, mix_ratio=0.25) == {"post_blocks": P}
    model = gpt("mix", depth=depth, d_model=8, n_heads=2, vocab_size=16)
    assert [blk.post for blk in model.blocks] == [True] * P + [False] * (depth - P)
    assert PLACEMENTS["mix"].constants(10, mix_ratio=0.25) == {"post_blocks": 3}  # 2.5 -> 3
    assert PLACEMENTS["mix"].constants(depth, mix_ratio=1.0) == {"post_blocks": depth}


@pytest.mark.parametrize("depth", [1, 6, 48])
def test_lns_scales_block_l_by_one_over_sqrt_l(depth):
    model = gpt("lns", depth=depth, d_model=8, n_heads=2, vocab_size=16)
    assert [blk.scale for blk in model.blocks] == pytest.approx(
        [1 / math.sqrt(layer) for layer in range(1, depth + 1)], rel=1e-12
    )


def test_rezero_gates_start_at_zero_so_the_model_starts_as_the_embedding():
    model = gpt("rezero", depth=3)
    assert all(blk.a.weight.item() == 0.0 and blk.a.weight.requires_grad for blk in model.blocks)
    idx = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        logits, _ = model(idx)
        embedded = model.wte(idx) + model.wpe(torch.arange(8))
    torch.testing.assert_close(logits, embedded @ ref.param(model.wte, "weight").T)


# --- initial std of the scaled weights -----------------------------------------------------


def std_of(weights: list[torch.Tensor]) -> float:
    return torch.cat([w.detach().flatten() for w in weights]).std().item()


def roles(model: GPT) -> dict[str, list[torch.Tensor]]:
    """The weights by role, found by module type (not by name)."""
    out: dict[str, list[torch.Tensor]] = {"q": [], "k": [], "v": [], "o": [], "w1": [], "w2": []}
    for blk in model.blocks:
        q, k, v = ref.param(blk.attn.qkv, "weight").chunk(3, dim=0)
        out["q"].append(q)
        out["k"].append(k)
        out["v"].append(v)
        out["o"].append(ref.param(blk.attn.proj, "weight"))
        out["w1"].append(ref.param(blk.mlp.fc, "weight"))
        out["w2"].append(ref.param(blk.mlp.proj, "weight"))
    return out


def assert_std(weights: list[torch.Tensor], want: float, what: str) -> None:
    got = std_of(weights)
    n = sum(w.numel() for w in weights)
    # the sample std of n draws has relative error ~ 1/sqrt(2n); allow 6 of those
    assert abs(got - want) / want < 6 / math.sqrt(2 * n), f"{what}: std {got:.5g}, want {want:.5g}"


@pytest.mark.parametrize("depth", [1, 6, 48])
def test_deepnorm_init_scales_v_o_w1_w2_by_beta(depth):
    torch.manual_seed(0)
    model = gpt("deepnorm", depth=depth, d_model=64, vocab_size=64)
    beta = (8 * depth) ** -0.25
    r = roles(model)
    for role in ("q", "k"):  # gain 1
        assert_std(r[role], 0.02, role)
    for role in ("v", "o", "w1", "w2"):  # gain beta; no GPT-2 1/sqrt(2N) on top
        assert_std(r[role], 0.02 * beta, role)


def test_deepnorm_with_xavier_init_is_xavier_normal_with_gain_beta():
    """2203.00555's init: Xavier with gain beta on W_v, W_o, W1, W2 and gain 1 on W_q, W_k."""
    torch.manual_seed(0)
    depth, d = 6, 64
    model = gpt("deepnorm", depth=depth, d_model=d, vocab_size=64, init="xavier")
    beta = (8 * depth) ** -0.25
    xavier = {
        "q": (d, d),
        "k": (d, d),
        "v": (d, d),
        "o": (d, d),
        "w1": (d, 4 * d),
        "w2": (4 * d, d),
    }
    for role, weights in roles(model).items():
        fan_in, fan_out = xavier[role]
        gain = beta if role in ("v", "o", "w1", "w2") else 1.0
        assert_std(weights, gain * math.sqrt(2 / (fan_in + fan_out)), role)


@pytest.mark.parametrize("depth", [1, 6, 48])
def test_gpt2_init_per_placement(depth):
    """Pre-LN: W_o, W2 at 0.02/sqrt(2N); LNS: plain 0.02 (its 1/sqrt(l) replaces it)."""
    torch.manual_seed(0)
    for placement, residual_std in (
        ("pre", 0.02 / math.sqrt(2 * depth)),
        ("lns", 0.02),
    ):
        r = roles(gpt(placement, depth=depth, d_model=64, vocab_size=64))
        for role in ("q", "k", "v", "w1"):
            assert_std(r[role], 0.02, f"{placement} {role}")
        for role in ("o", "w2"):
            assert_std(r[role], residual_std, f"{placement} {role}")


def test_residual_projections_are_found_by_type_after_renaming():
    """The depth-scaled init follows the role (type), whatever the attribute is called."""
    model = gpt("pre", depth=4, d_model=64, vocab_size=64)
    for blk in model.blocks:
        blk.attn.renamed = blk.attn.proj  # an alias under another name
    model.init_weights("gpt2")
    found = [m for m in model.modules() if isinstance(m, ResidualProjection)]
    assert len(found) == 8
    assert isinstance(model.blocks[0].attn.qkv, FusedQKV)


# --- every placement x {layernorm, rmsnorm} trains ------------------------------------------


TRAINED = [
    (placement, kind)
    for placement, cls in sorted(PLACEMENTS.items())
    for kind in (["layernorm", "rmsnorm"] if cls.uses_norm else ["identity"])
]


@pytest.mark.parametrize("placement, kind", TRAINED)
def test_trains_20_steps_and_the_loss_falls(placement, kind, tiny_training):
    """Placements without norms (rezero, none) train with norm.kind=identity, their only kind."""
    rows, summary = tiny_training(f"norm={placement}", f"norm.kind={kind}")
    assert summary["status"] == "completed" and summary["steps"] == 20
    steps = [r["step"] for r in rows if "train/loss" in r]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert steps == [1, 5, 10, 15, 20] and all(math.isfinite(v) for v in losses)  # 1: at init
    assert losses[-1] < losses[0] - 0.5, losses
