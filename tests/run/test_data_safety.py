"""A result is never lost or returned for another config: run and sweep directories belong to
one configuration, checkpoints are pruned by what verifies, a full disk still ends with a
record, and the printed resume command works. Real subprocess runs of tiny models."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from normbench.run.record import checkpoint

from support import TINY, run_cli, start_cli, text_data, wait_for

FAST = [*TINY, "precision=fp32", "logger=none"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every path under `folder` with its sha256 (files) and modification time."""
    out = {}
    for p in sorted(folder.rglob("*")):
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder))] = (digest, p.stat().st_mtime_ns)
    return out


def one_line_error(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            break
    return max(steps)


# --- a run directory belongs to one config ---------------------------------------------------


def test_a_finished_run_is_never_reused_for_another_config(tmp_path, cli_env, text_files):
    """lr 1e-3 to completion, then lr 0.05 into the same directory: refused in one line that
    names the key, and nothing in the directory is touched (no .hydra/ rewrite, no log)."""
    run_dir = tmp_path / "run"
    base = ["train", *FAST, *text_data(*text_files), f"hydra.run.dir={run_dir}"]
    first = run_cli([*base, "optim.lr=1e-3"], cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    before = snapshot(run_dir)
    other = run_cli([*base, "optim.lr=0.05"], cwd=tmp_path, env=cli_env)
    err = one_line_error(other)
    assert f"hydra.run.dir={run_dir} holds a run of another config" in err
    assert "optim.lr: 0.001 there, 0.05 here" in err
    assert snapshot(run_dir) == before
    same = run_cli([*base, "optim.lr=1e-3"], cwd=tmp_path, env=cli_env)
    assert same.returncode == 0 and "already completed; nothing to do" in same.stderr


def own_text_files(folder: Path, text_files: tuple[Path, Path]) -> tuple[Path, Path]:
    """Copies of the shared train / validation files that a test may change."""
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.txt", folder / "val.txt"
    shutil.copy(text_files[0], train)
    shutil.copy(text_files[1], val)
    return train, val


def test_a_finished_run_is_never_returned_for_other_data(tmp_path, cli_env, text_files):
    """The run's identity covers its data: its tokens' fingerprint is in config.yaml. After
    the validation file changed, the same command is refused in one line that names the file,
    and the record is untouched; with the data restored it is the finished run again."""
    train, val = own_text_files(tmp_path / "data", text_files)
    run_dir = tmp_path / "run"
    args = ["train", *FAST, *text_data(train, val), f"hydra.run.dir={run_dir}"]
    assert run_cli(args, cwd=tmp_path, env=cli_env).returncode == 0
    fingerprint = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["fingerprint"]
    assert set(fingerprint) == {"train", "val"} and all(len(v) == 16 for v in fingerprint.values())
    before = snapshot(run_dir)
    original = val.read_text()
    val.write_text(original.replace(" the ", " a "))
    err = one_line_error(run_cli(args, cwd=tmp_path, env=cli_env))
    assert f"hydra.run.dir={run_dir} holds a run trained on other data" in err
    assert f"the validation split ({val}) holds other tokens" in err
    assert "training split" not in err and snapshot(run_dir) == before
    val.write_text(original)
    again = run_cli(args, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0 and "already completed; nothing to do" in again.stderr


def test_an_interrupted_run_never_resumes_onto_other_data(tmp_path, cli_env, text_files):
    """Reshuffled training data between an interruption and the resume: refused in one line
    naming the training file (config.yaml and the checkpoint both hold the fingerprint)."""
    train, val = own_text_files(tmp_path / "data", text_files)
    run_dir = tmp_path / "run"
    args = ["train", *FAST, "train.max_steps=100000", "train.ckpt_every=1"]
    args += [*text_data(train, val), f"hydra.run.dir={run_dir}"]
    proc = start_cli(args, tmp_path, cli_env)
    wait_for(lambda: logged_steps(run_dir) >= 2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    (_, path), *_ = reversed(checkpoint.checkpoints(run_dir))
    state = torch.load(path, weights_only=True)
    assert (
        state["config"]["data"]["fingerprint"]["train"]
        == yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["fingerprint"]["train"]
    )
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(reversed(lines)))
    before = snapshot(run_dir)
    err = one_line_error(run_cli(args, cwd=tmp_path, env=cli_env))
    assert f"the training split ({train}) holds other tokens" in err
    assert snapshot(run_dir) == before  # nothing trained on the other data, nothing written


def test_a_record_without_a_fingerprint_still_resumes(tmp_path, cli_env, text_files):
    """A record written before data fingerprints: its data cannot be checked, and it is read
    as before (the same command finds the finished run)."""
    run_dir = tmp_path / "run"
    args = ["train", *FAST, *text_data(*text_files), f"hydra.run.dir={run_dir}"]
    assert run_cli(args, cwd=tmp_path, env=cli_env).returncode == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    del config["data"]["fingerprint"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    again = run_cli(args, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0 and "already completed; nothing to do" in again.stderr


@pytest.mark.parametrize(
    "name",
    [
        ".lock",
        ".summary-reserve",
        "train.log",
        "metrics.jsonl",
        "config.yaml",
        ".hydra/config.yaml",
    ],
)
def test_a_link_where_the_tool_writes_is_refused(name, tmp_path, cli_env, text_files):
    """A symbolic link in the place of a file the tool writes (the lock, the summary's
    reserve, the log, an appended or a rewritten record file, Hydra's record of the job):
    refused before anything runs, in one line naming it; the file it points to is
    untouched."""
    run_dir, mine = tmp_path / "run", tmp_path / "mine.txt"
    (run_dir / name).parent.mkdir(parents=True)
    mine.write_text("the user's own file\n")
    (run_dir / name).symlink_to(mine)
    args = ["train", *FAST, *text_data(*text_files), f"hydra.run.dir={run_dir}"]
    err = one_line_error(run_cli(args, cwd=tmp_path, env=cli_env))
    assert f"{run_dir / name} is a symbolic link; normbench never writes through a link" in err
    assert mine.read_text() == "the user's own file\n"
    links = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_symlink()]
    files = [p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert links == [name] and files == []  # nothing written: no lock, no log, no record


def test_the_writers_refuse_links_themselves(tmp_path):
    """Below the preflight check, every writer refuses a link on its own (a link planted
    between the check and the write): write_atomic, its temporary file, open_own."""
    from normbench.run.record.files import LinkError, open_own, temporary_name, write_atomic

    target = tmp_path / "target.txt"
    target.write_text("kept")
    for name in ("atomic.json", "appended.jsonl"):
        (tmp_path / name).symlink_to(target)
    with pytest.raises(LinkError):
        write_atomic(tmp_path / "atomic.json", "{}")
    with pytest.raises(LinkError):
        open_own(tmp_path / "appended.jsonl", "a")
    temporary_name(tmp_path / "fresh.json").symlink_to(target)
    with pytest.raises(LinkError):
        write_atomic(tmp_path / "fresh.json", "{}")
    assert target.read_text() == "kept" and not (tmp_path / "fresh.json").exists()


def test_inputs_that_fail_late_are_refused_first_in_one_line(tmp_path, cli_env, text_files):
    """Input that used to fail after the checks, or to be accepted without a word: each is
    one line, exit 2, before anything is written."""
    long = "x" * 300
    cases = {
        "hydra.run.dir=": "hydra.run.dir is empty",
        f"hydra.run.dir={tmp_path / long}": "is 300 bytes long, more than this file system allows",
        "+optim.lrr=1": "unknown key 'optim.lrr' (did you mean optim.lr?)",
        "+data.bar=1": "unknown key 'data.bar'",
        "data.train_path=/proc/self/mem": "data.train_path='/proc/self/mem' cannot be read",
        "model.d_model=100000": "model.d_model=100000, depth=2 needs about",
    }
    for override, message in cases.items():
        args = ["train", *FAST, *text_data(*text_files), f"hydra.run.dir={tmp_path / 'r'}"]
        done = run_cli([*args, override], cwd=tmp_path, env=cli_env)
        assert message in one_line_error(done), override
    sweep = ["train", "-m", "norm=pre,post", *FAST, *text_data(*text_files)]
    sweep += [f"hydra.sweep.dir={tmp_path / 's'}", "hydra.sweep.subdir=same"]
    err = one_line_error(run_cli(sweep, cwd=tmp_path, env=cli_env))
    assert f"hydra.sweep.subdir gives jobs 0 and 1 the same folder {tmp_path / 's' / 'same'}" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_a_token_cache_on_a_full_disk_is_one_line(tmp_path, cli_env, text_files):
    """The token cache cannot be written (a file-size limit stands in for a full disk): one
    line naming the cache folder, exit 2, no run folder and no half-written cache."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "normbench", "train", *FAST, *text_data(*text_files),
         f"hydra.run.dir={run_dir}", f"data.cache_dir={tmp_path / 'tokens'}"],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )  # fmt: skip
    err = one_line_error(done)
    assert f"cannot write the token cache in {tmp_path / 'tokens' / 'tokens'}" in err
    assert not run_dir.exists() and list((tmp_path / "tokens" / "tokens").iterdir()) == []


def test_a_refused_run_into_a_busy_directory_touches_nothing(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "run"
    args = ["train", *FAST, "train.max_steps=100000", *text_data(*text_files)]
    args += [f"hydra.run.dir={run_dir}"]
    first = start_cli(args, tmp_path, cli_env)
    try:
        wait_for(lambda: logged_steps(run_dir) >= 1)
        hydra_files = snapshot(run_dir / ".hydra")
        lines = (run_dir / "train.log").read_text().count("\n")
        second = run_cli(args, cwd=tmp_path, env=cli_env)
        assert f"another normbench process is writing into {run_dir}" in one_line_error(second)
        assert snapshot(run_dir / ".hydra") == hydra_files
        assert "another normbench process" not in (run_dir / "train.log").read_text()
        assert (run_dir / "train.log").read_text().count("\n") >= lines
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)


# --- a sweep directory belongs to one sweep ---------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, text_files):
    from support import cli_environment

    root = tmp_path_factory.mktemp("sweep")
    env = cli_environment(root)
    sweep_dir = root / "sweep"
    config = [*FAST, "train.max_steps=4", *text_data(*text_files)]
    args = ["train", "-m", "norm=pre,post", *config]
    done = run_cli([*args, f"hydra.sweep.dir={sweep_dir}"], cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    return root, env, args, sweep_dir, config


def test_another_sweep_into_a_used_sweep_directory_is_refused(sweep, tmp_path):
    root, env, args, sweep_dir, config = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    before = snapshot(copy)
    for extra in (["optim.lr=0.05"], ["norm=pre"]):
        other = run_cli([*args, *extra, f"hydra.sweep.dir={copy}"], cwd=tmp_path, env=env)
        assert f"hydra.sweep.dir={copy} holds another sweep" in one_line_error(other)
        assert snapshot(copy) == before
    single = run_cli(["train", *config, f"hydra.run.dir={copy}"], cwd=tmp_path, env=env)
    assert "is a sweep's directory" in one_line_error(single)
    into_job = run_cli([*args, f"hydra.sweep.dir={copy / '0_pre-d2'}"], cwd=tmp_path, env=env)
    assert "is a single run's directory" in one_line_error(into_job)
    assert snapshot(copy) == before


def test_the_same_sweep_continues_and_reuses_its_finished_jobs(sweep, tmp_path):
    root, env, args, sweep_dir, config = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    records = {p: p.read_bytes() for p in copy.glob("*/summary.json")}
    again = run_cli([*args, f"hydra.sweep.dir={copy}"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already completed; nothing to do") == 2
    assert {p: p.read_bytes() for p in copy.glob("*/summary.json")} == records


def test_a_sweep_directory_of_an_older_normbench_is_checked_job_by_job(sweep, tmp_path):
    """No manifest (written by an older normbench): each job folder's config is compared."""
    root, env, args, sweep_dir, config = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    (copy / ".normbench-sweep.json").unlink()
    other = run_cli([*args, "optim.lr=0.05", f"hydra.sweep.dir={copy}"], cwd=tmp_path, env=env)
    assert "job 0_pre-d2: optim.lr: 0.001 there, 0.05 here" in one_line_error(other)


def test_two_sweeps_never_run_into_one_directory_at_once(tmp_path, cli_env, text_files):
    sweep_dir = tmp_path / "sweep"
    args = ["train", "-m", "norm=pre,post", *FAST, "train.max_steps=100000"]
    args += [*text_data(*text_files), f"hydra.sweep.dir={sweep_dir}"]
    first = start_cli(args, tmp_path, cli_env)
    try:
        wait_for(lambda: logged_steps(sweep_dir / "0_pre-d2") >= 1)
        second = run_cli(args, cwd=tmp_path, env=cli_env)
        assert f"another normbench process is writing into {sweep_dir}" in one_line_error(second)
        assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0_pre-d2"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)


# --- the resume command that is printed works --------------------------------------------------


def interrupt(args: list[str], cwd: Path, env: dict[str, str], folders: str) -> tuple[str, Path]:
    """Start, SIGTERM once a folder matching `folders` has logged 2 steps; (the resume
    command printed, the folder)."""
    proc = start_cli(args, cwd, env)
    wait_for(lambda: any(logged_steps(p) >= 2 for p in cwd.glob(folders)))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (folder,) = cwd.glob(folders)
    return err.splitlines()[-1].split("resume with: ", 1)[1], folder


def resumes(hint: str, cwd: Path, env: dict[str, str], log: Path) -> str:
    """Run the printed command until it says it resumed; its stderr."""
    proc = start_cli(shlex.split(hint)[1:], cwd, env)
    wait_for(lambda: log.is_file() and "resumed after step" in log.read_text())
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[1]


def test_the_printed_resume_command_resumes_a_run_in_the_default_directory(
    tmp_path, cli_env, text_files
):
    """The default run directory is named by the time: the printed command pins it."""
    args = ["train", *FAST, "train.max_steps=100000", "train.log_every=1", *text_data(*text_files)]
    hint, run_dir = interrupt(args, tmp_path, cli_env, "outputs/*/*")
    step = json.loads((run_dir / "summary.json").read_text())["steps"]
    command = shlex.split(hint)
    assert command[:2] == ["normbench", "train"] and command[-1] == f"hydra.run.dir={run_dir}"
    # a different max_steps is a different config: refused, naming it
    other = [c.replace("max_steps=100000", f"max_steps={step + 2}") for c in command[1:]]
    assert "train.max_steps: 100000 there" in one_line_error(
        run_cli(other, cwd=tmp_path, env=cli_env)
    )
    assert f"resumed after step {step}" in resumes(hint, tmp_path, cli_env, run_dir / "train.log")
    assert list(tmp_path.glob("outputs/*/*")) == [run_dir]


def test_an_interrupted_sweep_prints_the_command_that_continues_it(tmp_path, cli_env, text_files):
    args = ["train", "-m", "norm=pre,post", *FAST, "train.max_steps=100000", "train.log_every=1"]
    args += text_data(*text_files)
    hint, job = interrupt(args, tmp_path, cli_env, "multirun/*/*/0_pre-d2")
    command = shlex.split(hint)
    assert command[:3] == ["normbench", "train", "-m"]
    assert command[-1] == f"hydra.sweep.dir={job.parent}"
    step = json.loads((job / "summary.json").read_text())["steps"]
    assert f"resumed after step {step}" in resumes(hint, tmp_path, cli_env, job / "train.log")
    assert len(list(tmp_path.glob("multirun/*/*"))) == 1


# --- checkpoints: pruned by what verifies, leftovers cleaned -----------------------------------


def _state(step: int, **config) -> dict:
    """A checkpoint's state: every key a checkpoint holds (checkpoint.STATE_KEYS)."""
    state = {k: {} for k in checkpoint.STATE_KEYS}
    return {**state, "step": step, "evaluated": True, "config": config, "w": torch.ones(4) * step}


def test_pruning_keeps_the_newest_checkpoints_that_verify(tmp_path):
    """A higher-step file that does not verify (foreign, cut short, no sidecar) is neither
    counted nor deleted, and never makes a valid checkpoint go."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    foreign = folder / "step_00000099.pt"
    foreign.write_bytes(b"not a checkpoint")
    (folder / "step_00000099.pt.sha256").write_text("0" * 64 + "\n")
    bare = folder / "step_00000098.pt"
    bare.write_bytes(b"no sidecar")
    keeper = checkpoint.Checkpointer(tmp_path, every=1, keep=1)
    keeper.save(3, _state(3))
    assert (folder / "step_00000003.pt").is_file() and foreign.is_file() and bare.is_file()
    keeper.save(4, _state(4))
    assert not (folder / "step_00000003.pt").exists()
    assert checkpoint.load(folder / "step_00000004.pt")["step"] == 4
    assert foreign.read_bytes() == b"not a checkpoint" and bare.is_file()
    # a cut-short newest checkpoint from an earlier process: the fresh one is kept
    cut = folder / "step_00000010.pt"
    checkpoint.save(tmp_path, 10, _state(10))
    cut.write_bytes(cut.read_bytes()[:20])
    keeper = checkpoint.Checkpointer(tmp_path, every=1, keep=1)
    keeper.save(5, _state(5))
    assert checkpoint.load(folder / "step_00000005.pt")["step"] == 5
    assert not (folder / "step_00000004.pt").exists() and cut.is_file()


@pytest.mark.parametrize("damage", ["binary", "dev_zero", "long"])
def test_a_damaged_hash_file_is_named_and_the_older_checkpoint_is_used(damage, tmp_path, caplog):
    """The newest checkpoint's sidecar is not text, links to /dev/zero, or is too long: it
    does not verify (read with a bound, never decoded blindly), the warning names it, and the
    older valid checkpoint is the one resumed."""
    checkpoint.save(tmp_path, 2, _state(2), "me")
    newest = checkpoint.save(tmp_path, 4, _state(4), "me")
    side = checkpoint.sidecar(newest)
    checkpoint._VERIFIED.clear()
    side.unlink()
    if damage == "binary":
        side.write_bytes(bytes(range(256)) * 4)
    elif damage == "dev_zero":
        side.symlink_to("/dev/zero")
    else:
        side.write_text("a" * 10_000_000)
    assert not checkpoint.verifies(newest)
    path, state = checkpoint.latest(tmp_path, "me")
    assert state["step"] == 2 and path.name == "step_00000002.pt"
    assert f"checkpoint {newest} " in caplog.text and "trying an older checkpoint" in caplog.text


def test_a_foreign_checkpoint_is_skipped_and_never_deleted(tmp_path, caplog):
    """A checkpoint of another run with a matching hash file (its sidecar names its run):
    as the newest it is skipped with a warning naming it; older, pruning leaves it; a file
    that hashes right but is not a checkpoint is refused by name."""
    folder = tmp_path / "checkpoints"
    foreign_old = checkpoint.save(tmp_path, 1, _state(1), "them")
    checkpoint.save(tmp_path, 2, _state(2), "me")
    foreign_new = checkpoint.save(tmp_path, 9, _state(9), "them")
    path, state = checkpoint.latest(tmp_path, "me")
    assert state["step"] == 2 and f"{foreign_new} belongs to another run" in caplog.text
    keeper = checkpoint.Checkpointer(tmp_path, every=1, keep=1, owner="me")
    keeper.save(3, _state(3))
    keeper.save(4, _state(4))
    assert foreign_old.is_file() and foreign_new.is_file()
    assert sorted(p.name for p in folder.glob("*.pt")) == [
        "step_00000001.pt", "step_00000004.pt", "step_00000009.pt"
    ]  # fmt: skip
    odd = folder / "step_00000020.pt"
    torch.save({"not": "a checkpoint"}, odd)
    digest = hashlib.sha256(odd.read_bytes()).hexdigest()
    checkpoint.sidecar(odd).write_text(f"{digest}\n")
    with pytest.raises(checkpoint.CheckpointError, match=f"{odd} is not a normbench checkpoint"):
        checkpoint.load(odd)
    assert checkpoint.latest(tmp_path, "me")[1]["step"] == 4


def test_leftovers_of_interrupted_writes_are_removed_on_the_next_start_cli(tmp_path):
    folder = tmp_path / "checkpoints"
    checkpoint.save(tmp_path, 2, _state(2))
    partial = folder / ".step_00000004.pt.tmp-4242"
    partial.write_bytes(b"half")
    orphan = folder / "step_00000001.pt.sha256"
    orphan.write_text("0" * 64 + "\n")
    mine = folder / "notes.txt"
    mine.write_text("the user's")
    checkpoint.Checkpointer(tmp_path, every=1, keep=1)
    assert not partial.exists() and not orphan.exists()
    assert mine.is_file() and (folder / "step_00000002.pt.sha256").is_file()


def test_a_cut_short_newest_checkpoint_never_makes_the_fresh_one_go(tmp_path, cli_env, text_files):
    """The newest checkpoint is cut short; the resumed run starts over and its step-3
    checkpoint stays (a kill -9 then resumes from step 3, not from step 1); leftovers of
    killed writes are gone."""
    run_dir = tmp_path / "run"
    args = ["train", *FAST, "train.max_steps=100000", "train.ckpt_every=3", "train.log_every=1"]
    args += [*text_data(*text_files), f"hydra.run.dir={run_dir}"]
    proc = start_cli(args, tmp_path, cli_env)
    wait_for(lambda: logged_steps(run_dir) >= 4)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    newest = checkpoint.checkpoints(run_dir)[-1][1]
    assert checkpoint.checkpoints(run_dir)[-1][0] >= 4
    newest.write_bytes(newest.read_bytes()[:1000])
    leftover = run_dir / "checkpoints" / ".step_00000002.pt.tmp-99999"
    leftover.write_bytes(b"partial")
    (run_dir / ".summary.json.tmp-99999").write_text("{")
    proc = start_cli(args, tmp_path, cli_env)
    step3 = run_dir / "checkpoints" / "step_00000003.pt.sha256"
    wait_for(step3.is_file, poll=0.002)  # kill -9 as soon as it is written
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert "does not match its sha256" in err and "not deleted" in err
    assert checkpoint.verifies(step3.with_suffix(""))
    assert not leftover.exists() and not (run_dir / ".summary.json.tmp-99999").exists()
    proc = start_cli(args, tmp_path, cli_env)
    wait_for(lambda: "resumed after step" in (run_dir / "train.log").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert "resumed after step 3 " in (run_dir / "train.log").read_text()


def test_no_earlier_checkpoint_is_said_as_such(tmp_path, cli_env, text_files):
    """Under a 4 MiB file-size limit the first checkpoint fails: the message does not claim
    that a previous one is kept, the run is recorded as failed, no temporary file is left."""
    run_dir = tmp_path / "run"
    warm = run_cli(
        ["train", *FAST, *text_data(*text_files), f"hydra.run.dir={tmp_path / 'w'}"],
        cwd=tmp_path,
        env=cli_env,
    )  # fmt: skip  (builds the token cache)
    assert warm.returncode == 0, warm.stderr

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    done = subprocess.run(
        [sys.executable, "-m", "normbench", "train", *FAST, *text_data(*text_files),
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert "could not write the checkpoint of step 6" in last and "no earlier checkpoint" in last
    assert "continue with: normbench train" in last
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no earlier checkpoint" in summary["error"]
    leftovers = [p.name for p in run_dir.rglob(".*") if "tmp" in p.name or "reserve" in p.name]
    assert leftovers == []


# --- a full disk still ends with a record ------------------------------------------------------

FILL = r"""
set -u
mount -t tmpfs -o size=24m tmpfs "$MNT" || exit 77
"$@" hydra.run.dir="$MNT/run" > "$OUT/stdout" 2> "$OUT/stderr" &
pid=$!
for i in $(seq 1 3000); do [ -s "$MNT/run/metrics.jsonl" ] && break; sleep 0.02; done
dd if=/dev/zero of="$MNT/fill" bs=4k > /dev/null 2>&1
wait $pid; echo $? > "$OUT/rc"
rm -f "$MNT/fill"
cp -a "$MNT/run" "$OUT/run"
"""


def test_a_disk_that_fills_up_mid_run_still_leaves_a_failed_record(tmp_path, cli_env, text_files):
    """A real full disk (a 24 MiB tmpfs in a private mount namespace, filled by another
    process while the run logs): the run ends `failed` with the reason in summary.json, the
    message is one line with the command that continues it, and no temporary file is left.
    """
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    script = tmp_path / "fill.sh"
    script.write_text(FILL)
    args = [*FAST, "train.max_steps=100000", "train.log_every=1", "train.ckpt_every=0"]
    command = [sys.executable, "-m", "normbench", "train", *args, *text_data(*text_files)]
    env = {**cli_env, "MNT": str(mnt), "OUT": str(out)}
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", str(script), *command],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode == 77 or not (out / "rc").is_file():
        pytest.skip(f"no private tmpfs on this machine: {done.stderr.strip()[:200]}")
    err = (out / "stderr").read_text()
    assert (out / "rc").read_text().strip() == "1", err
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("normbench: error: could not write")
    assert "No space left on device" in last and "continue with: normbench train" in last
    assert "Error executing job" not in err  # Hydra's own line, before ours
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert last.endswith(summary["resume_command"])
    assert summary["steps"] >= 1
    names = sorted(p.name for p in (out / "run").iterdir())
    assert [n for n in names if "tmp" in n or "reserve" in n] == []


def test_a_summary_that_meets_a_full_disk_uses_the_space_kept_for_it(tmp_path, monkeypatch):
    """The one write that must succeed (an ENOSPC injected at the summary's write, where no
    tmpfs can be had): the reserve is given back and the summary written."""
    from normbench.run.record.summary import Summary
    from normbench.run.record.writer import RESERVE, RunRecord

    record = RunRecord(tmp_path)
    assert (tmp_path / RESERVE).stat().st_size == 1 << 20
    calls = []
    real = os.replace

    def full_once(src, dst):  # the disk is full the first time the summary is moved in
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full_once)
    record.write_summary(Summary())
    monkeypatch.undo()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not (tmp_path / RESERVE).exists()
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    record.close()
