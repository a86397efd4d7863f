"""Corpora, token files and the deterministic per-process loader."""

import hashlib
import json
import os
import pickle
import urllib.request

import numpy as np
import pytest

from gptjax.config import DataConfig
from gptjax.data import loader
from gptjax.data import tokenizer as tok_lib

STREAM = np.arange(10_000, dtype=np.uint16) % 997


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path / "cache"))


def test_same_batches_for_the_same_seed_and_position_across_restarts():
    a = loader.TrainBatches(STREAM, 16, 8, seed=3)
    b = loader.TrainBatches(STREAM, 16, 8, seed=3)
    for first in (0, 8, 456, 80_000):
        np.testing.assert_array_equal(a.at(first), b.at(first))
    assert not np.array_equal(a.at(0), a.at(8))
    assert not np.array_equal(a.at(0), loader.TrainBatches(STREAM, 16, 8, seed=4).at(0))


def test_resuming_the_iterator_from_a_position_matches_the_uninterrupted_one():
    batches = loader.TrainBatches(STREAM, 16, 8, seed=0)
    full = list(batches.iterate(0, 12))
    resumed = list(batches.iterate(7 * 8, 5))
    assert len(resumed) == 5
    for x, y in zip(full[7:], resumed):
        np.testing.assert_array_equal(x, y)


def test_a_new_batch_size_continues_at_the_example_reached():
    # 5 batches of 8, then 4 of 6 from example 40: the same 64 examples, in the same order, as
    # 8 batches of 8 (nothing seen twice, nothing skipped).
    stream = np.arange(10_000, dtype=np.uint16)  # every window distinct
    small, other = loader.TrainBatches(stream, 16, 8, seed=2), loader.TrainBatches(stream, 16, 6, seed=2)
    resumed = np.concatenate([*small.iterate(0, 5), *other.iterate(40, 4)])
    np.testing.assert_array_equal(resumed, np.concatenate(list(small.iterate(0, 8))))
    rows = [tuple(r) for r in resumed]
    assert len(set(rows)) == len(rows), "the windows must differ, or the comparison proves nothing"


def test_windows_are_inputs_and_shifted_targets_of_the_stream():
    rows = loader.TrainBatches(STREAM, 16, 8, seed=0).at(40)
    assert rows.shape == (8, 17) and rows.dtype == np.int32
    # STREAM counts up modulo 997, so every contiguous window does too.
    np.testing.assert_array_equal(rows[:, 1:], (rows[:, :-1] + 1) % 997)


class CountingWindows(loader.Windows):
    reads = 0

    def __getitem__(self, i):
        CountingWindows.reads += 1
        return super().__getitem__(i)


def test_processes_split_the_global_batch_and_read_only_their_rows(monkeypatch):
    whole = loader.TrainBatches(STREAM, 16, 8, seed=1)
    monkeypatch.setattr(loader, "Windows", CountingWindows)
    parts = []
    for p in range(4):
        CountingWindows.reads = 0
        batches = loader.TrainBatches(STREAM, 16, 8, seed=1, rows=np.arange(2 * p, 2 * p + 2))
        parts.append(batches.at(72))
        assert CountingWindows.reads == 2, "a process must materialise only its own 2 of 8 rows"
    np.testing.assert_array_equal(np.concatenate(parts), whole.at(72))


def test_eval_batches_cover_the_split_exactly_once():
    tokens = np.arange(1000, dtype=np.uint16)
    seen, weight = [], 0.0
    for rows, w in loader.eval_batches(tokens, 10, 8):
        seen += [r[0] for r, keep in zip(rows, w) if keep]
        weight += w.sum()
    assert weight == (1000 - 1) // 10
    assert seen == list(range(0, 990, 10))
    # Two processes together see the same rows, each half of every batch.
    single = list(loader.eval_batches(tokens, 10, 8))
    halves = zip(*[loader.eval_batches(tokens, 10, 8, np.arange(4 * p, 4 * p + 4)) for p in range(2)])
    for (rows, w), ((r0, w0), (r1, w1)) in zip(single, halves):
        assert r0.shape == (4, 11)
        np.testing.assert_array_equal(np.concatenate([r0, r1]), rows)
        np.testing.assert_array_equal(np.concatenate([w0, w1]), w)


