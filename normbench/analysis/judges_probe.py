"""The judges of the claims measured at initialization by `normbench probe` (claims 1-3 of
normbench/analysis/claims.py), on the per-seed rows of one or more probes (`ProbeTable`).
Each fills a Verdict in (normbench/analysis/verdict.py: the thresholds) or raises Missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from normbench.analysis.stats import mean_or_nan, pm, r_squared, spearman
from normbench.analysis.verdict import (
    CONSTANT,
    GROWS,
    MONOTONE,
    MUCH,
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


def judge_xiong_gradients(v: Verdict, t: ProbeTable) -> None:
    t.need(["pre", "post"], min_depths=2)
    key = "grad_mlp_out"
    for norm in ("post", "pre"):
        depths = t.depths(norm)
        lo, hi = depths[0], depths[-1]
        seeds = t.common_seeds(norm, [lo, hi])
        along, rho, across = [], [], []
        for s in seeds:
            prof = t.profile(norm, hi, s, key)
            along.append(prof[-1][1] / prof[0][1])
            rho.append(spearman([float(layer) for layer, _ in prof], [g for _, g in prof]))
            across.append(prof[-1][1] / t.profile(norm, lo, s, key)[-1][1])
        name = {"post": "Post-LN", "pre": "Pre-LN"}[norm]
        for d in depths:
            first = [t.profile(norm, d, s, key)[0][1] for s in t.seeds(norm, d)]
            last = [t.profile(norm, d, s, key)[-1][1] for s in t.seeds(norm, d)]
            v.measured.append((f"{name} depth {d}: ‖grad W2‖ at layer 1", pm(first)))
            v.measured.append((f"{name} depth {d}: ‖grad W2‖ at layer {d}", pm(last)))
        m_along, m_rho, m_across = mean_or_nan(along), mean_or_nan(rho), mean_or_nan(across)
        what = f"layer {hi} / layer 1 at depth {hi}"
        if norm == "post":
            v.checks.append(
                Check(
                    f"Post-LN's gradient grows with the layer index: {what} >= {GROWS} and "
                    f"Spearman rho >= {MONOTONE}",
                    f"{pm(along)}; rho {pm(rho, 2)}",
                    m_along >= GROWS and m_rho >= MONOTONE,
                )
            )
            v.checks.append(
                Check(
                    f"Post-LN's last-layer gradient does not shrink with depth: depth {hi} / "
                    f"depth {lo} > {SHRINKS}",
                    pm(across),
                    m_across > SHRINKS,
                )
            )
        else:
            v.checks.append(
                Check(
                    f"Pre-LN's gradient stays flat along the layers: {what} in "
                    f"[{1 / GROWS:.2f}, {GROWS}]",
                    pm(along),
                    1 / GROWS <= m_along <= GROWS,
                )
            )
            v.checks.append(
                Check(
                    f"Pre-LN's last-layer gradient shrinks with depth: depth {hi} / depth {lo} "
                    f"<= {SHRINKS} (theory: sqrt({lo}/{hi}) = {math.sqrt(lo / hi):.2f})",
                    pm(across),
                    m_across <= SHRINKS,
                )
            )


def judge_xiong_hidden(v: Verdict, t: ProbeTable) -> None:
    t.need(["pre", "post"])
    for norm in ("pre", "post"):
        depth = t.depths(norm)[-1]
        growth, rho, spread, r2 = [], [], [], []
        for s in t.seeds(norm, depth):
            # Entering block 2 .. the output: block 1's input is the embedding, which neither
            # placement normalizes.
            prof = [
                (layer, h) for layer, h in t.profile(norm, depth, s, "hidden_norm") if layer >= 2
            ]
            hs = [h for _, h in prof]
            growth.append(hs[-1] / hs[0])
            rho.append(spearman([float(layer) for layer, _ in prof], hs))
            if norm == "pre":  # Lemma 2's bounds are linear in l for ||x_l||^2
                r2.append(r_squared([float(layer) for layer, _ in prof], [h * h for h in hs]))
            spread.append(max(hs) / min(hs))
            if s == t.seeds(norm, depth)[0]:
                name = {"post": "Post-LN", "pre": "Pre-LN"}[norm]
                v.measured.append(
                    (
                        f"{name} depth {depth}: ‖x‖ entering block 2, {depth // 2 + 1}, "
                        f"output (seed {s})",
                        ", ".join(f"{hs[i]:.3g}" for i in (0, depth // 2 - 1, -1)),
                    )
                )
        if norm == "pre":
            v.measured.append(
                (f"Pre-LN depth {depth}: R^2 of a line through ‖x‖^2 against l", pm(r2, 4))
            )
            v.checks.append(
                Check(
                    f"Pre-LN's hidden-state norm grows with the layer index: output / block 2 "
                    f">= {GROWS} and Spearman rho >= {MONOTONE} (depth {depth})",
                    f"{pm(growth)}; rho {pm(rho, 2)}",
                    mean_or_nan(growth) >= GROWS and mean_or_nan(rho) >= MONOTONE,
                )
            )
        else:
            v.checks.append(
                Check(
                    f"Post-LN's hidden-state norm stays constant: max / min over blocks 2 .. "
                    f"output <= {CONSTANT} (depth {depth})",
                    pm(spread, 4),
                    mean_or_nan(spread) <= CONSTANT,
                )
            )


def judge_output_change(v: Verdict, t: ProbeTable) -> None:
    t.need(["post"], min_depths=2)
    others = [n for n in ("pre", "deepnorm", "admin") if n in t.norms()]
    if not others:
        raise Missing("no probe of pre, deepnorm or admin to compare Post-LN with")
    growth: dict[str, list[float]] = {}
    largest = (0.0, "")
    for norm in ["post", *others]:
        depths = t.depths(norm)
        lo, hi = depths[0], depths[-1]
        if lo == hi:
            raise Missing(f"norm={norm} was probed at one depth; give probe.depths at least 2")
        for d in depths:
            values = [t.model(norm, d, s, "output_change") for s in t.seeds(norm, d)]
            rel = [
                c / t.model(norm, d, s, "output_rms")
                for c, s in zip(values, t.seeds(norm, d), strict=True)
            ]
            v.measured.append(
                (
                    f"{norm} depth {d}: output change (relative to the output's RMS)",
                    f"{pm(values)} ({pm(rel, 2)})",
                )
            )
            largest = max(largest, (max(rel), f"{norm} depth {d}"))
        growth[norm] = [
            t.model(norm, hi, s, "output_change") / t.model(norm, lo, s, "output_change")
            for s in t.common_seeds(norm, [lo, hi])
        ]
        v.measured.append((f"{norm}: output change depth {hi} / depth {lo}", pm(growth[norm])))
    if largest[0] > SATURATED:
        raise Missing(
            f"the output of {largest[1]} moved by {largest[0]:.2f} of its RMS in one step "
            f"(> {SATURATED}; unrelated outputs differ by 1.41): saturated, so growth with depth "
            "cannot show; lower probe.lr"
        )
    post = mean_or_nan(growth["post"])
    for norm in others:
        other = mean_or_nan(growth[norm])
        v.checks.append(
            Check(
                f"Post-LN's output change grows with depth at least {MUCH}x faster than "
                f"{norm}'s (ratio of growths)",
                f"{post / other:.3g} ({post:.3g} vs {other:.3g})",
                post >= MUCH * other,
            )
        )
