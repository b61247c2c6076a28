"""The literature's claims (normbench/analysis/claims/: registry.py, probe.py, train.py,
verdict.py): each judge on records built to agree, to disagree and to lack what it needs; the
presets composing; and real probe presets at tiny size, judged by `normbench probe` and by
`normbench compare` from the records. The claims judged on learning-rate sweeps (4, 5 and
8-12) are tested in test_judges_lr.py and test_lr_presets.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from normbench.analysis.claims.registry import CLAIMS, judge
from normbench.analysis.claims.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    OUT_OF_REGIME,
    OUTCOMES,
    REPRODUCED,
    UNDERPOWERED,
    Check,
    Verdict,
    css_class,
)
from normbench.analysis.records import Run
from normbench.analysis.stats import FAILS, HOLDS, UNDECIDED, r_squared, spearman

from support import TINY, run_cli, text_data
from support.wandb_records import offline_runs

SEEDS = (0, 1, 2)  # constructed records: three seeds, so that a tight effect can hold


def is_outcome(text: str) -> bool:
    """A verdict's outcome: one shared by its conditions, `inconclusive`, or `mixed: ...`."""
    if text.startswith("mixed: "):
        parts = [p.split(" ", 1) for p in text[len("mixed: ") :].split(", ")]
        return len(parts) > 1 and all(n.isdigit() and o in OUTCOMES for n, o in parts)
    return text in (*OUTCOMES, INCONCLUSIVE)


