"""Configuration: real Hydra composition of configs/, typed schema, consistency checks."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normbench.cli import describe_error
from normbench.errors import ConfigError
from normbench.run.config.checks import validate
from normbench.run.config.resolve import as_dict, resolve
from normbench.run.config.schema import config_dir, register_configs


def make(*overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def error_of(*overrides: str) -> str:
    """The one-line message the CLI would print for these overrides."""
    try:
        resolve(make(*overrides))
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        message = describe_error(e)
        assert "\n" not in message
        return message
    raise AssertionError(f"{overrides} was accepted")


def test_defaults_compose_and_validate():
    cfg = make()
    cfg = resolve(cfg)
    assert cfg.norm.name == "pre" and cfg.norm.kind == "layernorm"
    assert cfg.norm.eps == 1e-5  # filled in from the kind
    assert cfg.data.path == "Salesforce/wikitext" and cfg.data.subset == "wikitext-2-raw-v1"
    assert cfg.logger.backend == "wandb"
    plain = as_dict(cfg)
    assert plain["norm"]["name"] == "pre" and plain["optim"]["schedule"] == "cosine"
    OmegaConf.create(plain)  # plain data: no enums, no interpolations left


def test_validate_changes_nothing_and_resolve_returns_typed_objects():
    """validate only checks; resolve fills in the derived values on a typed copy."""
    import dataclasses

    from normbench.run.config.schema import ModelConfig, NormbenchConfig

    cfg = make("norm=deepnorm", "depth=12")
    before = OmegaConf.to_container(cfg)
    plain = OmegaConf.to_object(cfg)
    snapshot = dataclasses.asdict(plain)
    validate(plain)
    assert dataclasses.asdict(plain) == snapshot  # checked, not changed
    typed = resolve(cfg)
    assert OmegaConf.to_container(cfg) == before  # untouched: eps, vocab_size still null
    assert cfg.norm.eps is None and cfg.model.vocab_size is None
    assert isinstance(typed, NormbenchConfig) and isinstance(typed.model, ModelConfig)
    assert typed.norm.eps == 1e-5 and typed.model.vocab_size == 50304
    assert typed.norm.constants == pytest.approx({"alpha": 24**0.25, "beta": 96**-0.25})
    assert as_dict(typed)["norm"]["constants"] == typed.norm.constants


@pytest.mark.parametrize("value, expected", [("5", 5.0), ("0.5", 0.5), ("0", 0.0), ("null", None)])
def test_checkpoints_by_time_can_be_set_or_turned_off(value, expected):
    cfg = make(f"train.ckpt_every_min={value}")
    cfg = resolve(cfg)
    assert cfg.train.ckpt_every_min == expected
    assert make().train.ckpt_every_min == 5  # the default: a few minutes


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
    cfg = resolve(cfg)
    assert (cfg.norm.name, cfg.norm.kind, cfg.norm.eps) == ("post", "rmsnorm", 1e-4)
    assert cfg.optim.schedule == "inverse_sqrt" and list(cfg.optim.betas) == [0.8, 0.9]
    assert cfg.logger.backend == "none"


@pytest.mark.parametrize(
    "kind, options",
    [
        ("layernorm", {"eps": 1e-5, "bias": True, "alpha0": None}),
        ("rmsnorm", {"eps": 1e-6, "bias": None, "alpha0": None}),
        ("scalenorm", {"eps": 1e-5, "bias": None, "alpha0": None}),
        ("dyt", {"eps": None, "bias": True, "alpha0": 0.5}),
        ("batchnorm", {"eps": 1e-5, "bias": True, "alpha0": None}),
        ("identity", {"eps": None, "bias": None, "alpha0": None}),
    ],
)
def test_the_kind_fills_in_its_defaults_and_only_its_options(kind, options):
    cfg = make(f"norm.kind={kind}")
    cfg = resolve(cfg)
    assert {k: getattr(cfg.norm, k) for k in options} == options


def test_every_placement_and_kind_is_a_choice():
    from normbench.model.kinds import KINDS
    from normbench.model.placements import PLACEMENTS

    yamls = {p.stem for p in (config_dir() / "norm").glob("*.yaml")}
    assert yamls == set(PLACEMENTS)  # one YAML per placement class
    for placement in sorted(PLACEMENTS):
        cfg = make(f"norm={placement}")
        cfg = resolve(cfg)
        assert cfg.norm.name == placement
    assert set(KINDS) == {"layernorm", "rmsnorm", "scalenorm", "dyt", "batchnorm", "identity"}


@pytest.mark.parametrize("placement", ["rezero", "none"])
def test_gated_and_unnormalized_placements_default_to_no_norm(placement):
    cfg = make(f"norm={placement}")
    cfg = resolve(cfg)
    assert cfg.norm.kind == "identity"


def test_depth_constants_are_in_the_config():
    cfg = make("norm=deepnorm", "depth=48")
    cfg = resolve(cfg)
    assert cfg.norm.constants == pytest.approx({"alpha": 96**0.25, "beta": 384**-0.25})
    cfg = make("norm=admin", "depth=6")
    cfg = resolve(cfg)
    assert cfg.norm.admin_init == "analytic"  # configs/norm/admin.yaml's default
    assert cfg.norm.constants["omega"] == pytest.approx(2.0170092187)
    cfg = resolve(make("norm=admin", "depth=6", "norm.admin_init=profiled"))
    assert cfg.norm.constants == {"omega": None}  # measured at start: init_profile.json
    assert as_dict(cfg)["norm"]["admin_init"] == "profiled"
    cfg = make("norm=mix", "depth=12", "norm.mix_ratio=0.5")
    cfg = resolve(cfg)
    assert cfg.norm.constants == {"post_blocks": 6}
    cfg = make("norm=pre")
    cfg = resolve(cfg)
    assert cfg.norm.constants == {}
    assert as_dict(cfg)["norm"]["constants"] == {}


def test_options_of_the_model():
    cfg = make("norm=peri", "model.block=parallel", "model.qk_norm=l2", "norm.kind=dyt")
    cfg = resolve(cfg)
    assert cfg.model.block == "parallel" and cfg.model.qk_norm == "l2"
    cfg = make("norm.kind=dyt", "norm.alpha0=1.0", "norm.bias=false")
    cfg = resolve(cfg)
    assert (cfg.norm.alpha0, cfg.norm.bias) == (1.0, False)


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
        (
            ["norm=sideways"],
            "unknown norm 'sideways'; choose one of: admin, b2t, deepnorm, lns, mix, none, "
            "peri, post, pre, reordered, resi_dual, rezero, sandwich",
        ),
        (["norm.kind=groupnorm"], "norm.kind: Invalid value 'groupnorm', expected one of"),
        (["optim.schedule=step"], "cosine, linear, constant, inverse_sqrt"),
        (["data=imagenet"], "choose one of: text, wikitext2, wikitext2_files"),
        (["logger=tensorboard"], "choose one of: none, wandb"),
        (["device=tpu"], "expected one of [auto, cpu, cuda, mps]"),
        (["precision=fp16"], "expected one of [auto, fp32, bf16]"),
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
        (["train.ckpt_every_min=-1"], "train.ckpt_every_min must be >= 0 minutes, 0 or null"),
        (["train.ckpt_every_min=inf"], "train.ckpt_every_min must be a finite number (got inf)"),
        (["train.ckpt_every_min=nan"], "train.ckpt_every_min must be a finite number (got nan)"),
        (["train.ckpt_every_min=often"], "train.ckpt_every_min: Value 'often' of type 'str'"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
        (["data=text"], "data.train_path is required"),
        (["logger.mode=sometimes"], "logger.mode must be one of online, offline, disabled"),
        # combinations of placement, kind and block that make no sense
        (["norm=post", "model.block=parallel"], "model.block=parallel is defined for pre-norm"),
        (["norm=deepnorm", "model.block=parallel"], "not norm=deepnorm; use model.block=seq"),
        (["norm=deepnorm", "norm.kind=identity"], "norm=deepnorm with norm.kind=identity"),
        (["norm=post", "norm.kind=identity"], "use norm=none for a no-normalization control"),
        (["norm=rezero", "norm.kind=rmsnorm"], "norm=rezero has no norms, so norm.kind=rms"),
        (["norm=none", "norm.kind=layernorm"], "leave norm.kind=identity (its default)"),
        (["norm.alpha0=1.0"], "norm.alpha0 has no meaning for norm.kind=layernorm"),
        (["norm.kind=rmsnorm", "norm.bias=false"], "norm.bias has no meaning for norm.kind=rms"),
        (["norm.kind=dyt", "norm.eps=1e-5"], "kind that has it: layernorm, rmsnorm, scalenorm"),
        (["norm.kind=dyt", "norm.alpha0=0"], "norm.alpha0 must be > 0 (got 0.0)"),
        (["norm.eps=0"], "norm.eps must be > 0"),
        (["norm.kind=batchnorm", "train.batch_size=1"], "train.batch_size must be >= 2 (got 1)"),
        (["norm=mix", "norm.mix_ratio=1.5"], "norm.mix_ratio must be in [0, 1] (got 1.5)"),
        (["norm=resi_dual", "norm.dual_scale=0"], "norm.dual_scale must be > 0"),
        (
            ["norm=admin", "norm.admin_init=measured"],
            "norm.admin_init must be one of analytic, profiled (got 'measured')",
        ),
        (["norm.admin_init=profiled"], "unknown key 'norm.admin_init'"),  # norm=pre has no omega
        (["norm.mix_ratio=0.5"], "unknown key 'norm.mix_ratio'"),  # norm=pre has no split
        (["model.block=diagonal"], "model.block: Invalid value 'diagonal'"),
        (["model.qk_norm=l2", "model.context=1"], "model.qk_norm=l2 needs model.context"),
        (
            ["model.qk_norm=true"],
            "expected one of [none, l2, layernorm, rmsnorm] (it was true/false: true is now l2",
        ),
        (["norm=deepnorm", "norm.constants={alpha:2.0}"], "remove the override"),
    ],
)
def test_bad_values_get_one_line_with_the_fix(overrides, expected):
    assert expected in error_of(*overrides)
