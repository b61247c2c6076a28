"""The experiment axes: the config keys a sweep varies, and their short names.

One table, used wherever a run is described by its axes: the flat keys of the W&B config
and the run's default name (run/logger.py), the columns and axes of `normbench compare`
(analysis/table.py) and the selection of runs by the claims (analysis/claims.py). It lives
in the run layer because the logger needs it; the analysis layer imports it.
"""

from __future__ import annotations

from typing import Any

from normbench.run.rundir import flat

# Dotted config key -> short name, in the order tables show them.
AXES: dict[str, str] = {
    "norm.name": "norm",
    "norm.kind": "norm_kind",
    "depth": "depth",
    "optim.lr": "lr",
    "optim.warmup_steps": "warmup",
    "seed": "seed",
    "optim.schedule": "schedule",
    "model.block": "block",
    "model.qk_norm": "qk_norm",
    "model.d_model": "d_model",
    "model.init": "init",
    "precision": "precision",
    "data.label": "data",
    "data.vocab_limit": "vocab_limit",  # null: GPT-2's full vocabulary (run/vocab.py)
}
KEYS: dict[str, str] = {short: key for key, short in AXES.items()}
# Not axes: where things were written, values derived from other keys, other commands' keys.
NOT_AXES = ("logger.", "data.cache_dir", "norm.constants.", "probe", "claim")


def short(key: str) -> str:
    """The short name of a dotted config key (other keys keep their dotted path)."""
    return AXES.get(key, key)


def axis_values(config: dict[str, Any]) -> dict[str, Any]:
    """{short name: value} of every axis, from a run's config as plain values (as_dict)."""
    values = flat(config)
    return {name: values.get(key) for key, name in AXES.items()}
