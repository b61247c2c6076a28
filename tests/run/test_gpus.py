"""A multirun's jobs spread over every GPU, `jobs_per_gpu` at once on each: the slot
assignment (run/gpus.py) with real processes and real locks, no GPU needed; and the
launcher's job count through real Hydra composition."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from normbench.run import gpus
from normbench.run.config.schema import config_dir, register_configs


def _job(folder: str, n_gpus: int, per_gpu: int, out: mp.Queue, done: mp.Event) -> None:
    slot = gpus.claim(n_gpus, per_gpu, Path(folder), poll_s=0.02)
    out.put((slot.gpu, slot.slot, time.monotonic()))
    done.wait(60)  # hold the slot until told
    slot.release()


def test_jobs_spread_over_the_gpus_k_per_gpu_and_the_next_waits(tmp_path):
    ctx = mp.get_context("spawn")
    out, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_job, args=(str(tmp_path), 3, 2, out, done)) for _ in range(6)]
    for p in procs:
        p.start()
    claimed = sorted(out.get(timeout=60)[:2] for _ in procs)
    assert claimed == sorted(gpus.slots(3, 2))  # every GPU twice, no slot twice
    late = ctx.Process(target=_job, args=(str(tmp_path), 3, 2, out, done))
    late.start()
    time.sleep(0.5)
    assert out.empty()  # the seventh job waits: all 3 x 2 slots are held
    done.set()  # the six end; the seventh takes a freed slot
    gpu, slot, _ = out.get(timeout=60)
    assert (gpu, slot) in gpus.slots(3, 2)
    for p in [*procs, late]:
        p.join(60)
        assert p.exitcode == 0


def test_jobs_spread_before_they_stack(tmp_path):
    """One at a time, the first G jobs take one slot on each GPU."""
    held = [gpus.claim(4, 3, tmp_path) for _ in range(4)]
    assert [(s.gpu, s.slot) for s in held] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    held[2].release()  # a job on GPU 2 ends: the next goes there
    again = gpus.claim(4, 3, tmp_path)
    assert (again.gpu, again.slot) == (2, 0)


def test_the_gpus_launcher_runs_jobs_per_gpu_times_the_gpus_at_once():
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=gpus", "jobs_per_gpu=3"], return_hydra_config=True
        )
    assert cfg.hydra.launcher.n_jobs == 3 * max(1, torch.cuda.device_count())
    assert "joblib" in cfg.hydra.launcher._target_
