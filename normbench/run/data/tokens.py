"""Data (`data=<source>`): text -> GPT-2 BPE tokens, cached on disk.

The batches drawn from them are in run/data/batches.py.

Sources: `hub` (a dataset on the Hugging Face hub, or a local copy laid out like one, read
through `datasets`) and `text` (two local UTF-8 files). Documents are joined with GPT-2's
end-of-text token. Token streams are cached as uint16 arrays under
`<cache_dir>/tokens/<label>-<key>/`, keyed by the source and the tokenizer, so the next run
(and a compute node with no network) reuses them.

With `data.vocab_limit=K` (normbench/run/data/vocab.py) the streams are the full-vocabulary ones
renumbered by a mapping derived from the training split; they are cached apart, under
`<label>-vocab<K>-<key>/` with K in the key, the mapping in its meta.json. The
full-vocabulary cache is built first (or reused) and keeps its key, so caches written
before the option existed stay valid.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from normbench.errors import ConfigError, DataError
from normbench.run.data import vocab
from normbench.run.record.files import sha256_file as _sha256_file
from normbench.run.record.files import sha256_text

log = logging.getLogger(__name__)

# GPT-2's BPE files ship with the package (the files tiktoken downloads, MIT licensed),
# so tokenizing never needs a network. tiktoken checks them against these sha256 sums.
_GPT2_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
TOKENIZER = "tiktoken-gpt2"
EOT = 50256  # <|endoftext|>
SPLITS = ("train", "val")


@functools.lru_cache(maxsize=2)
def gpt2_encoding(folder: Path | None = None) -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken Encoding, built from the packaged, hash-checked files.

    `folder` (holding vocab.bpe and encoder.json) defaults to the copy in the package.
    A file whose sha256 differs from GPT-2's raises ValueError.
    """

    if folder is None:
        folder = Path(str(resources.files("normbench") / "assets" / "gpt2"))
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(folder / "vocab.bpe"),
        encoder_json_file=str(folder / "encoder.json"),
        vocab_bpe_hash=_GPT2_FILES["vocab.bpe"],
        encoder_json_hash=_GPT2_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT},
    )


# --- documents ---------------------------------------------------------------------------

_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")  # WikiText: ` = Title = `; sections are ` = = `


def split_documents(lines: Sequence[str], mode: str) -> list[str]:
    """Group lines (with their line endings) into documents.

    `file`: all lines are one document. `wikitext_articles`: a document starts at each
    top-level WikiText heading line such as ` = Valkyria Chronicles III = `.
    """
    if mode == "file":
        return ["".join(lines)]
    if mode != "wikitext_articles":
        raise ValueError(f"unknown documents mode {mode!r}")
    docs: list[list[str]] = [[]]
    for line in lines:
        if _ARTICLE_TITLE.match(line.rstrip("\r\n")) and any(s.strip() for s in docs[-1]):
            docs.append([])
        docs[-1].append(line)
    return ["".join(d) for d in docs if any(s.strip() for s in d)]


def tokenize(documents: Sequence[str]) -> np.ndarray:
    """Encode documents with GPT-2 BPE, each followed by <|endoftext|>, as one uint16 array."""
    enc = gpt2_encoding()
    encoded = enc.encode_ordinary_batch(list(documents), num_threads=os.cpu_count() or 1)
    total = sum(len(t) + 1 for t in encoded)
    out = np.empty(total, dtype=np.uint16)
    pos = 0
    for toks in encoded:
        out[pos : pos + len(toks)] = toks
        out[pos + len(toks)] = EOT
        pos += len(toks) + 1
    return out


# --- sources -----------------------------------------------------------------------------


