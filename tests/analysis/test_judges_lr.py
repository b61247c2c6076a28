"""The claims judged on learning-rate sweeps (normbench/analysis/claims/lr.py, sweeps.py),
on run records built to a known answer: each judge's outcomes (reproduced, not reproduced,
underpowered, out of regime), what it reports, and what it says is missing. Three seeds over
the grid 1e-3, 1e-2, 1e-1 (a step of x10); l0 = 8 nats."""

from __future__ import annotations

from pathlib import Path

import pytest

from normbench.analysis.claims import sweeps as lr_claims
from normbench.analysis.claims.registry import judge, judge_claims
from normbench.analysis.claims.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    OUT_OF_REGIME,
    REPRODUCED,
    UNDERPOWERED,
    Missing,
)
from normbench.analysis.records import Run

GRID = (1e-3, 1e-2, 1e-1)
GOOD = (4.1, 4.0, 4.05)  # trains at every lr: sensitivity ~0.05, largest stable lr 0.1
FRAGILE = (4.3, 4.6, None)  # diverges at 0.1: sensitivity ~1.5, largest stable lr 1e-3
DIVERGED = (None, None, None)


def run(loss: float | None, lr: float, seed: int, status: str = "completed", **cfg) -> Run:
    config = {
        "norm.name": cfg.get("norm", "pre"),
        "norm.kind": cfg.get("kind", "layernorm"),
        "depth": cfg.get("depth", 2),
        "optim.lr": lr,
        "optim.warmup_steps": cfg.get("warmup", 30),
        "model.qk_norm": cfg.get("qk", "none"),
        "optim.z_loss": cfg.get("z", 0.0),
        "optim.weight_decay": cfg.get("wd", 1e-4),
        "seed": seed,
        "data.vocab_limit": 4096,
    }
    if loss is None:
        status = "diverged"
    summary = {"status": status, "val_loss": loss, "diag": cfg.get("diag")}
    metrics = [{"step": 1, "train/loss": 8.0}]
    return Run(Path(f"/nowhere/{lr}-{seed}"), config, summary, metrics, [])


def cell(curve: tuple, spread: float = 0.0, **cfg) -> list[Run]:
    """Three seeds over GRID; a value is the loss at that lr (seed s adds s * spread), None
    (diverged) or a tuple of the three seeds' losses."""
    runs = []
    for lr, value in zip(GRID, curve, strict=True):
        for s in range(3):
            loss = value[s] if isinstance(value, tuple) else value
            runs.append(run(None if loss is None else loss + s * spread, lr, s, **cfg))
    return runs


def collapse(runs: list[Run], lr: float, seeds: tuple[int, ...] = (0, 1, 2)) -> list[Run]:
    for r in runs:
        if r.config["optim.lr"] == lr and r.config["seed"] in seeds:
            r.summary["status"] = "collapsed"
    return runs


def outcomes(v) -> list[str]:
    return [c.outcome for c in v.checks]


# --- the measures ---------------------------------------------------------------------------


def test_grid_steps_of_a_half_decade_grid():
    grid = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]  # half-decades, rounded
    assert lr_claims.grid_ratio(grid) == pytest.approx(10**0.5)
    assert lr_claims.step_of(3e-3, grid) == 2 and lr_claims.step_of(0.0, grid) == -1
    with pytest.raises(Missing, match="not geometric"):
        lr_claims.grid_ratio([1e-3, 2e-3, 1e-1])
    with pytest.raises(Missing, match="fewer than 3"):
        lr_claims.grid_ratio([1e-3, 1e-2])


def test_a_contrast_resamples_each_cell_on_its_own():
    (a,) = lr_claims.lr_cells(cell(FRAGILE))
    (b,) = lr_claims.lr_cells(cell(GOOD))
    d = lr_claims.contrast([(1, a), (-1, b)], lr_claims.sens)
    assert d.estimate == pytest.approx(a.sensitivity.estimate - b.sensitivity.estimate)
    steps = lr_claims.contrast([(1, b), (-1, a)], lr_claims.stable_steps)
    assert (steps.estimate, steps.lo, steps.hi) == (2, 2, 2)  # 0.1 against 1e-3


