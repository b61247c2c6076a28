"""A verdict on one of the literature's claims (normbench/analysis/claims/registry.py): the measured
numbers, the conditions that operationalize the claim (its sub-claims), the outcome of each and
of the whole; the thresholds of those conditions; and the files a verdict is written to.

The thresholds are fixed here, before any measurement, and are printed with every verdict so
that a reader can disagree with them; they are never tuned to make a claim come out true.

Every condition is decided by an interval, never by a point estimate (normbench/analysis/
stats.py): a 95 % bootstrap interval over seeds (the expanded percentile interval; with 3
seeds it is the range of the resampled statistic and covers at most 75 %, which its text
says). A condition is `reproduced` when the whole interval lies on the claim's side of its
threshold, `not reproduced` when the whole interval lies on the other side, and `inconclusive
(underpowered)` when the interval straddles the threshold or fewer than two seeds leave none.
A condition made of several ("a and b", or two-sided "within [lo, hi]") is reproduced when
every part is, not reproduced when any part is not, and underpowered otherwise.

- "grows" (a quantity along the layers): a ratio of means over the seeds
  (`stats.ratio_of_means`: resampling seeds recomputes the ratio) of at least `GROWS` = 1.5,
  and the mean over seeds of each seed's Spearman rank correlation with the layer index,
  bootstrapped over seeds like any mean, at least `MONOTONE` = 0.8;
- "flat": the ratio within [1/1.5, 1.5) (at least 1/1.5 and below 1.5, both decided);
- across depth, "does not shrink": the ratio at least `SHRINKS` = 0.8; "shrinks": below it;
- "constant": max / min over the layers of the mean profile over seeds below `CONSTANT` = 1.1;
- a depth exponent (the least-squares slope of log y against log L, per seed, its mean over
  seeds) "scales as L^a" when its interval lies within a ± `SLOPE_BAND` = 0.2 (claim 1:
  Pre-LN's last-layer gradient, a = -1/2; Post-LN's, a = 0), and not when it lies wholly
  outside (a band, like `LEMMA2_BAND` below, is decided as "flat" is: at least its lower end
  and below its upper end);
- Lemma 2's linear growth: the least-squares slope of E||x_l||^2 / d against the block index
  (per seed, its mean over seeds) within `LEMMA2_BAND` = [0.5, 3.0] (each FFN sublayer adds
  between d/2 and 3d/2 under the lemma's assumptions; the attention sublayer adds a
  non-negative amount it does not bound more tightly);
- one step is in the small-step limit when halving it halves the output change: c(eta) /
  c(eta / 2) within `LINEAR_BAND` = [1.8, 2.2] at every depth and seed of a placement;
- "much faster / much more": the ratio of two placements' growths (each placement's seeds
  resampled on their own) at least `MUCH` = 2;
- a loss difference counts when its interval (mean over seeds minus mean over seeds, each
  side resampled) lies wholly at or above `DELTA` = 0.1 nats; "does not end DELTA worse"
  when it lies wholly below; a difference of two depth penalties likewise, its four samples
  each resampled;
- losses "match" by TOST (two one-sided Welch t-tests, alpha 0.05) with the fixed margin
  `MATCH` = 0.02 nats: reproduced when the 90 % interval of the difference lies inside
  (-0.02, 0.02), not reproduced when the 95 % interval lies wholly outside, underpowered
  otherwise;
- "faster" (claim 7b): tokens/s of one arm over another's, a ratio of the means over the runs
  (each arm's runs resampled on their own), at least `SPEEDUP` = 1/0.93 = 1.075: 7 % less
  running time, the least saving Zhang and Sennrich report; the machine and precision are
  part of the result;
- "the deeper layers matter less" (curse_of_depth): R, the mean loss increase from removing
  one block of the deeper half over that from removing one of the shallower half (per seed),
  below 1; "matter more with LNS": R(LNS) / R(Pre-LN), a ratio of the two arms' mean R,
  strictly above 1;
- a run that diverged or collapsed is an observed failure, not an estimate: "diverges or ends
  worse" is reproduced when any seed failed, "stays trainable" is not reproduced when any
  seed failed, and the measured text counts the failed seeds.
- on a learning-rate sweep (normbench/analysis/claims/lr.py), a largest stable lr is counted
  in steps of its geometric grid ("none" one step below the grid's smallest lr), and "raises"
  or "falls" means by at least `STEP` = 1 grid step (half a decade in the LR setting), the
  whole interval at or above it; differences of LR sensitivities and of l* are judged
  against 0.

Validity gates, for every placement alike: a sub-claim whose placement is outside the regime
the claim presupposes is `inconclusive (out of regime)`, with the numbers that put it there,
while the other placements are judged as above:

- the output change after one update compares placements only while it is small: a placement
  whose output moved by more than `SATURATED` = 0.7 of its RMS (unrelated outputs differ by
  sqrt(2) = 1.41 of it) at any depth and seed takes its comparisons out of regime (lower
  `probe.lr`), and so does a placement with no step of the ladder in the small-step limit
  (`LINEAR_BAND`);
- a claim measured at a training budget far below its paper's is out of regime: Kim et al.'s
  residual growth (400M-3.2B models on 30B tokens) for a run of fewer than `PERI_TOKENS` =
  3e8 tokens (1 % of 30B), its numbers reported, not judged;
- the layer removal of curse_of_depth compares trained models: any seed of either placement
  that diverged or collapsed takes both of its sub-claims out of regime;
- on a learning-rate sweep, every compared cell must have trained (not every run of it
  diverged or collapsed); a claim about breaking down with depth also needs each compared
  placement (Post-LN and every rescue) to have a largest stable lr at the shallow depth
  (not "none"); "ends better at its best lr" needs no seed of either arm to have failed at
  that lr.

Outcome of a verdict: `inconclusive` when the records lack what the claim needs (a judge
raises `Missing`; the note says what to run; no conditions); otherwise the outcome its
conditions share, or "mixed: " and the count of each outcome ("mixed: 1 reproduced, 1
inconclusive (underpowered)"). There is no pooled "partly reproduced".
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from normbench.analysis import markdown
from normbench.analysis.sensitivity import MARGIN
from normbench.analysis.stats import FAILS, HOLDS, UNDECIDED

GROWS = 1.5
MONOTONE = 0.8
SHRINKS = 0.8
CONSTANT = 1.1
MUCH = 2.0
DELTA = MARGIN  # 0.1 nats: the margin that makes an lr stable (analysis/sensitivity.py)
MATCH = 0.02
STEP = 1  # grid steps that a largest stable lr must rise or fall by (claims 4b, 5a, 5b)
SATURATED = 0.7  # an output change of this fraction of the output's RMS: the step was too large
SLOPE_BAND = 0.2  # a depth exponent within the theory's +- this (claim 1)
LEMMA2_BAND = (0.5, 3.0)  # Lemma 2: E||x_l||^2 / d gains this much per block (claim 2)
LINEAR_BAND = (1.8, 2.2)  # c(eta) / c(eta / 2) of a linear change (claim 3's step)
PERI_TOKENS = 3e8  # 1 % of Kim et al.'s 30B training tokens: below it, claim 6 is out of regime
SPEEDUP = 1 / 0.93  # tokens/s ratio of 7 % less running time, Zhang and Sennrich's least saving

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
UNDERPOWERED = "inconclusive (underpowered)"
OUT_OF_REGIME = "inconclusive (out of regime)"
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, UNDERPOWERED, OUT_OF_REGIME)  # of a condition
INCONCLUSIVE = "inconclusive"  # a verdict whose records lack what the claim needs
MIXED = "mixed"

_OF_DECISION = {HOLDS: REPRODUCED, FAILS: NOT_REPRODUCED, UNDECIDED: UNDERPOWERED}


def outcome_of(decision: str) -> str:
    """The outcome of a condition decided by stats.py (HOLDS, FAILS, UNDECIDED)."""
    return _OF_DECISION[decision]


def css_class(outcome: str) -> str:
    """A class name for an outcome: 'inconclusive-underpowered', 'mixed', ..."""
    if outcome.startswith(MIXED):
        return MIXED
    return re.sub(r"[^a-z0-9]+", "-", outcome.lower()).strip("-")


class Missing(Exception):
    """The records lack what a claim needs; the message says what to run."""


@dataclass
class Check:
    """One condition of a claim (a sub-claim): what was required, the numbers behind its
    outcome (the estimate and its interval), and the outcome (one of OUTCOMES)."""

    condition: str
    measured: str
    outcome: str

    @property
    def held(self) -> bool:
        return self.outcome == REPRODUCED

    @classmethod
    def decided(cls, condition: str, measured: str, decision: str) -> Check:
        """A condition decided by stats.py's HOLDS / FAILS / UNDECIDED."""
        return cls(condition, measured, outcome_of(decision))


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
        counts = Counter(c.outcome for c in self.checks)
        if len(counts) == 1:
            return self.checks[0].outcome
        order = [*OUTCOMES, *sorted(set(counts) - set(OUTCOMES))]
        return f"{MIXED}: " + ", ".join(f"{counts[o]} {o}" for o in order if o in counts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}

    def markdown(self) -> str:
        """The verdict as a markdown section; its texts (which hold config values: the
        setting, the note) shown as written."""
        e = markdown.text
        lines = [
            f"### {e(self.title)}: **{self.outcome}**",
            "",
            f"*Claim* ({e(self.source)}): {e(self.statement)}",
            "",
        ]
        if self.setting:
            lines += [f"*Setting*: {e(self.setting)}", ""]
        if self.measured:
            lines.append(markdown.table(["quantity", "measured"], self.measured))
        if self.checks:
            rows = [[c.condition, c.measured, c.outcome] for c in self.checks]
            lines.append(markdown.table(["condition", "measured", "outcome"], rows))
        if self.note:
            lines += [f"*Note*: {e(self.note)}", ""]
        return "\n".join(lines)


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    """The verdicts as markdown, one section each (verdicts.md below its title; the
    dashboard's verdicts block)."""
    return "\n".join(v.markdown() for v in verdicts)


def write_verdicts(out: Path, verdicts: list[Verdict]) -> None:
    """verdicts.md and verdicts.json (nothing when no record was run for a claim)."""
    if not verdicts:
        return
    text = "# Verdicts\n\n" + verdicts_markdown(verdicts)
    (out / "verdicts.md").write_text(text, encoding="utf-8")
    data = [v.to_dict() for v in verdicts]
    (out / "verdicts.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
