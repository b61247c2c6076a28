"""The command line, end to end in subprocesses: run records, multirun + W&B, bad input."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from normbench.run.record.summary import FIELDS, OPTIONAL

from support import REPO, TINY, read_jsonl, run_cli, text_data
from support.wandb_records import offline_runs

# summary.json's schema is the Summary dataclass; a completed run writes every field but
# the OPTIONAL ones (why it stopped early, its error).
SUMMARY_KEYS = set(FIELDS) - set(OPTIONAL)


def check_run_dir(run_dir: Path, steps: int = 6) -> dict:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert summary["tokens"] == steps * 4 * 32
    assert summary["n_params"] > 0 and summary["tokens_per_s"] > 0 and summary["wall_s"] > 0
    # precision=auto (the default) resolved, with its reason, as normbench/run/hardware.py decides
    assert config["precision"] == "auto" and summary["device"] == "cpu"
    assert summary["precision"] in ("bf16", "fp32") and summary["precision_reason"]
    train_rows = [r for r in rows if "train/loss" in r]
    val_rows = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 4, 6]  # step 1: the loss at init
    assert [r["step"] for r in val_rows] == [3, 6]
    for r in train_rows:
        assert {"step", "tokens", "train/loss", "lr", "grad_norm", "tokens_per_s"} <= set(r)
        assert r["tokens"] == r["step"] * 4 * 32
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] + 0.5
    assert summary["val_loss"] == val_rows[-1]["val/loss"]
    assert summary["best_val_loss"] == min(r["val/loss"] for r in val_rows)
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert summary["val_loss"] < math.log(50257) + 0.1
    return config


NORM_RECORDED = {
    "pre": {"kind": "layernorm", "eps": 1e-5, "bias": True, "alpha0": None, "constants": {}},
    # DeepNorm at N = 2: alpha = (2N)^(1/4) = sqrt(2), beta = (8N)^(-1/4) = 1/2
    "deepnorm": {
        "kind": "rmsnorm",
        "eps": 1e-6,
        "bias": None,
        "alpha0": None,
        "constants": {"alpha": 2**0.5, "beta": 0.5},
    },
}


@pytest.mark.parametrize("placement", ["pre", "deepnorm"])
def test_train_writes_the_run_record(placement, tmp_path, cli_env, text_files):
    run_dir = tmp_path / "run"
    recorded = dict(NORM_RECORDED[placement])
    args = [
        "train",
        f"norm={placement}",
        f"norm.kind={recorded['kind']}",
        *TINY,
        *text_data(*text_files),
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"run_dir: {run_dir}"
    assert done.stderr.splitlines()[-1].startswith(f"next: normbench compare {run_dir}   (")
    config = check_run_dir(run_dir)
    constants = config["norm"].pop("constants")
    assert constants == pytest.approx(recorded.pop("constants"))
    assert config["norm"] == {"name": placement, **recorded}
    assert config["depth"] == 2 and config["data"]["train_path"] == str(text_files[0])
    assert "step 6: val/loss" in done.stderr  # plain progress lines when not on a terminal
    assert (run_dir / "train.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


def test_installed_command_finds_configs_from_any_directory(tmp_path, cli_env, text_files):
    exe = Path(sys.executable).parent / "normbench"
    if not exe.exists():
        pytest.skip("the normbench console script is not installed in this environment")
    done = subprocess.run(
        [str(exe), "train", "--cfg", "job", "norm=post", "norm.kind=rmsnorm"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    assert cfg["norm"]["name"] == "post" and cfg["norm"]["kind"] == "rmsnorm"
    assert run_cli(["--help"], cwd=tmp_path, env=cli_env).stdout.startswith("usage: normbench")


def test_wheel_carries_configs_and_tokenizer(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("normbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"normbench/configs/{p.relative_to(REPO / 'configs')}"
        for p in (REPO / "configs").rglob("*.yaml")
    }
    assert len(configs) > 10 and configs <= names, sorted(configs - names)
    assert {"normbench/assets/gpt2/vocab.bpe", "normbench/assets/gpt2/encoder.json"} <= names
    assert "hydra_plugins/normbench_packed_launcher/__init__.py" in names  # hydra/launcher=packed
    assert not any(n.startswith("hydra_plugins/__init__") for n in names)  # a namespace package
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = "from normbench.run.config.schema import config_dir; print(config_dir())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path / "site",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == str(tmp_path / "site" / "normbench" / "configs"), out.stderr


def test_multirun_with_wandb_offline(tmp_path, cli_env, text_files):
    """Two jobs: two run dirs, two W&B runs grouped by the sweep dir, read back from disk."""
    sweep = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        "norm=pre,post",
        *TINY,
        *text_data(*text_files),
        "diag.every=3",
        f"hydra.sweep.dir={sweep}",
    ]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("run_dir: ")]
    run_dirs = [Path(line.removeprefix("run_dir: ")) for line in lines]
    assert run_dirs == [sweep / "0_pre-d2", sweep / "1_post-d2"]
    assert done.stdout.splitlines()[-1] == lines[-1]
    runs = []
    for run_dir, placement in zip(run_dirs, ["pre", "post"], strict=True):
        check_run_dir(run_dir)
        (run,) = offline_runs(run_dir / "wandb")  # W&B files live inside the run directory
        runs.append(run)
        assert run.group == str(sweep) and run.project == "normbench" and run.job_type == "train"
        assert run.name == f"{placement}-layernorm-d2-lr0.001-s0"
        assert {placement, "layernorm", "depth=2"} <= set(run.tags)
        assert run.config["norm"] == placement and run.config["norm_kind"] == "layernorm"
        assert run.config["depth"] == 2 and run.config["lr"] == 0.001
        assert run.config["block"] == "sequential" and run.config["qk_norm"] == "none"
        assert run.config["cfg"]["norm"]["name"] == placement  # the full resolved config
        assert run.config["precision"] in ("bf16", "fp32") and run.config["precision_reason"]
        assert run.config["device"] == "cpu"
        assert run.config["cfg"]["model"]["d_model"] == 32
        assert run.exit_code == 0
        local = json.loads((run_dir / "summary.json").read_text())
        val_losses = [
            r["val/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in r
        ]
        assert run.summary["val/loss"] == {"min": min(val_losses), "last": val_losses[-1]}
        assert run.summary["status"] == "completed"
        assert run.summary["best_val_loss"] == local["best_val_loss"]
        assert run.metrics["val/loss"].step_metric == "step"
        assert [h["step"] for h in run.history if "val/loss" in h] == [3, 6]
        diag = [h for h in run.history if "grad_norm/block_02/attn" in h]  # per-layer diagnostics
        assert [h["step"] for h in diag] == [3, 6]
        assert {"resid_rms/out", "update_ratio/block_01", "attn_entropy/block_02"} <= set(diag[0])
        assert run.metrics["grad_norm/*"].step_metric == "step"
        assert (
            run.summary["diag"]["grad_norm/block_01/mlp"] == local["diag"]["grad_norm/block_01/mlp"]
        )
        assert "WANDB_API_KEY" not in json.dumps(run.config)
    assert runs[0].id != runs[1].id
    assert len(list(sweep.rglob("run-*.wandb"))) == 2  # one W&B run per job


@pytest.mark.parametrize(
    "sig, code, name",
    [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")],
)
def test_interrupted_run_is_recorded_as_interrupted(sig, code, name, tmp_path, cli_env, text_files):
    """Ctrl-C or a scheduler's SIGTERM: a checkpoint, the record and the W&B run say
    interrupted, with the progress; the exit code says which signal."""
    run_dir = tmp_path / "run"
    args = [
        "train",
        *TINY,
        "train.max_steps=100000",
        "optim.warmup_steps=0",
        *text_data(*text_files),
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "normbench", *args],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.2)
    while time.time() < deadline and not (run_dir / "metrics.jsonl").read_text():
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert err.splitlines()[-1].startswith(
        f"normbench: error: interrupted by {name} after step {summary['steps']}; the checkpoint "
        "and the record are written; resume with: normbench train "
    )
    assert err.splitlines()[-1].endswith(f"hydra.run.dir={run_dir}")
    assert "Error executing job" not in err  # Hydra's own line, before ours
    assert summary["status"] == "interrupted" and summary["stopped_by"] == name
    resume = err.splitlines()[-1].split("resume with: ", 1)[1]
    assert summary["resume_command"] == resume  # for when the terminal lost the line
    assert summary["steps"] >= 2
    assert (run_dir / "checkpoints" / f"step_{summary['steps']:08d}.pt").is_file()
    (run,) = offline_runs(run_dir / "wandb")
    assert run.exit_code == 1 and run.summary["status"] == "interrupted"
    assert out.splitlines()[-1] == f"run_dir: {run_dir}"


def test_wandb_failure_keeps_the_local_record(tmp_path, cli_env, text_files):
    """W&B asked to go online with no credentials and no network: warn, train, record."""
    env = {k: v for k, v in cli_env.items() if k != "WANDB_MODE"}
    run_dir = tmp_path / "run"
    args = [
        "train",
        *TINY,
        *text_data(*text_files),
        "logger.mode=online",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_cli(args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "W&B: could not start the run" in done.stderr
    check_run_dir(run_dir)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "norm=middle"], "unknown norm 'middle'; choose one of: admin, b2t, deep"),
        (["train", "norm.kind=batch"], "norm.kind: Invalid value 'batch', expected one of"),
        (["train", "model.layers=3"], "unknown key 'model.layers'"),
        (["train", "depth=0"], "depth must be >= 1"),
        (["train", "model.d_model=100", "model.n_heads=3"], "is not divisible by model.n_heads=3"),
        (["train", "optim.lr=0"], "optim.lr must be > 0"),
        (["train", "optim.warmup_steps=9", "train.max_steps=5"], "exceeds train.max_steps=5"),
        (["train", "-m", "depth=2,0"], "depth must be >= 1 (got 0)"),
        (["train", "model.context=100000"], "model.context=100000 is longer than the train split"),
        (
            ["train", "data=text", "data.train_path=/no/such.txt", "data.val_path=/x"],
            "is not a file",
        ),
        (["train", "depth=[1"], "cannot parse override 'depth=[1'"),
        (["train", "norm=post", "model.block=parallel"], "not norm=post; use model.block=seq"),
        (["train", "norm=deepnorm", "norm.kind=identity"], "use norm=none for a no-norm"),
        (["train", "-m", "norm=pre,admin", "norm.kind=identity"], "norm=admin with norm.kind"),
        (["list", "--html"], "list takes no arguments but --markdown"),
        (
            ["frobnicate"],
            "unknown command 'frobnicate'; choose one of: train, probe, compare, dashboard, prepare, list",
        ),
    ],
)
def test_bad_input_one_line_no_traceback_nothing_written(
    args, message, tmp_path, cli_env, text_files
):
    if "data=text" not in args and args[0] == "train":
        args = [*args, *text_data(*text_files)]
    done = run_cli(
        [*args, "logger=none"] if args[0] == "train" else args, cwd=tmp_path, env=cli_env
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("normbench: error: ") and message in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_full_error_shows_the_traceback(tmp_path, cli_env, text_files):
    env = {**cli_env, "HYDRA_FULL_ERROR": "1"}
    done = run_cli(["train", "depth=0", "logger=none"], cwd=tmp_path, env=env)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConfigError" in done.stderr


def on_terminal(
    args: list[str], cwd: Path, env: dict[str, str], columns: int = 150
) -> tuple[int, str, str]:
    """Run `python -m normbench <args>` with stdin and stderr on a pseudo-terminal `columns`
    wide (0: one that reports no size, 0 x 0): (exit code, everything it received, stdout)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    rows = 40 if columns else 0
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "normbench", *args],
        cwd=cwd,
        env=env,
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    code = proc.wait(timeout=120)
    return code, screen.decode(errors="replace"), proc.stdout.read().decode()


