"""`python -m normbench.run.bench --diag`: the cost of the per-layer diagnostics (normbench/run/diag.py).

Plain and instrumented training steps interleaved on one model, so that drift in the
machine's speed cancels; the fastest step of each kind is reported.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from normbench.model import GPT
from normbench.run.data import RandomWindows
from normbench.run.diag import Diagnostics
from normbench.run.hardware import synchronize
from normbench.run.optim import build_optimizer
from normbench.run.train import (
    choose_precision,
    forward_backward,
    resolve_device,
    tune_cpu_allocator,
)


def setup(cfg: Any) -> tuple[torch.device, str, GPT, torch.optim.Optimizer, RandomWindows]:
    """The device, precision, model, optimizer and batches of random tokens of a config.

    Random tokens: the model's speed, without the data pipeline; the step and the evaluation
    timed are those of `normbench train` (normbench/run/train.py).
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
    return device, choose_precision(cfg, device).precision, model, optimizer, batches


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
            synchronize(device)
            tic = time.perf_counter()
            with diag.watch(i + 1):
                loss, grad_norm = forward_backward(
                    model, x, y, precision, clip=1.0, on_grads=diag.on_grads
                )
            stats = diag.step_stats(loss, grad_norm)
            diag.before_update()
            optimizer.step()
            diag.after_update(stats)
            synchronize(device)
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


def main(cfg: Any, steps: int, warmup: int) -> None:
    result = measure_diag(cfg, steps, warmup)
    ms = {k: f"{v * 1e3:,.0f} ms" for k, v in result["fastest_s"].items()}
    print(
        f"{result['placement']} depth {result['depth']} {result['precision']}, fastest step "
        f"over {steps}: plain {ms['off']}, with per-layer statistics {ms['per-layer']} "
        f"(+{result['overhead_per_layer']:.1%}), with full diagnostics {ms['full']} "
        f"(+{result['overhead_full']:.1%}); the defaults (per-layer every step, full every "
        f"{result['diag_every']}): +{result['overhead_default']:.1%}"
    )
