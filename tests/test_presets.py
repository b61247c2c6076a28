"""Every sweep preset runs the jobs its header states, and no more: the sweeper's params of a
preset merge with those of the presets it builds on (a key it does not list is swept as the
parent sweeps it), which once added an unregistered warmup-0 half to experiment=depth_breakdown.
Composed by real Hydra, with the hydra config."""

from __future__ import annotations

import math
import re

import pytest
from hydra import compose, initialize_config_dir

from normbench.run.config.schema import config_dir, register_configs

EXPERIMENTS = config_dir() / "experiment"
STATED = re.compile(r"\b(\d+) (?:jobs|runs)\b")


def _stated(name: str) -> int | None:
    found = STATED.search((EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8"))
    return int(found.group(1)) if found else None


def _jobs(name: str) -> int:
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    return math.prod(len(str(v).split(",")) for v in params.values())


SWEEPS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if _stated(p.stem) is not None)


@pytest.mark.parametrize("name", SWEEPS)
def test_a_preset_sweeps_the_jobs_it_states(name):
    assert _jobs(name) == _stated(name)


def test_the_claims_sweeps_are_checked():
    for name in ("warmup", "depth_breakdown", "qk_layernorm", "z_loss", "dyt", "curse_of_depth"):
        assert name in SWEEPS
