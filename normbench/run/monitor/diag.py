"""Per-layer diagnostics (`diag.*`): the training dynamics that explain a failure.

Two tiers, both measured on the training step itself (no extra forward pass):

- per-layer statistics, cheap enough for every step: the gradient norm of every block and
  of its sublayers (`grad_norm/block_07/attn`, `.../mlp`, `.../norm` for the block's norm and
  placement parameters), of the embeddings, of the embedding norm (`embed_norm`, Peri-LN's)
  and of the final norm; the RMS and max |value| of the residual stream entering each block
  and leaving the last one (`resid_rms/block_07`, `resid_max/out`); the largest and the mean
  attention logit q.k x scale of each layer, over the causal pairs, from the q and k that
  SDPA receives (`attn_logit_max/block_07`, `attn_logit_mean/...`; Wortsman et al.
  2309.14322's attention-logit growth); the RMS of every norm's input
  (`norm_in_rms/block_07/norm_a`; for a post-norm placement the sum x + F(x), the quantity
  of Xiong et al.'s Lemma 2); the output logits' normalizer log Z, its mean, max and mean
  square over the batch's tokens (`logits/logz_mean`, `..._max`, `..._sq_mean`), from the
  fused head without materializing the logits. They fill a ring buffer of the last
  `divergence.history` steps, written with a divergence event, and are logged every
  `diag.every` steps;
- every `diag.every` steps, also: the update-to-weight ratio ||dw|| / ||w|| of each block
  after the optimizer step (`update_ratio/block_07`), the attention entropy of each layer
  in nats, averaged over batch, heads and positions (`attn_entropy/block_07`; its collapse
  precedes divergence, 2303.06296), the largest |logit| of the output (`logits/max_abs`), the
  mean gain of every norm (`norm_gain/block_07/norm_a`), with `diag.from_init` the
  accumulated update ||theta_t - theta_0|| / ||theta_0|| of each block (`from_init/block_07`,
  DeepNet 2203.00555's measure; it keeps a copy of the initial weights), and with
  `diag.per_param=true` the gradient norm of every parameter tensor (`grad_norm/param/<name>`).

Gradient norms are taken after the backward pass and before clipping. Blocks are numbered
from 1, zero-padded (`block_01` ... `block_48`), as in the specification's `l`.

Every statistic is measured per member of the model (normbench/model/members.py): a pack's
M runs each get their own row, from their own slice of every tensor, as each would alone; a
run alone is the pack of one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import median
from typing import Any

import torch
from torch import nn

from normbench.model.gpt import GPT
from normbench.model.kinds import Norm
from normbench.model.loss import HEAD_STATS

LAYER_PREFIXES = (
    "grad_norm/",
    "resid_rms/",
    "resid_max/",
    "update_ratio/",
    "attn_entropy/",
    "attn_logit_max/",
    "norm_in_rms/",
    "from_init/",
)
# Measured on `diag.every` steps only (the rest is measured on every step that records).
FULL_ONLY = ("attn_entropy/", "grad_norm/param/", "logits/max_abs")
# The names of the fused head's statistics (model/loss.py HEAD_STATS), in its order.
HEAD_KEYS = ["logits/max_abs" if n == "logit_max_abs" else f"logits/{n}" for n in HEAD_STATS]
ATTENTION_CHUNK = 1 << 24  # logits per chunk when measuring attention (64 MB in float32)


def block_names(depth: int) -> list[str]:
    width = max(2, len(str(depth)))
    return [f"block_{layer:0{width}d}" for layer in range(1, depth + 1)]


def hook_streams(model: GPT, record: Callable[[int, str, torch.Tensor], None]) -> list[Any]:
    """Forward hooks on the residual stream: `record(layer, suffix, x)` with each tensor of
    the stream entering block `layer` (1 .. N) and leaving the last block (layer N + 1). A
    placement with several streams (ResiDual's pair) gives each with its suffix (the block's
    `streams`, '' for the main one). Returns the hooks' handles (`.remove()` them)."""
    blocks = list(model.blocks)
    streams = type(blocks[0]).streams

    def split(layer: int, stream: Any) -> None:
        tensors = stream if isinstance(stream, tuple) else (stream,)
        for suffix, x in zip(streams, tensors, strict=True):
            record(layer, suffix, x)

    handles = [
        block.register_forward_pre_hook(lambda m, args, layer=layer: split(layer, args[0]))
        for layer, block in enumerate(blocks, start=1)
    ]
    last = len(blocks) + 1
    handles.append(blocks[-1].register_forward_hook(lambda m, args, out: split(last, out)))
    return handles


