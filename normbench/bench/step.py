"""`make bench`: training throughput, memory and MFU against a plain PyTorch GPT-2 step.

    python -m normbench.bench [--steps N] [--warmup N] [--per-sync K] [--cases LIST]
                              [--nanogpt DIR] [--trajectory N] [--startup] [--diag]
                              [--json PATH] [overrides...]

The bench configuration is GPT-2's vocabulary, context 256, width 256, 4 heads, depth 8,
batch 16, Pre-LN, AdamW (`BENCH` below; overrides apply on top). Each case runs in a fresh
process (spawned), so that its peak resident memory is its own and no allocator setting
leaks between cases; cases alternate for `--rounds`, and the median is reported:

- `normbench`: the training step of `normbench train` (the default path: bf16 autocast,
  norms in float32, the fused chunked LM head + loss, fused AdamW, the per-layer statistics
  of the divergence ring buffer every step and the full diagnostics every diag.every);
- `baseline`: a plain eager float32 GPT-2 step written from the equations
  (normbench/bench/baseline.py, nanoGPT-style), AdamW with its default kernels;
- `deep`: normbench at depth 48, and `post`: normbench with norm=post (the speedups hold
  across variants).

Steps are timed K at a time between two synchronizations of the device (`--per-sync`), so
that a step that never waits for the device is measured as it trains. With `--nanogpt DIR`
(a karpathy/nanoGPT checkout) its own step runs too, eager and compiled, in the same run
(unless `--cases` names one of them).

Printed per case: tokens/s, ms/step, peak RSS, model FLOPs per token (6N + 12 L d T with N
the weights of the matrix products, the tied LM head included once, embeddings' lookups
excluded), achieved FLOP/s and MFU against the peak of a large bf16 (and float32) matrix
product measured on this machine in the same run; on CUDA the kernels per step and the
fraction of the time the GPU ran none (torch.profiler over 5 steps); then the ratios to the
references.
`--trajectory N` trains normbench and the baseline from the same initial weights on the same
WikiText-2 batches for N steps and prints how far their losses differ. `--startup` times
`normbench train` from the command to its first training step. `--diag` measures the cost
of the per-layer diagnostics instead (interleaved steps on one model). Speed goals are
checked here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from torch.profiler import ProfilerActivity, profile

from normbench.bench.baseline import (
    BaselineGPT,
    baseline_optimizer,
    baseline_step,
    nanogpt_step,
    random_tokens,
    vocab_of,
)
from normbench.bench.diag import main as diag_main
from normbench.bench.head import main as head_main
from normbench.model.gpt import GPT, matrix_weights
from normbench.run import hardware
from normbench.run.config.resolve import resolve
from normbench.run.config.schema import NormbenchConfig, config_dir, register_configs
from normbench.run.data.batches import RandomWindows
from normbench.run.data.tokens import load_tokens
from normbench.run.hardware import product_tflops, synchronize
from normbench.run.runtime import resolve_device
from normbench.run.trainer import Trainer

if TYPE_CHECKING:
    from normbench.run.trainer import Trainer

BENCH = [
    "divergence.action=continue",  # a detector on random tokens must not skip an update
    "depth=8",
    "model.d_model=256",
    "model.n_heads=4",
    "model.context=256",
    "train.batch_size=16",
    "norm=pre",
    "logger=none",
]
CASES = {  # name: overrides on top of BENCH
    "normbench": [],
    "baseline": [],
    "deep": ["depth=48"],
    "baseline-deep": ["depth=48"],
    "post": ["norm=post"],
    # nanoGPT's own step (its model.py, from --nanogpt DIR): float32 eager on a CPU, as its
    # train.py runs there; on a GPU bf16 autocast and fused AdamW (its defaults), compiled
    # in `nanogpt-compile` as its train.py does by default.
    "nanogpt": [],
    "nanogpt-compile": [],
}
# The levers of the default path, each switched off alone (`--levers`), or compile switched on.
LEVERS = {
    "fp32": ["precision=fp32"],
    "bf16": ["precision=bf16"],
    "unfused-head": ["model.fused_head=false"],
    "chunk-256": ["model.head_chunk=256"],
    "chunk-4096": ["model.head_chunk=4096"],
    "unfused-adamw": ["optim.fused=false"],
    "no-mallopt": [],
    "no-diag": ["diag.every=0", "divergence.history=0"],
    "one-thread": ["threads=1"],
    "compile": ["train.compile=true"],
    "reduce-overhead": ["train.compile=reduce-overhead"],  # CUDA graphs
}
BASELINES = ("baseline", "baseline-deep")
NANOGPT = ("nanogpt", "nanogpt-compile")
REFERENCES = BASELINES + NANOGPT


def compose(overrides: list[str]) -> Any:
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*BENCH, *overrides])
    return resolve(cfg)


def flops_per_token(cfg: NormbenchConfig) -> float:
    """6N + 12 L d T: N = the block matrices (12 d^2 per block) + the LM head (vocab x d)."""
    d, L, T = cfg.model.d_model, cfg.depth, cfg.model.context
    return 6 * matrix_weights(L, d, vocab_of(cfg)) + 12 * L * d * T


def matmul_peak(dtype_name: str, device: str = "cpu", reps: int = 6) -> float:
    """FLOP/s of the fastest of `reps` (n x n) @ (n x n) products in this dtype: n = 2048 on
    a CPU, 8192 on a GPU (float32 without TF32, PyTorch's default)."""

    n = 2048 if device == "cpu" else 8192
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    return product_tflops(dtype, (n, n, n), device, reps=reps) * 1e12


def bench_trainer(cfg: NormbenchConfig, allocator: bool = True) -> Trainer:
    """The Trainer of `normbench train` on random tokens, recording nothing; `allocator`:
    whether it tunes the CPU allocator (off for the `no-mallopt` lever)."""

    return Trainer(cfg, random_tokens(cfg, cfg.seed), tune_allocator=allocator)


def time_steps(step: Any, device: Any, steps: int, warmup: int, per_sync: int = 1) -> list[float]:
    """Seconds per step of `steps` calls of `step(i)` after `warmup` untimed ones, timed
    `per_sync` steps at a time between two synchronizations: within them the host may run
    ahead of the device, as in training (on a CPU the two are the same)."""
    for i in range(warmup):
        step(i + 1)
    synchronize(device)
    times: list[float] = []
    done = warmup
    while len(times) < steps:
        k = min(per_sync, steps - len(times))
        tic = time.perf_counter()
        for _ in range(k):
            done += 1
            step(done)
        synchronize(device)
        times += [(time.perf_counter() - tic) / k] * k
    return times


def device_profile(step: Any, first: int, steps: int) -> dict[str, float]:
    """On CUDA, with torch.profiler over `steps` calls: the GPU kernels launched per step
    and the fraction of the wall time the GPU ran none (its idle fraction)."""
    synchronize("cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tic = time.perf_counter()
        for i in range(steps):
            step(first + i)
        synchronize("cuda")
        wall_us = (time.perf_counter() - tic) * 1e6
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, end = 0.0, -math.inf
    for start, stop in kernels:  # the union of the kernels' intervals
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return {"kernels_per_step": len(kernels) / steps, "gpu_idle": max(0.0, 1 - busy / wall_us)}


def run_case(
    case: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    nanogpt: str | None = None,
    per_sync: int = 1,
) -> dict[str, Any]:
    """One case, in this (fresh) process: median ms per step over `steps` after `warmup`,
    `per_sync` steps per synchronization; on CUDA also the kernels per step and the GPU's
    idle fraction."""

    cfg = compose([*CASES.get(case, []), *LEVERS.get(case, []), *overrides])
    B, T = cfg.train.batch_size, cfg.model.context
    device = resolve_device(str(cfg.device))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if case in BASELINES:
        step, precision = baseline_step(cfg, device), "fp32"
    elif case in NANOGPT:
        step, precision = nanogpt_step(cfg, device, nanogpt, case == "nanogpt-compile")
    else:  # the very step of `normbench train`
        trainer = bench_trainer(cfg, allocator=case != "no-mallopt")
        step, precision = trainer.step, trainer.precision
    times = time_steps(step, device, steps, warmup, per_sync)
    ms = statistics.median(times) * 1e3
    profiled = device_profile(step, warmup + steps + 1, 5) if device.type == "cuda" else {}
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": case,
        "placement": "-" if case in NANOGPT else str(cfg.norm.name),
        "depth": cfg.depth,
        "device": device.type,
        "precision": precision,
        "steps": steps,
        "ms_per_step": ms,
        "ms_per_step_min": min(times) * 1e3,
        "tokens_per_s": B * T / (ms / 1e3),
        "peak_mib": peak_mib,
        "memory": "GPU allocated" if device.type == "cuda" else "RSS",
        "flops_per_token": flops_per_token(cfg),
        "threads": torch.get_num_threads(),
        "per_sync": per_sync,
        **profiled,
    }


def _child(fn_name: str, args: tuple, queue: Any) -> None:
    try:
        queue.put(("ok", globals()[fn_name](*args)))
    except BaseException as e:  # reported by the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def in_child(fn_name: str, *args: Any) -> Any:
    """Run a function of this module in a fresh spawned process and return its result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn_name}{args[:1]} failed: {value}")
    return value


# A trajectory compares implementations at one learning rate: no warmup, no schedule.
CONSTANT_LR = ["optim.schedule=constant", "optim.warmup_steps=0"]


def trajectory(which: str, overrides: list[str], steps: int, init: str) -> list[float]:
    """Losses of `steps` training steps on WikiText-2 windows from the weights in `init`:
    normbench's Trainer.step, or the baseline's step on the same batches."""

    cfg = compose([*overrides, *CONSTANT_LR])
    tokens = load_tokens(cfg.data)
    if which != "baseline":
        trainer = Trainer(cfg, tokens)
        trainer.model.load_state_dict(torch.load(init, weights_only=True))
        results = [trainer.step(i + 1) for i in range(steps)] + [trainer.flush()]
        return [r.loss for r in results if r is not None]

    batches = RandomWindows(tokens.train, cfg.model.context, cfg.train.batch_size, cfg.seed)
    source = GPT.from_config(cfg)
    source.load_state_dict(torch.load(init, weights_only=True))
    model = BaselineGPT(
        vocab_of(cfg), cfg.model.context, cfg.model.d_model, cfg.model.n_heads, cfg.depth
    )
    model.load_from(source)
    optimizer = baseline_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    losses = []
    for _ in range(steps):
        x, y = batches.next(torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def save_init(overrides: list[str], path: str) -> None:
    cfg = compose(overrides)
    torch.manual_seed(cfg.seed)
    torch.save(GPT.from_config(cfg).state_dict(), path)


def startup(overrides: list[str]) -> float:
    """Seconds from the command to the first training step of `normbench train`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "normbench", "train", *BENCH, *overrides,
               "train.max_steps=1", "optim.warmup_steps=0", "train.eval_every=1000",
               f"hydra.run.dir={tmp}/run"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(Path(tmp, "run", "summary.json").read_text())["startup_s"]


def report(results: list[dict[str, Any]], peaks: dict[str, float]) -> list[str]:
    """One line per case (speed, memory, FLOP/s, the fractions of the measured bf16 and
    float32 product peaks, the ratios to the references at the same depth), then the levers."""
    lines = []
    refs = {(r["case"], r["depth"]): r for r in results if r["case"] in REFERENCES}
    for r in results:
        achieved = r["tokens_per_s"] * r["flops_per_token"]
        line = (
            f"{r['case']:<15} {r['placement']:<5} depth {r['depth']:<3} {r['device']} "
            f"{r['precision']}: {r['tokens_per_s']:>9,.0f} tok/s {r['ms_per_step']:>8,.1f} "
            f"ms/step  peak {r['memory']} {r['peak_mib']:>7,.0f} MiB  "
            f"{r['flops_per_token'] / 1e6:.1f} MFLOP/token  {achieved / 1e12:.3f} TFLOP/s = "
            f"{achieved / peaks['bf16']:.1%} of the bf16 peak, {achieved / peaks['fp32']:.1%} "
            "of the fp32 peak"
        )
        if "kernels_per_step" in r:  # CUDA
            line += f"  {r['kernels_per_step']:,.0f} kernels/step, GPU idle {r['gpu_idle']:.1%}"
        if r["case"] not in REFERENCES:
            ratios = [
                f"x{r['tokens_per_s'] / ref['tokens_per_s']:.2f} tokens/s, "
                f"{r['peak_mib'] / ref['peak_mib']:.2f}x memory of {name}"
                for (name, depth), ref in refs.items()
                if depth == r["depth"]
            ]
            line += "".join(f"  | {ratio}" for ratio in ratios)
        lines.append(line)
    default = next((r for r in results if r["case"] == "normbench"), None)
    for r in results:
        if default is not None and r["case"] in LEVERS:
            lines.append(
                f"lever {r['case']:<14} tokens/s {r['tokens_per_s'] / default['tokens_per_s'] - 1:+.1%}"
                f", peak memory {r['peak_mib'] / default['peak_mib'] - 1:+.1%} against the "
                "default path"
            )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m normbench.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each case")
    parser.add_argument("--per-sync", type=int, default=10,
                        help="steps timed between two synchronizations of the device")  # fmt: skip
    parser.add_argument("--cases", default="normbench,baseline,post,deep,baseline-deep")
    parser.add_argument("--levers", action="store_true", help="also each lever alone")
    parser.add_argument("--trajectory", type=int, default=0, help="also compare N steps")
    parser.add_argument("--startup", action="store_true", help="also time command -> step 1")
    parser.add_argument("--diag", action="store_true", help="only the diagnostics' cost")
    parser.add_argument("--json", type=Path, default=None, help="append the results here")
    parser.add_argument("--nanogpt", default=None, help="a karpathy/nanoGPT checkout (cases "
                        "nanogpt, nanogpt-compile run its own model.py)")  # fmt: skip
    parser.add_argument("--head", default=None, metavar="TOKENS,D,VOCAB",
                        help="only the LM head + loss: normbench's against other kernels")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="config overrides, as for `train`")
    return parser.parse_args(argv)


