"""`hydra/launcher=packed`: a Hydra launcher that trains the jobs of a sweep that share an
architecture together, each pack as one batched model in one process (normbench/run/
trainer.py `Trainer.pack`). Hydra finds it as hydra_plugins.normbench_packed_launcher.

For each batch of jobs the sweeper hands it (the basic sweeper: the whole sweep; Optuna: a
batch of trials) it composes every job's config, groups them (`plan_packs`: everything but
the seed and the optimizer's settings shared, at most `max_members` per pack, in the
sweep's order), and for each pack sets every job up as Hydra's own `run_job` does (its
output folder, `.hydra/` files and logging) before training the pack with the task's
`pack`. Every job keeps its own run record, W&B run and return value, so sweepers, `compare`
and resume see the jobs they would see without packing. A job that shares its architecture
with no other, or whose task has no `pack`, runs alone, as under the basic launcher.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from normbench.run.config.resolve import as_dict, resolve
from normbench.run.job import Place
from normbench.run.pack.plan import plan_packs

log = logging.getLogger(__name__)


class PackedLauncher(Launcher):
    """Packs of at most `max_members` jobs of one architecture, one pack after another."""

    def __init__(self, max_members: int = 16) -> None:
        self.max_members = int(max_members)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for i, overrides in enumerate(job_overrides):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = initial_job_idx + i
            configs.append(cfg)
        packs = self._packs(configs)
        log.info(
            "hydra/launcher=packed: %d jobs in %d packs (%s)",
            len(configs),
            len(packs),
            ", ".join(str(len(p)) for p in packs),
        )
        returns: list[JobReturn | None] = [None] * len(configs)
        for pack in packs:
            for i, ret in zip(pack, self._run_pack([configs[i] for i in pack]), strict=True):
                returns[i] = ret
        return [r for r in returns if r is not None]

    def _packs(self, configs: list[DictConfig]) -> list[list[int]]:
        """The sweep's packs (run/pack/plan.py), from each job's resolved config."""
        resolved = []
        for cfg in configs:
            HydraConfig.instance().set_config(cfg)  # its interpolations of hydra:...
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            resolved.append(as_dict(resolve(task)))
        return plan_packs(resolved, self.max_members)

    def _run_pack(self, configs: list[DictConfig]) -> list[JobReturn]:
        """Set each job up as Hydra's `run_job` does, then train them together (a pack of
        one, or a task without `pack`: run as a job alone)."""
        assert self.hydra_context is not None and self.task_function is not None
        pack = getattr(self.task_function, "pack", None)
        if pack is None or len(configs) == 1:
            return [self._run_job(self.task_function, cfg) for cfg in configs]
        jobs: list[tuple[DictConfig, Any]] = []

        def collect(task_cfg: DictConfig) -> None:
            jobs.append((task_cfg, Place.current()))

        returns = [self._run_job(collect, cfg) for cfg in configs]  # folders, .hydra/, logs
        failed = [r for r in returns if r.status == JobStatus.FAILED]
        if failed:  # a job that could not even be set up: the pack does not train
            return returns
        HydraConfig.instance().set_config(configs[0])  # the pack's process: the first job's
        configure_log(configs[0].hydra.job_logging, configs[0].hydra.verbose)
        values = pack(jobs)
        for ret, value in zip(returns, values, strict=True):
            ret.return_value = value
            ret.status = (
                JobStatus.FAILED if isinstance(value, BaseException) else JobStatus.COMPLETED
            )
        return returns

    def _run_job(self, task: TaskFunction, cfg: DictConfig) -> JobReturn:
        assert self.hydra_context is not None
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
