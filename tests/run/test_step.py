"""The training step never waits for the device: one host read per step whatever the depth
and the head's chunks; a non-finite step skips its update on the device; the stop detectors
decide one step late. Real Trainer, real tokenizer-sized vocabulary, tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from normbench.run.trainer import Trainer

from support import random_trainer

# What reads a tensor's value on the host (on a GPU: waits for it).
READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if name in READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def trainer(*overrides: str) -> Trainer:
    return random_trainer("train.max_steps=50", *overrides)


@pytest.mark.parametrize("depth,chunk", [(2, 1024), (2, 16), (6, 16)])
def test_one_host_read_per_step_whatever_the_depth_and_the_head_chunks(depth, chunk):
    """4 x 32 tokens in chunks of 16 are 8 chunks; full diagnostics every other step, the
    ring buffer every step: each step reads its predecessor's values once, and nothing else."""
    t = trainer(f"depth={depth}", f"model.head_chunk={chunk}", "diag.every=2")
    assert t.step(1) is None  # nothing pending yet
    for step in range(2, 6):
        with HostReads() as reads:
            result = t.step(step)
        assert reads.calls == ["tolist"], (step, reads.calls)
        assert result.step == step - 1 and math.isfinite(result.loss)
        full = result.diag_row is not None and "update_ratio/block_01" in result.diag_row
        assert full == (result.step % 2 == 0) and "resid_rms/block_01" in result.stats
    assert t.flush().step == 5 and t.flush() is None


def _state(t: Trainer) -> dict[str, torch.Tensor]:
    state = {f"w/{n}": p.detach().clone() for n, p in t.model.named_parameters()}
    opt = t.optimizer  # each member's AdamW (run/pack/optim.py)
    for i in range(len(opt.params)):
        state[f"opt/{i}/exp_avg"] = opt.exp_avg[i].clone()
        state[f"opt/{i}/exp_avg_sq"] = opt.exp_avg_sq[i].clone()
    state["opt/steps"] = opt.steps.clone()
    return state


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_step_leaves_weights_and_optimizer_bit_identical():
    """A NaN injected into one forward pass: its update is skipped on the device (fused
    AdamW's gate), and so is every update queued after it; the run stops at that step."""
    t = trainer("divergence.action=continue")
    for step in (1, 2):
        t.step(step)
    t.flush()
    before = _state(t)
    poison = t.model.blocks[0].register_forward_hook(lambda m, a, out: out * math.nan)
    t.step(3)
    poison.remove()
    assert _same(before, _state(t))  # step 3's update was queued and skipped
    launched = t._launch(4)  # a finite step queued before the host has read step 3
    t._update(launched)
    assert _same(before, _state(t))  # the gate stays shut
    result = t.flush()
    assert result.step == 3 and result.stopped and result.lr is None
    assert [e.kind for e in result.events] == ["nonfinite"]


def test_a_stop_detector_decides_one_step_late():
    """A hair-trigger spike detector: the run ends after the update of the step it fired
    at; the next step's forward pass ran but its update is never queued."""
    t = trainer(
        "divergence.action=stop",
        "divergence.spike.rel_margin=0.0001",
        "divergence.spike.patience=1",
        "divergence.spike.ema=0",
    )
    step, result = 1, None
    while result is None or not result.stopped:
        assert step < 40, "the hair trigger never fired"
        after = _state(t)
        result = t.step(step)
        step += 1
    assert result.events[0].kind == "spike" and result.lr is not None
    # the weights are those after the event's step (result.step = step - 2); the step
    # launched with it (step - 1) changed nothing
    assert _same(after, _state(t)) and t.pending is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_step_never_synchronizes():
    """On a GPU, under torch.cuda.set_sync_debug_mode("error"): every step after the first
    queues its work and reads its predecessor's values from pinned memory, with no
    synchronizing call (an implicit one raises)."""
    t = trainer("device=cuda", "precision=auto", "diag.every=2")
    t.step(1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [t.step(step) for step in range(2, 7)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [r.step for r in results] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r.loss) and r.seconds > 0 for r in results)
