"""A pack's gradients per member (run/pack/grads.py) against torch's clip_grad_norm_ on each
run alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normbench.run.pack.grads import MemberGradients


def test_each_member_is_clipped_as_its_run_alone():
    g = torch.Generator().manual_seed(0)
    M, shapes = 3, ((6, 4), (4,), ())
    pack = [nn.Parameter(torch.zeros(M, *s, dtype=torch.float64)) for s in shapes]
    for p in pack:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * 3
    alone = [[nn.Parameter(p[m].detach().clone()) for p in pack] for m in range(M)]
    for m, params in enumerate(alone):
        for p, q in zip(params, pack, strict=True):
            p.grad = q.grad[m].clone()
    clips = [1.0, math.inf, 0.5]  # member 1 unclipped
    grads = MemberGradients(pack)
    totals = grads.totals(grads.norms())
    grads.clip_(totals, torch.tensor(clips, dtype=torch.float64))
    for m, params in enumerate(alone):
        total = torch.nn.utils.clip_grad_norm_(params, clips[m])  # the norm before clipping
        assert totals[m].item() == pytest.approx(total.item(), rel=1e-12)
        for p, q in zip(params, pack, strict=True):
            assert torch.allclose(p.grad, q.grad[m], rtol=1e-12, atol=0), m
    assert grads.norms()[:, 1].tolist() == pytest.approx(  # member 1 as it was
        [torch.linalg.vector_norm(p.grad[1]).item() for p in pack]
    )
