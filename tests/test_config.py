"""Configuration: real Hydra composition of configs/, typed schema, consistency checks."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normbench.cli import config_dir, describe_error
from normbench.config import ConfigError, register_configs, to_container, validate


def make(*overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def error_of(*overrides: str) -> str:
    """The one-line message the CLI would print for these overrides."""
    try:
        validate(make(*overrides))
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        message = describe_error(e)
        assert "\n" not in message
        return message
    raise AssertionError(f"{overrides} was accepted")


def test_defaults_compose_and_validate():
    cfg = make()
    validate(cfg)
    assert cfg.norm.name == "pre" and cfg.norm.kind == "layernorm"
    assert cfg.norm.eps == 1e-5  # filled in from the kind
    assert cfg.data.path == "Salesforce/wikitext" and cfg.data.subset == "wikitext-2-raw-v1"
    assert cfg.logger.backend == "wandb"
    plain = to_container(cfg)
    assert plain["norm"]["name"] == "pre" and plain["optim"]["schedule"] == "cosine"
    OmegaConf.create(plain)  # plain data: no enums, no interpolations left


def test_user_keys_exist_with_these_names():
    cfg = make(
        "norm=post",
        "norm.kind=rmsnorm",
        "norm.eps=1e-4",
        "depth=3",
        "model.d_model=64",
        "model.n_heads=8",
        "model.context=32",
        "model.dropout=0.1",
        "model.init=xavier",
        "optim.lr=3e-4",
        "optim.warmup_steps=7",
        "optim.schedule=inverse_sqrt",
        "optim.min_lr=1e-5",
        "optim.weight_decay=0.0",
        "optim.betas=[0.8,0.9]",
        "optim.grad_clip=0",
        "train.max_steps=11",
        "train.batch_size=2",
        "train.eval_every=5",
        "train.log_every=1",
        "seed=3",
        "device=cpu",
        "precision=fp32",
        "logger=none",
    )
    validate(cfg)
    assert (cfg.norm.name, cfg.norm.kind, cfg.norm.eps) == ("post", "rmsnorm", 1e-4)
    assert cfg.optim.schedule == "inverse_sqrt" and list(cfg.optim.betas) == [0.8, 0.9]
    assert cfg.logger.backend == "none"


def test_rmsnorm_default_eps():
    cfg = make("norm.kind=rmsnorm")
    validate(cfg)
    assert cfg.norm.eps == 1e-6


def test_experiment_overrides_defaults():
    cfg = make("experiment=tiny")
    assert cfg.depth == 2 and cfg.model.d_model == 64 and cfg.train.max_steps == 20


def test_data_text_and_wikitext2_files():
    cfg = make("data=text", "data.train_path=a.txt", "data.val_path=b.txt")
    assert cfg.data.source == "text" and cfg.data.documents == "file"
    cfg = make("data=wikitext2_files", "data.dir=/x/wikitext-2")
    assert cfg.data.train_path == "/x/wikitext-2/wiki.valid.tokens"
    assert cfg.data.label == "wikitext2-valid-as-train"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["norm=sideways"], "unknown norm 'sideways'; choose one of: post, pre"),
        (["norm.kind=groupnorm"], "norm.kind: Invalid value 'groupnorm', expected one of"),
        (["optim.schedule=step"], "cosine, linear, constant, inverse_sqrt"),
        (["data=imagenet"], "choose one of: text, wikitext2, wikitext2_files"),
        (["logger=tensorboard"], "choose one of: none, wandb"),
        (["device=tpu"], "expected one of [auto, cpu, cuda]"),
        (["precision=fp16"], "expected one of [fp32, bf16]"),
        (["model.width=3"], "unknown key 'model.width'; valid keys under model: d_model,"),
        (["train.maxsteps=3"], "did you mean train.max_steps?"),
        (["dept=3"], "did you mean depth?"),
        (["depth=many"], "depth: Value 'many' of type 'str' could not be converted to Integer"),
        (["depth=0"], "depth must be >= 1 (got 0)"),
        (["model.n_heads=5"], "model.d_model=256 is not divisible by model.n_heads=5"),
        (["optim.lr=0"], "optim.lr must be > 0"),
        (["optim.lr=-1e-3"], "optim.lr must be > 0"),
        (["optim.warmup_steps=500"], "optim.warmup_steps=500 exceeds train.max_steps=200"),
        (["optim.grad_clip=-1"], "optim.grad_clip must be >= 0"),
        (["optim.betas=[0.9]"], "optim.betas must be two numbers"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
        (["data=text"], "data.train_path is required"),
        (["logger.mode=sometimes"], "logger.mode must be one of online, offline, disabled"),
    ],
)
def test_bad_values_get_one_line_with_the_fix(overrides, expected):
    assert expected in error_of(*overrides)
