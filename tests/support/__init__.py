"""Helpers shared by the tests: the repository's paths, a tiny model's overrides, a CLI
runner, the composed config, JSONL records. The fixtures that use them are in conftest.py.

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

REPO = Path(__file__).resolve().parents[2]
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

    from normbench.run.config.resolve import resolve
    from normbench.run.config.schema import config_dir, register_configs

    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return resolve(cfg)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def random_trainer(*overrides: str) -> Any:
    """The Trainer of a TINY config on the CPU in float32, on uniformly random GPT-2 token
    ids (its steps, without the data pipeline)."""
    import numpy as np

    from normbench.run.data.tokens import TokenSplits
    from normbench.run.trainer import Trainer

    cfg = compose_config(*TINY, "device=cpu", "precision=fp32", "logger=none", *overrides)
    tokens = np.random.default_rng(0).integers(0, 50257, size=20_000).astype(np.uint16)
    return Trainer(cfg, TokenSplits(tokens, tokens[:2_000], Path("."), {"label": "random"}))
