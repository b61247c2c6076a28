"""`normbench dashboard`: a sweep's W&B Report and saved workspace view, built by the tool.

    normbench dashboard PATH... [--project P] [--entity E] [compare's options]
    normbench dashboard --publish FILE [--project P] [--entity E]

The first form writes the compare report of PATH (normbench/analysis/report/compare.py, the same
options), whose `dashboard.json` (normbench/analysis/report/dashboard.py) says what the dashboard
shows, then publishes it: a W&B Report of the sweep's group (a header with the command, axes
and counts; the runs table grouped by placement and depth with the best validation loss and
the divergence columns; parallel coordinates coloured by `objective`; final loss against
learning rate per depth; loss, gradient norm, attention logit and log Z curves against
`step` grouped by placement; the verdicts) and the same panels as a saved workspace view of
the project, and prints both URLs. The second form publishes a dashboard.json written
earlier. Without W&B credentials, with WANDB_MODE offline or disabled, or when W&B cannot be
reached, nothing is published and one line says how to publish it later; the report and
dashboard.json are written all the same and the exit status is 0.

The project is --project, else the runs' (summary.json `wandb.project`), else `normbench`;
the entity is --entity, else the runs' `logger.entity`, else the API key's default entity.
The panels are built with `wandb-workspaces` (wandb_workspaces.reports.v2 and .workspaces):
`report` and `workspace` build them from the specification alone, without the network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from normbench.analysis.records import CompareError
from normbench.analysis.report.compare import _Parser
from normbench.analysis.report.compare import main as compare_main
from normbench.analysis.report.dashboard import header_markdown, read_spec

DEFAULT_PROJECT = "normbench"


def _wr() -> Any:
    import wandb_workspaces.reports.v2 as wr

    return wr


def runset(name: str, filters: str, groupby: list[str] | None = None, **kw: Any) -> Any:
    """A run set of the report's project (entity and project left empty: the report's own,
    and no lookup on the network until it is saved)."""
    groups = [f"config.{g}" for g in groupby or []]
    return _wr().Runset(name=name, filters=filters, groupby=groups, **kw)


def line_panels(spec: dict[str, Any], groupby: str | None = None) -> list[Any]:
    wr = _wr()
    extra: dict[str, Any] = {}
    if groupby:  # the workspace groups in the panel (its one run set holds every run)
        extra = {"groupby": wr.Config(groupby), "groupby_aggfunc": "mean",
                 "groupby_rangefunc": "minmax"}  # fmt: skip
    return [
        wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]), title_x=p["x"], **extra)
        for p in spec["curves"]["panels"]
    ]


def parallel_panel(spec: dict[str, Any]) -> Any:
    wr = _wr()
    columns = [
        wr.ParallelCoordinatesPlotColumn(
            metric=wr.Config(c["config"]) if "config" in c else wr.SummaryMetric(c["summary"]),
            log=True if c.get("config") == "lr" else None,
        )
        for c in spec["parallel"]
    ]
    return wr.ParallelCoordinatesPlot(title="axes, coloured by objective", columns=columns)


def lr_panel(panel: dict[str, Any]) -> Any:
    wr = _wr()
    return wr.ScatterPlot(
        title=panel["title"], x=wr.Config(panel["x"]), y=wr.SummaryMetric(panel["y"]), log_x=True
    )


def report_blocks(spec: dict[str, Any]) -> list[Any]:
    """The report's blocks, in the order of the page: header, runs, lr, curves, verdicts."""
    wr = _wr()
    table = spec["table"]
    columns = [f"summary:{c}" for c in table["columns"]]
    blocks: list[Any] = [
        wr.MarkdownBlock(text=header_markdown(spec)),
        wr.H2(text="Runs"),
        wr.PanelGrid(
            runsets=[runset("sweep", spec["filters"], table["groupby"], pinned_columns=columns)],
            panels=[parallel_panel(spec)] if spec["parallel"] else [],
        ),
    ]
    if spec["lr"]:
        blocks.append(wr.H2(text="Final loss against learning rate, one run set per placement"))
        for panel in spec["lr"]:
            sets = [runset(s["name"], s["filters"]) for s in panel["runsets"]]
            blocks.append(wr.PanelGrid(runsets=sets, panels=[lr_panel(panel)]))
    if spec["curves"]["panels"]:
        for grid in spec["curves"]["grids"]:
            blocks.append(wr.H2(text=f"Training: {grid['title']}, grouped by placement"))
            sets = [runset(grid["title"], grid["filters"], ["norm"])]
            blocks.append(wr.PanelGrid(runsets=sets, panels=line_panels(spec)))
    if spec.get("verdicts"):
        blocks += [wr.H2(text="Verdicts"), wr.MarkdownBlock(text=spec["verdicts"])]
    return blocks


