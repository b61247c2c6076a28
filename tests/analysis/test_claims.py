"""The literature's claims (normbench/analysis/claims.py, judges_probe.py, judges_train.py,
verdict.py): each judge on records built to agree, to disagree and to lack what it needs; the
presets composing; and real probe presets at tiny size, judged by `normbench probe` and by
`normbench compare` from the records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from normbench.analysis.claims import CLAIMS, judge
from normbench.analysis.judges_probe import ProbeTable
from normbench.analysis.records import Run
from normbench.analysis.stats import r_squared, spearman
from normbench.analysis.verdict import INCONCLUSIVE, NOT, PARTLY, REPRODUCED

from support import TINY, run_cli, text_data
from support.wandb_records import offline_runs

OUTCOMES = {REPRODUCED, PARTLY, NOT, INCONCLUSIVE}


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [2, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # ties averaged
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert r_squared([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert r_squared([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.64)


# --- probe claims on constructed tables -------------------------------------------------------


def table(profile: Any, change: Any, norms=("pre", "post"), depths=(6, 24), seeds=(0, 1)):
    """Per-seed probe rows: profile(norm, depth, layer, seed) -> (grad_mlp_out, hidden_norm);
    change(norm, depth, seed) -> output change."""
    layers, models = [], []
    for n in norms:
        for d in depths:
            for s in seeds:
                for layer in range(1, d + 2):
                    g, h = profile(n, d, layer, s)
                    row = {"norm": n, "kind": "layernorm", "depth": d, "seed": s, "layer": layer}
                    row["hidden_norm"] = h
                    if layer <= d:
                        row["grad_mlp_out"] = g
                    layers.append(row)
                models.append(
                    {
                        "norm": n,
                        "depth": d,
                        "seed": s,
                        "output_change": change(n, d, s),
                        "output_rms": 1.0,
                    }
                )
    return ProbeTable(layers, models)


def as_theory(n, d, layer, s):
    """Xiong et al.'s picture: Post-LN gradients grow along the layers and do not depend on
    depth; Pre-LN's are flat and scale as 1/sqrt(depth); Pre-LN's hidden norm grows."""
    noise = 1 + 0.01 * s
    if n == "post":
        return 0.1 * (1 + layer / d) * noise, 16.0
    return noise / math.sqrt(d), math.sqrt(layer)


def against_theory(n, d, layer, s):
    return as_theory("post" if n == "pre" else "pre", d, layer, s)


def oc_theory(n, d, s):
    return 0.1 * d if n == "post" else 1.0 + 0.001 * d + 0.01 * s


@pytest.mark.parametrize(
    "claim, profile, change, outcome",
    [
        ("xiong_gradients", as_theory, oc_theory, REPRODUCED),
        ("xiong_gradients", against_theory, oc_theory, NOT),
        ("xiong_hidden", as_theory, oc_theory, REPRODUCED),
        ("xiong_hidden", against_theory, oc_theory, NOT),
    ],
)
def test_probe_claims_judge_their_quantity(claim, profile, change, outcome):
    v = judge(claim, table(profile, change))
    assert v.outcome == outcome, v.markdown()
    assert len(v.checks) in (2, 4) and v.measured


def test_output_change_against_each_placement():
    norms = ("post", "pre", "deepnorm", "admin")

    def change(n, d, s):  # Post-LN grows 4x from depth 6 to 24; admin 3x; the others ~1x
        return {"post": 0.01 * d / 6, "admin": 0.05 * (1 + (d - 6) / 9)}.get(n, 0.1 + 0.001 * s)

    v = judge("output_change", table(as_theory, change, norms=norms))
    held = {c.condition.split("than ")[1].split("'")[0]: c.held for c in v.checks}
    assert held == {"pre": True, "deepnorm": True, "admin": False}  # 4 / 3 < 2
    assert v.outcome == PARTLY
    assert any("post: output change depth 24 / depth 6" in q and "4 ±" in m for q, m in v.measured)


def test_output_change_saturated_is_inconclusive():
    """Outputs that moved by about sqrt(2) of their RMS are unrelated: no growth can show."""
    v = judge("output_change", table(as_theory, lambda n, d, s: 1.4, norms=("post", "pre")))
    assert v.outcome == INCONCLUSIVE and "saturated" in v.note and "lower probe.lr" in v.note
    assert v.measured  # what was measured is still reported


@pytest.mark.parametrize(
    "claim, norms, depths, missing",
    [
        ("xiong_gradients", ("pre",), (6, 24), "norm=post"),
        ("xiong_gradients", ("pre", "post"), (6,), "at least 2"),
        ("xiong_hidden", ("post",), (6,), "norm=pre"),
        ("output_change", ("post",), (6, 24), "no probe of pre, deepnorm or admin"),
    ],
)
def test_probe_claims_say_what_is_missing(claim, norms, depths, missing):
    v = judge(claim, table(as_theory, oc_theory, norms=norms, depths=depths))
    assert v.outcome == INCONCLUSIVE and missing in v.note and not v.checks


# --- training claims on constructed run records -------------------------------------------


def run(loss: float | None, *, status: str = "completed", diag: dict | None = None, **cfg) -> Run:
    config = {
        "norm.name": cfg.get("norm", "pre"),
        "norm.kind": cfg.get("kind", "layernorm"),
        "depth": cfg.get("depth", 6),
        "optim.lr": cfg.get("lr", 1e-3),
        "optim.warmup_steps": cfg.get("warmup", 20),
        "seed": cfg.get("seed", 0),
    }
    summary = {"status": status, "val_loss": loss, "tokens_per_s": 1000.0, "diag": diag}
    return Run(dir=Path("/nowhere"), config=config, summary=summary, metrics=[], events=[])


def warmup_runs(post_without: list[float | None]) -> list[Run]:
    runs = []
    for seed in (0, 1):
        runs.append(run(5.0 + 0.01 * seed, norm="pre", warmup=0, seed=seed))
        runs.append(run(5.02 + 0.01 * seed, norm="pre", warmup=50, seed=seed))
        runs.append(run(5.1 + 0.01 * seed, norm="post", warmup=50, seed=seed))
        loss = post_without[seed]
        runs.append(
            run(loss, norm="post", warmup=0, seed=seed, status="completed" if loss else "diverged")
        )
    return runs


@pytest.mark.parametrize(
    "post_without, outcome",
    [([None, 5.8], REPRODUCED), ([5.6, 5.62], REPRODUCED), ([5.12, 5.1], PARTLY)],
)
def test_warmup_claim(post_without, outcome):
    v = judge("warmup", warmup_runs(post_without))
    assert v.outcome == outcome, v.markdown()


def collapse(runs: list[Run], **where: object) -> None:
    """The selected runs end collapsed at the unigram level (normbench/run/collapse.py)."""
    for r in runs:
        if all(r.config[k] == v for k, v in where.items()):
            r.summary.update(status="collapsed", val_loss=6.65, unigram={"val_ce": 6.6})


def test_a_collapsed_arm_fails_like_a_diverged_one():
    runs = warmup_runs([5.1, 5.1])  # Post-LN no worse without warmup: not reproduced ...
    assert judge("warmup", runs).outcome == PARTLY
    collapse(runs, **{"norm.name": "post", "optim.warmup_steps": 0})  # ... unless it collapsed
    v = judge("warmup", runs)
    assert v.outcome == REPRODUCED, v.markdown()
    post = dict(v.measured)["post, no warmup: final val loss"]
    assert "collapsed 2/2 (val/loss 6.65" in post and "unigram 6.6" in post
    assert "diverged or collapsed without warmup 2/2" in v.checks[0].measured
    # a collapsed Pre-LN is no Pre-LN that trains without warmup, whatever its loss
    collapse(runs, **{"norm.name": "pre", "optim.warmup_steps": 0})
    assert [c.held for c in judge("warmup", runs).checks] == [True, False]


def test_warmup_claim_needs_both_arms():
    runs = [r for r in warmup_runs([5.6, 5.6]) if r.config["optim.warmup_steps"] == 0]
    assert judge("warmup", runs).outcome == INCONCLUSIVE


def test_depth_breakdown_is_judged_against_pre_ln():
    runs = []
    # Pre-LN: depth costs 0.05 nats; Post-LN diverges at 24; DeepNorm pays 0.08; B2T 0.5.
    penalties = {"pre": 0.05, "deepnorm": 0.08, "b2t": 0.5}
    for seed in (0, 1):
        for norm in ("pre", "post", "deepnorm", "b2t"):
            runs.append(run(5.0 + 0.01 * seed, norm=norm, depth=6, seed=seed))
            if norm == "post":
                runs.append(run(None, norm=norm, depth=24, seed=seed, status="diverged"))
            else:
                runs.append(
                    run(5.0 + penalties[norm] + 0.01 * seed, norm=norm, depth=24, seed=seed)
                )
    runs.append(run(5.0, norm="mix", depth=6))  # a sweep cut short: mix only at depth 6
    v = judge("depth_breakdown", runs)
    assert [c.held for c in v.checks] == [True, True, False]  # post breaks; deepnorm; b2t
    assert v.outcome == PARTLY and "mix" in v.note
    post_only = [r for r in runs if r.config["norm.name"] != "post" or r.config["depth"] == 6]
    assert "norm=post needs runs at depth 6 and 24" in judge("depth_breakdown", post_only).note


def test_depth_breakdown_needs_a_post_ln_that_trains_when_shallow():
    runs = []
    for seed in (0, 1):
        runs.append(run(6.6 + 0.01 * seed, norm="post", depth=6, seed=seed))  # stuck
        runs.append(run(6.5 + 0.01 * seed, norm="post", depth=24, seed=seed))
        runs.append(run(5.8 + 0.01 * seed, norm="pre", depth=6, seed=seed))
        runs.append(run(5.9 + 0.01 * seed, norm="pre", depth=24, seed=seed))
    v = judge("depth_breakdown", runs)
    assert v.outcome == INCONCLUSIVE and "Post-LN already fails at depth 6" in v.note
    assert "warmup" in v.note and v.measured


def test_peri_growth_uses_the_diagnostics():
    def diag(out):
        return {"resid_rms/block_01": 1.0, "resid_rms/out": out}

    runs = [run(5.0, norm="pre", seed=s, diag=diag(30.0 + s)) for s in (0, 1)]
    runs += [run(5.0, norm="peri", seed=s, diag=diag(4.0 + s)) for s in (0, 1)]
    assert judge("peri_growth", runs).outcome == REPRODUCED
    runs[2].summary["diag"] = diag(20.0)
    runs[3].summary["diag"] = diag(20.0)
    assert judge("peri_growth", runs).outcome == NOT
    for r in runs:
        r.summary["diag"] = None
    assert "diag.every" in judge("peri_growth", runs).note


@pytest.mark.parametrize("rms, outcome", [((5.01, 5.02), REPRODUCED), ((5.3, 5.31), NOT)])
def test_rmsnorm_claim(rms, outcome):
    runs = [run(5.0 + 0.01 * s, kind="layernorm", seed=s) for s in (0, 1)]
    runs += [run(loss, kind="rmsnorm", seed=s) for s, loss in enumerate(rms)]
    assert judge("rmsnorm", runs).outcome == outcome


# --- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, c in CLAIMS.items() if c.command == "train"])
def test_training_presets_compose(name):
    from omegaconf import open_dict

    from normbench.analysis.claims import check_claim
    from normbench.launch import hydra_args, job_configs
    from normbench.run.config import register_configs, resolve

    register_configs()
    _, args = hydra_args(["-m", f"experiment={name}", "logger=none"])
    configs = job_configs(args, "train")
    assert len(configs) >= 4
    for cfg in configs:
        with open_dict(cfg):
            del cfg["hydra"]
        resolve(cfg)
        check_claim(cfg.claim, "train")
        assert (
            str(cfg.claim) == name and cfg.optim.grad_clip == 0 and str(cfg.model.init) == "xavier"
        )
    assert len({c.seed for c in configs}) >= 2  # every training claim has two seeds


@pytest.mark.parametrize(
    "args, message",
    [
        (["probe", "experiment=warmup"], "claim=warmup is judged from `normbench train` records"),
        (
            ["train", "experiment=xiong_hidden"],
            "claim=xiong_hidden is judged from `normbench probe` records",
        ),
        (["train", "claim=xiong"], "claim"),
    ],
)
def test_a_claim_with_the_wrong_command_is_refused(args, message, tmp_path, cli_env, text_files):
    done = run_cli([*args, *TINY, *text_data(*text_files)], cwd=tmp_path, env=cli_env)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


# --- the probe presets, real, at tiny size -------------------------------------------------

TINY_PROBE = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.context=32",
    "probe.seeds=[0,1]",
    "probe.batches=1",
    "probe.batch_size=2",
]


@pytest.mark.parametrize(
    "claim, extra",
    [
        ("xiong_gradients", ["probe.depths=[2,4]"]),
        ("xiong_hidden", ["probe.depths=[4]"]),
        ("output_change", ["probe.depths=[2,4]"]),
    ],
)
def test_probe_presets_produce_a_verdict(claim, extra, tmp_path, cli_env, text_files):
    run_dir = tmp_path / "probe"
    args = ["probe", f"experiment={claim}", *TINY_PROBE, *extra, *text_data(*text_files)]
    done = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    title = CLAIMS[claim].title
    printed = [line for line in done.stdout.splitlines() if line.startswith(title)]
    assert len(printed) == 1 and printed[0].split(": ")[1].split(" (")[0] in OUTCOMES
    assert (run_dir / "verdicts.md").is_file()

    out = tmp_path / "report"
    wandb_flag = ["--wandb"] if claim == "xiong_hidden" else []
    done = run_cli(
        ["compare", str(run_dir), "--out", str(out), *wandb_flag], cwd=tmp_path, env=cli_env
    )
    assert done.returncode == 0, done.stderr
    (verdict,) = json.loads((out / "verdicts.json").read_text())
    assert verdict["claim"] == claim and verdict["outcome"] in OUTCOMES
    assert verdict["outcome"] != INCONCLUSIVE, verdict["note"]
    assert verdict["checks"] and all(c["measured"] for c in verdict["checks"])
    # the numbers are the probe's: recompute one from probe.json
    per_seed = json.loads((run_dir / "probe.json").read_text())["per_seed"]
    if claim == "output_change":
        post = {
            (m["depth"], m["seed"]): m["output_change"]
            for m in per_seed["models"]
            if m["norm"] == "post"
        }
        growth = [post[(4, s)] / post[(2, s)] for s in (0, 1)]
        shown = dict(verdict["measured"])["post: output change depth 4 / depth 2"]
        assert shown.startswith(f"{sum(growth) / 2:.3g} ±")
    page = (out / "index.html").read_text()
    assert "Verdicts on the literature" in page and verdict["outcome"] in page
    assert "data:image/png;base64" in page  # the probe's figure embedded
    assert verdict["outcome"] in done.stdout
    if wandb_flag:  # the verdicts reach W&B as a table and summary keys
        (logged,) = offline_runs(out / "wandb")
        assert logged.summary[f"verdict/{claim}"] == verdict["outcome"]
        assert any(h.get("compare/verdicts/_type") == "table-file" for h in logged.history)
