"""Data: the packaged tokenizer, documents, the token cache, batches, the hub route offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
from omegaconf import OmegaConf

import normbench
from normbench.errors import ConfigError, DataError
from normbench.run.config.schema import Documents
from normbench.run.data.batches import RandomWindows, eval_windows
from normbench.run.data.tokens import (
    EOT,
    check_data_fits,
    gpt2_encoding,
    load_tokens,
    split_documents,
    tokenize,
)

from support import SHARED, WIKITEXT, run_cli, wikitext_lines

SAMPLE = "Hello world! <|endoftext|> is plain text here.\n\n = Ünïcode = \n 1 @,@ 000 tokens"


def text_cfg(train: Path, val: Path, cache: Path, documents: str = "file"):
    return OmegaConf.create(
        {
            "source": "text",
            "label": "sample",
            "train_path": str(train),
            "val_path": str(val),
            "documents": Documents[documents],
            "cache_dir": str(cache),
        }
    )


def test_packaged_tokenizer_is_tiktoken_gpt2(monkeypatch):
    """Same ids as tiktoken's own gpt2 encoding read from its cache layout in ../shared."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    reference = tiktoken.get_encoding("gpt2")
    ours = gpt2_encoding()
    text = "".join(wikitext_lines("test", 200)) + SAMPLE
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.n_vocab == reference.n_vocab == 50257
    assert ours.eot_token == EOT


def test_tokenizer_files_are_hash_checked(tmp_path):
    package = Path(normbench.__file__).parent / "assets" / "gpt2"
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(package / name, tmp_path / name)
    with open(tmp_path / "vocab.bpe", "a") as f:
        f.write("x y\n")
    with pytest.raises(ValueError, match="Hash mismatch"):
        gpt2_encoding(tmp_path)


def test_wikitext_articles():
    lines = wikitext_lines("valid", 10**6)
    docs = split_documents(lines, "wikitext_articles")
    assert len(docs) == 60  # WikiText-2's validation split has 60 articles
    assert all(d.lstrip().startswith("= ") and not d.lstrip().startswith("= =") for d in docs)
    assert "".join(docs).strip() == "".join(lines).strip()
    assert split_documents(lines, "file") == ["".join(lines)]


def test_tokenize_joins_documents_with_end_of_text():
    docs = ["first document.\n", "second <|endoftext|> one\n"]
    tokens = tokenize(docs)
    assert tokens.dtype == np.uint16
    ends = np.flatnonzero(tokens == EOT)
    assert ends[-1] == len(tokens) - 1 and len(ends) == 2  # the literal text is not special
    enc = gpt2_encoding()
    assert enc.decode(tokens[: ends[0]].tolist()) == docs[0]
    assert enc.decode(tokens[ends[0] + 1 : ends[1]].tolist()) == docs[1]


def test_token_cache_is_built_once_and_reused(tmp_path, text_files):
    cfg = text_cfg(*text_files, tmp_path / "cache")
    first = load_tokens(cfg)
    assert first.directory.parent == tmp_path / "cache" / "tokens"
    assert first.meta["tokenizer"] == "tiktoken-gpt2" and first.meta["dtype"] == "uint16"
    assert first.meta["train_tokens"] == len(first.train) > 10_000
    assert first.train.max() < 50257 and first.val[-1] == EOT
    stamp = os.stat(first.directory / "train.bin").st_mtime_ns
    second = load_tokens(cfg)
    assert second.directory == first.directory
    assert os.stat(second.directory / "train.bin").st_mtime_ns == stamp
    np.testing.assert_array_equal(second.train, first.train)
    assert not list((tmp_path / "cache" / "tokens").glob("*.tmp-*"))  # no leftovers


def test_cache_key_follows_content_and_documents(tmp_path, text_files):
    train, val = text_files
    base = load_tokens(text_cfg(train, val, tmp_path / "c")).directory
    articles = load_tokens(text_cfg(train, val, tmp_path / "c", "wikitext_articles"))
    assert articles.directory != base
    assert articles.meta["train_documents"] > 1
    changed = tmp_path / "train2.txt"
    changed.write_text(train.read_text() + "one more line\n")
    assert load_tokens(text_cfg(changed, val, tmp_path / "c")).directory != base


