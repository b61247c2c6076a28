"""Shared fixtures: small real text files, an isolated cache, the real training loop, and
each xdist worker's share of the cores. The helpers they use are in tests/support/."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import (
    TINY,
    cli_environment,
    compose_config,
    read_jsonl,
    run_cli,
    text_data,
    wikitext_lines,
)


@pytest.fixture(scope="session")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Small train / validation text files cut from WikiText-2 (valid and test splits)."""
    folder = tmp_path_factory.mktemp("text")
    train, val = folder / "train.txt", folder / "val.txt"
    train.write_text("".join(wikitext_lines("valid", 400)), encoding="utf-8")
    val.write_text("".join(wikitext_lines("test", 40)), encoding="utf-8")
    return train, val


@pytest.fixture(scope="session", autouse=True)
def one_share_of_the_cores_per_worker() -> None:
    """Under pytest-xdist (`make test` runs `-n auto`) each worker keeps to its own share of
    the cores, and so do the CLI subprocesses it starts (they inherit the affinity, and
    `threads=null` counts the cores it allows): torch threads that outnumber the cores wait
    on each other at every parallel region, which made a loaded 2-core machine 10x slower."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    import torch

    cores = sorted(os.sched_getaffinity(0))
    index = int(worker[2:])
    mine = cores[index::count] if len(cores) >= count else [cores[index % len(cores)]]
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


SWEEP_ARGS = [*TINY, "train.max_steps=8", "train.eval_every=4", "optim.warmup_steps=0"]
SWEEP_ARGS += ["diag.every=4", "precision=fp32"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory, text_files: tuple[Path, Path]) -> Path:
    """A real 2 x 2 multirun: pre/post x lr 1e-3/10; lr=10 diverges. W&B offline.
    (compare's tests and the dashboard's read it; neither writes into it but a report
    under --out.)"""
    root = tmp_path_factory.mktemp("sweep")
    env = cli_environment(root)
    sweep_dir = root / "sweep"
    args = ["train", "-m", "norm=pre,post", "optim.lr=1e-3,10", *SWEEP_ARGS]
    args += [*text_data(*text_files), f"hydra.sweep.dir={sweep_dir}"]
    done = run_cli(args, cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    return sweep_dir


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return cli_environment(tmp_path)


@pytest.fixture(scope="session")
def tiny_training(
    text_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Train a tiny model in-process with the real loop: 20 steps of 4 x 32 tokens.

    In float32: at d_model=32 a bf16 LM head is ~7x slower than float32 on a CPU (the
    50304 x 32 product is too thin for AMX), and the bf16 path is tested on its own.
    """
    from normbench.run.config.resolve import as_dict
    from normbench.run.data.tokens import load_tokens
    from normbench.run.logger import NullLogger
    from normbench.run.record.writer import RunRecord
    from normbench.run.trainer import Trainer

    cache = tmp_path_factory.mktemp("cache")
    base = [
        *TINY,
        *text_data(*text_files),
        f"data.cache_dir={cache}",
        "train.max_steps=20",
        "train.eval_every=20",
        "train.log_every=5",
        "optim.lr=1e-2",
        "device=cpu",
        "precision=fp32",
        "logger=none",
    ]

    def run(*overrides: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The metrics.jsonl rows and the summary; `run.last_dir` holds the run directory."""
        cfg = compose_config(*base, *overrides)
        run_dir = tmp_path_factory.mktemp("run")
        record = RunRecord(run_dir)
        record.write_config(as_dict(cfg))
        trainer = Trainer(cfg, load_tokens(cfg.data), record, NullLogger())
        trainer.fit()
        record.write_summary(trainer.summary)
        record.close()
        run.last_dir = run_dir
        return read_jsonl(run_dir / "metrics.jsonl"), trainer.summary.to_dict()

    return run