@lru_cache(maxsize=8)
def _causal_mask(T: int, device: torch.device) -> torch.Tensor:
    """(T x T) additive mask: 0 where j <= i, -inf where key j follows query i (built once per
    length and device, not per layer and step)."""
    return torch.full((T, T), -math.inf, device=device).triu_(diagonal=1)


def attention_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    chunk: int = ATTENTION_CHUNK,
    *,
    exact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest and the mean of q_i . k_j x scale over the causal pairs j <= i, for q and
    k of shape (M, ..., T, head_dim) (the attention's (M, B, heads, T, head_dim)): one float32
    value per member each, (M,).

    The max takes the (T x T) products with the causal mask added in the same kernel
    (baddbmm), a chunk of batch rows at a time (one chunk at the default sizes): `exact`, in
    float32 outside any autocast; otherwise in q's own dtype (bf16 under bf16 autocast:
    within 2^-8 of the exact max, at a fraction of the cost of float32 products on a GPU).
    The mean is sum_i q_i . (sum_{j<=i} k_j) in float32, without the products."""
    M, (T, D) = q.shape[0], q.shape[-2:]
    BH = q.numel() // (T * D)  # every member's sequences and heads
    with torch.autocast(q.device.type, enabled=False):
        q32 = q.detach().float().reshape(BH, T, D)
        k32 = k.detach().float().reshape(BH, T, D)
        qp, kp = (
            (q32, k32) if exact else (q.detach().reshape(BH, T, D), k.detach().reshape(BH, T, D))
        )
        cached = not torch.compiler.is_compiling()  # in a compiled graph, a constant of it
        mask = (_causal_mask if cached else _causal_mask.__wrapped__)(T, q.device).to(qp.dtype)
        rows = max(1, chunk // (T * T))
        peaks = [  # the largest product of each sequence and head
            torch.baddbmm(mask, qp[start : start + rows], kp[start : start + rows].mT).amax((1, 2))
            for start in range(0, BH, rows)
        ]
        peak = (peaks[0] if len(peaks) == 1 else torch.cat(peaks)).view(M, -1).amax(1).float()
        total = torch.linalg.vecdot(q32, k32.cumsum(dim=1)).view(M, -1).sum(1)
    pairs = BH // M * T * (T + 1) // 2
    return peak * scale, total * scale / pairs


def norm_modules(model: GPT, names: list[str]) -> dict[str, Norm]:
    """Every norm of the model by its place: `block_07/norm_a`, `block_07/attn.qk_norm.q_norm`,
    `final` (the model's final norm), `embed/...` for a norm outside the blocks."""
    found = {}
    for path, module in model.named_modules():
        if not isinstance(module, Norm) or not any(True for _ in module.parameters()):
            continue  # the identity kind has nothing to measure
        parts = path.split(".")
        if parts[0] == "blocks":
            key = f"{names[int(parts[1])]}/{'.'.join(parts[2:])}"
        else:
            key = "final" if path == "norm_f" else f"embed/{path}"
        found[key] = module
    return found


def _gain(norm: Norm) -> torch.Tensor | None:
    """The mean of a norm's gain (g of ScaleNorm, the weight of the others), per member."""
    gain = getattr(norm, "weight", None)
    gain = gain if isinstance(gain, torch.Tensor) else getattr(norm, "g", None)
    return None if gain is None else gain.detach().float().reshape(gain.shape[0], -1).mean(1)


def _slices(tensors: list[torch.Tensor], members: int) -> list[torch.Tensor]:
    """Each member's slice of each tensor (member dimension first), tensor by tensor."""
    return [t[m] for t in tensors for m in range(members)]


def _accumulator(tensors: list[torch.Tensor]) -> torch.dtype:
    """float32, or float64 for float64 tensors (a norm never narrows them)."""
    return torch.float64 if tensors[0].dtype == torch.float64 else torch.float32


def _norms(tensors: list[torch.Tensor], members: int, order: float = 2) -> torch.Tensor:
    """The norm of each member's slice of each tensor, in float32, as (members, tensors): one
    fused (foreach) kernel over all the slices."""
    if not tensors:
        return torch.zeros(members, 0, dtype=torch.float32)
    norms = torch._foreach_norm(_slices(tensors, members), order, dtype=_accumulator(tensors))
    return torch.stack(norms).float().view(len(tensors), members).T


def _rms(tensors: list[torch.Tensor], members: int) -> torch.Tensor:
    """The RMS of each member's slice of each tensor, float32, (members, tensors): a foreach
    norm scaled by each 1/sqrt(numel) (numbers, not a tensor copied to the device)."""
    slices = _slices(tensors, members)
    norms = torch._foreach_norm(slices, 2, dtype=_accumulator(tensors))
    scaled = torch._foreach_mul(norms, [t.numel() ** -0.5 for t in slices])
    return torch.stack(scaled).float().view(len(tensors), members).T


@dataclass
class Values:
    """Named statistics that stay on the device until read, one row per member: `keys` name
    the columns of `values` ((members, K) float32); `add` appends columns ((members, k), or
    (k,) for one member), `rows` gives each member's by name once read on the host."""

    members: int = 1
    keys: list[str] = field(default_factory=list)
    parts: list[torch.Tensor] = field(default_factory=list)

    def add(self, keys: list[str], columns: torch.Tensor) -> None:
        self.keys += keys
        self.parts.append(columns.detach().float().reshape(self.members, len(keys)))

    @property
    def values(self) -> torch.Tensor:
        if not self.parts:
            return torch.zeros(self.members, 0, dtype=torch.float32)
        return torch.cat(self.parts, dim=1)

    def rows(self, host: list[list[float]]) -> list[dict[str, float]]:
        """Each member's values by name, from `values` read on the host."""
        return [dict(zip(self.keys, row, strict=True)) for row in host]


class Diagnostics:
    """Hooks and statistics for one model; the training loop calls, per step:

    `with diag.watch(step): forward_backward(...)`, then `diag.on_grads(norms)` with the
    gradients' norms (run/steps.py `Gradients`), then `diag.light()`: the per-layer
    statistics as one vector on the device; around the optimizer step `diag.before_update()`
    and `diag.after_update()` (the rest of the full row on `diag.every` steps, else empty).
    Nothing here reads a device value: the trainer reads the step's vectors at once and
    gives the row back to `push` (the ring buffer).
    """

    def __init__(
        self,
        model: GPT,
        *,
        every: int,
        per_param: bool,
        history: int,
        from_init: bool = False,
        attn_rows: int = 0,
    ) -> None:
        self.model, self.every, self.per_param = model, every, per_param
        self.attn_rows = attn_rows or None  # 0: every sequence of the batch
        self.from_init = from_init and every > 0
        self.initial: dict[str, list[torch.Tensor]] | None = None  # theta_0, per block
        self.members = model.members
        self.histories = [deque(maxlen=history) for _ in range(self.members)]  # per member
        self.names = block_names(len(model.blocks))
        self.params = list(model.parameters())  # the order of the gradients' norms
        self._group(model)
        self.norms = norm_modules(model, self.names)
        self.step, self.light_on, self.full, self.recording = 0, False, False, False
        self.scalars: dict[str, torch.Tensor] = {}  # (M,) statistics the hooks measured
        self.streams: list[tuple[str, torch.Tensor]] = []  # tensors whose norms are due
        self.inputs: list[tuple[str, torch.Tensor]] = []
        self.vectors = Values(self.members)
        self.before: dict[str, list[torch.Tensor]] = {}
        self.handles: list[Any] = []
        if every > 0 or history > 0:
            self.attach()

    def _group(self, model: GPT) -> None:
        """Parameter groups, by the modules' roles (a block's `attn` and `mlp` are its
        sublayers; anything else in a block is a norm or a placement parameter), as index
        vectors: parameter -> group, group -> block."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, block in zip(self.names, model.blocks, strict=True):
            sub = {id(p) for m in (block.attn, block.mlp) for p in m.parameters()}
            groups[f"{name}/attn"] = list(block.attn.parameters())
            groups[f"{name}/mlp"] = list(block.mlp.parameters())
            rest = [p for p in block.parameters() if id(p) not in sub]
            if rest:
                groups[f"{name}/norm"] = rest
        groups["embed"] = [model.wte.weight, model.wpe.weight]  # wte is also the LM head
        for key, module in (("embed_norm", model.norm_e), ("final_norm", model.norm_f)):
            if found := list(module.parameters()):  # Peri-LN's norm of the embedding output
                groups[key] = found
        self.groups = groups
        where = {id(p): i for i, ps in enumerate(groups.values()) for p in ps}
        # a parameter in no group (none today) counts in no group norm
        by_param = [where.get(id(p), len(groups)) for p in self.params]
        block_of = {i: self.names.index(k.split("/")[0]) for i, k in enumerate(groups) if "/" in k}
        device = self.params[0].device  # built once, before any step (not in a compiled one)
        self._by_param = torch.tensor(by_param, device=device)
        self._in_blocks = torch.tensor(list(block_of), device=device)
        self._block_of = torch.tensor(list(block_of.values()), device=device)
        self._group_keys = [f"grad_norm/{k}" for k in groups]
        self._block_keys = [f"grad_norm/{n}" for n in self.names]
        names = {id(p): n for n, p in model.named_parameters()}
        self._param_keys = [f"grad_norm/param/{names[id(p)]}" for p in self.params]

    def is_full(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    # --- during the forward and backward pass -----------------------------------------------

    @contextmanager
    def watch(self, step: int) -> Iterator[None]:
        """Turn the hooks on for this step's forward pass (and attention's, on full steps)."""
        self.step, self.full = step, self.is_full(step)
        self.light_on = self.full or self.histories[0].maxlen > 0
        self.scalars, self.streams, self.inputs = {}, [], []
        self.vectors = Values(self.members)
        if self.from_init and self.initial is None:  # theta_0: the weights before step 1
            self.initial = {k: [p.detach().clone() for p in v] for k, v in self.blocks().items()}
        self.recording, self.model.extremes = True, self.full
        try:
            yield
        finally:
            self.recording = False  # the hooks stay attached but record nothing
            self.model.extremes = False

    def attach(self) -> None:
        """Register the hooks once: on the residual stream (entering each block and leaving
        the last: hook_streams) and on each attention module. They record only inside
        `watch`, so that a compiled model sees the same hooks at every step."""
        self.handles += hook_streams(self.model, self._record_stream)
        for name, block in zip(self.names, self.model.blocks, strict=True):
            self.handles.append(block.attn.register_forward_pre_hook(self._entropy_hook(name)))
            self.handles.append(block.attn.scores.register_forward_hook(self._logit_hook(name)))
        for key, norm in self.norms.items():
            self.handles.append(norm.register_forward_pre_hook(self._norm_hook(key)))
        self.handles.append(self.model.head_stats.register_forward_hook(self._head_hook))

    def close(self) -> None:
        """Remove the hooks from the model."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _record_stream(self, layer: int, suffix: str, x: torch.Tensor) -> None:
        """Keep the stream entering block `layer` (`out`: leaving the last block) for its
        RMS and max |value|, measured for every layer at once after the forward pass."""
        if not (self.recording and self.light_on):
            return
        where = self.names[layer - 1] if layer <= len(self.names) else "out"
        self.streams.append((f"{where}/{suffix}" if suffix else where, x.detach()))

    def _logit_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if self.recording and self.light_on:
                q, k, scale = args
                rows = slice(self.attn_rows)  # exact on full steps, in q's dtype on the others
                peak, mean = attention_logits(q[:, rows], k[:, rows], scale, exact=self.full)
                self.scalars[f"attn_logit_max/{name}"] = peak
                self.scalars[f"attn_logit_mean/{name}"] = mean

        return hook

    def _norm_hook(self, key: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.recording and self.light_on:
                self.inputs.append((key, args[0].detach()))

        return hook

    def _head_hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        """The output logits' statistics (model/loss.py HEAD_STATS) of the training forward;
        the largest |logit| only on full steps (measured when the model's `extremes` is set)."""
        if self.recording and self.light_on:
            measured = len(HEAD_KEYS) if self.full else len(HEAD_KEYS) - 1
            self.vectors.add(HEAD_KEYS[:measured], args[0][..., :measured])

    def _entropy_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not (self.recording and self.full):
                return
            p = module.attention_probs(args[0].detach())  # (M, B, heads, T, T)
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # 0 log 0 = 0
            self.scalars[f"attn_entropy/{name}"] = entropy.reshape(self.members, -1).mean(1)

        return hook

    def on_grads(self, norms: torch.Tensor) -> None:
        """After the backward pass, before clipping: the gradient norms per block and
        sublayer from each parameter's (`norms`, in `model.parameters()` order, (parameters,
        members) or (parameters,) for one member): two index-adds, whatever the depth."""
        if not self.light_on:
            return
        norms = norms.reshape(len(self.params), self.members)
        by_param, in_blocks, block_of = self._by_param, self._in_blocks, self._block_of
        groups = torch.zeros(
            len(self.groups) + 1, self.members, dtype=torch.float32, device=norms.device
        )
        norms = norms.float()
        groups.index_add_(0, by_param, norms.square())
        blocks = torch.zeros(
            len(self.names), self.members, dtype=torch.float32, device=norms.device
        )
        blocks.index_add_(0, block_of, groups[in_blocks])
        self.vectors.add(self._group_keys, groups[:-1].sqrt().T)
        self.vectors.add(self._block_keys, blocks.sqrt().T)
        if self.full and self.per_param:
            self.vectors.add(self._param_keys, norms.T)

    def light(self) -> Values:
        """This step's statistics measured in the forward and backward passes, a row per
        member on the device (the stream's and the norm inputs' norms in two fused kernels
        each)."""
        M = self.members
        out = Values(M)
        if not self.light_on:
            return out
        if self.scalars:
            out.add(list(self.scalars), torch.stack(list(self.scalars.values()), dim=1))
        if self.streams:
            keys, xs = zip(*self.streams, strict=True)
            out.add([f"resid_rms/{k}" for k in keys], _rms(list(xs), M))
            out.add([f"resid_max/{k}" for k in keys], _norms(list(xs), M, float("inf")))
        if self.inputs:
            keys, xs = zip(*self.inputs, strict=True)
            out.add([f"norm_in_rms/{k}" for k in keys], _rms(list(xs), M))
        out.add(self.vectors.keys, self.vectors.values)
        self.streams, self.inputs = [], []  # no longer held
        return out

    # --- after the backward pass --------------------------------------------------------------

    def push(self, row: dict[str, Any], member: int = 0) -> None:
        """A step's per-layer statistics of one member, read on the host, into its ring
        buffer."""
        if self.histories[member].maxlen:
            self.histories[member].append(row)

    def state_dict(self, member: int = 0) -> dict[str, Any]:
        """One member's state, as a run alone's: its ring buffer and its initial weights
        (without the member dimension)."""
        initial = self.initial
        if initial is not None:
            initial = {k: [t[member] for t in ts] for k, ts in initial.items()}
        return {"history": list(self.histories[member]), "initial": initial}

    def load_state_dict(self, state: dict[str, Any], member: int = 0) -> None:
        """One member's state (`state_dict`); the initial weights of every member are set
        once each member's is loaded."""
        self.histories[member].clear()
        self.histories[member].extend(state["history"])
        if not self.from_init:
            return
        if state.get("initial") is None:  # from before diag.from_init: measured from here on
            self.initial = None
            return
        if self.initial is None:
            self.initial = {k: [p.detach().clone() for p in v] for k, v in self.blocks().items()}
        for k, ts in state["initial"].items():
            for mine, saved in zip(self.initial[k], ts, strict=True):
                mine[member].copy_(saved.reshape(mine.shape[1:]))

    @torch.no_grad()
    def keep(self, members: list[int]) -> None:
        """Only these members from now on (a pack that dropped its ended runs)."""
        self.histories = [self.histories[m] for m in members]
        self.members = len(members)
        if self.initial is not None:
            index = torch.tensor(members, device=self.params[0].device)
            self.initial = {
                k: [t.index_select(0, index) for t in ts] for k, ts in self.initial.items()
            }

    def recent(self, member: int = 0) -> list[dict[str, Any]]:
        """A member's ring buffer: its per-layer statistics of the last `divergence.history`
        steps."""
        return list(self.histories[member])

    @torch.no_grad()
    def before_update(self) -> None:
        """On a full step, keep the weights of each block to measure the update."""
        self.before = {}
        if self.full:
            for name, params in self.update_groups().items():
                self.before[name] = [p.detach().clone() for p in params]

    def blocks(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each block, by its name."""
        return {
            name: list(block.parameters())
            for name, block in zip(self.names, self.model.blocks, strict=True)
        }

    def update_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.blocks() | {"embed": self.groups["embed"]}

    def _relative(self, now: list[torch.Tensor], then: list[torch.Tensor]) -> torch.Tensor:
        """||now - then|| / ||then|| over a group of tensors, per member, (M,)."""
        M = self.members
        delta = _norms(torch._foreach_sub([p.detach() for p in now], then), M)
        return delta.square().sum(1).sqrt() / _norms(then, M).square().sum(1).sqrt()

    @torch.no_grad()
    def after_update(self) -> Values:
        """On a full step, the rest of the full row: the update ratios, the distance from
        the initial weights, the norms' gains (empty on other steps)."""
        extra = Values(self.members)
        if not self.full:
            return extra
        ratios = [self._relative(ps, self.before[n]) for n, ps in self.update_groups().items()]
        extra.add([f"update_ratio/{n}" for n in self.update_groups()], torch.stack(ratios, 1))
        if self.initial is not None:
            blocks = self.blocks()
            moved = [self._relative(ps, self.initial[n]) for n, ps in blocks.items()]
            extra.add([f"from_init/{n}" for n in blocks], torch.stack(moved, 1))
        gains = {}
        for key, norm in self.norms.items():
            if (gain := _gain(norm)) is not None:
                gains[key] = gain
        if gains:
            extra.add([f"norm_gain/{k}" for k in gains], torch.stack(list(gains.values()), 1))
        self.before = {}
        return extra


def blame(history: list[dict[str, Any]], top: int = 3) -> dict[str, Any]:
    """Which layer went first: from the ring buffer (oldest first, the event's step last).

    `first_nonfinite`: the first per-layer statistic to become NaN or infinite (earliest
    step, then forward order). `largest_growth`: the per-layer statistics whose value at the
    last step is the largest multiple of their median over the earlier steps.
    """
    out: dict[str, Any] = {"first_nonfinite": None, "largest_growth": []}
    if not history:
        return out
    for row in history:
        for key, value in row.items():
            if key.startswith(LAYER_PREFIXES) and value is not None and not math.isfinite(value):
                out["first_nonfinite"] = {"step": row["step"], "key": key}
                break
        if out["first_nonfinite"]:
            break
    last, earlier = history[-1], history[:-1]
    growth = []
    for key, value in last.items():
        if not key.startswith(LAYER_PREFIXES) or value is None or not math.isfinite(value):
            continue
        past = [r[key] for r in earlier if r.get(key) is not None and math.isfinite(r[key])]
        if past and median(past) > 0:
            growth.append({"key": key, "ratio": value / median(past)})
    growth.sort(key=lambda g: -g["ratio"])
    out["largest_growth"] = growth[:top]
    return out
