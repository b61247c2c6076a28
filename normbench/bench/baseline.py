"""The references `make bench` measures normbench's step against.

`baseline_step`: a plain eager PyTorch GPT-2 training step, no tricks, on `BaselineGPT`.

What a user would otherwise write (nanoGPT's model.py): GPT-2 from its equations, Pre-LN
blocks, fused qkv, `scaled_dot_product_attention`, tanh GELU, tied LM head, the full
(B, T, vocab) logits and `F.cross_entropy` on them, AdamW with its default implementation,
float32 throughout (nanoGPT enables autocast only on CUDA). It shares nothing with
normbench's model, so the benchmark compares two independent implementations; `load_from`
copies a normbench Pre-LN model's weights in, so both can start from the same point.

`nanogpt_step`: nanoGPT's own step on its own model.py, from a checkout given with
`--nanogpt`. Every reference trains on the same random tokens as normbench's case
(`random_tokens`).
"""

from __future__ import annotations

import importlib.util
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normbench.run.config.schema import NormbenchConfig
from normbench.run.data.batches import RandomWindows
from normbench.run.data.tokens import TokenSplits


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class BaselineGPT(nn.Module):
    def __init__(self, vocab: int, context: int, d: int, n_heads: int, depth: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(Block(d, n_heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # GPT-2's init
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    @torch.no_grad()
    def load_from(self, model: nn.Module) -> None:
        """Copy the weights of a normbench GPT (norm=pre, layernorm, sequential) in."""
        vocab = self.wte.weight.shape[0]
        self.wte.weight.copy_(model.wte.state_dict()["weight"][:vocab])  # a run's layout
        self.wpe.weight.copy_(model.wpe.state_dict()["weight"])
        self.ln_f.load_state_dict(model.norm_f.state_dict())
        for mine, theirs in zip(self.h, model.blocks, strict=True):
            mine.ln_1.load_state_dict(theirs.norm_a.state_dict())
            mine.ln_2.load_state_dict(theirs.norm_m.state_dict())
            mine.c_attn.load_state_dict(theirs.attn.qkv.state_dict())
            mine.c_proj.load_state_dict(theirs.attn.proj.state_dict())
            mine.c_fc.load_state_dict(theirs.mlp.fc.state_dict())
            mine.mlp_proj.load_state_dict(theirs.mlp.proj.state_dict())


def baseline_optimizer(model: BaselineGPT, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as nanoGPT configures it: decay on matrices, betas (0.9, 0.95), default kernels."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


# --- the steps ------------------------------------------------------------------------------

GPT2_VOCAB = 50257


def vocab_of(cfg: NormbenchConfig) -> int:
    """The data's vocabulary: GPT-2's 50,257, or `data.vocab_limit`."""
    return cfg.data.vocab_limit or GPT2_VOCAB


def random_tokens(cfg: NormbenchConfig, seed: int) -> TokenSplits:
    """Token splits of uniformly random ids: the model's speed, without the data pipeline."""
    B, T = cfg.train.batch_size, cfg.model.context
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_of(cfg), size=B * T * 64 + 1).astype(np.uint16)
    return TokenSplits(tokens, tokens[: B * T + 1], Path("."), {"label": "random tokens"})


def random_batches(cfg: NormbenchConfig) -> RandomWindows:
    """The training windows of `random_tokens`, drawn as normbench's Trainer draws them."""
    tokens = random_tokens(cfg, cfg.seed).train
    return RandomWindows(tokens, cfg.model.context, cfg.train.batch_size, seed=cfg.seed)


def baseline_step(cfg: NormbenchConfig, device: Any) -> Any:
    """A plain eager float32 GPT-2 step (bench/baseline.py), on the same random tokens."""
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
