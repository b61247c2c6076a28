"""`normbench probe`: the Hydra task, and the tables, files and figures of its record.

The measurement itself (per-layer gradient and hidden-state norms, and the output change
after one step, of a freshly initialized model) is normbench/run/probe.py. Here every
(placement, depth) job is probed over the seeds, and the run directory gets `probe.json`
(settings, `layers` with one row per placement, depth and layer, `models` with one row per
placement and depth, `ladder` with one row per placement, depth and step size, and
`per_seed` with the same rows for each seed, from which `normbench compare` judges a
preset's claim, normbench/analysis/claims/registry.py), `probe.csv`, `probe.md`, and figures
(normbench/analysis/report/figures/probe.py): `probe_<placement>.png` (and .svg) per
placement and `probe.png` comparing them. Numbers are means over seeds, with the standard
deviation over seeds beside them. For a claim preset the verdicts are written too, as
`normbench compare <run_dir>` gives them. `launch.py` hands `probe_task` to Hydra.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from normbench.analysis import markdown
from normbench.analysis.claims.registry import judge_claims
from normbench.analysis.claims.verdict import write_verdicts
from normbench.analysis.records import Probe
from normbench.analysis.report.figures.probe import plot
from normbench.analysis.stats import mean_std
from normbench.run.config.resolve import as_dict, resolve
from normbench.run.config.schema import NormbenchConfig
from normbench.run.data.tokens import load_tokens
from normbench.run.probe import MODEL_KEYS, probe_seeds
from normbench.run.record.files import write_atomic
from normbench.run.record.rundir import flat
from normbench.run.runtime import resolve_device, tune_cpu_allocator

log = logging.getLogger("normbench")


def probe_task(composed: DictConfig, jobs: list[NormbenchConfig]) -> None:
    """The Hydra job of `normbench probe`: probe every config, write tables and figures."""
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    cfg = resolve(composed)
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(as_dict(cfg), sort_keys=False))
    tokens: dict[str, Any] = {}

    def tokens_for(job: NormbenchConfig) -> Any:
        key = json.dumps(as_dict(job)["data"], sort_keys=True)
        if key not in tokens:
            tokens[key] = load_tokens(job.data)
        return tokens[key]

    p = cfg.probe
    seeds = list(p.seeds) if p.seeds else [cfg.seed]
    device = resolve_device(str(cfg.device))
    if device.type == "cpu":
        tune_cpu_allocator()
    table = probe_tables(
        jobs,
        tokens_for,
        seeds=seeds,
        batches=p.batches,
        batch_size=p.batch_size,
        lr=p.lr,
        device=device,
        ladder=p.ladder,
    )
    settings = _settings(cfg, jobs, seeds)
    write_outputs(run_dir, table, settings)
    log.info("probe: tables in %s, figures %s", run_dir / "probe.md", run_dir / "probe.png")
    if cfg.claim is not None:  # the preset's verdict, as `normbench compare <run_dir>` gives it
        _write_verdicts(cfg, run_dir, settings, table)
    print(f"run_dir: {run_dir}", flush=True)


def _settings(
    cfg: NormbenchConfig, jobs: list[NormbenchConfig], seeds: list[Any]
) -> dict[str, Any]:
    """What the probe measured, as its tables and the verdicts state it."""
    p = cfg.probe
    return {
        "norms": sorted(
            {str(j.norm.name) for j in jobs}, key=[str(j.norm.name) for j in jobs].index
        ),
        "depths": sorted({j.depth for j in jobs}),
        "seeds": seeds,
        "batches": p.batches,
        "batch_size": p.batch_size,
        "context": cfg.model.context,
        "lr": p.lr,
        "ladder": p.ladder,
        "precision": "fp32",
        "data": str(cfg.data.label),
    }


def _write_verdicts(
    cfg: NormbenchConfig, run_dir: Path, settings: dict[str, Any], table: dict[str, Any]
) -> None:

    probe = Probe(run_dir, flat(as_dict(cfg), tuples=True), {"settings": settings, **table})
    verdicts = judge_claims([], [probe])
    write_verdicts(run_dir, verdicts)
    for v in verdicts:
        print(f"{v.title}: {v.outcome} ({run_dir / 'verdicts.md'})", flush=True)


# --- the tables ---------------------------------------------------------------------------


def _mean_rows(
    who: dict[str, Any], rows: list[list[dict[str, Any]]], ident: str
) -> list[dict[str, Any]]:
    """Rows[seed][i] -> one row per i: `ident` as is, every other key as mean and std over
    the seeds."""
    out = []
    for i, first in enumerate(rows[0]):
        row: dict[str, Any] = {**who, ident: first[ident]}
        for key in first:
            if key != ident:
                row[key], row[f"{key}_std"] = mean_std([r[i][key] for r in rows])
        out.append(row)
    return out


def probe_tables(
    jobs: list[Any],
    tokens_for: Callable[[Any], Any],
    *,
    seeds: list[int],
    batches: int,
    batch_size: int,
    lr: float | None,
    device: torch.device,
    ladder: int = 0,
) -> dict[str, Any]:
    """Probe every (placement, depth) config in `jobs` over the seeds (run/probe.py): the
    tables (means and standard deviations over seeds: `layers`, `models`, and `ladder`, the
    output change per step size when `ladder` > 0) and the same rows per seed (`per_seed`)."""
    table: dict[str, Any] = {"layers": [], "models": [], "ladder": []}
    seed_rows: dict[str, list[dict[str, Any]]] = {"layers": [], "models": [], "ladder": []}
    for cfg in jobs:
        step_lr = lr if lr is not None else cfg.optim.lr
        per_seed = probe_seeds(
            cfg, tokens_for(cfg).train, seeds, batches, batch_size, step_lr, ladder, device
        )
        who = {"norm": str(cfg.norm.name), "kind": str(cfg.norm.kind), "depth": cfg.depth}
        for seed, result in zip(seeds, per_seed, strict=True):
            seed_rows["layers"] += [{**who, "seed": seed, **row} for row in result["layers"]]
            seed_rows["ladder"] += [{**who, "seed": seed, **row} for row in result["ladder"]]
            seed_rows["models"].append(
                {**who, "seed": seed, "lr": step_lr, **{k: result[k] for k in MODEL_KEYS}}
            )
        table["layers"] += _mean_rows(who, [r["layers"] for r in per_seed], "layer")
        table["ladder"] += _mean_rows(who, [r["ladder"] for r in per_seed], "lr")
        model_row: dict[str, Any] = {**who, "lr": step_lr}
        for key in MODEL_KEYS:
            model_row[key], model_row[f"{key}_std"] = mean_std([r[key] for r in per_seed])
        table["models"].append(model_row)
        log.info(
            "probe %s-%s depth %d: output change %.4g, logit change %.4g, last-layer MLP "
            "gradient %.4g, hidden norm at the output %.4g",
            who["norm"],
            who["kind"],
            cfg.depth,
            model_row["output_change"],
            model_row["logit_change"],
            table["layers"][-2]["grad_mlp"],
            table["layers"][-1]["hidden_norm"],
        )
    return {**table, "per_seed": seed_rows}


# --- outputs ----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    return markdown.table(keys, [[_fmt(row.get(k)) for k in keys] for row in rows])


def _with_std(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows whose `key` cells read 'mean ± std' when a std over seeds exists."""
    out = []
    for row in rows:
        new = dict(row)
        for key in keys:
            if row.get(f"{key}_std") is not None:
                new[key] = f"{row[key]:.4g} ± {row[f'{key}_std']:.2g}"
        out.append(new)
    return out


