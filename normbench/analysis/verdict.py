"""A verdict on one of the literature's claims (normbench/analysis/claims.py): the measured
numbers, the conditions that operationalize the claim, whether each held, and the outcome;
the thresholds of those conditions; and the files a verdict is written to.

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
reproduced` in between, and `inconclusive` when the records lack what the claim needs (a
judge raises `Missing`; the note says what to run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from normbench.analysis import markdown

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


class Missing(Exception):
    """The records lack what a claim needs; the message says what to run."""


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
            rows = [[c.condition, c.measured, "yes" if c.held else "no"] for c in self.checks]
            lines.append(markdown.table(["condition", "measured", "held"], rows))
        if self.note:
            lines += [f"*Note*: {e(self.note)}", ""]
        return "\n".join(lines)


def write_verdicts(out: Path, verdicts: list[Verdict]) -> None:
    """verdicts.md and verdicts.json (nothing when no record was run for a claim)."""
    if not verdicts:
        return
    text = "# Verdicts\n\n" + "\n".join(v.markdown() for v in verdicts)
    (out / "verdicts.md").write_text(text, encoding="utf-8")
    data = [v.to_dict() for v in verdicts]
    (out / "verdicts.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
