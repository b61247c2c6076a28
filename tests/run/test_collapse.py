"""Collapse onto the unigram predictor (normbench/run/monitor/collapse.py): the reference by hand, its
cache, the detector on constructed sequences, the outcome and its rank, the settings."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from normbench.errors import ConfigError
from normbench.run.data.tokens import TokenSplits, load_tokens
from normbench.run.monitor.collapse import FILE, CollapseDetector, cross_entropies, unigram_of
from normbench.run.monitor.divergence import DivergenceMonitor, objective
from normbench.run.record.rundir import IMPLIED, differences
from normbench.run.record.summary import Summary

from support import REPO, compose_config, read_jsonl, run_cli, text_data
from support.wandb_records import offline_runs

DEFAULTS = OmegaConf.load(REPO / "configs" / "divergence" / "default.yaml")
REFERENCE = {"val_ce": 5.0, "train_ce": 6.0}


def test_cross_entropies_by_hand():
    # training counts 0: 2, 1: 1, 2: 1, 3: 0 over 4 ids; the evaluation scores all but the
    # first token of its split: 0 (seen twice) and 3 (never seen in training)
    values = cross_entropies(np.array([0, 0, 1, 2]), np.array([2, 0, 3]), size=4)
    assert values["train_ce"] == pytest.approx(1.5 * math.log(2))  # entropy of (1/2, 1/4, 1/4)
    # add-half: p(t) = (count + 1/2) / (4 + 4/2)
    assert values["val_ce"] == pytest.approx(-(math.log(2.5 / 6) + math.log(0.5 / 6)) / 2)
    assert values["val_unseen_share"] == 0.5 and values["val_targets"] == 2
    assert values["smoothing"] == "add-half" and values["vocab"] == 4


def test_the_reference_is_cached_with_the_tokens_and_keyed_by_them(tmp_path, text_files):
    def tokens(*overrides: str) -> TokenSplits:
        cfg = compose_config(*text_data(*text_files), f"data.cache_dir={tmp_path}", *overrides)
        return load_tokens(cfg.data)

    full = tokens()
    first = unigram_of(full)
    path = full.directory / FILE
    assert json.loads(path.read_text())["values"] == first
    assert first["vocab"] == 50257 and first["val_unseen_share"] > 0
    assert first["val_ce"] == pytest.approx(cross_entropies(full.train, full.val, 50257)["val_ce"])
    # reused: a value changed in the file comes back as it is
    stored = json.loads(path.read_text())
    stored["values"]["val_ce"] = 1.25
    path.write_text(json.dumps(stored))
    assert unigram_of(tokens())["val_ce"] == 1.25
    # a key that does not match (another smoothing, other streams) is computed again
    stored["key"]["alpha"] = 1.0
    path.write_text(json.dumps(stored))
    assert unigram_of(tokens()) == first
    # another vocabulary is another token cache, with its own reference
    limited = tokens("data.vocab_limit=256")
    assert limited.directory != full.directory
    values = unigram_of(limited)
    assert values["vocab"] == 256 and values["val_ce"] < first["val_ce"]
    assert (limited.directory / FILE).is_file()
    # streams that are not a token cache are never written anywhere
    random = TokenSplits(np.arange(64) % 8, np.arange(32) % 8, tmp_path / "none", {})
    assert unigram_of(random)["train_ce"] == pytest.approx(math.log(8))
    assert not (tmp_path / "none").exists()


def test_collapse_is_judged_at_evaluations_after_the_minimum():
    d = CollapseDetector(0.1, after=0.5, min_steps=2, window=3, max_steps=10, unigram=REFERENCE)
    assert d.start == 5
    for step in range(1, 5):
        d.update(step, 6.0)
    assert d.evaluated(4, 5.0) is None and not d.holds  # too early: every model passes there
    d.update(5, 5.95)
    found = d.evaluated(5, 4.95)  # 0.05 nats below the references: still there
    assert found is not None and d.holds
    assert found["kind"] == "collapse" and found["value"] == 4.95
    assert found["threshold"] == pytest.approx(4.9)
    assert found["detail"]["train_loss"] == pytest.approx((6.0 + 6.0 + 5.95) / 3)
    assert found["detail"]["unigram_val_ce"] == 5.0 and found["detail"]["margin"] == 0.1
    assert d.evaluated(6, 5.0) is None and d.holds  # fires once, still holds
    state = d.state_dict()
    d.evaluated(8, 4.5)  # the model left the level: no longer collapsed
    assert not d.holds
    d.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint keeps it
    assert d.holds and d.fired and list(d.losses) == [6.0, 6.0, 5.95]


def test_a_run_below_either_reference_has_not_collapsed():
    d = CollapseDetector(0.1, after=0.0, min_steps=1, window=2, max_steps=10, unigram=REFERENCE)
    d.update(1, 5.5)  # training loss 0.5 nats below its reference
    assert d.evaluated(1, 5.2) is None and not d.holds
    d.update(2, 6.5)
    d.update(3, 6.5)
    assert d.evaluated(3, 4.8) is None and not d.holds  # validation 0.2 below its reference
    assert d.evaluated(3, 7.0) is not None  # above the reference: worse than the frequencies


def monitor(action: str, **overrides: object) -> DivergenceMonitor:
    dotlist = [f"action={action}", *(f"collapse.{k}={v}" for k, v in overrides.items())]
    cfg = OmegaConf.merge(DEFAULTS, OmegaConf.from_dotlist(dotlist))
    return DivergenceMonitor(cfg, max_steps=100, vocab_size=64, unigram=REFERENCE)


def test_the_monitor_reports_collapse_and_never_stops_for_it():
    m = monitor("stop", min_steps=1, after=0.0)
    assert m.check(1, 6.0, 1.0) == []
    (event,) = m.evaluated(1, 5.0)
    assert event.kind == "collapse" and "unigram" in event.message
    assert not m.stops([event]) and m.collapsed
    assert m.evaluated(2, 3.0) == [] and not m.collapsed
    assert "collapse" in m.state_dict()
    assert monitor("stop", enabled=False).collapse is None
    cfg = OmegaConf.merge(DEFAULTS, OmegaConf.from_dotlist(["action=stop"]))
    bench = DivergenceMonitor(cfg, max_steps=100, vocab_size=64)  # no reference: no detector
    assert bench.collapse is None and bench.evaluated(100, 9.0) == [] and not bench.collapsed


def test_a_collapsed_run_ranks_after_every_completed_one():
    def rank(status: str, loss: float | None = 6.6, steps: int = 100) -> float:
        return objective(Summary(status=status, best_val_loss=loss, steps=steps), 100, 100.0)

    assert rank("completed", 6.9) < rank("completed", 250.0) <= rank("collapsed") == 100.0
    assert rank("collapsed", 3.0) == 100.0  # its losses do not rank it
    assert rank("collapsed") <= rank("diverged", 3.0, 100) < rank("diverged", 3.0, 10)


def test_bad_collapse_settings_are_one_line_errors(text_files):
    for override, message in [
        ("divergence.collapse.margin=-0.1", "divergence.collapse.margin must be a finite number"),
        ("divergence.collapse.after=1.5", "divergence.collapse.after must be in [0, 1]"),
        ("divergence.collapse.min_steps=0", "divergence.collapse.min_steps must be >= 1"),
        ("divergence.collapse.window=0", "divergence.collapse.window must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            compose_config(*text_data(*text_files), override)


def test_older_records_read_as_trained_with_the_default_detector():
    """A record written before the detector (which changes no step of training) resumes and
    compares under today's defaults, which IMPLIED must repeat."""
    collapse = yaml.safe_load((REPO / "configs/divergence/default.yaml").read_text())["collapse"]
    implied = {k.rsplit(".", 1)[1]: v for k, v in IMPLIED.items() if ".collapse." in k}
    assert implied == collapse
    now = {"divergence": {"action": "stop", "collapse": collapse}}
    assert differences({"divergence": {"action": "stop"}}, now) == []
    other = {"divergence": {"action": "stop", "collapse": {**collapse, "margin": 0.3}}}
    assert differences({"divergence": {"action": "stop"}}, other) == [
        "divergence.collapse.margin: 0.1 there, 0.3 here"
    ]


