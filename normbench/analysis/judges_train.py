"""The judges of the claims measured by training runs (claims 4-7 of
normbench/analysis/claims.py), on the runs' records (normbench.analysis.records.Run). Each
fills a Verdict in (normbench/analysis/verdict.py: the thresholds and the rules) or raises
Missing.

Runs are selected by the axes' short names (normbench/run/axes.py: `norm`, `norm_kind`,
`depth`, `warmup`, `lr`, ...).

A run that failed to train counts as a failure wherever a claim says "diverges": one that
diverged, and one that collapsed onto the unigram predictor (status `collapsed`,
normbench/run/collapse.py: it trained to the end but learned nothing beyond the token
frequencies). Neither run's loss enters a mean: the losses compared are those of the runs
that trained (`_final_losses`); the texts show the collapsed runs' losses apart. A failed
run is an observed event, not an estimate: it decides a condition about failing by itself,
and the condition's text counts the failed seeds.

The unit of every interval is a run (a seed): a loss difference is `stats.diff_interval` of
the two arms' final losses, a difference of two depth penalties resamples its four arms on
their own, a growth is a ratio of means over the runs (`stats.ratio_of_means`), a speed-up
the ratio of two arms' mean tokens/s (`stats.mean_ratio`, each arm resampled on its own), and
"matches" is `stats.tost` with the margin MATCH.
"""

from __future__ import annotations

import statistics
from typing import Any

from normbench.analysis.stats import (
    FAILS,
    HOLDS,
    Interval,
    bootstrap,
    bootstrap_samples,
    diff_interval,
    exceeds,
    falls_below,
    finite,
    growth_ratio,
    mean_ratio,
    pm,
    ratio_of_means,
    tost,
)
from normbench.analysis.verdict import (
    DELTA,
    MATCH,
    MUCH,
    OUT_OF_REGIME,
    PERI_TOKENS,
    SPEEDUP,
    Check,
    Missing,
    Verdict,
)
from normbench.run.axes import long

RESCUES = ("deepnorm", "admin", "b2t", "mix")  # the placements said to keep depth trainable
NAMES = {
    "post": "Post-LN",
    "pre": "Pre-LN",
    "deepnorm": "DeepNorm",
    "admin": "Admin",
    "b2t": "B2T",
    "mix": "Mix-LN",
}


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


def _loss_diff(a: list[Any], b: list[Any]) -> Interval:
    """mean final loss of the runs a that trained minus that of the runs b, its interval."""
    return diff_interval(_final_losses(a)[0], _final_losses(b)[0])


def _need_runs(runs: list[Any], what: str, **where: Any) -> list[Any]:
    found = _select(runs, **where)
    if not found:
        given = " ".join(f"{k}={v}" for k, v in where.items())
        raise Missing(f"no runs with {given} ({what})")
    return found


def _warmup_check(norm: str, without: list[Any], with_w: list[Any], at: str) -> Check:
    """Post-LN: fails without warmup (a failed seed, or a loss DELTA worse); Pre-LN: does
    not (no failed seed, and a loss less than DELTA worse)."""
    diff, failed = _loss_diff(without, with_w), _failed(without)
    text = (
        f"without - with warmup: {diff.text()} nats; diverged or collapsed without warmup "
        f"{failed}/{len(without)}"
    )
    if norm == "post":
        return Check.decided(
            f"Post-LN without warmup diverges or collapses, or ends at least {DELTA} nats worse "
            f"than with it{at}",
            text,
            HOLDS if failed else exceeds(diff, DELTA),
        )
    return Check.decided(
        f"Pre-LN without warmup neither diverges, collapses nor ends {DELTA} nats worse{at}",
        text,
        FAILS if failed else falls_below(diff, DELTA),
    )


def judge_warmup(v: Verdict, runs: list[Any]) -> None:
    warmups = sorted({_cfg(r, "optim.warmup_steps") for r in runs})
    if 0 not in warmups or len(warmups) < 2:
        raise Missing("the claim compares optim.warmup_steps=0 with a warmup; sweep both")
    w = warmups[-1]
    lrs = sorted({_cfg(r, "optim.lr") for r in runs})
    for lr in lrs:
        at = f" (lr {lr:g})" if len(lrs) > 1 else ""
        for norm in ("post", "pre"):
            without = _need_runs(runs, "no warmup", norm=norm, warmup=0, lr=lr)
            with_w = _need_runs(runs, f"warmup {w}", norm=norm, warmup=w, lr=lr)
            v.measured.append((f"{norm}, no warmup{at}: final val loss", _loss_text(without)))
            v.measured.append((f"{norm}, warmup {w}{at}: final val loss", _loss_text(with_w)))
            v.checks.append(_warmup_check(norm, without, with_w, at))


Arm = tuple[list[Any], list[Any]]  # a placement's runs at the shallow and at the deep depth


