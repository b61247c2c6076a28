"""`hydra/launcher=packed` (normbench/launcher.py) from the command line: a sweep's jobs of one
architecture train as packs, and each job leaves the record the basic launcher leaves."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from support import TINY, read_jsonl, run_cli, start_cli, text_data, wait_for
from support.wandb_records import offline_runs

SWEEP = ["optim.lr=1e-3,3e-3", "seed=0,1"]  # 4 jobs of one architecture: one pack
LOSSES = ("train/loss", "val/loss", "grad_norm", "lr")


def sweep(tmp_path: Path, text_files, name: str, *extra: str) -> list[str]:  # noqa: ANN001
    return [
        "train",
        "-m",
        *TINY,
        *text_data(*text_files),
        "precision=fp32",
        *SWEEP,
        f"hydra.sweep.dir={tmp_path / name}",
        *extra,
    ]


def rows(run_dir: Path) -> list[dict]:
    return [
        {k: r[k] for k in ("step", "tokens", *LOSSES) if k in r}
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]


def same_rows(a: list[dict], b: list[dict], rel: float) -> bool:
    if [sorted(r) for r in a] != [sorted(r) for r in b]:
        return False
    return all(
        r[k] == pytest.approx(s[k], rel=rel, abs=1e-9) for r, s in zip(a, b, strict=True) for k in r
    )


def test_a_packed_sweep_leaves_each_job_the_record_of_the_basic_launcher(
    tmp_path, cli_env, text_files
):
    """One pack of 4 jobs: each job's folder holds the config, the metrics (float32 losses
    within 1e-5 of the basic launcher's), the summary and a W&B run in the sweep's group."""
    basic = run_cli(sweep(tmp_path, text_files, "basic"), cwd=tmp_path, env=cli_env)
    assert basic.returncode == 0, basic.stderr
    packed = run_cli(
        sweep(tmp_path, text_files, "packed", "hydra/launcher=packed"), cwd=tmp_path, env=cli_env
    )
    assert packed.returncode == 0, packed.stderr
    assert "4 jobs in 1 packs (4)" in packed.stdout + packed.stderr
    assert "a pack of 4 runs" in packed.stdout + packed.stderr
    names = sorted(p.name for p in (tmp_path / "basic").iterdir() if p.is_dir())
    assert names == sorted(p.name for p in (tmp_path / "packed").iterdir() if p.is_dir())
    assert len(names) == 4
    for name in names:
        mine, theirs = tmp_path / "packed" / name, tmp_path / "basic" / name
        assert yaml.safe_load((mine / "config.yaml").read_text()) == yaml.safe_load(
            (theirs / "config.yaml").read_text()
        )
        assert same_rows(rows(mine), rows(theirs), rel=1e-5), name
        summary = json.loads((mine / "summary.json").read_text())
        other = json.loads((theirs / "summary.json").read_text())
        assert summary["status"] == other["status"] == "completed"
        assert summary["steps"] == other["steps"] and summary["objective"] == pytest.approx(
            other["objective"], rel=1e-5
        )
        (run,) = offline_runs(mine / "wandb")
        assert run.group == str(tmp_path / "packed") and run.exit_code == 0
        assert run.summary["status"] == "completed"
    lrs = {
        json.loads((tmp_path / "packed" / n / "summary.json").read_text())["val_loss"]
        for n in names
    }
    assert len(lrs) == 4  # four different runs, not one run four times


def test_a_killed_pack_resumes_every_member_exactly(tmp_path, cli_env, text_files):
    """kill -9 after a checkpoint of every member; the same command resumes each member
    from its checkpoint and ends with the records of a pack that was never killed (float32
    noise where the kill cut a checkpoint short and the members resumed as two packs)."""
    longer = ["train.max_steps=40", "train.eval_every=20", "train.ckpt_every=10", "logger=none"]
    whole = run_cli(
        sweep(tmp_path, text_files, "whole", "hydra/launcher=packed", *longer),
        cwd=tmp_path,
        env=cli_env,
    )
    assert whole.returncode == 0, whole.stderr
    args = sweep(tmp_path, text_files, "killed", "hydra/launcher=packed", *longer)
    proc = start_cli(args, cwd=tmp_path, env=cli_env)
    killed = tmp_path / "killed"

    def all_saved() -> bool:
        return len(list(killed.glob("*/checkpoints/*.pt.sha256"))) >= 4

    wait_for(all_saved, timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    again = run_cli(args, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert "resumed after step" in again.stdout + again.stderr
    for run_dir in sorted(p for p in (tmp_path / "whole").iterdir() if p.is_dir()):
        other = killed / run_dir.name
        assert same_rows(rows(other), rows(run_dir), rel=1e-5), run_dir.name
        assert json.loads((other / "summary.json").read_text())["status"] == "completed"
