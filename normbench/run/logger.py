"""Experiment tracking (`logger=wandb|none`).

W&B conventions (../shared/docs/conventions.md): one run per Hydra job, finished with exit
code 1 when the job fails; the comparison axes as shallow config keys beside the full config under `cfg`;
`step` as the x-axis of every metric; `val/loss` summarised as min and last; files inside the
run directory. Online when credentials exist, otherwise offline; WANDB_MODE always wins.
Every W&B call is guarded: a tracking failure prints one warning and training goes on.
"""

from __future__ import annotations

import atexit
import json
import logging
import netrc
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from normbench.run.axes import axes_of
from normbench.run.config.schema import NormbenchConfig, WandbConfig
from normbench.run.data import vocab
from normbench.run.record.rundir import flat

log = logging.getLogger(__name__)


def resolve_mode(configured: str | None) -> tuple[str | None, str]:
    """The mode for wandb.init and why: None lets WANDB_MODE win; without credentials,
    offline (so that no run ever waits for a login)."""
    if "WANDB_MODE" in os.environ:
        return None, ""
    if configured is None and not wandb_credentials_present():
        return "offline", "no W&B credentials found, so "
    return configured, ""


def say_offline(mode: str | None, why: str, run: Any) -> None:
    """Tell the user once how to upload an offline run later."""
    if (mode or os.environ.get("WANDB_MODE")) in ("offline", "dryrun"):
        offline_dir = Path(run.dir).parent
        log.info("W&B: %sthe run is offline; upload it with `wandb sync %s`", why, offline_dir)


class Logger(Protocol):
    """Where a run's metrics go besides its record: W&B (WandbLogger) or nowhere (NullLogger).
    `info` describes the tracking run (id, project, group, url), None without one."""

    info: dict[str, Any] | None

    def log(self, metrics: dict[str, Any]) -> None: ...
    def config_update(self, values: dict[str, Any]) -> None: ...
    def finish(self, summary: dict[str, Any], failed: bool) -> None: ...


class NullLogger:
    """logger=none: the local run record only."""

    info = None

    def log(self, metrics: dict[str, Any]) -> None:
        pass

    def config_update(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any], failed: bool) -> None:
        pass


def import_wandb() -> Any:
    """`import wandb`, with the two folders it makes when imported (tempfile's
    `*wandb-media` and `*wandb-artifacts`) made in a scratch folder of this process,
    `<NORMBENCH_CACHE_DIR or ~/.cache/normbench>/tmp/<pid>`, instead of /tmp: a process
    killed with -9 cannot remove them, and each import removes the scratch folders of
    processes that are gone. Where that folder cannot be made, wandb is imported as it is."""
    if "wandb" in sys.modules:
        return sys.modules["wandb"]
    root = Path(os.environ.get("NORMBENCH_CACHE_DIR") or "~/.cache/normbench").expanduser()
    scratch = root / "tmp" / str(os.getpid())
    try:
        _remove_stale_scratch(scratch.parent)
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError:
        import wandb

        return wandb
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        import wandb
    finally:
        tempfile.tempdir = previous
    return wandb


def _remove_stale_scratch(root: Path) -> None:
    """Remove the scratch folders (`import_wandb`) of processes that are gone."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if not folder.name.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            os.kill(int(folder.name), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


def wandb_credentials_present() -> bool:
    """True when an API key is in the environment or in the netrc entry of the W&B host.

    Only checks presence; the key itself is never read into anything that is logged.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


class WandbLogger:
    """One W&B run; every call is guarded so that W&B problems never stop training."""

    def __init__(
        self,
        logger_cfg: WandbConfig,
        run_dir: Path,
        *,
        name: str,
        group: str | None,
        tags: list[str],
        axes: dict[str, Any],
        config: dict[str, Any],
        resume_id: str | None = None,
    ) -> None:
        self.run: Any = None
        self.info: dict[str, Any] | None = None
        self.files: Path | None = None
        try:
            wandb = import_wandb()
            mode, why = resolve_mode(logger_cfg.mode)
            self.run = wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                group=group,
                job_type=logger_cfg.job_type,
                name=name,
                tags=tags,
                config={**axes, "cfg": config},
                dir=str(run_dir),
                mode=mode,
                # its own run, beside any other of this process (a pack's runs log at once)
                reinit="create_new",
                # a resumed run continues the same W&B run
                **({"id": resume_id, "resume": "allow"} if resume_id else {}),
            )
            self.run.define_metric("step")
            for pattern in (
                "train/*",
                "val/*",
                "lr",
                "grad_norm",
                "tokens",
                "tokens_per_s",
                "grad_norm/*",
                "resid_rms/*",
                "resid_max/*",
                "update_ratio/*",
                "attn_entropy/*",
                "events/*",
            ):
                self.run.define_metric(pattern, step_metric="step")
            self.run.define_metric("val/loss", step_metric="step", summary="min,last")
            self.info = {"project": logger_cfg.project, "group": group, "id": self.run.id}
            self.files = Path(self.run.dir).parent  # this run's folder under wandb/
            say_offline(mode, why, self.run)
        except Exception as e:
            self._fail("start", e)

    def _fail(self, what: str, e: Exception) -> None:
        """Say once what failed and how to upload later; W&B is off for the rest of the run."""
        later = ""
        if getattr(self, "files", None) is not None:
            later = f"; what W&B saved so far is in {self.files}: `wandb sync {self.files}`"
        log.warning(
            "W&B: could not %s the run (%s: %s); training goes on and the local run record is "
            "unaffected%s",
            what,
            type(e).__name__,
            " ".join(str(e).split())[:200],
            later,
        )
        self.run = None

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics)
        except Exception as e:
            self._fail("log to", e)

    def config_update(self, values: dict[str, Any]) -> None:
        """Values known only once training starts (the device and precision chosen, the vocabulary mapping)."""
        if self.run is None:
            return
        try:
            self.run.config.update(values, allow_val_change=True)
        except Exception as e:
            self._fail("update the config of", e)

    def finish(self, summary: dict[str, Any], failed: bool) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            self._fail("finish", e)
        self.run = None


