"""The judge of the curse of depth (Sun et al. 2025, 2502.05795), on training runs measured
with `diag.layer_removal` (normbench/run/removal.py): in a trained Pre-LN model the deeper
layers matter less, and LayerNorm Scaling (LNS) makes them matter more.

Per run (a seed, the unit of every interval): Δ_l = the validation loss with block l removed
(its input passed on unchanged) minus the full model's, and

    R = mean Δ over the deeper half of the blocks / mean Δ over the shallower half,

the halves of N blocks being blocks 1 .. floor(N/2) and floor(N/2)+1 .. N (blocks 1-6 and
7-12 at the pre-registered depth 12; an odd depth puts its middle block in the deeper half).

- 13a: Pre-LN's R below 1: the mean over seeds of the per-seed R, bootstrapped over seeds
  (`stats.falls_below`);
- 13b: R(LNS) / R(Pre-LN) above 1: the ratio of the two arms' mean R, each arm's seeds
  resampled on their own (`stats.bootstrap_samples`, `stats.mean_ratio`), strictly above 1
  (`stats.above`).

Gate (docs/reproductions.md: "both trained"): a run of either placement that diverged or
collapsed takes both sub-claims out of regime, the counts in their text.
"""

from __future__ import annotations

import statistics
from typing import Any

from normbench.analysis.judges_train import _failed, _loss_text, _need_runs
from normbench.analysis.stats import above, bootstrap, bootstrap_samples, falls_below, mean_ratio
from normbench.analysis.verdict import OUT_OF_REGIME, Check, Missing, Verdict

ARMS = {"pre": "Pre-LN", "lns": "LNS"}
RUN_IT = "train with diag.layer_removal=true (normbench train -m experiment=curse_of_depth)"


def removal_costs(run: Any) -> list[float]:
    """Δ_l for l = 1 .. N: the loss without block l minus the full model's."""
    losses = run.summary["layer_removal"]
    blocks = sorted(k for k in losses if k.startswith("block_"))
    return [float(losses[k]) - float(losses["full"]) for k in blocks]


def depth_ratio(costs: list[float]) -> float:
    """R: mean Δ of the deeper half over mean Δ of the shallower half (NaN for a zero
    denominator)."""
    half = len(costs) // 2
    shallow = statistics.fmean(costs[:half])
    return statistics.fmean(costs[half:]) / shallow if shallow else float("nan")


def _profile_text(profiles: list[list[float]]) -> str:
    """Δ_1, ..., Δ_N, each the mean over seeds, in three significant digits."""
    means = [statistics.fmean(column) for column in zip(*profiles, strict=True)]
    return ", ".join(f"{m:.3g}" for m in means)


def _arm(v: Verdict, runs: list[Any], norm: str) -> tuple[list[Any], list[float]]:
    """The placement's runs and the per-seed R of those that trained; their numbers into the
    verdict. Missing when a run that trained has no layer-removal losses."""
    arm = _need_runs(runs, f"the claim compares Pre-LN with LNS; {RUN_IT}", norm=norm)
    trained = [r for r in arm if not (r.diverged or r.collapsed)]
    lacking = [r for r in trained if not r.summary.get("layer_removal")]
    if lacking:
        raise Missing(f"{len(lacking)} norm={norm} run(s) have no layer_removal; {RUN_IT}")
    profiles = [removal_costs(r) for r in trained]
    ratios = [depth_ratio(p) for p in profiles]
    name, r = ARMS[norm], bootstrap(ratios, statistics.fmean)
    if profiles:
        blocks = f"block 1 .. {len(profiles[0])}"
        v.measured.append((f"{name}: Δ loss removing {blocks}", _profile_text(profiles)))
    v.measured.append((f"{name}: R, deeper half / shallower half", r.text()))
    v.measured.append((f"{name}: final val loss", _loss_text(arm)))
    return arm, ratios


LESS = (
    "In a trained Pre-LN model the deeper layers matter less: R (the mean loss increase from "
    "removing one of blocks N/2+1 .. N over that from removing one of blocks 1 .. N/2) below 1"
)
MORE = "LNS makes the deeper layers matter more: R(LNS) / R(Pre-LN) above 1"


def judge_curse_of_depth(v: Verdict, runs: list[Any]) -> None:
    """13a Pre-LN's R below 1; 13b R(LNS) / R(Pre-LN) above 1; gate: both placements trained."""
    pre, r_pre = _arm(v, runs, "pre")
    lns, r_lns = _arm(v, runs, "lns")
    mean_r = bootstrap(r_pre, statistics.fmean)
    ratio = bootstrap_samples([r_lns, r_pre], mean_ratio)
    failed = [(ARMS[n], _failed(arm), len(arm)) for n, arm in (("pre", pre), ("lns", lns))]
    if any(k for _, k, _ in failed):
        counts = ", ".join(f"{name} {k}/{n}" for name, k, n in failed)
        gate = f"diverged or collapsed: {counts}; both placements must train"
        v.checks.append(Check(LESS, f"{mean_r.text()}; {gate}", OUT_OF_REGIME))
        v.checks.append(Check(MORE, f"{ratio.text()}; {gate}", OUT_OF_REGIME))
        return
    v.checks.append(Check.decided(LESS, mean_r.text(), falls_below(mean_r, 1.0)))
    v.checks.append(Check.decided(MORE, ratio.text(), above(ratio, 1.0)))
