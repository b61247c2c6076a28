"""The Hydra task function of `normbench probe`: probe every job at initialization, write
the tables and figures (analysis/probe.py), and for a claim preset the verdicts, as
`normbench compare <run_dir>` gives them. `launch.py` hands `probe_task` to Hydra."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from normbench.run.config import NormbenchConfig, as_dict, resolve

log = logging.getLogger("normbench")


def probe_task(composed: DictConfig, jobs: list[NormbenchConfig]) -> None:
    """The Hydra job of `normbench probe`: probe every config, write tables and figures."""
    from hydra.core.hydra_config import HydraConfig

    from normbench.analysis.probe import run_probe, write_outputs
    from normbench.run.data import load_tokens
    from normbench.run.files import write_atomic
    from normbench.run.runtime import resolve_device, tune_cpu_allocator

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
    table = run_probe(
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
    from normbench.analysis.claims import judge_claims
    from normbench.analysis.records import Probe
    from normbench.analysis.verdict import write_verdicts
    from normbench.run.rundir import flat

    probe = Probe(run_dir, flat(as_dict(cfg), tuples=True), {"settings": settings, **table})
    verdicts = judge_claims([], [probe])
    write_verdicts(run_dir, verdicts)
    for v in verdicts:
        print(f"{v.title}: {v.outcome} ({run_dir / 'verdicts.md'})", flush=True)
