"""The presets of the claims judged on learning-rate sweeps (configs/experiment/warmup.yaml,
depth_breakdown.yaml, qk_layernorm.yaml, z_loss.yaml, long_warmup.yaml, dyt.yaml,
post_shallow.yaml), really run at tiny size (a width-32 model, 3 steps, 3 learning rates, 2
seeds) and judged by `normbench compare`: each writes its claim's verdict with its checks;
`compare --claim` judges the named claims on the records whatever claim they were run for,
and refuses an unknown name in one line."""

from __future__ import annotations

import json

import pytest

from normbench.analysis.claims.registry import CLAIMS
from normbench.analysis.claims.verdict import OUTCOMES

from support import run_cli, text_data, wikitext_lines

SMALL = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.context=32",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.eval_every=3",
    "train.log_every=1",
    "data.vocab_limit=512",
    "logger=none",
    "optim.lr=1e-3,1e-2,1e-1",
    "seed=0,1",
]
# Per preset: the overrides that shrink its sweep, and the checks its verdict holds.
# post_shallow reads depth 2 with warmup 30, as pre-registered: its runs keep the preset's
# warmup, in 30 steps.
PRESETS = {
    "warmup": (["optim.warmup_steps=0,3"], 3),  # 4a, 4b, 4c
    "depth_breakdown": (["norm=post,deepnorm", "depth=2,4", "optim.warmup_steps=1"], 2),
    "qk_layernorm": (["depth=2", "optim.warmup_steps=1", "diag.every=1"], 1),
    "z_loss": (["depth=2", "optim.warmup_steps=1"], 1),
    "long_warmup": (["depth=2", "optim.warmup_steps=1,3"], 1),
    "dyt": (["depth=2", "optim.warmup_steps=1"], 1),
    "post_shallow": (["train.max_steps=30", "train.eval_every=30", "train.log_every=30"], 1),
}


@pytest.fixture(scope="module")
def short_val(text_files, tmp_path_factory) -> tuple:
    """The tests' training text, and a validation text of 8 lines: each run evaluates once,
    over the whole of it."""
    val = tmp_path_factory.mktemp("short") / "val.txt"
    val.write_text("".join(wikitext_lines("test", 8)), encoding="utf-8")
    return text_files[0], val


def verdicts(path) -> dict[str, dict]:
    return {v["claim"]: v for v in json.loads(path.read_text())}


@pytest.mark.parametrize("claim", list(PRESETS))
def test_lr_preset_is_judged(claim, tmp_path, cli_env, short_val):
    extra, n_checks = PRESETS[claim]
    sweep = tmp_path / "sweep"
    args = ["train", "-m", f"experiment={claim}", *SMALL, *extra, *text_data(*short_val)]
    done = run_cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=cli_env, timeout=900)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "report"
    done = run_cli(["compare", str(sweep), "--out", str(out)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    v = verdicts(out / "verdicts.json")[claim]
    assert len(v["checks"]) == n_checks, v
    assert all(c["outcome"] in OUTCOMES and c["measured"] for c in v["checks"])
    assert any("LR sensitivity" in q for q, _ in v["measured"])
    assert f"{CLAIMS[claim].title}: {v['outcome']}" in done.stdout
    if claim == "qk_layernorm":  # the base arm's attention logits, from the diagnostics
        assert any("largest attention logit" in q for q, _ in v["measured"])
    if claim == "post_shallow":  # named claims, judged whatever claim the runs were for
        named = tmp_path / "named"
        flags = ["--claim", "post_shallow", "--claim", "warmup", "--out", str(named)]
        done = run_cli(["compare", str(sweep), *flags], cwd=tmp_path, env=cli_env)
        assert done.returncode == 0, done.stderr
        found = verdicts(named / "verdicts.json")
        assert list(found) == ["warmup", "post_shallow"]
        assert found["post_shallow"]["checks"] == v["checks"]
        assert found["warmup"]["outcome"] == "inconclusive"  # no runs without warmup
        assert "experiment=warmup" in found["warmup"]["note"]


def test_compare_refuses_an_unknown_claim_in_one_line(tmp_path, cli_env):
    out = tmp_path / "report"
    args = ["compare", str(tmp_path), "--claim", "warmup", "--claim", "warmups", "--out", str(out)]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "unknown claim 'warmups'; choose one of:" in done.stderr
    assert "post_shallow" in done.stderr and not out.exists()
