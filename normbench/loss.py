"""The LM head and its cross-entropy, fused and chunked: the full logits never exist.

With a 50k vocabulary the logits of a batch (B x T x V) dominate a small model's memory and
much of its time: 16 x 256 x 50,304 floats are 824 MB in float32, and autograd keeps them
and their gradient. `linear_cross_entropy(h, W, y)` computes the same mean (or summed)
cross-entropy of softmax(h W^T) chunk by chunk of tokens. In the training forward pass each
chunk also produces its gradients at once (the loss is the last operation, so dlogits =
softmax - onehot is known there): grad_h and grad_W are accumulated and the backward pass
only scales them. Three matrix products per chunk, as unfused; memory O(chunk x V).

Precision: the products run in the dtype of the autocast region (bf16 under bf16 autocast,
as the unfused head), the softmax and the loss in float32, grad_W accumulates in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 2048  # tokens per chunk: 2048 x 50,304 float32 logits = 412 MB at most at once


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        h: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        dtype: torch.dtype,
        reduction: str,
        chunk: int,
        needs_grad: bool,
    ) -> torch.Tensor:
        n = h.shape[0]
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if needs_grad else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if needs_grad else None
        )
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        scale = 1.0 / n if reduction == "mean" else 1.0
        for start in range(0, n, chunk):
            hc = h[start : start + chunk].to(dtype)
            yc = targets[start : start + chunk]
            logits = (hc @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
            if needs_grad:
                # dlogits = (softmax - onehot) * scale, in place of the logits
                dlogits = logits.sub_(lse[:, None]).exp_()
                dlogits[torch.arange(len(yc), device=h.device), yc] -= 1.0
                dlogits = dlogits.mul_(scale).to(dtype)
                grad_h[start : start + chunk] = (dlogits @ w).to(h.dtype)
                grad_w += (dlogits.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    chunk: int = CHUNK,
) -> torch.Tensor:
    """cross_entropy(h @ weight.T, targets) over the last dimension of h, without the logits.

    h: (..., d); weight: (V, d); targets: (...) token ids. `reduction`: mean or sum. Equal
    to `F.cross_entropy(F.linear(h, weight).float().flatten(0, -2), targets.flatten())` up to
    rounding, in value and in gradient.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, not {reduction!r}")
    dtype = _compute_dtype(h)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            h.flatten(0, -2), weight, targets.flatten(), dtype, reduction, chunk, needs_grad
        )


def reference_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """The unfused head and loss, as the model computed it before (for tests and benchmarks)."""
    logits = F.linear(h, weight)
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction=reduction)
