"""The judge of claim 3 (Liu et al. 2020, 2004.08249; Wang et al. 2022, 2203.00555): in the
small-step limit, the output change after one update grows with depth faster for Post-LN
(O(N)) than for Pre-LN and Admin (O(log N)) and DeepNorm (bounded), and DeepNorm's slower
than Pre-LN's. It reads the ladder of a `normbench probe` with `probe.ladder` (the output
change c(eta) after one AdamW step of each eta = probe.lr / 2^k from the same
initialization; the preset's eta_k = 1e-4 / 2^k, k = 0 .. 8), by the procedure
pre-registered in docs/reproductions.md:

- the step: per placement, the largest eta of the ladder at which the change is linear,
  c(eta) / c(eta / 2) within `LINEAR_BAND` at every depth and seed of that placement
  (the smallest step has no half on the ladder, so it is never chosen); a placement with
  none is out of regime;
- the saturation gate (`SATURATED` of the output's RMS) at that step, for every placement;
- the depth exponent: per seed, the least-squares slope of log c(eta*) against log L over
  the depths probed; its mean over seeds and interval;
- 3a-c: Post-LN's exponent minus Pre-LN's, Admin's and DeepNorm's above 0; 3d: DeepNorm's
  minus Pre-LN's below 0. Each difference is of two placements' mean exponents, each
  placement's seeds resampled on its own (`stats.bootstrap_diff`). A comparison whose
  placement is out of regime is `inconclusive (out of regime)`; one whose placement was not
  probed is left out.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from normbench.analysis.claims.probe import ProbeTable
from normbench.analysis.claims.verdict import (
    LINEAR_BAND,
    OUT_OF_REGIME,
    SATURATED,
    Check,
    Missing,
    Verdict,
)
from normbench.analysis.stats import (
    Interval,
    above,
    bootstrap_diff,
    falls_below,
    mean_interval,
    pm,
    slope,
)

NAMES = {"post": "Post-LN", "pre": "Pre-LN", "admin": "Admin", "deepnorm": "DeepNorm"}
# (sub-claim, placement, other, 'above' or 'below': the first's exponent minus the other's)
COMPARISONS = (
    ("3a", "post", "pre", "above"),
    ("3b", "post", "admin", "above"),
    ("3c", "post", "deepnorm", "above"),
    ("3d", "deepnorm", "pre", "below"),
)


def _change(t: ProbeTable, norm: str, depth: int, seed: int, lr: float) -> dict[str, Any]:
    for r in t.ladder:
        if (r["norm"], r["depth"], r["seed"]) == (norm, depth, seed) and math.isclose(
            r["lr"], lr, rel_tol=1e-9
        ):
            return r
    raise Missing(f"no output change of norm={norm} depth={depth} seed={seed} at lr {lr:g}")


def _ladder(t: ProbeTable, norm: str) -> list[float]:
    """The step sizes probed for `norm`, largest first."""
    return sorted({float(r["lr"]) for r in t.ladder if r["norm"] == norm}, reverse=True)


def _models(t: ProbeTable, norm: str) -> list[tuple[int, int]]:
    return [(d, s) for d in t.depths(norm) for s in t.seeds(norm, d)]


def _halving(t: ProbeTable, norm: str, eta: float, half: float) -> list[float]:
    """c(eta) / c(eta / 2) at every depth and seed (inf where c(eta / 2) is 0)."""
    ratios = []
    for d, s in _models(t, norm):
        c, c_half = (_change(t, norm, d, s, lr)["output_change"] for lr in (eta, half))
        ratios.append(c / c_half if c_half > 0 else math.inf)
    return ratios


def linear_step(v: Verdict, t: ProbeTable, norm: str) -> float | None:
    """The largest eta of the ladder whose halving ratio lies within LINEAR_BAND at every
    depth and seed of `norm` (None: no such step). The ratios go into the verdict."""
    lo, hi = LINEAR_BAND
    ladder, chosen, shown = _ladder(t, norm), None, []
    for eta in ladder:
        half = next((x for x in ladder if math.isclose(x, eta / 2, rel_tol=1e-9)), None)
        if half is None:
            continue
        ratios = _halving(t, norm, eta, half)
        shown.append(f"{eta:.3g}: {min(ratios):.3g}-{max(ratios):.3g}")
        if chosen is None and all(lo <= r <= hi for r in ratios):
            chosen = eta
    v.measured.append(
        (f"{NAMES[norm]}: c(η) / c(η/2), min-max over depths and seeds, per η", "; ".join(shown))
    )
    return chosen


def _exponent(v: Verdict, t: ProbeTable, norm: str, eta: float) -> tuple[list[float], str]:
    """Per seed probed at every depth, the slope of log c(eta) against log L; and the reason
    the placement is out of regime at eta ('' when it is not: saturated)."""
    depths = t.depths(norm)
    largest = (0.0, depths[0])
    for d in depths:
        rows = [_change(t, norm, d, s, eta) for s in t.seeds(norm, d)]
        rel = [r["output_change"] / r["output_rms"] for r in rows]
        v.measured.append(
            (
                f"{NAMES[norm]} depth {d}: output change at η* = {eta:.3g} (relative to the "
                "output's RMS)",
                f"{pm(r['output_change'] for r in rows)} ({pm(rel, 2)})",
            )
        )
        largest = max(largest, (max(rel), d))
    logs = [math.log(d) for d in depths]
    slopes = []
    for s in t.common_seeds(norm, depths):
        changes = [_change(t, norm, d, s, eta)["output_change"] for d in depths]
        slopes.append(slope(logs, [math.log(c) if c > 0 else math.nan for c in changes]))
    if largest[0] > SATURATED:
        return slopes, (
            f"{NAMES[norm]} saturated: depth {largest[1]} moved by {largest[0]:.2f} of its RMS "
            f"(> {SATURATED})"
        )
    return slopes, ""


def _placement(v: Verdict, t: ProbeTable, norm: str) -> tuple[list[float], str]:
    """A placement's per-seed depth exponents at its linear step, and why it is out of regime
    ('' when it is not)."""
    if len(t.depths(norm)) < 2:
        raise Missing(f"norm={norm} was probed at one depth; give probe.depths at least 2")
    if len(_ladder(t, norm)) < 2:
        raise Missing(f"norm={norm} has no ladder of step sizes; probe with probe.ladder=8")
    eta = linear_step(v, t, norm)
    lo, hi = LINEAR_BAND
    if eta is None:
        return [], (
            f"{NAMES[norm]}: no step of the ladder is linear (c(η) / c(η/2) within [{lo}, {hi}] "
            "at every depth and seed)"
        )
    slopes, reason = _exponent(v, t, norm, eta)
    exponent = mean_interval(slopes)
    v.measured.append((f"{NAMES[norm]}: depth exponent of the output change", exponent.text()))
    return slopes, reason


def _comparison(label: str, a: str, b: str, side: str, exponents: dict, reasons: dict) -> Check:
    relation = "exceeds" if side == "above" else "is below"
    condition = (
        f"{label}. {NAMES[a]}'s depth exponent {relation} {NAMES[b]}'s (the difference {side} 0)"
    )
    blocked = [reasons[n] for n in (a, b) if reasons[n]]
    if blocked:
        return Check(condition, "; ".join(blocked), OUT_OF_REGIME)
    diff: Interval = bootstrap_diff(exponents[a], exponents[b], statistics.fmean)
    decision = above(diff, 0.0) if side == "above" else falls_below(diff, 0.0)
    return Check.decided(condition, f"difference {diff.text()}", decision)


def judge_output_change(v: Verdict, t: ProbeTable) -> None:
    """Claim 3: 3a-c and 3d on the ladder's linear steps."""
    t.need(["post"], min_depths=2)
    if not t.ladder:
        raise Missing(
            "the probe has no ladder of step sizes; probe with probe.ladder=8 (the preset's)"
        )
    norms = [n for n in NAMES if n in t.norms()]
    checks = [c for c in COMPARISONS if c[1] in norms and c[2] in norms]
    if not checks:
        raise Missing("no probe of pre, deepnorm or admin to compare Post-LN with")
    exponents, reasons = {}, {}
    for norm in norms:
        exponents[norm], reasons[norm] = _placement(v, t, norm)
    if blocked := [r for r in reasons.values() if r]:
        v.note = "out of regime: " + "; ".join(blocked)
    for label, a, b, side in checks:
        v.checks.append(_comparison(label, a, b, side, exponents, reasons))