def outcomes(v: Verdict) -> list[str]:
    return [c.outcome for c in v.checks]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [2, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # ties averaged
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert r_squared([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert r_squared([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.64)


# --- the outcomes of conditions and verdicts ----------------------------------------------


def verdict(*check_outcomes: str) -> Verdict:
    checks = [Check(f"c{i}", "m", o) for i, o in enumerate(check_outcomes)]
    return Verdict("c", "Title", "source", "statement", checks=checks)


def test_a_verdict_is_its_conditions_outcome_or_mixed():
    assert verdict().outcome == INCONCLUSIVE  # the records lacked what the claim needs
    assert verdict(REPRODUCED, REPRODUCED).outcome == REPRODUCED
    assert verdict(UNDERPOWERED).outcome == UNDERPOWERED
    assert verdict(OUT_OF_REGIME, OUT_OF_REGIME).outcome == OUT_OF_REGIME
    mixed = verdict(UNDERPOWERED, REPRODUCED, OUT_OF_REGIME, REPRODUCED).outcome
    assert mixed == (
        "mixed: 2 reproduced, 1 inconclusive (underpowered), 1 inconclusive (out of regime)"
    )
    assert is_outcome(mixed) and not any("partly" in o for o in OUTCOMES)


def test_a_decision_maps_to_an_outcome():
    assert [Check.decided("c", "m", d).outcome for d in (HOLDS, FAILS, UNDECIDED)] == [
        REPRODUCED,
        NOT_REPRODUCED,
        UNDERPOWERED,
    ]
    assert Check.decided("c", "m", HOLDS).held and not Check("c", "m", UNDERPOWERED).held


def test_the_outcome_column_and_its_class():
    from normbench.analysis.report.page import CSS, _verdict_html

    v = verdict(REPRODUCED, UNDERPOWERED)
    md = v.markdown()
    assert (
        "| condition | measured | outcome |" in md
        and "| c1 | m | inconclusive (underpowered) |" in md
    )
    page = _verdict_html(v)
    assert '<tr class="inconclusive-underpowered">' in page and '<span class="mixed">' in page
    assert "<th>outcome</th>" in page and "held" not in page
    for outcome in (*OUTCOMES, INCONCLUSIVE, v.outcome):
        assert f".{css_class(outcome)} " in CSS, outcome
    assert css_class(OUT_OF_REGIME) == "inconclusive-out-of-regime"
    json_checks = v.to_dict()["checks"]
    assert json_checks[1] == {"condition": "c1", "measured": "m", "outcome": UNDERPOWERED}


# --- probe claims on constructed tables: tests/analysis/test_judges_probe.py -------------------


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
    if loss is None:
        status = "diverged"
    summary = {"status": status, "val_loss": loss, "tokens_per_s": 1000.0, "diag": diag}
    return Run(dir=Path("/nowhere"), config=config, summary=summary, metrics=[], events=[])


def arm(losses: tuple[float | None, ...], **cfg) -> list[Run]:
    """One run per seed with these final losses (None: diverged)."""
    return [run(loss, seed=s, **cfg) for s, loss in enumerate(losses)]


def test_peri_growth_uses_the_diagnostics():
    def diag(out):
        return {"resid_rms/block_01": 1.0, "resid_rms/out": out}

    def runs(pre, peri):
        made = [run(5.0, norm="pre", seed=s, diag=diag(x)) for s, x in enumerate(pre)]
        made += [run(5.0, norm="peri", seed=s, diag=diag(x)) for s, x in enumerate(peri)]
        for r in made:  # Kim et al.'s regime (PERI_TOKENS; tests/analysis/test_judges_train.py)
            r.summary["tokens"] = 3e8
        return made

    assert judge("peri_growth", runs((30, 31, 32), (4, 5, 6))).outcome == REPRODUCED
    assert judge("peri_growth", runs((30, 31, 32), (20, 20, 20))).outcome == NOT_REPRODUCED
    # 2.8x on average, past 2x, but the seeds range from 10 to 60
    v = judge("peri_growth", runs((10, 30, 60), (12, 12, 12)))
    assert v.outcome == UNDERPOWERED and v.checks[0].measured.startswith("2.78 [0.833, 5]")
    no_diag = runs((30, 31, 32), (4, 5, 6))
    for r in no_diag:
        r.summary["diag"] = None
    assert "diag.every" in judge("peri_growth", no_diag).note


@pytest.mark.parametrize(
    "rms, outcome",
    [
        ((5.001, 5.005, 5.009), REPRODUCED),  # equivalent within 0.02 nats
        ((5.3, 5.31, 5.32), NOT_REPRODUCED),  # 0.3 nats apart
        # the same mean, but seeds 0.1 apart: within max(0.02, 2 SE) before; now underpowered
        ((4.95, 5.0, 5.06), UNDERPOWERED),
        ((5.001, None, 5.009), NOT_REPRODUCED),  # a diverged seed
    ],
)
def test_rmsnorm_claim_by_tost(rms, outcome):
    runs = arm((5.0, 5.004, 5.008), kind="layernorm") + arm(rms, kind="rmsnorm")
    v = judge("rmsnorm", runs)
    assert v.checks[0].outcome == outcome, v.markdown()  # 7a; 7b: test_judges_train.py
    assert "against ±0.02; TOST p = " in v.checks[0].measured or None in rms
    assert "diverged or collapsed" in v.checks[0].measured


# --- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, c in CLAIMS.items() if c.command == "train"])
def test_training_presets_compose(name):
    from omegaconf import open_dict

    from normbench.analysis.claims.registry import check_claim
    from normbench.launch import hydra_args, job_configs
    from normbench.run.config.resolve import resolve
    from normbench.run.config.schema import register_configs

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
    assert len(printed) == 1 and is_outcome(printed[0][len(title) + 2 :].rsplit(" (", 1)[0])
    assert (run_dir / "verdicts.md").is_file()

    out = tmp_path / "report"
    wandb_flag = ["--wandb"] if claim == "xiong_hidden" else []
    done = run_cli(
        ["compare", str(run_dir), "--out", str(out), *wandb_flag], cwd=tmp_path, env=cli_env
    )
    assert done.returncode == 0, done.stderr
    (verdict,) = json.loads((out / "verdicts.json").read_text())
    assert verdict["claim"] == claim and is_outcome(verdict["outcome"])
    assert verdict["outcome"] != INCONCLUSIVE, verdict["note"]
    assert verdict["checks"] and all(c["measured"] for c in verdict["checks"])
    # the numbers are the probe's: recompute one from probe.json
    per_seed = json.loads((run_dir / "probe.json").read_text())["per_seed"]
    if claim == "output_change":  # halving the largest step of the ladder, Post-LN's models
        post = {
            (r["depth"], r["seed"], r["lr"]): r["output_change"]
            for r in per_seed["ladder"]
            if r["norm"] == "post"
        }
        ratios = [post[(d, s, 1e-4)] / post[(d, s, 5e-5)] for d in (2, 4) for s in (0, 1)]
        shown = dict(verdict["measured"])[
            "Post-LN: c(η) / c(η/2), min-max over depths and seeds, per η"
        ]
        assert shown.startswith(f"0.0001: {min(ratios):.3g}-{max(ratios):.3g}; 5e-05: ")
        assert len(shown.split("; ")) == 8  # eta_0 .. eta_7: eta_8 has no half on the ladder
    if claim == "xiong_gradients":  # Pre-LN's depth exponent, from the last layer's gradient
        last = {
            (r["depth"], r["seed"]): r["grad_mlp_out_mean"]
            for r in per_seed["layers"]
            if r["norm"] == "pre" and r["layer"] == r["depth"]
        }
        slopes = [math.log(last[(4, s)] / last[(2, s)]) / math.log(2) for s in (0, 1)]
        assert verdict["checks"][0]["measured"].startswith(f"{sum(slopes) / 2:.3g} [")
    page = (out / "index.html").read_text()
    assert "Verdicts on the literature" in page and verdict["outcome"] in page
    assert "data:image/png;base64" in page  # the probe's figure embedded
    assert verdict["outcome"] in done.stdout
    if wandb_flag:  # the verdicts reach W&B as a table and summary keys
        (logged,) = offline_runs(out / "wandb")
        assert logged.summary[f"verdict/{claim}"] == verdict["outcome"]
        assert any(h.get("compare/verdicts/_type") == "table-file" for h in logged.history)


def test_the_setting_line_names_the_precision_the_runs_resolved():
    """precision=auto names no precision: the line gives what the runs ran as."""
    from normbench.analysis.claims.registry import run_setting

    runs = [
        Run(Path(f"/r{i}"), {"precision": "auto", "seed": i},
            {"device": "cpu", "precision": "fp32"}, [], [])
        for i in range(2)
    ]  # fmt: skip
    assert "; precision=auto, ran as cpu fp32; seeds 0,1;" in run_setting(runs)
    runs[1].summary["precision"] = "bf16"
    assert "precision=auto, ran as cpu bf16,cpu fp32;" in run_setting(runs)
