"""AdamW for a pack (run/pack/optim.py): each member bit-identical to torch's AdamW for that
run alone (run/optim.py's groups, torch's fused kernel with its found_inf gate), a member's
gate touching no other, and a member's state in torch's layout, loadable both ways."""

from __future__ import annotations

import torch
from torch import nn

from normbench.run.config.schema import WeightDecayMode
from normbench.run.optim import build_optimizer
from normbench.run.pack.optim import MemberAdamW, MemberSettings

from support.models import optim_config

CPU = torch.device("cpu")


def lr_on_device(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's lr a float32 tensor on the device, as a pack's."""
    for group in opt.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def step_unless(opt: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """torch's fused AdamW step, gated on the device by `found_inf` (GradScaler's gate)."""
    opt.found_inf = skip
    try:
        opt.step()
    finally:
        del opt.found_inf


OPTIMS = [
    optim_config(lr=1e-2, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1),
    optim_config(lr=3e-3, betas=[0.8, 0.99], eps=1e-6, weight_decay=0.0),
    optim_config(lr=1e-1, betas=[0.9, 0.98], eps=1e-9, weight_decay=1e-4,
                 weight_decay_mode=WeightDecayMode.independent),
]  # fmt: skip


class Tiny(nn.Module):
    """A matrix (decayed), a vector and a scalar (not)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b, self.s = nn.Parameter(w), nn.Parameter(b), nn.Parameter(s)


def packed_and_alone(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    M = len(OPTIMS)
    w, b, s = (
        torch.randn(M, *shape, generator=g, dtype=torch.float64) for shape in ((5, 3), (3,), ())
    )
    pack = [nn.Parameter(t.clone()) for t in (w, b, s)]
    alone = [Tiny(w[m].clone(), b[m].clone(), s[m].clone()) for m in range(M)]
    opts = [build_optimizer(model, o, CPU) for model, o in zip(alone, OPTIMS, strict=True)]
    for opt in opts:
        lr_on_device(opt, CPU)
    packed = MemberAdamW(pack, [MemberSettings.of(o) for o in OPTIMS])
    return pack, alone, opts, packed, g


def test_each_member_is_bit_identical_to_its_run_alone_and_a_gate_touches_no_other():
    pack, alone, opts, packed, g = packed_and_alone()
    for step in range(1, 6):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in pack]
        lrs = torch.tensor([o.lr * step / 5 for o in OPTIMS])  # a schedule per member
        skip = torch.tensor([0.0, 1.0 if step == 3 else 0.0, 0.0])  # member 1 gated once
        for p, grad in zip(pack, grads, strict=True):
            p.grad = grad.clone()
        packed.step(lrs, skip)
        for m, (model, opt) in enumerate(zip(alone, opts, strict=True)):
            for p, grad in zip(model.parameters(), grads, strict=True):
                p.grad = grad[m].clone()
            for group in opt.param_groups:
                group["lr"].fill_(lrs[m])
            step_unless(opt, skip[m])
    for m, model in enumerate(alone):
        for p, q in zip(pack, model.parameters(), strict=True):
            assert torch.equal(p[m], q), m  # bit for bit
        assert packed.steps[m].tolist() == ([4.0] * 3 if m == 1 else [5.0] * 3)


def test_a_members_state_loads_into_its_runs_own_optimizer():
    pack, alone, opts, packed, g = packed_and_alone(1)
    for p in pack:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
    packed.step(torch.tensor([o.lr for o in OPTIMS]), torch.zeros(3))
    for m, (model, opt) in enumerate(zip(alone, opts, strict=True)):
        with torch.no_grad():
            for p, q in zip(pack, model.parameters(), strict=True):
                q.copy_(p[m])
        opt.load_state_dict(packed.member_state_dict(m))  # groups of its own settings
        lr_on_device(opt, CPU)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in pack]
    for p, grad in zip(pack, grads, strict=True):
        p.grad = grad.clone()
    packed.step(torch.tensor([o.lr for o in OPTIMS]), torch.zeros(3))
    for m, (model, opt) in enumerate(zip(alone, opts, strict=True)):
        for p, grad in zip(model.parameters(), grads, strict=True):
            p.grad = grad[m].clone()
        step_unless(opt, torch.zeros(()))
        for p, q in zip(pack, model.parameters(), strict=True):
            assert torch.equal(p[m], q), m


def test_a_members_state_round_trips_and_the_unfused_kernels_match_torchs():
    """member_state_dict -> load_member_state_dict restores a member exactly; with
    optim.fused=false each member takes torch's single-tensor AdamW step, gated on the host."""
    pack, alone, _, packed, g = packed_and_alone(2)
    for p in pack:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
    packed.step(torch.tensor([o.lr for o in OPTIMS]), torch.zeros(3))
    saved = [packed.member_state_dict(m) for m in range(3)]
    fresh = MemberAdamW(pack, [MemberSettings.of(o) for o in OPTIMS], fused=False)
    for m, state in enumerate(saved):
        fresh.load_member_state_dict(m, state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.exp_avg, packed.exp_avg, strict=True))
    assert torch.equal(fresh.steps, packed.steps)
    unfused = [
        torch.optim.AdamW(
            [{"params": [q for q in model.parameters() if q.dim() >= 2]},
             {"params": [q for q in model.parameters() if q.dim() < 2], "weight_decay": 0.0}],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=MemberSettings.of(o).weight_decay,
            foreach=False,
        )
        for model, o in zip(alone, OPTIMS, strict=True)
    ]  # fmt: skip
    for m, (model, opt) in enumerate(zip(alone, unfused, strict=True)):
        with torch.no_grad():
            for p, q in zip(pack, model.parameters(), strict=True):
                q.copy_(p[m])
        opt.load_state_dict({**saved[m], "param_groups": opt.state_dict()["param_groups"]})
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in pack]
    for p, grad in zip(pack, grads, strict=True):
        p.grad = grad.clone()
    fresh.step(
        torch.tensor([o.lr for o in OPTIMS], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0])
    )
    for m, (model, opt) in enumerate(zip(alone, unfused, strict=True)):
        before = [q.detach().clone() for q in model.parameters()]
        if m != 1:  # member 1 gated
            for q, grad in zip(model.parameters(), grads, strict=True):
                q.grad = grad[m].clone()
            opt.step()
        for p, q, b in zip(pack, model.parameters(), before, strict=True):
            assert torch.equal(p[m], q), m
            assert (m == 1) == torch.equal(q, b), m
