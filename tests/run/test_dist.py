"""Data parallel: `torchrun --nproc_per_node=2 -m normbench train` on the CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import TINY, read_jsonl, text_data
from support.wandb_records import offline_runs

ARGS = [*TINY, "train.log_every=1", "precision=fp32", "diag.every=3"]


def torchrun(n: int, args: list[str], cwd, env) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", "-m", "normbench", "train", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, cli_env, text_files):
    data = text_data(*text_files)
    one = subprocess.run(
        [sys.executable, "-m", "normbench", "train", *ARGS, *data, f"hydra.run.dir={tmp_path / 'one'}"],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = torchrun(2, [*ARGS, *data, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, cli_env)
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == f"run_dir: {tmp_path / 'two'}"  # printed by rank 0 only
    rows = {name: read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("one", "two")}
    for key in ("train/loss", "val/loss", "grad_norm", "lr"):
        a = [r[key] for r in rows["one"] if key in r]
        b = [r[key] for r in rows["two"] if key in r]
        assert len(a) == len(b) > 0, key
        assert b == pytest.approx(a, rel=1e-5), key
    summaries = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in ("one", "two")}
    assert summaries["two"]["tokens"] == summaries["one"]["tokens"] == 6 * 4 * 32
    assert summaries["two"]["val_loss"] == pytest.approx(summaries["one"]["val_loss"], rel=1e-6)
    (run,) = offline_runs(tmp_path / "two" / "wandb")  # one W&B run, from rank 0
    assert run.exit_code == 0 and run.summary["status"] == "completed"
    assert (tmp_path / "two" / "train.log").read_text().count("done: val/loss") == 1


def test_global_batch_must_split_evenly(tmp_path, cli_env, text_files):
    args = [*ARGS, "train.batch_size=3", *text_data(*text_files), "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = torchrun(2, args, tmp_path, cli_env)
    assert done.returncode != 0
    message = "normbench: error: train.batch_size=3 is the global batch; it must be a multiple"
    assert done.stderr.count(message) == 1
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_bad_input_under_torchrun_is_one_error_and_no_hang(tmp_path, cli_env, text_files):
    done = torchrun(2, [*ARGS, "depth=0", *text_data(*text_files)], tmp_path, cli_env)
    assert done.returncode != 0
    assert done.stderr.count("normbench: error: depth must be >= 1 (got 0)") == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("resume", ["auto", "never"])
def test_only_rank_0_checks_whose_the_run_directory_is(resume, tmp_path):
    """A rank that starts late can find rank 0's fresh record files (metrics.jsonl opened)
    before its config.yaml: only rank 0, which holds the lock and writes the record, judges
    the directory; the others take what rank 0 found (a failure there ends them all)."""
    from normbench.errors import ConfigError
    from normbench.run.config.resolve import as_dict
    from normbench.run.job import plan_resume

    from support import compose_config

    cfg = compose_config(*TINY, "logger=none", f"train.resume={resume}")
    (tmp_path / "metrics.jsonl").write_text("")  # rank 0 has opened its record, no config yet
    with pytest.raises(ConfigError):
        plan_resume(cfg, tmp_path, as_dict(cfg), main=True)
    assert plan_resume(cfg, tmp_path, as_dict(cfg), main=False) == (None, 0, False)
