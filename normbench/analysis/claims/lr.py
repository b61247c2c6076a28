"""The judges of the claims decided on learning-rate sweeps, as the pre-registration in
docs/reproductions.md states them: claim 4 (`warmup`), claim 5 (`depth_breakdown`)
and `qk_layernorm`, `z_loss`, `long_warmup`, `dyt`, `post_shallow`.

Each reads the cells of its runs (normbench/analysis/claims/sweeps.py: the measures, grid steps,
intervals and gates) and judges every set of cells it needs that the records hold, one check
per set, named by the settings they share where there are several; it raises Missing, saying
what to run, when the records hold none. Every cell compared is reported: its LR
sensitivity, its largest stable lr and its l*, each with its interval or lr.

- **4** (per setting with Post-LN and Pre-LN at warmup 0 and a warmup w): 4a Post-LN's
  sensitivity(0) - sensitivity(w) above 0; 4b Post-LN's largest stable lr, steps(w) -
  steps(0), at least STEP; 4c Post-LN's reduction of 4a minus Pre-LN's above 0. Gate: the
  compared cells trained.
- **5** (per setting with Post-LN at its shallowest depth and a deeper one): 5a Post-LN's
  drop of the largest stable lr, steps(shallow) - steps(deep), at least STEP; 5b per rescue
  present (DeepNorm, Admin, Mix-LN, B2T), Post-LN's drop minus the rescue's at least STEP.
  Pre-LN's drop is reported. Gate, every compared arm alike: trained at the shallow depth,
  with a largest stable lr there that is not "none".
- **qk_layernorm, z_loss, long_warmup**: sensitivity(with) - sensitivity(without) below 0
  (qk-layernorm against none; z-loss > 0 against 0 among the runs without weight decay; each
  longer warmup against the shortest nonzero one). Gate: both cells trained. qk_layernorm
  also reports the base arm's largest attention logit per lr (diagnostics), which decides
  nothing.
- **dyt**: each arm at its own best lr (the argmin of its mean curve); the per-seed final
  losses there match by TOST (margin MATCH); a seed that diverged or collapsed at that lr
  makes it not reproduced. Gate: both cells trained.
- **post_shallow** (at the pre-registered setting SHALLOW, depth 2 with warmup 30; judged
  from experiment=warmup's runs too): l*(Post-LN) - l*(Pre-LN) below 0. Gate, both arms
  alike: trained, and no seed failed at the cell's best lr.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from normbench.analysis.claims.sweeps import (
    NAMES,
    Group,
    at_text,
    best_loss,
    check,
    contrast,
    grid_ratio,
    groups,
    left_out_note,
    lr_cells,
    name,
    pairs,
    report,
    sens,
    stable_steps,
    suffix,
    untrained,
    where,
)
from normbench.analysis.claims.verdict import MATCH, STEP, Missing, Verdict
from normbench.analysis.records import Run
from normbench.analysis.sensitivity import LR, Cell, stable_text
from normbench.analysis.stats import FAILS, above, exceeds, falls_below, tost
from normbench.analysis.table import fmt

RESCUES = ("deepnorm", "admin", "mix", "b2t")  # the placements said to keep depth trainable
SHALLOW = {"depth": 2, "warmup": 30}  # post_shallow's setting, as pre-registered
RUN = "run normbench train -m experiment="


# --- claim 4: Post-LN needs warmup ----------------------------------------------------------


def _warmup_sets(v: Verdict, found: list[Cell]) -> list[tuple[dict[str, Any], int, list[Cell]]]:
    """(the shared settings, w, [Post-LN w0, Post-LN w, Pre-LN w0, Pre-LN w]) per setting and
    warmup w > 0 that has the four cells on one grid."""
    sets, left_out = [], []
    for g in groups(found, ("norm", "warmup")):
        for w in (w for w in g.values(1) if w):
            arms = [g.get(n, x) for n in ("post", "pre") for x in (0, w)]
            if not all(arms):
                continue
            chosen = [c for c in arms if c]
            if len({tuple(c.grid) for c in chosen}) > 1:
                left_out.append(", ".join(name(c) for c in chosen))
                continue
            sets.append((g.at, w, chosen))
    left_out_note(v, left_out)
    return sets


def judge_warmup(v: Verdict, runs: list[Run]) -> None:
    sets = _warmup_sets(v, lr_cells(runs))
    if not sets:
        raise Missing(
            f"no Post-LN and Pre-LN cells at warmup 0 and a warmup, on one lr grid: {RUN}warmup"
        )
    for at, w, arms in sets:
        _warmup_checks(v, suffix(at, len(sets) > 1), w, *arms)


def _warmup_checks(
    v: Verdict, label: str, w: int, post0: Cell, post_w: Cell, pre0: Cell, pre_w: Cell
) -> None:
    ratio = grid_ratio(post0.grid)
    for c in (post0, post_w, pre0, pre_w):
        report(v, c)
    lowers = contrast([(1, post0), (-1, post_w)], sens)
    v.checks.append(
        check(
            f"4a. Warmup lowers Post-LN's LR sensitivity: sensitivity(warmup 0) - "
            f"sensitivity(warmup {w}) above 0{label}",
            f"{lowers.text()} nats",
            above(lowers, 0),
            untrained(post0, post_w),
        )
    )
    raises = contrast([(1, post_w), (-1, post0)], stable_steps)
    v.checks.append(
        check(
            f"4b. Warmup raises Post-LN's largest stable lr: steps(warmup {w}) - steps(warmup "
            f"0) at least {STEP} grid step (x{ratio:.3g}; none counts one step below the "
            f"grid){label}",
            f"{raises.text()} grid steps; largest stable lr {stable_text(post_w.stable)} with "
            f"warmup {w}, {stable_text(post0.stable)} without",
            exceeds(raises, STEP),
            untrained(post0, post_w),
        )
    )
    more = contrast([(1, post0), (-1, post_w), (-1, pre0), (1, pre_w)], sens)
    pre = contrast([(1, pre0), (-1, pre_w)], sens)
    v.checks.append(
        check(
            f"4c. Post-LN needs warmup more than Pre-LN: Post-LN's sensitivity(warmup 0) - "
            f"sensitivity(warmup {w}) minus Pre-LN's above 0{label}",
            f"{more.text()} nats; Pre-LN's reduction {pre.text()} nats",
            above(more, 0),
            untrained(post0, post_w, pre0, pre_w),
        )
    )


# --- claim 5: Post-LN breaks down with depth; the rescues ----------------------------------


def judge_depth_breakdown(v: Verdict, runs: list[Run]) -> None:
    sets = []
    for g in groups(lr_cells(runs), ("norm", "depth")):
        depths = [d for d in g.values(1) if g.get("post", d)]
        sets += [(g, depths[0], deep) for deep in depths[1:]]
    if not sets:
        raise Missing(f"no Post-LN cells at two depths: {RUN}depth_breakdown")
    for g, lo, hi in sets:
        _depth_checks(v, g, lo, hi, suffix(g.at, len(sets) > 1))


def _depth_arms(v: Verdict, g: Group, lo: int, hi: int) -> dict[str, tuple[Cell, Cell]]:
    """Per placement with cells at both depths on Post-LN's grid, its (shallow, deep) cells;
    the others go into the note."""
    grid = g.cells[("post", lo)].grid
    arms, left_out = {}, []
    for norm in ("post", "pre", *RESCUES):
        shallow, deep = g.get(norm, lo), g.get(norm, hi)
        if shallow and deep and shallow.grid == deep.grid == grid:
            arms[norm] = (shallow, deep)
        elif shallow or deep:
            left_out.append(NAMES[norm])
    if left_out:
        note = (
            f"left out{suffix(g.at, True)}, lacking cells at depths {lo} and {hi} on Post-LN's "
            f"lr grid: {', '.join(left_out)}"
        )
        v.note = f"{v.note}; {note}" if v.note else note
    if "post" not in arms:
        raise Missing(f"Post-LN's cells at depths {lo} and {hi} are not on one lr grid")
    return arms


def _shallow_gate(shallow: Cell) -> str:
    """Why the placement is out of regime at the shallow depth ('' when it is not)."""
    gate = untrained(shallow)
    if not gate and shallow.stable is not None and shallow.stable.estimate == 0:
        gate = f"{name(shallow)}: no largest stable lr (none: {stable_text(shallow.stable)})"
    return gate


def _depth_checks(v: Verdict, g: Group, lo: int, hi: int, label: str) -> None:
    arms = _depth_arms(v, g, lo, hi)
    ratio = grid_ratio(arms["post"][0].grid)
    for shallow, deep in arms.values():
        report(v, shallow)
        report(v, deep)
    drops = {n: contrast([(1, a[0]), (-1, a[1])], stable_steps) for n, a in arms.items()}
    if "pre" in drops:
        v.measured.append(
            (
                f"Pre-LN: largest stable lr, depth {lo} - depth {hi} (grid steps){label}",
                drops["pre"].text(),
            )
        )
    post = arms["post"]
    gate = _shallow_gate(post[0])
    v.checks.append(
        check(
            f"5a. Post-LN's largest stable lr falls with depth: steps(depth {lo}) - steps(depth "
            f"{hi}) at least {STEP} grid step (x{ratio:.3g}; none counts one step below the "
            f"grid){label}",
            f"{drops['post'].text()} grid steps; largest stable lr {stable_text(post[0].stable)}"
            f" at depth {lo}, {stable_text(post[1].stable)} at depth {hi}",
            exceeds(drops["post"], STEP),
            gate,
        )
    )
    for norm in (n for n in RESCUES if n in arms):
        rescue = arms[norm]
        d = contrast([(1, post[0]), (-1, post[1]), (-1, rescue[0]), (1, rescue[1])], stable_steps)
        v.checks.append(
            check(
                f"5b. {NAMES[norm]} keeps it up: Post-LN's drop minus {NAMES[norm]}'s at least "
                f"{STEP} grid step{label}",
                f"{d.text()} grid steps; {NAMES[norm]}'s drop {drops[norm].text()}, largest "
                f"stable lr {stable_text(rescue[0].stable)} at depth {lo}, "
                f"{stable_text(rescue[1].stable)} at depth {hi}",
                exceeds(d, STEP),
                "; ".join(x for x in (gate, _shallow_gate(rescue[0])) if x),
            )
        )


# --- sensitivity lowered: qk_layernorm, z_loss, long_warmup ---------------------------------

Choose = Callable[[list[Any]], list[tuple[Any, Any]]]


def _pairs_or_missing(
    v: Verdict, runs: list[Run], key: str, choose: Choose, missing: str
) -> list[tuple[dict[str, Any], Cell, Cell]]:
    found, left_out = pairs(lr_cells(runs), key, choose)
    left_out_note(v, left_out)
    if not found:
        raise Missing(missing)
    return found


def _lowers(
    v: Verdict, runs: list[Run], key: str, choose: Choose, what: str, need: str, claim: str
) -> list[tuple[dict[str, Any], Cell, Cell]]:
    """One check per pair of cells that differ only in `key` (`need` says in what):
    sensitivity(other) - sensitivity(base) below 0. The pairs judged."""
    found = _pairs_or_missing(
        v, runs, key, choose, f"no two cells that differ only in {key} ({need}): {RUN}{claim}"
    )
    for at, base, other in found:
        report(v, base)
        report(v, other)
        d = contrast([(1, other), (-1, base)], sens)
        v.checks.append(
            check(
                f"{what} lowers the LR sensitivity: sensitivity({key} {fmt(other.values[key])}) "
                f"- sensitivity({key} {fmt(base.values[key])}) below 0{suffix(at, len(found) > 1)}",
                f"{d.text()} nats",
                falls_below(d, 0),
                untrained(base, other),
            )
        )
    return found


def _both(a: Any, b: Any) -> Choose:
    return lambda values: [(a, b)] if a in values and b in values else []


def attention_logits(runs: list[Run], cell: Cell) -> dict[float, float]:
    """Per lr, the mean over the cell's seeds of the largest attention logit of any block at
    the run's last diagnostics (empty without diagnostics)."""
    peaks: dict[float, list[float]] = {}
    for r in where(runs, **cell.values):
        diag = r.summary.get("diag") or {}
        found = [
            float(x)
            for k, x in diag.items()
            if k.startswith("attn_logit_max/") and isinstance(x, int | float)
        ]
        if found:
            peaks.setdefault(float(r.config[LR]), []).append(max(found))
    return {lr: statistics.fmean(x) for lr, x in sorted(peaks.items())}