def test_progress_bar_on_a_terminal(tmp_path, cli_env, text_files):
    """On a terminal, stderr shows a bar with step, loss, tokens/s and the time left."""
    run_dir = tmp_path / "r"
    args = ["train", *TINY, *text_data(*text_files), "logger=none", f"hydra.run.dir={run_dir}"]
    code, screen, stdout = on_terminal(args, tmp_path, cli_env)
    assert code == 0, screen
    frames = screen.split("\r")
    bar = next(f for f in frames if "6/6" in f and "loss=" in f)
    assert "tok_s=" in bar and "<" in bar  # elapsed<remaining
    assert stdout.strip() == f"run_dir: {run_dir}"


def test_terminal_feedback_from_the_first_step_and_no_broken_line(tmp_path, cli_env, text_files):
    """The start-up line comes whole before the bar; after step 1 (not a log point) the bar
    shows a rate and an ETA; every message is a line of its own, never glued to the bar."""
    args = ["train", *TINY, "train.log_every=5", "precision=fp32", *text_data(*text_files),
            "logger=none", f"hydra.run.dir={tmp_path / 'r'}"]  # fmt: skip
    code, screen, _ = on_terminal(args, tmp_path, cli_env)
    assert code == 0, screen
    lines = screen.replace("\r\n", "\n").split("\n")
    startup = next(i for i, line in enumerate(lines) if "model: " in line)
    assert lines[startup].startswith("model: pre-layernorm, depth 2, d_model 32, "), screen
    assert lines[startup].endswith(" validation tokens"), screen
    assert not any("step/s" in line or "s/step" in line for line in lines[:startup]), screen
    first = re.search(r"\| 1/6 \[00:\d\d<\d\d:\d\d, +(\d+\.\d+)(s/step|step/s)", screen)
    assert first and float(first.group(1)) > 0, screen
    messages = [line.split("\r")[-1] for line in lines if "val/loss" in line or "done:" in line]
    assert len(messages) == 3, screen  # step 3 and step 6 validation, the final line
    assert all(m.startswith(("step ", "done: ")) for m in messages), screen


