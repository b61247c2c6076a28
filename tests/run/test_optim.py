"""Learning-rate schedules and the optimizer's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from normbench.run.config.schema import Schedule, WeightDecayMode
from normbench.run.optim import build_optimizer, lr_at
from normbench.run.pack.optim import MemberAdamW, MemberSettings

from support import random_trainer
from support.models import optim_config

KW = dict(lr=1.0, min_lr=0.1, warmup=10, max_steps=110)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "inverse_sqrt"])
def test_linear_warmup(schedule):
    got = [lr_at(s, schedule=schedule, **KW) for s in range(10)]
    assert got == pytest.approx([(s + 1) / 10 for s in range(10)])


def test_cosine_and_linear_decay_to_min_lr():
    assert lr_at(10, schedule="cosine", **KW) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **KW) == pytest.approx(0.55)  # halfway
    assert lr_at(60, schedule="linear", **KW) == pytest.approx(0.55)
    assert lr_at(35, schedule="linear", **KW) == pytest.approx(1 - 0.9 * 0.25)
    assert lr_at(35, schedule="cosine", **KW) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi / 4))
    )
    last = lr_at(109, schedule="cosine", **KW)  # the last update still learns
    assert 0.1 < last < 0.11
    assert lr_at(110, schedule="cosine", **KW) == pytest.approx(0.1)
    assert lr_at(500, schedule="linear", **KW) == pytest.approx(0.1)


def test_constant_and_inverse_sqrt():
    assert lr_at(50, schedule="constant", **KW) == 1.0
    assert lr_at(9, schedule="inverse_sqrt", **KW) == pytest.approx(1.0)
    assert lr_at(39, schedule="inverse_sqrt", **KW) == pytest.approx(math.sqrt(10 / 40))
    assert lr_at(10**6, schedule="inverse_sqrt", **KW) == pytest.approx(0.1)  # floor


def test_no_warmup_starts_at_lr():
    assert lr_at(0, lr=2.0, min_lr=0.0, warmup=0, max_steps=5, schedule="cosine") == 2.0


def _optim_cfg(**kw):
    return optim_config(**{"lr": 0.5, "warmup_steps": 2, "schedule": Schedule.linear, **kw})


def test_the_trainers_learning_rates_follow_the_schedule():
    """The trainer's table of each step's learning rate (on the device, read by no step)
    and the lr each step reports are lr_at's."""
    t = random_trainer(
        "optim.lr=0.5", "optim.warmup_steps=2", "optim.schedule=linear", "train.max_steps=6"
    )
    expected = [
        lr_at(s, lr=0.5, min_lr=0.0, warmup=2, max_steps=6, schedule="linear") for s in range(6)
    ]
    assert t.lrs[:, 0].tolist() == pytest.approx(expected, rel=1e-6)
    reported = [r.lr for step in range(1, 7) if (r := t.step(step)) is not None]
    assert [*reported, t.flush().lr] == pytest.approx(expected)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(
        torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4)
    )
    opt = build_optimizer(model, _optim_cfg(), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.dim() == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 3


@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_weight_decay_coupled_to_the_peak_lr_or_independent_of_it(mode):
    """With zero gradients AdamW's update is the decay alone: each step multiplies a matrix
    by 1 - lr_t * wd (coupled) or 1 - wd * lr_t / lr (independent: the schedule's factor,
    the same at every peak lr), lr_t following the warmup and the linear schedule."""
    wd, steps, shrink = 0.1, 6, {}
    for lr in (0.5, 0.05):
        weight = torch.nn.Parameter(torch.ones(1, 3, 3))  # one member's matrix
        cfg = _optim_cfg(lr=lr, weight_decay=wd, weight_decay_mode=WeightDecayMode(mode))
        opt = MemberAdamW([weight], [MemberSettings.of(cfg)])
        expected = 1.0
        for s in range(steps):
            weight.grad = torch.zeros_like(weight)
            lr_t = lr_at(s, lr=lr, min_lr=0.0, warmup=2, max_steps=steps, schedule="linear")
            expected *= 1 - (lr_t * wd if mode == "coupled" else wd * lr_t / lr)
            opt.step(torch.tensor([lr_t]), torch.zeros(1))
        torch.testing.assert_close(weight.detach()[0], torch.full((3, 3), expected))
        shrink[lr] = expected
    if mode == "independent":  # the decay does not depend on the peak lr
        assert shrink[0.5] == pytest.approx(shrink[0.05])
    else:  # ten times the lr, about ten times the decay
        assert 1 - shrink[0.5] > 5 * (1 - shrink[0.05])


def test_weight_decay_mode_is_a_choice():
    from normbench.errors import ConfigError  # noqa: F401  (bad values fail at composition)

    from support import compose_config

    assert str(compose_config().optim.weight_decay_mode) == "coupled"
    cfg = compose_config("optim.weight_decay_mode=independent", "optim.lr=0.01")
    assert str(cfg.optim.weight_decay_mode) == "independent"