# --- claim 4: warmup ------------------------------------------------------------------------


def warmup_runs(post0: tuple, pre0: tuple = GOOD, post30: tuple = GOOD, **cfg) -> list[Run]:
    return [
        *cell(post0, norm="post", warmup=0, **cfg),
        *cell(post30, norm="post", warmup=30, **cfg),
        *cell(pre0, norm="pre", warmup=0, **cfg),
        *cell(GOOD, norm="pre", warmup=30, **cfg),
    ]


@pytest.mark.parametrize(
    "post0, result",
    [
        (FRAGILE, [REPRODUCED] * 3),
        (GOOD, [NOT_REPRODUCED] * 3),  # warmup changes nothing: every difference is 0
        # one seed of three diverges at 0.1 without warmup: the resamples without it differ by 0
        ((4.1, 4.0, (4.05, None, 4.05)), [UNDERPOWERED] * 3),
        (DIVERGED, [OUT_OF_REGIME] * 3),  # Post-LN never trains without warmup
    ],
)
def test_warmup_claim(post0, result):
    v = judge("warmup", warmup_runs(post0))
    assert outcomes(v) == result, v.markdown()
    a, b, c = v.checks
    assert a.condition.startswith("4a.") and "nats" in a.measured
    assert b.condition.startswith("4b.") and "x10" in b.condition
    assert "Pre-LN's reduction" in c.measured
    if result[0] == REPRODUCED:
        assert (
            b.measured.startswith("2 [2, 2]")
            and "largest stable lr 0.1 [0.1, 0.1] with" in b.measured
        )
    if result[0] == OUT_OF_REGIME:
        assert "Post-LN, warmup 0 never trained (diverged or collapsed 9/9 runs)" in a.measured
    measured = dict(v.measured)
    assert set(measured) >= {
        "Post-LN, warmup 0: LR sensitivity (nats)",
        "Pre-LN, warmup 30: largest stable lr",
    }


def test_warmup_claim_pre_ln_needing_it_as_much():
    """Pre-LN fragile without warmup too: 4a and 4b hold, 4c (Post-LN needs it more) not."""
    v = judge("warmup", warmup_runs(FRAGILE, pre0=FRAGILE))
    assert outcomes(v) == [REPRODUCED, REPRODUCED, NOT_REPRODUCED], v.markdown()


def test_warmup_claim_judges_every_setting_and_names_it():
    runs = warmup_runs(FRAGILE, depth=2) + warmup_runs(GOOD, depth=8)
    v = judge("warmup", runs)
    assert outcomes(v) == [REPRODUCED] * 3 + [NOT_REPRODUCED] * 3
    assert v.checks[0].condition.endswith("(depth 2)") and v.checks[3].condition.endswith(
        "(depth 8)"
    )


def test_warmup_claim_says_what_is_missing():
    runs = [r for r in warmup_runs(FRAGILE) if r.config["norm.name"] == "post"]
    v = judge("warmup", runs)
    assert v.outcome == INCONCLUSIVE and "experiment=warmup" in v.note
    grid = warmup_runs(FRAGILE)
    for r in grid:  # a grid that is not geometric has no grid steps
        r.config["optim.lr"] = {1e-3: 1e-3, 1e-2: 2e-3, 1e-1: 1e-1}[r.config["optim.lr"]]
    assert "not geometric" in judge("warmup", grid).note


# --- claim 5: depth breakdown ---------------------------------------------------------------

BREAKS = (4.0, 4.3, None)  # at depth 8: largest stable lr 1e-3, two steps below 0.1


