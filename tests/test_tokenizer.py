"""Tokenizers: known ids, exact round trips, save/restore, and errors that say what to do.

No test touches the network: tiktoken's downloader is replaced by one that fails and records
the attempt, and the rank files come from ../shared/tiktoken.
"""

import json

import pytest
import tiktoken.load

from gptjax.data.tokenizer import (
    RANK_FILE_URLS,
    CharTokenizer,
    MissingEncodingError,
    TiktokenTokenizer,
    Tokenizer,
    TokenizerError,
    cache_file_name,
    from_dict,
)

# Contractions, digits, runs of spaces and newlines, non-Latin scripts, an emoji (several bytes
# in UTF-8, so several BPE tokens), and the special-token text.
TRICKY = ("Hello world! It's 2026, they'll've  three   spaces\n\n\tand tabs. "
          "Ünïcödé, 日本語のテキスト, Ελληνικά, 🤖🚀 <|endoftext|> done.")


@pytest.fixture
def network_attempts(monkeypatch):
    """Replace tiktoken's file reader (its only path to the network) with one that fails."""
    attempts = []

    def blocked(blobpath):
        attempts.append(blobpath)
        raise ConnectionError(f"network blocked by the test: {blobpath}")  # an OSError, like requests'

    monkeypatch.setattr(tiktoken.load, "read_file", blocked)
    return attempts


@pytest.fixture
def tiktoken_cache(shared_dir, monkeypatch, network_attempts):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(shared_dir / "tiktoken"))
    yield shared_dir / "tiktoken"
    assert network_attempts == []  # everything came from the cache


@pytest.mark.parametrize("name", ["gpt2", "r50k_base"])
def test_hello_world_ids(tiktoken_cache, name):
    tok = TiktokenTokenizer(name)
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)


def test_shared_cache_holds_r50k_under_tiktokens_name(tiktoken_cache):
    # The cache name is tiktoken's (sha1 of the URL); the error message relies on the same rule.
    assert (tiktoken_cache / cache_file_name(RANK_FILE_URLS["r50k_base"])).is_file()
    assert cache_file_name(RANK_FILE_URLS["r50k_base"]) == "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"


def test_gpt2_and_r50k_base_agree_on_tricky_text(tiktoken_cache):
    gpt2, r50k = TiktokenTokenizer("gpt2"), TiktokenTokenizer("r50k_base")
    ids = gpt2.encode(TRICKY)
    assert len(ids) > 40 and max(ids) > 10000  # really exercises merges beyond single bytes
    assert ids == r50k.encode(TRICKY)


def test_round_trip(tiktoken_cache):
    tok = TiktokenTokenizer("gpt2")
    assert tok.decode(tok.encode(TRICKY)) == TRICKY


def test_special_token_text_is_ordinary_text(tiktoken_cache):
    tok = TiktokenTokenizer("gpt2")
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_batch_equals_sequential(tiktoken_cache):
    tok = TiktokenTokenizer("gpt2")
    texts = [TRICKY, "", "x", TRICKY[::-1], "Hello world " * 50]
    batch = tok.encode_batch(texts, num_threads=2)
    assert batch == [tok.encode(t) for t in texts]
    assert len({len(ids) for ids in batch}) == len(texts)  # the texts really differ


def test_tiktoken_to_dict_from_dict(tiktoken_cache):
    tok = TiktokenTokenizer("gpt2")
    data = json.loads(json.dumps(tok.to_dict()))  # what a run directory stores
    restored = from_dict(data)
    assert restored == tok and restored.encode(TRICKY) == tok.encode(TRICKY)
    with pytest.raises(TokenizerError, match="saved vocab_size 50304 but the encoding loaded here has 50257"):
        from_dict({**data, "vocab_size": 50304})


def test_decode_rejects_ids_outside_vocabulary(tiktoken_cache):
    with pytest.raises(TokenizerError, match=r"id 50257 is outside \[0, 50257\)"):
        TiktokenTokenizer("gpt2").decode([15496, 50257])


def test_both_kinds_satisfy_the_protocol(tiktoken_cache):
    assert isinstance(TiktokenTokenizer("gpt2"), Tokenizer)
    assert isinstance(CharTokenizer.from_text("ab"), Tokenizer)


