"""The judges of the claims measured at initialization by `normbench probe` (claims 1 and 2 of
normbench/analysis/claims/registry.py; claim 3, the output change, is judged in
normbench/analysis/claims/output_change.py), on the per-seed rows of one or more probes
(`ProbeTable`). Each fills a Verdict in (normbench/analysis/claims/verdict.py: the thresholds and
the rules) or raises Missing. The procedures are those pre-registered in
docs/reproductions.md; each condition names its sub-claim (1a, 1a', 1b, 2a, 2b).

The unit of every interval is a seed: a seed's values at every depth or layer of one
placement stay together. A ratio is the ratio of the means over the seeds
(`stats.ratio_of_means`), resampled by seed; a depth exponent or a slope along the layers is
computed per seed (`stats.slope`, least squares) and its mean over seeds bootstrapped like
any mean; so is a Spearman condition (each seed's rank correlation along the layers). The
R^2 of Lemma 2's linear law is shown as a supporting number and decides nothing.

- Claim 1 (Theorem 1, Fig. 3) reads `grad_mlp_out_mean`, the norm of the mean of W2's
  gradients over the probe's batches (an estimate of ||E grad W2||): 1a and 1a' the slope
  of log ||E grad W2|| at the last layer against log L over the depths probed, 1b the
  profile along the layers at the deepest depth.
- Claim 2 (Lemma 2) reads `hidden_sq` (E||x_l||^2 entering block l, blocks 2 .. the output,
  divided by the width d) for Pre-LN (2a) and `presum_sq_mlp` (E||x + FFN(x)||^2 before the
  norm, every block) for Post-LN (2b).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from normbench.analysis.claims.verdict import (
    CONSTANT,
    GROWS,
    LEMMA2_BAND,
    MONOTONE,
    SLOPE_BAND,
    Check,
    Missing,
    Verdict,
)
from normbench.analysis.stats import (
    Interval,
    all_hold,
    bootstrap,
    exceeds,
    falls_below,
    mean_interval,
    pm,
    r_squared,
    ratio_of_means,
    slope,
    spearman,
)

# Theorem 1's depth exponents of the last layer's ||E grad W2|| (theory, not thresholds):
PRE_EXPONENT = -0.5  # Pre-LN: O(d sqrt(ln d / L))
POST_EXPONENT = 0.0  # Post-LN: O(d sqrt(ln d)), independent of L
NAMES = {"post": "Post-LN", "pre": "Pre-LN"}


class ProbeTable:
    """The per-seed rows of one or more `normbench probe` runs (probe.json's `per_seed`):
    `layers` and `models`, `ladder` (the output change per step size, `probe.ladder`) and
    the models' width `d_model` where the probes share one (None otherwise)."""

    def __init__(
        self,
        layers: list[dict[str, Any]],
        models: list[dict[str, Any]],
        ladder: list[dict[str, Any]] | None = None,
        d_model: int | None = None,
    ):
        self.layers, self.models = layers, models
        self.ladder, self.d_model = ladder or [], d_model

    def norms(self) -> list[str]:
        return sorted({r["norm"] for r in self.models})

    def depths(self, norm: str) -> list[int]:
        return sorted({r["depth"] for r in self.models if r["norm"] == norm})

    def seeds(self, norm: str, depth: int) -> list[int]:
        return sorted({r["seed"] for r in self.models if r["norm"] == norm and r["depth"] == depth})

    def profile(self, norm: str, depth: int, seed: int, key: str) -> list[tuple[int, float]]:
        """(layer, value) along the layers of one model."""
        rows = [
            r
            for r in self.layers
            if (r["norm"], r["depth"], r["seed"]) == (norm, depth, seed) and r.get(key) is not None
        ]
        return sorted((r["layer"], float(r[key])) for r in rows)

    def model(self, norm: str, depth: int, seed: int, key: str) -> float:
        for r in self.models:
            if (r["norm"], r["depth"], r["seed"]) == (norm, depth, seed):
                if key not in r:
                    raise Missing(f"probe.json has no {key} (an older normbench); probe again")
                return float(r[key])
        raise Missing(f"no probe of norm={norm} depth={depth} seed={seed}")

    def need(self, norms: Iterable[str], min_depths: int = 1) -> None:
        for n in norms:
            if n not in self.norms():
                raise Missing(f"no probe of norm={n}; add it to probe.norms")
            if len(self.depths(n)) < min_depths:
                raise Missing(
                    f"norm={n} was probed at {len(self.depths(n))} depth(s); "
                    f"give probe.depths at least {min_depths}"
                )

    def need_key(self, norm: str, key: str) -> None:
        """Every probed model of `norm` has `key` along its layers (older records lack the
        quantities added since)."""
        for d in self.depths(norm):
            for s in self.seeds(norm, d):
                if not self.profile(norm, d, s, key):
                    raise Missing(
                        f"probe.json has no {key} for norm={norm} (an older normbench); probe again"
                    )

    def width(self) -> int:
        if self.d_model is None:
            raise Missing("the probes' model.d_model is unknown or not one width; probe again")
        return self.d_model

    def common_seeds(self, norm: str, depths: list[int]) -> list[int]:
        seeds = set(self.seeds(norm, depths[0]))
        for d in depths[1:]:
            seeds &= set(self.seeds(norm, d))
        return sorted(seeds)


def within(interval: Interval, lo: float, hi: float) -> str:
    """Within [lo, hi], both ends decided by the interval (at least lo and below hi: the
    reading of `flat` in verdict.py): HOLDS when the whole interval lies inside, FAILS when it
    lies wholly outside (all below lo, or all at or above hi), UNDECIDED otherwise."""
    return all_hold(exceeds(interval, lo), falls_below(interval, hi))


def _log(x: float) -> float:
    return math.log(x) if x > 0 else math.nan


# --- claim 1: gradients at initialization --------------------------------------------------

GRAD = "grad_mlp_out_mean"


def _last_layer_exponent(v: Verdict, t: ProbeTable, norm: str) -> Interval:
    """Per seed probed at every depth: the slope of log ||E grad W2|| at the last layer
    against log L; the mean over seeds and its interval. The gradients go into the verdict."""
    depths = t.depths(norm)
    name = NAMES[norm]
    for d in depths:
        profiles = [t.profile(norm, d, s, GRAD) for s in t.seeds(norm, d)]
        v.measured.append((f"{name} depth {d}: ‖E∇W2‖ at layer 1", pm(p[0][1] for p in profiles)))
        v.measured.append(
            (f"{name} depth {d}: ‖E∇W2‖ at layer {d}", pm(p[-1][1] for p in profiles))
        )
    logs = [math.log(d) for d in depths]
    slopes = [
        slope(logs, [_log(t.profile(norm, d, s, GRAD)[-1][1]) for d in depths])
        for s in t.common_seeds(norm, depths)
    ]
    return mean_interval(slopes)


def _exponent_check(v: Verdict, t: ProbeTable, norm: str) -> None:
    """1a (Pre-LN, L^-1/2) or 1a' (Post-LN, L^0): the exponent within the theory's +-
    SLOPE_BAND."""
    theory = PRE_EXPONENT if norm == "pre" else POST_EXPONENT
    exponent = _last_layer_exponent(v, t, norm)
    depths = ", ".join(map(str, t.depths(norm)))
    label, what = ("1a", "scales as L^-1/2") if norm == "pre" else ("1a'", "does not scale with L")
    v.checks.append(
        Check.decided(
            f"{label}. {NAMES[norm]}'s last-layer gradient {what}: "
            f"the slope of log ‖E∇W2(layer L)‖ against log L (depths {depths}, per seed) "
            f"within {theory:g} ± {SLOPE_BAND}",
            exponent.text(),
            within(exponent, theory - SLOPE_BAND, theory + SLOPE_BAND),
        )
    )


def _profile_check(v: Verdict, t: ProbeTable, norm: str) -> None:
    """1b at the deepest depth: Post-LN's gradient grows along the layers (last / first at
    least GROWS and Spearman rho at least MONOTONE); Pre-LN's stays flat (last / first within
    [1/GROWS, GROWS))."""
    depth = t.depths(norm)[-1]
    profiles = [t.profile(norm, depth, s, GRAD) for s in t.seeds(norm, depth)]
    along = bootstrap([(p[-1][1], p[0][1]) for p in profiles], ratio_of_means)
    what = f"layer {depth} / layer 1 at depth {depth}"
    if norm == "post":
        rho = mean_interval(spearman([float(x) for x, _ in p], [g for _, g in p]) for p in profiles)
        condition = (
            f"1b. Post-LN's gradient grows with the layer index: {what} >= {GROWS} and "
            f"Spearman rho >= {MONOTONE}"
        )
        measured = f"{along.text()}; rho {rho.text(2)}"
        decision = all_hold(exceeds(along, GROWS), exceeds(rho, MONOTONE))
    else:
        condition = (
            f"1b. Pre-LN's gradient stays flat along the layers: {what} in "
            f"[{1 / GROWS:.2f}, {GROWS})"
        )
        measured, decision = along.text(), within(along, 1 / GROWS, GROWS)
    v.checks.append(Check.decided(condition, measured, decision))


def judge_xiong_gradients(v: Verdict, t: ProbeTable) -> None:
    """Claim 1: 1a, 1a' (the last layer's gradient across depths) and 1b (along the layers)."""
    t.need(["pre", "post"], min_depths=2)
    for norm in ("pre", "post"):
        t.need_key(norm, GRAD)
    for norm in ("pre", "post"):
        _exponent_check(v, t, norm)
    for norm in ("post", "pre"):
        _profile_check(v, t, norm)


# --- claim 2: Lemma 2 ----------------------------------------------------------------------


def _hidden_shown(v: Verdict, t: ProbeTable, norm: str, depth: int) -> None:
    """The first seed's ‖x‖ entering block 2, the middle block and the output."""
    s = t.seeds(norm, depth)[0]
    hs = [h for layer, h in t.profile(norm, depth, s, "hidden_norm") if layer >= 2]
    v.measured.append(
        (
            f"{NAMES[norm]} depth {depth}: ‖x‖ entering block 2, {depth // 2 + 1}, output "
            f"(seed {s})",
            ", ".join(f"{hs[i]:.3g}" for i in (0, depth // 2 - 1, -1)),
        )
    )


def _spread(profiles: Sequence[list[float]]) -> float:
    """max / min over the layers of the mean profile over the seeds."""
    mean_profile = [statistics.fmean(hs) for hs in zip(*profiles, strict=True)]
    return max(mean_profile) / min(mean_profile)


def _lemma2_pre(v: Verdict, t: ProbeTable, d: int) -> None:
    """2a: per seed, the least-squares slope of E‖x_l‖² / d against l over blocks 2 .. the
    output within LEMMA2_BAND, and Spearman rho along them at least MONOTONE."""
    depth = t.depths("pre")[-1]
    _hidden_shown(v, t, "pre", depth)
    slopes, rhos, r2 = [], [], []
    for s in t.seeds("pre", depth):
        prof = [(float(layer), h / d) for layer, h in t.profile("pre", depth, s, "hidden_sq")]
        layers, sq = [x for x, _ in prof if x >= 2], [y for x, y in prof if x >= 2]
        slopes.append(slope(layers, sq))
        rhos.append(spearman(layers, sq))
        r2.append(r_squared(layers, sq))
    v.measured.append((f"Pre-LN depth {depth}: R^2 of a line through E‖x‖²/d against l", pm(r2, 4)))
    growth, rho = mean_interval(slopes), mean_interval(rhos)
    lo, hi = LEMMA2_BAND
    v.checks.append(
        Check.decided(
            f"2a. Pre-LN's E‖x_l‖² grows linearly with the layer index: the slope of "
            f"E‖x_l‖²/d against l (blocks 2 .. output, depth {depth}, per seed) within "
            f"[{lo}, {hi}] and Spearman rho >= {MONOTONE}",
            f"{growth.text()}; rho {rho.text(2)}",
            all_hold(within(growth, lo, hi), exceeds(rho, MONOTONE)),
        )
    )


def _lemma2_post(v: Verdict, t: ProbeTable, d: int) -> None:
    """2b: Post-LN's E‖x + FFN(x)‖² before the norm, max / min over the blocks of the mean
    profile over seeds, below CONSTANT; its level relative to d is reported only."""
    depth = t.depths("post")[-1]
    _hidden_shown(v, t, "post", depth)
    profiles = [
        [h for _, h in t.profile("post", depth, s, "presum_sq_mlp")] for s in t.seeds("post", depth)
    ]
    v.measured.append(
        (
            f"Post-LN depth {depth}: E‖x + FFN(x)‖² / d before the norm, mean over the blocks "
            "(Lemma 2: 3/2 for ReLU; reported, decides nothing)",
            pm(statistics.fmean(p) / d for p in profiles),
        )
    )
    spread = bootstrap(profiles, _spread)
    v.checks.append(
        Check.decided(
            f"2b. Post-LN's E‖x + FFN(x)‖² before the norm stays constant: max / min over "
            f"blocks 1 .. {depth} of the mean over seeds < {CONSTANT}",
            spread.text(4),
            falls_below(spread, CONSTANT),
        )
    )


def judge_xiong_hidden(v: Verdict, t: ProbeTable) -> None:
    """Claim 2: 2a (Pre-LN's E‖x_l‖² linear in l) and 2b (Post-LN's sum before its norm
    constant), at the deepest depth probed."""
    t.need(["pre", "post"])
    t.need_key("pre", "hidden_sq")
    t.need_key("post", "presum_sq_mlp")
    d = t.width()
    _lemma2_pre(v, t, d)
    _lemma2_post(v, t, d)
