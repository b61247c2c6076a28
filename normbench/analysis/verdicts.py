"""The claims judged from a set of records (analysis/claims.py): which claims the records
were made for, the setting they were measured in, and verdicts.md / verdicts.json."""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import Any

from normbench.analysis.records import CompareError, Probe, Run, one_vocab, order
from normbench.analysis.table import fmt
from normbench.run import vocab


def _values(records: list[Any], key: str) -> str:
    found = sorted({fmt(r.config.get(key)) for r in records if r.config.get(key) is not None})
    return ",".join(found) if found else "-"


def run_setting(runs: list[Run]) -> str:
    """The shared settings of a claim's training runs, in one line."""
    v = lambda key: _values(runs, key)  # noqa: E731
    return (
        f"{len(runs)} runs: norm {v('norm.name')}, kind {v('norm.kind')}, depth {v('depth')}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}; "
        f"{v('train.max_steps')} steps of {v('train.batch_size')} sequences; AdamW lr "
        f"{v('optim.lr')}, warmup {v('optim.warmup_steps')}, betas {v('optim.betas')}, "
        f"grad clip {v('optim.grad_clip')}; {v('precision')}; seeds {v('seed')}; data "
        f"{v('data.label')}, {vocab.label(one_vocab(runs))}"
    )


def probe_setting(probes: list[Probe]) -> str:
    p = probes[0].table.get("settings", {})
    v = lambda key: _values(probes, key)  # noqa: E731
    norms = {str(n) for q in probes for n in q.table["settings"].get("norms", [])}
    depths = {d for q in probes for d in q.table["settings"].get("depths", [])}
    return (
        f"normbench probe at initialization, fp32: norms {','.join(sorted(norms))}, "
        f"depths {','.join(str(d) for d in sorted(depths, key=order))}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}, "
        f"kind {v('norm.kind')}; {p.get('batches')} batches of {p.get('batch_size')} sequences; "
        f"one AdamW step of lr {p.get('lr') or v('optim.lr')}; seeds "
        f"{','.join(str(s) for s in p.get('seeds', []))}; data {v('data.label')}, "
        f"{vocab.label(one_vocab(probes))}"
    )


def judge_claims(runs: list[Run], probes: list[Probe]) -> list[Any]:
    """A verdict for every claim that some of the records were run for (config `claim`)."""
    from normbench.analysis.claims import CLAIMS, ProbeTable, judge

    verdicts = []
    for name, claim in CLAIMS.items():
        if claim.command == "probe":
            mine = [p for p in probes if p.config.get("claim") == name]
            if not mine:
                continue
            if any("per_seed" not in p.table for p in mine):
                raise CompareError(
                    f"{mine[0].dir}: probe.json has no per-seed rows (written by an older "
                    "normbench); run the probe again"
                )
            table = ProbeTable(
                [row for p in mine for row in p.table["per_seed"]["layers"]],
                [row for p in mine for row in p.table["per_seed"]["models"]],
            )
            verdicts.append(judge(name, table, probe_setting(mine), [str(p.dir) for p in mine]))
        else:
            mine = [r for r in runs if r.config.get("claim") == name]
            if mine:
                verdicts.append(judge(name, mine, run_setting(mine), [str(r.dir) for r in mine]))
    return verdicts


def _markdown_safe(v: Any) -> Any:
    """A copy of verdict `v` whose texts (which hold config values: the setting, the
    note) show in markdown as written, HTML special characters escaped."""
    e = lambda text: html.escape(str(text), quote=False)  # noqa: E731
    return dataclasses.replace(
        v,
        title=e(v.title),
        source=e(v.source),
        statement=e(v.statement),
        setting=e(v.setting),
        note=e(v.note),
        measured=[(e(q), e(m)) for q, m in v.measured],
        checks=[
            dataclasses.replace(c, condition=e(c.condition), measured=e(c.measured))
            for c in v.checks
        ],
    )


def write_verdicts(out: Path, verdicts: list[Any]) -> None:
    """verdicts.md and verdicts.json (nothing when no record was run for a claim)."""
    if not verdicts:
        return
    text = "# Verdicts\n\n" + "\n".join(_markdown_safe(v).markdown() for v in verdicts)
    (out / "verdicts.md").write_text(text, encoding="utf-8")
    data = [v.to_dict() for v in verdicts]
    (out / "verdicts.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
