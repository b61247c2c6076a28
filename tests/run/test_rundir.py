"""Which configuration a run directory holds: records of an older normbench read with the
names and values of today, so that they resume (and are never mistaken for another run)."""

from __future__ import annotations

from normbench.run.rundir import differences


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
