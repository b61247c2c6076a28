"""The packs of a sweep (run/pack/plan.py): jobs grouped by everything but the member keys,
on the real lr_sensitivity preset composed by Hydra."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir

from normbench.run.config.resolve import as_dict, resolve
from normbench.run.config.schema import config_dir, register_configs
from normbench.run.pack.plan import MEMBER_KEYS, architecture_key, plan_packs

from support import WIKITEXT


def sweep_configs(experiment: str, extra: list[str]) -> tuple[list[dict], list[dict]]:
    """Every job of a preset's sweep (its hydra.sweeper.params, first axis slowest), as
    resolved configs, and each job's axis values."""
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        base = compose("train", overrides=[f"experiment={experiment}", *extra],
                       return_hydra_config=True)  # fmt: skip
        params = {k: str(v).split(",") for k, v in base.hydra.sweeper.params.items()}
        axes = itertools.product(*params.values())
        jobs = [dict(zip(params, values, strict=True)) for values in axes]
        configs = [
            as_dict(resolve(compose("train", overrides=[
                f"experiment={experiment}", *extra, *(f"{k}={v}" for k, v in job.items())
            ])))
            for job in jobs
        ]  # fmt: skip
    return configs, jobs


@pytest.fixture(scope="module")
def lr_sweep() -> tuple[list[dict], list[dict]]:
    # seed 0 only (84 of the 252 jobs): composing each job takes a fifth of a second
    data = ["data=wikitext2_files", f"data.dir={WIKITEXT}", "hydra.sweeper.params.seed=0"]
    return sweep_configs("lr_sensitivity", data)


def test_the_lr_sensitivity_sweep_packs_by_placement_and_depth(lr_sweep):
    """84 jobs = 3 placements x 2 depths x (2 warmups x 7 lrs): 6 architectures of 14
    members, in packs of at most 8."""
    configs, jobs = lr_sweep
    assert len(configs) == 84
    packs = plan_packs(configs, 8)
    assert sorted(len(p) for p in packs) == sorted([8, 6] * 6)
    assert sorted(i for p in packs for i in p) == list(range(84))  # every job once
    for pack in packs:
        cells = {(jobs[i]["norm"], jobs[i]["depth"]) for i in pack}
        assert len(cells) == 1  # one placement and depth per pack
        assert pack == sorted(pack)  # in the sweep's order
    members = {(jobs[i]["optim.warmup_steps"], jobs[i]["optim.lr"]) for i in packs[0] + packs[1]}
    assert len(members) == 14


def test_only_the_member_keys_may_differ(lr_sweep):
    configs, _ = lr_sweep
    one = configs[0]
    for key in MEMBER_KEYS:  # each member key alone leaves the architecture
        section, _, name = key.rpartition(".")
        other = {**one, section: {**one[section]}} if section else dict(one)
        target = other[section] if section else other
        target[name] = "changed"
        assert architecture_key(other) == architecture_key(one), key
    for section, name in (("model", "d_model"), ("train", "max_steps"), ("norm", "name")):
        other = {**one, section: {**one[section], name: "changed"}}
        assert architecture_key(other) != architecture_key(one), name
    assert plan_packs([one, one, one], 2) == [[0, 1], [2]]
    dropout = {**one, "model": {**one["model"], "dropout": 0.1}}
    assert plan_packs([dropout, dropout, one], 8) == [[0], [1], [2]]  # with dropout: alone
    removal = {**one, "diag": {**one["diag"], "layer_removal": True}}
    assert plan_packs([removal, removal, one, one], 8) == [[0], [1], [2, 3]]
    with pytest.raises(ValueError, match="max_members"):
        plan_packs([one], 0)