def _read_text(path_str: str, what: str) -> list[str]:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise DataError(f"{what}={path_str!r} is not a file; give the path of a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what}={path_str!r} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:
        raise DataError(_unreadable(what, path_str, e)) from None
    if not text.strip():
        raise DataError(f"{what}={path_str!r} is empty; give a file with text in it")
    return text.splitlines(keepends=True)


def _unreadable(what: str, path: str, e: OSError) -> str:
    return (
        f"{what}={path!r} cannot be read ({e.strerror or type(e).__name__}); give a readable "
        "UTF-8 text file"
    )


def _local_dir(path: str) -> Path | None:
    p = Path(path).expanduser()
    return p if p.is_dir() else None


def source_identity(data: Any) -> dict[str, Any]:
    """What determines the token streams: the cache key is a hash of this."""
    ident: dict[str, Any] = {"tokenizer": TOKENIZER, "documents": str(data.documents)}
    if data.source == "text":
        for split, key in zip(SPLITS, ("train_path", "val_path"), strict=True):
            path = Path(getattr(data, key)).expanduser()
            if not path.is_file():
                raise DataError(
                    f"data.{key}={getattr(data, key)!r} is not a file; give the path of a UTF-8 text file"
                )
            try:
                ident[split] = _sha256_file(path)
            except OSError as e:
                raise DataError(_unreadable(f"data.{key}", getattr(data, key), e)) from None
    else:
        local = _local_dir(data.path)
        ident.update(
            path=data.path,
            subset=data.subset,
            revision=data.revision,
            splits=[data.train_split, data.val_split],
            text_column=data.text_column,
        )
        if local is not None:  # a local copy: key it by its contents, not its location
            files = sorted(p for p in local.rglob("*") if p.is_file())
            ident["path"] = {str(p.relative_to(local)): _sha256_file(p) for p in files}
    return ident


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_rows(data: Any) -> dict[str, list[str]]:
    """Read the two splits' text column through `datasets` (offline-aware)."""
    local = _local_dir(data.path) is not None
    offline = _truthy_env("HF_HUB_OFFLINE") or _truthy_env("HF_DATASETS_OFFLINE")
    if not local and not offline and not _hub_reachable():
        offline = True
    if (local or offline) and "datasets" not in sys.modules:
        # Must be set before `datasets` is imported, or it retries the network for ~20 s.
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from datasets import load_dataset

        rows = {}
        for split, name in zip(SPLITS, (data.train_split, data.val_split), strict=True):
            ds = load_dataset(data.path, data.subset, revision=data.revision, split=name)
            if data.text_column not in ds.column_names:
                raise DataError(
                    f"{data.path} has no column {data.text_column!r}; "
                    f"set data.text_column to one of {', '.join(ds.column_names)}"
                )
            rows[split] = ds[data.text_column]
        return rows
    except DataError:
        raise
    except Exception as e:  # datasets raises many types for 'not found' and 'no network'
        where = f"{data.path} ({data.subset})" if data.subset else data.path
        reason = " ".join(str(e).split())[:200]
        if offline and not local:
            raise DataError(
                f"{where} is not in the token cache ({data.cache_dir}) and the hub cannot be "
                "reached; run `normbench prepare` with network first (same data.cache_dir), or "
                "train on local files: data=text data.train_path=... data.val_path=..."
            ) from e
        raise DataError(f"could not load {where}: {type(e).__name__}: {reason}") from e


def _read_source(data: Any) -> dict[str, list[str]]:
    """Each split's lines, with their line endings."""
    if data.source == "text":
        return {
            s: _read_text(getattr(data, k), f"data.{k}")
            for s, k in zip(SPLITS, ("train_path", "val_path"), strict=True)
        }
    return {
        split: [r if r.endswith("\n") else r + "\n" for r in rows if r]
        for split, rows in _hub_rows(data).items()
    }


# --- the token cache ----------------------------------------------------------------------


@dataclass
class TokenSplits:
    train: np.ndarray
    val: np.ndarray
    directory: Path
    meta: dict[str, Any]

    @property
    def fingerprint(self) -> dict[str, str]:
        """What the run trains and is evaluated on: the sha256 (16 hex digits) of each split's
        token stream as used, after any vocabulary mapping. It goes into config.yaml
        (`data.fingerprint`) and every checkpoint, so that a run is never continued or
        returned on other data."""
        return {split: str(self.meta[f"{split}_sha256"])[:16] for split in SPLITS}

    @property
    def vocab(self) -> dict[str, Any] | None:
        """The vocabulary mapping (normbench/run/data/vocab.py), or None for GPT-2's full vocabulary."""
        return self.meta.get("vocab")

    def describe(self) -> str:
        """One line: the label, the token counts, the vocabulary and the cache folder."""
        text = (
            f"{self.meta['label']}: {len(self.train):,} train and {len(self.val):,} validation "
            f"tokens in {self.directory}"
        )
        if self.vocab is not None:
            v = self.vocab
            text += (
                f" ({v['label']}: {v['train_mapped_share']:.1%} of train and "
                f"{v['val_mapped_share']:.1%} of validation tokens are the shared id "
                f"{v['shared_id']})"
            )
        return text


def cache_directory(data: Any, ident: dict[str, Any]) -> Path:
    """`<cache_dir>/tokens/<label>[-vocab<K>]-<hash of the source identity>`."""
    key = sha256_text(json.dumps(ident, sort_keys=True), 16)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(data.label))
    if ident.get("vocab_limit") is not None:
        label += f"-vocab{ident['vocab_limit']}"
    return Path(data.cache_dir).expanduser() / "tokens" / f"{label}-{key}"


def load_tokens(data: Any) -> TokenSplits:
    """The train and validation token streams, from the cache or tokenized now and cached;
    with `data.vocab_limit`, renumbered (normbench/run/data/vocab.py)."""
    ident = source_identity(data)  # hashes the source files once per load
    full_dir = cache_directory(data, ident)
    limit = vocab.limit_of(data)
    if limit is None:
        return _cached(full_dir, lambda d: _build_cache(data, ident, d))
    limited = {**ident, "vocab_limit": limit}

    def build(directory: Path) -> None:
        full = _cached(full_dir, lambda d: _build_cache(data, ident, d))
        _build_limited(full, limited, limit, directory)

    return _cached(cache_directory(data, limited), build)


