"""The literature's claims about normalization placement, and which judge decides each.

Each claim has a preset that measures it (`configs/experiment/<name>.yaml`, which sets
`claim: <name>`) and a judge: a function from the records of those runs (a probe's per-seed
table: normbench/analysis/claims/probe.py, or training run records:
normbench/analysis/claims/train.py, and normbench/analysis/claims/lr.py for the claims judged
on learning-rate sweeps: claims 4, 5 and 8-12) to a `Verdict` (normbench/analysis/claims/verdict.py,
where the thresholds and the rules are fixed) that lists the measured numbers (mean ± std
over seeds), the conditions that operationalize the claim (its sub-claims), and the outcome
of each, decided by a 95 % bootstrap interval over seeds (or TOST) against its threshold.

`judge_claims` judges every claim that some of compare's records were run for, or the
claims named by `compare --claim` on all of them;
`check_claim` checks a config's `claim=` before any job runs (the config schema, a layer
below, takes the name as a string).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from normbench.analysis.claims.lr import (
    judge_depth_breakdown,
    judge_dyt,
    judge_long_warmup,
    judge_post_shallow,
    judge_qk_layernorm,
    judge_warmup,
    judge_z_loss,
)
from normbench.analysis.claims.output_change import judge_output_change
from normbench.analysis.claims.probe import ProbeTable, judge_xiong_gradients, judge_xiong_hidden
from normbench.analysis.claims.train import judge_curse_of_depth, judge_peri_growth, judge_rmsnorm
from normbench.analysis.claims.verdict import Missing, Verdict
from normbench.analysis.records import CompareError, Probe, Run, one_vocab
from normbench.analysis.table import fmt
from normbench.errors import ConfigError
from normbench.run.axes import order
from normbench.run.data import vocab


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    source: str
    statement: str
    command: str  # `probe` or `train`: which command's records it reads
    judge: Callable[..., None]  # fills a Verdict in from the records


XIONG, LIU, WANG, LI, KIM, WORTSMAN, TAKASE = (
    "Xiong et al. 2020, 2002.04745",
    "Liu et al. 2020, 2004.08249",
    "Wang et al. 2022, 2203.00555",
    "Li et al. 2024, 2412.13795",
    "Kim et al. 2025, 2502.02732",
    "Wortsman et al. 2023, 2309.14322",
    "Takase et al. 2022, 2206.00330",
)


CLAIMS: dict[str, Claim] = {
    c.name: c
    for c in (
        Claim(
            "xiong_gradients",
            "1. Gradients at initialization",
            XIONG,
            "at initialization, Pre-LN's last-layer gradient norm scales as L^-1/2 with the "
            "depth L while Post-LN's does not depend on L (Theorem 1); along the layers, "
            "Post-LN's gradient norms grow while Pre-LN's stay flat (Fig. 3).",
            "probe",
            judge_xiong_gradients,
        ),
        Claim(
            "xiong_hidden",
            "2. Hidden-state norm at initialization",
            f"{XIONG}, Lemma 2",
            "at initialization, Pre-LN's E||x_l||^2 grows linearly with the layer index, by "
            "between d/2 and 3d/2 per FFN sublayer; Post-LN's residual sum before its norm, "
            "E||x + F(x)||^2, is the same at every layer.",
            "probe",
            judge_xiong_hidden,
        ),
        Claim(
            "output_change",
            "3. Output change after one update",
            f"{LIU}; {WANG}",
            "in the small-step limit, the change of the model's output after one update grows "
            "with depth faster for Post-LN (O(N)) than for Pre-LN and Admin (O(log N)) and "
            "DeepNorm (bounded), and DeepNorm's slower than Pre-LN's.",
            "probe",
            judge_output_change,
        ),
        Claim(
            "warmup",
            "4. Post-LN needs warmup, on the LR sensitivity",
            XIONG,
            "Post-LN needs learning-rate warmup: warmup lowers Post-LN's LR sensitivity and "
            "raises its largest stable learning rate, and Post-LN needs it more than Pre-LN.",
            "train",
            judge_warmup,
        ),
        Claim(
            "depth_breakdown",
            "5. Post-LN breaks down with depth; the rescues, on the LR sensitivity",
            f"{LIU}; {WANG}; {LI}; {TAKASE}",
            "Post-LN's largest stable learning rate falls with depth, and each rescue "
            "(DeepNorm, Admin, Mix-LN, B2T) keeps it up.",
            "train",
            judge_depth_breakdown,
        ),
        Claim(
            "peri_growth",
            "6. Residual growth, Pre-LN vs Peri-LN",
            KIM,
            "during training, Pre-LN's residual-stream magnitude grows much more across layers "
            "than Peri-LN's (400M-3.2B models trained on 30B tokens).",
            "train",
            judge_peri_growth,
        ),
        Claim(
            "rmsnorm",
            "7. RMSNorm matches LayerNorm, and is faster",
            "Zhang and Sennrich 2019, 1910.07467",
            "RMSNorm matches LayerNorm's loss in a Pre-LN model, in less running time (7-64 % "
            "less in the paper).",
            "train",
            judge_rmsnorm,
        ),
        Claim(
            "qk_layernorm",
            "8. qk-layernorm lowers LR sensitivity",
            f"{WORTSMAN}, Sec. 3.1.1; Dehghani et al. 2023, 2302.05442",
            "normalizing queries and keys (qk-layernorm) lowers the learning-rate sensitivity "
            "that attention-logit growth causes.",
            "train",
            judge_qk_layernorm,
        ),
        Claim(
            "z_loss",
            "9. z-loss lowers LR sensitivity without weight decay",
            f"{WORTSMAN}, Sec. 3.1.2",
            "without weight decay, the z-loss lowers the learning-rate sensitivity that "
            "output-logit divergence causes.",
            "train",
            judge_z_loss,
        ),
        Claim(
            "long_warmup",
            "10. Longer warmup lowers LR sensitivity",
            f"{WORTSMAN}, Sec. 3.4",
            "a longer warmup lowers the learning-rate sensitivity.",
            "train",
            judge_long_warmup,
        ),
        Claim(
            "dyt",
            "11. DyT matches LayerNorm",
            "Zhu et al. 2025, 2503.10622",
            "Dynamic Tanh in place of LayerNorm matches its loss, each at its own best "
            "learning rate.",
            "train",
            judge_dyt,
        ),
        Claim(
            "post_shallow",
            "12. Post-LN beats Pre-LN when shallow",
            f"{LIU}, Sec. 3; {TAKASE}",
            "when it trains, Post-LN ends at a lower loss than Pre-LN at shallow depth, each at "
            "its own best learning rate.",
            "train",
            judge_post_shallow,
        ),
        Claim(
            "curse_of_depth",
            "13. The curse of depth",
            "Sun et al. 2025, 2502.05795",
            "in a trained Pre-LN model the deeper layers matter less (removing one costs less "
            "loss than removing a shallower one), and LayerNorm Scaling makes them matter more.",
            "train",
            judge_curse_of_depth,
        ),
    )
}


def judge(name: str, records: Any, setting: str = "", sources: list[str] | None = None) -> Verdict:
    """The verdict of claim `name` on `records` (a ProbeTable, or a list of records.Run)."""
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


# --- the claims of compare's records ----------------------------------------------------------


def _values(records: list[Any], key: str) -> str:
    found = sorted({fmt(r.config.get(key)) for r in records if r.config.get(key) is not None})
    return ",".join(found) if found else "-"


def _ran_as(runs: list[Run]) -> str:
    """The devices and precisions the runs resolved to (summary.json), e.g. `cpu fp32`."""
    found = {f"{r.summary.get('device')} {r.summary.get('precision')}" for r in runs}
    return ",".join(sorted(f for f in found if "None" not in f)) or "-"


def run_setting(runs: list[Run]) -> str:
    """The shared settings of a claim's training runs, in one line (the precision as
    configured and as the runs resolved it: `precision=auto` names no precision)."""
    v = lambda key: _values(runs, key)  # noqa: E731
    return (
        f"{len(runs)} runs: norm {v('norm.name')}, kind {v('norm.kind')}, depth {v('depth')}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}; "
        f"{v('train.max_steps')} steps of {v('train.batch_size')} sequences; AdamW lr "
        f"{v('optim.lr')}, warmup {v('optim.warmup_steps')}, betas {v('optim.betas')}, "
        f"grad clip {v('optim.grad_clip')}; precision={v('precision')}, ran as {_ran_as(runs)}; "
        f"seeds {v('seed')}; data "
        f"{v('data.label')}, {vocab.label(one_vocab(runs))}"
    )


def probe_setting(probes: list[Probe]) -> str:
    """The shared settings of a claim's probes, in one line."""
    p = probes[0].table.get("settings", {})
    v = lambda key: _values(probes, key)  # noqa: E731
    norms = {str(n) for q in probes for n in q.table["settings"].get("norms", [])}
    depths = {d for q in probes for d in q.table["settings"].get("depths", [])}
    k = p.get("ladder") or 0
    ladder = f" and of lr / 2^k, k = 1 .. {k}, each from the same initialization" if k else ""
    return (
        f"normbench probe at initialization, fp32: norms {','.join(sorted(norms))}, "
        f"depths {','.join(str(d) for d in sorted(depths, key=order))}, "
        f"d_model {v('model.d_model')}, context {v('model.context')}, init {v('model.init')}, "
        f"kind {v('norm.kind')}; {p.get('batches')} batches of {p.get('batch_size')} sequences; "
        f"one AdamW step of lr {p.get('lr') or v('optim.lr')}{ladder}; seeds "
        f"{','.join(str(s) for s in p.get('seeds', []))}; data {v('data.label')}, "
        f"{vocab.label(one_vocab(probes))}"
    )