def _depth_arms(v: Verdict, runs: list[Any], lo: int, hi: int) -> dict[str, Arm]:
    """Per placement with runs at both depths, its runs at each; their losses go into the
    verdict, and the placements lacking a depth into its note."""
    arms: dict[str, Arm] = {}
    norms = sorted({_cfg(r, "norm.name") for r in runs})
    if "post" not in norms:
        raise Missing("no norm=post runs")
    incomplete = []
    for norm in norms:
        shallow = _select(runs, norm=norm, depth=lo)
        deep = _select(runs, norm=norm, depth=hi)
        if not (shallow and deep):  # e.g. a sweep cut short: judge the placements it has
            if norm == "post":
                raise Missing(f"norm=post needs runs at depth {lo} and {hi}")
            incomplete.append(norm)
            continue
        v.measured.append((f"{norm} depth {lo}: final val loss", _loss_text(shallow)))
        v.measured.append((f"{norm} depth {hi}: final val loss", _loss_text(deep)))
        arms[norm] = (shallow, deep)
    if incomplete:
        v.note = f"left out, lacking runs at depth {lo} or {hi}: {', '.join(incomplete)}"
    return arms


def _penalty(samples: list[list[float]]) -> float:
    """mean(deep losses) - mean(shallow losses): the loss that depth costs."""
    return statistics.fmean(samples[0]) - statistics.fmean(samples[1])


def _penalty_contrast(arm: Arm, ref: Arm | None) -> Interval:
    """The arm's depth penalty minus Pre-LN's (without Pre-LN, minus 0), its interval: the
    final losses at each depth of each arm resampled on their own."""
    samples = [_final_losses(arm[1])[0], _final_losses(arm[0])[0]]
    if ref is None:
        return bootstrap_samples(samples, _penalty)
    samples += [_final_losses(ref[1])[0], _final_losses(ref[0])[0]]
    return bootstrap_samples(samples, lambda s: _penalty(s[:2]) - _penalty(s[2:]))


def _shallow_gate(arm: Arm, ref: Arm | None, lo: int) -> str:
    """Why the placement does not train at the shallow depth ('' when it does): a seed
    diverged or collapsed there, or its loss there is wholly DELTA or more above Pre-LN's.
    The reference, Pre-LN, passes the same gate: where a seed of it failed at the shallow
    depth, no arm is compared with it."""
    if ref and _failed(ref[0]):
        return f"Pre-LN, the reference, does not train at depth {lo}: {_loss_text(ref[0])}"
    shallow = arm[0]
    gap = _loss_diff(shallow, ref[0]) if ref else None
    behind = gap is not None and exceeds(gap, DELTA) == HOLDS
    if not (_failed(shallow) or behind):
        return ""
    text = f"does not train at depth {lo}: {_loss_text(shallow)}"
    return text + (f"; minus Pre-LN's: {gap.text()} nats (>= {DELTA})" if behind else "")


def _breakdown_check(norm: str, arm: Arm, ref: Arm | None, lo: int, hi: int) -> Check:
    ref_name = "Pre-LN's" if ref else "0"
    name = NAMES.get(norm, norm)
    if norm == "post":
        condition = (
            f"Post-LN breaks down at depth {hi}: it diverges or collapses, or its loss(depth "
            f"{hi}) - loss(depth {lo}) exceeds {ref_name} by >= {DELTA} nats"
        )
    else:
        condition = (
            f"{name} stays trainable at depth {hi}: no divergence or collapse, and its depth "
            f"penalty exceeds {ref_name} by < {DELTA} nats"
        )
    gate = _shallow_gate(arm, ref, lo)
    if gate:
        return Check(condition, gate, OUT_OF_REGIME)
    contrast, failed = _penalty_contrast(arm, ref), _failed(arm[1])
    text = (
        f"loss(depth {hi}) - loss(depth {lo}) minus {ref_name}: {contrast.text()} nats; "
        f"diverged or collapsed at depth {hi}: {failed}/{len(arm[1])}"
    )
    if norm == "post":
        return Check.decided(condition, text, HOLDS if failed else exceeds(contrast, DELTA))
    return Check.decided(condition, text, FAILS if failed else falls_below(contrast, DELTA))


def judge_depth_breakdown(v: Verdict, runs: list[Any]) -> None:
    depths = sorted({_cfg(r, "depth") for r in runs})
    if len(depths) < 2:
        raise Missing("the claim compares depths; sweep at least two")
    lo, hi = depths[0], depths[-1]
    arms = _depth_arms(v, runs, lo, hi)
    ref = arms.get("pre")
    if ref:
        penalty = _loss_diff(ref[1], ref[0])
        v.measured.append((f"pre: loss(depth {hi}) - loss(depth {lo})", f"{penalty.text()} nats"))
    out = []  # the placements that do not train at the shallow depth
    for norm in (n for n in ("post", *RESCUES) if n in arms):
        v.checks.append(_breakdown_check(norm, arms[norm], ref, lo, hi))
        if v.checks[-1].outcome == OUT_OF_REGIME:
            out.append(NAMES.get(norm, norm))
    if out:
        note = (
            f"out of regime: {', '.join(out)} already fail(s) at depth {lo}, so this setting "
            "cannot show what depth does to it: give it more warmup (optim.warmup_steps) or a "
            "lower optim.lr"
        )
        v.note = f"{v.note}; {note}" if v.note else note


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
