"""Collapse onto the unigram predictor (`divergence.collapse`): its reference and its
detector.

A model that has learned the token frequencies of the training split and nothing else (the
unigram predictor) gives every position the same distribution, whatever came before. A run
that ends at its loss has collapsed onto it: a Post-LN run without warmup at lr 1e-3 can
end at the unigram level of its data on every seed (6.651 nats on the CPU study's data)
without any detector firing, since nothing diverged.

The reference (`unigram_of`):
- `val_ce`: the cross-entropy of the evaluation split (every token the evaluation scores,
  all but the first) under the training split's counts, smoothed add-half:
  p(t) = (count(t) + 1/2) / (N + V/2) over the data's V ids (GPT-2's 50,257, or K with
  `data.vocab_limit`). Tokens the training split never holds need some probability (3.9% of
  the test split's tokens under wikitext2-valid-as-train; unsmoothed, the reference would
  be infinite). Add-half (the Krichevsky-Trofimov estimator) comes within 0.01 nats of the
  best add-alpha predictor of those counts on that split (6.597 nats against 6.591 at
  alpha 0.29) without choosing alpha on the held-out split; add-one spends 16% of the
  probability on V pseudo counts beside 258,719 training tokens and states 6.633, 0.04 nats
  above what a unigram predictor can reach.
- `train_ce`: the training split under its own counts (its entropy; every token is seen,
  so no smoothing): the reference for the training loss.
Computed once per token cache (run/data/tokens.py: its folder is keyed by the source, the
tokenizer and `data.vocab_limit`) and kept there as `unigram.json`, checked against the
cache's checksums and the smoothing before it is reused; stored in every run's summary
(`unigram`) and W&B config.

The detector (`CollapseDetector`, one of run/monitor/divergence.py's): at an evaluation from step
max(`after` x train.max_steps, `min_steps`) on, the validation loss and the mean training
loss of the last `window` steps both still above, or less than `margin` nats below, their
references: the model has learned nothing measurable beyond the token frequencies. Every
language model passes that level early in training, hence the minimum. The event fires
once; it never stops a run (a run may still leave the level, and `collapsed` is about where
it ends); a run for which it holds at its last evaluation ends with status `collapsed`. A
run too slow to leave the unigram level by then (a learning rate far too low) ends there
too: both learned nothing beyond the frequencies, and the records cannot tell them apart.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from normbench.run.data import vocab
from normbench.run.record.files import write_atomic

log = logging.getLogger(__name__)

ALPHA = 0.5  # add-half
SMOOTHING = "add-half"
FILE = "unigram.json"
VERSION = 1


def cross_entropies(train: np.ndarray, val: np.ndarray, size: int) -> dict[str, Any]:
    """The unigram predictor of `train` (ids below `size`) on both splits, in nats/token."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=size).astype(np.float64)
    targets = np.bincount(np.asarray(val[1:], dtype=np.int64), minlength=size).astype(np.float64)
    n, m = float(counts.sum()), float(targets.sum())
    seen = counts > 0
    own = counts[seen] / n
    smoothed = np.log((counts + ALPHA) / (n + ALPHA * size))
    return {
        "smoothing": SMOOTHING,
        "alpha": ALPHA,
        "vocab": size,
        "train_ce": float(-(own * np.log(own)).sum()),
        "val_ce": float(-(targets * smoothed).sum() / m) if m else math.nan,
        "val_unseen_share": float(targets[~seen].sum() / m) if m else 0.0,
        "train_tokens": int(n),
        "val_targets": int(m),
    }


def _key(meta: dict[str, Any], size: int) -> dict[str, Any]:
    """What the cached numbers depend on beyond the folder's own key."""
    return {
        "version": VERSION,
        "alpha": ALPHA,
        "vocab": size,
        "train_sha256": meta.get("train_sha256"),
        "val_sha256": meta.get("val_sha256"),
    }


def _read(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return stored.get("values") if isinstance(stored.get("values"), dict) else None


def unigram_of(tokens: Any) -> dict[str, Any]:
    """The unigram reference of a run's token streams (run/data/tokens.py's TokenSplits): from
    its cache folder's `unigram.json`, or computed and written there (streams that are not
    a token cache, such as a benchmark's random tokens, are never written anywhere)."""
    size = vocab.data_vocab((tokens.vocab or {}).get("limit"))
    meta = tokens.meta
    cached = "train_sha256" in meta and (Path(tokens.directory) / "meta.json").is_file()
    path, key = Path(tokens.directory) / FILE, _key(meta, size)
    if cached and (found := _read(path, key)) is not None:
        return found
    values = cross_entropies(tokens.train, tokens.val, size)
    if cached:
        try:
            write_atomic(path, json.dumps({"key": key, "values": values}, indent=1) + "\n")
        except OSError as e:  # a read-only cache still trains: the numbers are cheap
            log.warning("could not keep the unigram reference in %s (%s)", path, e.strerror)
    return values


def record_unigram(values: dict[str, Any], logger: Any, summary: Any) -> None:
    """Put the unigram reference in the run's summary (`unigram`) and W&B config."""
    summary.unigram = values
    logger.config_update({"unigram": values})
    log.info(
        "unigram predictor of the training counts (%s): %.4f nats on the validation split, "
        "%.4f on the training split",
        values["smoothing"],
        values["val_ce"],
        values["train_ce"],
    )


class CollapseDetector:
    """At evaluations from step max(after x max_steps, min_steps) on: the validation loss
    and the mean training loss of the last `window` steps both >= their reference - `margin`
    (`unigram`: the values of `unigram_of`). `holds`: at the last evaluation."""

    def __init__(
        self,
        margin: float,
        after: float,
        min_steps: int,
        window: int,
        max_steps: int,
        unigram: dict[str, Any],
    ) -> None:
        self.start = max(1, min_steps, math.ceil(after * max_steps))
        self.margin, self.val_ref, self.train_ref = margin, unigram["val_ce"], unigram["train_ce"]
        self.losses: deque[float] = deque(maxlen=window)
        self.fired = self.holds = False

    def update(self, step: int, loss: float) -> None:
        """A training step's loss."""
        self.losses.append(loss)

    def evaluated(self, step: int, val_loss: float) -> dict[str, Any] | None:
        """The event's fields (run/monitor/divergence.py's Event) the first time the collapse is
        seen; None otherwise."""
        train = sum(self.losses) / max(1, len(self.losses))
        near = val_loss >= self.val_ref - self.margin and train >= self.train_ref - self.margin
        self.holds = step >= self.start and bool(self.losses) and near
        if not self.holds or self.fired:
            return None
        self.fired = True
        message = (
            f"val loss {val_loss:.4g} and training loss {train:.4g} (last {len(self.losses)} "
            f"steps) not {self.margin:g} nats below the unigram predictor's {self.val_ref:.4g} "
            f"and {self.train_ref:.4g} after {step} steps"
        )
        detail = {
            "train_loss": train,
            "unigram_val_ce": self.val_ref,
            "unigram_train_ce": self.train_ref,
            "margin": self.margin,
        }
        limit = self.val_ref - self.margin
        return {
            "step": step,
            "kind": "collapse",
            "value": val_loss,
            "threshold": limit,
            "message": message,
            "detail": detail,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "fired": self.fired, "holds": self.holds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.fired, self.holds = state["fired"], state["holds"]
