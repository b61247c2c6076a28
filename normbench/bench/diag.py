"""`python -m normbench.bench --diag`: the cost of the per-layer diagnostics (normbench/run/monitor/diag.py).

Plain and instrumented training steps interleaved on one model, so that drift in the
machine's speed cancels; the fastest step of each kind is reported.
"""

from __future__ import annotations

import time
from typing import Any

from normbench.run.hardware import synchronize
from normbench.run.monitor.diag import Diagnostics


def measure_diag(trainer: Any, steps: int, warmup: int) -> dict[str, Any]:
    """The cost of the per-layer diagnostics, on one model, steps interleaved so that drift
    in the machine's speed cancels: a plain step, a step with the per-layer statistics of
    the ring buffer (every step in training), a step with the full diagnostics (every
    diag.every steps). The fastest step of each: on a shared machine the slow steps measure
    the neighbours, the fastest what the step itself costs."""
    cfg, model = trainer.cfg, trainer.model
    d, history = cfg.diag, cfg.divergence.history
    modes = {
        "off": Diagnostics(model, every=0, per_param=False, history=0),
        "per-layer": Diagnostics(model, every=0, per_param=False, history=history,
                                 attn_rows=d.attn_rows),
        "full": Diagnostics(model, every=1, per_param=d.per_param, history=history,
                            from_init=d.from_init, attn_rows=d.attn_rows),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(warmup + steps):
        order = list(modes) if i % 2 == 0 else list(reversed(modes))
        for name in order:
            trainer.diag = modes[name]  # the Trainer's own step, with this instrumentation
            synchronize(trainer.device)
            tic = time.perf_counter()
            trainer.step(i + 1)
            synchronize(trainer.device)
            if i >= warmup:
                times[name].append(time.perf_counter() - tic)
    med = {name: min(t) for name, t in times.items()}
    every = cfg.diag.every
    # the training loop's mix: per-layer statistics every step, full every diag.every steps
    default = med["per-layer"] + (med["full"] - med["per-layer"]) / every if every else med["off"]
    return {
        "placement": str(cfg.norm.name),
        "depth": cfg.depth,
        "precision": trainer.precision,
        "steps": steps,
        "fastest_s": med,
        "overhead_per_layer": med["per-layer"] / med["off"] - 1,
        "overhead_full": med["full"] / med["off"] - 1,
        "overhead_default": default / med["off"] - 1,
        "diag_every": every,
    }


def main(trainer: Any, steps: int, warmup: int) -> None:
    """Print the cost of the diagnostics on `trainer` (bench.bench_trainer: random tokens)."""
    result = measure_diag(trainer, steps, warmup)
    ms = {k: f"{v * 1e3:,.0f} ms" for k, v in result["fastest_s"].items()}
    print(
        f"{result['placement']} depth {result['depth']} {result['precision']}, fastest step "
        f"over {steps}: plain {ms['off']}, with per-layer statistics {ms['per-layer']} "
        f"(+{result['overhead_per_layer']:.1%}), with full diagnostics {ms['full']} "
        f"(+{result['overhead_full']:.1%}); the defaults (per-layer every step, full every "
        f"{result['diag_every']}): +{result['overhead_default']:.1%}"
    )
