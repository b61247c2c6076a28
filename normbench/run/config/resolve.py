"""The composed config, checked and converted once to the typed schema (run/config/schema.py).

`resolve` is what every command calls on what Hydra composed: the checks of
run/config/checks.py, then the values derived from others. `as_dict` is the resolved config as
plain values, as config.yaml and the W&B config hold it.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normbench.errors import ConfigError
from normbench.model.placements import PLACEMENTS
from normbench.run.config.checks import norm_options, validate
from normbench.run.config.schema import NormbenchConfig
from normbench.run.data import vocab
from normbench.run.record.rundir import flat


def resolve(cfg: DictConfig) -> NormbenchConfig:
    """The composed config as the typed dataclasses above (converted once, here), checked
    (run/config/checks.py), with the values derived from others filled in: the kind's option
    defaults (`norm.eps: null` -> 1e-5 for layernorm), `model.vocab_size: null` (the data's
    vocabulary rounded up to a multiple of 64) and the placement's constants at this depth
    (`norm.constants`, as the model computes them). The saved config (`as_dict`) is then the
    one that ran. `cfg` itself is left as it was."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set {missing[0]}=<value>")
    typed: NormbenchConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    check_known_keys(cfg, typed)
    validate(typed)
    options, own = norm_options(typed)
    for key, value in options.items():
        setattr(typed.norm, key, value)
    typed.norm.constants = PLACEMENTS[str(typed.norm.name)].constants(typed.depth, **own)
    if typed.model.vocab_size is None:
        typed.model.vocab_size = vocab.model_vocab(vocab.limit_of(typed.data))
    return typed


def check_known_keys(cfg: DictConfig, typed: NormbenchConfig) -> None:
    """Every key of the composed config is one the schema knows: a key added with `+`
    (`+optim.lrr=1`) would otherwise be accepted and dropped without a word."""
    given = flat(OmegaConf.to_container(cfg, resolve=False), tuples=False)
    known = set(flat(as_dict(typed)))
    parents = {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}
    for key in sorted(given):
        if key.startswith("hydra.") or key in known or key in parents:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown key '{key}'{hint}; the schema has no such key: remove it")


def as_dict(cfg: NormbenchConfig | DictConfig) -> dict[str, Any]:
    """The config as plain Python values (enums as their names): config.yaml, W&B."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True, throw_on_missing=True, enum_to_str=True)  # type: ignore[return-value]
