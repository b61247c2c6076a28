"""A smaller vocabulary for studies (`data.vocab_limit`): GPT-2 BPE, rare tokens merged.

At study widths on a CPU the LM head over GPT-2's 50,304 outputs is most of the work (at
d_model 128 and depth 6 about 85% of the FLOPs). `data.vocab_limit=K` keeps GPT-2's BPE
through tiktoken (the text is tokenized exactly as before) and renumbers the ids:

- the K-1 most frequent tokens of the TRAINING split get the ids 0..K-2 in order of their
  count there, ties broken by the GPT-2 id, so the mapping is a function of the training
  tokens alone and the same on every machine;
- every other token, in the training and the validation split alike, becomes the shared id
  K-1. The validation split never influences the mapping (choosing the kept tokens on it
  would leak the held-out distribution into the model).

Fewer than K-1 distinct training tokens: the remaining kept ids go to unseen tokens (count 0,
lowest GPT-2 id first); they are recorded as `kept_unseen`.

The model's vocabulary follows the data's: `model.vocab_size: null` becomes K rounded up to a
multiple of 64, as GPT-2's 50,257 becomes 50,304 (the same convention; the padded outputs are
never targets, so they only learn to stay low, and a multiple of 64 keeps the GPU's matrix
products on their fast path; 4096 and 8192 are already multiples). An explicit
`model.vocab_size` must lie between K and that (`validate` in config.py): smaller cannot hold
the data, larger would train thousands of outputs that never occur and lose the speed-up.

Losses are NOT comparable across vocabularies: the shared id pools the probability of every
rare token into one easy target, so a K-token run reports a lower loss for the same model
quality. Every record, W&B run and report is therefore labelled with the vocabulary
(`vocab 4096`, `vocab full`), and `normbench compare` never puts two vocabularies in one
table.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from normbench.run.record.files import sha256_text

log = logging.getLogger(__name__)

GPT2_VOCAB = 50257  # tiktoken's gpt2: 50,256 BPE tokens + <|endoftext|>
MULTIPLE = 64  # the model's vocabulary is padded to a multiple of this


def limit_of(data: Any) -> int | None:
    """`data.vocab_limit` (None: the full vocabulary, also for configs that predate it)."""
    value = (
        data.get("vocab_limit") if isinstance(data, dict) else getattr(data, "vocab_limit", None)
    )
    return None if value is None else int(value)


def data_vocab(limit: int | None) -> int:
    """How many distinct ids the token streams can hold."""
    return GPT2_VOCAB if limit is None else limit


def model_vocab(limit: int | None) -> int:
    """The model's vocabulary for `model.vocab_size: null`: the data's, rounded up to a
    multiple of 64 (50,257 -> 50,304; 4000 -> 4032; 4096 -> 4096)."""
    return -(-data_vocab(limit) // MULTIPLE) * MULTIPLE


def name(limit: int | None) -> str:
    """`full` or K: the vocabulary in tables and CSV cells."""
    return "full" if limit is None else str(limit)


def label(limit: int | None) -> str:
    """`vocab full` or `vocab 4096`: how reports and logs name a run's vocabulary."""
    return f"vocab {name(limit)}"


def tag(limit: int | None) -> str:
    """The W&B tag: `vocab=full` or `vocab=4096`."""
    return f"vocab={name(limit)}"


def kept_tokens(train: np.ndarray, limit: int) -> np.ndarray:
    """The GPT-2 ids of the `limit - 1` most frequent tokens of `train`, most frequent first,
    ties broken by the lower GPT-2 id (a pure function of the training tokens)."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=GPT2_VOCAB)
    order = np.lexsort((np.arange(counts.size), -counts))  # last key first: count, then id
    return order[: limit - 1].astype(np.int64)


def lookup(kept: np.ndarray, limit: int) -> np.ndarray:
    """GPT-2 id -> new id: kept[i] -> i, everything else -> the shared id `limit - 1`."""
    table = np.full(GPT2_VOCAB, limit - 1, dtype=np.uint16)
    table[kept] = np.arange(len(kept), dtype=np.uint16)
    return table


def _mapped(tokens: np.ndarray, shared: int) -> tuple[int, int, float]:
    """(tokens, how many are the shared id, their share) of a remapped stream."""
    n, hits = int(tokens.size), int(np.count_nonzero(tokens == shared))
    return n, hits, hits / n if n else 0.0


def kept_digest(kept: list[int]) -> str:
    """A short sha256 of the kept ids in rank order (two records with the same digest used
    the same mapping)."""
    return sha256_text(",".join(map(str, kept)), 16)


def describe(kept: np.ndarray, limit: int, train: np.ndarray, val: np.ndarray) -> dict[str, Any]:
    """The mapping as stored with the token cache and in the run record (`train`, `val`:
    the remapped streams)."""
    shared = limit - 1
    seen = np.bincount(np.asarray(train, dtype=np.int64), minlength=limit)[:shared] > 0
    n_train, hit_train, share_train = _mapped(train, shared)
    n_val, hit_val, share_val = _mapped(val, shared)
    ids = [int(t) for t in kept]
    return {
        "limit": limit,
        "label": label(limit),
        "shared_id": shared,
        "derived_from": "train",
        "rank": "count in the training split, descending; ties by GPT-2 id, ascending",
        "train_tokens": n_train,
        "train_mapped_tokens": hit_train,
        "train_mapped_share": share_train,
        "val_tokens": n_val,
        "val_mapped_tokens": hit_val,
        "val_mapped_share": share_val,
        "kept_unseen": int(np.count_nonzero(~seen)),
        "kept_sha256": kept_digest(ids),
        "kept": ids,  # GPT-2 ids in rank order: kept[i] is new id i
    }


def brief(mapping: dict[str, Any] | None) -> dict[str, Any]:
    """The mapping without its list of ids: for summary.json, logs and tables."""
    if mapping is None:
        return {"limit": None, "label": label(None), "size": GPT2_VOCAB}
    return {"size": mapping["limit"]} | {k: v for k, v in mapping.items() if k != "kept"}


def mapping_problem(mapping: Any, limit: int) -> str | None:
    """Why a cached mapping cannot be trusted, or None."""
    if not isinstance(mapping, dict) or mapping.get("limit") != limit:
        return "its vocabulary mapping is missing"
    kept = mapping.get("kept")
    if not isinstance(kept, list) or len(kept) != limit - 1 or len(set(kept)) != len(kept):
        return "its vocabulary mapping does not list K-1 distinct tokens"
    if mapping.get("kept_sha256") != kept_digest(kept):
        return "its vocabulary mapping does not match its digest"
    return None


def record_vocab(mapping: dict[str, Any] | None, record: Any, logger: Any, summary: Any) -> None:
    """Put the run's vocabulary in its record (summary.json `vocab`, and the whole mapping in
    vocab.json beside it) and in its W&B config (`vocab`)."""
    summary.vocab = brief(mapping)
    if mapping is None:
        return
    record.write_vocab(mapping)
    logger.config_update({"vocab": mapping})
    log.info(
        "%s: the %s most frequent training tokens; %.1f%% of the training and %.1f%% of the "
        "validation tokens are the shared id %s",
        mapping["label"],
        f"{mapping['limit'] - 1:,}",
        100 * mapping["train_mapped_share"],
        100 * mapping["val_mapped_share"],
        mapping["shared_id"],
    )
