"""The whole step compiles: the model with its loss and statistics' hooks, the statistics
after the backward pass and the gated update, without a graph break in normbench's code and
without recompiling after the first full-diagnostics step. Traced by Dynamo with the
`aot_eager` backend (forward and backward graphs, no code generation: seconds on a CPU)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from normbench.run.trainer import Trainer

from support import random_trainer


def trainer(*overrides: str) -> Trainer:
    return random_trainer(*overrides)


def normbench_breaks(explained) -> list[str]:  # noqa: ANN001
    """Where the graph breaks are, and why."""
    return [
        f"{r.user_stack[-1].filename}:{r.user_stack[-1].lineno}: {r.reason[:300]}"
        for r in explained.break_reasons
    ]


@pytest.mark.parametrize("placement", ["pre", "post", "resi_dual"])
def test_no_graph_break_in_normbench_code(placement):
    torch._dynamo.reset()
    t = trainer(f"norm={placement}", "diag.every=2", "optim.z_loss=1e-4")
    x, y = t._batch()  # (members, B, T): a run alone's pack of one
    for step in (1, 2):  # a light step and a full one
        with t.diag.watch(step):
            model = torch._dynamo.explain(t.run)(x, y, z_loss=1e-4)
            _, loss = t.run(x, y, z_loss=1e-4)
        loss.sum().backward()
        assert model.graph_break_count == 0, normbench_breaks(model)
        measured = torch._dynamo.explain(t._measure)(loss.detach(), t.diag)
        assert measured.graph_break_count == 0, normbench_breaks(measured)
        values, ok = t._measure(loss.detach(), t.diag)
        update = torch._dynamo.explain(t._apply)(ok, t.diag, t.lrs[step - 1])
        # Every break of the update is in torch's optimizer code (its fused AdamW kernel,
        # one per member and group), none in normbench's.
        assert all("torch/optim" in r.user_stack[-1].filename for r in update.break_reasons), [
            f"{r.user_stack[-1].filename}: {r.reason[:200]}" for r in update.break_reasons
        ]


def test_compiled_step_matches_eager_and_compiles_once_per_kind_of_step():
    """The same functions compiled: the same losses as eager, and no new graph after the
    first full-diagnostics step (light steps and full steps each have their graphs)."""
    torch._dynamo.reset()
    eager, compiled = trainer("diag.every=2"), trainer("diag.every=2")
    compiled.run = torch.compile(compiled.run, backend="aot_eager")
    compiled.measure = torch.compile(compiled._measure, backend="aot_eager", fullgraph=True)
    compiled.apply = torch.compile(compiled._apply, backend="aot_eager")
    losses: dict[str, list[float]] = {"eager": [], "compiled": []}
    graphs = []
    for step in range(1, 7):
        for name, t in (("eager", eager), ("compiled", compiled)):
            if (result := t.step(step)) is not None:
                losses[name].append(result.loss)
        graphs.append(counters["stats"]["unique_graphs"])
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
    assert graphs[1] > 0 and graphs[-1] == graphs[1], graphs  # nothing new after step 2