def make_logger(
    cfg: NormbenchConfig,
    run_dir: Path,
    *,
    group: str | None,
    config: dict[str, Any],
    resume_id: str | None = None,
) -> Any:
    """The logger chosen by `logger=...`, with the run's name, group, tags and flat axes
    (`config`: the full resolved config, whose axes become shallow keys beside it).

    A run with `data.vocab_limit=K` has `-vocabK` at the end of its default name and the tag
    `vocab=K` (`vocab=full` otherwise); the mapping itself joins the config (`vocab`) once
    the data is loaded (normbench/run/data/vocab.py: record_vocab)."""
    if cfg.logger.backend == "none":
        return NullLogger()
    placement, kind = str(cfg.norm.name), str(cfg.norm.kind)
    limit = vocab.limit_of(cfg.data)
    # The experiment's axes (normbench/run/axes.py) as shallow keys; vocab_limit null: GPT-2's
    # full vocabulary (normbench/run/data/vocab.py).
    axes = {**axes_of(flat(config)), "vocab_limit": limit}
    name = cfg.logger.name or f"{placement}-{kind}-d{cfg.depth}-lr{cfg.optim.lr:g}-s{cfg.seed}"
    if limit is not None:  # losses of another vocabulary are not comparable: say so everywhere
        name += f"-vocab{limit}"
    tags = [placement, kind, f"depth={cfg.depth}", vocab.tag(limit), *cfg.logger.tags]
    return WandbLogger(
        cfg.logger,
        run_dir,
        name=name,
        group=cfg.logger.group or group,
        tags=tags,
        axes=axes,
        config=config,
        resume_id=resume_id,
    )


def _report_tables(out: Path, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Any]]:
    """The report's tables as W&B tables (compare/summary, /verdicts, /lr_sensitivity), read
    from the files compare wrote, and the verdicts."""
    wandb = import_wandb()
    tables: dict[str, Any] = {}
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        data = [[row.get(k) for k in keys] for row in rows]
        tables["compare/summary"] = wandb.Table(columns=keys, data=data)
    verdicts = []
    verdicts_file = out / "verdicts.json"
    if verdicts_file.is_file():  # the claims judged (normbench/analysis/claims/registry.py)
        verdicts = json.loads(verdicts_file.read_text(encoding="utf-8"))
        tables["compare/verdicts"] = wandb.Table(
            columns=["claim", "outcome", "conditions", "note"],
            data=[
                [
                    v["claim"],
                    v["outcome"],
                    "; ".join(c["condition"] for c in v["checks"]),
                    v["note"],
                ]
                for v in verdicts
            ],
        )
    lr_file = out / "lr_sensitivity.json"
    if lr_file.is_file():  # an LR-sensitivity sweep (normbench/analysis/sensitivity.py)
        cells = json.loads(lr_file.read_text(encoding="utf-8"))["cells"]
        keys = [k for k in cells[0] if k not in ("curve", "runs")]
        tables["compare/lr_sensitivity"] = wandb.Table(
            columns=keys, data=[[c.get(k) for k in keys] for c in cells]
        )
    return tables, verdicts


def log_report(
    out: Path, runs: list[Any], rows: list[dict[str, Any]], figures: dict[str, Any]
) -> None:
    """`normbench compare --wandb`: the report's figures and tables in a W&B run of
    job_type=compare, in the runs' group and project when they share one."""
    wandb = import_wandb()
    infos = [r.summary.get("wandb") or {} for r in runs]
    groups = {i.get("group") for i in infos}
    projects = {i.get("project") for i in infos if i.get("project")}
    limit = runs[0].config.get("data.vocab_limit") if runs else None  # one per report
    mode, why = resolve_mode(None)
    with wandb.init(
        project=projects.pop() if len(projects) == 1 else "normbench",
        group=groups.pop() if len(groups) == 1 else None,
        job_type="compare",
        name=f"compare-{len(runs)}-runs" + ("" if limit is None else f"-vocab{limit}"),
        tags=[vocab.tag(limit)],
        dir=str(out),
        mode=mode,
        config={"runs": [str(r.dir) for r in runs], "vocab_limit": limit},
        reinit="finish_previous",
    ) as run:
        payload: dict[str, Any] = {
            f"compare/{kind}/{path.stem}": wandb.Image(str(path))
            for kind, paths in figures.items()
            for path in paths
        }
        tables, verdicts = _report_tables(out, rows)
        run.log({**payload, **tables})
        run.summary.update({f"verdict/{v['claim']}": v["outcome"] for v in verdicts})
        run.summary.update(
            {
                "runs": len(runs),
                "diverged": sum(r.diverged for r in runs),
                "collapsed": sum(r.collapsed for r in runs),
            }
        )
        say_offline(mode, why, run)
