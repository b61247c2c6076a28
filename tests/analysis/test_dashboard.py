"""`normbench dashboard`: a real sweep's W&B Report and workspace view, specified offline and
checked against the runs' own offline W&B files; the publish path up to the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from normbench.analysis.records import read_records
from normbench.analysis.report.dashboard import FORMAT, build_spec, read_spec
from normbench.analysis.table import choose_axes
from normbench.run.axes import AXES

from support import run_cli
from support.wandb_records import offline_runs


@pytest.fixture(scope="module")
def dashboard(sweep, tmp_path_factory, text_files) -> tuple[Path, object]:
    """`normbench dashboard SWEEP --out DIR` offline: the spec it wrote, and the result."""
    from support import cli_environment

    root = tmp_path_factory.mktemp("dashboard")
    env = cli_environment(root)
    done = run_cli(["dashboard", str(sweep), "--out", str(root / "report")], cwd=root, env=env)
    return root / "report" / "dashboard.json", done


def wandb_runs(sweep: Path) -> list:
    """The sweep's training runs as W&B wrote them (offline .wandb files, read back)."""
    runs = [r for job in sorted(sweep.glob("*_*-d2")) for r in offline_runs(job)]
    assert len(runs) == 4
    return runs


def test_offline_it_writes_the_spec_and_says_how_to_publish(dashboard):
    path, done = dashboard
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [
        f"report: {path.parent / 'index.html'}",
        f"dashboard: {path}",
    ]
    assert done.stderr.strip().splitlines()[-1] == (
        "normbench dashboard: not published: WANDB_MODE=offline; publish it later with: "
        f"normbench dashboard --publish {path}"
    )
    spec = read_spec(path)
    assert spec["format"] == FORMAT
    # the report's layout, drawn from the spec, is in the report and its page
    assert (path.parent / "dashboard.png").is_file()
    assert "W&amp;B dashboard" in (path.parent / "index.html").read_text()
    marker = json.loads((path.parent / ".normbench-report.json").read_text())
    assert "dashboard.json" in json.dumps(marker)  # compare's own file: replaced next time


def test_the_filters_select_exactly_the_sweeps_group(dashboard, sweep):
    from wandb_workspaces import expr

    spec = read_spec(dashboard[0])
    groups = {r.group for r in wandb_runs(sweep)}
    assert groups == {str(sweep)} and spec["groups"] == [str(sweep)]

    def leaves(text: str) -> list[tuple]:
        items = expr.filters_tree_to_v2(expr.expr_to_filters(text))["filters"]
        return [(i["key"]["section"], i["key"]["name"], i["op"], i["value"]) for i in items]

    group = ("run", "group", "=", str(sweep))
    assert leaves(spec["filters"]) == [group]
    grids = {g["title"]: leaves(g["filters"]) for g in spec["curves"]["grids"]}
    assert grids == {
        "lr=0.001": [group, ("config", "lr", "=", 0.001)],
        "lr=10": [group, ("config", "lr", "=", 10.0)],
    }
    for runset in spec["lr"][0]["runsets"]:
        assert leaves(runset["filters"]) == [
            group, ("config", "depth", "=", 2), ("config", "norm", "=", runset["name"])
        ]  # fmt: skip


