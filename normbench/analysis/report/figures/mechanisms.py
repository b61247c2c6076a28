"""The mechanism figures of `normbench compare`: the two instabilities of Wortsman et al.
(2309.14322) over training, per group of runs.

Left, the largest attention logit of any layer (diag's `attn_logit_max/<layer>`, log scale):
its growth is the attention-logit instability that qk-layernorm prevents. Right, the mean
log Z of the output logits (`logits/logz_mean`): its drift is the output-logit divergence that
the z-loss prevents. Colour is placement, as in every figure; an x marks each divergence event
on the curve of the run it belongs to, labelled with its detector at its first event; a diverged run's last steps
come from its events' ring buffer. A panel whose metric no run
of the group measured is left out, and a group without either gets no figure. Runs of one
placement that differ in a key the figures are not grouped by (`--group-by lr` with qk_norm
varying) get their own line style and legend entry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from normbench.analysis.records import Run
from normbench.analysis.report.figures.style import facet_title, pyplot, save, slug, vocab_suffix
from normbench.analysis.table import Axes, describe, group_runs, varying_keys

ATTENTION, LOG_Z = "attn_logit_max/", "logits/logz_mean"
PANELS = (
    (ATTENTION, "largest attention logit (any layer)", "log"),
    (LOG_Z, "mean log Z of the output logits", "linear"),
)


def _value(row: dict[str, Any], prefix: str) -> float | None:
    if prefix == ATTENTION:
        values = [v for k, v in row.items() if k.startswith(prefix) and v is not None]
        return max(values) if values else None
    return row.get(prefix)


def series(run: Run, prefix: str) -> tuple[list[float], list[float]]:
    """(tokens, values) of a run's metric: for the attention logits the largest over the
    layers, for log Z its mean; from the logged rows and from the ring buffer of each event
    (the steps just before a failure, often between two logged rows); non-finite left out."""
    points: dict[float, float] = {}
    for row in run.metrics:
        value = _value(row, prefix)
        if value is not None and math.isfinite(value) and "tokens" in row:
            points[row["tokens"]] = value
    for event in run.events:
        per_step = event["tokens"] / max(1, event["step"])
        for row in event.get("history", []):
            value = _value(row, prefix)
            if value is not None and math.isfinite(value):
                points.setdefault(row["step"] * per_step, value)
    xs = sorted(points)
    return xs, [points[x] for x in xs]


STYLES = ("-", "--", ":", "-.")


def labels(members: list[Run]) -> list[str]:
    """Each run's legend label: its placement, and the values of the other keys that vary
    within the group (e.g. `pre qk_norm=layernorm`), the seed left out."""
    keys = [k for k in varying_keys(members) if k not in ("norm.name", "seed")]
    return [f"{r.config.get('norm.name')} {describe(r, keys)}".strip() for r in members]


def _panel(ax: Any, members: list[Run], prefix: str, colors: dict[str, Any]) -> None:
    """Colour is placement; within a placement, a line style per configuration."""
    names = labels(members)
    styles: dict[str, str] = {}
    labelled: set[str] = set()
    for run, name in zip(members, names, strict=True):
        norm = str(run.config.get("norm.name"))
        xs, ys = series(run, prefix)
        if not xs:
            continue
        same = sum(1 for n in styles if n.split(" ")[0] == norm)
        style = styles.setdefault(name, STYLES[same % len(STYLES)])
        ax.plot(xs, ys, color=colors[norm], lw=1.2, alpha=0.85, ls=style,
                label=None if name in labelled else name)  # fmt: skip
        labelled.add(name)
        kinds: dict[float, list[str]] = {}  # the events of one step share one mark
        for event in run.events:
            kinds.setdefault(event["tokens"], []).append(event["kind"])
        named: set[str] = set()  # each detector named at its first event of the run only
        for tokens, names in kinds.items():
            before = [y for x, y in zip(xs, ys, strict=True) if x <= tokens]
            at = (tokens, before[-1] if before else ys[0])
            ax.plot(*at, "x", color=colors[norm], ms=8, mew=2)
            if new := [n for n in dict.fromkeys(names) if n not in named]:
                named.update(new)
                ax.annotate("\n".join(new), at, textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colors[norm], ha="right", va="bottom")  # fmt: skip
    ax.set_xlabel("tokens seen")
    ax.grid(alpha=0.3)


def mechanism_curves(out: Path, runs: list[Run], axes: Axes, colors: dict[str, Any]) -> list[Path]:
    """One figure per group with the panels its runs measured (see the module's doc)."""
    plt = pyplot()
    paths = []
    for values, members in group_runs(runs, axes.group_by).items():
        panels = [p for p in PANELS if any(series(r, p[0])[0] for r in members)]
        if not panels:
            continue
        fig, axs = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8),
                                layout="constrained", squeeze=False)  # fmt: skip
        for ax, (prefix, label, scale) in zip(axs[0], panels, strict=True):
            _panel(ax, members, prefix, colors)
            ax.set_yscale(scale)
            ax.set_ylabel(label)
            ax.legend(title="run", loc="best")
        title = facet_title(axes.group_by, values)
        fig.suptitle(f"{title}: attention logits and log Z{vocab_suffix(axes)}", fontsize=9)
        paths.append(save(fig, out, f"mechanisms_{slug(title)}"))
    return paths
