"""The judges of the claims measured by training runs (claims 4-7 of
normbench/analysis/claims.py), on the runs' records (normbench.analysis.records.Run). Each
fills a Verdict in (normbench/analysis/verdict.py: the thresholds) or raises Missing.

Runs are selected by the axes' short names (normbench/run/axes.py: `norm`, `norm_kind`,
`depth`, `warmup`, `lr`, ...).

A run that failed to train counts as a failure wherever a claim says "diverges": one that
diverged, and one that collapsed onto the unigram predictor (status `collapsed`,
normbench/run/collapse.py: it trained to the end but learned nothing beyond the token
frequencies). Neither run's loss enters a mean: the losses compared are those of the runs
that trained (`_final_losses`); the texts show the collapsed runs' losses apart.
"""

from __future__ import annotations

import math
from typing import Any

from normbench.analysis.stats import mean_or_nan, pm, stderr_diff
from normbench.analysis.verdict import DELTA, MATCH, MUCH, Check, Missing, Verdict
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


def _differs(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """mean(a) - mean(b), its standard error, and whether it counts (>= DELTA and >= 2 SE)."""
    d = mean_or_nan(a) - mean_or_nan(b)
    se = stderr_diff(a, b)
    return d, se, d >= max(DELTA, 2 * se)


def _need_runs(runs: list[Any], what: str, **where: Any) -> list[Any]:
    found = _select(runs, **where)
    if not found:
        given = " ".join(f"{k}={v}" for k, v in where.items())
        raise Missing(f"no runs with {given} ({what})")
    return found


def judge_warmup(v: Verdict, runs: list[Any]) -> None:
    warmups = sorted({_cfg(r, "optim.warmup_steps") for r in runs})
    if 0 not in warmups or len(warmups) < 2:
        raise Missing("the claim compares optim.warmup_steps=0 with a warmup; sweep both")
    w = warmups[-1]
    for lr in sorted({_cfg(r, "optim.lr") for r in runs}):
        at = f" (lr {lr:g})" if len({_cfg(r, "optim.lr") for r in runs}) > 1 else ""
        for norm in ("post", "pre"):
            without = _need_runs(runs, "no warmup", norm=norm, warmup=0, lr=lr)
            with_w = _need_runs(runs, f"warmup {w}", norm=norm, warmup=w, lr=lr)
            v.measured.append((f"{norm}, no warmup{at}: final val loss", _loss_text(without)))
            v.measured.append((f"{norm}, warmup {w}{at}: final val loss", _loss_text(with_w)))
            a, n_div = _final_losses(without)
            b, _ = _final_losses(with_w)
            d, se, counts = _differs(a, b) if a and b else (math.nan, math.nan, False)
            diff = (
                f"{d:+.3g} ± {se:.2g} nats; diverged or collapsed without warmup "
                f"{n_div}/{len(without)}"
            )
            if norm == "post":
                v.checks.append(
                    Check(
                        f"Post-LN without warmup diverges or collapses, or ends at least "
                        f"{DELTA} nats (and 2 SE) worse than with it{at}",
                        diff,
                        n_div > 0 or counts,
                    )
                )
            else:
                v.checks.append(
                    Check(
                        f"Pre-LN without warmup neither diverges, collapses nor ends {DELTA} "
                        f"nats worse{at}",
                        diff,
                        n_div == 0 and bool(a) and not (d >= DELTA),
                    )
                )


def _depth_penalties(v: Verdict, runs: list[Any], lo: int, hi: int) -> dict[str, Any]:
    """Per placement with runs at both depths: loss(depth hi) - loss(depth lo), its standard
    error, and how many runs diverged or collapsed at depth hi; the losses go into the
    verdict."""
    penalty: dict[str, tuple[float, float, int]] = {}
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
        a, n_div = _final_losses(deep)
        b, _ = _final_losses(shallow)
        d = mean_or_nan(a) - mean_or_nan(b) if a and b else math.nan
        penalty[norm] = (d, stderr_diff(a, b) if a and b else math.nan, n_div)
    if incomplete:
        v.note = f"left out, lacking runs at depth {lo} or {hi}: {', '.join(incomplete)}"
    return penalty


def _need_shallow_post(runs: list[Any], lo: int) -> None:
    """The claim presupposes a Post-LN that trains when shallow: one that already fails at
    the shallow depth (diverges or collapses, or ends DELTA nats and 2 SE behind Pre-LN)
    cannot break down (Missing)."""
    post_lo, post_lo_div = _final_losses(_select(runs, norm="post", depth=lo))
    pre_lo, _ = _final_losses(_select(runs, norm="pre", depth=lo))
    if post_lo_div or (pre_lo and post_lo and _differs(post_lo, pre_lo)[2]):
        raise Missing(
            f"Post-LN already fails at depth {lo} ({_loss_text(_select(runs, norm='post', depth=lo))}"
            f"; Pre-LN {pm(pre_lo, 4)}), so this setting cannot show it breaking down with "
            "depth; give it more warmup (optim.warmup_steps) or a lower optim.lr"
        )


def judge_depth_breakdown(v: Verdict, runs: list[Any]) -> None:
    depths = sorted({_cfg(r, "depth") for r in runs})
    if len(depths) < 2:
        raise Missing("the claim compares depths; sweep at least two")
    lo, hi = depths[0], depths[-1]
    penalty = _depth_penalties(v, runs, lo, hi)  # loss(hi) - loss(lo), its SE, failed
    _need_shallow_post(runs, lo)
    ref, ref_se, _ = penalty.get("pre", (0.0, 0.0, 0))
    ref_name = f"Pre-LN's ({ref:+.3g})" if "pre" in penalty else "0"

    def text(norm: str) -> str:
        d, se, n = penalty[norm]
        return f"{d:+.3g} ± {se:.2g} nats; diverged or collapsed at depth {hi}: {n}"

    d, se, n = penalty["post"]
    v.checks.append(
        Check(
            f"Post-LN breaks down at depth {hi}: it diverges or collapses, or its loss(depth {hi}) - "
            f"loss(depth {lo}) exceeds {ref_name} by >= {DELTA} nats and 2 SE",
            text("post"),
            n > 0 or (d - ref >= max(DELTA, 2 * math.hypot(se, ref_se))),
        )
    )
    for norm in ("deepnorm", "admin", "b2t", "mix"):
        if norm in penalty:
            d, se, n = penalty[norm]
            v.checks.append(
                Check(
                    f"{norm} stays trainable at depth {hi}: no divergence or collapse, and its depth "
                    f"penalty exceeds {ref_name} by < {DELTA} nats",
                    text(norm),
                    n == 0 and not math.isnan(d) and d - ref < DELTA,
                )
            )


def _residual_growth(run: Any) -> float | None:
    """The residual stream's RMS at the output over that entering block 1, at the last
    diagnostics step of the run."""
    diag = run.summary.get("diag") or {}
    first, out = diag.get("resid_rms/block_01"), diag.get("resid_rms/out")
    if first is None or out is None or not first:
        return None
    return float(out) / float(first)


def judge_peri_growth(v: Verdict, runs: list[Any]) -> None:
    growth: dict[str, list[float]] = {}
    for norm in ("pre", "peri"):
        chosen = _need_runs(runs, "the claim compares Pre-LN with Peri-LN", norm=norm)
        measured = [(r, _residual_growth(r)) for r in chosen]
        measured = [(r, g) for r, g in measured if g is not None]
        if not measured:
            raise Missing(f"the norm={norm} runs have no diagnostics; run with diag.every > 0")
        values = growth[norm] = [g for _, g in measured]
        outs = [float(r.summary["diag"]["resid_rms/out"]) for r, _ in measured]
        v.measured.append((f"{norm}: residual RMS at the output, end of training", pm(outs)))
        v.measured.append((f"{norm}: residual RMS output / block 1", pm(values)))
        v.measured.append((f"{norm}: final val loss", _loss_text(chosen)))
    pre, peri = mean_or_nan(growth["pre"]), mean_or_nan(growth["peri"])
    v.checks.append(
        Check(
            f"Pre-LN's residual stream grows across the layers at least {MUCH}x more than "
            "Peri-LN's (ratio of output / block-1 RMS growths)",
            f"{pre / peri:.3g} ({pre:.3g} vs {peri:.3g})",
            pre >= MUCH * peri,
        )
    )


def judge_rmsnorm(v: Verdict, runs: list[Any]) -> None:
    ln = _need_runs(runs, "norm.kind=layernorm", norm="pre", norm_kind="layernorm")
    rms = _need_runs(runs, "norm.kind=rmsnorm", norm="pre", norm_kind="rmsnorm")
    v.measured.append(("Pre-LN, LayerNorm: final val loss", _loss_text(ln)))
    v.measured.append(("Pre-LN, RMSNorm: final val loss", _loss_text(rms)))
    speed = [mean_or_nan(float(r.summary.get("tokens_per_s") or 0) for r in x) for x in (rms, ln)]
    if all(speed):
        v.measured.append(("tokens/s, RMSNorm / LayerNorm", f"{speed[0] / speed[1]:.3g}"))
    a, div_a = _final_losses(rms)
    b, div_b = _final_losses(ln)
    d = mean_or_nan(a) - mean_or_nan(b) if a and b else math.nan
    se = stderr_diff(a, b) if a and b else math.nan
    tol = max(MATCH, 2 * se) if not math.isnan(se) else MATCH
    v.checks.append(
        Check(
            f"RMSNorm's final val loss matches LayerNorm's: the absolute difference <= max({MATCH} nats, "
            "2 SE), neither diverging nor collapsing",
            f"{d:+.3g} ± {se:.2g} nats (tolerance {tol:.2g}); diverged or collapsed {div_a + div_b}",
            div_a + div_b == 0 and abs(d) <= tol,
        )
    )
