"""Reliability: resume after kill -9, graceful signals, faults, determinism, bad input."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import resource
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from normbench.run.record.checkpoint import checkpoints, verified

from support import TINY, cli_environment, read_jsonl, run_cli, start_cli, text_data, wait_for
from support.wandb_records import offline_runs

# fp32 for bit-identical results; a checkpoint every 3 steps, everything logged every step
RUN = [*TINY, "train.max_steps=12", "train.ckpt_every=3", "train.log_every=1"]
RUN += ["train.eval_every=4", "diag.every=4", "precision=fp32", "optim.warmup_steps=2"]
TIMING = {"tokens_per_s"}  # wall-clock figures differ between runs; everything else may not


def start(args: list[str], cwd: Path, env: dict[str, str], **kw) -> subprocess.Popen:
    return start_cli(["train", *args], cwd, env, **kw)


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if "train/loss" in row:
            steps.append(row["step"])
    return steps


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_files):
    """The uninterrupted run that every resumed run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    env = cli_environment(root)
    done = run_cli(["train", *RUN, *text_data(*text_files), f"hydra.run.dir={root / 'run'}"],
                   cwd=root, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.mark.parametrize("kill_after", [4, 8])
def test_kill_9_then_resume_gives_the_uninterrupted_run(
    kill_after, reference, tmp_path, cli_env, text_files
):
    """SIGKILL at an arbitrary step (after a checkpoint, mid-interval), then the same command:
    the metrics are bit-identical to the uninterrupted run's, every step once, and W&B
    continues the same run id."""
    run_dir = tmp_path / "run"
    args = [*RUN, *text_data(*text_files), f"hydra.run.dir={run_dir}"]
    proc = start(args, tmp_path, cli_env)
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = max(logged_steps(run_dir))
    assert killed_at < 12 and list((run_dir / "checkpoints").glob("step_*.pt"))
    done = run_cli(["train", *args], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "resumed after step" in done.stderr
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert comparable(rows) == comparable(read_jsonl(reference / "metrics.jsonl"))
    assert logged_steps(run_dir) == list(range(1, 13))  # none twice, none missing
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    for key in ("val_loss", "best_val_loss", "tokens", "diag", "events", "objective"):
        assert summary[key] == expected[key], key
    # W&B: the resumed run continues the killed one's id (the killed run's file may lack
    # what was still buffered when the process died)
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    assert {f.name.rsplit("-", 1)[1] for f in folders} == {summary["wandb"]["id"]}
    (resumed,) = offline_runs(folders[-1])
    assert resumed.id == summary["wandb"]["id"] and resumed.exit_code == 0


def killed_after(step: int, tmp_path: Path, cli_env: dict, text_files) -> tuple[Path, list]:
    """A run killed (-9) once `step` is logged; its folder and the resume's arguments."""
    run_dir = tmp_path / "run"
    args = [*RUN, *text_data(*text_files), f"hydra.run.dir={run_dir}", "logger=none"]
    proc = start(args, tmp_path, cli_env)
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= step)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return run_dir, ["train", *args]


def test_a_damaged_middle_line_costs_only_itself(reference, tmp_path, cli_env, text_files):
    """A garbled line and a JSON line that is not an object in the middle of metrics.jsonl:
    the resume names them in one warning, keeps every valid row before and after them, and
    ends with the uninterrupted run's rows (but for the two damaged ones)."""
    run_dir, args = killed_after(7, tmp_path, cli_env, text_files)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1], lines[3] = '{"step": 2, "train/lo\n', "[1, 2, 3]\n"
    path.write_text("".join(lines))
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"{path}: lines 2, 4 not a JSON object; left out, every other row kept" in done.stderr
    # the killed run's rows are the reference's: all of them but the two damaged ones
    expected = [r for i, r in enumerate(read_jsonl(reference / "metrics.jsonl")) if i not in (1, 3)]
    assert comparable(read_jsonl(path)) == comparable(expected)


def test_rows_lost_before_reaching_the_disk_are_named(tmp_path, cli_env, text_files):
    """A crash of the machine loses appended rows that were not yet on disk: the checkpoint
    records how many rows it covers, and the resume says, naming the file, how many are
    missing (the rows are fsynced at every checkpoint, so this takes a loss the disk itself
    caused, simulated here by cutting the file)."""
    run_dir, args = killed_after(7, tmp_path, cli_env, text_files)
    (step, ckpt), *_ = reversed(checkpoints(run_dir))
    covered = torch.load(ckpt, weights_only=True)["record_rows"]["metrics"]
    path = run_dir / "metrics.jsonl"
    rows = path.read_text().splitlines(keepends=True)
    path.write_text("".join(rows[: covered - 2]))
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert (
        f"{path} holds {covered - 2} rows up to step {step}, but the checkpoint covers "
        f"{covered}: 2 rows were lost before they reached the disk"
    ) in done.stderr


