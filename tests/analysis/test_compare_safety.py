"""`normbench compare` never deletes what it did not write, reads bad records as skipped, lists
runs killed before their first record, and writes user text as data (escaped, formula-safe)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from support import TINY, cli_environment, run_cli, text_data

MARKER = ".normbench-report.json"
NO_RECORD = "no record (killed before the first write?)"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, text_files) -> Path:
    """A real 2-job multirun (pre, post) of 4 steps; copied by every test that changes it."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_dir = root / "sweep"
    args = ["train", "-m", "norm=pre,post", *TINY, "train.max_steps=4", "train.eval_every=2",
            "optim.warmup_steps=0", "precision=fp32", "logger=none", *text_data(*text_files),
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    done = run_cli(args, cwd=root, env=cli_environment(root))
    assert done.returncode == 0, done.stderr
    return sweep_dir


@pytest.fixture
def mine(sweep, tmp_path) -> Path:
    """This test's own copy of the sweep."""
    return Path(shutil.copytree(sweep, tmp_path / "sweep", symlinks=True))


def snapshot(root: Path) -> dict[str, str]:
    """Every path below `root` with the sha256 of its bytes (folders and links marked)."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def compare(args: list[str], cwd: Path, env: dict[str, str]):
    return run_cli(["compare", *args], cwd=cwd, env=env, timeout=120)


def assert_refused(done, message: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("normbench: error: ")
    assert message in done.stderr, done.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- 1. --out never touches what compare did not write ---------------------------------------


@pytest.mark.parametrize(
    "args, cwd, message",
    [
        (["S", "--out", "S"], "T", "--out S is one of the inputs; choose another --out (the "
         "default is S/compare)"),
        (["S/0_pre-d2", "--out", "S"], "T", "contains the input"),
        (["S", "--out", "."], "S", "--out . is one of the inputs"),
        (["S/1_post-d2", "--out", "."], "T", "--out . contains the input"),
        (["S", "--out", "T/mine"], "T", "exists and is not a normbench compare report (no "
         ".normbench-report.json); choose a new folder"),
        (["S", "--out", "S/multirun.yaml"], "T", "is a file, not a folder"),
    ],
    ids=["out-is-the-sweep", "out-holds-the-run", "out-dot-is-the-sweep", "out-dot-holds-run",
         "out-is-a-user-folder", "out-is-a-file"],
)  # fmt: skip
def test_a_refused_out_touches_nothing(args, cwd, message, mine, tmp_path, cli_env):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("months of work\n")
    roots = {"S": str(mine), "T": str(tmp_path)}

    def path(text: str) -> str:  # S: the sweep, T: the test's folder
        head, sep, tail = text.partition("/")
        return roots[head] + sep + tail if head in roots else text

    args = [path(a) for a in args]
    message = " ".join(path(word) for word in message.split(" "))
    before = snapshot(tmp_path)
    done = compare(args, cwd=Path(roots[cwd]), env=cli_env)
    assert_refused(done, message)
    assert snapshot(tmp_path) == before


def test_rerun_replaces_its_own_report_and_leaves_nothing_beside_it(mine, tmp_path, cli_env):
    records = {k: v for k, v in snapshot(mine).items() if not k.startswith("compare")}
    first = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    report = mine / "compare"
    marker = json.loads((report / MARKER).read_text())
    assert marker["format"] == 1 and "index.html" in marker["files"]
    assert sorted(marker["files"]) == sorted(
        p.relative_to(report).as_posix() for p in report.rglob("*") if p.name != MARKER
    )
    (report / "index.html").write_text("stale")  # a file compare wrote: replaced
    again = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"report: {report / 'index.html'}"
    assert (report / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert leftovers(mine) == [] and leftovers(tmp_path) == []
    assert {k: v for k, v in snapshot(mine).items() if not k.startswith("compare")} == records
    # an explicit --out: a new nested folder, then the same folder again
    out = tmp_path / "reports" / "a"
    for _ in range(2):
        done = compare([str(mine / "0_pre-d2"), "--out", str(out)], cwd=tmp_path, env=cli_env)
        assert done.returncode == 0, done.stderr
    assert (out / "index.html").is_file() and leftovers(out.parent) == []


def test_a_file_added_to_a_report_makes_the_rerun_refuse(mine, tmp_path, cli_env):
    out = tmp_path / "report"
    assert compare([str(mine), "--out", str(out)], cwd=tmp_path, env=cli_env).returncode == 0
    (out / "notes.txt").write_text("my notes\n")
    before = snapshot(tmp_path)
    done = compare([str(mine), "--out", str(out)], cwd=tmp_path, env=cli_env)
    assert_refused(done, f"--out {out} holds notes.txt, which compare did not write")
    assert snapshot(tmp_path) == before
    (out / "notes.txt").unlink()
    (out / "figures").mkdir()  # an empty folder is not compare's either
    assert_refused(compare([str(mine), "--out", str(out)], cwd=tmp_path, env=cli_env), "figures")


def test_a_report_logged_to_wandb_can_be_replaced(mine, tmp_path, cli_env):
    """W&B's offline files in the report are listed in its marker, so a rerun replaces them."""
    out = tmp_path / "report"
    done = compare([str(mine), "--out", str(out), "--wandb"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert (out / "wandb").is_dir()
    done = compare([str(mine), "--out", str(out)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert not (out / "wandb").exists() and leftovers(tmp_path) == []


def test_an_interrupted_build_keeps_the_old_report(mine, tmp_path, cli_env, monkeypatch):
    """Ctrl-C while the figures are drawn: the earlier report stays whole, nothing beside it."""
    from normbench.analysis.report import compare as cmp
    from normbench.analysis.report.figures import runs as figures

    assert compare([str(mine)], cwd=tmp_path, env=cli_env).returncode == 0
    before = snapshot(mine)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "report_figures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cmp.build_report([str(mine)], None)
    assert snapshot(mine) == before and leftovers(mine) == []


def fake_report(folder: Path, text: str) -> Path:
    from normbench.analysis.report.outdir import write_marker

    (folder / "sub").mkdir(parents=True)
    (folder / "index.html").write_text(text)
    (folder / "sub" / "figure.svg").write_text(text)
    write_marker(folder)
    return folder


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_install_swaps_and_removes_only_listed_files(exchange, tmp_path, monkeypatch):
    from normbench.analysis.report import outdir as reportdir

    if not exchange:  # a system without renameat2
        monkeypatch.setattr(reportdir, "_renameat2", lambda *a: False)
    out = fake_report(tmp_path / "report", "old")
    built = fake_report(tmp_path / ".report.tmp-1-ab", "new")
    old = reportdir.install(built, out)
    assert (out / "index.html").read_text() == "new" and (out / "sub" / "figure.svg").is_file()
    assert (old == built) is exchange and (old / "index.html").read_text() == "old"
    (old / "sub" / "yours.txt").write_text("added since")
    assert not reportdir.remove_report(old)  # what the marker does not list stays
    assert sorted(snapshot(old)) == ["sub", "sub/yours.txt"]
    shutil.rmtree(old)
    fresh = fake_report(tmp_path / ".report.tmp-2-cd", "newer")
    assert reportdir.install(fresh, tmp_path / "other") is None
    assert reportdir.remove_report(out) and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


# --- 2 and 3. unreadable records and runs with no record --------------------------------------


def break_records(sweep: Path) -> dict[str, str]:
    """Folders beside the two good runs that compare cannot read, with the reason it gives."""
    config = (sweep / "0_pre-d2" / "config.yaml").read_text()
    summary = (sweep / "0_pre-d2" / "summary.json").read_text()
    cases = {
        "2_list": ({"config.yaml": config, "summary.json": "[1, 2]"},
                   "summary.json is not a JSON object"),
        "3_empty_config": ({"config.yaml": "", "summary.json": summary}, "config.yaml is empty"),
        "4_list_config": ({"config.yaml": "- a\n- b\n", "summary.json": summary},
                          "config.yaml is not a mapping"),
        "5_cut": ({"config.yaml": config, "summary.json": '{"status": "compl'},
                  "summary.json is not valid JSON"),
        "6_probe": ({"config.yaml": config, "probe.json": "3"}, "probe.json is not a JSON object"),
    }  # fmt: skip
    for name, (files, _) in cases.items():
        (sweep / name).mkdir()
        for file, text in files.items():
            (sweep / name / file).write_text(text)
    return {name: reason for name, (_, reason) in cases.items()}


def test_unreadable_records_are_listed_and_the_rest_is_reported(mine, tmp_path, cli_env):
    reasons = break_records(mine)
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("normbench compare: skipped")]
    assert len(lines) == len(reasons)
    for name, reason in reasons.items():
        assert f"normbench compare: skipped {mine / name}: {reason}" in lines
    report = mine / "compare"
    with open(report / "summary.csv") as f:
        assert sorted(r["norm"] for r in csv.DictReader(f)) == ["post", "pre"]
    md, page = (report / "summary.md").read_text(), (report / "index.html").read_text()
    for name, reason in reasons.items():
        assert f"| {mine / name} | {reason} |" in md
        assert f"<td>{mine / name}</td><td>{reason}</td>" in page
    assert "Not in the report" in page.split("<h2>Runs</h2>", 1)[1]


def test_odd_rows_are_named_and_cost_only_themselves(mine, tmp_path, cli_env):
    """Rows normbench never writes (a loss as the string "NaN", a row without `tokens`, a
    line that is not JSON, an event without its kind): compare names the file, leaves those
    rows out and reports the rest; it never crashes."""
    metrics = mine / "0_pre-d2" / "metrics.jsonl"
    rows = metrics.read_text().splitlines(keepends=True)
    odd = [json.dumps({"step": 2, "tokens": 128, "train/loss": "NaN"}) + "\n",
           json.dumps({"step": 3, "train/loss": 9.0}) + "\n", "not json at all\n"]  # fmt: skip
    metrics.write_text("".join(rows[:1] + odd + rows[1:]))
    with open(mine / "1_post-d2" / "events.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, "tokens": 64, "value": 1.0}) + "\n")
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"normbench compare: warning: {metrics}: line 4 not a JSON object" in done.stderr
    assert f"{metrics}: 2 rows that are not normbench's" in done.stderr
    assert f"{mine / '1_post-d2' / 'events.jsonl'}: 1 rows that are not normbench's" in (
        done.stderr
    )
    with open(mine / "compare" / "summary.csv") as f:
        assert sorted(r["norm"] for r in csv.DictReader(f)) == ["post", "pre"]


def test_two_compares_at_once_get_their_own_folders(mine, tmp_path, cli_env):
    """Two compares of several paths started together: each its own default folder (named
    to the microsecond and by its process), each with its whole report."""
    import subprocess
    import sys

    paths = [str(mine / "0_pre-d2"), str(mine / "1_post-d2")]
    command = [sys.executable, "-m", "normbench", "compare", *paths]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=cli_env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = sorted(tmp_path.glob("compare-*"))
    assert len(folders) == 2 and all((f / "index.html").is_file() for f in folders)


def test_a_killed_compare_leaves_nothing_for_good(mine, tmp_path, cli_env):
    """What a compare killed mid-build left beside the report (a hidden temporary folder of
    a process that is gone) is removed by the next compare; a live one's is left alone."""
    dead = mine / ".compare.tmp-999999-0badc0de"
    live = mine / f".compare.tmp-{os.getpid()}-0badc0de"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "index.html").write_text("half")
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert not dead.exists() and live.is_dir() and (mine / "compare" / "index.html").is_file()


def test_an_alias_bomb_in_a_config_is_refused_without_expanding_it(mine, tmp_path, cli_env):
    """A YAML alias bomb in a run's config.yaml (normbench never writes aliases): the record
    is skipped, named, in bounded time and memory; the other run is reported."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    bomb += "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True))  # fmt: skip
    (mine / "0_pre-d2" / "config.yaml").write_text(bomb)
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"skipped {mine / '0_pre-d2'}: config.yaml uses YAML aliases" in done.stderr


def test_no_readable_record_is_a_one_line_error(mine, tmp_path, cli_env):
    break_records(mine)
    for job in ("0_pre-d2", "1_post-d2"):
        shutil.rmtree(mine / job)
    before = snapshot(tmp_path)
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert_refused(done, "no readable run or probe records under")
    assert "summary.json is not a JSON object" in done.stderr
    assert snapshot(tmp_path) == before


def test_a_run_killed_before_its_first_record_is_listed(mine, tmp_path, cli_env):
    killed = mine / "2_pre-d2"  # config and metrics written, killed before summary.json
    shutil.copytree(mine / "0_pre-d2", killed)
    (killed / "summary.json").unlink()
    hydra_only = mine / "3_pre-d2"  # Hydra's files only: killed before normbench wrote any
    shutil.copytree(mine / "0_pre-d2" / ".hydra", hydra_only / ".hydra")
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    skipped = [ln for ln in done.stderr.splitlines() if ln.startswith("normbench compare: ")]
    assert skipped == [f"normbench compare: skipped {d}: {NO_RECORD}" for d in (killed, hydra_only)]
    md = (mine / "compare" / "summary.md").read_text()
    page = (mine / "compare" / "index.html").read_text()
    for folder in (killed, hydra_only):
        assert f"| {folder} | {NO_RECORD} |" in md
        assert f"<td>{folder}</td><td>{NO_RECORD}</td>" in page
    # neither the report, nor checkpoints/ or .hydra/ is taken for a run, on a second pass too
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0 and done.stderr.splitlines() == skipped, done.stderr
    listed = (mine / "compare" / "summary.md").read_text().split("## Not in the report")[1]
    assert [ln for ln in listed.splitlines() if ln.startswith(f"| {mine}")] == [
        f"| {killed} | {NO_RECORD} |",
        f"| {hydra_only} | {NO_RECORD} |",
    ]


# --- 4. user text in the report is data ---------------------------------------------------------


HOSTILE = {
    "0_pre-d2": {"label": "<script>alert(1)</script> a|b & c", "note": "-rm", "offset": -1.5},
    "1_post-d2": {"label": '=HYPERLINK("http://x")', "note": "\tx", "offset": 2.0},
}


def test_labels_are_escaped_in_markdown_and_formula_safe_in_csv(mine, tmp_path, cli_env):
    for i, (job, values) in enumerate(HOSTILE.items()):
        path = mine / job / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["data"]["label"] = values["label"]
        config["extra"] = {"note": values["note"], "offset": values["offset"]}
        config["extra"]["link"] = f"![x{i}](https://example.com/{i}.png)"  # a remote image
        path.write_text(yaml.safe_dump(config))
    done = compare([str(mine)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    report = mine / "compare"
    md = (report / "summary.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt; a\\|b &amp; c" in md
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({ln.replace("\\|", "").count("|") for ln in table}) == 1  # no cell split
    assert "![x0](" not in md and "!\\[x0\\](https://example.com/0.png)" in md
    assert "<script>" not in (report / "index.html").read_text()
    with open(report / "summary.csv", newline="") as f:
        rows = {r["norm"]: r for r in csv.DictReader(f)}
    assert rows["pre"]["data"] == HOSTILE["0_pre-d2"]["label"]  # text kept as it was
    assert rows["post"]["data"] == "'" + HOSTILE["1_post-d2"]["label"]
    assert rows["pre"]["extra.note"] == "'-rm" and rows["post"]["extra.note"] == "'\tx"
    assert rows["pre"]["extra.offset"] == "-1.5" and rows["post"]["extra.offset"] == "2.0"
    assert float(rows["pre"]["val_loss_mean"]) > 0  # numbers stay numbers


def test_csv_cell_and_verdicts_markdown_escape_user_text(tmp_path):
    from normbench.analysis.claims.verdict import REPRODUCED, Check, Verdict, write_verdicts
    from normbench.analysis.table import csv_cell

    cells = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "plain", "", -1.5, 3, True, None]
    assert [csv_cell(c) for c in cells] == [
        "'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "plain", "", -1.5, 3, True, None
    ]  # fmt: skip
    verdict = Verdict(
        "c", "Title", "source", "statement", setting="data <b>x</b> & y",
        measured=[("loss on <i>", "1 | 2")], checks=[Check("a < b", "<1>", REPRODUCED)],
    )  # fmt: skip
    write_verdicts(tmp_path, [verdict])
    text = (tmp_path / "verdicts.md").read_text()
    assert "<b>" not in text and "<i>" not in text and "<1>" not in text
    assert "data &lt;b&gt;x&lt;/b&gt; &amp; y" in text and "| loss on &lt;i&gt; | 1 \\| 2 |" in text
    assert json.loads((tmp_path / "verdicts.json").read_text())[0]["setting"] == verdict.setting
