"""The judges of the claims measured by training runs at fixed settings (claims 6 and 7 of
normbench/analysis/claims.py; those judged on learning-rate sweeps are in judges_lr.py), on
the runs' records (normbench.analysis.records.Run). Each fills a Verdict in
(normbench/analysis/verdict.py: the thresholds and the rules) or raises Missing.

Runs are selected by the axes' short names (normbench/run/axes.py: `norm`, `norm_kind`,
`depth`, `warmup`, `lr`, ...).

A run that failed to train counts as a failure wherever a claim says "diverges": one that
diverged, and one that collapsed onto the unigram predictor (status `collapsed`,
normbench/run/collapse.py: it trained to the end but learned nothing beyond the token
frequencies). Neither run's loss enters a mean: the losses compared are those of the runs
that trained (`_final_losses`); the texts show the collapsed runs' losses apart. A failed
run is an observed event, not an estimate: it decides a condition about failing by itself,
and the condition's text counts the failed seeds.

The unit of every interval is a run (a seed): a growth is a ratio of means over the runs
(`stats.ratio_of_means`), and "matches" is `stats.tost` with the margin MATCH.
"""

from __future__ import annotations

from typing import Any

from normbench.analysis.stats import (
    FAILS,
    bootstrap,
    bootstrap_samples,
    exceeds,
    growth_ratio,
    mean_or_nan,
    pm,
    ratio_of_means,
    tost,
)
from normbench.analysis.verdict import MATCH, MUCH, Check, Missing, Verdict
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


def judge_peri_growth(v: Verdict, runs: list[Any]) -> None:
    units: dict[str, list[tuple[float, float]]] = {}
    for norm in ("pre", "peri"):
        chosen = _need_runs(runs, "the claim compares Pre-LN with Peri-LN", norm=norm)
        units[norm] = [g for g in map(_residual_growth, chosen) if g is not None]
        if not units[norm]:
            raise Missing(f"the norm={norm} runs have no diagnostics; run with diag.every > 0")
        growth = bootstrap(units[norm], ratio_of_means)
        v.measured.append(
            (f"{norm}: residual RMS at the output, end of training", pm(o for o, _ in units[norm]))
        )
        v.measured.append((f"{norm}: residual RMS output / block 1", growth.text()))
        v.measured.append((f"{norm}: final val loss", _loss_text(chosen)))
    ratio = bootstrap_samples([units["pre"], units["peri"]], growth_ratio)
    v.checks.append(
        Check.decided(
            f"Pre-LN's residual stream grows across the layers at least {MUCH}x more than "
            "Peri-LN's (ratio of output / block-1 RMS growths)",
            ratio.text(),
            exceeds(ratio, MUCH),
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
