"""data.text_files: documents from .txt and .jsonl files, joined by end-of-text, encoded in
bounded memory by several processes with the same bytes as one, cached by content."""

import collections
import json

import numpy as np
import pytest

from gptjax.config import DataConfig
from gptjax.data import loader, text_files
from gptjax.data import tokenizer as tok_lib
from gptjax.errors import DataError


@pytest.fixture(scope="module")
def gpt2():
    return tok_lib.TiktokenTokenizer("gpt2")


@pytest.fixture
def corpus(tmp_path, shared_dir):
    text = (shared_dir / "data" / "tinyshakespeare.txt").read_text()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(text[:30000])
    (tmp_path / "docs" / "b.txt").write_text(text[30000:50000])
    records = [{"text": text[i:i + 700], "id": i} for i in range(50000, 60000, 700)]
    (tmp_path / "docs" / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path / "docs", [text[:30000], text[30000:50000], *(r["text"] for r in records)]


def cfg_for(directory, **changes):
    return DataConfig(**{"text_files": (str(directory / "*.txt"), str(directory / "*.jsonl")),
                         "val_fraction": 0.1, **changes})


def test_documents_are_encoded_whole_and_joined_by_end_of_text(corpus, gpt2, monkeypatch):
    directory, documents = corpus
    monkeypatch.setattr(text_files, "BLOCK_CHARS", 4096)  # long documents arrive in many blocks
    tokens = loader.load_tokens(cfg_for(directory, encode_processes=1))
    expected = np.concatenate([np.r_[gpt2.encode(d), gpt2.eot_id] for d in documents])
    got = np.concatenate([tokens.train, tokens.val])
    np.testing.assert_array_equal(got, expected)
    assert tokens.val.size == expected.size - int(expected.size * 0.9)
    meta = json.loads((tokens.directory / "meta.json").read_text())
    assert meta["train"]["documents"] == len(documents) and meta["processes"] == 1


def test_two_processes_write_the_same_bytes_as_one(corpus, monkeypatch, tmp_path):
    directory, _ = corpus
    monkeypatch.setattr(text_files, "BLOCK_CHARS", 8192)
    one = loader.load_tokens(cfg_for(directory, encode_processes=1))
    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path / "other-cache"))
    two = loader.load_tokens(cfg_for(directory, encode_processes=2))
    assert one.directory != two.directory or one.directory.parent != two.directory.parent
    for split in ("train.bin", "val.bin"):
        assert (one.directory / split).read_bytes() == (two.directory / split).read_bytes()


def test_cache_is_keyed_by_content_tokenizer_and_split(corpus, gpt2):
    directory, _ = corpus
    first = loader.load_tokens(cfg_for(directory, encode_processes=1)).directory
    assert loader.load_tokens(cfg_for(directory, encode_processes=1)).directory == first
    assert loader.load_tokens(cfg_for(directory, encode_processes=1, val_fraction=0.2)).directory != first
    assert loader.load_tokens(cfg_for(directory, encode_processes=1, tokenizer="char")).directory != first
    with open(directory / "b.txt", "a") as f:
        f.write("one more line\n")
    assert loader.load_tokens(cfg_for(directory, encode_processes=1)).directory != first


def test_explicit_validation_files(corpus, gpt2, tmp_path):
    directory, documents = corpus
    (tmp_path / "val.txt").write_text("To be, or not to be.\n")
    tokens = loader.load_tokens(cfg_for(directory, encode_processes=1, val_files=(str(tmp_path / "val.txt"),)))
    np.testing.assert_array_equal(tokens.val, gpt2.encode("To be, or not to be.\n") + [gpt2.eot_id])
    assert tokens.train.size == sum(len(gpt2.encode(d)) + 1 for d in documents)


def test_characters_of_text_files(corpus):
    directory, documents = corpus
    tokens = loader.load_tokens(cfg_for(directory, encode_processes=1, tokenizer="char"))
    assert tokens.tokenizer.vocab_size == len(set("".join(documents)))
    # No end-of-text id exists for characters: documents are simply concatenated.
    assert tokens.tokenizer.decode(np.concatenate([tokens.train, tokens.val]).tolist()) == "".join(documents)


