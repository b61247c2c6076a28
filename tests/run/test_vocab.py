"""A smaller vocabulary (`data.vocab_limit`): the mapping, its cache, the config, a real run,
its record and W&B run, and `normbench compare` keeping vocabularies apart."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from normbench.run.config.schema import Documents
from normbench.run.data.tokens import (
    EOT,
    cache_directory,
    gpt2_encoding,
    load_tokens,
    source_identity,
)
from normbench.run.data.vocab import GPT2_VOCAB, kept_tokens, lookup

from support import REPO, TINY, cli_environment, compose_config, read_jsonl, run_cli, text_data
from support.wandb_records import offline_runs

# A word that only the validation file has, many times: frequent there, absent from training.
VAL_ONLY = " Xylophonist"


def text_cfg(train: Path, val: Path, cache: Path, limit: int | None = None, **extra):
    """A `data=text` config; `limit=None` without the key at all, as configs before it."""
    cfg = {
        "source": "text",
        "label": "sample",
        "train_path": str(train),
        "val_path": str(val),
        "documents": Documents["file"],
        "cache_dir": str(cache),
        **extra,
    }
    if limit is not None:
        cfg["vocab_limit"] = limit
    return OmegaConf.create(cfg)


def reference_kept(train: np.ndarray, limit: int) -> list[int]:
    """The K-1 most frequent training tokens, ties by id, computed another way."""
    counts = Counter(int(t) for t in train)
    ranked = sorted(range(GPT2_VOCAB), key=lambda t: (-counts.get(t, 0), t))
    return ranked[: limit - 1]


# --- the mapping ----------------------------------------------------------------------------


def test_kept_tokens_by_training_count_ties_by_id_then_unseen_ids():
    train = np.array([5, 5, 5, 7, 7, 3, 3, 9, 1], dtype=np.uint16)
    assert kept_tokens(train, 4).tolist() == [5, 3, 7]  # 3 and 7 tie: the lower id first
    assert kept_tokens(train, 6).tolist() == [5, 3, 7, 1, 9]
    assert kept_tokens(train, 8).tolist() == [5, 3, 7, 1, 9, 0, 2]  # then unseen, by id
    shuffled = np.random.default_rng(0).permutation(train)
    assert kept_tokens(shuffled, 6).tolist() == [5, 3, 7, 1, 9]  # counts only, not order
    table = lookup(kept_tokens(train, 4), 4)
    assert table.dtype == np.uint16 and table.size == GPT2_VOCAB
    assert table[[5, 3, 7, 9, 1, EOT]].tolist() == [0, 1, 2, 3, 3, 3]


@pytest.fixture
def split_files(tmp_path, text_files) -> tuple[Path, Path]:
    """The shared text files, the validation one with a word the training one never has."""
    train, val = text_files
    assert VAL_ONLY.strip() not in train.read_text()
    val_copy = tmp_path / "val.txt"
    val_copy.write_text(val.read_text() + (VAL_ONLY * 300) + "\n")
    return train, val_copy


def test_mapping_from_the_training_split_only(tmp_path, split_files):
    train, val = split_files
    full = load_tokens(text_cfg(train, val, tmp_path / "c"))
    small = load_tokens(text_cfg(train, val, tmp_path / "c", limit=300))
    kept = reference_kept(np.asarray(full.train), 300)
    mapping = small.vocab
    assert mapping["kept"] == kept and mapping["limit"] == 300 and mapping["shared_id"] == 299
    # every token renumbered by its training rank, every other one the shared id, both splits
    rank = {t: i for i, t in enumerate(kept)}
    for split in ("train", "val"):
        before, after = getattr(full, split), getattr(small, split)
        expected = [rank.get(int(t), 299) for t in before]
        assert after.dtype == np.uint16 and after.tolist() == expected
    # the word frequent only in validation is not kept: it never counts for the mapping
    word = gpt2_encoding().encode_ordinary(VAL_ONLY)
    assert not set(word) & set(kept)
    assert Counter(int(t) for t in full.val).most_common(1)[0][0] in word  # yet most frequent
    train_mapped = sum(int(t) not in rank for t in full.train)
    assert mapping["train_mapped_tokens"] == train_mapped
    assert mapping["train_mapped_share"] == pytest.approx(train_mapped / len(full.train))
    val_mapped = sum(int(t) not in rank for t in full.val)
    assert mapping["val_mapped_share"] == pytest.approx(val_mapped / len(full.val))
    assert mapping["val_mapped_share"] > mapping["train_mapped_share"]
    # another validation file: another cache entry, the same mapping
    other = tmp_path / "other-val.txt"
    other.write_text("An entirely different held-out text . " * 50)
    again = load_tokens(text_cfg(train, other, tmp_path / "c", limit=300))
    assert again.directory != small.directory and again.vocab["kept"] == kept


def test_cache_key_has_the_limit_and_the_full_cache_keeps_its_key(tmp_path, text_files):
    cache = tmp_path / "c"
    legacy = text_cfg(*text_files, cache)  # no vocab_limit key: a config from before it
    full = load_tokens(legacy)
    ident = source_identity(legacy)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    assert full.directory == cache / "tokens" / f"sample-{key}"  # as before the option
    assert "vocab_limit" not in full.meta["source"] and full.vocab is None
    assert load_tokens(text_cfg(*text_files, cache, vocab_limit=None)).directory == full.directory
    dirs = {k: load_tokens(text_cfg(*text_files, cache, limit=k)).directory for k in (64, 128)}
    assert dirs[64] != dirs[128] and full.directory not in dirs.values()
    assert dirs[64].name.startswith("sample-vocab64-")
    assert dirs[64] == cache_directory(legacy, {**ident, "vocab_limit": 64})
    # read back from the cache: the same mapping and streams, nothing rebuilt
    first = load_tokens(text_cfg(*text_files, cache, limit=64))
    stamp = os.stat(first.directory / "train.bin").st_mtime_ns
    second = load_tokens(text_cfg(*text_files, cache, limit=64))
    assert second.meta == first.meta and second.vocab["kept"] == first.vocab["kept"]
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert os.stat(second.directory / "train.bin").st_mtime_ns == stamp
    assert second.train.max() <= 63 and second.val.max() <= 63
    assert sorted(p.name for p in (cache / "tokens").iterdir()) == sorted(
        [full.directory.name, dirs[64].name, dirs[128].name]
    )  # no leftovers


def test_a_tampered_mapping_is_never_used(tmp_path, text_files):
    cfg = text_cfg(*text_files, tmp_path / "c", limit=64)
    good = load_tokens(cfg)
    kept = list(good.vocab["kept"])
    meta_path = good.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["vocab"]["kept"] = [kept[1], kept[0], *kept[2:]]  # two ranks swapped
    meta_path.write_text(json.dumps(meta))
    rebuilt = load_tokens(cfg)
    assert rebuilt.vocab["kept"] == kept
    np.testing.assert_array_equal(rebuilt.train, good.train)


# --- the config ---------------------------------------------------------------------------


def test_the_model_vocabulary_follows_the_data():
    assert compose_config().model.vocab_size == 50304
    assert compose_config("data.vocab_limit=4096").model.vocab_size == 4096
    assert compose_config("data.vocab_limit=4000").model.vocab_size == 4032  # padded to 64
    cfg = compose_config("data.vocab_limit=4000", "model.vocab_size=4000")
    assert cfg.model.vocab_size == 4000  # exactly K, if asked
    assert compose_config("model.vocab_size=50257").model.vocab_size == 50257
    from normbench.run.config.resolve import resolve

    again = resolve(OmegaConf.structured(cfg))  # resolving the resolved config changes nothing
    assert again.model.vocab_size == 4000 and cfg.model.vocab_size == 4000
    for name in ("wikitext2", "wikitext2_files", "text"):
        assert OmegaConf.load(REPO / "configs" / "data" / f"{name}.yaml").vocab_limit is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.vocab_limit=1"], "data.vocab_limit must be >= 2 (the K-1 most frequent"),
        (["data.vocab_limit=-5"], "data.vocab_limit must be >= 2"),
        (["data.vocab_limit=50258"], "data.vocab_limit=50258 is larger than the GPT-2 vocab"),
        (["data.vocab_limit=many"], "data.vocab_limit: Value 'many' of type 'str' could not"),
        (
            ["data.vocab_limit=4096", "model.vocab_size=50304"],
            "model.vocab_size=50304 does not fit data.vocab_limit=4096: the model would train "
            "outputs that never occur; set model.vocab_size=null (it follows the data: 4096)",
        ),
        (
            ["data.vocab_limit=4000", "model.vocab_size=8192"],
            "set model.vocab_size=null (it follows the data: 4032) or a value in [4000, 4032]",
        ),
        (
            ["data.vocab_limit=4096", "model.vocab_size=4095"],
            "model.vocab_size=4095 is smaller than data.vocab_limit=4096 (4096 tokens)",
        ),
        (["model.vocab_size=50256"], "smaller than the GPT-2 vocabulary (50257 tokens)"),
    ],
)
def test_bad_values_are_one_line(overrides, message):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from normbench.cli import describe_error
    from normbench.errors import ConfigError

    with pytest.raises((ConfigError, HydraException, OmegaConfBaseException)) as e:
        compose_config(*overrides)
    text = describe_error(e.value)
    assert message in text and "\n" not in text, text


def test_older_records_are_full_vocabulary_runs():
    """A record written before data.vocab_limit existed is the same config as null."""
    from normbench.run.record.rundir import differences

    old = {"data": {"label": "x"}, "model": {"vocab_size": 50304}}
    now = {"data": {"label": "x", "vocab_limit": None}, "model": {"vocab_size": 50304}}
    assert differences(old, now) == []
    limited = {"data": {"label": "x", "vocab_limit": 64}, "model": {"vocab_size": 64}}
    assert differences(old, limited) == [
        "data.vocab_limit: None there, 64 here",
        "model.vocab_size: 50304 there, 64 here",
    ]


# --- a real run -----------------------------------------------------------------------------


def test_training_uses_the_vocabulary_and_the_detectors_its_size(tiny_training):
    """A tiny run with 64 tokens: the model has 64 outputs (its first loss near ln 64, not
    ln 50304), the stagnation detector measures against ln 64, and the record carries the
    mapping of the token cache."""
    hair_trigger = [
        "divergence.action=continue",
        "divergence.spike.enabled=false",
        "divergence.grad_explosion.enabled=false",
        "divergence.stagnation.rel=0.99",  # fires while the loss is above 1% of ln(vocab)
        "divergence.stagnation.after=0",
        "divergence.stagnation.min_steps=1",
    ]
    rows, summary = tiny_training("data.vocab_limit=64", "train.log_every=1", *hair_trigger)
    run_dir = tiny_training.last_dir
    assert summary["status"] == "completed"
    assert abs(rows[0]["train/loss"] - math.log(64)) < 0.5
    (event,) = read_jsonl(run_dir / "events.jsonl")
    assert event["kind"] == "stagnation" and event["ln_vocab"] == pytest.approx(math.log(64))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["vocab_limit"] == 64 and config["model"]["vocab_size"] == 64
    mapping = json.loads((run_dir / "vocab.json").read_text())
    cache = load_tokens(compose_config(*_tiny_data(config)).data)
    assert mapping == cache.vocab and len(mapping["kept"]) == 63
    brief = summary["vocab"]
    assert brief["label"] == "vocab 64" and brief["limit"] == 64 and "kept" not in brief
    assert brief["kept_sha256"] == mapping["kept_sha256"]
    assert brief["val_mapped_share"] == mapping["val_mapped_share"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["vocab"] == brief


def _tiny_data(config: dict) -> list[str]:
    d = config["data"]
    return [
        "data=text",
        f"data.train_path={d['train_path']}",
        f"data.val_path={d['val_path']}",
        f"data.cache_dir={d['cache_dir']}",
        f"data.vocab_limit={d['vocab_limit']}",
    ]


# --- the command line: a sweep over the vocabulary, W&B, compare ------------------------------


@pytest.fixture(scope="module")
def vocab_sweep(tmp_path_factory, text_files) -> Path:
    """A real multirun over data.vocab_limit=null,64, W&B offline."""
    root = tmp_path_factory.mktemp("vocab")
    sweep = root / "sweep"
    args = ["train", "-m", "data.vocab_limit=null,64", *TINY, "precision=fp32"]
    args += [*text_data(*text_files), f"hydra.sweep.dir={sweep}"]
    done = run_cli(args, cwd=root, env=cli_environment(root))
    assert done.returncode == 0, done.stderr
    return sweep


def test_the_run_and_its_wandb_run_are_labelled(vocab_sweep):
    full, small = vocab_sweep / "0_pre-d2", vocab_sweep / "1_pre-d2"
    (w_full,) = offline_runs(full / "wandb")
    (w_small,) = offline_runs(small / "wandb")
    assert w_full.name == "pre-layernorm-d2-lr0.001-s0" and "vocab=full" in w_full.tags
    assert w_small.name == "pre-layernorm-d2-lr0.001-s0-vocab64" and "vocab=64" in w_small.tags
    assert w_full.config["vocab_limit"] is None and w_small.config["vocab_limit"] == 64
    mapping = json.loads((small / "vocab.json").read_text())
    assert w_small.config["vocab"] == mapping and "vocab" not in w_full.config
    assert w_small.summary["vocab"]["label"] == "vocab 64"
    assert json.loads((small / "summary.json").read_text())["vocab"]["limit"] == 64
    assert yaml.safe_load((small / "config.yaml").read_text())["model"]["vocab_size"] == 64
    # the full-vocabulary run says so too, without a mapping file
    brief = {"limit": None, "label": "vocab full", "size": 50257}
    assert json.loads((full / "summary.json").read_text())["vocab"] == brief
    assert not (full / "vocab.json").exists()
    assert yaml.safe_load((full / "config.yaml").read_text())["model"]["vocab_size"] == 50304


def test_compare_never_pools_two_vocabularies(vocab_sweep, tmp_path, cli_env):
    before = sorted(p.name for p in vocab_sweep.iterdir())
    done = run_cli(["compare", str(vocab_sweep)], cwd=tmp_path, env=cli_env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "2 vocabularies (data.vocab_limit full, 64)" in done.stderr
    assert "--vocab full or --vocab 64" in done.stderr
    assert sorted(p.name for p in vocab_sweep.iterdir()) == before  # nothing written
    bad = run_cli(["compare", str(vocab_sweep), "--vocab", "128"], cwd=tmp_path, env=cli_env)
    assert bad.returncode == 2 and "--vocab 128: no records of it; they have full, 64" in bad.stderr


@pytest.mark.parametrize("choice, summary_of", [("64", "1_pre-d2"), ("full", "0_pre-d2")])
def test_compare_reports_one_vocabulary_labelled(choice, summary_of, vocab_sweep, tmp_path):
    out = tmp_path / "report"
    args = ["compare", str(vocab_sweep), "--vocab", choice, "--out", str(out)]
    done = run_cli(args, cwd=tmp_path, env=cli_environment(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "left out 1 record of other vocabularies" in done.stderr
    with open(out / "summary.csv") as f:
        (row,) = csv.DictReader(f)
    summary = json.loads((vocab_sweep / summary_of / "summary.json").read_text())
    assert row["vocab"] == choice
    assert float(row["val_loss_mean"]) == pytest.approx(summary["val_loss"], rel=1e-12)
    md = (out / "summary.md").read_text()
    assert md.startswith(f"Vocabulary: {choice} (")
    page = (out / "index.html").read_text()
    assert f"; vocab {choice}</h1>" in page and f'<p class="vocab">Vocabulary: {choice} (' in page
    curves = next(out.glob("curves_*.svg")).read_text()
    assert ("[vocab 64]" in curves) == (choice == "64")  # a reduced vocabulary's figures say so
