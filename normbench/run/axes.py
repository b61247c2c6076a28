"""The experiment's axes: the config keys that runs are compared over, under short names.

One table, `AXES` (dotted config key -> short name), serves every place that names an axis:
the shallow keys of a W&B run's config (normbench/run/logger.py, `axes_of`), the columns and
labels of `normbench compare` and its `--x`/`--y`/`--group-by` names
(normbench/analysis/table.py), and the judges' selections of runs
(normbench/analysis/claims/train.py). Its order is the order of the axes in a report. A key
that is not in the table keeps its dotted path as its name.

`IGNORED` are the prefixes of keys that are never axes even when they vary: where things
were written, values derived from other keys, other commands' keys, and the CPU threads
(how a run was executed, not what it trained).
"""

from __future__ import annotations

from typing import Any

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
    "data.vocab_limit": "vocab_limit",
}
LONG: dict[str, str] = {name: key for key, name in AXES.items()}
IGNORED = (
    "logger.",
    "data.cache_dir",
    "data.fingerprint.",
    "norm.constants.",
    "probe",
    "claim",
    "threads",
)


def short(key: str) -> str:
    """The name of dotted config key `key` (its short name when it is an axis)."""
    return AXES.get(key, key)


def long(name: str) -> str:
    """The dotted config key of `name`, a short name or already a dotted key."""
    return LONG.get(name, name)


def axes_of(config: dict[str, Any]) -> dict[str, Any]:
    """The axes of a flattened config (normbench.run.record.rundir.flat) under their short names,
    in the table's order; keys the config lacks are left out."""
    return {name: config[key] for key, name in AXES.items() if key in config}


def order(value: Any) -> tuple[int, Any]:
    """The sort key of an axis value: null and booleans first, then numbers ascending, then
    text."""
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))
