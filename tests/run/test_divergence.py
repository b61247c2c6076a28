"""Divergence detectors on constructed sequences, and divergence as a result of real runs."""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml
from omegaconf import OmegaConf

from normbench.run.monitor.divergence import (
    DivergenceMonitor,
    GradExplosionDetector,
    SpikeDetector,
    StagnationDetector,
    objective,
)
from normbench.run.record.summary import Summary

from support import REPO, TINY, read_jsonl, run_cli, text_data
from support.wandb_records import offline_runs

DEFAULTS = OmegaConf.load(REPO / "configs" / "divergence" / "default.yaml")


def monitor(max_steps: int = 1000, **overrides) -> DivergenceMonitor:
    cfg = OmegaConf.merge(
        DEFAULTS, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()])
    )
    return DivergenceMonitor(cfg, max_steps=max_steps, vocab_size=50304)


def healthy_run(steps: int, seed: int) -> tuple[list[float], list[float]]:
    """A loss that falls from ln(V) towards 3.5 with batch noise, and a noisy gradient norm
    that starts high and settles, as in the calibration runs (docs in configs/divergence)."""
    rng = random.Random(seed)
    losses, grads = [], []
    for t in range(steps):
        losses.append(3.5 + (math.log(50304) - 3.5) * math.exp(-t / 60) + rng.gauss(0, 0.08))
        grads.append((0.6 + 4.0 * math.exp(-t / 15)) * math.exp(rng.gauss(0, 0.35)))
    return losses, grads


# --- each detector on constructed sequences ---------------------------------------------------


def test_spike_fires_after_patience_consecutive_steps_above_the_margin():
    d = SpikeDetector(rel_margin=0.3, abs_margin=None, patience=3, ema=0.0)  # ref = last loss
    assert d.update(1, 5.0) is None
    assert d.threshold() == pytest.approx(6.5)
    assert [d.update(s, 7.0) for s in (2, 3)] == [None, None]
    assert d.update(4, 5.0) is None  # back under: the count restarts
    assert [d.update(s, 7.0) for s in (5, 6)] == [None, None]
    event = d.update(7, 7.0)
    assert event is not None and event.kind == "spike" and event.step == 7
    assert event.value == 7.0 and event.threshold == pytest.approx(6.5)
    assert event.detail["reference"] == pytest.approx(5.0)
    # One event per episode: the new level is the reference; staying there is not a spike.
    assert all(d.update(s, 7.0) is None for s in range(8, 30))


def test_spike_margin_relative_or_absolute_whichever_is_crossed_first():
    rel = SpikeDetector(0.3, None, 1, 0.0)
    both = SpikeDetector(0.3, 0.5, 1, 0.0)
    absolute = SpikeDetector(None, 0.5, 1, 0.0)
    for d in (rel, both, absolute):
        d.update(1, 5.0)
    assert rel.threshold() == pytest.approx(6.5)
    assert absolute.threshold() == pytest.approx(5.5)
    assert both.threshold() == pytest.approx(5.5)
    assert rel.update(2, 6.0) is None and both.update(2, 6.0) is not None


def test_spike_reference_ignores_flagged_steps():
    d = SpikeDetector(0.3, None, 10, ema=0.5)
    d.update(1, 4.0)
    for s in range(2, 8):  # flagged, not yet an event: the reference does not follow
        assert d.update(s, 9.0) is None
    assert d.ref == pytest.approx(4.0)


def test_grad_explosion_needs_history_factor_and_patience():
    d = GradExplosionDetector(factor=10, window=5, min_steps=4, patience=2)
    assert all(d.update(s, 100.0 if s == 1 else 1.0) is None for s in range(1, 5))  # arming
    assert d.update(5, 1.0) is None
    assert d.update(6, 50.0) is None  # one step above 10 x median: patience 2
    event = d.update(7, 60.0)
    assert event is not None and event.kind == "grad_explosion"
    assert event.value == 60.0 and event.threshold == pytest.approx(10.0)
    assert d.update(8, 70.0) is None  # the same episode
    assert d.update(9, 1.0) is None  # below again: re-armed
    # the median follows a window of 5: 50, 60, 70 now dominate, so 100 is no explosion
    assert d.update(10, 100.0) is None


def test_stagnation_fires_once_after_the_fraction_and_min_steps():
    d = StagnationDetector(rel=0.05, after=0.5, min_steps=50, window=10, max_steps=200, vocab=50304)
    assert d.start == 100
    assert all(d.update(s, 10.8) is None for s in range(1, 100))
    event = d.update(100, 10.8)
    assert event is not None and event.kind == "stagnation"
    assert event.threshold == pytest.approx(0.95 * math.log(50304))
    assert d.update(101, 10.8) is None  # once
    learning = StagnationDetector(0.05, 0.5, 50, 10, 200, 50304)
    assert all(learning.update(s, 10.8 if s < 80 else 7.0) is None for s in range(1, 200))
    short = StagnationDetector(0.05, 0.5, 50, 10, max_steps=20, vocab=50304)
    assert all(short.update(s, 10.8) is None for s in range(1, 21))  # not judged before step 50


