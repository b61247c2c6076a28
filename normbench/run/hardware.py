"""The device and precision a run uses, chosen from the hardware (`device=auto`, `precision=auto`).

bf16 autocast pays only where the hardware multiplies bf16 natively: a CUDA GPU with bf16
tensor cores (compute capability 8.0 and later), a CPU with AMX or AVX512_BF16 (x86) or
the BF16 extension (Arm). Elsewhere torch emulates bf16 in software, and it is slower than
float32: 50x on an AVX2-only AMD EPYC, about 5x on an AVX-512 Xeon without AMX (measured on
the project's 2-core development machines). So `precision=auto`, the default, decides:

1. from the hardware's capabilities (`Hardware`: CPU flags, the GPU's compute capability);
2. where a CPU (or an Apple GPU) claims a bf16 unit, confirmed by a micro-measurement
   (`measure_products`: bf16 and float32 products of a few hundred rows, well under a
   second), cached per machine, torch version and thread count under
   `<data.cache_dir>/hardware/`, so that a sweep measures once.

`choose_precision` is the decision itself, a pure function of the capabilities and the
measurement, so that it is tested for machines other than the one the tests run on. An
explicit `precision=bf16` on hardware where it is slow still runs, with a warning that gives
the measured factor.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from normbench.errors import ConfigError
from normbench.run.record.files import sha256_text, write_atomic

# CPU flags (Linux /proc/cpuinfo names) of a native bf16 unit, and how the reason names it.
BF16_CPU_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512_BF16", "bf16": "Arm BF16"}
# bf16 products must beat float32 by this factor for `auto` to take bf16 on a CPU or MPS:
# autocast adds casts and float32 norms, which a smaller gain in the products does not repay.
MIN_SPEEDUP = 1.25
MEASURE_N = 256  # the products measured are (N x 4N) @ (4N x N)
MEASURE_BUDGET_S = 0.08  # per dtype, after one warm-up product


@dataclass(frozen=True)
class Hardware:
    """What the choice depends on; `detect` reads it from this machine."""

    device: str  # cpu | cuda | mps
    name: str  # the CPU model, or the GPU's name
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    cuda_capability: tuple[int, int] | None = None
    mps_bf16: bool = False  # MPS supports bf16 (macOS 14 and later)

    @property
    def bf16_units(self) -> list[str]:
        """The CPU's native bf16 units, by name (empty: torch emulates bf16 here)."""
        return [label for flag, label in BF16_CPU_FLAGS.items() if flag in self.cpu_flags]


@dataclass(frozen=True)
class Measurement:
    """Matrix-product speed in each dtype on one device, in TFLOP/s."""

    bf16_tflops: float
    fp32_tflops: float

    @property
    def speedup(self) -> float:
        """How many times faster bf16 products are than float32 ones (below 1: slower)."""
        return self.bf16_tflops / self.fp32_tflops


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # bf16 | fp32
    reason: str
    speedup: float | None = None  # measured bf16 / float32 product speed, where measured
    warning: str | None = None  # for an explicit choice that is slow on this hardware

    def record(self) -> dict[str, Any]:
        """The fields stored in summary.json and the W&B config."""
        return {
            "precision": self.precision,
            "precision_reason": self.reason,
            "bf16_speedup": None if self.speedup is None else round(self.speedup, 3),
        }


