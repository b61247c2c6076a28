"""The curse of depth (normbench/analysis/claims/train.py, pre-registered in
docs/reproductions.md): Δ_l and R from the layer-removal losses; the judge on
constructed records for every outcome; the preset run for real at tiny size and judged by
`normbench compare`."""

from __future__ import annotations

import math

import pytest
from test_claims import outcomes, run
from test_judges_train import judged

from normbench.analysis.claims.registry import judge
from normbench.analysis.claims.train import depth_ratio, removal_costs
from normbench.analysis.claims.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    OUT_OF_REGIME,
    REPRODUCED,
    UNDERPOWERED,
)

DEPTH = 12


def removal(shallow: float, deep: float, full: float = 5.0) -> dict[str, float]:
    """Layer-removal losses of a depth-12 run: removing one of blocks 1-6 costs `shallow`
    nats on average (block 1 1.5 times that, block 2 half), one of blocks 7-12 `deep`."""
    costs = [1.5 * shallow, 0.5 * shallow, *[shallow] * 4, *[deep] * 6]
    return {"full": full} | {f"block_{i:02d}": full + c for i, c in enumerate(costs, start=1)}


def arm(norm: str, ratios: tuple[float | None, ...]) -> list:
    """One run per seed whose R is the given value (None: a diverged run, no removal)."""
    made = []
    for s, r in enumerate(ratios):
        made.append(run(None if r is None else 5.0, norm=norm, seed=s, depth=DEPTH))
        if r is not None:
            made[-1].summary["layer_removal"] = removal(1.0, r)
    return made


def test_costs_and_ratio():
    (r,) = arm("pre", (0.25,))
    costs = removal_costs(r)
    assert len(costs) == DEPTH and costs[0] == 1.5 and costs[-1] == 0.25
    assert depth_ratio(costs) == pytest.approx(0.25)
    assert depth_ratio([1.0, 2.0, 4.0]) == 3.0  # odd depth: the middle block is in the deeper half
    assert math.isnan(depth_ratio([0.0, 1.0]))


@pytest.mark.parametrize(
    "pre, lns, result",
    [
        # Pre-LN's deeper blocks cost a fifth of the shallower ones; LNS's four fifths
        ((0.2, 0.21, 0.22), (0.8, 0.82, 0.84), [REPRODUCED, REPRODUCED]),
        # the deeper blocks matter more in Pre-LN; LNS's R no higher
        ((1.5, 1.52, 1.54), (1.2, 1.22, 1.24), [NOT_REPRODUCED, NOT_REPRODUCED]),
        # seeds on both sides of 1; LNS's R on both sides of Pre-LN's
        ((0.5, 1.5, 0.9), (0.6, 1.4, 0.8), [UNDERPOWERED, UNDERPOWERED]),
    ],
)
def test_curse_of_depth_outcomes(pre, lns, result):
    v = judge("curse_of_depth", arm("pre", pre) + arm("lns", lns))
    assert outcomes(v) == result, v.markdown()
    measured = dict(v.measured)
    assert measured["Pre-LN: Δ loss removing block 1 .. 12"].startswith("1.5, 0.5, 1, 1, ")
    assert measured["LNS: R, deeper half / shallower half"].startswith(f"{sum(lns) / 3:.3g} [")
    assert "final val loss" in v.markdown() and "blocks N/2+1 .. N" in v.checks[0].condition


def test_a_failed_run_takes_both_sub_claims_out_of_regime():
    runs = arm("pre", (0.2, 0.21, 0.22)) + arm("lns", (0.8, None, 0.84))
    v = judge("curse_of_depth", runs)
    assert outcomes(v) == [OUT_OF_REGIME, OUT_OF_REGIME], v.markdown()
    assert all("Pre-LN 0/3, LNS 1/3" in c.measured for c in v.checks)
    assert v.checks[0].measured.startswith("0.21 [")  # the numbers still reported


def test_curse_of_depth_says_what_to_run():
    runs = arm("pre", (0.2, 0.21, 0.22)) + arm("lns", (0.8, 0.82, 0.84))
    del runs[0].summary["layer_removal"]
    v = judge("curse_of_depth", runs)
    assert v.outcome == INCONCLUSIVE and "diag.layer_removal=true" in v.note
    v = judge("curse_of_depth", arm("pre", (0.2, 0.21, 0.22)))
    assert v.outcome == INCONCLUSIVE and "norm=lns" in v.note


def test_the_curse_of_depth_preset_is_judged(tmp_path, cli_env, text_files):
    """Depth 2 (one block per half), 6 steps: both sub-claims decided or underpowered, and the
    removal losses in each run's record."""
    verdict = judged("curse_of_depth", [], tmp_path, cli_env, text_files)
    assert len(verdict["checks"]) == 2 and len(verdict["records"]) == 4
    assert all(c["outcome"] != OUT_OF_REGIME for c in verdict["checks"]), verdict
    assert "LNS: Δ loss removing block 1 .. 2" in dict(verdict["measured"])
