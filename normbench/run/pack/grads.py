"""The gradients of a pack's parameters, per member: each member's gradient norm (before
clipping) from one norm per parameter and member, and each member clipped by its own
threshold with its own total, as `run/steps.py`'s `Gradients` does for a run alone."""

from __future__ import annotations

import torch
from torch import nn


class MemberGradients:
    """The gradients of `params`, each of shape (members, ...)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params

    def norms(self) -> torch.Tensor:
        """(parameters, members): each member's gradient norm of each parameter, float32
        (0 where a parameter has no gradient)."""
        rows = []
        for p in self.params:
            if p.grad is None:
                rows.append(torch.zeros(p.shape[0], device=p.device))
            else:
                flat = p.grad.reshape(p.shape[0], -1)  # in its own dtype, as _foreach_norm
                rows.append(torch.linalg.vector_norm(flat, dim=1).float())
        return torch.stack(rows)

    @staticmethod
    def totals(norms: torch.Tensor) -> torch.Tensor:
        """Each member's global gradient norm from `norms` (parameters, members)."""
        return torch.linalg.vector_norm(norms, dim=0)

    @torch.no_grad()
    def clip_(self, totals: torch.Tensor, max_norms: torch.Tensor) -> None:
        """Scale member m's gradients by min(1, max_norms[m] / (totals[m] + 1e-6)), torch's
        clip_grad_norm_ rule; an infinite threshold leaves that member as it is."""
        coef = torch.clamp(max_norms / (totals + 1e-6), max=1.0)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype).view(-1, *[1] * (p.dim() - 1)))
