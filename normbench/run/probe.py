"""The measurement of `normbench probe`: each placement's dynamics at initialization.

For every placement in `probe.norms` and depth in `probe.depths` (each composed like
`normbench train norm=<p> depth=<N> <your overrides>`), and every seed in `probe.seeds`, on
`probe.batches` batches of real tokens in float32:

- per block l: the gradient norm of the attention weights and of the MLP weights (the
  weight matrices), and of the MLP's output projection W2 alone, averaged over the batches
  (`grad_mlp_out`); the norm of the mean of W2's gradients over the batches
  (`grad_mlp_out_mean`: an estimate of ||E grad W2||, the quantity of Xiong et al. 2020,
  2002.04745, Theorem 1 and Fig. 3); the hidden-state norm entering the block, the mean
  over tokens of ||x_l||_2 (`hidden_norm`), and the mean over tokens of ||x_l||_2^2
  (`hidden_sq`: E||x_l||^2 of their Lemma 2), also at the output of the last block (`layer`
  = N + 1); and for the post-norm placements the mean over tokens of the squared norm of
  each residual sum before its norm, x + A(x) and x + M(x) (`presum_sq_attn`,
  `presum_sq_mlp`: Lemma 2's Post-LN quantity, 3d/2 at every layer under its assumptions,
  where Pre-LN's ||x_l||^2 grows with l);
- per model: the change of the output after one AdamW step of learning rate `probe.lr`
  (default optim.lr) on the mean gradient of those batches (Liu et al. 2020, 2004.08249;
  Wang et al. 2022, 2203.00555): the RMS change of the hidden state entering the LM head
  (`output_change`) and of the logits (`logit_change`), on the same batches, and the RMS of
  that hidden state before the step (`output_rms`): two unrelated outputs of equal RMS r
  differ by sqrt(2) r, so a change near that means the step was too large to compare;
- with `probe.ladder` = K > 0, the same change after one step of each of probe.lr / 2^k,
  k = 0 .. K, every step from the same initialization (`ladder`: a row per step size), so
  that a judge can find the steps small enough for the change to be linear in the step.

A placement that measures its initialization on data (`norm.admin_init=profiled`) does so on
the first of those batches, as training does on the batch of its first step.

The tables over seeds, the probe's files and figures, and its Hydra task are
normbench/analysis/report/probe.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from normbench.model.gpt import GPT
from normbench.model.members import shapes_alone
from normbench.run.config.schema import OptimConfig
from normbench.run.data.batches import RandomWindows
from normbench.run.monitor.diag import hook_streams
from normbench.run.optim import build_optimizer

MODEL_KEYS = ("output_change", "logit_change", "output_rms", "loss")


def _weights(module: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of a sublayer (biases and gains left out; shapes as in a run
    alone, without the member dimension)."""
    shapes = shapes_alone(module)
    return [p for p in module.parameters() if len(shapes[id(p)]) >= 2]


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
    (mean over tokens of ||x||_2, per batch; of the main stream also the mean of ||x||_2^2,
    under `<layer>^2`), the gradient norms of each block's weights (per batch), the sum of
    the gradients and the losses."""
    blocks = list(model.blocks)
    hidden: dict[str, list[float]] = {}

    def record(layer: int, suffix: str, x: torch.Tensor) -> None:
        key = f"{layer}/{suffix}" if suffix else str(layer)
        sq = x.detach().double().square().sum(dim=-1)
        hidden.setdefault(key, []).append(float(sq.sqrt().mean()))
        if not suffix:
            hidden.setdefault(f"{layer}^2", []).append(float(sq.mean()))

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


def _rms(t: torch.Tensor) -> float:
    return float(t.double().square().mean().sqrt())


def _one_step(
    model: GPT,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    total: dict[int, torch.Tensor],
    optim_cfg: OptimConfig,
    lrs: list[float],
) -> tuple[float, list[dict[str, float]]]:
    """For each learning rate, one AdamW step on the mean gradient from the same weights (the
    model's at the call): the RMS change of the hidden state entering the LM head and of the
    logits on the same batches. Returns the RMS of that hidden state before any step, and
    per lr {lr, output_change, logit_change}. The model is left updated by the step of
    lrs[0] (taken last)."""
    head_inputs: list[torch.Tensor] = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, args: head_inputs.append(args[0]))

    @torch.no_grad()
    def outputs() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)  # the same dropout masks before and after every step
        head_inputs.clear()
        logits = torch.cat([model(x)[0] for x, _ in batches])
        return torch.cat(head_inputs), logits

    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    changes: dict[float, dict[str, float]] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            h0, z0 = outputs()
            for lr in reversed(lrs):
                model.load_state_dict(initial)
                for p in model.parameters():
                    p.grad = total[id(p)] / len(batches)
                optimizer = build_optimizer(model, optim_cfg, batches[0][0].device)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                h1, z1 = outputs()
                changes[lr] = {
                    "lr": lr,
                    "output_change": _rms(h1 - h0),
                    "logit_change": _rms(z1 - z0),
                }
    finally:
        handle.remove()
    return _rms(h0), [changes[lr] for lr in lrs]


def _layer_rows(
    model: GPT,
    hidden: dict[str, list[float]],
    grads: dict[str, list[list[float]]],
    total: dict[int, torch.Tensor],
    n: int,
) -> list[dict[str, Any]]:
    """One row per block and one for the output of the last (layer N + 1)."""
    blocks = list(model.blocks)
    layers = []
    for i in range(len(blocks) + 1):
        row: dict[str, Any] = {"layer": i + 1}
        if i < len(blocks):
            row["grad_attn"] = sum(g[i] for g in grads["attn"]) / n
            row["grad_mlp"] = sum(g[i] for g in grads["mlp"]) / n
            row["grad_mlp_out"] = sum(g[i] for g in grads["mlp_out"]) / n
            row["grad_mlp_out_mean"] = _norm([total[id(blocks[i].mlp.proj.weight)] / n])
            for sublayer in ("attn", "mlp"):
                if values := hidden.get(f"{i + 1}/presum_sq_{sublayer}"):
                    row[f"presum_sq_{sublayer}"] = sum(values) / n
        for suffix in type(blocks[0]).streams:
            key = f"{i + 1}/{suffix}" if suffix else str(i + 1)
            name = f"hidden_norm_{suffix}" if suffix else "hidden_norm"
            row[name] = sum(hidden[key]) / n
        row["hidden_sq"] = sum(hidden[f"{i + 1}^2"]) / n
        layers.append(row)
    return layers


def probe_model(
    model: GPT,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optim_cfg: OptimConfig,
    lr: float,
    ladder: int = 0,
) -> dict[str, Any]:
    """One model at initialization: per-block gradient and hidden-state norms, and the output
    change after one AdamW step of `lr`; with `ladder` = K also after one step of each of
    lr / 2, ..., lr / 2^K from the same initialization (`ladder`: one row per step size,
    lr first). The model is left updated by the step of `lr`."""
    hidden, grads, total, losses = _gradients(model, batches)
    lrs = [lr / 2**k for k in range(ladder + 1)]
    output_rms, steps = _one_step(model, batches, total, optim_cfg, lrs)
    n = len(batches)
    return {
        "layers": _layer_rows(model, hidden, grads, total, n),
        "output_change": steps[0]["output_change"],
        "logit_change": steps[0]["logit_change"],
        "output_rms": output_rms,
        "loss": sum(losses) / n,
        "ladder": [{**step, "output_rms": output_rms} for step in steps] if ladder else [],
    }


def probe_seeds(
    cfg: Any, train: Any, seeds: list[int], batches: int, batch_size: int, lr: float, ladder: int,
    device: torch.device,
) -> list[dict[str, Any]]:  # fmt: skip
    """probe_model on a freshly initialized model per seed, each on its own batches."""
    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = GPT.from_config(cfg).to(device)
        windows = RandomWindows(train, cfg.model.context, batch_size, seed=seed)
        data = [windows.next(device) for _ in range(batches)]
        model.profile_init(data[0][0])  # as training starts (norm.admin_init=profiled)
        per_seed.append(probe_model(model, data, cfg.optim, lr, ladder))
    return per_seed
