"""The references `make bench` measures normbench's step against: a plain eager float32
GPT-2 step written from the equations (model/baseline.py, nanoGPT-style), and nanoGPT's own
step on its own model.py (from a checkout given with --nanogpt). Both train on the same
random tokens as normbench's case (`random_tokens`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from normbench.run.config import NormbenchConfig
from normbench.run.data import RandomWindows, TokenSplits

GPT2_VOCAB = 50257


def vocab_of(cfg: NormbenchConfig) -> int:
    """The data's vocabulary: GPT-2's 50,257, or `data.vocab_limit`."""
    return cfg.data.vocab_limit or GPT2_VOCAB


def random_tokens(cfg: NormbenchConfig, seed: int) -> TokenSplits:
    """Token splits of uniformly random ids: the model's speed, without the data pipeline."""
    import numpy as np

    B, T = cfg.train.batch_size, cfg.model.context
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_of(cfg), size=B * T * 64 + 1).astype(np.uint16)
    return TokenSplits(tokens, tokens[: B * T + 1], Path("."), {"label": "random tokens"})


def random_batches(cfg: NormbenchConfig) -> RandomWindows:
    """The training windows of `random_tokens`, drawn as normbench's Trainer draws them."""
    tokens = random_tokens(cfg, cfg.seed).train
    return RandomWindows(tokens, cfg.model.context, cfg.train.batch_size, seed=cfg.seed)


def baseline_step(cfg: NormbenchConfig, device: Any) -> Any:
    """A plain eager float32 GPT-2 step (model/baseline.py), on the same random tokens."""
    import torch

    from normbench.model.baseline import BaselineGPT, baseline_optimizer

    batches = random_batches(cfg)
    torch.manual_seed(cfg.seed)
    model = BaselineGPT(
        vocab_of(cfg), cfg.model.context, cfg.model.d_model, cfg.model.n_heads, cfg.depth
    ).to(device)
    optimizer = baseline_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)

    def step(_: int) -> None:
        x, y = batches.next(device)
        optimizer.zero_grad(set_to_none=True)
        model(x.long(), y.long()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def nanogpt_step(
    cfg: NormbenchConfig, device: Any, where: str | None, compiled: bool
) -> tuple[Any, str]:
    """nanoGPT's training step (its train.py) on its own model.py from the folder `where`
    (a checkout of karpathy/nanoGPT; the benchmark does not carry a copy)."""
    import importlib.util
    from contextlib import nullcontext

    import torch

    batches = random_batches(cfg)
    if not where or not Path(where, "model.py").is_file():
        raise FileNotFoundError(
            "the nanogpt cases need --nanogpt DIR, a checkout of karpathy/nanoGPT with model.py"
        )
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(where, "model.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    torch.manual_seed(cfg.seed)
    conf = module.GPTConfig(
        block_size=cfg.model.context, vocab_size=cfg.model.vocab_size, n_layer=cfg.depth,
        n_head=cfg.model.n_heads, n_embd=cfg.model.d_model, dropout=0.0, bias=False,
    )  # fmt: skip
    model = module.GPT(conf).to(device)
    optimizer = model.configure_optimizers(0.1, cfg.optim.lr, (0.9, 0.95), device.type)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if device.type == "cuda":  # as its train.py
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    run = torch.compile(model) if compiled else model

    def step(_: int) -> None:
        x, y = batches.next(device)
        with ctx:
            _, loss = run(x.long().contiguous(), y.long().contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, "bf16" if bf16 else "fp32"
