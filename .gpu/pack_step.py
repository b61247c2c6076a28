"""The step of a pack of M runs (one architecture, M learning rates) against one run alone,
for docs/performance.md's packed-sweep figures: random tokens (no data on the device), the
GPU-size LR-sensitivity model (width 256, 4 heads, context 256, the full vocabulary), 20
steps timed after 5 (each step's values read, as `normbench train` reads them).
  python3 .gpu/pack_step.py DEPTH M1,M2,...
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from normbench.run.data.tokens import TokenSplits  # noqa: E402
from normbench.run.trainer import Run, Trainer  # noqa: E402

from support import compose_config  # noqa: E402

depth, sizes = int(sys.argv[1]), [int(m) for m in sys.argv[2].split(",")]
lrs = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1] * 8
ids = np.random.default_rng(0).integers(0, 50257, size=2_000_000).astype(np.uint16)
split = TokenSplits(ids, ids[:200_000], Path("."), {"label": "random"})


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def config(lr: float):
    return compose_config(
        "experiment=lr_sensitivity", f"depth={depth}", "model.d_model=256", "model.n_heads=4",
        "model.context=256", "data.vocab_limit=null", f"optim.lr={lr}", "logger=none",
        "divergence.action=continue", "train.max_steps=1000",
    )  # fmt: skip


for M in sizes:
    trainer = Trainer.pack([Run(config(lr)) for lr in lrs[:M]], split)
    for step in range(1, 6):
        trainer.step_all(step)
    trainer.flush_all()
    sync()
    n, start = 20, time.perf_counter()
    for step in range(6, 6 + n):
        trainer.step_all(step)
    trainer.flush_all()
    sync()
    ms = (time.perf_counter() - start) / n * 1e3
    tokens = M * 16 * 256 / (ms / 1e3)
    print(f"depth {depth}, pack of {M}: {ms:.1f} ms/step, {ms / M:.2f} ms per run-step, "
          f"{tokens:,.0f} tokens/s, {peak_gib():.1f} GiB peak on {trainer.device}")  # fmt: skip
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