def test_text_errors_are_one_line(tmp_path, text_files):
    with pytest.raises(DataError, match="is not a file"):
        load_tokens(text_cfg(tmp_path / "nope.txt", text_files[1], tmp_path / "c"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_tokens(text_cfg(binary, text_files[1], tmp_path / "c"))
    assert not (tmp_path / "c" / "tokens").exists() or not any(
        (tmp_path / "c" / "tokens").iterdir()
    )


def test_eval_windows_cover_every_prediction_once():
    tokens = np.arange(1000, dtype=np.uint16)
    xs, ys = zip(*eval_windows(tokens, context=64, batch_size=5), strict=True)
    assert all(x.shape == y.shape for x, y in zip(xs, ys, strict=True))
    np.testing.assert_array_equal(np.concatenate([x.flatten() for x in xs]), tokens[:-1])
    np.testing.assert_array_equal(np.concatenate([y.flatten() for y in ys]), tokens[1:])
    assert xs[-1].shape == (1, 999 - 15 * 64)  # the remainder
    again = [x for x, _ in eval_windows(tokens, 64, 5)]
    assert all((a == b).all() for a, b in zip(xs, again, strict=True))


def test_random_windows_are_shifted_and_seeded():
    import torch

    tokens = np.arange(500, dtype=np.uint16)
    a = RandomWindows(tokens, context=16, batch_size=8, seed=1)
    x, y = a.next(torch.device("cpu"))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = RandomWindows(tokens, 16, 8, seed=1).next(torch.device("cpu"))
    x3, _ = RandomWindows(tokens, 16, 8, seed=2).next(torch.device("cpu"))
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_context_longer_than_the_data_is_rejected(tmp_path):
    (tmp_path / "a.txt").write_text("just a few words\n")
    tokens = load_tokens(text_cfg(tmp_path / "a.txt", tmp_path / "a.txt", tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"model.context=64 is longer than the train split"):
        check_data_fits(tokens, 64)


def _hub_copy(root: Path) -> Path:
    """A local dataset laid out like the hub repository Salesforce/wikitext."""
    repo = root / "wikitext"
    (repo / "wikitext-2-raw-v1").mkdir(parents=True)
    splits = {"train": wikitext_lines("valid", 300), "validation": wikitext_lines("test", 60)}
    splits["test"] = splits["validation"]
    for split, lines in splits.items():
        rows = ["" if not line.strip() else line for line in lines]
        table = pa.table({"text": rows})
        pq.write_table(table, repo / "wikitext-2-raw-v1" / f"{split}-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-2-raw-v1\n  data_files:\n"
        + "".join(
            f"  - split: {s}\n    path: wikitext-2-raw-v1/{s}-*\n"
            for s in ("test", "train", "validation")
        )
        + "---\n# WikiText (test copy)\n"
    )
    return repo


def test_hub_route_through_datasets_offline(tmp_path, cli_env):
    """`normbench prepare` reads a hub-style parquet copy with `datasets`, then reuses the cache."""
    repo = _hub_copy(tmp_path)
    args = ["prepare", "data=wikitext2", f"data.path={repo}"]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "wikitext2:" in done.stdout and str(tmp_path / "cache" / "tokens") in done.stdout
    (cache,) = (tmp_path / "cache" / "tokens").iterdir()
    meta = OmegaConf.load(cache / "meta.json")
    # WikiText article boundaries found in the rows, documents joined by <|endoftext|>.
    assert meta.train_documents == len(
        split_documents(wikitext_lines("valid", 300), "wikitext_articles")
    )
    val = np.fromfile(cache / "val.bin", dtype=np.uint16)
    assert (val == EOT).sum() == meta.val_documents
    again = run_cli(args, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0 and again.stdout == done.stdout


def test_hub_offline_without_cache_says_how_to_prepare(tmp_path, cli_env):
    done = run_cli(["train", "logger=none"], cwd=tmp_path, env=cli_env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "run `normbench prepare`" in done.stderr and "data=text" in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_wikitext_files_exist():
    assert (WIKITEXT / "wiki.valid.tokens").is_file()


def test_unwritable_cache_is_a_one_line_error(tmp_path, text_files):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    with pytest.raises(DataError, match="set data.cache_dir .* to a writable folder"):
        load_tokens(text_cfg(*text_files, blocker / "cache"))