def test_attention_logit_growth_fires_on_the_largest_layer_after_patience():
    m = monitor(**{"attention_logit_growth.threshold": 100, "attention_logit_growth.patience": 2})
    low = {"attn_logit_max/block_01": 20.0, "attn_logit_max/block_02": 30.0}
    high = {"attn_logit_max/block_01": 20.0, "attn_logit_max/block_02": 150.0}
    kinds = lambda step, stats: [e.kind for e in m.check(step, 5.0, 1.0, stats)]  # noqa: E731
    assert kinds(1, low) == [] and kinds(2, high) == []  # one step above: patience 2
    assert kinds(3, {}) == []  # a step that measured nothing neither counts nor resets
    event = m.check(4, 5.0, 1.0, high)[0]
    assert event.kind == "attention_logit_growth" and event.value == 150.0
    assert event.threshold == 100 and event.detail == {"layer": "block_02"}
    assert "block_02" in event.message
    assert kinds(5, high) == []  # one event per episode ...
    assert kinds(6, low) == [] and kinds(7, high) == [] and kinds(8, high)  # ... re-armed


def test_output_logit_drift_is_measured_from_the_first_value_in_both_directions():
    m = monitor(**{"output_logit_drift.threshold": 5, "output_logit_drift.patience": 1})
    assert m.check(1, 5.0, 1.0, {"logits/logz_mean": 10.8}) == []  # the reference
    assert m.check(2, 5.0, 1.0, {"logits/logz_mean": 6.0}) == []  # 4.8 nats: within
    (event,) = m.check(3, 5.0, 1.0, {"logits/logz_mean": 5.5})
    assert event.kind == "output_logit_drift" and event.value == pytest.approx(5.3)
    assert event.detail == {"logz_mean": 5.5, "reference": 10.8}
    assert m.check(4, 5.0, 1.0, {"logits/logz_mean": 10.0}) == []
    saved = m.state_dict()  # the reference survives a checkpoint
    resumed = monitor(**{"output_logit_drift.threshold": 5, "output_logit_drift.patience": 1})
    resumed.load_state_dict(saved)
    assert [e.kind for e in resumed.check(5, 5.0, 1.0, {"logits/logz_mean": 16.0})] == [
        "output_logit_drift"
    ]
    off = monitor(**{"output_logit_drift.enabled": False})
    assert off.check(1, 5.0, 1.0, {"logits/logz_mean": 1.0}) == []
    assert off.check(2, 5.0, 1.0, {"logits/logz_mean": 99.0}) == []


def test_logit_detectors_fire_in_a_real_run_with_their_evidence(tiny_training):
    """Thresholds far below a tiny run's values: both fire from the measured statistics,
    with the ring buffer holding the attention logits and log Z of the steps before."""
    rows, summary = tiny_training(
        "divergence.attention_logit_growth.threshold=1e-3",
        "divergence.output_logit_drift.threshold=1e-4",
        "divergence.action=continue",
        "norm=pre",
    )
    events = read_jsonl(tiny_training.last_dir / "events.jsonl")
    by_kind = {e["kind"]: e for e in events}
    growth, drift = by_kind["attention_logit_growth"], by_kind["output_logit_drift"]
    assert growth["step"] == 3 and growth["layer"].startswith("block_")  # patience 3
    assert growth["value"] == growth["layers"][f"attn_logit_max/{growth['layer']}"]
    assert drift["value"] > 1e-4 and drift["reference"] == drift["history"][0]["logits/logz_mean"]
    assert all("logits/logz_mean" in r for r in growth["history"])
    assert summary["status"] == "completed" and summary["events"] == len(events)


def test_nonfinite_is_always_an_event_and_always_stops():
    m = monitor(action="continue")
    (event,) = m.check(3, math.nan, math.nan)
    assert event.kind == "nonfinite" and "loss" in event.message and m.stops([event])
    (event,) = m.check(4, 2.0, math.inf)
    assert event.kind == "nonfinite" and "gradient norm" in event.message
    spike = monitor(action="continue", **{"spike.patience": 1})
    spike.check(1, 4.0, 1.0)
    events = spike.check(2, 40.0, 1.0)
    assert [e.kind for e in events] == ["spike"] and not spike.stops(events)
    assert monitor(action="stop").stops(events)