def _factor(speedup: float) -> str:
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def choose_precision(
    requested: str, hw: Hardware, measure: Callable[[], Measurement | None] | None = None
) -> PrecisionChoice:
    """The precision to train in: `requested` (auto | bf16 | fp32) on hardware `hw`.

    `measure` gives the bf16 and float32 product speeds on `hw` (cached by the caller); it
    is called only where the answer depends on it: a CPU or Apple GPU that claims a bf16
    unit under `auto`, and an explicit bf16 where bf16 may be slow (for the warning).
    """
    if requested == "fp32":
        return PrecisionChoice("fp32", "precision=fp32 as set")
    if hw.device == "cuda":
        cap = hw.cuda_capability or (0, 0)
        if cap >= (8, 0):
            reason = f"{hw.name} has bf16 tensor cores (compute capability {cap[0]}.{cap[1]})"
            return PrecisionChoice("bf16", reason)
        why = f"{hw.name} (compute capability {cap[0]}.{cap[1]}) has no bf16 tensor cores"
        if requested == "bf16":
            return PrecisionChoice("bf16", "precision=bf16 as set", warning=f"{why}: bf16 is slow")
        return PrecisionChoice("fp32", why)
    unit = _bf16_unit(hw)
    measured = measure() if measure is not None and (unit or requested == "bf16") else None
    speedup = None if measured is None else measured.speedup
    if requested == "bf16":
        warning = None
        if speedup is not None and speedup < 1:
            warning = (
                f"bf16 products are {_factor(speedup)} than float32 on this {_where(hw)} "
                f"({unit or 'no bf16 unit: torch emulates bf16'}); precision=auto would "
                "choose fp32"
            )
        return PrecisionChoice("bf16", "precision=bf16 as set", speedup, warning)
    if not unit:
        what = "this Apple GPU has no bf16 support (macOS 14+)" if hw.device == "mps" else (
            f"{hw.name} has no bf16 unit (no AMX, AVX512_BF16 or Arm BF16): torch would "
            "emulate bf16"
        )  # fmt: skip
        return PrecisionChoice("fp32", what)
    if speedup is None:  # the measurement failed: go by the capability
        return PrecisionChoice("bf16", f"{hw.name} has {unit} (not measured)")
    if speedup >= MIN_SPEEDUP:
        reason = f"{hw.name} has {unit}: bf16 products measured {_factor(speedup)} than float32"
        return PrecisionChoice("bf16", reason, speedup)
    reason = (
        f"{hw.name} has {unit}, but bf16 products measured {_factor(speedup)} than float32 "
        f"(bf16 needs {MIN_SPEEDUP}x)"
    )
    return PrecisionChoice("fp32", reason, speedup)


def _bf16_unit(hw: Hardware) -> str:
    if hw.device == "mps":
        return "bf16 on the Apple GPU" if hw.mps_bf16 else ""
    return " and ".join(hw.bf16_units)


def _where(hw: Hardware) -> str:
    return {"cpu": "CPU", "mps": "Apple GPU"}.get(hw.device, hw.device)


# --- this machine ---------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    """`auto`: a CUDA GPU, else an Apple GPU (MPS), else the CPU; an explicit device that
    is not there is refused with a one-line error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    if name == "mps" and not has_mps:
        raise ConfigError(
            "device=mps but no Apple GPU is available (MPS needs macOS 12.3+ on Apple silicon "
            "and a torch build with MPS); use device=auto or device=cpu"
        )
    return name


def cpu_name() -> str:
    info = _read("/proc/cpuinfo")
    for line in info.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor() or "CPU"
    return platform.processor() or platform.machine() or "CPU"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's `flags` (x86) or `Features` (Arm) on Linux;
    on macOS the Arm features that matter here; elsewhere what torch's cpuinfo reports."""
    info = _read("/proc/cpuinfo")
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    flags = set()
    if platform.system() == "Darwin" and _sysctl("hw.optional.arm.FEAT_BF16") == "1":
        flags.add("bf16")
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    cpu = getattr(torch._C, "_cpu", None)
    for flag, probe in probes.items():
        try:
            if cpu is not None and getattr(cpu, probe)():
                flags.add(flag)
        except (AttributeError, RuntimeError):
            pass
    return frozenset(flags)


def detect(device: str) -> Hardware:
    """The capabilities of `device` (cpu | cuda | mps, as resolved) on this machine."""
    if device == "cuda":
        index = torch.cuda.current_device()
        return Hardware(
            "cuda",
            torch.cuda.get_device_name(index),
            cuda_capability=tuple(torch.cuda.get_device_capability(index)),  # type: ignore[arg-type]
        )
    if device == "mps":
        mps = torch.backends.mps
        newer = getattr(mps, "is_macos_or_newer", None)
        bf16 = bool(newer is not None and newer(14, 0))
        return Hardware("mps", f"Apple GPU ({platform.machine()})", mps_bf16=bf16)
    return Hardware("cpu", cpu_name(), cpu_flags())