def check_claim_names(names: list[str]) -> None:
    """`compare --claim NAME`: every name is a claim (a one-line CompareError otherwise)."""
    for name in names:
        if name not in CLAIMS:
            raise CompareError(f"unknown claim '{name}'; choose one of: {', '.join(CLAIMS)}")


def _probe_table(probes: list[Probe]) -> ProbeTable:
    if any("per_seed" not in p.table for p in probes):
        raise CompareError(
            f"{probes[0].dir}: probe.json has no per-seed rows (written by an older "
            "normbench); run the probe again"
        )
    widths = {p.config.get("model.d_model") for p in probes}
    return ProbeTable(
        [row for p in probes for row in p.table["per_seed"]["layers"]],
        [row for p in probes for row in p.table["per_seed"]["models"]],
        [row for p in probes for row in p.table["per_seed"].get("ladder", [])],
        d_model=widths.pop() if len(widths) == 1 else None,
    )


def _judge_records(name: str, records: list[Any]) -> Verdict:
    """The verdict of claim `name` on its records (probes or runs, as the claim reads)."""
    sources = [str(r.dir) for r in records]
    if not records:
        claim = CLAIMS[name]
        v = Verdict(name, claim.title, claim.source, claim.statement)
        v.note = f"inconclusive: no `normbench {claim.command}` records were given"
        return v
    if CLAIMS[name].command == "probe":
        return judge(name, _probe_table(records), probe_setting(records), sources)
    return judge(name, records, run_setting(records), sources)


def judge_claims(runs: list[Run], probes: list[Probe], names: list[str] | None = None) -> list[Any]:
    """A verdict for every claim that some of the records were run for (config `claim`); with
    `names` (compare --claim), for each of those claims on all the records, whatever their
    config's claim (e.g. the LR-sensitivity study's runs, or post_shallow on warmup's)."""
    verdicts = []
    for name, claim in CLAIMS.items():
        records: list[Any] = probes if claim.command == "probe" else runs
        if names is not None:
            if name in names:
                verdicts.append(_judge_records(name, records))
            continue
        mine = [r for r in records if r.config.get("claim") == name]
        if mine:
            verdicts.append(_judge_records(name, mine))
    return verdicts