def judge_qk_layernorm(v: Verdict, runs: list[Run]) -> None:
    found = _lowers(
        v,
        runs,
        "qk_norm",
        _both("none", "layernorm"),
        "qk-layernorm",
        "none and layernorm",
        "qk_layernorm",
    )
    for _, base, _ in found:
        logits = attention_logits(runs, base)
        if logits:
            shown = ", ".join(f"{lr:g}: {x:.3g}" for lr, x in logits.items())
            v.measured.append(
                (
                    f"{name(base)}: largest attention logit by lr (max over blocks, mean over seeds)",
                    shown,
                )
            )


def judge_z_loss(v: Verdict, runs: list[Run]) -> None:
    free = where(runs, **{"optim.weight_decay": 0})
    if not free:
        raise Missing(f"no runs without weight decay (optim.weight_decay=0): {RUN}z_loss")
    choose: Choose = lambda values: [(0, z) for z in values if z] if 0 in values else []  # noqa: E731
    what = "The z-loss, without weight decay,"
    _lowers(v, free, "optim.z_loss", choose, what, "0 and a z-loss", "z_loss")


def judge_long_warmup(v: Verdict, runs: list[Run]) -> None:
    def choose(values: list[Any]) -> list[tuple[Any, Any]]:
        warm = [w for w in values if w]
        return [(warm[0], w) for w in warm[1:]]

    _lowers(v, runs, "warmup", choose, "A longer warmup", "two nonzero warmups", "long_warmup")


