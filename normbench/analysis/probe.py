"""`normbench probe`: the dynamics of each placement at initialization, without training.

For every placement in `probe.norms` and depth in `probe.depths` (each composed like
`normbench train norm=<p> depth=<N> <your overrides>`), and every seed in `probe.seeds`, on
`probe.batches` batches of real tokens in float32:

- per block l: the gradient norm of the attention weights and of the MLP weights (the
  weight matrices), and of the MLP's output projection W2 alone (`grad_mlp_out`, the
  quantity of Xiong et al. 2020, 2002.04745, Theorem 1 and Fig. 3), averaged over the batches; and the hidden-state norm entering the block, the mean over tokens of ||x_l||_2
  (their Lemma 2), also at the output of the last block (`layer` = N + 1); and for the
  post-norm placements the mean over tokens of the squared norm of each residual sum before
  its norm, x + A(x) and x + M(x) (`presum_sq_attn`, `presum_sq_mlp`: Lemma 2's Post-LN
  quantity, 3d/2 at every layer under its assumptions, where Pre-LN's ||x_l||^2 grows
  with l);
- per model: the change of the output after one AdamW step of learning rate `probe.lr`
  (default optim.lr) on the mean gradient of those batches (Liu et al. 2020, 2004.08249;
  Wang et al. 2022, 2203.00555): the RMS change of the hidden state entering the LM head
  (`output_change`) and of the logits (`logit_change`), on the same batches, and the RMS of
  that hidden state before the step (`output_rms`): two unrelated outputs of equal RMS r
  differ by sqrt(2) r, so a change near that means the step was too large to compare.

A placement that measures its initialization on data (`norm.admin_init=profiled`) does so on
the first of those batches, as training does on the batch of its first step.

Numbers are means over seeds, with the standard deviation over seeds beside them. The run
directory gets `probe.json` (settings, `layers` with one row per placement, depth and layer,
`models` with one row per placement and depth, and `per_seed` with the same rows for each
seed, from which `normbench compare` judges a preset's claim, normbench/analysis/claims.py), `probe.csv`, `probe.md`, and figures:
`probe_<placement>.png` (and .svg) per placement and `probe.png` comparing them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normbench.analysis import markdown
from normbench.analysis.stats import mean_std
from normbench.model import GPT
from normbench.run.data import RandomWindows
from normbench.run.diag import hook_streams
from normbench.run.optim import build_optimizer

log = logging.getLogger(__name__)

LAYER_KEYS = ("grad_attn", "grad_mlp", "grad_mlp_out", "hidden_norm")
MODEL_KEYS = ("output_change", "logit_change", "output_rms", "loss")


def _weights(module: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of a sublayer (biases and gains left out)."""
    return [p for p in module.parameters() if p.dim() >= 2]


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def _presum_hook(hidden: dict[str, list[float]], layer: int, sublayer: str) -> Any:
    """Records the mean over tokens of ||s||^2 for the residual sum s entering a norm."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        value = args[0].detach().double().square().sum(dim=-1).mean()
        hidden.setdefault(f"{layer}/presum_sq_{sublayer}", []).append(float(value))

    return hook


def _gradients(
    model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[
    dict[str, list[float]], dict[str, list[list[float]]], dict[int, torch.Tensor], list[float]
]:
    """Over the batches: the hidden-state norms entering each block and leaving the last
    (mean over tokens of ||x||_2, per batch), the gradient norms of each block's weights
    (per batch), the sum of the gradients and the losses."""
    blocks = list(model.blocks)
    hidden: dict[str, list[float]] = {}

    def record(layer: int, suffix: str, x: torch.Tensor) -> None:
        key = f"{layer}/{suffix}" if suffix else str(layer)
        hidden.setdefault(key, []).append(float(x.detach().double().norm(dim=-1).mean()))

    handles = hook_streams(model, record)
    for layer, block in enumerate(blocks, start=1):
        for sublayer, norm in block.residual_norms().items():
            handles.append(norm.register_forward_pre_hook(_presum_hook(hidden, layer, sublayer)))
    grads: dict[str, list[list[float]]] = {"attn": [], "mlp": [], "mlp_out": []}
    total = {id(p): torch.zeros_like(p) for p in model.parameters()}
    losses = []
    model.train()
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            _, loss = model(x, y)
            loss.backward()
            losses.append(float(loss.detach()))
            grads["attn"].append([_norm([p.grad for p in _weights(b.attn)]) for b in blocks])
            grads["mlp"].append([_norm([p.grad for p in _weights(b.mlp)]) for b in blocks])
            grads["mlp_out"].append([_norm([b.mlp.proj.weight.grad]) for b in blocks])
            for p in model.parameters():
                if p.grad is not None:
                    total[id(p)] += p.grad
    finally:
        for h in handles:
            h.remove()
    return hidden, grads, total, losses


def _one_step(
    model: GPT,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    total: dict[int, torch.Tensor],
    optim_cfg: Any,
    lr: float,
) -> tuple[torch.Tensor, ...]:
    """One AdamW step on the mean gradient; the hidden state entering the LM head and the
    logits on the same batches before and after it (h0, z0, h1, z1)."""
    head_inputs: list[torch.Tensor] = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, args: head_inputs.append(args[0]))

    @torch.no_grad()
    def outputs() -> tuple[torch.Tensor, torch.Tensor]:
        head_inputs.clear()
        logits = torch.cat([model(x)[0] for x, _ in batches])
        return torch.cat(head_inputs), logits

    try:
        with torch.random.fork_rng(devices=[]):  # the same dropout masks before and after
            torch.manual_seed(0)
            h0, z0 = outputs()
            for p in model.parameters():
                p.grad = total[id(p)] / len(batches)
            optimizer = build_optimizer(model, optim_cfg, batches[0][0].device)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            torch.manual_seed(0)
            h1, z1 = outputs()
    finally:
        handle.remove()
    return h0, z0, h1, z1


def probe_model(
    model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], optim_cfg: Any, lr: float
) -> dict[str, Any]:
    """One model at initialization: per-block gradient and hidden-state norms, and the output
    change after one AdamW step. The model is left updated by that step."""
    blocks = list(model.blocks)
    streams = type(blocks[0]).streams
    hidden, grads, total, losses = _gradients(model, batches)
    h0, z0, h1, z1 = _one_step(model, batches, total, optim_cfg, lr)
    n = len(batches)
    layers = []
    for i in range(len(blocks) + 1):
        row: dict[str, Any] = {"layer": i + 1}
        if i < len(blocks):
            row["grad_attn"] = sum(g[i] for g in grads["attn"]) / n
            row["grad_mlp"] = sum(g[i] for g in grads["mlp"]) / n
            row["grad_mlp_out"] = sum(g[i] for g in grads["mlp_out"]) / n
            for sublayer in ("attn", "mlp"):
                if values := hidden.get(f"{i + 1}/presum_sq_{sublayer}"):
                    row[f"presum_sq_{sublayer}"] = sum(values) / n
        for suffix in streams:
            key = f"{i + 1}/{suffix}" if suffix else str(i + 1)
            name = f"hidden_norm_{suffix}" if suffix else "hidden_norm"
            row[name] = sum(hidden[key]) / n
        layers.append(row)
    rms = lambda t: float(t.double().square().mean().sqrt())  # noqa: E731
    return {
        "layers": layers,
        "output_change": rms(h1 - h0),
        "logit_change": rms(z1 - z0),
        "output_rms": rms(h0),
        "loss": sum(losses) / n,
    }


def run_probe(
    jobs: list[Any],
    tokens_for: Callable[[Any], Any],
    *,
    seeds: list[int],
    batches: int,
    batch_size: int,
    lr: float | None,
    device: torch.device,
) -> dict[str, Any]:
    """Probe every (placement, depth) config in `jobs` over the seeds: the two tables (means
    and standard deviations over seeds) and the same rows per seed (`per_seed`)."""
    layers, models = [], []
    seed_layers: list[dict[str, Any]] = []
    seed_models: list[dict[str, Any]] = []
    for cfg in jobs:
        train = tokens_for(cfg).train
        step_lr = lr if lr is not None else cfg.optim.lr
        per_seed = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = GPT.from_config(cfg).to(device)
            windows = RandomWindows(train, cfg.model.context, batch_size, seed=seed)
            data = [windows.next(device) for _ in range(batches)]
            model.profile_init(data[0][0])  # as training starts (norm.admin_init=profiled)
            per_seed.append(probe_model(model, data, cfg.optim, step_lr))
        who = {"norm": str(cfg.norm.name), "kind": str(cfg.norm.kind), "depth": cfg.depth}
        for seed, result in zip(seeds, per_seed, strict=True):
            seed_layers += [{**who, "seed": seed, **row} for row in result["layers"]]
            seed_models.append(
                {**who, "seed": seed, "lr": step_lr, **{k: result[k] for k in MODEL_KEYS}}
            )
        for i, first in enumerate(per_seed[0]["layers"]):
            row: dict[str, Any] = {**who, "layer": first["layer"]}
            for key in first:
                if key != "layer":
                    row[key], row[f"{key}_std"] = mean_std([r["layers"][i][key] for r in per_seed])
            layers.append(row)
        model_row: dict[str, Any] = {**who, "lr": step_lr}
        for key in MODEL_KEYS:
            model_row[key], model_row[f"{key}_std"] = mean_std([r[key] for r in per_seed])
        models.append(model_row)
        log.info(
            "probe %s-%s depth %d: output change %.4g, logit change %.4g, last-layer MLP "
            "gradient %.4g, hidden norm at the output %.4g",
            who["norm"],
            who["kind"],
            cfg.depth,
            model_row["output_change"],
            model_row["logit_change"],
            layers[-2]["grad_mlp"],
            layers[-1]["hidden_norm"],
        )
    return {
        "layers": layers,
        "models": models,
        "per_seed": {"layers": seed_layers, "models": seed_models},
    }


# --- outputs ----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    return markdown.table(keys, [[_fmt(row.get(k)) for k in keys] for row in rows])


def _with_std(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows whose `key` cells read 'mean ± std' when a std over seeds exists."""
    out = []
    for row in rows:
        new = dict(row)
        for key in keys:
            if row.get(f"{key}_std") is not None:
                new[key] = f"{row[key]:.4g} ± {row[f'{key}_std']:.2g}"
        out.append(new)
    return out