@pytest.mark.parametrize("seed", range(5))
def test_defaults_stay_silent_on_a_healthy_run(seed):
    m = monitor(max_steps=2000)
    losses, grads = healthy_run(2000, seed)
    events = [
        e for s, (x, g) in enumerate(zip(losses, grads, strict=True), 1) for e in m.check(s, x, g)
    ]
    assert events == []


def test_defaults_catch_a_blow_up_in_a_healthy_run():
    losses, grads = healthy_run(600, 0)
    losses[400:] = [x * 2 for x in losses[400:]]  # the loss doubles and stays up
    grads[200:206] = [g * 40 for g in grads[200:206]]  # a burst of large gradients
    m = monitor(max_steps=600, action="continue")
    events = [
        e for s, (x, g) in enumerate(zip(losses, grads, strict=True), 1) for e in m.check(s, x, g)
    ]
    assert [(e.kind, e.step) for e in events] == [("grad_explosion", 203), ("spike", 405)]


def test_objective_ranks_diverged_runs_after_every_completed_run():
    def done(loss: float) -> float:
        return objective(Summary(status="completed", best_val_loss=loss, steps=100), 100, 100.0)

    def diverged(steps: int) -> float:
        return objective(Summary(status="diverged", best_val_loss=3.0, steps=steps), 100, 100.0)

    assert done(3.2) == 3.2 and done(250.0) == 100.0  # capped at the penalty
    assert max(done(3.2), done(250.0)) < diverged(99) < diverged(10) < diverged(0) <= 101.0
    assert all(math.isfinite(v) for v in (diverged(0), done(1e9)))
    failed = objective(Summary(status="failed", best_val_loss=None, steps=None), 100, 100.0)
    assert failed == 101.0


# --- real runs --------------------------------------------------------------------------------


def test_tiny_run_is_silent_and_records_no_event(tiny_training):
    rows, summary = tiny_training("norm=pre")
    run_dir = tiny_training.last_dir
    assert (run_dir / "events.jsonl").read_text() == ""
    assert summary["status"] == "completed" and summary["diverged"] is False
    assert summary["events"] == 0 and summary["diverged_at_step"] is None


DIVERGING = [
    "norm=post",
    *TINY,
    "train.max_steps=40",
    "train.eval_every=20",
    "optim.warmup_steps=0",
    "optim.lr=10",
    "precision=fp32",
]


def test_high_lr_post_ln_ends_diverged_with_an_event(tmp_path, cli_env, text_files):
    """optim.lr=10 with Post-LN: status diverged, exit code 0, complete records, W&B summary."""
    run_dir = tmp_path / "run"
    args = ["train", *DIVERGING, *text_data(*text_files), f"hydra.run.dir={run_dir}"]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"run_dir: {run_dir}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"] is True
    step, reason = summary["diverged_at_step"], summary["divergence_reason"]
    # at lr 10 the attention logits and log Z blow up within a few steps, often before the
    # loss does: the detectors that fire at the stopping step are all recorded
    assert reason in ("nonfinite", "spike", "grad_explosion", "attention_logit_growth")
    # a non-finite step's update is skipped on the device; any other detector decides one
    # step late, after its step's update
    updates = step - 1 if reason == "nonfinite" else step
    assert summary["steps"] == updates and summary["tokens"] == updates * 4 * 32
    assert f"divergence event {reason}" in done.stderr and f"diverged at step {step}" in done.stderr

    events = read_jsonl(run_dir / "events.jsonl")
    assert summary["events"] == len(events) and {e["step"] for e in events} == {step}
    event = events[0]
    assert event["kind"] == reason and event["step"] == step and event["tokens"] == step * 128
    assert event["action"] == "stop" and event["message"] == summary["divergence_detail"]
    if reason != "nonfinite":
        assert event["value"] > event["threshold"]
    # the ring buffer: per-layer statistics of the last steps, the event's step last
    history = event["history"]
    assert 1 <= len(history) <= 16 and history[-1]["step"] == step
    assert [r["step"] for r in history] == list(range(step - len(history) + 1, step + 1))
    for key in ("resid_rms/block_01", "resid_max/block_02", "resid_rms/out"):
        assert key in history[0] and key in event["layers"]
    assert "grad_norm/block_02/mlp" in history[0]
    assert set(event["blame"]) == {"first_nonfinite", "largest_growth"}
    assert summary["diag"]["step"] == step  # the per-layer values at the failure

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] == step and "train/loss" in rows[-1]
    (run,) = offline_runs(run_dir / "wandb")
    assert run.exit_code == 0
    assert run.summary["diverged"] is True and run.summary["diverged_at_step"] == step
    assert run.summary["divergence_reason"] == reason and run.summary["status"] == "diverged"
    markers = [h for h in run.history if f"events/{reason}" in h]
    assert [h["step"] for h in markers] == [step]


