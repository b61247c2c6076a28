"""Shared fixtures: small real text files, an isolated cache, and a CLI runner.

Everything runs offline: the tokenizer ships with the package, the text comes from the
WikiText-2 files in ../shared (beside the repository; NORMBENCH_SHARED overrides), and
W&B runs in offline mode inside each run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NORMBENCH_SHARED", REPO.parent / "shared"))
WIKITEXT = SHARED / "data" / "wikitext-2"

# A model small enough for a subprocess run in a few seconds on 2 CPU cores.
TINY = [
    "depth=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.context=32",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.log_every=2",
    "optim.warmup_steps=2",
]


def wikitext_lines(split: str, n: int) -> list[str]:
    path = WIKITEXT / f"wiki.{split}.tokens"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the repository")
    with open(path, encoding="utf-8") as f:
        return [line for _, line in zip(range(n), f, strict=False)]


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


def cli_environment(root: Path) -> dict[str, str]:
    """Environment of a CLI subprocess: isolated cache under `root`, offline W&B and hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update(
        NORMBENCH_CACHE_DIR=str(root / "cache"),
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(root / "hf"),
        NETRC=str(root / "no-netrc"),
    )
    return env


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return cli_environment(tmp_path)


def run_cli(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m normbench <args>` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "normbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: list[str], cwd: Path, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    """Start `python -m normbench <args>` in the background (to signal or kill it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "normbench", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


def wait_for(predicate: Callable[[], Any], timeout: float = 180, poll: float = 0.05) -> None:
    """Poll until `predicate()` is true; AssertionError after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError("timed out")


def text_data(train: Path, val: Path) -> list[str]:
    return ["data=text", f"data.train_path={train}", f"data.val_path={val}"]


def compose_config(*overrides: str) -> Any:
    """The validated config that `normbench train <overrides>` would run (real Hydra)."""
    from hydra import compose, initialize_config_dir

    from normbench.cli import config_dir
    from normbench.config import register_configs, validate

    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    validate(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_training(
    text_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Train a tiny model in-process with the real loop: 20 steps of 4 x 32 tokens.

    In float32: at d_model=32 a bf16 LM head is ~7x slower than float32 on a CPU (the
    50304 x 32 product is too thin for AMX), and the bf16 path is tested on its own.
    """
    from normbench.config import to_container
    from normbench.data import load_tokens
    from normbench.logger import NullLogger
    from normbench.record import RunRecord, new_summary
    from normbench.train import train

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
        record.write_config(to_container(cfg))
        summary = new_summary()
        train(cfg, load_tokens(cfg.data), record, NullLogger(), summary)
        record.write_summary(summary)
        record.close()
        run.last_dir = run_dir
        return read_jsonl(run_dir / "metrics.jsonl"), summary

    return run


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
