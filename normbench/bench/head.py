"""`python -m normbench.bench --head TOKENS,D,VOCAB`: the LM head and its loss alone.

normbench's fused chunked head (model/loss.py) against the unfused one and, where installed
(CUDA), the fused linear cross-entropy kernels of liger-kernel and cut-cross-entropy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from normbench.model.loss import linear_cross_entropy, reference_cross_entropy
from normbench.run import hardware


def implementations(y: torch.Tensor, dtype: torch.dtype) -> tuple[dict[str, Any], list[str]]:
    """name -> loss(h, w) of every head that runs here, and those skipped (with why)."""
    device = y.device

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def ours(h: Any, w: Any) -> Any:
        with autocast():
            return linear_cross_entropy(h, w, y)

    def unfused(h: Any, w: Any) -> Any:
        with autocast():
            return reference_cross_entropy(h, w, y)

    impls: dict[str, Any] = {"normbench": ours, "unfused": unfused}
    skipped = []
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        impls["liger-kernel"] = lambda h, w: liger(w.to(dtype), h.to(dtype), y)
    except Exception as e:  # not installed, or no GPU for its kernels
        skipped.append(f"liger-kernel ({type(e).__name__})")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        impls["cut-cross-entropy"] = lambda h, w: cce(h.to(dtype), w.to(dtype), y)
    except Exception as e:
        skipped.append(f"cut-cross-entropy ({type(e).__name__})")
    return impls, skipped


def time_head(
    fn: Any, h0: torch.Tensor, w0: torch.Tensor, reps: int
) -> tuple[list[float], Any, Any]:
    """Seconds of `reps` forward+backward passes (after one untimed), the last loss, and the
    GPU memory beyond the inputs (None on a CPU)."""
    device = h0.device
    h = h0.clone().requires_grad_()
    w = w0.clone().requires_grad_()
    times, base = [], 0
    for i in range(reps + 1):
        h.grad = w.grad = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        hardware.synchronize(device)
        tic = time.perf_counter()
        loss = fn(h, w)
        loss.backward()
        hardware.synchronize(device)
        if i:
            times.append(time.perf_counter() - tic)
    extra = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    return times, loss, extra


def head_bench(device_name: str, tokens: int, d: int, vocab: int, reps: int) -> list[dict]:
    """The LM head and its loss alone, forward and backward, on `tokens` rows of width `d`.
    Each gets float32 weights and hidden states as in training; the products run in the
    precision `precision=auto` picks here. Loss agreement is against a float32 unfused head."""
    device = torch.device(device_name)
    precision = hardware.pick("auto", device.type, None).precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    h0 = torch.randn(tokens, d, device=device)
    w0 = torch.randn(vocab, d, device=device) * d**-0.5
    y = torch.randint(0, vocab, (tokens,), device=device)
    exact = reference_cross_entropy(h0.double(), w0.double(), y).item()
    impls, skipped = implementations(y, dtype)
    out = []
    for name, fn in impls.items():
        try:
            times, loss, extra = time_head(fn, h0, w0, reps)
        except Exception as e:  # a kernel that does not run here
            skipped.append(f"{name} ({type(e).__name__}: {str(e)[:80]})")
            continue
        out.append({
            "impl": name, "ms": statistics.median(times) * 1e3, "precision": precision,
            "loss_error": abs(loss.item() - exact), "extra_mib": None if extra is None else extra / 2**20,
        })  # fmt: skip
    return out + [{"impl": line, "skipped": True} for line in skipped]


def main(shape: str, device: str, reps: int) -> None:
    """Print one line per head for `shape` = "TOKENS,D,VOCAB" on `device` (auto, cpu, ...)."""
    tokens, d, vocab = (int(v) for v in shape.split(","))
    where = hardware.resolve_device(device)
    for r in head_bench(where, tokens, d, vocab, reps):
        if r.get("skipped"):
            print(f"head {r['impl']}: skipped", flush=True)
            continue
        extra = "" if r["extra_mib"] is None else f", {r['extra_mib']:,.0f} MiB beyond inputs"
        print(
            f"head {r['impl']:<18} {tokens} x {d} -> {vocab} ({where} {r['precision']}): "
            f"{r['ms']:.2f} ms forward+backward{extra}, |loss - exact| {r['loss_error']:.1e}",
            flush=True,
        )
