"""A pack's Trainer (run/trainer.py `Trainer.pack`): runs of one architecture trained as one
batched model, each exactly as it trains alone, none touched by another's divergence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from normbench.model.members import member_state
from normbench.run.data.tokens import TokenSplits
from normbench.run.logger import NullLogger
from normbench.run.trainer import Run, Trainer

from support import TINY, compose_config

# Three runs that share an architecture and differ in everything a pack lets them differ in.
RUNS = [
    ["seed=0", "optim.lr=1e-3", "optim.warmup_steps=0", "optim.schedule=cosine"],
    ["seed=1", "optim.lr=3e-3", "optim.warmup_steps=2", "optim.schedule=linear",
     "optim.grad_clip=0", "optim.z_loss=1e-3", "optim.weight_decay=0"],
    ["seed=2", "optim.lr=1e-2", "optim.warmup_steps=3", "optim.schedule=constant",
     "optim.grad_clip=0.05", "optim.betas=[0.8,0.9]", "optim.eps=1e-6",
     "optim.weight_decay=0.01", "optim.weight_decay_mode=independent"],
]  # fmt: skip
STEPS = 6


def config(run: list[str]):
    common = ["device=cpu", "precision=fp32", "logger=none", "divergence.action=continue"]
    return compose_config(*TINY, *common, f"train.max_steps={STEPS}", *run)


def tokens() -> TokenSplits:
    ids = np.random.default_rng(0).integers(0, 50257, size=20_000).astype(np.uint16)
    return TokenSplits(ids, ids[:2_000], Path("."), {"label": "random"})


def steps(trainer: Trainer) -> list[list[float | None]]:
    """Each step's loss per run (None for a run that had ended)."""
    losses = []
    for step in range(1, STEPS + 1):
        if (results := trainer.step_all(step)) is not None:
            losses.append([None if r is None else r.loss for r in results])
    losses.append([None if r is None else r.loss for r in trainer.flush_all()])
    return losses


class Rows(NullLogger):
    """A logger that keeps the rows it is given."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, metrics: dict) -> None:
        self.rows.append(metrics)


def clean_and_poisoned() -> tuple[Trainer, Trainer, torch.utils.hooks.RemovableHandle]:
    """Two packs of RUNS (divergence.action=stop); in the second, member 1's first block
    outputs NaN in the third training forward pass (step 3)."""
    split = tokens()
    runs = [[*run, "divergence.action=stop"] for run in RUNS]
    clean = Trainer.pack([Run(config(run)) for run in runs], split)
    poisoned = Trainer.pack([Run(config(run), logger=Rows()) for run in runs], split)
    calls = {"n": 0}

    def poison(module, args, out):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 3 and out.shape[0] == 3:  # step 3, while member 1 is in the pack
            out = out.clone()
            out[1] = math.nan
        return out

    return clean, poisoned, poisoned.model.blocks[0].register_forward_hook(poison)


def test_each_run_of_a_pack_trains_as_it_does_alone():
    """float64: after 6 steps every parameter of every member within 1e-10 of the run
    trained alone, and every step's loss within 1e-10; the members differ."""
    split = tokens()
    torch.set_default_dtype(torch.float64)
    try:
        alone = [Trainer(config(run), split) for run in RUNS]
        pack = Trainer.pack([Run(config(run)) for run in RUNS], split)
        losses_alone = [steps(t) for t in alone]
        losses_pack = steps(pack)
    finally:
        torch.set_default_dtype(torch.float32)
    assert pack.members == 3 and next(pack.model.parameters()).dtype == torch.float64
    for m, trainer in enumerate(alone):
        got = [row[m] for row in losses_pack]
        want = [row[0] for row in losses_alone[m]]
        assert np.allclose(got, want, rtol=1e-10, atol=0), (m, got, want)
        mine, theirs = member_state(pack.model, m), trainer.model.state_dict()
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            assert torch.allclose(mine[name], value, rtol=1e-10, atol=1e-10), (m, name)
    assert len({round(row[0], 6) for row in losses_alone[0][1:]}) > 1  # it trains
    assert len({tuple(round(v, 6) for v in row) for row in losses_pack[1:]}) > 1


def test_a_diverging_member_is_frozen_and_the_others_train_on_untouched():
    """A NaN in member 1's forward pass at step 3 (divergence.action=stop): its run ends
    there, diverged (non-finite), its weights stay those after step 2; members 0 and 2
    end bit-identical to a pack without the NaN."""
    clean, poisoned, handle = clean_and_poisoned()
    results = []
    for trainer in (clean, poisoned):
        history = []
        for step in range(1, STEPS + 1):
            if step == 3 and trainer is poisoned:
                poisoned.flush_all()
                after_two = {k: v.clone() for k, v in member_state(poisoned.model, 1).items()}
            if (out := trainer.step_all(step)) is not None:
                history.append(out)
        history.append(trainer.flush_all())
        results.append(history)
    handle.remove()
    ended = [out[1] for out in results[1] if out[1] is not None]  # member 1's results
    stop = [r for r in ended if r.stopped]
    assert len(stop) == 1 and stop[0].step == 3 and stop[0].events[0].kind == "nonfinite"
    assert not math.isfinite(stop[0].loss)
    frozen = member_state(poisoned.model, 1)
    assert all(torch.equal(frozen[k], after_two[k]) for k in after_two)
    for m in (0, 2):
        mine, theirs = member_state(poisoned.model, m), member_state(clean.model, m)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), m
        assert torch.equal(poisoned.optimizer.exp_avg[0][m], clean.optimizer.exp_avg[0][m])


def test_a_pack_refuses_runs_that_cannot_share_it():
    split = tokens()
    with pytest.raises(ValueError, match="differ in more than"):
        Trainer.pack([Run(config(["depth=2"])), Run(config(["depth=3"]))], split)
    with pytest.raises(ValueError, match="dropout"):
        Trainer.pack([Run(config(["model.dropout=0.1", f"seed={s}"])) for s in (0, 1)], split)


def test_a_pack_drops_its_ended_runs_and_the_others_end_as_they_would():
    """fit(): member 1 fed a NaN at step 3 ends there (diverged, 2 updates taken) and leaves
    the pack, which trains on with 2 members; those end as in a pack where nothing ended
    (within float32 rounding: a pack of 2 against a pack of 3)."""
    clean, poisoned, handle = clean_and_poisoned()
    clean.fit()
    poisoned.fit()
    handle.remove()
    statuses = [run.summary.status for run in poisoned.all_runs]
    assert statuses == ["completed", "diverged", "completed"]
    assert poisoned.all_runs[1].summary.steps == 2 and poisoned.all_runs[1].summary.val_loss is None
    assert poisoned.members == 2 and poisoned.model.members == 2 and clean.members == 3
    for mine, theirs in ((0, 0), (1, 2)):
        a, b = member_state(poisoned.model, mine), member_state(clean.model, theirs)
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in b), (mine, theirs)
        run, other = poisoned.runs[mine].summary, clean.all_runs[theirs].summary
        assert run.val_loss == pytest.approx(other.val_loss, rel=1e-5)
        # after the pack shrank, each run still logs its own schedule's learning rate
        logged = [r["lr"] for r in poisoned.runs[mine].logger.rows if "lr" in r]
        assert logged[-1] == pytest.approx(poisoned.runs[mine].lr_of(STEPS - 1))
        assert logged[-1] == pytest.approx(clean.all_runs[theirs].lr_of(STEPS - 1))
