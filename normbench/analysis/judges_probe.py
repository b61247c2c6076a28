"""The judges of the claims measured at initialization by `normbench probe` (claims 1-3 of
normbench/analysis/claims.py), on the per-seed rows of one or more probes (`ProbeTable`).
Each fills a Verdict in (normbench/analysis/verdict.py: the thresholds and the rules) or
raises Missing.

The unit of every interval is a seed: a ratio is the ratio of the means over the seeds
(`stats.ratio_of_means`), resampled by seed; a seed's models at two depths stay together. A
Spearman condition is the mean over seeds of each seed's rank correlation along the layers,
its interval bootstrapped over seeds like any mean. The R^2 of Lemma 2's linear law is shown
as a supporting number and decides nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from normbench.analysis.stats import (
    all_hold,
    bootstrap,
    bootstrap_samples,
    exceeds,
    falls_below,
    growth_ratio,
    mean_interval,
    pm,
    r_squared,
    ratio_of_means,
    spearman,
)
from normbench.analysis.verdict import (
    CONSTANT,
    GROWS,
    MONOTONE,
    MUCH,
    OUT_OF_REGIME,
    SATURATED,
    SHRINKS,
    Check,
    Missing,
    Verdict,
)


class ProbeTable:
    """The per-seed rows of one or more `normbench probe` runs (probe.json's `seeds`)."""

    def __init__(self, layers: list[dict[str, Any]], models: list[dict[str, Any]]):
        self.layers, self.models = layers, models

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

    def common_seeds(self, norm: str, depths: list[int]) -> list[int]:
        seeds = set(self.seeds(norm, depths[0]))
        for d in depths[1:]:
            seeds &= set(self.seeds(norm, d))
        return sorted(seeds)


def _gradient_units(t: ProbeTable, norm: str, lo: int, hi: int) -> list[tuple[float, ...]]:
    """Per seed probed at both depths: (gradient at the last layer at depth hi, at layer 1
    at depth hi, at the last layer at depth lo, Spearman rho along the layers at depth hi)."""
    key, units = "grad_mlp_out", []
    for s in t.common_seeds(norm, [lo, hi]):
        prof = t.profile(norm, hi, s, key)
        rho = spearman([float(layer) for layer, _ in prof], [g for _, g in prof])
        units.append((prof[-1][1], prof[0][1], t.profile(norm, lo, s, key)[-1][1], rho))
    return units


def _gradient_measured(v: Verdict, t: ProbeTable, norm: str, name: str) -> None:
    key = "grad_mlp_out"
    for d in t.depths(norm):
        first = [t.profile(norm, d, s, key)[0][1] for s in t.seeds(norm, d)]
        last = [t.profile(norm, d, s, key)[-1][1] for s in t.seeds(norm, d)]
        v.measured.append((f"{name} depth {d}: ‖grad W2‖ at layer 1", pm(first)))
        v.measured.append((f"{name} depth {d}: ‖grad W2‖ at layer {d}", pm(last)))


def judge_xiong_gradients(v: Verdict, t: ProbeTable) -> None:
    t.need(["pre", "post"], min_depths=2)
    for norm, name in (("post", "Post-LN"), ("pre", "Pre-LN")):
        lo, hi = t.depths(norm)[0], t.depths(norm)[-1]
        units = _gradient_units(t, norm, lo, hi)
        along = bootstrap([(u[0], u[1]) for u in units], ratio_of_means)
        across = bootstrap([(u[0], u[2]) for u in units], ratio_of_means)
        rho = mean_interval(u[3] for u in units)
        _gradient_measured(v, t, norm, name)
        what = f"layer {hi} / layer 1 at depth {hi}"
        scale = f"depth {hi} / depth {lo}"
        if norm == "post":
            v.checks.append(
                Check.decided(
                    f"Post-LN's gradient grows with the layer index: {what} >= {GROWS} and "
                    f"Spearman rho >= {MONOTONE}",
                    f"{along.text()}; rho {rho.text(2)}",
                    all_hold(exceeds(along, GROWS), exceeds(rho, MONOTONE)),
                )
            )
            v.checks.append(
                Check.decided(
                    f"Post-LN's last-layer gradient does not shrink with depth: {scale} >= "
                    f"{SHRINKS}",
                    across.text(),
                    exceeds(across, SHRINKS),
                )
            )
        else:
            v.checks.append(
                Check.decided(
                    f"Pre-LN's gradient stays flat along the layers: {what} in "
                    f"[{1 / GROWS:.2f}, {GROWS})",
                    along.text(),
                    all_hold(exceeds(along, 1 / GROWS), falls_below(along, GROWS)),
                )
            )
            v.checks.append(
                Check.decided(
                    f"Pre-LN's last-layer gradient shrinks with depth: {scale} < {SHRINKS} "
                    f"(theory: sqrt({lo}/{hi}) = {math.sqrt(lo / hi):.2f})",
                    across.text(),
                    falls_below(across, SHRINKS),
                )
            )


def _hidden_profiles(v: Verdict, t: ProbeTable, norm: str, depth: int) -> list[list[float]]:
    """Per seed: ‖x‖ entering block 2 .. the output (block 1's input is the embedding, which
    neither placement normalizes); the first seed's profile goes into the verdict."""
    profiles = []
    for s in t.seeds(norm, depth):
        hs = [h for layer, h in t.profile(norm, depth, s, "hidden_norm") if layer >= 2]
        profiles.append(hs)
        if len(profiles) == 1:
            name = {"post": "Post-LN", "pre": "Pre-LN"}[norm]
            v.measured.append(
                (
                    f"{name} depth {depth}: ‖x‖ entering block 2, {depth // 2 + 1}, "
                    f"output (seed {s})",
                    ", ".join(f"{hs[i]:.3g}" for i in (0, depth // 2 - 1, -1)),
                )
            )
    return profiles


def _spread(profiles: Sequence[list[float]]) -> float:
    """max / min over the layers of the mean profile over the seeds."""
    mean_profile = [statistics.fmean(hs) for hs in zip(*profiles, strict=True)]
    return max(mean_profile) / min(mean_profile)


def judge_xiong_hidden(v: Verdict, t: ProbeTable) -> None:
    t.need(["pre", "post"])
    depth = t.depths("pre")[-1]
    profiles = _hidden_profiles(v, t, "pre", depth)
    layers = [float(layer) for layer in range(2, len(profiles[0]) + 2)]
    growth = bootstrap([(hs[-1], hs[0]) for hs in profiles], ratio_of_means)
    rho = mean_interval(spearman(layers, hs) for hs in profiles)
    r2 = [r_squared(layers, [h * h for h in hs]) for hs in profiles]  # Lemma 2: linear in l
    v.measured.append((f"Pre-LN depth {depth}: R^2 of a line through ‖x‖^2 against l", pm(r2, 4)))
    v.checks.append(
        Check.decided(
            f"Pre-LN's hidden-state norm grows with the layer index: output / block 2 "
            f">= {GROWS} and Spearman rho >= {MONOTONE} (depth {depth})",
            f"{growth.text()}; rho {rho.text(2)}",
            all_hold(exceeds(growth, GROWS), exceeds(rho, MONOTONE)),
        )
    )
    depth = t.depths("post")[-1]
    spread = bootstrap(_hidden_profiles(v, t, "post", depth), _spread)
    v.checks.append(
        Check.decided(
            f"Post-LN's hidden-state norm stays constant: max / min over blocks 2 .. output "
            f"of the mean over seeds < {CONSTANT} (depth {depth})",
            spread.text(4),
            falls_below(spread, CONSTANT),
        )
    )


def _change_units(
    v: Verdict, t: ProbeTable, norm: str
) -> tuple[list[tuple[float, float]], tuple[float, int]]:
    """Per seed probed at both depths: (output change at the deepest, at the shallowest);
    and the largest output change relative to the output's RMS, with its depth. The changes
    and their growth go into the verdict."""
    depths = t.depths(norm)
    lo, hi = depths[0], depths[-1]
    if lo == hi:
        raise Missing(f"norm={norm} was probed at one depth; give probe.depths at least 2")
    largest = (0.0, lo)
    for d in depths:
        seeds = t.seeds(norm, d)
        values = [t.model(norm, d, s, "output_change") for s in seeds]
        rel = [c / t.model(norm, d, s, "output_rms") for c, s in zip(values, seeds, strict=True)]
        v.measured.append(
            (
                f"{norm} depth {d}: output change (relative to the output's RMS)",
                f"{pm(values)} ({pm(rel, 2)})",
            )
        )
        largest = max(largest, (max(rel), d))
    units = [
        (t.model(norm, hi, s, "output_change"), t.model(norm, lo, s, "output_change"))
        for s in t.common_seeds(norm, [lo, hi])
    ]
    growth = bootstrap(units, ratio_of_means)
    v.measured.append((f"{norm}: output change depth {hi} / depth {lo}", growth.text()))
    return units, largest


def judge_output_change(v: Verdict, t: ProbeTable) -> None:
    t.need(["post"], min_depths=2)
    others = [n for n in ("pre", "deepnorm", "admin") if n in t.norms()]
    if not others:
        raise Missing("no probe of pre, deepnorm or admin to compare Post-LN with")
    units, largest = {}, {}
    for norm in ["post", *others]:
        units[norm], largest[norm] = _change_units(v, t, norm)
    saturated = {
        n: f"{n} depth {d} moved by {x:.2f}" for n, (x, d) in largest.items() if x > SATURATED
    }
    if saturated:
        v.note = (
            f"saturated: the output of {'; '.join(saturated.values())} of its RMS in one step "
            f"(> {SATURATED}; unrelated outputs differ by 1.41), so growth with depth cannot "
            "show there; lower probe.lr"
        )
    for norm in others:
        condition = (
            f"Post-LN's output change grows with depth at least {MUCH}x faster than "
            f"{norm}'s (ratio of growths)"
        )
        blocked = [saturated[n] for n in ("post", norm) if n in saturated]
        if blocked:
            text = f"saturated: {'; '.join(blocked)} of its RMS (> {SATURATED})"
            v.checks.append(Check(condition, text, OUT_OF_REGIME))
            continue
        ratio = bootstrap_samples([units["post"], units[norm]], growth_ratio)
        v.checks.append(Check.decided(condition, ratio.text(), exceeds(ratio, MUCH)))