def product_tflops(
    dtype: torch.dtype,
    shape: tuple[int, int, int],
    device: str = "cpu",
    reps: int = 1,
    budget_s: float = 0.0,
) -> float:
    """TFLOP/s of the fastest (m x k) @ (k x n) product in `dtype` on `device`, after one
    warm-up: at least `reps` timed products, more while the time spent stays under
    `budget_s` (at most 50)."""
    m, k, n = shape
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best, spent, timed = float("inf"), 0.0, -1  # -1: the warm-up
    synchronize(device)
    while timed < reps or (spent < budget_s and timed < 50):
        tic = time.perf_counter()
        a @ b
        synchronize(device)
        took = time.perf_counter() - tic
        if timed >= 0:
            best = min(best, took)
        spent += took
        timed += 1
    return 2 * m * k * n / best / 1e12


def measure_products(device: str = "cpu") -> Measurement:
    """bf16 and float32 speed of (N x 4N) @ (4N x N) products on `device`: the best of as
    many as fit in a short budget after one warm-up (an emulated bf16 gets one or two)."""
    shape = (MEASURE_N, 4 * MEASURE_N, MEASURE_N)
    return Measurement(
        product_tflops(torch.bfloat16, shape, device, budget_s=MEASURE_BUDGET_S),
        product_tflops(torch.float32, shape, device, budget_s=MEASURE_BUDGET_S),
    )


def cached_measurement(hw: Hardware, cache_dir: str | Path | None) -> Measurement | None:
    """`measure_products` for `hw`, read from or stored in `<cache_dir>/hardware/` (keyed by
    the device, its name and flags, torch's version and thread count); None if it fails."""
    key = json.dumps(
        [hw.device, hw.name, sorted(hw.cpu_flags), torch.__version__, torch.get_num_threads()]
    )
    path = None
    if cache_dir is not None:
        digest = sha256_text(key, 16)
        path = Path(cache_dir).expanduser() / "hardware" / f"products-{digest}.json"
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return Measurement(float(saved["bf16_tflops"]), float(saved["fp32_tflops"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        measured = measure_products(hw.device)
    except (RuntimeError, TypeError):  # bf16 products not supported on this device
        return None
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"key": key, **asdict(measured)}))
        except OSError:  # a read-only cache: measure again next time
            pass
    return measured


def pick(requested: str, device: str, cache_dir: str | Path | None) -> PrecisionChoice:
    """`choose_precision` for this machine's `device` (resolved), measuring where needed."""
    hw = detect(device)
    return choose_precision(requested, hw, lambda: cached_measurement(hw, cache_dir))


class Clock:
    """Time marks of the work queued on a device: CUDA events (the GPU's own clock, read
    when the work is done, no synchronization) or, elsewhere, the host's clock (the work is
    done when it returns)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks; on CUDA both must be done (read after the step's
        values, which follow them on the stream)."""
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU); nothing on the CPU."""
    device = getattr(device, "type", device)
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# Bytes per parameter of a training run, at the least: float32 weights, their gradients and
# AdamW's two moments (activations and the diagnostics come on top).
TRAINING_BYTES_PER_PARAMETER = 16


def free_memory(device: str) -> int | None:
    """Bytes of memory free on `device` now (None where it cannot be told)."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    if device == "cpu":
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_memory(what: str, parameters: int, device: str) -> None:
    """Refuse a model whose weights, gradients and AdamW state alone exceed the memory free
    on `device` (one line naming `what`, the sizes that made it): it would fail after the
    run started. `parameters` may be a lower bound (model/gpt.py, `matrix_weights`)."""
    need = TRAINING_BYTES_PER_PARAMETER * parameters
    free = free_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"{what} needs about {need / 2**30:,.1f} GiB for the weights, gradients and AdamW "
            f"state of its {parameters:,} matrix weights at the least, more than the "
            f"{free / 2**30:,.1f} GiB free on {device}; make the model smaller"
        )
