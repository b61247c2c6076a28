"""The LM head and its cross-entropy, fused and chunked: the full logits never exist.

With a 50k vocabulary the logits of a batch (B x T x V) dominate a small model's memory and
much of its time: 16 x 256 x 50,304 floats are 824 MB in float32, and autograd keeps them
and their gradient. `linear_cross_entropy(h, W, y)` computes the same mean (or summed)
cross-entropy of softmax(h W^T) chunk by chunk of tokens. In the training forward pass each
chunk also produces its gradients at once (the loss is the last operation, so dlogits =
softmax - onehot is known there): grad_h and grad_W are accumulated and the backward pass
only scales them. Three matrix products per chunk, as unfused; memory O(chunk x V).

The same pass also gives the output logits' normalizer log Z = logsumexp(logits) per token
(from -log p[y] and the target's logit, no extra pass over the vocabulary): `stats=True`
returns its mean, max and mean square (HEAD_STATS), and with `extremes=True` the largest
|logit| (one more pass over each chunk's logits, so only when asked). `z_loss=z` adds
z * log(Z)^2 per token to the loss (PaLM; Wortsman et al. 2309.14322), whose gradient with
respect to the logits, 2 z log(Z) softmax, joins dlogits in the same pass.

Precision: the products run in the dtype of the autocast region (bf16 under bf16 autocast,
as the unfused head), the softmax in float32 (see `_nll_and_softmax`), grad_W accumulates in
float32 (float64 for a float64 model). Cost per token, the unfused head's: three products; the elementwise work is one
softmax kernel instead of the unfused chain of casts, log-softmax, exp and scaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CHUNK = 1024  # tokens per chunk (model.head_chunk)
# The statistics of `stats=True`, in this order (logit_max_abs is NaN without `extremes`).
HEAD_STATS = ("logz_mean", "logz_max", "logz_sq_mean", "logit_max_abs")


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


def _nll_and_softmax(
    logits: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-log softmax(logits)[y] and log Z = logsumexp(logits) per row (float32), and
    softmax(logits) in logits' dtype (or `dtype`: float32 for the z-loss, whose gradient is a
    relative change of ~2z log Z to each probability, below bf16's resolution; rounded once,
    after it is added, it survives on average as in the unfused head). Rows are logits'
    last dimension, whatever the dimensions before it (a pack's members, the tokens).

    One softmax kernel (float32 inside; for bf16 logits bf16 out, bit-identical to rounding
    the float32 softmax) and log Z read off it at each row's largest probability: with m the
    row's largest logit, p_max = exp(m - log Z), so log Z = m - log p_max exactly, and p_max
    >= 1/V never underflows, whatever the loss (a target's p[y] underflows above ~87 nats).
    No branch on the data: nothing here waits for the device. For float32 logits log Z is
    within 1e-7 of torch.logsumexp; for bf16 within 2^-9 (the rounding of p_max), far below
    the rounding of the bf16 logits themselves. Costs two reductions over the chunk's logits
    and probabilities, instead of a float32 logsumexp pass.
    """
    p = torch.softmax(logits, dim=-1, dtype=dtype)
    log_z = logits.amax(dim=-1).float() - p.amax(dim=-1).float().log()
    return log_z - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1).float(), log_z, p


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b member by member, (M, n, k) @ (M, k, m): one member's as one matrix product
    (faster on a CPU than a batch of one), a pack's as one batched product."""
    if a.shape[0] == 1:
        return (a[0] @ b[0]).unsqueeze(0)
    return torch.bmm(a, b)


