"""Batches of token windows: random training windows, and the validation split in order.

Both read a split of `TokenSplits` (run/data/tokens.py), a uint16 token stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class RandomWindows:
    """Training batches: `batch_size` windows of `context + 1` tokens at uniform random offsets."""

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int):
        self.tokens, self.context, self.batch_size = tokens, context, batch_size
        self.rng = np.random.default_rng(seed)
        self._arange = np.arange(context + 1)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.tokens) - self.context, size=self.batch_size)
        window = torch.from_numpy(self.tokens[starts[:, None] + self._arange].astype(np.int64))
        if device.type == "cuda":  # from pinned memory the copy is truly asynchronous
            window = window.pin_memory()
        window = window.to(device, non_blocking=True)
        return window[:, :-1], window[:, 1:]


def eval_windows(
    tokens: np.ndarray, context: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every next-token prediction of the split exactly once, in order, deterministically.

    Non-overlapping windows of `context` inputs, batched; a shorter final window covers the
    remainder.
    """
    n = len(tokens) - 1  # number of (input, target) pairs
    n_full = n // context
    for first in range(0, n_full, batch_size):
        starts = np.arange(first, min(first + batch_size, n_full)) * context
        window = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int64)
        window = torch.from_numpy(window)
        yield window[:, :-1], window[:, 1:]
    if n_full * context < n:
        tail = torch.from_numpy(tokens[n_full * context :].astype(np.int64))[None]
        yield tail[:, :-1], tail[:, 1:]
