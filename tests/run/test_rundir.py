"""Which configuration a run directory holds: records of an older normbench read with the
names and values of today, so that they resume (and are never mistaken for another run)."""

from __future__ import annotations

import pytest

from normbench.run.record.checkpoint import CheckpointError, load_model
from normbench.run.record.rundir import differences

from support.models import gpt


def test_an_older_record_reads_with_todays_names():
    now = {
        "model": {"qk_norm": "l2"},
        "optim": {"lr": 1e-3, "weight_decay_mode": "coupled"},
        "data": {"label": "wt2", "vocab_limit": None},
    }
    # written before model.qk_norm was a choice and before the two keys existed
    then = {"model": {"qk_norm": True}, "optim": {"lr": 1e-3}, "data": {"label": "wt2"}}
    assert differences(then, now) == []
    off = {**now, "model": {"qk_norm": "none"}}
    assert differences({**then, "model": {"qk_norm": False}}, off) == []
    # what differs still differs
    assert differences({**then, "model": {"qk_norm": False}}, now) == [
        "model.qk_norm: 'none' there, 'l2' here"
    ]
    independent = {**now, "optim": {"lr": 1e-3, "weight_decay_mode": "independent"}}
    assert differences(then, independent) == [
        "optim.weight_decay_mode: 'coupled' there, 'independent' here"
    ]


def test_an_older_admin_record_ran_the_analytic_omega():
    """norm.admin_init came with the profiled omega; before it, Admin's omega was analytic."""
    omega = {"omega": 2.0170092187}
    then = {"norm": {"name": "admin", "constants": omega}}
    now = {"norm": {"name": "admin", "admin_init": "analytic", "constants": omega}}
    assert differences(then, now) == []
    profiled = {"norm": {"name": "admin", "admin_init": "profiled", "constants": {"omega": None}}}
    assert differences(then, profiled) == [
        "norm.admin_init: 'analytic' there, 'profiled' here",
        "norm.constants.omega: 2.0170092187 there, None here",
    ]
    assert differences({"norm": {"name": "pre"}}, {"norm": {"name": "pre"}}) == []


def test_an_older_peri_checkpoint_is_refused_in_one_line():
    """norm=peri gained Norm_e (the embedding norm of 2502.02732): a checkpoint written before
    holds Sandwich-LN's weights, which are not loaded half-way into today's Peri-LN."""
    older = gpt("sandwich").state_dict()  # what norm=peri was
    with pytest.raises(CheckpointError) as e:
        load_model(gpt("peri"), older, "peri")
    message = str(e.value)
    assert "\n" not in message and "norm=peri" in message
    assert "norm_e.weight missing, norm_e.bias missing" in message
    load_model(gpt("peri"), gpt("peri").state_dict(), "peri")  # today's loads