def _accumulate(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b member by member, in place (`_product`'s kernels)."""
    if a.shape[0] == 1:
        out[0].addmm_(a[0], b[0])
    else:
        out.baddbmm_(a, b)


class _LinearCrossEntropy(torch.autograd.Function):
    """Member by member (h (M, n, d), weight (M, V, d), targets (M, n)): each member's loss
    and HEAD_STATS, in batched products over the members, a chunk of tokens at a time."""

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
        z_loss: tuple[float, ...],
        extremes: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        M, n = h.shape[:2]
        w = weight.to(dtype)
        wt = w.mT.contiguous()  # (M, d, V): the forward product is fastest on this layout
        grad_h = torch.empty_like(h) if needs_grad else None
        acc = torch.promote_types(torch.float32, weight.dtype)  # grad_W: float32 at least
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if needs_grad else None
        # per member: the sums of the loss, log Z and log Z^2; the max of log Z and of |logit|
        sums = torch.zeros(M, 3, dtype=torch.float32, device=h.device)
        peaks = torch.full((M, 2), -torch.inf, dtype=torch.float32, device=h.device)
        # with a z-loss the softmax is float32 (at least) for every member: a member without
        # one, in a pack with members that have one, gets bf16's rounding of it no longer
        z = _z_factor(z_loss, h.device)
        for start in range(0, n, chunk):
            hc = h[:, start : start + chunk].to(dtype)
            yc = targets[:, start : start + chunk]
            logits = _product(hc, wt)  # (M, c, V)
            nll, log_z, p = _nll_and_softmax(logits, yc, acc if z is not None else None)
            total = nll.sum(1) if z is None else (nll + z * log_z.square()).sum(1)
            sums += torch.stack([total, log_z.sum(1), log_z.square().sum(1)], dim=1)
            peaks[:, 0] = torch.maximum(peaks[:, 0], log_z.amax(1))
            if extremes:
                low, high = torch.aminmax(logits.flatten(1), dim=1)
                peaks[:, 1] = torch.maximum(peaks[:, 1], torch.maximum(-low, high).float())
            if needs_grad:  # dlogits = softmax (1 + 2 z log Z) - onehot; 1/n of a mean below
                if z is not None:
                    p *= (1.0 + 2.0 * z * log_z)[..., None]
                rows = torch.arange(yc.numel(), device=h.device)
                p.view(-1, p.shape[-1])[rows, yc.flatten()] -= 1.0
                p = p.to(dtype)
                grad_h[:, start : start + chunk] = _product(p, w)
                if p.dtype == acc:  # accumulate in place: no (V x d) temporary
                    _accumulate(grad_w, p.mT, hc)
                else:
                    grad_w += _product(p.mT, hc).to(acc)
        scale = 1.0 / n if reduction == "mean" else 1.0
        if needs_grad:
            grad_h *= scale
            grad_w *= scale
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        if not extremes:
            peaks[:, 1] = torch.nan
        stats = torch.stack([sums[:, 1] / n, peaks[:, 0], sums[:, 2] / n, peaks[:, 1]], dim=1)
        ctx.mark_non_differentiable(stats)
        return sums[:, 0] * scale, stats

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor, _: torch.Tensor
    ) -> tuple:
        grad_h, grad_w = ctx.saved_tensors
        g = grad_out.view(-1, 1, 1)
        gh = grad_h * g if ctx.needs_input_grad[0] else None
        gw = (grad_w * g).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None, None, None


def z_coefficients(z_loss: float | Sequence[float], members: int) -> tuple[float, ...]:
    """The z-loss coefficient of each of `members`: one for all, or one per member."""
    if isinstance(z_loss, (int, float)):
        return (float(z_loss),) * members
    if len(z_loss) != members:
        raise ValueError(f"{len(z_loss)} z-loss coefficients for {members} members")
    return tuple(float(z) for z in z_loss)


def _z_factor(z_loss: tuple[float, ...], device: torch.device) -> float | torch.Tensor | None:
    """None without a z-loss; one number where every member has the same coefficient; else
    a (M, 1) tensor that scales each member's rows."""
    if not any(z_loss):
        return None
    if len(set(z_loss)) == 1:
        return z_loss[0]
    return torch.tensor(z_loss, dtype=torch.float32, device=device).view(-1, 1)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    chunk: int = CHUNK,
    *,
    z_loss: float | Sequence[float] = 0.0,
    stats: bool = False,
    extremes: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """cross_entropy(h @ weight.T, targets) over the last dimension of h, without the logits.

    h: (..., d); weight: (V, d); targets: (...) token ids; or, for a pack's M members, h
    (M, ..., d), weight (M, V, d), targets (M, ...): each member's loss, (M,). `reduction`:
    mean or sum. Equal to `F.cross_entropy(F.linear(h, weight).float().flatten(0, -2),
    targets.flatten())` up to rounding, in value and in gradient; plus `z_loss` x log(Z)^2
    per token when z_loss > 0 (one coefficient, or one per member). With `stats`, also the
    float32 vector of HEAD_STATS (no gradient; (M, 4) for members); `extremes` adds the
    largest |logit| to it (else NaN).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, not {reduction!r}")
    alone = weight.dim() == 2  # a plain head: one member
    if alone:
        h, weight, targets = h.unsqueeze(0), weight.unsqueeze(0), targets.unsqueeze(0)
    dtype = _compute_dtype(h)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    with torch.autocast(h.device.type, enabled=False):
        loss, values = _LinearCrossEntropy.apply(
            h.flatten(1, -2),
            weight,
            targets.flatten(1),
            dtype,
            reduction,
            chunk,
            needs_grad,
            z_coefficients(z_loss, weight.shape[0]),
            extremes,
        )
    if alone:
        loss, values = loss[0], values[0]
    return (loss, values) if stats else loss


def logit_stats(logits: torch.Tensor) -> torch.Tensor:
    """HEAD_STATS of materialized logits (..., V): the unfused head's, and the tests'."""
    flat = logits.detach().float().flatten(0, -2)
    log_z = torch.logsumexp(flat, dim=-1)
    return torch.stack([log_z.mean(), log_z.max(), log_z.square().mean(), flat.abs().max()])


def reference_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """The unfused head and loss, as the model computed it before (for tests and benchmarks)."""
    logits = F.linear(h, weight)
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction=reduction)


def reference_z_loss(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, z_loss: float
) -> torch.Tensor:
    """Cross-entropy plus z_loss x mean log(Z)^2 on materialized logits (autograd's gradient)."""
    logits = F.linear(h, weight).float().flatten(0, -2)
    log_z = torch.logsumexp(logits, dim=-1)
    return F.cross_entropy(logits, targets.flatten()) + z_loss * log_z.square().mean()
