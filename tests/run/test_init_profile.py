"""An initialization measured on data (norm.admin_init=profiled): measured once, at a fresh
start, on the batch step 1 trains on; recorded in init_profile.json; never measured again on
resume (the omegas come from the checkpoint)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from normbench.run.data.batches import RandomWindows
from normbench.run.data.tokens import load_tokens
from normbench.run.logger import NullLogger
from normbench.run.record.writer import RunRecord
from normbench.run.trainer import Trainer

from support import TINY, compose_config, text_data
from support import reference as ref


def omegas(model: torch.nn.Module) -> list[torch.Tensor]:
    return [g.weight.detach().clone() for b in model.blocks for g in (b.omega_a, b.omega_m)]


def admin_config(text_files, tmp_path, init: str):
    overrides = [*TINY, *text_data(*text_files), f"data.cache_dir={tmp_path / 'cache'}",
                 "train.max_steps=2", "train.eval_every=2", "device=cpu", "precision=fp32",
                 "logger=none", "norm=admin", f"norm.admin_init={init}"]  # fmt: skip
    cfg = compose_config(*overrides)
    return cfg, load_tokens(cfg.data)


@pytest.fixture
def admin(text_files, tmp_path):
    return admin_config(text_files, tmp_path, "profiled")


def test_profiled_at_start_on_the_first_training_batch_and_recorded(admin, tmp_path):
    cfg, tokens = admin
    record = RunRecord(tmp_path / "run")
    trainer = Trainer(cfg, tokens, record, NullLogger())
    saved = json.loads((tmp_path / "run" / "init_profile.json").read_text())
    assert saved == json.loads(json.dumps(trainer.init_profile))
    assert saved["placement"] == "admin" and saved["batch"] == [4, 32]
    # the batch is the one step 1 trains on, and the training stream was not advanced
    first, _ = RandomWindows(tokens.train, 32, 4, cfg.seed).next(torch.device("cpu"))
    fresh = np.random.default_rng(cfg.seed).bit_generator.state
    assert trainer.batches.rng.bit_generator.state == fresh
    want = ref.admin_profile(trainer.model, first)  # by hand, with hooks and numpy
    for row, weight, (omega, var_shortcut, var_branch) in zip(
        saved["sublayers"], omegas(trainer.model), want, strict=True
    ):
        assert row["omega"] == pytest.approx(omega, rel=1e-5)
        assert row["var_shortcut"] == pytest.approx(var_shortcut, rel=1e-5)
        assert row["var_branch"] == pytest.approx(var_branch, rel=1e-5)
        torch.testing.assert_close(weight, torch.full_like(weight, omega))
    assert len(saved["sublayers"]) == 4 and saved["sublayers"][0]["omega"] == 1.0
    record.close()


def test_a_resumed_run_keeps_its_profile_and_its_trained_omegas(admin, tmp_path):
    cfg, tokens = admin
    first = Trainer(cfg, tokens, RunRecord(tmp_path / "a"), NullLogger())
    profiled = omegas(first.model)
    first.fit()
    state = first.state_dict(2, True)
    trained = omegas(first.model)
    assert any(not torch.equal(a, b) for a, b in zip(trained, profiled, strict=True))
    resumed = Trainer(cfg, tokens, RunRecord(tmp_path / "b"), NullLogger(), resume=state)
    assert resumed.init_profile == first.init_profile  # the run's own, from the checkpoint
    assert all(bool((w == 1).all()) for w in omegas(resumed.model))  # not measured again
    saved = json.loads((tmp_path / "b" / "init_profile.json").read_text())
    assert saved == json.loads(json.dumps(first.init_profile))
    assert resumed._start() == 3  # loads the checkpoint: the trained omegas
    for a, b in zip(omegas(resumed.model), trained, strict=True):
        assert torch.equal(a, b)


def test_a_placement_without_a_profile_records_none(text_files, tmp_path):
    cfg, tokens = admin_config(text_files, tmp_path, "analytic")
    trainer = Trainer(cfg, tokens, RunRecord(tmp_path / "run"), NullLogger())
    assert trainer.init_profile is None and trainer.state_dict(0, False)["init_profile"] is None
    assert not (tmp_path / "run" / "init_profile.json").exists()
    analytic = math.sqrt(5 / math.log(5) - 1)  # L = 2N = 4
    for w in omegas(trainer.model):
        torch.testing.assert_close(w, torch.full_like(w, analytic))
