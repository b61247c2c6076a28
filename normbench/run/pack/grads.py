"""The gradients of a model's parameters, per member (normbench/model/members.py): each
member's gradient norm of each parameter (before clipping) in one fused (foreach) kernel
over every member's slice, each member's total, and each member clipped by its own
threshold with its own total (torch's `clip_grad_norm_` rule, one foreach multiply per
member). A run alone is the pack of one: these are its gradients too."""

from __future__ import annotations

import torch
from torch import nn


class MemberGradients:
    """The gradients of `params`, each of shape (members, ...)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.members = params[0].shape[0] if params else 1
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def norms(self) -> torch.Tensor:
        """(parameters, members): each member's gradient norm of each parameter, float32
        (float64 for float64 gradients; 0 where a parameter has no gradient)."""
        M = self.members
        present = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        if not present:
            return torch.zeros(len(self.params), M, dtype=torch.float32)
        slices = [self.params[i].grad[m] for i in present for m in range(M)]
        norms = torch.stack(torch._foreach_norm(slices)).view(len(present), M)
        norms = norms if norms.dtype == torch.float64 else norms.float()  # never narrowed
        if len(present) == len(self.params):
            return norms
        if present not in self._index:  # built once, not copied to the device every step
            self._index[present] = torch.tensor(present, device=norms.device)
        full = torch.zeros(len(self.params), M, dtype=norms.dtype, device=norms.device)
        return full.index_copy_(0, self._index[present], norms)

    @staticmethod
    def totals(norms: torch.Tensor) -> torch.Tensor:
        """Each member's global gradient norm from `norms` (parameters, members)."""
        return torch.linalg.vector_norm(norms, dim=0)

    @torch.no_grad()
    def clip_(self, totals: torch.Tensor, max_norms: torch.Tensor) -> None:
        """Scale member m's gradients by min(1, max_norms[m] / (totals[m] + 1e-6)), torch's
        clip_grad_norm_ rule; an infinite threshold scales by exactly 1."""
        coef = torch.clamp(max_norms / (totals + 1e-6), max=1.0)
        grads = [p.grad for p in self.params if p.grad is not None]
        for m in range(self.members):
            torch._foreach_mul_([g[m] for g in grads], coef[m])
