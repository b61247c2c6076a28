"""The W&B dashboard of a sweep, as a specification: `dashboard.json` in the compare report.

`normbench compare` writes it beside index.html, from the same records, axes table and
verdicts as the rest of the report, so that the dashboard and the offline report never
disagree; `normbench dashboard` (normbench/analysis/report/wandb_report.py) turns it into a W&B
Report and a saved workspace view with `wandb-workspaces`, now or later
(`normbench dashboard --publish FILE`). Building it needs neither the network nor the
library: it is plain JSON that says what the report shows.

What it holds (format FORMAT):
- `filters`: the W&B filter that selects exactly the sweep's runs, by their W&B group(s)
  (`summary.json` `wandb.group`: the sweep directory for a multirun);
- `header`: the sweep's command (from multirun.yaml), its axes and values, and the counts of
  runs, completed, diverged and collapsed;
- `table`: the runs table's grouping keys (the placement and the depth, as the runs' flat
  W&B config keys, normbench/run/axes.py) and its summary columns;
- `parallel`: the parallel-coordinates columns, the varying axes then `objective` (the panel
  colours by its last column);
- `lr`: final validation loss against the learning rate, one panel per depth, a run set per
  placement (when the learning rate varies);
- `curves`: the line panels against `step` (training and validation loss, the gradient norm,
  the largest attention logit per block, the mean log Z), one grid per value of compare's
  `--group-by` keys, the runs grouped by placement: the arrangement of compare's loss-curve
  figures;
- `verdicts`: the verdicts table (a claim preset's sweep, or `--claim`).

A panel whose metrics no run logged is left out, and so is a column no summary has. Only the
axes with a flat W&B config key are used to filter or group (others are under `cfg`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from normbench.analysis.records import Run
from normbench.analysis.table import Axes, fmt, group_runs
from normbench.run.axes import AXES, order, short
from normbench.run.data.vocab import name as vocab_name
from normbench.run.record.files import RECORD_BYTES, load_yaml_record, read_bounded
from normbench.run.record.summary import Status

FORMAT = "normbench-dashboard/1"
NAME = "dashboard.json"
X = "step"  # every metric's x-axis (normbench/run/logger.py: define_metric)
TABLE_GROUPS = ("norm.name", "depth")
# The runs table's summary columns: (W&B summary column, the record's key that says it exists)
COLUMNS = (
    ("val/loss.min", "val/loss"),
    ("val_loss", "val_loss"),
    ("status", "status"),
    ("diverged", "diverged"),
    ("diverged_at_step", "diverged_at_step"),
    ("divergence_reason", "divergence_reason"),
    ("objective", "objective"),
)
# The line panels: (title, a metric or the prefix of per-block metrics)
CURVES = (
    ("training loss", "train/loss"),
    ("validation loss", "val/loss"),
    ("gradient norm (all parameters)", "grad_norm"),
    ("largest attention logit, per block", "attn_logit_max/"),
    ("mean log Z of the output logits", "logits/logz_mean"),
)


def flat_axes(keys: list[str]) -> list[str]:
    """The dotted keys among `keys` that have a flat W&B config key (normbench/run/axes.py)."""
    return [k for k in keys if k in AXES]


def literal(value: Any) -> str:
    """A value in W&B's filter syntax (Python literals: strings quoted, None, numbers)."""
    plain = isinstance(value, (str, bool, int, float)) or value is None
    return repr(value if plain else str(value))


def group_filter(groups: list[str]) -> str:
    """The filter that selects the runs of these W&B groups, and no other."""
    if len(groups) == 1:
        return f"Metric('Group') = {literal(groups[0])}"
    return f"Metric('Group') in [{', '.join(literal(g) for g in groups)}]"


def and_config(base: str, values: dict[str, Any]) -> str:
    """`base` and each flat config key equal to its value."""
    parts = [base] + [f"Config({short(k)!r}) = {literal(v)}" for k, v in values.items()]
    return " and ".join(parts)


def wandb_groups(runs: list[Run]) -> list[str]:
    """The runs' W&B groups (summary.json `wandb.group`); empty when none was logged."""
    groups = {(r.summary.get("wandb") or {}).get("group") for r in runs}
    return sorted(g for g in groups if isinstance(g, str) and g)


def history_keys(runs: list[Run]) -> set[str]:
    return {k for r in runs for row in r.metrics for k, v in row.items() if v is not None}


def sweep_command(runs: list[Run]) -> str | None:
    """`normbench train -m <overrides>` from the sweep's multirun.yaml (one sweep only)."""
    files = {r.dir.parent / "multirun.yaml" for r in runs}
    if len(files) != 1 or not (path := files.pop()).is_file():
        return None
    try:
        overrides = load_yaml_record(path)["hydra"]["overrides"]
        task, hydra = list(overrides.get("task") or []), list(overrides.get("hydra") or [])
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    hydra = [h for h in hydra if h != "hydra.mode=MULTIRUN"]
    return " ".join(["normbench train -m", *task, *hydra])


