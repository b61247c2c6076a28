"""The judges of the claims measured by training runs at fixed settings (claims 6, 7 and 13
of normbench/analysis/claims/registry.py; those judged on learning-rate sweeps are in
normbench/analysis/claims/lr.py), on
the runs' records (normbench.analysis.records.Run). Each fills a Verdict in
(normbench/analysis/claims/verdict.py: the thresholds and the rules) or raises Missing.

Runs are selected by the axes' short names (normbench/run/axes.py: `norm`, `norm_kind`,
`depth`, `warmup`, `lr`, ...).

A run that failed to train counts as a failure wherever a claim says "diverges": one that
diverged, and one that collapsed onto the unigram predictor (status `collapsed`,
normbench/run/monitor/collapse.py: it trained to the end but learned nothing beyond the token
frequencies). Neither run's loss enters a mean: the losses compared are those of the runs
that trained (`_final_losses`); the texts show the collapsed runs' losses apart. A failed
run is an observed event, not an estimate: it decides a condition about failing by itself,
and the condition's text counts the failed seeds.

The unit of every interval is a run (a seed): a growth is a ratio of means over the runs
(`stats.ratio_of_means`), a speed-up the ratio of two arms' mean tokens/s (`stats.mean_ratio`,
each arm resampled on its own), and "matches" is `stats.tost` with the margin MATCH.

Claim 13, the curse of depth (Sun et al. 2025, 2502.05795), on training runs measured
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

from normbench.analysis.claims.verdict import (
    MATCH,
    MUCH,
    OUT_OF_REGIME,
    PERI_TOKENS,
    SPEEDUP,
    Check,
    Missing,
    Verdict,
)
from normbench.analysis.stats import (
    FAILS,
    above,
    bootstrap,
    bootstrap_samples,
    exceeds,
    falls_below,
    finite,
    growth_ratio,
    mean_ratio,
    pm,
    ratio_of_means,
    tost,
)
from normbench.run.axes import long


def _cfg(run: Any, key: str) -> Any:
    return run.config.get(key)


def _final_losses(runs: list[Any]) -> tuple[list[float], int]:
    """Final validation losses of the runs that neither diverged nor collapsed, and how many
    did either (the runs that failed to train)."""
    losses = [
        float(r.summary["val_loss"])
        for r in runs
        if not (r.diverged or r.collapsed) and r.summary.get("val_loss") is not None
    ]
    return losses, sum(r.diverged or r.collapsed for r in runs)


def _failed_text(runs: list[Any]) -> str:
    """`diverged k/n`, and `, collapsed c/n (val/loss x; unigram u)` when any collapsed."""
    n = len(runs)
    text = f"diverged {sum(r.diverged for r in runs)}/{n}"
    collapsed = [r for r in runs if r.collapsed]
    if collapsed:
        losses = [float(r.summary["val_loss"]) for r in collapsed if r.summary.get("val_loss")]
        unigram = [r.unigram_val_ce for r in collapsed if r.unigram_val_ce is not None]
        text += f", collapsed {len(collapsed)}/{n} (val/loss {pm(losses, 4)}"
        text += f"; unigram {pm(unigram, 4)})" if unigram else ")"
    return text


def _select(runs: list[Any], **where: Any) -> list[Any]:
    """The runs whose axes (by short name: norm=, norm_kind=, depth=, ...) have the values."""
    return [r for r in runs if all(_cfg(r, long(k)) == value for k, value in where.items())]


def _loss_text(runs: list[Any]) -> str:
    losses, _ = _final_losses(runs)
    return f"{pm(losses, 4)}, {_failed_text(runs)}"


def _failed(runs: list[Any]) -> int:
    """How many of the runs diverged or collapsed."""
    return _final_losses(runs)[1]


def _need_runs(runs: list[Any], what: str, **where: Any) -> list[Any]:
    found = _select(runs, **where)
    if not found:
        given = " ".join(f"{k}={v}" for k, v in where.items())
        raise Missing(f"no runs with {given} ({what})")
    return found


def _residual_growth(run: Any) -> tuple[float, float] | None:
    """The residual stream's RMS at the output and entering block 1, at the last diagnostics
    step of the run (their ratio is its growth across the layers)."""
    diag = run.summary.get("diag") or {}
    first, out = diag.get("resid_rms/block_01"), diag.get("resid_rms/out")
    if first is None or out is None or not first:
        return None
    return float(out), float(first)


def _tokens(run: Any) -> float | None:
    """The tokens a run trained on: its summary's `tokens`, else steps x batch x context."""
    if run.summary.get("tokens") is not None:
        return float(run.summary["tokens"])
    sizes = (run.summary.get("steps"), _cfg(run, "train.batch_size"), _cfg(run, "model.context"))
    return None if None in sizes else float(sizes[0] * sizes[1] * sizes[2])


def _budget_gate(runs: list[Any]) -> str:
    """Why the runs are outside Kim et al.'s regime ('' when every run trained on at least
    PERI_TOKENS tokens, 1 % of their 30B)."""
    tokens = [_tokens(r) for r in runs]
    if None in tokens:
        return "the tokens trained are not recorded"
    fewest = min(t for t in tokens if t is not None)
    if fewest >= PERI_TOKENS:
        return ""
    return f"{fewest / 1e6:.3g}M tokens < {PERI_TOKENS / 1e8:g}e8, 1 % of Kim et al.'s 30B"