def depth_runs(deep: dict[str, tuple], shallow: dict[str, tuple] | None = None) -> list[Run]:
    shallow = shallow or {}
    runs = []
    for norm, curve in deep.items():
        runs += cell(shallow.get(norm, GOOD), norm=norm, depth=2)
        runs += cell(curve, norm=norm, depth=8)
    return runs


def test_depth_breakdown_judges_post_ln_and_each_rescue():
    v = judge(
        "depth_breakdown",
        depth_runs({"pre": GOOD, "post": BREAKS, "deepnorm": GOOD, "b2t": BREAKS}),
    )
    assert outcomes(v) == [REPRODUCED, REPRODUCED, NOT_REPRODUCED], v.markdown()
    post, deepnorm, b2t = v.checks
    assert post.condition.startswith("5a.") and post.measured.startswith("2 [2, 2] (")
    assert (
        "largest stable lr 0.1 [0.1, 0.1] at depth 2, 0.001 [0.001, 0.001] at depth 8"
        in post.measured
    )
    assert (
        deepnorm.condition.startswith("5b. DeepNorm keeps it up")
        and "DeepNorm's drop 0 [0, 0]" in deepnorm.measured
    )
    assert b2t.measured.startswith("0 [0, 0]")
    measured = dict(v.measured)
    assert measured["Pre-LN: largest stable lr, depth 2 - depth 8 (grid steps)"].startswith(
        "0 [0, 0]"
    )
    assert "B2T, depth 8: LR sensitivity (nats)" in measured


def test_depth_breakdown_a_fall_of_none_counts_one_step_below_the_grid():
    """Post-LN stable at 1e-3 when shallow and at no lr when deep: a drop of one step."""
    shallow = {"post": (4.0, 4.3, None)}
    v = judge("depth_breakdown", depth_runs({"post": DIVERGED}, shallow))
    assert outcomes(v) == [REPRODUCED] and v.checks[0].measured.startswith("1 [1, 1]"), v.markdown()


def test_depth_breakdown_underpowered_when_seeds_disagree():
    deep = {"post": (4.1, 4.0, (4.05, None, 4.05))}  # one seed of three diverges at 0.1
    v = judge("depth_breakdown", depth_runs(deep))
    assert outcomes(v) == [UNDERPOWERED] and v.checks[0].measured.startswith("1 [0, 1]")


def test_depth_breakdown_gates_every_arm_at_the_shallow_depth():
    """Admin never trains at depth 2; Mix-LN trains there but has no stable lr (a seed fails at
    every lr); DeepNorm is judged. With Post-LN stuck at depth 2, every sub-claim is out."""
    mix = collapse(collapse(cell(GOOD, norm="mix", depth=2), 1e-3, (0,)), 1e-2, (1,))
    mix = collapse(mix, 1e-1, (2,))
    runs = depth_runs({"post": BREAKS, "deepnorm": GOOD, "admin": GOOD}, {"admin": DIVERGED})
    runs += mix + cell(GOOD, norm="mix", depth=8)
    v = judge("depth_breakdown", runs)
    assert outcomes(v) == [REPRODUCED, REPRODUCED, OUT_OF_REGIME, OUT_OF_REGIME], v.markdown()
    admin, mix_check = v.checks[2:]
    assert "Admin, depth 2 never trained (diverged or collapsed 9/9 runs)" in admin.measured
    assert "Mix-LN, depth 2: no largest stable lr (none:" in mix_check.measured
    stuck = depth_runs({"post": BREAKS, "deepnorm": GOOD}, {"post": DIVERGED})
    assert outcomes(judge("depth_breakdown", stuck)) == [OUT_OF_REGIME] * 2


def test_depth_breakdown_says_what_is_missing():
    v = judge("depth_breakdown", cell(GOOD, norm="post", depth=2) + cell(GOOD, norm="pre", depth=8))
    assert v.outcome == INCONCLUSIVE and "experiment=depth_breakdown" in v.note


# --- qk_layernorm, z_loss, long_warmup ------------------------------------------------------


