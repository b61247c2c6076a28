"""The member dimension: the model's parameters hold M members along a leading dimension.

A pack trains M runs of one architecture together (packed sweeps, HFTA 2102.02344: models
fused horizontally). Every parameter and buffer of the GPT has shape (M, *shape), where
`shape` is its shape in a model of one run, and the residual stream is (M, B, T, d): member
m's activations depend only on member m's parameters and tokens. A run alone is a pack of
one (M = 1): the same modules, the same code.

The modules here are the layers with parameters that the model composes:
- `Linear`: y = x W^T + b per member, one batched product (bmm) for every member;
- `Embedding`: a lookup per member, one gather over the members' tables laid end to end;
- `Gain`: g ⊙ x per member, a placement's learned scale (ReZero's a, Admin's omega);
and `MemberModule`, their base (and the norms' in normbench/model/kinds.py): the parameters
seen from the input's rank (`broadcast`), and a state dict in a single run's layout when
there is one member, so that a run's checkpoint has the shapes of a plain GPT.

A pack is made by stacking models built alone (`stack`): each member is initialized as its
run would be on its own, and `member_state` gives member m's weights back in a run's layout.
Placements never see the member dimension: they add, scale and call their sublayers.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def broadcast(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Parameter `p` of shape (M, *shape) viewed as (M, 1, ..., 1, *shape) with x's rank, so
    that it multiplies or adds to x (M, ..., *shape) member by member."""
    fill = x.dim() - p.dim()
    return p.view(p.shape[0], *[1] * fill, *p.shape[1:])


class MemberModule(nn.Module):
    """A module whose own parameters and buffers carry the member dimension first. With one
    member its state dict has a single run's shapes (the leading 1 dropped) and loads from
    either layout; with several, each entry is (M, ...)."""

    @property
    def members(self) -> int:
        own = [*self._parameters.values(), *self._buffers.values()]
        return next(t.shape[0] for t in own if t is not None)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        own = [n for n, t in [*self._parameters.items(), *self._buffers.items()] if t is not None]
        if own and self.members == 1:
            for name in own:
                if prefix + name in destination:
                    destination[prefix + name] = destination[prefix + name][0]

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for name, t in [*self._parameters.items(), *self._buffers.items()]:
            key = prefix + name
            if t is not None and key in state_dict and state_dict[key].dim() == t.dim() - 1:
                state_dict[key] = state_dict[key].unsqueeze(0)  # a single run's layout
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Linear(MemberModule):
    """y = x W^T + b for each member: W (M, out, in), b (M, out); x (M, ..., in), or any
    shape (..., in) with one member."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(1, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(1, out_features)) if bias else None
        # nn.Linear's initialization (the model's own replaces it), so that building a model
        # draws the random numbers a plain GPT's construction draws
        nn.init.kaiming_uniform_(self.weight[0], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(self.bias[0], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        M = self.weight.shape[0]
        if M == 1:  # one member: torch's linear (addmm), faster than a batch of one on a CPU
            bias = None if self.bias is None else self.bias.squeeze(0)  # views both ways
            return F.linear(x, self.weight.squeeze(0), bias)
        if x.shape[0] != M:
            raise ValueError(f"input for {x.shape[0]} members; the layer has {M}")
        flat = x.reshape(M, -1, self.in_features)
        if self.bias is None:
            y = torch.bmm(flat, self.weight.mT)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.mT)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


class Embedding(MemberModule):
    """Row `i` of member m's table for each index of member m: the table (M, V, d), the
    indices (M, ...); one gather over the tables laid end to end."""

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.num = num
        self.weight = nn.Parameter(torch.empty(1, num, dim))
        nn.init.normal_(self.weight)  # nn.Embedding's (the model's own init replaces it)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        M = self.weight.shape[0]
        start = torch.arange(0, M * self.num, self.num, device=idx.device)
        return F.embedding(idx + start.view(M, *[1] * (idx.dim() - 1)), self.weight.flatten(0, 1))


class Gain(MemberModule):
    """g ⊙ x: a learned scale of each member, a scalar (shape ()) or a vector (d,) over the
    last dimension of x, starting at `init`."""

    def __init__(self, shape: tuple[int, ...], init: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, *shape), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return broadcast(self.weight, x) * x


def shapes_alone(model: nn.Module) -> dict[int, torch.Size]:
    """Each parameter's shape in a run alone (by id): without the member dimension where a
    member module holds it, as it is elsewhere."""
    owned = {
        id(t)
        for m in model.modules()
        if isinstance(m, MemberModule)
        for t in m._parameters.values()
        if t is not None
    }
    return {id(p): p.shape[1:] if id(p) in owned else p.shape for p in model.parameters()}


def members(model: nn.Module) -> int:
    """The number of members of a model built from these modules."""
    return next(m.members for m in model.modules() if isinstance(m, MemberModule) and m._parameters)


@torch.no_grad()
def stack(models: list[nn.Module]) -> nn.Module:
    """One model whose member m is models[m]: a copy of the first whose every parameter and
    buffer is the members' concatenated along the member dimension (each model has one
    member, and all have one architecture). Tied parameters stay tied."""
    if any(members(m) != 1 for m in models):
        raise ValueError("stack models of one member each")
    packed = copy.deepcopy(models[0])
    sources = [dict(m.named_modules()) for m in models]
    for path, module in packed.named_modules():
        if not isinstance(module, MemberModule):
            continue
        for kind in ("_parameters", "_buffers"):
            for name, own in getattr(module, kind).items():
                if own is None:
                    continue
                parts = [getattr(src[path], kind)[name] for src in sources]
                if any(p.shape != own.shape for p in parts):
                    raise ValueError(f"{path}.{name}: the models differ in architecture")
                value = torch.cat([p.detach() for p in parts])
                getattr(module, kind)[name] = (
                    nn.Parameter(value, requires_grad=own.requires_grad)
                    if kind == "_parameters"
                    else value
                )
    _retie(models[0], packed)
    return packed


def _retie(source: nn.Module, packed: nn.Module) -> None:
    """Where the source shares one parameter between modules (the LM head and the token
    embedding), make the packed model share its stacked one likewise."""
    first: dict[int, tuple[nn.Module, str]] = {}
    packed_modules = dict(packed.named_modules())
    for path, module in source.named_modules():
        for name, p in module._parameters.items():
            if p is None:
                continue
            if id(p) in first:
                owner, owner_name = first[id(p)]
                packed_modules[path]._parameters[name] = owner._parameters[owner_name]
            else:
                first[id(p)] = (packed_modules[path], name)


def member_state(model: nn.Module, m: int) -> dict[str, torch.Tensor]:
    """Member m's weights and buffers in a single run's layout (its `state_dict()` had it
    trained alone)."""
    state = model.state_dict()
    if members(model) == 1:
        return state
    return {k: v[m] for k, v in state.items()}
