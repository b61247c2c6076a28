"""The literature's claims (normbench/analysis/claims.py, judges_probe.py, judges_train.py,
verdict.py): each judge on records built to agree, to disagree and to lack what it needs; the
presets composing; and real probe presets at tiny size, judged by `normbench probe` and by
`normbench compare` from the records. The claims judged on learning-rate sweeps (4, 5 and
issue 20's) are tested in test_judges_lr.py and test_lr_presets.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from normbench.analysis.claims import CLAIMS, judge
from normbench.analysis.judges_probe import ProbeTable
from normbench.analysis.records import Run
from normbench.analysis.stats import FAILS, HOLDS, UNDECIDED, r_squared, spearman
from normbench.analysis.verdict import (
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
    from normbench.analysis.page import CSS, _verdict_html

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


# --- probe claims on constructed tables -------------------------------------------------------


def table(profile: Any, change: Any, norms=("pre", "post"), depths=(6, 24), seeds=SEEDS):
    """Per-seed probe rows: profile(norm, depth, layer, seed) -> (grad_mlp_out, hidden_norm);
    change(norm, depth, seed) -> output change (the output's RMS is 1)."""
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


def noisy(n, d, layer, s):
    """As the theory, but Post-LN's models disagree: its gradient grows from layer 1 to the
    last by 1.1x, 2x and 3x on the three seeds (2.03x on average, past 1.5), and its hidden
    norm varies along the layers by 0, 0 and 25 % (1.083 on average, within 1.1)."""
    if n != "post":
        return as_theory(n, d, layer, s)
    top, wobble = (1.1, 2.0, 3.0)[s], (0.0, 0.0, 0.25)[s]
    frac = (layer - 1) / (d - 1)
    return 0.1 * (1 + (top - 1) * frac), 16.0 * (1 + wobble * (layer - 2) / (d - 1))


def oc_theory(n, d, s):
    return 0.1 * d if n == "post" else 1.0 + 0.001 * d + 0.01 * s


@pytest.mark.parametrize(
    "claim, profile, outcome",
    [
        ("xiong_gradients", as_theory, REPRODUCED),
        ("xiong_gradients", against_theory, NOT_REPRODUCED),
        ("xiong_hidden", as_theory, REPRODUCED),
        ("xiong_hidden", against_theory, NOT_REPRODUCED),
    ],
)
def test_probe_claims_judge_their_quantity(claim, profile, outcome):
    v = judge(claim, table(profile, oc_theory))
    assert v.outcome == outcome, v.markdown()
    assert len(v.checks) in (2, 4) and v.measured
    assert all("95% CI, n=3, coverage ≤ 75%" in c.measured for c in v.checks), v.markdown()


def test_noisy_seeds_are_underpowered_where_the_mean_passes():
    """The case the point estimates got wrong: the mean growth (2.03) is past 1.5 and the mean
    spread (1.083) within 1.1, but the seeds disagree, so the intervals straddle them."""
    v = judge("xiong_gradients", table(noisy, oc_theory))
    grows = v.checks[0]
    assert grows.outcome == UNDERPOWERED and grows.measured.startswith("2.03 [1.1, 3]")
    assert outcomes(v)[1:] == [REPRODUCED] * 3
    assert v.outcome == "mixed: 3 reproduced, 1 inconclusive (underpowered)"
    v = judge("xiong_hidden", table(noisy, oc_theory))
    assert outcomes(v) == [REPRODUCED, UNDERPOWERED], v.markdown()
    assert v.checks[1].measured.startswith("1.083 [1, 1.25")


def test_output_change_against_each_placement():
    norms = ("post", "pre", "deepnorm", "admin")

    def change(n, d, s):  # Post-LN grows 4x from depth 6 to 24; admin 3x; the others ~1x
        return {"post": 0.01 * d / 6, "admin": 0.05 * (1 + (d - 6) / 9)}.get(n, 0.1 + 0.001 * s)

    v = judge("output_change", table(as_theory, change, norms=norms))
    by_norm = {c.condition.split("than ")[1].split("'")[0]: c.outcome for c in v.checks}
    assert by_norm == {"pre": REPRODUCED, "deepnorm": REPRODUCED, "admin": NOT_REPRODUCED}
    assert v.outcome == "mixed: 2 reproduced, 1 not reproduced"
    shown = dict(v.measured)["post: output change depth 24 / depth 6"]
    assert shown.startswith("4 [4, 4] (95% CI, n=3")


def test_output_change_noisy_post_ln_is_underpowered():
    """Post-LN's growth is 1.5x, 2.5x and 5x on the three seeds: 3x on average, past 2x, but
    its interval reaches below 2."""

    def change(n, d, s):
        return 0.01 * (1.5, 2.5, 5.0)[s] if (n, d) == ("post", 24) else 0.01

    v = judge("output_change", table(as_theory, change, norms=("post", "pre")))
    assert v.outcome == UNDERPOWERED and v.checks[0].measured.startswith("3 [1.5, 5]")


def test_output_change_saturated_is_out_of_regime_for_that_placement():
    """Outputs that moved by about sqrt(2) of their RMS are unrelated: no growth can show.
    Admin saturated at depth 24: its comparison is out of regime, the others are judged."""
    norms = ("post", "pre", "deepnorm", "admin")

    def change(n, d, s):
        return 1.4 if (n, d) == ("admin", 24) else 0.01 * d / 6 if n == "post" else 0.1

    v = judge("output_change", table(as_theory, change, norms=norms))
    assert outcomes(v) == [REPRODUCED, REPRODUCED, OUT_OF_REGIME], v.markdown()
    assert "admin depth 24 moved by 1.40" in v.checks[2].measured
    assert "saturated" in v.note and "lower probe.lr" in v.note
    # Post-LN saturated: every comparison is out of regime, the numbers still reported
    v = judge("output_change", table(as_theory, lambda n, d, s: 1.4, norms=("post", "pre")))
    assert v.outcome == OUT_OF_REGIME and "saturated" in v.note and v.measured


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
        return made + [run(5.0, norm="peri", seed=s, diag=diag(x)) for s, x in enumerate(peri)]

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
    assert v.outcome == outcome, v.markdown()
    assert "against ±0.02; TOST p = " in v.checks[0].measured or None in rms
    assert "diverged or collapsed" in v.checks[0].measured


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
    if claim == "output_change":
        post = {
            (m["depth"], m["seed"]): m["output_change"]
            for m in per_seed["models"]
            if m["norm"] == "post"
        }
        growth = (post[(4, 0)] + post[(4, 1)]) / (post[(2, 0)] + post[(2, 1)])  # of the means
        shown = dict(verdict["measured"])["post: output change depth 4 / depth 2"]
        assert shown.startswith(f"{growth:.3g} [")
    page = (out / "index.html").read_text()
    assert "Verdicts on the literature" in page and verdict["outcome"] in page
    assert "data:image/png;base64" in page  # the probe's figure embedded
    assert verdict["outcome"] in done.stdout
    if wandb_flag:  # the verdicts reach W&B as a table and summary keys
        (logged,) = offline_runs(out / "wandb")
        assert logged.summary[f"verdict/{claim}"] == verdict["outcome"]
        assert any(h.get("compare/verdicts/_type") == "table-file" for h in logged.history)