def test_every_panel_and_column_names_a_key_the_wandb_files_have(dashboard, sweep):
    spec = read_spec(dashboard[0])
    runs = wandb_runs(sweep)
    history = {k for r in runs for row in r.history for k in row}
    summary = {k for r in runs for k in r.summary}
    config = {k for r in runs for k in r.config}
    panels = spec["curves"]["panels"]
    assert [p["title"] for p in panels] == [
        "training loss", "validation loss", "gradient norm (all parameters)",
        "largest attention logit, per block", "mean log Z of the output logits",
    ]  # fmt: skip
    for panel in panels:
        assert panel["x"] in history and set(panel["y"]) <= history, panel
    assert [p["y"] for p in panels][3] == ["attn_logit_max/block_01", "attn_logit_max/block_02"]
    # the runs table: grouped by flat axis keys, columns from the W&B summaries
    assert spec["table"]["groupby"] == ["norm", "depth"]
    assert set(spec["table"]["groupby"]) <= config & set(AXES.values())
    for column in spec["table"]["columns"]:
        key, _, sub = column.partition(".min")
        assert key in summary, column
        if column == "val/loss.min":
            assert all("min" in r.summary["val/loss"] for r in runs if "val/loss" in r.summary)
    assert {"val/loss.min", "diverged", "diverged_at_step", "divergence_reason"} <= set(
        spec["table"]["columns"]
    )
    assert spec["parallel"][-1] == {"summary": "objective"} and "objective" in summary
    assert {c["config"] for c in spec["parallel"][:-1]} == {"norm", "depth", "lr"} <= config
    (lr,) = spec["lr"]  # one depth: one panel, a run set per placement
    assert lr["x"] in config and lr["y"] in summary
    assert [s["name"] for s in lr["runsets"]] == ["post", "pre"]
    assert [g["title"] for g in spec["curves"]["grids"]] == ["lr=0.001", "lr=10"]
    counts = spec["header"]["counts"]
    assert counts == {"runs": 4, "completed": 2, "diverged": 2, "collapsed": 0}
    assert sum(r.summary.get("diverged") is True for r in runs) == counts["diverged"]
    assert spec["header"]["command"].startswith("normbench train -m norm=pre,post")
    assert spec["header"]["devices"] == ["cpu, fp32"]  # every number labelled with its machine
    assert spec["verdicts"] is None  # not a claim preset's sweep


def test_metrics_no_run_logged_give_no_panel(sweep):
    """Runs whose diagnostics were off (diag.every=0): no attention-logit or log Z panel."""
    records = read_records([str(sweep)])
    runs = records.runs
    for run in runs:  # the records as a run with diag.every=0 writes them
        run.metrics = [
            {k: v for k, v in row.items() if not k.startswith(("attn_", "logits/"))}
            for row in run.metrics
        ]
    spec = build_spec(runs, choose_axes(runs, None, None, None), None)
    assert [p["title"] for p in spec["curves"]["panels"]] == [
        "training loss", "validation loss", "gradient norm (all parameters)"
    ]  # fmt: skip
    for run in runs:
        run.summary.pop("objective")
    spec = build_spec(runs, choose_axes(runs, None, None, None), None)
    assert all("summary" not in c for c in spec["parallel"])
    assert "objective" not in spec["table"]["columns"]


def test_runs_not_logged_to_wandb_have_no_dashboard(sweep):
    runs = read_records([str(sweep)]).runs
    for run in runs:
        run.summary.pop("wandb")
    assert build_spec(runs, choose_axes(runs, None, None, None), None) is None


def test_the_library_builds_the_report_and_view_offline(dashboard):
    """wandb-workspaces' objects, converted to what W&B stores, with no network."""
    import wandb_workspaces.reports.v2 as wr

    from normbench.analysis.report.wandb_report import report, workspace

    spec = read_spec(dashboard[0])
    built = report(spec, "an-entity", "normbench")
    model = built._to_model()  # the ReportViewspec that Report.save() sends
    stored = json.loads(model.spec.model_dump_json(by_alias=True, exclude_none=True))
    grids = [b for b in stored["blocks"] if b.get("type") == "panel-grid"]
    assert len(grids) == 1 + len(spec["lr"]) + len(spec["curves"]["grids"])
    first = grids[0]["metadata"]["runSets"][0]
    assert [g["name"] for g in first["grouping"]] == ["norm.value", "depth.value"]
    (leaf,) = first["filters"]["filters"]
    assert (leaf["key"]["name"], leaf["op"], leaf["value"]) == ("group", "=", spec["groups"][0])
    back = wr.Report._from_model(model)  # and back: the same panels
    lines = [p for b in back.blocks if isinstance(b, wr.PanelGrid) for p in b.panels]
    ys = [[getattr(y, "name", y) for y in p.y] for p in lines if isinstance(p, wr.LinePlot)]
    assert ys == [p["y"] for p in spec["curves"]["panels"]] * len(spec["curves"]["grids"])
    view = workspace(spec, "an-entity", "normbench")._to_model()
    assert (view.entity, view.project) == ("an-entity", "normbench")
    dumped = view.model_dump_json(by_alias=True)
    assert spec["groups"][0] in dumped and "attn_logit_max/block_02" in dumped