# --- at each arm's best lr: dyt, post_shallow -----------------------------------------------


def _at_best(cell: Cell) -> tuple[list[float], int]:
    """The per-seed final losses at the cell's best lr, and how many seeds failed there."""
    lr = cell.best_lr
    seeds = [s for s in cell.seeds if lr in s.loss]
    return [s.loss[lr] for s in seeds], sum(lr in s.failed for s in seeds)


def judge_dyt(v: Verdict, runs: list[Run]) -> None:
    found = _pairs_or_missing(
        v,
        runs,
        "norm_kind",
        _both("layernorm", "dyt"),
        f"no LayerNorm and DyT cells that differ only in norm.kind: {RUN}dyt",
    )
    for at, ln, dyt in found:
        report(v, ln)
        report(v, dyt)
        (a, failed_a), (b, failed_b) = _at_best(dyt), _at_best(ln)
        same = tost(a, b, MATCH)
        v.checks.append(
            check(
                f"DyT's final val loss at its best lr matches LayerNorm's at its: equivalent "
                f"within ±{MATCH} nats (TOST), no seed diverging or collapsing there"
                f"{suffix(at, len(found) > 1)}",
                f"DyT (lr {dyt.best_lr:g}) - LayerNorm (lr {ln.best_lr:g}): {same.text()}; "
                f"diverged or collapsed at the best lrs {failed_a + failed_b}/{len(a) + len(b)}",
                FAILS if failed_a + failed_b else same.decision,
                untrained(ln, dyt),
            )
        )