def write_outputs(run_dir: Path, table: dict[str, Any], settings: dict[str, Any]) -> list[Path]:
    """probe.json, probe.csv (layers), probe.md (both tables) and the figures."""
    (run_dir / "probe.json").write_text(
        json.dumps({"settings": settings, **table}, indent=1) + "\n"
    )
    layer_keys = list(dict.fromkeys(k for row in table["layers"] for k in row))
    # (probe.json also holds the per-seed rows; the CSV and markdown show means and stds.)
    with open(run_dir / "probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=layer_keys)
        writer.writeheader()
        writer.writerows(table["layers"])
    shown_layers = [k for k in layer_keys if not k.endswith("_std")]
    model_keys = ["norm", "kind", "depth", "lr", *MODEL_KEYS]
    seeds = ", ".join(map(str, settings["seeds"]))
    md = (
        f"# normbench probe\n\nAt initialization, float32, {settings['batches']} batches of "
        f"{settings['batch_size']} x {settings['context']} tokens, seeds {seeds} "
        f"(mean ± std over seeds).\n\n## Per model\n\n"
        + _markdown(_with_std(table["models"], MODEL_KEYS), model_keys)
        + "\n## Per layer (layer N + 1: the output of the last block)\n\n"
        + _markdown(_with_std(table["layers"], tuple(shown_layers)), shown_layers)
    )
    if table.get("ladder"):
        keys = ["norm", "kind", "depth", "lr", "output_change", "logit_change"]
        md += (
            "\n## Output change per step size (probe.ladder: probe.lr / 2^k, each step from "
            "the same initialization)\n\n"
            + _markdown(_with_std(table["ladder"], ("output_change", "logit_change")), keys)
        )
    (run_dir / "probe.md").write_text(md)
    return plot(run_dir, table)
