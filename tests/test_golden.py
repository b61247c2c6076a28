"""Golden outputs: a fixed-seed float32 sweep, its `compare` report and a probe, against the
values recorded in tests/golden/outputs.json.

Everything but timings is compared: every metrics row, the summary, the events, the rows of
compare's summary.csv and the probe's table. Numbers must agree to a relative 1e-3 (float32
kernels round differently across CPUs, e.g. AVX2 against AVX-512; a change of behaviour
moves these values by far more). After a deliberate change of behaviour, regenerate with
`NORMBENCH_UPDATE_GOLDEN=1 pytest tests/test_golden.py` and say why in the commit.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from support import TINY, read_jsonl, run_cli, text_data

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
RTOL, ATOL = 1e-3, 1e-7
# Timings, and what depends on the machine or the W&B setup rather than on the computation.
UNSTABLE = {"tokens_per_s", "tokens_per_s_mean", "wall_s", "startup_s", "threads", "wandb"}
FIXED = ["precision=fp32", "threads=1", "seed=0", "logger=none"]


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in UNSTABLE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def outputs(tmp_path: Path, env: dict[str, str], text_files: tuple[Path, Path]) -> dict:
    """The sweep's records, its compare report and a probe's table, timings left out."""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "norm=pre,post", *TINY, *text_data(*text_files), *FIXED,
            "diag.every=3", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    runs = {}
    for job in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file()):
        runs[job.name] = {
            "metrics": read_jsonl(job / "metrics.jsonl"),
            "summary": json.loads((job / "summary.json").read_text()),
            "events": read_jsonl(job / "events.jsonl") if (job / "events.jsonl").exists() else [],
        }
    done = run_cli(["compare", str(sweep)], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    with open(sweep / "compare" / "summary.csv", newline="") as f:
        table = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    probe_dir = tmp_path / "probe"
    args = ["probe", *(o for o in TINY if not o.startswith("depth=")), *text_data(*text_files),
            *FIXED, "probe.norms=[pre,post]", "probe.depths=[2]", "probe.seeds=[0]",
            "probe.batch_size=2", f"hydra.run.dir={probe_dir}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    probe = json.loads((probe_dir / "probe.json").read_text())
    return _stable({"runs": runs, "compare": table, "probe": probe})


def mismatches(got: Any, want: Any, where: str = "") -> list[str]:
    """Where `got` differs from `want`: numbers beyond RTOL/ATOL, anything else at all."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}: keys {sorted(set(got) ^ set(want))}"] if set(got) != set(want) else []
        for key in sorted(set(got) & set(want)):
            out += mismatches(got[key], want[key], f"{where}/{key}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, golden {len(want)}"]
        return [m for i, (g, w) in enumerate(zip(got, want, strict=True))
                for m in mismatches(g, w, f"{where}[{i}]")]  # fmt: skip
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(want, bool):
        if math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL):
            return []
    elif got == want:
        return []
    return [f"{where}: {got!r}, golden {want!r}"]


def test_outputs_match_the_golden_record(tmp_path, cli_env, text_files):
    got = outputs(tmp_path, cli_env, text_files)
    if os.environ.get("NORMBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"golden outputs written to {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    problems = mismatches(got, want)
    assert not problems, "\n".join(problems[:20])


def test_the_comparison_catches_a_change():
    """The check itself can fail: a loss moved by 0.2 % or a missing key is reported."""
    want = {"runs": {"0": {"metrics": [{"train/loss": 10.0, "step": 2}]}}}
    assert not mismatches({"runs": {"0": {"metrics": [{"train/loss": 10.0005, "step": 2}]}}}, want)
    assert mismatches({"runs": {"0": {"metrics": [{"train/loss": 10.02, "step": 2}]}}}, want)
    assert mismatches({"runs": {"0": {"metrics": [{"step": 2}]}}}, want)
    assert mismatches({"runs": {"0": {"metrics": []}}}, want)