def test_char_tokens_match_nanogpt_prepare(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    tokens = loader.load_tokens(DataConfig(corpus=str(corpus), tokenizer="char", val_fraction=0.1))
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    np.testing.assert_array_equal(tokens.train, [stoi[c] for c in text[: int(n * 0.9)]])
    np.testing.assert_array_equal(tokens.val, [stoi[c] for c in text[int(n * 0.9):]])
    assert tokens.train.dtype == np.uint16
    meta = json.loads((tokens.directory / "meta.json").read_text())
    assert meta["train"]["tokens"] == tokens.train.size
    assert meta["train"]["sha256"] == hashlib.sha256((tokens.directory / "train.bin").read_bytes()).hexdigest()


def test_chunked_bpe_encoding_equals_whole_text():
    words = ("To be, or not to be: that is the question.\n  Whether 'tis nobler\n\nin the mind 123\n"
             "Or all or lose his hire.\n\nVIRGILIA:\nHis bloody brow\n")
    text = words * 2000
    tok = tok_lib.TiktokenTokenizer("gpt2")
    chunks = loader._split_points(text, target=1000)
    assert len(chunks) > 10 and "".join(chunks) == text
    chunked = [i for ids in tok.encode_batch(chunks, num_threads=2) for i in ids]
    np.testing.assert_array_equal(chunked, tok.encode(text))
    np.testing.assert_array_equal(loader._encode(text, tok, threads=2), tok.encode(text))


def test_empty_and_missing_corpus_errors_name_the_file(tmp_path):
    with pytest.raises(loader.DataError, match="no such file"):
        loader.load_tokens(DataConfig(corpus=str(tmp_path / "nope.txt"), tokenizer="char"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(loader.DataError, match=r"empty\.txt: the corpus is empty"):
        loader.load_tokens(DataConfig(corpus=str(empty), tokenizer="char"))


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghij" * 50)
    tokens = loader.load_tokens(DataConfig(corpus=str(corpus), tokenizer="char"))
    loader.check_vocab(tokens, 10)
    with pytest.raises(loader.DataError, match=r"token id 9 is beyond .*model.vocab_size = 8.*>= 10"):
        loader.check_vocab(tokens, 8)


def test_shared_corpus_is_verified_and_found_through_gptjax_data_dir(shared_dir, monkeypatch):
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(shared_dir / "data"))
    assert loader.corpus_path("tinyshakespeare").stat().st_size == 1_115_394


def test_wrong_checksum_is_refused(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    monkeypatch.setenv("GPTJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(loader.DataError, match="does not match the published"):
        loader.corpus_path("tinyshakespeare")


def test_failed_download_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTJAX_DATA_DIR", raising=False)

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(loader.DataError, match="Set GPTJAX_DATA_DIR to a directory holding tinyshakespeare.txt"):
        loader.corpus_path("tinyshakespeare")
    assert not list((tmp_path / "cache" / "data").glob("*")), "no partial download may remain"


def _nanogpt_dir(tmp_path, meta_obj):
    d = tmp_path / "nano"
    d.mkdir()
    (np.arange(100) % 3).astype(np.uint16).tofile(d / "train.bin")
    (np.arange(50) % 3).astype(np.uint16).tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump(meta_obj, f)
    return d


def test_nanogpt_token_dir_with_plain_meta_pkl(tmp_path):
    d = _nanogpt_dir(tmp_path, {"vocab_size": 3, "itos": {0: "a", 1: "b", 2: "c"},
                                "stoi": {"a": 0, "b": 1, "c": 2}})
    tokens = loader.load_tokens(DataConfig(token_dir=str(d)))
    assert tokens.tokenizer.decode([0, 1, 2]) == "abc"
    assert tokens.train.size == 100 and tokens.val.size == 50


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/gptjax-pwned",))


def test_meta_pkl_that_references_code_is_refused_without_running_it(tmp_path):
    d = _nanogpt_dir(tmp_path, {"itos": {0: "a"}, "x": Exploit()})
    marker = "/tmp/gptjax-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(loader.DataError, match="references posix.system"):
        loader.load_tokens(DataConfig(token_dir=str(d)))
    assert not os.path.exists(marker)
