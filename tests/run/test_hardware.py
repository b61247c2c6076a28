"""precision=auto and device=auto: the decision for given capabilities (machines other than
this one), this machine's own detection and measurement, its cache, and a real run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from normbench.errors import ConfigError
from normbench.run import hardware
from normbench.run.hardware import Hardware, Measurement, choose_precision

from support import TINY, compose_config, run_cli, text_data

AMX = Hardware("cpu", "Intel Xeon (Sapphire Rapids)", frozenset({"avx512f", "amx_bf16"}))
AVX2 = Hardware("cpu", "AMD EPYC 7B13", frozenset({"avx2", "fma"}))
AVX512 = Hardware("cpu", "Intel Xeon (Ice Lake)", frozenset({"avx512f", "avx512_vnni"}))
ZEN4 = Hardware("cpu", "AMD EPYC 9654", frozenset({"avx512f", "avx512_bf16"}))
GRAVITON3 = Hardware("cpu", "Neoverse-V1", frozenset({"asimd", "bf16", "sve"}))
H100 = Hardware("cuda", "NVIDIA H100 80GB HBM3", cuda_capability=(9, 0))
V100 = Hardware("cuda", "Tesla V100-SXM2-16GB", cuda_capability=(7, 0))
M3 = Hardware("mps", "Apple GPU (arm64)", mps_bf16=True)
M1_OLD_MACOS = Hardware("mps", "Apple GPU (arm64)", mps_bf16=False)


def measured(bf16: float, fp32: float = 1.0):
    """A measurement as `hardware.measure_products` would give it, counted when taken."""
    calls = []

    def measure() -> Measurement:
        calls.append(1)
        return Measurement(bf16, fp32)

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def never():
    raise AssertionError("measured where the capabilities alone decide")


@pytest.mark.parametrize(
    "hw, speed, precision, words",
    [
        (AMX, 6.0, "bf16", ["AMX", "6.0x faster"]),
        (ZEN4, 2.1, "bf16", ["AVX512_BF16", "2.1x faster"]),
        (ZEN4, 0.9, "fp32", ["AVX512_BF16", "1.1x slower", "needs 1.25x"]),  # a unit, no gain
        (AMX, 1.1, "fp32", ["AMX", "needs 1.25x"]),
        (GRAVITON3, 3.0, "bf16", ["Arm BF16"]),
        (M3, 2.0, "bf16", ["Apple GPU"]),
        (M3, 1.0, "fp32", ["needs 1.25x"]),
    ],
)
def test_auto_takes_bf16_only_where_a_unit_is_measured_faster(hw, speed, precision, words):
    measure = measured(speed)
    choice = choose_precision("auto", hw, measure)
    assert choice.precision == precision and choice.speedup == pytest.approx(speed)
    assert all(w in choice.reason for w in words), choice.reason
    assert choice.warning is None and len(measure.calls) == 1


@pytest.mark.parametrize("hw", [AVX2, AVX512, M1_OLD_MACOS])
def test_auto_without_a_bf16_unit_is_fp32_without_measuring(hw):
    choice = choose_precision("auto", hw, never)
    assert choice.precision == "fp32" and choice.speedup is None and choice.warning is None
    assert "no bf16" in choice.reason


def test_auto_on_gpus_goes_by_compute_capability():
    h100 = choose_precision("auto", H100, never)
    assert h100.precision == "bf16" and "compute capability 9.0" in h100.reason
    v100 = choose_precision("auto", V100, never)
    assert v100.precision == "fp32" and "no bf16 tensor cores" in v100.reason


def test_a_failed_measurement_falls_back_on_the_capability():
    choice = choose_precision("auto", AMX, lambda: None)
    assert choice.precision == "bf16" and "not measured" in choice.reason


def test_explicit_bf16_runs_where_slow_with_the_measured_factor():
    emulated = choose_precision("bf16", AVX2, measured(0.02))  # 50x slower, as on AMD EPYC
    assert emulated.precision == "bf16"
    assert "50.0x slower than float32" in emulated.warning
    assert "precision=auto would choose fp32" in emulated.warning
    assert choose_precision("bf16", AMX, measured(6.0)).warning is None
    v100 = choose_precision("bf16", V100, never)
    assert v100.precision == "bf16" and "no bf16 tensor cores" in v100.warning


def test_explicit_fp32_is_kept_everywhere():
    for hw in (AMX, AVX2, H100, M3):
        choice = choose_precision("fp32", hw, never)
        assert choice.precision == "fp32" and choice.warning is None


def test_record_holds_the_choice_and_its_reason():
    record = choose_precision("auto", AMX, measured(6.04321)).record()
    assert record["precision"] == "bf16" and "AMX" in record["precision_reason"]
    assert record["bf16_speedup"] == 6.043


# --- this machine ---------------------------------------------------------------------------


def test_this_cpu_is_read_from_the_system():
    hw = hardware.detect("cpu")
    assert hw.device == "cpu" and hw.name
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text()
        assert hw.name in info
        assert ("amx_bf16" in hw.cpu_flags) == (" amx_bf16" in info)
        assert ("avx2" in hw.cpu_flags) == (" avx2" in info)


def test_this_machines_measurement_is_quick_and_decides_consistently():
    tic = time.perf_counter()
    m = hardware.measure_products("cpu")
    assert time.perf_counter() - tic < 2.0  # well under a second on an idle machine
    assert m.bf16_tflops > 0 and m.fp32_tflops > 0
    hw = hardware.detect("cpu")
    choice = choose_precision("auto", hw, lambda: m)
    if not hw.bf16_units:  # emulated bf16: never chosen
        assert choice.precision == "fp32"
    else:
        assert (choice.precision == "bf16") == (m.speedup >= hardware.MIN_SPEEDUP)


def test_the_measurement_is_cached_per_machine(tmp_path):
    hw = hardware.detect("cpu")
    first = hardware.cached_measurement(hw, tmp_path)
    (path,) = (tmp_path / "hardware").iterdir()
    saved = json.loads(path.read_text())
    assert saved["bf16_tflops"] == first.bf16_tflops
    # What the cache holds is what the next run uses, without measuring again.
    saved.update(bf16_tflops=123.0, fp32_tflops=1.0)
    path.write_text(json.dumps(saved))
    assert hardware.cached_measurement(hw, tmp_path) == Measurement(123.0, 1.0)
    # Another machine (other flags) has its own entry.
    other = Hardware("cpu", hw.name, hw.cpu_flags | {"amx_bf16"})
    assert hardware.cached_measurement(other, tmp_path).bf16_tflops != 123.0
    assert len(list((tmp_path / "hardware").iterdir())) == 2
    # A damaged entry is measured again and replaced.
    path.write_text("{not json")
    again = hardware.cached_measurement(hw, tmp_path)
    assert again.bf16_tflops != 123.0 and json.loads(path.read_text())["key"] == saved["key"]
    assert not [p for p in (tmp_path / "hardware").iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_cache_still_measures(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    m = hardware.cached_measurement(hardware.detect("cpu"), blocked)
    assert m is not None and m.fp32_tflops > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_devices_that_are_not_there_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="device=cuda but no CUDA GPU"):
        hardware.resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="device=mps but no Apple GPU"):
            hardware.resolve_device("mps")
        assert hardware.resolve_device("auto") == "cpu"


def test_a_resumed_auto_run_keeps_its_precision(tmp_path):
    from normbench.run.trainer import choose_precision as run_choice

    cfg = compose_config("precision=auto", f"data.cache_dir={tmp_path}")
    here = run_choice(cfg, torch.device("cpu"))
    other = "bf16" if here.precision == "fp32" else "fp32"
    saved = {"summary": {"precision": other, "precision_reason": "chosen elsewhere"}}
    kept = run_choice(cfg, torch.device("cpu"), resume=saved)
    assert kept.precision == other
    assert "kept from the checkpoint (chosen elsewhere)" in kept.reason
    assert f"would choose {here.precision}" in kept.reason
    explicit = compose_config("precision=fp32", f"data.cache_dir={tmp_path}")
    assert run_choice(explicit, torch.device("cpu"), resume=saved).precision == "fp32"


def test_explicit_bf16_where_slow_warns_with_the_factor(tmp_path, cli_env, text_files):
    """A real run: the warning when bf16 is slower here, and the choice in summary.json."""
    cache = Path(cli_env["NORMBENCH_CACHE_DIR"])
    expected = hardware.pick("bf16", "cpu", cache)
    run_dir = tmp_path / "run"
    args = ["train", *TINY, *text_data(*text_files), "logger=none", "precision=bf16",
            "train.max_steps=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["precision_reason"] == "precision=bf16 as set"
    assert summary["bf16_speedup"] == round(expected.speedup, 3)  # the cached measurement
    warned = [line for line in done.stderr.splitlines() if "precision=bf16: " in line]
    if expected.warning is None:
        assert not warned
    else:
        (line,) = warned
        assert "x slower than float32" in line and "auto would choose fp32" in line
    assert os.path.isdir(cache / "hardware")