def pair(key: str, base, other, base_curve: tuple, other_curve: tuple, **cfg) -> list[Run]:
    return cell(base_curve, **{key: base}, **cfg) + cell(other_curve, **{key: other}, **cfg)


@pytest.mark.parametrize(
    "none, qk, result",
    [
        (FRAGILE, GOOD, REPRODUCED),
        (GOOD, FRAGILE, NOT_REPRODUCED),
        (GOOD, GOOD, NOT_REPRODUCED),  # a difference of exactly 0 is not below 0
        # one seed of each diverges at 0.1, a different one: either may be the worse
        ((4.1, 4.0, (4.05, None, 4.05)), (4.1, 4.0, (None, 4.05, 4.05)), UNDERPOWERED),
        (GOOD, DIVERGED, OUT_OF_REGIME),
    ],
)
def test_qk_layernorm_claim(none, qk, result):
    v = judge("qk_layernorm", pair("qk", "none", "layernorm", none, qk, depth=8))
    assert outcomes(v) == [result], v.markdown()
    assert (
        "sensitivity(qk_norm layernorm) - sensitivity(qk_norm none) below 0"
        in v.checks[0].condition
    )


def test_qk_layernorm_reports_the_attention_logits_and_ignores_other_cells():
    runs = pair("qk", "none", "layernorm", FRAGILE, GOOD)
    for r in runs:
        if r.config["model.qk_norm"] == "none":
            big = 10.0 * r.config["optim.lr"] / 1e-3 + r.config["seed"]
            r.summary["diag"] = {"attn_logit_max/block_01": 1.0, "attn_logit_max/block_02": big}
    runs += cell(GOOD, norm="post")  # a Post-LN cell of a study: no qk pair, ignored
    v = judge("qk_layernorm", runs)
    assert outcomes(v) == [REPRODUCED]
    logits = [m for q, m in v.measured if "largest attention logit" in q]
    assert logits == ["0.001: 11, 0.01: 101, 0.1: 1e+03"]


def test_qk_layernorm_names_the_setting_of_each_pair():
    runs = pair("qk", "none", "layernorm", FRAGILE, GOOD, depth=2)
    runs += pair("qk", "none", "layernorm", GOOD, GOOD, depth=8)
    v = judge("qk_layernorm", runs)
    assert outcomes(v) == [REPRODUCED, NOT_REPRODUCED]
    assert v.checks[0].condition.endswith("(Pre-LN, depth 2)")


def test_z_loss_claim_reads_only_the_runs_without_weight_decay():
    runs = pair("z", 0.0, 1e-4, FRAGILE, GOOD, wd=0.0)
    runs += cell(GOOD, z=0.0, depth=8)  # weight decay 1e-4: not the claim's
    v = judge("z_loss", runs)
    assert outcomes(v) == [REPRODUCED], v.markdown()
    assert "sensitivity(optim.z_loss 0.0001) - sensitivity(optim.z_loss 0)" in v.checks[0].condition
    v = judge("z_loss", pair("z", 0.0, 1e-4, FRAGILE, GOOD))
    assert v.outcome == INCONCLUSIVE and "optim.weight_decay=0" in v.note


def test_long_warmup_claim_compares_each_longer_warmup_with_the_shortest():
    runs = pair("warmup", 30, 100, FRAGILE, GOOD) + cell(DIVERGED, warmup=0)
    v = judge("long_warmup", runs)
    assert outcomes(v) == [REPRODUCED], v.markdown()
    assert "sensitivity(warmup 100) - sensitivity(warmup 30)" in v.checks[0].condition
    v = judge("long_warmup", pair("warmup", 0, 30, FRAGILE, GOOD))
    assert v.outcome == INCONCLUSIVE and "experiment=long_warmup" in v.note


# --- dyt and post_shallow: each arm at its best lr -----------------------------------------