@pytest.mark.parametrize("content, field, match", [
    ('{"body": "x"}\n', "text", r"bad\.jsonl:1: no string field 'text' \(found \['body'\]\)"),
    ('{"text": "x"}\nnot json\n', "text", r"bad\.jsonl:2: not valid JSON"),
    ('{"text": 3}\n', "text", r"bad\.jsonl:1: no string field 'text'"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, field, match):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DataError, match=match):
        loader.load_tokens(DataConfig(text_files=(str(tmp_path / "bad.jsonl"),), text_field=field, encode_processes=1))


def test_bad_paths_and_bytes(tmp_path):
    with pytest.raises(DataError, match=r"data\.text_files: '.*nothing-\*\.txt' matches no file"):
        loader.load_tokens(DataConfig(text_files=(str(tmp_path / "nothing-*.txt"),)))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text"):
        loader.load_tokens(DataConfig(text_files=(str(tmp_path / "latin1.txt"),), encode_processes=1))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="the train split is empty"):
        loader.load_tokens(DataConfig(text_files=(str(tmp_path / "empty.txt"),), encode_processes=1))


def test_safe_cuts_keep_bpe_exact(gpt2, shared_dir, monkeypatch, tmp_path):
    text = (shared_dir / "data" / "tinyshakespeare.txt").read_text()[:100000]
    monkeypatch.setattr(text_files, "BLOCK_CHARS", 1000)
    (tmp_path / "t.txt").write_text(text)
    blocks = list(text_files.pieces([tmp_path / "t.txt"], "text"))
    assert len(blocks) > 50 and "".join(t for t, _ in blocks) == text
    ids = [i for t, _ in blocks for i in gpt2.encode(t)]
    assert ids == gpt2.encode(text)


def test_an_encoding_stopped_midway_is_cleaned_up_by_the_next_one(corpus, tmp_path, monkeypatch):
    """SIGTERM or SIGKILL during an encoding skip its cleanup; the next encoding into the same cache
    removes what a dead process of this host left, and leaves a live one's and another host's."""
    import os
    import socket
    import subprocess
    import sys

    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path / "cache"))
    tokens_dir = tmp_path / "cache" / "tokens"
    tokens_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = tokens_dir / f".0123abcd.{host}.{int(dead.stdout)}.x1y2"
    running = tokens_dir / f".0123abcd.{host}.{os.getpid()}.z3w4"
    elsewhere = tokens_dir / f".0123abcd.other-host.{int(dead.stdout)}.q5r6"
    for d in (abandoned, running, elsewhere):
        (d / "train.bin").parent.mkdir()
        (d / "train.bin").write_bytes(bytes(1000))
    directory, _ = corpus
    tokens = loader.load_tokens(cfg_for(directory, encode_processes=1))
    assert not abandoned.exists() and running.exists() and elsewhere.exists()
    assert tokens.directory.parent == tokens_dir
    assert sorted(p.name for p in tokens_dir.iterdir()) == sorted([tokens.directory.name, running.name,
                                                                   elsewhere.name])


def test_unknown_characters_of_a_character_vocabulary(tmp_path, monkeypatch, capsys):
    """Fine-tuning a character model on another text: its unknown characters are refused (the
    default), dropped or replaced by a space, counted in the log at every start, cached apart."""
    import dataclasses

    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "t.txt").write_text("héllo wörld\nvoilà é\n")
    vocab = tok_lib.CharTokenizer(" \nabcdefghijklmnopqrstuvwxyz")
    cfg = DataConfig(text_files=(str(tmp_path / "t.txt"),), tokenizer="init_from", val_fraction=0.5)
    with pytest.raises(tok_lib.TokenizerError, match="character 'é'"):
        loader.load_tokens(cfg, vocab)
    for policy, expected in (("drop", "hllo wrld\nvoil \n"), ("replace", "h llo w rld\nvoil   \n")):
        tokens = loader.load_tokens(dataclasses.replace(cfg, unknown_chars=policy), vocab)
        assert vocab.decode(np.concatenate([tokens.train, tokens.val]).tolist()) == expected
        said = f"data.unknown_chars = {policy}: 4 characters not in the vocabulary"
        assert said in capsys.readouterr().err
        loader.load_tokens(dataclasses.replace(cfg, unknown_chars=policy), vocab)  # cached: said again
        assert f"{said} " in capsys.readouterr().err
    assert "('é' x2, 'à' x1, 'ö' x1)" in tok_lib.describe_unknown("drop", collections.Counter("éöéà"))
    with pytest.raises(tok_lib.TokenizerError, match="has no space; use drop"):
        loader.load_tokens(dataclasses.replace(cfg, unknown_chars="replace"), tok_lib.CharTokenizer("\nabc"))