def test_a_terminal_that_reports_no_size_still_shows_the_bar(tmp_path, cli_env, text_files):
    """Some terminals (a bare pty, `docker exec -t`, `script`) report 0 columns; tqdm's
    dynamic width then drew nothing at all. The bar falls back to a fixed width."""
    args = [
        "train",
        *TINY,
        *text_data(*text_files),
        "logger=none",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    code, screen, _ = on_terminal(args, tmp_path, cli_env, columns=0)
    assert code == 0, screen
    assert re.search(r"\| 1/6 \[00:\d\d<\d\d:\d\d, +\d+\.\d+(s/step|step/s)", screen), screen
    assert "6/6" in screen, screen


def test_list_prints_the_catalogue_and_the_readme_embeds_it(tmp_path, cli_env):
    """`normbench list` names every placement and kind with its paper; the README's tables are
    `normbench list --markdown` verbatim (regenerate them when this fails)."""
    from normbench.model.kinds import KINDS
    from normbench.model.placements import PLACEMENTS

    done = run_cli(["list"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    entries = [ln.split() for ln in done.stdout.splitlines() if ln[:2] == "  " and ln[2] != " "]
    rows = {words[0]: words[1] for words in entries}  # name, paper id, description
    for name, cls in [*PLACEMENTS.items(), *KINDS.items()]:
        assert rows.get(name) == cls.paper, name
    markdown = run_cli(["list", "--markdown"], cwd=tmp_path, env=cli_env).stdout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- normbench list --markdown -->\n", "<!-- end of normbench list -->"
    assert begin in readme and end in readme
    embedded = readme.split(begin, 1)[1].split(end, 1)[0]
    assert embedded.strip() == markdown.strip()
    for name in [*PLACEMENTS, *KINDS]:
        assert f"| `{name}` |" in markdown