def header(runs: list[Run], axes: Axes) -> dict[str, Any]:
    values = {
        short(k): [fmt(v) for v in sorted({r.config.get(k) for r in runs}, key=order)]
        for k in axes.varying
    }
    return {
        "command": sweep_command(runs),
        "axes": values,
        "counts": {
            "runs": len(runs),
            "completed": sum(r.status == Status.COMPLETED for r in runs),
            "diverged": sum(r.diverged for r in runs),
            "collapsed": sum(r.collapsed for r in runs),
        },
        "vocab_limit": axes.vocab_limit,
        "devices": sorted(
            {f"{r.summary.get('device')}, {r.summary.get('precision')}" for r in runs}
        ),
    }


def curve_panels(keys: set[str]) -> list[dict[str, Any]]:
    """The line panels whose metrics some run logged (`keys`: history_keys; per-block
    metrics in block order)."""
    panels = []
    for title, metric in CURVES:
        if metric.endswith("/"):
            ys = sorted(k for k in keys if k.startswith(metric))
        else:
            ys = [metric] if metric in keys else []
        if ys and X in keys:
            panels.append({"title": title, "x": X, "y": ys})
    return panels


def curve_grids(runs: list[Run], axes: Axes, base: str) -> list[dict[str, Any]]:
    """One grid per value of compare's `--group-by` keys that have a flat W&B key."""
    keys = flat_axes(axes.group_by)
    grids = []
    for values, _members in group_runs(runs, keys).items():
        chosen = dict(zip(keys, values, strict=True))
        title = ", ".join(f"{short(k)}={fmt(v)}" for k, v in chosen.items()) or "all runs"
        grids.append({"title": title, "filters": and_config(base, chosen)})
    return grids


def lr_panels(runs: list[Run], base: str) -> list[dict[str, Any]]:
    """Final loss against lr, one panel per depth, one run set per placement."""
    lrs = {r.config.get("optim.lr") for r in runs}
    if len(lrs) < 2 or not any("val_loss" in r.summary for r in runs):
        return []
    panels = []
    for (depth,), members in group_runs(runs, ["depth"]).items():
        placements = sorted({str(r.config.get("norm.name")) for r in members})
        where = {"depth": depth} if depth is not None else {}
        panels.append(
            {
                "title": f"final validation loss against lr, depth {fmt(depth)}",
                "x": "lr",
                "y": "val_loss",
                "runsets": [
                    {"name": p, "filters": and_config(base, {**where, "norm.name": p})}
                    for p in placements
                ],
            }
        )
    return panels


def table(runs: list[Run], keys: set[str]) -> dict[str, Any]:
    """The runs table's grouping and columns (`keys`: history_keys)."""
    present = {k for r in runs for k in r.summary} | ({"val/loss"} & keys)
    groupby = [short(k) for k in TABLE_GROUPS if any(k in r.config for r in runs)]
    return {"groupby": groupby, "columns": [c for c, key in COLUMNS if key in present]}


def parallel(runs: list[Run], axes: Axes) -> list[dict[str, str]]:
    columns = [{"config": short(k)} for k in flat_axes(axes.varying) if k != "seed"]
    if any("objective" in r.summary for r in runs):
        columns.append({"summary": "objective"})
    return columns


def build_spec(
    runs: list[Run], axes: Axes, verdicts_markdown: str | None, title: str | None = None
) -> dict[str, Any] | None:
    """The dashboard of these runs, or None when none was logged to W&B (no group)."""
    groups = wandb_groups(runs)
    if not groups:
        return None
    projects = sorted({p for r in runs if (p := (r.summary.get("wandb") or {}).get("project"))})
    entities = sorted({e for r in runs if (e := r.config.get("logger.entity"))})
    base = group_filter(groups)
    keys = history_keys(runs)  # every metrics row, read once
    name = title or f"normbench: {Path(groups[0]).name}" + (
        f" and {len(groups) - 1} more" if len(groups) > 1 else ""
    )
    return {
        "format": FORMAT,
        "title": name[:128],
        "project": projects[0] if len(projects) == 1 else None,
        "entity": entities[0] if len(entities) == 1 else None,
        "groups": groups,
        "filters": base,
        "header": header(runs, axes),
        "table": table(runs, keys),
        "parallel": parallel(runs, axes),
        "lr": lr_panels(runs, base),
        "curves": {"panels": curve_panels(keys), "grids": curve_grids(runs, axes, base)},
        "verdicts": verdicts_markdown,
    }


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / NAME
    path.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return path


def read_spec(path: Path) -> dict[str, Any]:
    """A dashboard.json (ValueError when it is not one of this format)."""
    spec = json.loads(read_bounded(path, RECORD_BYTES).decode("utf-8"))
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{path} is not a normbench dashboard ({FORMAT})")
    return spec


def header_markdown(spec: dict[str, Any]) -> str:
    """The report's first block: the command, the axes and the counts."""
    h = spec["header"]
    c = h["counts"]
    lines = []
    if h.get("command"):
        lines += ["```", h["command"], "```", ""]
    lines.append(
        f"**{c['runs']} runs**: {c['completed']} completed, {c['diverged']} diverged, "
        f"{c['collapsed']} collapsed."
    )
    if h["axes"]:
        lines += ["", "| axis | values |", "|---|---|"]
        lines += [f"| {k} | {', '.join(v)} |" for k, v in h["axes"].items()]
    lines += ["", f"Vocabulary: {vocab_name(h.get('vocab_limit'))}."]
    lines.append(f"Device and precision: {'; '.join(h.get('devices') or ['unknown'])}.")
    lines.append(f"W&B group: {', '.join(spec['groups'])}.")
    return "\n".join(lines)