def test_an_older_summary_reads_back():
    old = {"status": "completed", "steps": 200, "val_loss": 6.651, "diverged": False}
    summary = Summary.from_dict(old)
    assert summary.unigram is None and summary.collapsed_at_step is None
    assert "collapsed_at_step" not in summary.to_dict()  # written only when set


# --- a real collapse, through the command line ------------------------------------------------

# Post-LN against Pre-LN without warmup at a high learning rate (the warmup claim, at tiny
# size): Post-LN ends at the unigram level of its training counts, Pre-LN well below it.
COLLAPSING = [
    "depth=2",
    "model.d_model=64",
    "model.n_heads=2",
    "model.context=32",
    "model.init=xavier",
    "data.vocab_limit=1024",
    "train.batch_size=16",
    "train.max_steps=100",
    "train.eval_every=50",
    "train.log_every=10",
    "optim.lr=1e-2",
    "optim.warmup_steps=0",
    "optim.grad_clip=0",
    "optim.betas=[0.9,0.98]",
    "precision=fp32",
]


def test_post_ln_without_warmup_collapses_and_pre_ln_does_not(tmp_path, cli_env, text_files):
    """Flagged in summary.json, events.jsonl, the W&B run read back and compare's tables and
    stability map; the healthy Pre-LN run is not."""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "norm=pre,post", *COLLAPSING, *text_data(*text_files),
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "collapsed onto the unigram predictor" in done.stderr
    runs = {}
    for job in ("0_pre-d2", "1_post-d2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        events = read_jsonl(sweep / job / "events.jsonl")
        (wandb_run,) = offline_runs(sweep / job / "wandb")
        runs[job.split("_")[1][:-3]] = (summary, events, wandb_run)
    margin = DEFAULTS.collapse.margin

    summary, events, wandb_run = runs["post"]
    unigram = summary["unigram"]
    assert summary["status"] == "collapsed" and summary["steps"] == 100
    assert summary["val_loss"] >= unigram["val_ce"] - margin
    assert summary["objective"] == DEFAULTS.penalty and not summary["diverged"]
    assert unigram["vocab"] == 1024 and unigram["smoothing"] == "add-half"
    (event,) = events
    assert event["kind"] == "collapse" and event["action"] == "continue"
    assert event["step"] == summary["collapsed_at_step"] == 50
    assert event["unigram_val_ce"] == unigram["val_ce"] and event["margin"] == margin
    assert event["train_loss"] >= unigram["train_ce"] - margin
    assert wandb_run.summary["status"] == "collapsed" and wandb_run.exit_code == 0
    assert wandb_run.config["unigram"]["val_ce"] == pytest.approx(unigram["val_ce"])
    assert [h["step"] for h in wandb_run.history if "events/collapse" in h] == [50]

    summary, events, wandb_run = runs["pre"]  # healthy: the test fails if it is flagged
    assert summary["status"] == "completed" and events == []
    assert summary["val_loss"] < summary["unigram"]["val_ce"] - 2 * margin
    assert wandb_run.summary["status"] == "completed"
    assert not any("events/collapse" in h for h in wandb_run.history)

    done = run_cli(["compare", str(sweep)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    report = sweep / "compare"
    with open(report / "summary.csv") as f:
        rows = {r["norm"]: r for r in csv.DictReader(f)}
    post, pre = rows["post"], rows["pre"]
    assert (post["completed"], post["collapsed"], post["diverged"]) == ("0", "1", "0")
    assert post["val_loss_mean"] == ""  # a collapsed run is not averaged with healthy ones
    val_loss = runs["post"][0]["val_loss"]
    assert float(post["collapsed_val_loss_mean"]) == pytest.approx(val_loss)
    assert float(post["unigram_val_ce"]) == pytest.approx(unigram["val_ce"])
    assert (pre["completed"], pre["collapsed"]) == ("1", "0")
    assert "≈ 1/1 collapsed" in (report / "stability_post.svg").read_text()
    assert "collapsed" not in (report / "stability_pre.svg").read_text()
    assert "| 1/1 (val/loss " in (report / "summary.md").read_text()
