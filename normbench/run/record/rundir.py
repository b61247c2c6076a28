"""Which run a directory holds: the checks that keep one configuration's results from ever
being returned for another, and the command that resumes a run.

A run directory belongs to the configuration in its `config.yaml`; a sweep directory to the
sweep described in its `.normbench-sweep.json` (the config of every job, or for a sweeper
that picks its jobs at run time, the base config and the sweeper's settings). A run or sweep
that would land on a directory of another configuration is refused before anything is
written, naming the keys that differ. Keys that may change between a run and its resume
(where it logs, the thread count, the checkpoint schedule) are not compared: `FREE`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import ConfigError
from normbench.run.record.files import (
    RECORD_BYTES,
    RecordError,
    load_yaml_record,
    read_bounded,
    refuse_link,
    write_atomic,
)
from normbench.run.record.writer import RECORD_NAMES, record_files

# Keys that may differ between a run and its resume (prefixes of dotted keys).
FREE = (
    "train.resume",
    "train.ckpt_",
    "logger.",
    "data.cache_dir",
    "threads",
    "jobs_per_gpu",
    "device",
    "diag.attn_rows",  # how precisely a diagnostic is measured, not what is trained
)
# Keys added after records were written, with the value such a record ran with: a run of
# an older normbench had the full vocabulary (data.vocab_limit=null), coupled weight decay,
# no z-loss, Admin's analytic omega, and neither the accumulated-update diagnostic nor the
# logit detectors (which can stop a run: an older record was not watched by them). It had no
# collapse detector (run/monitor/collapse.py) either; that detector changes no step of training (it
# never stops a run, only names the outcome), so such a record reads as trained under
# today's collapse defaults of configs/divergence/default.yaml (a test holds them equal), and
# resumes under them.
IMPLIED = {
    "data.vocab_limit": None,
    "optim.weight_decay_mode": "coupled",
    "optim.z_loss": 0.0,
    "norm.admin_init": "analytic",
    "diag.from_init": False,
    "diag.layer_removal": False,  # nor the end-of-training layer removal (run/removal.py)
    "divergence.attention_logit_growth.enabled": False,
    "divergence.attention_logit_growth.threshold": 10000.0,
    "divergence.attention_logit_growth.patience": 3,
    "divergence.output_logit_drift.enabled": False,
    "divergence.output_logit_drift.threshold": 20.0,
    "divergence.output_logit_drift.patience": 3,
    "divergence.collapse.enabled": True,
    "divergence.collapse.margin": 0.1,
    "divergence.collapse.after": 0.5,
    "divergence.collapse.min_steps": 50,
    "divergence.collapse.window": 20,
}
SWEEP_FILE = ".normbench-sweep.json"


def flat(node: Any, prefix: str = "", *, tuples: bool = False) -> dict[str, Any]:
    """{"optim.lr": 0.001, ...} of a nested config: the one config flattener (run
    directories, W&B axes, compare's records). Lists stay lists, or with `tuples` become
    tuples (hashable, so that runs can be grouped by their values)."""
    out: dict[str, Any] = {}
    for key, value in (node or {}).items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}.", tuples=tuples))
        elif tuples and isinstance(value, list):
            out[f"{prefix}{key}"] = tuple(value)
        else:
            out[f"{prefix}{key}"] = value
    return out


# Values an older normbench wrote that name a choice of today: model.qk_norm was a boolean.
RENAMED = {"model.qk_norm": {True: "l2", False: "none"}}


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config without the keys a resume may change (a key added since an
    older record was written has the value that record implies: IMPLIED; an old value of
    a choice reads as its new name: RENAMED)."""
    values = {**IMPLIED, **flat(config)}
    for key, names in RENAMED.items():
        if isinstance(values.get(key), bool):
            values[key] = names[values[key]]
    return {k: v for k, v in values.items() if not k.startswith(FREE)}


def run_identity(config: dict[str, Any]) -> str:
    """A short name of a run's identity (its config but the keys a resume may change, its
    data's fingerprint included): what a checkpoint's sidecar records as its owner."""
    text = json.dumps(identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


FINGERPRINT = "data.fingerprint."
# The file (or dataset) each split's tokens come from, by data source.
SPLIT_SOURCES = {
    "train": ("data.train_path", "the training split"),
    "val": ("data.val_path", "the validation split"),
}


def data_changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The splits whose tokens differ between two flattened configs (`data.fingerprint`),
    each naming its file. A record written before data fingerprints has none: its data
    cannot be checked, and nothing is reported."""
    if not any(k.startswith(FINGERPRINT) for k in then) or not any(
        k.startswith(FINGERPRINT) for k in now
    ):
        return []
    out = []
    for split, (key, what) in SPLIT_SOURCES.items():
        a, b = then.get(FINGERPRINT + split), now.get(FINGERPRINT + split)
        if a != b:
            source = now.get(key) or f"{now.get('data.path')}, {split} split"
            out.append(
                f"the data changed: {what} ({source}) holds other tokens (sha256 {a} there, "
                f"{b} here)"
            )
    return out


def differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: <there> there, <here> here` for every compared key that differs, sorted; first,
    the data whose tokens changed (`data_changes`)."""
    a, b = identity(then), identity(now)
    changed = data_changes(a, b)
    a = {k: v for k, v in a.items() if not k.startswith(FINGERPRINT)}
    b = {k: v for k, v in b.items() if not k.startswith(FINGERPRINT)}
    missing = object()
    out = changed
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            out.append(f"{key}: {show(x)} there, {show(y)} here")
    return out


def _listed(diffs: list[str], limit: int = 3) -> str:
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run directory's record was written with (None: no record there)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        if record_files(run_dir):
            raise ConfigError(
                f"{run_dir} holds a run record without config.yaml, so whose it is cannot be "
                "checked; choose another output directory"
            )
        return None
    try:
        config = load_yaml_record(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecordError) as e:
        why = str(e) if isinstance(e, RecordError) else type(e).__name__
        raise ConfigError(
            f"{path} cannot be read ({why}), so whose run {run_dir} holds cannot be checked; "
            "choose another output directory"
        ) from e
    if not isinstance(config, dict):
        raise ConfigError(
            f"{path} is not a run's config, so whose run {run_dir} holds cannot be checked; "
            "choose another output directory"
        )
    return config


# What the tool writes in a run's folder, besides the record (`record_files`): a link in the
# place of any of them is refused before anything runs.
OWN_FILES = (
    ".lock",
    ".summary-reserve",
    ".hydra",
    ".hydra/config.yaml",  # Hydra's own record of the job
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
    "train.log",
    "probe.log",
    "traceback.txt",
)


def check_no_links(folder: Path) -> None:
    """Refuse a folder where a file the tool writes is a symbolic link (LinkError)."""
    for name in (*OWN_FILES, *RECORD_NAMES):
        refuse_link(Path(folder) / name)


def check_run_dir(run_dir: Path, config: dict[str, Any], key: str = "hydra.run.dir") -> None:
    """Refuse a run directory whose record was written by another configuration (or that is
    a sweep's folder), or where a file the tool writes is a symbolic link."""
    check_no_links(run_dir)
    if any((Path(run_dir) / n).is_file() for n in (SWEEP_FILE, "multirun.yaml")):
        raise ConfigError(f"{key}={run_dir} is a sweep's directory; choose another {key}")
    then = recorded_config(run_dir)
    if then is None:
        return
    changed = data_changes(flat(then), flat(config))
    if changed:
        raise ConfigError(
            f"{key}={run_dir} holds a run trained on other data ({_listed(changed)}); choose "
            f"another {key}, or restore the data it was trained on"
        )
    diffs = differences(then, config)
    if diffs:
        raise ConfigError(
            f"{key}={run_dir} holds a run of another config ({_listed(diffs)}); choose "
            f"another {key}, or give the config of the run there to continue or reuse it"
        )


def sweep_definition(
    jobs: list[tuple[str, dict[str, Any]]] | None, base: dict[str, Any], sweeper: dict[str, Any]
) -> dict[str, Any]:
    """What makes a sweep the same sweep: the config of every job in its folder (when the
    jobs are known in advance), else the base config and the sweeper's settings."""
    if jobs is not None:
        return {"version": 1, "jobs": {subdir: identity(c) for subdir, c in jobs}}
    return {"version": 1, "base": identity(base), "sweeper": flat(sweeper)}


def _sweep_differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    if "jobs" in then and "jobs" in now:
        a, b = then["jobs"], now["jobs"]
        if list(a) != list(b):
            return [f"jobs {', '.join(a)} there, {', '.join(b)} here"]
        for subdir in a:
            diffs = differences(a[subdir], b[subdir])
            if diffs:
                return [f"job {subdir}: {d}" for d in diffs]
        return []
    if "jobs" in then or "jobs" in now:
        return ["the sweeper: another kind of sweep there"]
    diffs = differences(then["base"], now["base"])
    return diffs + [f"hydra.sweeper.{d}" for d in differences(then["sweeper"], now["sweeper"])]


def check_sweep_dir(sweep_dir: Path, definition: dict[str, Any]) -> None:
    """Refuse a sweep directory that holds another sweep (or a single run); the same sweep
    may continue there (its finished jobs are reused, the others resume)."""
    sweep_dir = Path(sweep_dir)
    key = "hydra.sweep.dir"
    for name in (".lock", SWEEP_FILE, "multirun.yaml"):
        refuse_link(sweep_dir / name)
    for subdir in definition.get("jobs") or {}:
        if (sweep_dir / subdir).is_dir():
            check_no_links(sweep_dir / subdir)
    if not sweep_dir.is_dir():
        return
    if record_files(sweep_dir):
        raise ConfigError(f"{key}={sweep_dir} is a single run's directory; choose another {key}")
    manifest = sweep_dir / SWEEP_FILE
    if manifest.is_file():
        try:
            then = json.loads(read_bounded(manifest, RECORD_BYTES).decode("utf-8"))
            diffs = _sweep_differences(then, definition)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{manifest} cannot be read ({type(e).__name__}); choose another {key}"
            ) from e
    else:  # a sweep folder of an older normbench, or a folder of something else
        diffs = _unlisted_jobs(sweep_dir, definition)
    if diffs:
        raise ConfigError(
            f"{key}={sweep_dir} holds another sweep ({_listed(diffs, 2)}); choose another "
            f"{key}, or run the same sweep to continue it"
        )


def _unlisted_jobs(sweep_dir: Path, definition: dict[str, Any]) -> list[str]:
    """Without a manifest: every job folder with a record must be one of this sweep's jobs,
    with the same config."""
    jobs = definition.get("jobs")
    diffs = []
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        then = recorded_config(folder)
        if then is None:
            continue
        if jobs is None or folder.name not in jobs:
            diffs.append(f"job {folder.name} there is not one of this sweep's jobs")
            continue
        diffs += [f"job {folder.name}: {d}" for d in differences(then, jobs[folder.name])]
    return diffs


def write_sweep_manifest(sweep_dir: Path, definition: dict[str, Any]) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    text = json.dumps(definition, indent=1, sort_keys=True, default=str) + "\n"
    write_atomic(Path(sweep_dir) / SWEEP_FILE, text)


def override_value(text: str) -> str:
    """A string as a Hydra override value, quoted where commas, spaces or `=` would be read
    as something else."""
    if re.fullmatch(r"[A-Za-z0-9_./~+-]+", text):
        return text
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def resume_command(argv: list[str], key: str, target: Path, command: str = "train") -> str:
    """The shell command that continues this run (or sweep) in `target`: the same arguments
    with the output directory pinned (the default one is named by the time it started)."""
    dirs = ("hydra.run.dir", "hydra.sweep.dir")
    keep = [a for a in argv if a.lstrip("+").split("=", 1)[0] not in dirs]
    return shlex.join(["normbench", command, *keep, f"{key}={override_value(str(target))}"])