def judge_peri_growth(v: Verdict, runs: list[Any]) -> None:
    """Pre-LN's growth of the residual RMS from block 1's input to the output over Peri-LN's,
    at least MUCH; out of regime for a run of fewer than PERI_TOKENS tokens (the numbers are
    reported). Peri-LN normalizes the embedding (Norm_e), so its block 1 reads a unit-RMS
    stream; Pre-LN's block 1 reads the raw embedding."""
    units: dict[str, list[tuple[float, float]]] = {}
    chosen: list[Any] = []
    for norm in ("pre", "peri"):
        arm = _need_runs(runs, "the claim compares Pre-LN with Peri-LN", norm=norm)
        units[norm] = [g for g in map(_residual_growth, arm) if g is not None]
        if not units[norm]:
            raise Missing(f"the norm={norm} runs have no diagnostics; run with diag.every > 0")
        growth = bootstrap(units[norm], ratio_of_means)
        v.measured.append(
            (f"{norm}: residual RMS at the output, end of training", pm(o for o, _ in units[norm]))
        )
        v.measured.append((f"{norm}: residual RMS output / block 1", growth.text()))
        v.measured.append((f"{norm}: final val loss", _loss_text(arm)))
        chosen += arm
    ratio = bootstrap_samples([units["pre"], units["peri"]], growth_ratio)
    condition = (
        f"Pre-LN's residual stream grows across the layers at least {MUCH}x more than "
        "Peri-LN's (ratio of output / block-1 RMS growths)"
    )
    gate = _budget_gate(chosen)
    if gate:
        v.checks.append(
            Check(condition, f"{ratio.text()}; {gate}: reported, not judged", OUT_OF_REGIME)
        )
    else:
        v.checks.append(Check.decided(condition, ratio.text(), exceeds(ratio, MUCH)))
    v.note = (
        "Peri-LN's block 1 reads its normalized embedding (Norm_e, unit RMS); Pre-LN's the raw one"
    )


def _machine(runs: list[Any]) -> str:
    """Where the runs were timed, from their records: the device, the CPU threads and the
    precision (with why it was chosen: under precision=auto the reason names the CPU)."""

    def values(key: str) -> str:
        found = sorted({str(r.summary[key]) for r in runs if r.summary.get(key) is not None})
        return ", ".join(found)

    precision = values("precision") or ", ".join(sorted({str(_cfg(r, "precision")) for r in runs}))
    text = f"on {values('device') or 'an unrecorded device'}"
    text += f", {values('threads')} threads" if values("threads") else ""
    text += f", {precision}"
    return text + (f" ({values('precision_reason')})" if values("precision_reason") else "")


def _speed_check(rms: list[Any], ln: list[Any]) -> Check:
    """7b: tokens/s of RMSNorm over LayerNorm (a ratio of the means over the runs, each kind
    resampled on its own) at least SPEEDUP; the machine and precision in the text."""
    speeds = [finite(r.summary.get("tokens_per_s") for r in x) for x in (rms, ln)]
    ratio = bootstrap_samples(speeds, mean_ratio)
    return Check.decided(
        f"RMSNorm is faster: tokens/s RMSNorm / LayerNorm at least 1/0.93 = {SPEEDUP:.3g} "
        "(7 % less running time)",
        f"{ratio.text()}; {_machine(rms + ln)}",
        exceeds(ratio, SPEEDUP),
    )


def judge_rmsnorm(v: Verdict, runs: list[Any]) -> None:
    """7a: the final losses match (TOST, MATCH; a failed run fails it); 7b: RMSNorm's
    tokens/s over LayerNorm's at least SPEEDUP."""
    ln = _need_runs(runs, "norm.kind=layernorm", norm="pre", norm_kind="layernorm")
    rms = _need_runs(runs, "norm.kind=rmsnorm", norm="pre", norm_kind="rmsnorm")
    v.measured.append(("Pre-LN, LayerNorm: final val loss", _loss_text(ln)))
    v.measured.append(("Pre-LN, RMSNorm: final val loss", _loss_text(rms)))
    for name, arm in (("LayerNorm", ln), ("RMSNorm", rms)):
        v.measured.append(
            (f"Pre-LN, {name}: tokens/s", pm(r.summary.get("tokens_per_s") for r in arm))
        )
    same = tost(_final_losses(rms)[0], _final_losses(ln)[0], MATCH)
    failed = _failed(rms) + _failed(ln)
    v.checks.append(
        Check.decided(
            f"RMSNorm's final val loss matches LayerNorm's: equivalent within ±{MATCH} nats "
            "(TOST), neither diverging nor collapsing",
            f"RMSNorm - LayerNorm: {same.text()}; diverged or collapsed {failed}/"
            f"{len(rms) + len(ln)}",
            FAILS if failed else same.decision,
        )
    )
    v.checks.append(_speed_check(rms, ln))


# --- claim 13: the curse of depth, on the layer-removal costs ---------------------------------

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
