"""Which jobs of a sweep can train together, and the packs they form.

Members of one pack share everything that shapes the model and the loop: the placement and
its kind, depth, width, vocabulary, data, precision, steps, batch, evaluation and detector
settings. They may differ only in `MEMBER_KEYS`: the seed (initialization, data order) and
the optimizer's settings (learning rate and its schedule, warmup, weight decay and its mode,
betas, eps, clipping, z-loss). `plan_packs` groups a sweep's resolved configs by everything
else, in the order the sweep lists them, and splits each group into packs of at most
`max_members`; a job that shares its architecture with no other is a pack of one, and so is
a job with dropout (`model.dropout` > 0: a pack draws its masks from one random stream, so
its runs would not be those alone) or with `diag.layer_removal` (measured on a run alone's
model after training).
"""

from __future__ import annotations

import json
from typing import Any

from normbench.run.record.rundir import flat

# What members of one pack may differ in (flat config keys).
MEMBER_KEYS = (
    "seed",
    "optim.lr",
    "optim.min_lr",
    "optim.warmup_steps",
    "optim.schedule",
    "optim.weight_decay",
    "optim.weight_decay_mode",
    "optim.betas",
    "optim.eps",
    "optim.grad_clip",
    "optim.z_loss",
)


def architecture_key(config: dict[str, Any]) -> str:
    """Everything of a resolved config (`as_dict`) that members of one pack must share, as
    one canonical string: the whole config but `MEMBER_KEYS` (a pack is one process: its
    device, threads, checkpoints and diagnostics are shared too)."""
    shared = {key: value for key, value in flat(config).items() if key not in MEMBER_KEYS}
    return json.dumps(shared, sort_keys=True, default=str)


def packable(config: dict[str, Any]) -> bool:
    """Whether a job may share a pack: not with dropout (one random stream for a pack), not
    with diag.layer_removal (measured on a run alone's model)."""
    dropout = config.get("model", {}).get("dropout")
    return not dropout and not config.get("diag", {}).get("layer_removal")


def plan_packs(configs: list[dict[str, Any]], max_members: int) -> list[list[int]]:
    """The packs of a sweep: lists of indices into `configs`, each of at most `max_members`
    jobs with one `architecture_key`, in the sweep's order (a group's packs in the order of
    its first job, each pack in its jobs' order)."""
    if max_members < 1:
        raise ValueError(f"max_members must be >= 1 (got {max_members})")
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        alone = not packable(config)
        groups.setdefault(f"alone {index}" if alone else architecture_key(config), []).append(index)
    return [
        members[start : start + max_members]
        for members in groups.values()
        for start in range(0, len(members), max_members)
    ]