def test_sigterm_checkpoints_then_the_same_command_resumes(
    reference, tmp_path, cli_env, text_files
):
    run_dir = tmp_path / "run"
    args = [*RUN, *text_data(*text_files), f"hydra.run.dir={run_dir}", "logger=none"]
    proc = start(args, tmp_path, cli_env)
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= 5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1].startswith("normbench: error: interrupted by SIGTERM after step")
    summary = json.loads((run_dir / "summary.json").read_text())
    step = summary["steps"]
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGTERM"
    assert (run_dir / "checkpoints" / f"step_{step:08d}.pt").is_file()
    assert out.strip() == f"run_dir: {run_dir}"
    done = run_cli(["train", *args], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"resumed after step {step}" in done.stderr
    assert comparable(read_jsonl(run_dir / "metrics.jsonl")) == comparable(
        read_jsonl(reference / "metrics.jsonl")
    )


def test_closing_the_terminal_checkpoints_then_the_same_command_resumes(
    reference, tmp_path, cli_env, text_files
):
    """The terminal is closed mid-run: its pty hangs up, the run (the session leader, as a
    shell would be) gets SIGHUP and every later write to the terminal fails with EIO. The
    step finishes, the checkpoint and the record are written, the exit code is 129; the
    same command resumes and ends as the uninterrupted run did."""
    run_dir = tmp_path / "run"
    args = [*RUN, *text_data(*text_files), f"hydra.run.dir={run_dir}", "logger=none"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "normbench", "train", *args],
        cwd=tmp_path, env=cli_env, stdin=follower, stdout=follower, stderr=follower,
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(follower)
    screen = b""
    while max(logged_steps(run_dir), default=0) < 3 and proc.poll() is None:
        if select.select([leader], [], [], 0.01)[0]:
            screen += os.read(leader, 65536)
    proc.send_signal(signal.SIGSTOP)  # no step more until the hang-up (SIGHUP, SIGCONT)
    os.close(leader)
    assert proc.wait(timeout=120) == 129, screen.decode(errors="replace")
    summary = json.loads((run_dir / "summary.json").read_text())
    step = summary["steps"]
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGHUP"
    assert 3 <= step < 12 and (run_dir / "checkpoints" / f"step_{step:08d}.pt").is_file()
    assert (
        f"step {step}: stopped (SIGHUP); checkpoint written" in (run_dir / "train.log").read_text()
    )
    done = run_cli(["train", *args], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"resumed after step {step}" in done.stderr
    assert comparable(read_jsonl(run_dir / "metrics.jsonl")) == comparable(
        read_jsonl(reference / "metrics.jsonl")
    )


def test_under_nohup_a_hang_up_changes_nothing(tmp_path, cli_env, text_files):
    """`nohup normbench train ...`: SIGHUP is ignored when normbench starts and stays ignored,
    so the run goes on to the end."""
    run_dir = tmp_path / "run"
    args = [*TINY, "train.max_steps=20", "train.eval_every=20", "train.log_every=1",
            "precision=fp32", *text_data(*text_files), f"hydra.run.dir={run_dir}",
            "logger=none"]  # fmt: skip
    proc = subprocess.Popen(
        ["nohup", sys.executable, "-m", "normbench", "train", *args],
        cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= 2)
    proc.send_signal(signal.SIGHUP)
    at = max(logged_steps(run_dir))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGHUP" not in err, err
    assert at < 20 and logged_steps(run_dir) == list(range(1, 21))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_checkpoints_by_time_lose_minutes_not_the_run(reference, tmp_path, cli_env, text_files):
    """train.ckpt_every_min with no step-based checkpoint due (train.ckpt_every=0): a tiny
    interval makes one due after every step. Killed mid-run, the run resumes from its newest
    one (with another interval: train.ckpt_* may change on resume); pruning keeps the newest
    train.ckpt_keep; the results are the uninterrupted run's."""
    run_dir = tmp_path / "run"
    args = [*RUN, "train.ckpt_every=0", "train.ckpt_keep=3", *text_data(*text_files),
            f"hydra.run.dir={run_dir}", "logger=none"]  # fmt: skip
    proc = start([*args, "train.ckpt_every_min=1e-9"], tmp_path, cli_env)
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    saved = [int(p.stem.split("_")[1]) for p in verified(run_dir)]
    assert 3 <= len(saved) <= 4 and 4 <= saved[-1] < 12, saved  # 4: killed before pruning
    done = run_cli(["train", *args, "train.ckpt_every_min=2e-9"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"resumed after step {saved[-1]} " in done.stderr
    assert [step for step, _ in checkpoints(run_dir)] == [10, 11, 12]
    assert comparable(read_jsonl(run_dir / "metrics.jsonl")) == comparable(
        read_jsonl(reference / "metrics.jsonl")
    )


def test_a_second_ctrl_c_stops_at_once(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.max_steps=100000", "train.eval_every=100000", "precision=fp32",
            *text_data(*text_files), f"hydra.run.dir={run_dir}", "logger=none"]  # fmt: skip
    proc = start(args, tmp_path, cli_env)
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"


def test_finished_run_is_left_alone(reference, tmp_path, cli_env, text_files):
    """A requeued job whose run already completed does nothing (and says so)."""
    before = (reference / "metrics.jsonl").read_text()
    args = ["train", *RUN, *text_data(*text_files), f"hydra.run.dir={reference}"]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "already completed; nothing to do" in done.stderr
    assert (reference / "metrics.jsonl").read_text() == before


def test_resume_never_and_resume_from_a_path(reference, tmp_path, cli_env, text_files):
    data = text_data(*text_files)
    never = run_cli(["train", *RUN, *data, f"hydra.run.dir={reference}", "train.resume=never"],
                    cwd=tmp_path, env=cli_env)  # fmt: skip
    assert never.returncode == 2 and never.stderr.count("\n") == 1
    assert "train.resume=never but" in never.stderr and "already holds a run record" in never.stderr
    (ckpt,) = sorted((reference / "checkpoints").glob("step_*.pt"))  # ckpt_keep=1: the last
    other = tmp_path / "branch"
    done = run_cli(["train", *RUN, *data, f"hydra.run.dir={other}", f"train.resume={ckpt}",
                    "logger=none"], cwd=tmp_path, env=cli_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resumed after step 12" in done.stderr


def test_a_damaged_checkpoint_is_never_used(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "run"
    data = text_data(*text_files)
    args = [*RUN, "train.max_steps=6", "train.ckpt_keep=2", *data, "logger=none"]
    first = run_cli(["train", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    old, new = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    new.write_bytes(new.read_bytes()[: len(new.read_bytes()) // 2])  # cut short
    bad = run_cli(["train", *args, f"hydra.run.dir={tmp_path / 'x'}", f"train.resume={new}"],
                  cwd=tmp_path, env=cli_env)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "does not match its sha256 (cut short or altered); it is not used" in bad.stderr
    assert not (tmp_path / "x").exists()
    # auto: the damaged newest is skipped with a warning, the older one is used
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["status"] = "interrupted"  # as if the run had been stopped after step 6
    (run_dir / "summary.json").write_text(json.dumps(summary))
    again = run_cli(["train", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert (
        "does not match its sha256" in again.stderr and "trying an older checkpoint" in again.stderr
    )
    assert f"resumed after step {int(old.stem.split('_')[1])}" in again.stderr


def test_a_damaged_token_cache_is_rebuilt(tmp_path, cli_env, text_files):
    args = ["train", *TINY, *text_data(*text_files), "logger=none"]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    (cached,) = Path(cli_env["NORMBENCH_CACHE_DIR"]).glob("tokens/*/train.bin")
    data = bytearray(cached.read_bytes())
    data[100] ^= 0xFF
    cached.write_bytes(bytes(data))  # same size, different content
    second = run_cli([*args, f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path, env=cli_env)
    assert second.returncode == 0, second.stderr
    assert "is damaged (train.bin does not match its sha256); rebuilding it" in second.stderr
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["val_loss"] == b["val_loss"]  # the rebuilt cache is the original one


def test_disk_full_mid_run_stops_cleanly_keeping_the_last_checkpoint(tmp_path, cli_env, text_files):
    """After the first checkpoint the process may write no file above 64 KiB (the kernel's
    file-size limit, as a full disk would): the next checkpoint fails, the run stops with a
    clear message, the partial file is gone and the older checkpoint stays."""
    run_dir = tmp_path / "run"
    args = [*TINY, "train.max_steps=100000", "train.ckpt_every=3", "train.eval_every=100000",
            *text_data(*text_files), f"hydra.run.dir={run_dir}", "logger=none"]  # fmt: skip
    proc = start(args, tmp_path, cli_env)
    wait_for(lambda: list((run_dir / "checkpoints").glob("step_*.pt.sha256")))
    limit = 64 * 1024
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert (
        "could not write the checkpoint of step 6" in err
        and "the checkpoint of step 3 is kept" in err
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "could not write the checkpoint" in summary["error"]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["step_00000003.pt", "step_00000003.pt.sha256"]


def test_unwritable_output_dir_is_refused_before_anything_runs(tmp_path, cli_env, text_files):
    done = run_cli(["train", *TINY, *text_data(*text_files), "hydra.run.dir=/proc/normbench/run"],
                   cwd=tmp_path, env=cli_env)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "hydra.run.dir=/proc/normbench/run cannot be written" in done.stderr


def test_two_processes_never_share_a_run_directory(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.max_steps=100000", *text_data(*text_files), f"hydra.run.dir={run_dir}",
            "logger=none"]  # fmt: skip
    first = start(args, tmp_path, cli_env)
    try:
        wait_for(lambda: max(logged_steps(run_dir), default=0) >= 1)
        second = run_cli(["train", *args], cwd=tmp_path, env=cli_env)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"another normbench process is writing into {run_dir}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)


def test_wandb_failing_mid_run_leaves_training_and_the_record_alone(tmp_path, cli_env, text_files):
    """The W&B service process dies during training: one warning saying how to sync later,
    training goes on, the local record is complete."""
    run_dir = tmp_path / "run"
    args = [*TINY, "train.max_steps=40", "train.log_every=1", *text_data(*text_files),
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = start(args, tmp_path, cli_env)
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= 2)
    service = [p for p in _children(proc.pid) if "wandb" in _cmdline(p)]
    assert service, "no W&B service process found"
    for pid in service:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert err.count("W&B: could not") == 1 and "wandb sync" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and logged_steps(run_dir) == list(range(1, 41))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found += [int(entry.name), *_children(int(entry.name))]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_same_seed_same_curve_other_seed_other_curve(tiny_training):
    a, _ = tiny_training("seed=3")
    b, _ = tiny_training("seed=3")
    c, _ = tiny_training("seed=4")
    assert comparable(a) == comparable(b)
    assert [r["train/loss"] for r in a if "train/loss" in r] != [
        r["train/loss"] for r in c if "train/loss" in r
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["depth=deep"], "depth: Value 'deep' of type 'str' could not be converted to Integer"),
        (["model.dropout=1.0"], "model.dropout must be in [0, 1) (got 1.0)"),
        (["model.dropout=-0.1"], "model.dropout must be in [0, 1) (got -0.1)"),
        (["optim.lr=-1e-3"], "optim.lr must be > 0 (got -0.001)"),
        (["optim.warmup_steps=7"], "optim.warmup_steps=7 exceeds train.max_steps=6"),
        (["train.maxsteps=3"], "unknown key 'train.maxsteps' (did you mean train.max_steps?)"),
        (["train.ckpt_keep=0"], "train.ckpt_keep must be >= 1 (got 0)"),
        (["train.resume=/no/such.pt"], "train.resume=/no/such.pt: no such checkpoint file"),
        (["train.resume=''"], "train.resume must be auto, never or the path of a checkpoint"),
        (["seed=-1"], "seed must be in [0, 2^64) (got -1)"),
        ([f"seed={2**64}"], f"seed must be in [0, 2^64) (got {2**64})"),
        (["optim.eps=0"], "optim.eps must be > 0 (got 0.0)"),
        (["optim.eps=nan"], "optim.eps must be a finite number (got nan)"),
        (["optim.weight_decay=inf"], "optim.weight_decay must be a finite number (got inf)"),
        (["norm.eps=inf"], "norm.eps must be a finite number (got inf)"),
        (["optim.betas=[0.9,nan]"], "optim.betas[1] must be a finite number (got nan)"),
        (["EMPTY"], "is empty; give a file with text in it"),
        (["LATIN1"], "is not UTF-8 text"),
        (["SHORTVAL"], "model.context=32 is longer than the validation split"),
    ],
)
def test_bad_input_battery(extra, message, tmp_path, cli_env, text_files):
    train, val = text_files
    files = {"EMPTY": tmp_path / "empty.txt", "LATIN1": tmp_path / "latin1.txt",
             "SHORTVAL": tmp_path / "short.txt"}  # fmt: skip
    files["EMPTY"].write_text("  \n\n")
    files["LATIN1"].write_bytes("café crème\n".encode("latin-1"))
    files["SHORTVAL"].write_text("a few words\n")
    if extra[0] in files:
        data = text_data(train, files[extra[0]])
        extra = []
    else:
        data = text_data(train, val)
    done = run_cli(["train", *TINY, *data, "logger=none", *extra], cwd=tmp_path, env=cli_env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
    assert not (tmp_path / "outputs").exists()