def test_nonfinite_stops_even_with_the_other_detectors_off(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "run"
    args = [
        "train",
        *DIVERGING,
        "optim.lr=1e4",
        "optim.grad_clip=0",
        "divergence.spike.enabled=false",
        "divergence.grad_explosion.enabled=false",
        "divergence.action=continue",
        *text_data(*text_files),
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["divergence_reason"] == "nonfinite"
    (event,) = read_jsonl(run_dir / "events.jsonl")
    assert event["kind"] == "nonfinite" and event["value"] is None and event["action"] == "stop"


@pytest.mark.parametrize("action", ["stop", "continue"])
def test_action_stop_or_continue(action, tiny_training):
    """A hair-trigger spike detector fires on batch noise: `stop` ends the run at the first
    event; `continue` records every event and trains to the end."""
    trigger = ["divergence.spike.rel_margin=0.0001", "divergence.spike.patience=1"]
    trigger.append("divergence.spike.ema=0")  # the reference is the previous loss
    rows, summary = tiny_training(*trigger, f"divergence.action={action}", "norm=pre")
    events = read_jsonl(tiny_training.last_dir / "events.jsonl")
    assert events and summary["diverged"] is True
    assert summary["diverged_at_step"] == events[0]["step"] and summary["events"] == len(events)
    assert all(e["kind"] == "spike" and e["action"] == action for e in events)
    if action == "stop":
        assert len(events) == 1 and summary["status"] == "diverged"
        # decided one step late: the event's step was applied, and no step after it
        assert summary["steps"] == events[0]["step"]
        assert max(r["step"] for r in rows if "train/loss" in r) == events[0]["step"]
    else:
        assert summary["status"] == "completed" and summary["steps"] == 20
        assert summary["val_loss"] is not None


def test_multirun_with_a_diverging_job_runs_every_job(tmp_path, cli_env, text_files):
    sweep = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        *DIVERGING,
        "optim.lr=10,1e-3",
        *text_data(*text_files),
        "logger=none",
        f"hydra.sweep.dir={sweep}",
    ]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    statuses = []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()):
        summary = json.loads((job / "summary.json").read_text())
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert (job / "metrics.jsonl").is_file() and (job / "events.jsonl").is_file()
        statuses.append((config["optim"]["lr"], summary["status"]))
    assert statuses == [(10.0, "diverged"), (1e-3, "completed")]


def test_bad_detector_settings_are_one_line_errors(tmp_path, cli_env, text_files):
    for override, message in [
        ("divergence.action=ignore", "divergence.action: Invalid value 'ignore'"),
        ("divergence.spike.rel_margin=null", "divergence.spike needs rel_margin or abs_margin"),
        ("divergence.grad_explosion.factor=0.5", "factor must be > 1"),
        ("divergence.stagnation.after=2", "divergence.stagnation.after must be in [0, 1]"),
        ("diag.every=-1", "diag.every must be >= 0"),
        ("divergence.output_logit_drift.threshold=0", "output_logit_drift.threshold must be > 0"),
        ("optim.z_loss=-1", "optim.z_loss must be >= 0"),
    ]:
        args = ["train", *TINY, *text_data(*text_files), "logger=none", override]
        done = run_cli(args, cwd=tmp_path, env=cli_env)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr, done.stderr
    assert not (tmp_path / "outputs").exists()


def test_every_setting_is_documented_in_its_yaml():
    """Each detector setting carries its meaning and default in a comment."""
    for group in ("divergence", "diag", "probe"):
        text = (REPO / "configs" / group / "default.yaml").read_text()
        settings = [
            ln
            for ln in text.splitlines()
            if ":" in ln and not ln.lstrip().startswith(("#", "-", "defaults"))
        ]
        assert settings
        for line in settings:
            assert "#" in line, f"configs/{group}/default.yaml: {line.strip()} has no comment"


@pytest.mark.parametrize("name", ["attention_logit_growth", "output_logit_drift"])
def test_older_records_read_as_not_watched_by_the_logit_detectors(name):
    """A record written before these detectors (which can stop a run) was not watched by
    them: IMPLIED turns them off and repeats today's other settings, so that resuming it
    with `divergence.<name>.enabled=false` finds no other difference."""
    from normbench.run.record.rundir import IMPLIED, differences

    today = yaml.safe_load((REPO / "configs/divergence/default.yaml").read_text())[name]
    implied = {k.rsplit(".", 1)[1]: v for k, v in IMPLIED.items() if f".{name}." in k}
    assert implied == {**today, "enabled": False}
    off = {"divergence": {name: {**today, "enabled": False}}}
    assert differences({"divergence": {}}, off) == []
    assert differences({"divergence": {}}, {"divergence": {name: today}}) == [
        f"divergence.{name}.enabled: False there, True here"
    ]