def machine_line(device: Any, peaks: dict[str, float]) -> str:
    where = torch.cuda.get_device_name() if device == "cuda" else hardware.cpu_name()
    return (
        f"machine: {where} ({device}), {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); matmul peak (best of 6): bf16 "
        f"{peaks['bf16'] / 1e12:.2f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s"
    )


def measure_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case, each `--rounds` times in a fresh process, alternating; the medians."""
    cases = [c for c in args.cases.split(",") if c] + (list(LEVERS) if args.levers else [])
    if args.nanogpt and not any(c in NANOGPT for c in cases):  # eager and compiled
        cases += list(NANOGPT)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            runs[case].append(
                in_child(
                    "run_case",
                    case,
                    args.overrides,
                    args.steps,
                    args.warmup,
                    args.nanogpt,
                    args.per_sync,
                )
            )
    results = []
    for rs in runs.values():
        best = dict(rs[0])
        for key in ("ms_per_step", "tokens_per_s", "peak_mib"):
            best[key] = statistics.median(r[key] for r in rs)
        best["rounds"] = len(rs)
        results.append(best)
    return results


def compare_trajectories(overrides: list[str], n: int) -> dict[str, list[float]]:
    """normbench (its default precision and float32) and the baseline, N steps from the same
    initial weights on the same batches; prints how far their losses differ."""
    with tempfile.TemporaryDirectory() as tmp:
        init = str(Path(tmp) / "init.pt")
        in_child("save_init", overrides, init)
        ours = in_child("trajectory", "normbench", overrides, n, init)
        fp32 = in_child("trajectory", "normbench", [*overrides, "precision=fp32"], n, init)
        base = in_child("trajectory", "baseline", overrides, n, init)
    last = slice(-20, None)
    # normbench in fp32 against the baseline shows the two implementations agree; the
    # default path against its own fp32 run is the bf16 tolerance it is held to.
    for name, a, b in (
        ("normbench vs baseline", ours, base),
        ("normbench vs normbench fp32 (bf16 alone)", ours, fp32),
        ("normbench fp32 vs baseline (implementations)", fp32, base),
    ):
        diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
        print(
            f"loss trajectory over {n} steps, same init and batches, {name}: max |diff| "
            f"{max(diffs):.4f}, mean |diff| {statistics.fmean(diffs):.4f}, last 20 steps "
            f"{statistics.fmean(a[last]):.4f} vs {statistics.fmean(b[last]):.4f}",
            flush=True,
        )
    return {"normbench": ours, "normbench_fp32": fp32, "baseline": base}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.diag:
        diag_main(bench_trainer(compose(args.overrides)), args.steps, args.warmup)
        return
    if args.head:
        head_main(args.head, str(compose(args.overrides).device), args.steps)
        return

    device = hardware.resolve_device(str(compose(args.overrides).device))
    peaks = {name: matmul_peak(name, device) for name in ("bf16", "fp32")}
    print(machine_line(device, peaks), flush=True)
    results = measure_cases(args)
    for line in report(results, peaks) if results else []:
        print(line, flush=True)
    extra: dict[str, Any] = {"peaks": peaks}
    if args.trajectory:
        extra["trajectory"] = compare_trajectories(args.overrides, args.trajectory)
    if args.startup:
        seconds = [startup(args.overrides) for _ in range(3)]
        extra["startup_s"] = seconds
        print(f"command to first training step: {', '.join(f'{s:.2f}' for s in seconds)} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps({"results": results, **extra}) + "\n")


if __name__ == "__main__":
    main()
