"""Sweeps and `normbench compare`: a real multirun, its report, the browser, the launchers."""

from __future__ import annotations

import base64
import csv
import itertools
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import REPO, TINY, compose_config, read_jsonl, run_cli, text_data
from support.wandb_records import offline_runs


def records(sweep_dir: Path) -> dict[tuple[str, float], dict]:
    out = {}
    for job in sweep_dir.iterdir():
        if (job / "summary.json").is_file():
            config = yaml.safe_load((job / "config.yaml").read_text())
            summary = json.loads((job / "summary.json").read_text())
            out[(config["norm"]["name"], config["optim"]["lr"])] = summary
    return out


def test_compare_writes_every_file_and_the_numbers_of_the_records(sweep, tmp_path, cli_env):
    done = run_cli(["compare", str(sweep)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    report = sweep / "compare"
    assert done.stdout.strip() == f"report: {report / 'index.html'}"
    names = {p.name for p in report.iterdir()}
    for name in ("index.html", "summary.csv", "summary.md", "stability_pre.png",
                 "stability_post.svg", "curves_lr=0.001.png", "curves_lr=10.svg",
                 "layers_lr=0.001.png"):  # fmt: skip
        assert name in names, name
    assert any(n.startswith("divergence_") and n.endswith(".png") for n in names)

    runs = records(sweep)
    assert len(runs) == 4
    with open(report / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["norm"], float(r["lr"])) for r in rows] == [
        ("post", 0.001), ("post", 10.0), ("pre", 0.001), ("pre", 10.0)
    ]  # fmt: skip
    for row in rows:
        summary = runs[(row["norm"], float(row["lr"]))]
        assert row["runs"] == "1" and row["seeds"] == "0"
        assert int(row["diverged"]) == (summary["status"] == "diverged")
        if summary["status"] == "completed":
            assert float(row["val_loss_mean"]) == pytest.approx(summary["val_loss"], rel=1e-12)
            assert float(row["best_val_loss_mean"]) == pytest.approx(summary["best_val_loss"])
            assert row["val_loss_std"] == ""  # one seed: no spread
        else:
            assert row["val_loss_mean"] == "" and row["diverged_at_steps"] == str(
                summary["diverged_at_step"]
            )
        assert float(row["tokens_per_s_mean"]) == pytest.approx(summary["tokens_per_s"])
    assert [int(r["diverged"]) for r in rows] == [0, 1, 0, 1]
    md = (report / "summary.md").read_text()
    assert "| post | 2 | 10 | 1 | - | - | 1/1 (step" in md
    # the diverged cell of each stability map is marked and counted (SVG text stays text)
    for norm in ("pre", "post"):
        svg = (report / f"stability_{norm}.svg").read_text()
        assert "✕ 1/1 diverged" in svg and "1/2 runs diverged" in svg
    from normbench.run.monitor.divergence import DETECTORS

    curves = (report / "curves_lr=10.svg").read_text()
    assert sum(curves.count(f">{kind}<") for kind in DETECTORS) >= 2  # one per diverged run
    # the mechanisms: the largest attention logit and log Z over training, events marked
    for lr in ("0.001", "10"):
        svg = (report / f"mechanisms_lr={lr}.svg").read_text()
        assert "largest attention logit (any layer)" in svg and "mean log Z" in svg
    mechanisms = (report / "mechanisms_lr=10.svg").read_text()
    assert sum(mechanisms.count(f">{kind}<") for kind in DETECTORS) >= 4  # in both panels

    # index.html: self-contained, every figure embedded as a PNG that decodes
    page = (report / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = [n for n in names if n.endswith(".png")]
    assert len(images) == len(pngs)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http://" not in page and "https://" not in page  # nothing fetched
    assert page.count("<tr") == 1 + 4 + 1 + 4  # summary head + rows, runs head + rows


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None and os.environ.get("NORMBENCH_REQUIRE_BROWSER") != "1",
    reason="Debian's chromium is not installed (.ci/run installs it and requires this test)",
)
def test_index_html_renders_in_headless_chromium(sweep, tmp_path, cli_env):
    """The page opens offline in a browser with no errors, and the figures are on screen."""
    assert chromium(), "chromium is required here (NORMBENCH_REQUIRE_BROWSER=1)"
    out = tmp_path / "report"
    assert (
        run_cli(["compare", str(sweep), "--out", str(out)], cwd=tmp_path, env=cli_env).returncode
        == 0
    )
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    page = (out / "index.html").as_uri()
    done = subprocess.run(
        [chromium(), *flags, "--window-size=1400,3000", f"--screenshot={shot}", page],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), done.stderr[-2000:]
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert "Failed to load resource" not in done.stderr and "net::ERR" not in done.stderr
    dom = subprocess.run([chromium(), *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120).stdout  # fmt: skip
    assert dom.count("<img") == len(list(out.glob("*.png"))) and "normbench compare" in dom

    import matplotlib.image
    import numpy as np

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.std() > 20  # not blank
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 200  # figures, not just text on white

    def seen(hex_colour: str, tol: int = 12) -> bool:
        want = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return bool((np.abs(pixels - want).max(axis=-1) <= tol).any())

    assert seen("#1f77b4") and seen("#ff7f0e")  # the two placements' curves are drawn
    assert seen("#c00000")  # the diverged cells' marking


def test_compare_logs_the_report_to_wandb(sweep, tmp_path, cli_env):
    out = tmp_path / "report"
    done = run_cli(["compare", str(sweep), "--out", str(out), "--wandb"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    (run,) = offline_runs(out / "wandb")
    assert run.job_type == "compare" and run.exit_code == 0
    train_run = offline_runs(next(sweep.glob("0_*")) / "wandb")[0]
    assert run.group == train_run.group == str(sweep) and run.project == "normbench"
    (row,) = [h for h in run.history if "compare/summary/_type" in h]  # media: nested keys
    assert row["compare/summary/_type"] == "table-file" and row["compare/summary/ncols"] > 10
    images = {
        k.rsplit("/", 1)[0] for k, v in row.items() if k.endswith("/_type") and v == "image-file"
    }
    assert "compare/stability/stability_post" in images
    assert len(images) == len(list(out.glob("*.png")))
    assert run.summary["runs"] == 4 and run.summary["diverged"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/dir"], "/no/such/dir: no such file or directory"),
        (["EMPTY"], "no run records (folders with summary.json and config.yaml) or probe records"),
        (["SWEEP", "--x", "colour"], "unknown key 'colour'; the runs have:"),
        (["SWEEP", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: paths"),
    ],
)
def test_compare_bad_input_is_one_line(args, message, sweep, tmp_path, cli_env):
    (tmp_path / "empty").mkdir()
    args = [{"EMPTY": str(tmp_path / "empty"), "SWEEP": str(sweep)}.get(a, a) for a in args]
    out = tmp_path / "report"
    done = run_cli(["compare", *args, "--out", str(out)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not out.exists() and not list(tmp_path.glob(".report.tmp-*"))


def test_axes_follow_what_varies(sweep):
    from normbench.analysis.records import find_runs
    from normbench.analysis.table import choose_axes, varying_keys

    runs = find_runs([str(sweep)])
    assert varying_keys(runs) == ["norm.name", "optim.lr"]  # not the derived norm.* keys
    axes = choose_axes(runs, None, None, None)
    assert (axes.x, axes.y, axes.group_by) == ("optim.lr", "depth", ["optim.lr"])
    assert axes.config_keys == ["norm.name", "depth", "optim.lr"]  # the map's axes are shown
    axes = choose_axes(runs, "depth", "lr", ["norm"])
    assert (axes.x, axes.y, axes.group_by) == ("depth", "optim.lr", ["norm.name"])
    runs_glob = find_runs([str(sweep / "*_pre-d2")])
    assert len(runs_glob) == 2


def test_submitit_local_multirun_runs_both_jobs(tmp_path, cli_env, text_files):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=submitit_local", "norm=pre,post", *TINY,
            *text_data(*text_files), "logger=none", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    for job in ("0_pre-d2", "1_post-d2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 6
        assert len(read_jsonl(sweep / job / "metrics.jsonl")) > 0


def test_joblib_jobs_share_the_cores(tmp_path, cli_env, text_files):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
            *TINY, *text_data(*text_files), "logger=none", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    cores = len(os.sched_getaffinity(0))
    for job in sweep.glob("*_pre-d2"):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["threads"] == max(1, cores // 2)


def test_optuna_preset_ranks_a_diverged_trial_last(tmp_path, cli_env, text_files):
    """hparams_search=optuna_lr over lr in {1e-3, 10}: the diverged trials get a finite
    penalty, the study finishes, and the best trial is a completed one."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=6",
            "optim.lr=choice(0.001,10)", *TINY, "optim.warmup_steps=0", "precision=fp32",
            *text_data(*text_files), "logger=none", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 6
    diverged = [s for s in summaries if s["status"] == "diverged"]
    completed = [s for s in summaries if s["status"] == "completed"]
    assert diverged and completed
    assert all(100 < s["objective"] <= 101 for s in diverged)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_params"]["optim.lr"] == 0.001
    assert result["best_value"] == pytest.approx(min(s["best_val_loss"] for s in completed))


def sweep_files() -> list[Path]:
    return sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", sweep_files(), ids=lambda p: p.name)
def test_wandb_sweep_files_are_valid_hydra_overrides(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] in ("grid", "random", "bayes")
    assert spec["command"] == ["${env}", "${interpreter}", "-m", "normbench", "train",
                               "${args_no_hyphens}"]  # fmt: skip
    assert spec["metric"]["name"] in ("objective", "val/loss")  # metrics the runs log
    choices = {}
    for key, param in spec["parameters"].items():
        if "values" in param:
            choices[key] = param["values"]
        elif "value" in param:
            choices[key] = [param["value"]]
        else:  # a distribution: its bounds
            assert param["distribution"] in ("uniform", "log_uniform_values", "int_uniform")
            choices[key] = [param["min"], param["max"]]
        for value in choices[key]:  # what the agent can format as key=value
            assert isinstance(value, (int, float, str)) and "=" not in str(value)
    keys = list(choices)
    combos = list(itertools.product(*choices.values()))
    for combo in combos if len(combos) <= 200 else combos[::7]:
        overrides = [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
        cfg = compose_config(*overrides)  # composes and validates, or raises
        assert str(cfg.norm.name) == str(
            dict(zip(keys, combo, strict=True)).get("norm", cfg.norm.name)
        )


@pytest.mark.parametrize("preset, jobs", [("stability_grid", 144), ("stability_cpu", 12)])
def test_sweep_presets_run_with_one_override(preset, jobs):
    from omegaconf import open_dict

    from normbench.launch import hydra_args, job_configs
    from normbench.run.config.resolve import resolve
    from normbench.run.config.schema import register_configs

    register_configs()
    _, args = hydra_args(["-m", f"experiment={preset}", "logger=none"])
    configs = job_configs(args, "train")
    assert len(configs) == jobs
    for cfg in configs[:: max(1, jobs // 12)]:
        with open_dict(cfg):
            del cfg["hydra"]
        resolve(cfg)
    assert {str(c.norm.name) for c in configs} >= {"pre", "post"}
    assert len({(str(c.norm.name), c.depth, c.optim.lr) for c in configs}) > 1
    assert math.isfinite(configs[0].optim.lr)


def test_a_crashed_job_does_not_stop_the_others(tmp_path, cli_env, text_files):
    """Job 0 cannot allocate its embedding under the process's memory limit (RLIMIT_DATA,
    as a cluster's per-job limit: a crash at run time, past every check, which counts the
    machine's free memory); job 1 still runs. Hydra exits 1 at the end; compare counts the
    failed run."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))

    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "normbench", "train", "-m", "model.vocab_size=30000000,50304",
            *TINY, *text_data(*text_files), "logger=none", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                          preexec_fn=limit, timeout=600)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith("normbench: error: RuntimeError:")
    crashed = json.loads((sweep / "0_pre-d2" / "summary.json").read_text())
    assert crashed["status"] == "failed" and "allocate" in crashed["error"]
    finished = json.loads((sweep / "1_pre-d2" / "summary.json").read_text())
    assert finished["status"] == "completed" and finished["steps"] == 6
    report = run_cli(["compare", str(sweep)], cwd=tmp_path, env=cli_env)
    assert report.returncode == 0, report.stderr
    with open(sweep / "compare" / "summary.csv") as f:
        rows = {r["model.vocab_size"]: r for r in csv.DictReader(f)}
    assert rows["30000000"]["failed"] == "1" and rows["50304"]["completed"] == "1"


def test_a_key_missing_from_older_records_is_not_an_axis():
    """Records written before a config key existed do not make it an axis; a key whose
    values differ among the records that have it does."""
    from normbench.analysis.records import Run
    from normbench.analysis.table import varying_keys

    def run(name: str, **config) -> Run:
        return Run(Path(name), {"norm.name": "pre", "optim.lr": 0.1, **config}, {}, [], [])

    old, new = run("a"), run("b", **{"train.compile": False})
    assert varying_keys([old, new]) == []
    assert varying_keys([old, new, run("c", **{"train.compile": True})]) == ["train.compile"]
    assert varying_keys([old, run("d", **{"norm.name": "post"})]) == ["norm.name"]


def test_a_figures_labels_are_inside_its_image(tmp_path):
    """A colour bar's label longer than the figure is high (a stability map of one depth)
    is not cut off: the saved image holds it."""
    from normbench.analysis.report.figures.style import DPI, pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 1.5), layout="constrained")
    image = ax.imshow([[1.0, 2.0]])
    label = "final val/loss (nats), mean over seeds, a label longer than the figure"
    bar = fig.colorbar(image, ax=ax, label=label)
    fig.canvas.draw()
    needed = bar.ax.yaxis.label.get_window_extent().height * DPI / fig.dpi  # pixels
    png = save(fig, tmp_path, "figure")
    assert plt.imread(png).shape[0] >= needed