def _cached(directory: Path, build: Callable[[Path], None]) -> TokenSplits:
    """The token streams in `directory`, built there first by `build` when missing (or
    damaged: then moved aside and rebuilt)."""
    if (directory / "meta.json").is_file():
        problem = cache_problem(directory)
        if problem is not None:  # never used as it is: moved aside and rebuilt
            log.warning("the token cache %s is damaged (%s); rebuilding it", directory, problem)
            damaged = directory.with_name(f"{directory.name}.damaged-{os.getpid()}")
            try:
                directory.rename(damaged)
                shutil.rmtree(damaged, ignore_errors=True)
            except OSError:  # another process moved it first
                pass
    if not (directory / "meta.json").is_file():
        build(directory)
    meta = json.loads((directory / "meta.json").read_text())
    arrays = {s: np.memmap(directory / f"{s}.bin", dtype=np.uint16, mode="r") for s in SPLITS}
    return TokenSplits(arrays["train"], arrays["val"], directory, meta)


def cache_problem(directory: Path) -> str | None:
    """Why a cached token folder cannot be trusted (size or sha256 off), or None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "meta.json unreadable"
    for split in SPLITS:
        path = directory / f"{split}.bin"
        if f"{split}_sha256" not in meta:
            return "written without checksums by an older normbench"
        if not path.is_file() or path.stat().st_size != 2 * meta.get(f"{split}_tokens", -1):
            return f"{path.name} has the wrong size"
        if _sha256_file(path) != meta[f"{split}_sha256"]:
            return f"{path.name} does not match its sha256"
    limit = (meta.get("source") or {}).get("vocab_limit")
    if limit is not None:
        return vocab.mapping_problem(meta.get("vocab"), limit)
    return None


def _build_cache(data: Any, ident: dict[str, Any], directory: Path) -> None:
    t0 = time.perf_counter()
    lines = _read_source(data)
    mode = str(data.documents)
    meta: dict[str, Any] = {
        "source": ident,
        "label": str(data.label),
        "tokenizer": TOKENIZER,
        "dtype": "uint16",
    }
    streams = {}
    for split in SPLITS:
        docs = split_documents(lines[split], mode)
        streams[split] = tokenize(docs)
        meta[f"{split}_documents"] = len(docs)
    _write_cache(directory, streams, meta, t0)


def _build_limited(full: TokenSplits, ident: dict[str, Any], limit: int, directory: Path) -> None:
    """The full-vocabulary streams renumbered: the `limit - 1` most frequent tokens of the
    training split kept (ids 0..limit-2 by rank), every other token the shared id."""
    t0 = time.perf_counter()
    kept = vocab.kept_tokens(full.train, limit)
    table = vocab.lookup(kept, limit)
    streams = {"train": table[full.train], "val": table[full.val]}
    meta: dict[str, Any] = {
        "source": ident,
        "label": full.meta["label"],
        "tokenizer": TOKENIZER,
        "dtype": "uint16",
        "full_vocab_cache": full.directory.name,
        **{f"{s}_documents": full.meta[f"{s}_documents"] for s in SPLITS},
        "vocab": vocab.describe(kept, limit, streams["train"], streams["val"]),
    }
    _write_cache(directory, streams, meta, t0)


def _write_cache(
    directory: Path, streams: dict[str, np.ndarray], meta: dict[str, Any], t0: float
) -> None:
    """Write the streams and meta.json into a temporary directory, then rename it: a reader
    never sees half a cache."""
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot write the token cache in {directory.parent} ({e.strerror}); "
            "set data.cache_dir (or NORMBENCH_CACHE_DIR) to a writable folder"
        ) from e
    try:
        for split in SPLITS:
            streams[split].astype(np.uint16).tofile(tmp / f"{split}.bin")
            meta[f"{split}_tokens"] = int(streams[split].size)
            meta[f"{split}_sha256"] = _sha256_file(tmp / f"{split}.bin")
        meta["seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(directory)
        except OSError:  # another process finished first; its copy is identical
            if not (directory / "meta.json").is_file():
                raise
    except OSError as e:  # a full disk, a size limit: the cache is not half written
        free = shutil.disk_usage(directory.parent).free / 2**20
        raise DataError(
            f"cannot write the token cache in {directory.parent} ({e.strerror or e}; "
            f"{free:,.0f} MiB free); set data.cache_dir (or NORMBENCH_CACHE_DIR) to a folder "
            "with space"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_data_fits(tokens: TokenSplits, context: int) -> None:
    """Each split must hold at least one full window of `context` inputs plus its target."""
    for split, arr in (("train", tokens.train), ("validation", tokens.val)):
        if len(arr) < context + 1:
            raise ConfigError(
                f"model.context={context} is longer than the {split} split ({len(arr)} tokens); "
                "lower model.context or use more data"
            )
