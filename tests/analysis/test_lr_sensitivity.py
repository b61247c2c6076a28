"""LR sensitivity (normbench/analysis/sensitivity.py): the statistics on grids built to a
known answer (diverged runs counted at l0, collapsed ones at their loss, l* recomputed on each
resample, the largest stable lr), the comparisons between cells, and a tiny end-to-end study:
`normbench train -m experiment=lr_sensitivity` then `normbench compare`, with its tables,
page section, figures and W&B table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from normbench.analysis import sensitivity as lrs
from normbench.analysis.records import Run
from normbench.analysis.table import choose_axes

from support import TINY, run_cli, text_data
from support.wandb_records import offline_runs

GRID = [1e-3, 1e-2, 1e-1]


def run(
    loss: float | None,
    lr: float,
    seed: int,
    *,
    status: str = "completed",
    l0: float | None = 8.0,
    **cfg,
) -> Run:
    config = {
        "norm.name": cfg.get("norm", "pre"),
        "depth": cfg.get("depth", 2),
        "optim.lr": lr,
        "optim.warmup_steps": cfg.get("warmup", 0),
        "seed": seed,
        "data.vocab_limit": 4096,
    }
    metrics = [] if l0 is None else [{"step": 1, "train/loss": l0}]
    summary = {"status": status, "val_loss": loss}
    return Run(
        dir=Path(f"/nowhere/{lr}-{seed}"),
        config=config,
        summary=summary,
        metrics=metrics,
        events=[],
    )


def grid_runs(losses: dict[float, float | None], spread: float = 0.01, **cfg) -> list[Run]:
    """Three seeds; seed s adds s * spread to each loss; None: the run diverged."""
    return [
        run(
            None if v is None else v + s * spread,
            lr,
            s,
            status="completed" if v is not None else "diverged",
            **cfg,
        )
        for lr, v in losses.items()
        for s in range(3)
    ]


def cells_of(runs: list[Run]) -> list[lrs.Cell]:
    return lrs.cells(runs, choose_axes(runs, None, None, None))


def test_sensitivity_of_a_known_grid():
    """Curve (5.01, 4.01, l0 = 8.0): sensitivity = mean - min = 17.02/3 - 4.01; a resample of
    seeds shifts both trained points by the same m in [0, 0.02], so the interval is
    17/3 - 4 - m/3 over that range."""
    (cell,) = cells_of(grid_runs({1e-3: 5.0, 1e-2: 4.0, 1e-1: None}))
    assert (cell.l0, cell.l0_from) == (8.0, "step 1")
    assert cell.curve == pytest.approx({1e-3: 5.01, 1e-2: 4.01, 1e-1: 8.0})
    assert (cell.l_star, cell.best_lr) == (pytest.approx(4.01), 1e-2)
    s = cell.sensitivity
    assert s.estimate == pytest.approx(17 / 3 - 4 - 0.01 / 3)
    assert (s.lo, s.hi) == (pytest.approx(17 / 3 - 4 - 0.02 / 3), pytest.approx(17 / 3 - 4))
    assert "coverage ≤ 75%" in s.text()  # three seeds, said so
    assert cell.stable.estimate == 1e-2 and (cell.stable.lo, cell.stable.hi) == (1e-2, 1e-2)


def test_losses_above_l0_count_at_l0_and_collapsed_runs_at_their_loss():
    runs = grid_runs({1e-3: 9.5, 1e-2: 4.0, 1e-1: 5.3})
    for r in runs:
        if r.config["optim.lr"] == 1e-1:
            r.summary["status"] = "collapsed"
    (cell,) = cells_of(runs)
    assert cell.curve[1e-3] == 8.0  # min(9.5 + ..., l0)
    assert cell.curve[1e-1] == pytest.approx(5.31)  # measured, not l0
    assert cell.stable.estimate == 1e-2  # collapsed at 0.1: not stable there


def test_largest_stable_lr_needs_every_seed_and_the_margin():
    runs = grid_runs({1e-3: 4.05, 1e-2: 4.0, 1e-1: 4.2})
    (cell,) = cells_of(runs)
    assert cell.stable.estimate == 1e-2  # 0.1 is 0.2 nats above l*, beyond the 0.1 margin
    runs = grid_runs({1e-3: 4.0, 1e-2: 4.05, 1e-1: 4.07})
    runs[-1].summary.update(status="diverged", val_loss=None)  # one seed of 0.1 diverged
    (cell,) = cells_of(runs)
    assert cell.stable.estimate == 1e-2
    assert cell.stable.lo == 1e-2 and cell.stable.hi == 1e-1  # resamples without that seed


def test_l0_falls_back_to_the_uniform_loss():
    runs = [run(4.0, lr, s, l0=None) for lr in GRID for s in range(2)]
    (cell,) = cells_of(runs)
    assert cell.l0 == pytest.approx(math.log(4096)) and cell.l0_from == "ln(vocab)"


def test_differences_are_judged_by_their_interval():
    pre = grid_runs({1e-3: 4.1, 1e-2: 4.0, 1e-1: 4.05}, norm="pre")
    post = grid_runs({1e-3: 4.1, 1e-2: 4.0, 1e-1: None}, norm="post")
    (d,) = lrs.differences(cells_of(pre + post))
    assert (d["key"], d["value"], d["reference"]) == ("norm", "post", "pre")
    assert d["diff"].lo > 0 and d["reads"] == "higher"
    # seeds that disagree: post diverges at 0.1 for one seed only, and the interval spans 0
    noisy = grid_runs({1e-3: 4.1, 1e-2: 4.0, 1e-1: 4.05}, norm="post", spread=0.3)
    noisy[-1].summary.update(status="diverged", val_loss=None)
    (d,) = lrs.differences(cells_of(pre + noisy))
    assert d["diff"].estimate > 0 and d["reads"] == "not resolved (underpowered)"


def test_a_cell_where_no_run_trained_is_flagged_not_compared():
    """Every lr collapsed at the unigram level: l* is that level and the sensitivity small,
    which says only that every lr failed alike."""
    pre = grid_runs({1e-3: 4.1, 1e-2: 4.0, 1e-1: None}, norm="pre")
    post = grid_runs({1e-3: 5.33, 1e-2: 5.32, 1e-1: 5.34}, norm="post", spread=0.0)
    for r in post:
        r.summary["status"] = "collapsed"
    found = cells_of(pre + post)
    stuck = next(c for c in found if c.values["norm"] == "post")
    assert not stuck.trained and stuck.sensitivity.estimate < 0.02
    assert "no run trained" in lrs.sensitivity_text(stuck)
    (d,) = lrs.differences(found)
    assert d["reads"] == "not comparable (a cell where no run trained)"


def test_cells_with_different_grids_are_not_compared():
    pre = grid_runs({1e-3: 4.1, 1e-2: 4.0, 1e-1: 4.05}, norm="pre")
    post = grid_runs({1e-3: 4.1, 1e-2: 4.0}, norm="post")
    found = cells_of(pre + post)
    assert lrs.differences(found) == []
    assert lrs.grid_text(found[0], lrs.sweep_grid(found)) == "2 of 3 (missing 0.1)"


def test_an_lr_sweep_needs_three_learning_rates():
    assert not lrs.is_lr_sweep([run(4.0, lr, 0) for lr in GRID[:2]])
    assert lrs.is_lr_sweep([run(4.0, lr, 0) for lr in GRID])


def test_tiny_lr_sensitivity_study_end_to_end(tmp_path, cli_env, text_files):
    """The preset with a tiny model, 2 placements x 3 learning rates x 2 seeds; compare
    recognizes the sweep and reports it in files, on the page and in W&B."""
    sweep = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        "experiment=lr_sensitivity",
        *TINY,
        *text_data(*text_files),
        "data.vocab_limit=512",
        "logger=none",
        "norm=pre,post",
        "depth=2",
        "optim.warmup_steps=0",
        "optim.lr=1e-3,1e-2,3e-1",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    ]
    done = run_cli(args, cwd=tmp_path, env=cli_env, timeout=900)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "report"
    done = run_cli(["compare", str(sweep), "--out", str(out), "--wandb"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "lr_sensitivity.json").read_text())
    cells = {c["norm"]: c for c in data["cells"]}
    assert set(cells) == {"pre", "post"}
    for c in cells.values():
        assert c["seeds"] == 2 and c["grid"] == "0.001 0.01 0.3" and c["l0_from"] == "step 1"
        assert c["lr_sensitivity_lo"] <= c["lr_sensitivity"] <= c["lr_sensitivity_hi"]
        assert set(c["runs"]) == {"0.001", "0.01", "0.3"}
    (diff,) = data["differences"]
    assert diff["key"] == "norm" and diff["reference"] == "pre"
    page = (out / "index.html").read_text()
    assert "<h2>LR sensitivity</h2>" in page and "Differences in LR sensitivity" in page
    assert "Vocabulary: 512 (" in (out / "lr_sensitivity.md").read_text()
    assert (out / "lr_loss_all.png").is_file()  # one figure: nothing varies but norm and lr
    (wb,) = offline_runs(out / "wandb")
    (row,) = [h for h in wb.history if "compare/lr_sensitivity/_type" in h]
    assert row["compare/lr_sensitivity/_type"] == "table-file"