def test_publish_refuses_a_file_that_is_not_a_dashboard(tmp_path, cli_env):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    done = run_cli(["dashboard", "--publish", str(bad)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"normbench: error: --publish {bad}: {bad} is not a normbench dashboard ({FORMAT})"
    )
    missing = run_cli(
        ["dashboard", "--publish", str(tmp_path / "no.json")], cwd=tmp_path, env=cli_env
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_publish_offline_says_why_and_exits_0(dashboard, tmp_path, cli_env):
    done = run_cli(["dashboard", "--publish", str(dashboard[0])], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "not published: WANDB_MODE=offline" in done.stderr and done.stdout == ""
    env = {k: v for k, v in cli_env.items() if k != "WANDB_MODE"}  # and no netrc, no key
    done = run_cli(["dashboard", "--publish", str(dashboard[0])], cwd=tmp_path, env=env)
    assert done.returncode == 0 and "not published: no W&B credentials" in done.stderr


def test_publish_to_an_unreachable_wandb_says_so_and_exits_0(dashboard, tmp_path, cli_env):
    """Credentials present but the server unreachable (a closed local port): the publish path
    runs through the library up to its first request, fails, and the command still ends 0."""
    env = {k: v for k, v in cli_env.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="a" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    args = ["dashboard", "--publish", str(dashboard[0]), "--entity", "someone"]
    done = run_cli(args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("normbench dashboard: not published: W&B failed (")
    assert line.endswith(f"publish it later with: normbench dashboard --publish {dashboard[0]}")
    assert "a" * 40 not in done.stderr + done.stdout  # the key is never printed


@pytest.mark.skipif(
    not (os.environ.get("WANDB_API_KEY") and os.environ.get("NORMBENCH_TEST_WANDB_ONLINE") == "1"),
    reason="publishing needs a W&B account and the network: set WANDB_API_KEY and "
    "NORMBENCH_TEST_WANDB_ONLINE=1 (it creates a report and a view in project normbench-test)",
)
def test_publish_online_creates_the_report_and_the_view(dashboard, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    done = run_cli(
        ["dashboard", "--publish", str(dashboard[0]), "--project", "normbench-test"],
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "W&B report: https://" in done.stdout and "W&B workspace view: https://" in done.stdout


def test_a_claims_verdicts_are_a_block_of_the_report(sweep, tmp_path, cli_env):
    out = tmp_path / "report"
    args = ["dashboard", str(sweep), "--out", str(out), "--claim", "post_shallow"]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    spec = read_spec(out / "dashboard.json")
    verdicts = (out / "verdicts.md").read_text()
    assert spec["verdicts"] and spec["verdicts"] in verdicts  # the same table as compare's
    assert spec["verdicts"].startswith("### 12. Post-LN beats Pre-LN when shallow")


def test_runs_without_wandb_give_one_line_and_no_dashboard(tmp_path, cli_env, text_files):
    from support import TINY, text_data

    args = ["train", *TINY, "train.max_steps=2", "logger=none", *text_data(*text_files)]
    args += [f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(args, cwd=tmp_path, env=cli_env).returncode == 0
    done = run_cli(["dashboard", str(tmp_path / "run")], cwd=tmp_path, env=cli_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(
        "none of these runs was logged to W&B (logger=none); rerun the sweep with logger=wandb"
    )
    assert not (tmp_path / "run" / "compare").exists()  # nothing written
    # a single run logged to W&B has no W&B group: said as such, not as logger=none
    single = tmp_path / "single"
    args = ["train", *TINY, "train.max_steps=2", *text_data(*text_files), f"hydra.run.dir={single}"]
    assert run_cli(args, cwd=tmp_path, env=cli_env).returncode == 0
    done = run_cli(["dashboard", str(single)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 2 and "logger=none" not in done.stderr
    assert "these runs were logged to W&B but have no W&B group" in done.stderr