def _best_gate(*arms: Cell) -> str:
    """The arms that never trained, or had a seed fail at their best lr ('' when none)."""
    out = [text for text in [untrained(*arms)] if text]
    for c in arms:
        losses, failed = _at_best(c)
        if c.trained and failed:
            out.append(
                f"{name(c)}: {failed}/{len(losses)} seeds failed at its best lr {c.best_lr:g}"
            )
    return "; ".join(out)


def judge_post_shallow(v: Verdict, runs: list[Run]) -> None:
    found = _pairs_or_missing(
        v,
        where(runs, **SHALLOW),
        "norm",
        _both("pre", "post"),
        f"no Pre-LN and Post-LN cells at {at_text(SHALLOW)}: {RUN}post_shallow (or "
        "experiment=warmup, then compare --claim post_shallow)",
    )
    for at, pre, post in found:
        report(v, pre)
        report(v, post)
        d = contrast([(1, post), (-1, pre)], best_loss)
        v.checks.append(
            check(
                f"Post-LN ends better than Pre-LN at {at_text(SHALLOW)}, each at its best lr: "
                f"l*(Post-LN) - l*(Pre-LN) below 0{suffix(at, len(found) > 1)}",
                f"{d.text()} nats; l* {post.l_star:.4g} at lr {post.best_lr:g} (Post-LN), "
                f"{pre.l_star:.4g} at lr {pre.best_lr:g} (Pre-LN)",
                falls_below(d, 0),
                _best_gate(post, pre),
            )
        )
