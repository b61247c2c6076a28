"""diag.layer_removal (normbench/run/removal.py): after training, the validation loss with each
block removed, in summary.json and the log; real tiny runs, one of them diverging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from normbench.run.removal import removal_losses
from normbench.run.steps import evaluate

from support import TINY, read_jsonl, run_cli, text_data
from support.models import gpt, randomize
from support.wandb_records import offline_runs


def test_removal_losses_are_the_loss_of_each_model_without_a_block():
    torch.manual_seed(0)
    model = gpt("pre", depth=3).eval()
    randomize(model)
    tokens = np.random.default_rng(0).integers(0, 128, 400, dtype=np.uint16)

    def loss_of(m):
        return evaluate(m, tokens, 16, 4, torch.device("cpu"), "fp32")[0]

    losses = removal_losses(model, loss_of)
    assert list(losses) == ["full", "block_01", "block_02", "block_03"]
    with model.without(2):
        assert losses["block_02"] == loss_of(model)
    assert losses["full"] == loss_of(model) and len(set(losses.values())) == 4


def test_a_run_that_trained_measures_layer_removal(tmp_path, cli_env, text_files):
    """With diag.layer_removal=true: lr 10 with Post-LN diverges within a few steps (its
    record has no layer_removal); lr 1e-3 trains to the end, and its summary holds the losses
    of the full model and of each block removed, and the log a row of them. (Without it, the
    default, a summary has no layer_removal: tests/test_golden.py's summaries.)"""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "norm=post", *TINY, "train.max_steps=40", "train.eval_every=20",
            "optim.warmup_steps=0", "optim.lr=10,1e-3", "precision=fp32",
            "diag.layer_removal=true", *text_data(*text_files),
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())  # 0_..., 1_...: lr 10, 1e-3
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    diverged, trained = summaries
    assert diverged["status"] == "diverged" and "layer_removal" not in diverged
    assert trained["status"] == "completed"
    losses = trained["layer_removal"]
    assert list(losses) == ["full", "block_01", "block_02"]
    assert losses["full"] == pytest.approx(trained["val_loss"], rel=1e-6)
    assert all(losses[k] != losses["full"] for k in ("block_01", "block_02"))
    (row,) = [r for r in read_jsonl(jobs[1] / "metrics.jsonl") if "removal/full" in r]
    assert row["step"] == 40 and row["removal/block_02"] == losses["block_02"]
    assert "layer removal: val/loss" in done.stderr
    (logged,) = offline_runs(jobs[1] / "wandb")  # W&B: the row, and the summary's losses
    (w_row,) = [h for h in logged.history if "removal/full" in h]
    assert w_row["removal/block_01"] == pytest.approx(losses["block_01"])
    assert logged.summary["layer_removal"]["block_02"] == pytest.approx(losses["block_02"])
