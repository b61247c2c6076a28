"""The literature's claims about normalization placement, and how a measurement judges them.

Each claim has a preset that measures it (`configs/experiment/<name>.yaml`, which sets
`claim: <name>`) and a judge: a function from the records of those runs (a probe's per-seed
table, or training run records) to a `Verdict` that lists the measured numbers (mean ± std
over seeds), the conditions that operationalize the claim, and whether each held.

The thresholds are fixed here, before any measurement, and are printed with every verdict so
that a reader can disagree with them; they are never tuned to make a claim come out true:

- "grows / shrinks" (a quantity along the layers or across depth): a ratio of at least
  `GROWS` = 1.5 (at most 1/1.5), and for growth along the layers also a Spearman rank
  correlation with the layer index of at least `MONOTONE` = 0.8;
- "flat / does not shrink": the ratio within [1/1.5, 1.5], or above `SHRINKS` = 0.8;
- "constant": max / min over the layers at most `CONSTANT` = 1.1;
- "much faster / much more": a factor of at least `MUCH` = 2;
- the output change after one update compares placements only while it is small: when a
  model's output moves by more than `SATURATED` = 0.7 of its RMS (unrelated outputs differ
  by sqrt(2) = 1.41 of it) the comparison is inconclusive (lower `probe.lr`);
- a claim about Post-LN breaking down with depth needs a Post-LN that trains at the shallow
  depth (not `DELTA` nats and 2 SE behind Pre-LN there); otherwise it is inconclusive;
- a loss difference counts when it is at least `DELTA` = 0.1 nats and at least twice its
  standard error over seeds; losses "match" within `MATCH` = 0.02 nats or twice the standard
  error, whichever is larger.

Outcome: `reproduced` when every condition held, `not reproduced` when none did, `partly
reproduced` in between, and `inconclusive` when the records lack what the claim needs (the
note says what to run).

`check_claim` checks a config's `claim=` before any job runs (the config schema, a layer
below, takes the name as a string).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from normbench.analysis.markdown import table
from normbench.analysis.stats import mean, pm, r_squared, spearman, stderr_diff
from normbench.errors import ConfigError
from normbench.run.axes import KEYS

GROWS = 1.5
MONOTONE = 0.8
SHRINKS = 0.8
CONSTANT = 1.1
MUCH = 2.0
DELTA = 0.1
MATCH = 0.02
SATURATED = 0.7  # an output change of this fraction of the output's RMS: the step was too large

REPRODUCED, PARTLY, NOT, INCONCLUSIVE = (
    "reproduced",
    "partly reproduced",
    "not reproduced",
    "inconclusive",
)


@dataclass
class Check:
    """One condition of a claim: what was required, what was measured, whether it held."""

    condition: str
    measured: str
    held: bool


@dataclass
class Verdict:
    claim: str
    title: str
    source: str
    statement: str
    setting: str = ""
    measured: list[tuple[str, str]] = field(default_factory=list)  # (quantity, value)
    checks: list[Check] = field(default_factory=list)
    note: str = ""
    records: list[str] = field(default_factory=list)  # the run / probe directories used

    @property
    def outcome(self) -> str:
        if not self.checks:
            return INCONCLUSIVE
        held = sum(c.held for c in self.checks)
        return REPRODUCED if held == len(self.checks) else NOT if held == 0 else PARTLY

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}

    def markdown(self) -> str:
        """The verdict as markdown (its texts HTML-escaped already: verdicts.py)."""
        lines = [
            f"### {self.title}: **{self.outcome}**",
            "",
            f"*Claim* ({self.source}): {self.statement}",
            "",
        ]
        if self.setting:
            lines += [f"*Setting*: {self.setting}", ""]
        if self.measured:
            lines += [table(["quantity", "measured"], self.measured, escape_html=False), ""]
        if self.checks:
            rows = [(c.condition, c.measured, "yes" if c.held else "no") for c in self.checks]
            lines += [table(["condition", "measured", "held"], rows, escape_html=False), ""]
        if self.note:
            lines += [f"*Note*: {self.note}", ""]
        return "\n".join(lines)


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    source: str
    statement: str
    command: str  # `probe` or `train`: which command's records it reads
    judge: Callable[..., None]  # fills a Verdict in from the records


# --- numbers ------------------------------------------------------------------------------


class Missing(Exception):
    """The records lack what a claim needs; the message says what to run."""


# --- probe claims ---------------------------------------------------------------------------


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
        m_along, m_rho, m_across = mean(along), mean(rho), mean(across)
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
                    mean(growth) >= GROWS and mean(rho) >= MONOTONE,
                )
            )
        else:
            v.checks.append(
                Check(
                    f"Post-LN's hidden-state norm stays constant: max / min over blocks 2 .. "
                    f"output <= {CONSTANT} (depth {depth})",
                    pm(spread, 4),
                    mean(spread) <= CONSTANT,
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
    post = mean(growth["post"])
    for norm in others:
        other = mean(growth[norm])
        v.checks.append(
            Check(
                f"Post-LN's output change grows with depth at least {MUCH}x faster than "
                f"{norm}'s (ratio of growths)",
                f"{post / other:.3g} ({post:.3g} vs {other:.3g})",
                post >= MUCH * other,
            )
        )


# --- training claims ------------------------------------------------------------------------


def _cfg(run: Any, key: str) -> Any:
    return run.config.get(key)


def _final_losses(runs: list[Any]) -> tuple[list[float], int]:
    """Final validation losses of the runs that did not diverge, and how many diverged."""
    losses = [
        float(r.summary["val_loss"])
        for r in runs
        if not r.diverged and r.summary.get("val_loss") is not None
    ]
    return losses, sum(r.diverged for r in runs)


def _select(runs: list[Any], **where: Any) -> list[Any]:
    """The runs whose axes (by their short names, run/axes.py) have these values."""
    return [r for r in runs if all(_cfg(r, KEYS[k]) == value for k, value in where.items())]


def _loss_text(runs: list[Any]) -> str:
    losses, diverged = _final_losses(runs)
    return f"{pm(losses, 4)}, diverged {diverged}/{len(runs)}"


def _differs(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """mean(a) - mean(b), its standard error, and whether it counts (>= DELTA and >= 2 SE)."""
    d = mean(a) - mean(b)
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
            diff = f"{d:+.3g} ± {se:.2g} nats; diverged without warmup {n_div}/{len(without)}"
            if norm == "post":
                v.checks.append(
                    Check(
                        f"Post-LN without warmup diverges, or ends at least {DELTA} nats (and "
                        f"2 SE) worse than with it{at}",
                        diff,
                        n_div > 0 or counts,
                    )
                )
            else:
                v.checks.append(
                    Check(
                        f"Pre-LN without warmup neither diverges nor ends {DELTA} nats worse{at}",
                        diff,
                        n_div == 0 and bool(a) and not (d >= DELTA),
                    )
                )


def judge_depth_breakdown(v: Verdict, runs: list[Any]) -> None:
    depths = sorted({_cfg(r, "depth") for r in runs})
    if len(depths) < 2:
        raise Missing("the claim compares depths; sweep at least two")
    lo, hi = depths[0], depths[-1]
    penalty: dict[str, tuple[float, float, int]] = {}  # loss(hi) - loss(lo), its SE, diverged
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
        d = mean(a) - mean(b) if a and b else math.nan
        penalty[norm] = (d, stderr_diff(a, b) if a and b else math.nan, n_div)
    if incomplete:
        v.note = f"left out, lacking runs at depth {lo} or {hi}: {', '.join(incomplete)}"
    # The claim presupposes a Post-LN that trains when shallow: one that already fails at the
    # shallow depth (diverges, or ends DELTA nats and 2 SE behind Pre-LN) cannot break down.
    post_lo, post_lo_div = _final_losses(_select(runs, norm="post", depth=lo))
    pre_lo, _ = _final_losses(_select(runs, norm="pre", depth=lo))
    if post_lo_div or (pre_lo and post_lo and _differs(post_lo, pre_lo)[2]):
        raise Missing(
            f"Post-LN already fails at depth {lo} ({_loss_text(_select(runs, norm='post', depth=lo))}"
            f"; Pre-LN {pm(pre_lo, 4)}), so this setting cannot show it breaking down with "
            "depth; give it more warmup (optim.warmup_steps) or a lower optim.lr"
        )
    ref, ref_se, _ = penalty.get("pre", (0.0, 0.0, 0))
    ref_name = f"Pre-LN's ({ref:+.3g})" if "pre" in penalty else "0"

    def text(norm: str) -> str:
        d, se, n = penalty[norm]
        return f"{d:+.3g} ± {se:.2g} nats; diverged at depth {hi}: {n}"

    d, se, n = penalty["post"]
    v.checks.append(
        Check(
            f"Post-LN breaks down at depth {hi}: it diverges, or its loss(depth {hi}) - "
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
                    f"{norm} stays trainable at depth {hi}: no divergence, and its depth "
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
    pre, peri = mean(growth["pre"]), mean(growth["peri"])
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
    speed = [mean(float(r.summary.get("tokens_per_s") or 0) for r in x) for x in (rms, ln)]
    if all(speed):
        v.measured.append(("tokens/s, RMSNorm / LayerNorm", f"{speed[0] / speed[1]:.3g}"))
    a, div_a = _final_losses(rms)
    b, div_b = _final_losses(ln)
    d = mean(a) - mean(b) if a and b else math.nan
    se = stderr_diff(a, b) if a and b else math.nan
    tol = max(MATCH, 2 * se) if not math.isnan(se) else MATCH
    v.checks.append(
        Check(
            f"RMSNorm's final val loss matches LayerNorm's: the absolute difference <= max({MATCH} nats, "
            "2 SE), neither diverging",
            f"{d:+.3g} ± {se:.2g} nats (tolerance {tol:.2g}); diverged {div_a + div_b}",
            div_a + div_b == 0 and abs(d) <= tol,
        )
    )


XIONG, LIU, WANG, LI, KIM = (
    "Xiong et al. 2020, 2002.04745",
    "Liu et al. 2020, 2004.08249",
    "Wang et al. 2022, 2203.00555",
    "Li et al. 2024, 2412.13795",
    "Kim et al. 2025, 2502.02732",
)

CLAIMS: dict[str, Claim] = {
    c.name: c
    for c in (
        Claim(
            "xiong_gradients",
            "1. Gradients at initialization",
            XIONG,
            "at initialization, Post-LN's gradient norms grow with the layer index while Pre-LN's"
            " stay flat; Post-LN's last-layer gradient norm does not shrink with depth while "
            "Pre-LN's does.",
            "probe",
            judge_xiong_gradients,
        ),
        Claim(
            "xiong_hidden",
            "2. Hidden-state norm at initialization",
            f"{XIONG}, Lemma 2",
            "Pre-LN's hidden-state norm grows with the layer index at initialization; Post-LN's "
            "stays constant.",
            "probe",
            judge_xiong_hidden,
        ),
        Claim(
            "output_change",
            "3. Output change after one update",
            f"{LIU}; {WANG}",
            "the change of the model's output after one update grows with depth much faster for"
            " Post-LN than for Pre-LN, DeepNorm and Admin.",
            "probe",
            judge_output_change,
        ),
        Claim(
            "warmup",
            "4. Post-LN needs warmup",
            XIONG,
            "Post-LN needs learning-rate warmup; without it, at the same learning rate, Post-LN "
            "trains much worse or diverges while Pre-LN does not.",
            "train",
            judge_warmup,
        ),
        Claim(
            "depth_breakdown",
            "5. Post-LN breaks down with depth",
            f"{LIU}; {WANG}; {LI}",
            "Post-LN breaks down as depth grows, and DeepNorm (and Admin, B2T, Mix-LN) keep it "
            "trainable.",
            "train",
            judge_depth_breakdown,
        ),
        Claim(
            "peri_growth",
            "6. Residual growth, Pre-LN vs Peri-LN",
            KIM,
            "during training, Pre-LN's residual-stream magnitude grows much more across layers "
            "than Peri-LN's.",
            "train",
            judge_peri_growth,
        ),
        Claim(
            "rmsnorm",
            "7. RMSNorm matches LayerNorm",
            "Zhang and Sennrich 2019, 1910.07467",
            "RMSNorm matches LayerNorm's loss in a Pre-LN model.",
            "train",
            judge_rmsnorm,
        ),
    )
}


def judge(name: str, records: Any, setting: str = "", sources: list[str] | None = None) -> Verdict:
    """The verdict of claim `name` on `records` (a ProbeTable, or a list of compare.Run)."""
    claim = CLAIMS[name]
    v = Verdict(name, claim.title, claim.source, claim.statement, setting, records=sources or [])
    try:
        claim.judge(v, records)
    except Missing as e:
        v.checks.clear()
        v.note = f"inconclusive: {e}"
    return v


def check_claim(claim_name: str | None, command: str) -> None:
    """`claim=` names a claim, and the command that measures it: a probe claim's runs are
    probes, a training claim's runs are trainings (a one-line ConfigError otherwise)."""
    if claim_name is None:
        return
    if claim_name not in CLAIMS:
        raise ConfigError(
            f"unknown claim '{claim_name}'; choose one of: {', '.join(CLAIMS)} (or drop claim=)"
        )
    claim = CLAIMS[claim_name]
    if claim.command != command:
        raise ConfigError(
            f"claim={claim.name} is judged from `normbench {claim.command}` records; run "
            f"normbench {claim.command}{' -m' if claim.command == 'train' else ''} "
            f"experiment={claim.name}, or drop claim="
        )