def write_outputs(run_dir: Path, table: dict[str, Any], settings: dict[str, Any]) -> list[Path]:
    """probe.json, probe.csv (layers), probe.md (both tables) and the figures."""
    (run_dir / "probe.json").write_text(
        json.dumps({"settings": settings, **table}, indent=1) + "\n"
    )
    layer_keys = list(dict.fromkeys(k for row in table["layers"] for k in row))
    # (probe.json also holds the per-seed rows; the CSV and markdown show means and stds.)
    with open(run_dir / "probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=layer_keys)
        writer.writeheader()
        writer.writerows(table["layers"])
    shown_layers = [k for k in layer_keys if not k.endswith("_std")]
    model_keys = ["norm", "kind", "depth", "lr", *MODEL_KEYS]
    seeds = ", ".join(map(str, settings["seeds"]))
    md = (
        f"# normbench probe\n\nAt initialization, float32, {settings['batches']} batches of "
        f"{settings['batch_size']} x {settings['context']} tokens, seeds {seeds} "
        f"(mean ± std over seeds).\n\n## Per model\n\n"
        + _markdown(_with_std(table["models"], MODEL_KEYS), model_keys)
        + "\n## Per layer (layer N + 1: the output of the last block)\n\n"
        + _markdown(_with_std(table["layers"], tuple(shown_layers)), shown_layers)
    )
    (run_dir / "probe.md").write_text(md)
    return plot(run_dir, table)


def _depth_ticks(ax: Any, depths: list[int]) -> None:
    """Depths as plain numbers on the log axis."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_locator(NullLocator())  # (the y axis keeps its labels within a decade)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # no font-cache chatter
    import matplotlib.pyplot as plt

    return plt


def _curves(ax: Any, rows: list[dict[str, Any]], key: str, label: str, **style: Any) -> None:
    rows = [r for r in rows if r.get(key) is not None]
    ax.plot([r["layer"] for r in rows], [r[key] for r in rows], label=label, **style)


def _presum(ax: Any, rows: list[dict[str, Any]], **style: Any) -> None:
    """The post-norm placements' Lemma 2 quantity beside the hidden norms: the root of the
    mean squared norm of the sum x + M(x) before its norm (none for the other placements)."""
    rows = [r for r in rows if r.get("presum_sq_mlp") is not None]
    if rows:
        ys = [math.sqrt(r["presum_sq_mlp"]) for r in rows]
        ax.plot([r["layer"] for r in rows], ys, linestyle=":", label="_", **style)


def _panels(fig: Any) -> list[Any]:
    """Gradient norms per block, hidden-state norms per block, output change per depth."""
    axes = fig.subplots(1, 3)
    axes[0].set(xlabel="block l", ylabel="gradient norm of weights", yscale="log")
    axes[0].set_title("gradient norm at init (solid: MLP, dashed: attention)", fontsize=9)
    axes[1].set(xlabel="block l (N + 1: output)", ylabel="mean ||x_l||", yscale="log")
    axes[1].set_title("hidden-state norm entering block l (dotted: ||x + M(x)|| before Norm)",
                      fontsize=9)  # fmt: skip
    axes[2].set(xlabel="depth N", ylabel="RMS change", xscale="log", yscale="log")
    axes[2].set_title("output change after one AdamW step", fontsize=9)
    return axes


def _save(fig: Any, run_dir: Path, stem: str) -> list[Path]:
    paths = [run_dir / f"{stem}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return paths


def _placement_figure(run_dir: Path, table: dict[str, Any], norm: str) -> list[Path]:
    """`probe_<norm>.png`/.svg: one placement, a curve per depth."""
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({r["depth"] for r in table["layers"]})
    fig = plt.figure(figsize=(13, 3.8), layout="constrained")
    axes = _panels(fig)
    for j, depth in enumerate(depths):
        rows = [r for r in table["layers"] if r["norm"] == norm and r["depth"] == depth]
        c = colors[j % len(colors)]
        _curves(axes[0], rows, "grad_mlp", f"N = {depth}", color=c)
        _curves(axes[0], rows, "grad_attn", "_", color=c, linestyle="--")
        _curves(axes[1], rows, "hidden_norm", f"N = {depth}", color=c)
        _presum(axes[1], rows, color=c)
    models = [m for m in table["models"] if m["norm"] == norm]
    axes[2].plot([m["depth"] for m in models], [m["output_change"] for m in models], "o-")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    _depth_ticks(axes[2], depths)
    fig.suptitle(f"normbench probe: norm={norm}")
    return _save(fig, run_dir, f"probe_{norm}")


def _comparison_figure(run_dir: Path, table: dict[str, Any], norms: list[str]) -> list[Path]:
    """`probe.png`/.svg: the placements compared, the per-layer panels at the largest depth."""
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({r["depth"] for r in table["layers"]})
    deepest = depths[-1]
    fig = plt.figure(figsize=(13, 3.8), layout="constrained")
    axes = _panels(fig)
    for j, norm in enumerate(norms):
        c = colors[j % len(colors)]
        rows = [r for r in table["layers"] if r["norm"] == norm and r["depth"] == deepest]
        _curves(axes[0], rows, "grad_mlp", norm, color=c)
        _curves(axes[0], rows, "grad_attn", "_", color=c, linestyle="--")
        _curves(axes[1], rows, "hidden_norm", norm, color=c)
        _presum(axes[1], rows, color=c)
        models = [m for m in table["models"] if m["norm"] == norm]
        x, y = [m["depth"] for m in models], [m["output_change"] for m in models]
        axes[2].plot(x, y, "o-", color=c, label=norm)
    for ax in axes:
        ax.legend(fontsize=8)
    _depth_ticks(axes[2], depths)
    fig.suptitle(f"normbench probe: placements compared (per-layer panels at N = {deepest})")
    return _save(fig, run_dir, "probe")


def plot(run_dir: Path, table: dict[str, Any]) -> list[Path]:
    """A figure per placement (`probe_<norm>.png`/.svg) and one comparing them (`probe.png`)."""
    norms = list(dict.fromkeys(r["norm"] for r in table["layers"]))
    written = []
    for norm in norms:
        written += _placement_figure(run_dir, table, norm)
    return written + _comparison_figure(run_dir, table, norms)
