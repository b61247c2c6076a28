"""`make bench`: training and evaluation throughput of a config, on this machine.

    python -m normbench.bench [--steps N] [--warmup N] [--json PATH] [--diag] [overrides...]

Builds the model of the composed config (defaults: `normbench train`'s), runs `--warmup`
untimed and `--steps` timed training steps (the loop's own `forward_backward` and AdamW step)
on random tokens, then times `evaluate` over as many tokens as the timed steps saw. Prints
one line per measurement and optionally writes them as JSON. `--diag` measures instead the
cost of the per-layer diagnostics (normbench/diag.py), interleaving plain and instrumented
steps on one model. Speed goals are checked here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from normbench.cli import config_dir
from normbench.config import register_configs, validate
from normbench.data import RandomWindows
from normbench.diag import Diagnostics
from normbench.model import GPT
from normbench.optim import build_optimizer
from normbench.train import evaluate, forward_backward, resolve_device, tune_cpu_allocator


def setup(cfg: Any) -> tuple[torch.device, str, GPT, torch.optim.Optimizer, RandomWindows]:
    """The device, precision, model, optimizer and batches of random tokens of a config.

    Random tokens: the model's speed, without the data pipeline; the step and the evaluation
    timed are those of `normbench train` (normbench/train.py).
    """
    device = resolve_device(str(cfg.device.value))
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(cfg.seed)
    model = GPT.from_config(cfg).to(device)
    optimizer = build_optimizer(model, cfg.optim, device)
    B, T = cfg.train.batch_size, cfg.model.context
    rng = np.random.default_rng(cfg.seed)
    train_tokens = rng.integers(0, 50257, size=B * T * 64 + 1).astype(np.uint16)
    batches = RandomWindows(train_tokens, T, B, seed=cfg.seed)
    return device, str(cfg.precision.value), model, optimizer, batches


def measure(cfg: Any, steps: int, warmup: int) -> dict[str, Any]:
    device, precision, model, optimizer, batches = setup(cfg)
    B, T = cfg.train.batch_size, cfg.model.context
    rng = np.random.default_rng(cfg.seed + 1)
    eval_tokens = rng.integers(0, 50257, size=B * T * steps + 1).astype(np.uint16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        x, y = batches.next(device)
        forward_backward(model, x, y, precision, clip=1.0)
        optimizer.step()

    for _ in range(warmup):
        train_step()
    sync()
    tic = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_s = time.perf_counter() - tic

    evaluate(model, eval_tokens[: B * T + 1], T, B, device, precision)  # warm up
    tic = time.perf_counter()
    evaluate(model, eval_tokens, T, B, device, precision)
    eval_s = time.perf_counter() - tic
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    return {
        "placement": str(cfg.norm.name),
        "kind": str(cfg.norm.kind),
        "depth": cfg.depth,
        "d_model": cfg.model.d_model,
        "context": T,
        "batch_size": B,
        "precision": precision,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "n_params": model.num_params(),
        "train_tokens_per_s": steps * B * T / train_s,
        "eval_tokens_per_s": steps * B * T / eval_s,
        "cuda_peak_gib": None if math.isnan(peak) else round(peak, 2),
        "torch": torch.__version__,
    }


def measure_diag(cfg: Any, steps: int, warmup: int) -> dict[str, Any]:
    """The cost of the per-layer diagnostics, on one model, steps interleaved so that drift
    in the machine's speed cancels: a plain step, a step with the per-layer statistics of
    the ring buffer (every step in training), a step with the full diagnostics (every
    diag.every steps). The fastest step of each: on a shared machine the slow steps measure
    the neighbours, the fastest what the step itself costs."""
    device, precision, model, optimizer, batches = setup(cfg)
    modes = {
        "off": Diagnostics(model, every=0, per_param=False, history=0),
        "per-layer": Diagnostics(model, every=0, per_param=False, history=16),
        "full": Diagnostics(model, every=1, per_param=cfg.diag.per_param, history=16),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(warmup + steps):
        order = list(modes) if i % 2 == 0 else list(reversed(modes))
        for name in order:
            diag = modes[name]
            x, y = batches.next(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            with diag.watch(i + 1):
                loss, grad_norm = forward_backward(
                    model, x, y, precision, clip=1.0, on_grads=diag.on_grads
                )
            stats = diag.step_stats(loss, grad_norm)
            diag.before_update()
            optimizer.step()
            diag.after_update(stats)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - tic)
    med = {name: min(t) for name, t in times.items()}
    every = cfg.diag.every
    # the training loop's mix: per-layer statistics every step, full every diag.every steps
    default = med["per-layer"] + (med["full"] - med["per-layer"]) / every if every else med["off"]
    return {
        "placement": str(cfg.norm.name),
        "depth": cfg.depth,
        "precision": precision,
        "steps": steps,
        "fastest_s": med,
        "overhead_per_layer": med["per-layer"] / med["off"] - 1,
        "overhead_full": med["full"] / med["off"] - 1,
        "overhead_default": default / med["off"] - 1,
        "diag_every": every,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m normbench.bench", description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="append the results here")
    parser.add_argument(
        "--diag",
        action="store_true",
        help="instead: the cost of the per-layer diagnostics (steps interleaved)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, as for `train`")
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*args.overrides, "logger=none"])
    validate(cfg)
    if args.diag:
        result = measure_diag(cfg, args.steps, args.warmup)
        ms = {k: f"{v * 1e3:,.0f} ms" for k, v in result["fastest_s"].items()}
        print(
            f"{result['placement']} depth {result['depth']} {result['precision']}, fastest step "
            f"over {args.steps}: plain {ms['off']}, with per-layer statistics {ms['per-layer']} "
            f"(+{result['overhead_per_layer']:.1%}), with full diagnostics {ms['full']} "
            f"(+{result['overhead_full']:.1%}); the defaults (per-layer every step, full every "
            f"{result['diag_every']}): +{result['overhead_default']:.1%}"
        )
    else:
        result = measure(cfg, args.steps, args.warmup)
        print(
            f"{result['placement']}-{result['kind']} depth {result['depth']} d "
            f"{result['d_model']} B {result['batch_size']} T {result['context']} "
            f"{result['precision']} on {result['device'] or 'cpu'} ({result['threads']} "
            f"threads): train {result['train_tokens_per_s']:,.0f} tok/s, "
            f"eval {result['eval_tokens_per_s']:,.0f} tok/s"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
