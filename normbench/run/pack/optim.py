"""AdamW for a pack's parameters: each parameter holds every member's values along a leading
member dimension, and each member's slice is updated by torch's fused AdamW kernel with that
member's own settings (learning rate, betas, eps, weight decay) and its own gate.

Each member's update is the very kernel and arithmetic a single run's AdamW applies
(run/optim.py `build_optimizer`: weight decay on matrices only, fused, the learning rate a
device tensor, `found_inf` as the gate), so a member's weights and moments equal those of
the same run trained alone, bit for bit; a member whose gate is set (a non-finite step, or a
member frozen after its run ended) is left exactly as it was, and the others are not
touched by it. `member_state_dict(m)` is member m's state in the layout of a single run's
`torch.optim.AdamW.state_dict()`, for its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam

from normbench.run.config.schema import OptimConfig


def decay_coefficient(optim: OptimConfig) -> float:
    """The weight decay handed to torch's AdamW, which multiplies the weights by
    1 - lr_t x coefficient at each update (lr_t: the scheduled lr). `coupled`: weight_decay
    itself, so the decay grows with the peak lr; `independent`: weight_decay / optim.lr, so
    that each update decays by weight_decay x lr_t / optim.lr, the schedule's factor alone
    (independent of the peak lr, as in Wortsman et al. 2309.14322)."""
    if str(optim.weight_decay_mode) == "independent":
        return optim.weight_decay / optim.lr
    return optim.weight_decay


@dataclass(frozen=True)
class MemberSettings:
    """One member's AdamW settings (from its `optim.*`)."""

    betas: tuple[float, float]
    eps: float
    weight_decay: float  # the coefficient torch's AdamW multiplies by the lr (run/optim.py)
    lr: float = 0.0  # the peak learning rate (the schedule's; a step takes its own lr)

    @classmethod
    def of(cls, optim: OptimConfig) -> MemberSettings:
        b1, b2 = optim.betas
        coefficient = decay_coefficient(optim)
        return cls((float(b1), float(b2)), float(optim.eps), coefficient, float(optim.lr))


class MemberAdamW:
    """AdamW over `params`, each of shape (members, ...): a single run's groups (matrices
    decay, vectors and scalars do not: judged on a member's slice, as `build_optimizer`
    judges a single run's parameter), each member with its `settings`."""

    def __init__(
        self, params: list[nn.Parameter], settings: list[MemberSettings], fused: bool = True
    ) -> None:
        self.params, self.settings, self.fused = params, settings, fused
        self.members = len(settings)
        if any(p.shape[0] != self.members for p in params):
            raise ValueError(f"every parameter needs a leading dimension of {self.members}")
        decay = [p for p in params if p.dim() - 1 >= 2]
        self.groups = [decay, [p for p in params if p.dim() - 1 < 2]]  # torch's group order
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        device = params[0].device
        self.steps = torch.zeros(self.members, len(params), dtype=torch.float32, device=device)
        self.index = {id(p): i for i, p in enumerate(params)}
        self.at = [[self.index[id(p)] for p in group] for group in self.groups]  # by group

    @torch.no_grad()
    def step(self, lr: torch.Tensor, skip: torch.Tensor) -> None:
        """One update of every member: `lr` and `skip` are float32 vectors of one value per
        member on the device (skip 1: that member's update is skipped there, inside the
        fused kernel). Unfused (`optim.fused=false`), torch's single-tensor kernels, which
        have no gate: the learning rates and gates are read on the host first."""
        if not self.fused:
            lrs, skips = lr.tolist(), skip.tolist()
        for m, settings in enumerate(self.settings):
            if self.fused:
                kernel = {"fused": True, "found_inf": skip[m], "lr": lr[m]}
            elif skips[m]:
                continue
            else:
                kernel = {"foreach": False, "lr": lrs[m]}
            for decayed, group, at in zip((True, False), self.groups, self.at, strict=True):
                if not group:
                    continue
                adam(
                    [p[m] for p in group],
                    [p.grad[m] for p in group],
                    [self.exp_avg[i][m] for i in at],
                    [self.exp_avg_sq[i][m] for i in at],
                    [],
                    [self.steps[m, i] for i in at],
                    decoupled_weight_decay=True,
                    amsgrad=False,
                    beta1=settings.betas[0],
                    beta2=settings.betas[1],
                    weight_decay=settings.weight_decay if decayed else 0.0,
                    eps=settings.eps,
                    maximize=False,
                    **kernel,
                )

    @torch.no_grad()
    def keep(self, members: list[int]) -> None:
        """Only these members from now on (their parameters sliced alike by the caller)."""
        index = torch.tensor(members, device=self.steps.device)
        self.exp_avg = [t.index_select(0, index) for t in self.exp_avg]
        self.exp_avg_sq = [t.index_select(0, index) for t in self.exp_avg_sq]
        self.steps = self.steps.index_select(0, index)
        self.settings = [self.settings[m] for m in members]
        self.members = len(members)

    def _order(self) -> list[int]:
        """The parameters' indices in torch's numbering of a state dict: group by group."""
        return [i for at in self.at for i in at]

    def member_state_dict(self, m: int, template: dict[str, Any] | None = None) -> dict[str, Any]:
        """Member m's state as a single run's `torch.optim.AdamW.state_dict()`: its moments
        and step per parameter, numbered across the two groups as torch numbers them, in the
        groups of `template` (the state dict of that run's own optimizer) or else groups with
        this member's settings, as torch's fused AdamW writes them."""
        state = {
            n: {
                "step": self.steps[m, i].clone(),
                "exp_avg": self.exp_avg[i][m].clone(),
                "exp_avg_sq": self.exp_avg_sq[i][m].clone(),
            }
            for n, i in enumerate(self._order())
        }
        if template is not None:
            groups = [dict(g) for g in template["param_groups"]]
        else:
            groups, start, settings = [], 0, self.settings[m]
            for decayed, group in zip((True, False), self.groups, strict=True):
                groups.append(
                    {
                        "lr": settings.lr,
                        "betas": settings.betas,
                        "eps": settings.eps,
                        "weight_decay": settings.weight_decay if decayed else 0.0,
                        "amsgrad": False,
                        "maximize": False,
                        "foreach": None,
                        "capturable": False,
                        "differentiable": False,
                        "fused": True,
                        "decoupled_weight_decay": True,
                        "params": list(range(start, start + len(group))),
                    }
                )
                start += len(group)
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def load_member_state_dict(self, m: int, saved: dict[str, Any]) -> None:
        """Member m's state from a single run's AdamW state dict (`member_state_dict`, or
        torch's own with the same groups); moments with or without a leading member
        dimension of one."""
        order = self._order()
        for n, entry in saved["state"].items():
            i = order[int(n)]
            shape = self.params[i].shape[1:]
            self.exp_avg[i][m].copy_(entry["exp_avg"].reshape(shape))
            self.exp_avg_sq[i][m].copy_(entry["exp_avg_sq"].reshape(shape))
            self.steps[m, i] = torch.as_tensor(entry["step"], dtype=torch.float32)