def report(spec: dict[str, Any], entity: str, project: str) -> Any:
    """The W&B Report of a dashboard specification (not saved)."""
    return _wr().Report(
        entity=entity,
        project=project,
        title=spec["title"],
        description="Built by normbench dashboard from the sweep's run records.",
        blocks=report_blocks(spec),
        width="fluid",
    )


def workspace(spec: dict[str, Any], entity: str, project: str) -> Any:
    """The same panels as a saved workspace view, its runs filtered to the sweep's group."""
    import wandb_workspaces.workspaces as ws

    runs = spec["header"]["counts"]["runs"]
    sections = [ws.Section(name="Runs", panels=[parallel_panel(spec)], is_open=True)]
    if spec["lr"]:
        panel = dict(spec["lr"][0], title="final validation loss against lr")
        sections.append(ws.Section(name="Learning rate", panels=[lr_panel(panel)], is_open=True))
    if spec["curves"]["panels"]:
        panels = line_panels(spec, groupby="norm")
        sections.append(ws.Section(name="Training", panels=panels, is_open=True))
    return ws.Workspace(
        entity=entity,
        project=project,
        name=spec["title"][:128],
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis="step", max_runs=max(10, min(runs, 100))),
        runset_settings=ws.RunsetSettings(
            filters=spec["filters"],
            groupby=[ws.Config(g) for g in spec["table"]["groupby"]],
            pinned_columns=[f"summary:{c}" for c in spec["table"]["columns"]],
        ),
    )


def not_publishable() -> str | None:
    """Why nothing can be published now (None: try)."""
    from normbench.run.logger import wandb_credentials_present  # (torch: only to publish)

    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if not wandb_credentials_present():
        return "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    return None


def publish_hint(path: Path) -> str:
    return f"normbench dashboard --publish {path}"


def publish(path: Path, entity: str | None, project: str | None) -> tuple[str, str] | None:
    """Save the report and the workspace view of dashboard.json `path`; their URLs, or None
    (one line on stderr says why and how to publish later). Never raises for W&B."""
    from normbench.run.logger import import_wandb

    spec = read_spec(path)
    reason = not_publishable()
    if reason is None:
        try:
            wandb = import_wandb()
            project = project or spec.get("project") or DEFAULT_PROJECT
            entity = entity or spec.get("entity") or wandb.Api().default_entity
            built = report(spec, entity, project).save()
            view = workspace(spec, entity, project).save()
            return built.url, view.url
        except Exception as e:  # W&B unreachable, refused, or changed: say so, never fail
            reason = f"W&B failed ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
    print(
        f"normbench dashboard: not published: {reason}; publish it later with: "
        f"{publish_hint(path)}",
        file=sys.stderr,
        flush=True,
    )
    return None


def _own_options(argv: list[str]) -> tuple[Any, list[str]]:
    """--publish, --project and --entity out of argv; the rest is compare's."""

    parser = _Parser(prog="normbench dashboard", add_help=False, allow_abbrev=False)
    for name in ("--publish", "--project", "--entity"):
        parser.add_argument(name)
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> None:
    if argv in (["-h"], ["--help"]):
        print(__doc__, end="")
        return
    own, rest = _own_options(argv)
    if own.publish is not None:
        if rest:
            raise CompareError(f"--publish takes one file; remove: {' '.join(rest)}")
        path = Path(own.publish)
        try:
            read_spec(path)
        except (OSError, ValueError) as e:
            raise CompareError(f"--publish {path}: {' '.join(str(e).split())[:200]}") from e
    else:
        path = compare_main(rest, need_wandb=True, prog="normbench dashboard") / "dashboard.json"
        if not path.is_file():  # compare said why on stderr
            raise CompareError(f"no dashboard was written in {path.parent}")
        print(f"dashboard: {path}", flush=True)
    urls = publish(path, own.entity, own.project)
    if urls:
        print(f"W&B report: {urls[0]}\nW&B workspace view: {urls[1]}", flush=True)