@pytest.mark.parametrize(
    "dyt, spread, result",
    [
        ((4.2, 4.1, 4.0), 0.001, REPRODUCED),  # 4.0 at its best lr 0.1, as LayerNorm at 1e-2
        ((4.5, 4.4, 4.3), 0.001, NOT_REPRODUCED),  # 0.3 nats worse at its best
        ((4.2, 4.1, 4.0), 0.05, UNDERPOWERED),  # seeds 0.1 apart
        (DIVERGED, 0.001, OUT_OF_REGIME),
    ],
)
def test_dyt_claim(dyt, spread, result):
    runs = cell((4.1, 4.0, 4.2), 0.001, kind="layernorm") + cell(dyt, spread, kind="dyt")
    v = judge("dyt", runs)
    assert outcomes(v) == [result], v.markdown()
    assert "against ±0.02" in v.checks[0].measured or result == OUT_OF_REGIME
    if result == REPRODUCED:
        assert v.checks[0].measured.startswith("DyT (lr 0.1) - LayerNorm (lr 0.01): diff ")
    assert "Pre-LN, norm_kind dyt: LR sensitivity (nats)" in dict(v.measured)


def test_dyt_a_seed_failing_at_the_best_lr_fails_the_match():
    dyt = collapse(cell((4.2, 4.1, 4.0), 0.001, kind="dyt"), 1e-1, (2,))
    v = judge("dyt", cell((4.1, 4.0, 4.2), 0.001, kind="layernorm") + dyt)
    assert outcomes(v) == [NOT_REPRODUCED] and "at the best lrs 1/6" in v.checks[0].measured


def shallow_runs(post: tuple, pre: tuple = GOOD) -> list[Run]:
    """As experiment=warmup's runs: both warmups, depth 2; post_shallow reads warmup 30."""
    runs = cell(post, norm="post") + cell(pre, norm="pre")
    return runs + cell(DIVERGED, norm="post", warmup=0) + cell(GOOD, norm="pre", warmup=0)


@pytest.mark.parametrize(
    "post, result",
    [
        ((4.0, 3.9, 3.95), REPRODUCED),  # l* 3.91 against 4.01
        ((4.3, 4.2, 4.25), NOT_REPRODUCED),
        ((4.0, (3.8, 4.2, 4.2), 4.1), UNDERPOWERED),  # the seeds disagree
    ],
)
def test_post_shallow_claim(post, result):
    v = judge("post_shallow", shallow_runs(post))
    assert outcomes(v) == [result], v.markdown()  # one check: the warmup-0 cells are not read
    assert "l*(Post-LN) - l*(Pre-LN) below 0" in v.checks[0].condition


def test_post_shallow_gates_both_arms_at_their_best_lr():
    runs = shallow_runs((4.0, 3.9, 3.95))
    collapse(runs, 1e-2, (1,))  # a Post-LN seed and a Pre-LN seed fail at their best lr
    v = judge("post_shallow", runs)
    assert outcomes(v) == [OUT_OF_REGIME]
    assert "Post-LN: 1/3 seeds failed at its best lr 0.01" in v.checks[0].measured
    assert "Pre-LN: 1/3 seeds failed" in v.checks[0].measured
    v = judge("post_shallow", cell(GOOD, norm="post", depth=8) + cell(GOOD, norm="pre", depth=8))
    assert v.outcome == INCONCLUSIVE and "depth 2, warmup 30" in v.note


# --- --claim: the named claims on all the records --------------------------------------------


def test_named_claims_are_judged_on_all_records_whatever_their_claim():
    runs = shallow_runs((4.0, 3.9, 3.95))
    for r in runs:
        r.config["claim"] = "warmup"
    assert [v.claim for v in judge_claims(runs, [])] == ["warmup"]
    named = judge_claims(runs, [], ["post_shallow", "xiong_hidden"])
    assert [v.claim for v in named] == ["xiong_hidden", "post_shallow"]
    assert named[0].outcome == INCONCLUSIVE and "no `normbench probe` records" in named[0].note
    assert named[1].outcome == REPRODUCED