def test_unknown_tiktoken_name():
    with pytest.raises(TokenizerError, match="'cl100k' is not one of .*did you mean cl100k_base"):
        TiktokenTokenizer("cl100k")


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_missing_encoding_names_file_and_cache_dir(tmp_path, monkeypatch, network_attempts, name):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url = RANK_FILE_URLS[name]
    with pytest.raises(MissingEncodingError) as info:
        TiktokenTokenizer(name)
    assert network_attempts == [url]  # it really tried to load (nothing cached in-process)
    message = str(info.value)
    for expected in (url, cache_file_name(url), "TIKTOKEN_CACHE_DIR", str(tmp_path)):
        assert expected in message


# --- characters ---------------------------------------------------------------------------------
SHAKESPEARE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def test_char_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.from_text(SHAKESPEARE)
    assert tok.chars == "".join(sorted(set(SHAKESPEARE)))
    assert tok.vocab_size == len(set(SHAKESPEARE)) and tok.eot_id is None and tok.name == "char"
    assert tok.encode("\n ") == [0, 1]  # newline sorts first, then space, as in shakespeare_char


def test_char_round_trip_and_batch():
    tok = CharTokenizer.from_text(SHAKESPEARE)
    assert tok.decode(tok.encode(SHAKESPEARE)) == SHAKESPEARE
    assert tok.encode_batch(["All:", "hear"], num_threads=2) == [tok.encode("All:"), tok.encode("hear")]


def test_char_to_dict_from_dict_restores_exactly():
    tok = CharTokenizer.from_text(SHAKESPEARE + "é🤖")
    restored = from_dict(json.loads(json.dumps(tok.to_dict())))
    assert restored == tok
    assert restored.encode(SHAKESPEARE + "🤖") == tok.encode(SHAKESPEARE + "🤖")
    # An order that from_text would not produce is kept as saved: ids are positions in `chars`.
    unsorted = CharTokenizer("ba")
    assert from_dict(unsorted.to_dict()).encode("ab") == [1, 0]


def test_char_unknown_character_is_named():
    tok = CharTokenizer.from_text(SHAKESPEARE)
    expected = r"character 'Z' \(U\+005A\) at position 3 is not in the vocabulary"
    with pytest.raises(TokenizerError, match=expected):
        tok.encode("AllZ")


def test_char_rejects_bad_vocabularies_and_ids():
    with pytest.raises(TokenizerError, match=r"repeats \['a'\]"):
        CharTokenizer("aba")
    with pytest.raises(TokenizerError, match="non-empty"):
        CharTokenizer("")
    with pytest.raises(TokenizerError, match=r"id -1 is outside \[0, 2\)"):
        CharTokenizer("ab").decode([0, -1])
    with pytest.raises(TokenizerError, match="kind = 'sentencepiece' is not one of"):
        from_dict({"kind": "sentencepiece"})


# --- Hugging Face form --------------------------------------------------------------------------

@pytest.mark.torch
def test_tiktoken_exports_as_a_tokenizer_json_that_encodes_identically(shared_dir):
    """The merges recovered from tiktoken's ranks reproduce its encoding exactly; transformers'
    own tiktoken converter (a reference no one here wrote) agrees id for id."""
    import tokenizers

    from gptjax.data.tokenizer import hf_tokenizer_json

    tok = TiktokenTokenizer("gpt2")
    ours = tokenizers.Tokenizer.from_str(hf_tokenizer_json(tok))
    text = (shared_dir / "data" / "tinyshakespeare.txt").read_text()[:100_000] + TRICKY.replace("<|endoftext|>", "")
    assert ours.encode(text, add_special_tokens=False).ids == tok.encode(text)
    assert ours.decode(tok.encode(text)) == text
    assert ours.token_to_id("<|endoftext|>") == tok.eot_id
    from helpers import reference

    reference("transformers")
    from transformers.convert_slow_tokenizer import TikTokenConverter as converter
    theirs = converter(vocab_file=str(shared_dir / "tiktoken" / cache_file_name(RANK_FILE_URLS["gpt2"])),
                       pattern=tok._encoding._pat_str).converted()
    assert theirs.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_characters_export_as_a_tokenizer_json():
    import tokenizers

    from gptjax.data.tokenizer import hf_tokenizer_json

    tok = CharTokenizer.from_text("abc \n\tÅ🤖")
    hf = tokenizers.Tokenizer.from_str(hf_tokenizer_json(tok))
    text = "a\n\tb c🤖Å  a"
    assert hf.encode(text).ids == tok.encode(text)
    assert hf.decode(tok.encode(text)) == text
