"""Tokenizers behind one small interface: tiktoken BPE encodings and a character vocabulary.

A run directory stores `tokenizer.to_dict()` (plain JSON data) and sampling rebuilds the same
tokenizer with `from_dict`. tiktoken reads its rank files from TIKTOKEN_CACHE_DIR, where each file
is named by the sha1 of its URL; offline, that directory must already hold the file.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import hashlib
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import tiktoken
import tiktoken.load


class TokenizerError(ValueError):
    """Input a tokenizer cannot handle; the message names the value seen and what is accepted."""


class MissingEncodingError(FileNotFoundError):
    """A tiktoken rank file is neither in TIKTOKEN_CACHE_DIR nor downloadable."""


@runtime_checkable
class Tokenizer(Protocol):
    """What training, evaluation and sampling need from a tokenizer."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int | None: ...  # end-of-text id placed between documents; None if absent

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


# --- tiktoken -----------------------------------------------------------------------------------

_BASE = "https://openaipublic.blob.core.windows.net/encodings/"
RANK_FILE_URLS = {
    # "gpt2" in tiktoken needs vocab.bpe and encoder.json; r50k_base's single file holds the same
    # ranks, and with the same pattern and special token it gives the same ids, so gpt2 uses it.
    "gpt2": _BASE + "r50k_base.tiktoken",
    "r50k_base": _BASE + "r50k_base.tiktoken",
    "cl100k_base": _BASE + "cl100k_base.tiktoken",
    "o200k_base": _BASE + "o200k_base.tiktoken",
}
# tiktoken's expected_hash for r50k_base.tiktoken (tiktoken_ext/openai_public.py).
_R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenisation pattern in tiktoken's faster equivalent form (r50k_pat_str in
# tiktoken_ext/openai_public.py); GPT-2's released tokenizer is frozen, so this never changes.
_GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_GPT2_SPECIAL_TOKENS = {"<|endoftext|>": 50256}


def cache_file_name(url: str) -> str:
    """The file name tiktoken.load.read_file_cached looks for in TIKTOKEN_CACHE_DIR: sha1 of the URL."""
    return hashlib.sha1(url.encode()).hexdigest()


def _missing(name: str, cause: BaseException) -> MissingEncodingError:
    url = RANK_FILE_URLS[name]
    # The same fallbacks as tiktoken.load.read_file_cached, so the message names where it looked.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        where = f"TIKTOKEN_CACHE_DIR is {os.environ['TIKTOKEN_CACHE_DIR']!r}"
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        where = ("TIKTOKEN_CACHE_DIR is unset, so tiktoken looked in DATA_GYM_CACHE_DIR "
                 f"{os.environ['DATA_GYM_CACHE_DIR']!r}")
    else:
        where = (f"TIKTOKEN_CACHE_DIR is unset, so tiktoken looked in "
                 f"{os.path.join(tempfile.gettempdir(), 'data-gym-cache')!r}")
    return MissingEncodingError(
        f"tiktoken encoding {name!r} needs the rank file {url}, which is not cached and could not be "
        f"downloaded ({type(cause).__name__}: {cause}). {where}. Put the file, named {cache_file_name(url)} "
        f"(tiktoken's cache name: the sha1 of the URL), in a directory and set TIKTOKEN_CACHE_DIR to it.")


@functools.lru_cache(maxsize=None)
def _load_encoding(name: str) -> tiktoken.Encoding:
    # read_file_cached raises OSError for a missing file and for network failures
    # (requests' exceptions derive from IOError), which covers "cannot be had".
    try:
        if name == "gpt2":
            ranks = tiktoken.load.load_tiktoken_bpe(RANK_FILE_URLS["gpt2"], expected_hash=_R50K_SHA256)
            return tiktoken.Encoding(name="gpt2", pat_str=_GPT2_PAT_STR, mergeable_ranks=ranks,
                                     special_tokens=_GPT2_SPECIAL_TOKENS, explicit_n_vocab=50257)
        return tiktoken.get_encoding(name)
    except OSError as e:
        raise _missing(name, e) from e


@dataclasses.dataclass(frozen=True)
class TiktokenTokenizer:
    """A tiktoken BPE encoding: "gpt2" (= "r50k_base"), "cl100k_base" or "o200k_base"."""

    name: str
    _encoding: tiktoken.Encoding = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in RANK_FILE_URLS:
            near = difflib.get_close_matches(str(self.name), RANK_FILE_URLS, n=2)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise TokenizerError(f"TiktokenTokenizer.name = {self.name!r} is not one of "
                                 f"{', '.join(RANK_FILE_URLS)}{hint}")
        object.__setattr__(self, "_encoding", _load_encoding(self.name))

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self._encoding.eot_token

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; "<|endoftext|>" in text is ordinary text (untrusted corpora cannot inject
        it). Put `eot_id` between documents explicitly."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        # errors="replace": a sample cut inside a multi-byte character still decodes.
        _check_ids(ids, self.vocab_size, self.name)
        return self._encoding.decode(list(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "name": self.name, "vocab_size": self.vocab_size}


# --- characters ---------------------------------------------------------------------------------

def known_chars(text: str, tokenizer, policy: str, counts: collections.Counter) -> str:
    """`text` with the characters a character vocabulary lacks dropped ("drop") or replaced by a
    space ("replace"), each counted into `counts`; unchanged for "error" (the encoder refuses
    them) and for other tokenizers (every text encodes)."""
    if policy == "error" or not isinstance(tokenizer, CharTokenizer):
        return text
    unknown = set(text) - tokenizer._stoi.keys()
    if not unknown:
        return text
    if policy == "replace" and " " not in tokenizer._stoi:
        raise TokenizerError("data.unknown_chars = replace puts a space in place of each unknown character, but this "
                             "character vocabulary has no space; use drop")
    counts.update({c: text.count(c) for c in unknown})
    return text.translate(dict.fromkeys(map(ord, unknown), None if policy == "drop" else " "))


def describe_unknown(policy: str, counts: collections.Counter) -> str:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:8]
    shown = ", ".join(f"{c!r} x{n}" for c, n in ranked)
    more = f" and {len(counts) - 8} more kinds" if len(counts) > 8 else ""
    verb = "dropped" if policy == "drop" else "replaced by spaces"
    return (f"data.unknown_chars = {policy}: {sum(counts.values()):,} characters not in the vocabulary {verb} "
            f"({shown}{more})")


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """One id per character; `chars[i]` is id i (nanoGPT's shakespeare_char)."""

    chars: str
    _stoi: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chars, str) or not self.chars:
            raise TokenizerError(f"CharTokenizer.chars = {self.chars!r} is invalid: "
                                 "must be a non-empty string")
        if len(set(self.chars)) != len(self.chars):
            dupes = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise TokenizerError(f"CharTokenizer.chars repeats {dupes!r}: each character must appear once")
        object.__setattr__(self, "_stoi", {c: i for i, c in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The sorted unique characters of `text`."""
        return cls("".join(sorted(set(text))))

    @property
    def name(self) -> str:
        return "char"

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> None:
        return None

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError:
            i, c = next((i, c) for i, c in enumerate(text) if c not in self._stoi)
            raise TokenizerError(
                f"CharTokenizer: character {c!r} (U+{ord(c):04X}) at position {i} is not in the vocabulary "
                f"of {self.vocab_size} characters built from the training text") from None

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        del num_threads  # a dict lookup per character: threads would only add overhead
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, self.name)
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}


def _check_ids(ids: Sequence[int], vocab_size: int, name: str) -> None:
    # Negative ids would silently index from the end; ids in a padded vocabulary's tail name
    # no token. Either means a caller bug, so it is reported rather than decoded.
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise TokenizerError(f"{name} tokenizer: id {bad} is outside [0, {vocab_size})")


_EOT_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


# --- Hugging Face tokenizer.json ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HFTokenizer:
    """A Hugging Face `tokenizer.json` (GPT-2, NeoX/Pythia, Llama, BLOOM files) through the
    `tokenizers` library: the exact encoding the checkpoint was trained with. Special tokens in
    text are ordinary text, as for tiktoken; `eot_id` is the checkpoint's end-of-text id."""

    json_text: str = dataclasses.field(repr=False)
    eot: int | None = None
    _tok: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        import tokenizers

        try:
            tok = tokenizers.Tokenizer.from_str(self.json_text)
        except Exception as e:  # noqa: BLE001 - the library raises its own exception type
            raise TokenizerError(f"tokenizer.json could not be read by the tokenizers library: {e}") from None
        object.__setattr__(self, "_tok", tok)

    @classmethod
    def from_directory(cls, directory, eot_id: int | None = None) -> HFTokenizer:
        import pathlib

        path = pathlib.Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{directory} has no tokenizer.json (the Hugging Face tokenizers format)")
        return cls(path.read_text(), eot_id)

    @classmethod
    def from_path(cls, path) -> HFTokenizer:
        """A tokenizer.json file or a directory holding one. The end-of-text id is the one its
        tokenizer_config.json names as eos_token, else the first of the usual end-of-text tokens
        (<|endoftext|>, </s>, <|end_of_text|>, <eos>) the vocabulary has."""
        import json
        import pathlib

        path = pathlib.Path(path).expanduser()
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"data.tokenizer_path = {str(path)!r}: no tokenizer.json there; give a Hugging Face "
                                 "tokenizer.json file or a directory holding one")
        tok = cls(file.read_text())
        names = list(_EOT_NAMES)
        config = file.parent / "tokenizer_config.json"
        if config.is_file():
            eos = json.loads(config.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str):
                names.insert(0, eos)
        eot = next((i for i in map(tok._tok.token_to_id, names) if i is not None), None)
        return cls(tok.json_text, eot)

    @property
    def name(self) -> str:
        return "hf"

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int | None:
        return self.eot

    def encode(self, text: str) -> list[int]:
        # No added BOS/EOS: documents are joined with eot_id explicitly, as for tiktoken.
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        # The library's encode_batch runs on its own thread pool (all cores); on one thread it is
        # slower than encoding one text at a time (measured 4.7 s against 2.8 s for 7.6 MB), which
        # is what each worker process of text_files.py does.
        if num_threads <= 1:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, self.name)
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.json_text.encode()).hexdigest()
        return {"kind": "hf", "sha256": digest, "eot_id": self.eot, "tokenizer_json": self.json_text}


# --- Hugging Face export ------------------------------------------------------------------------

def hf_tokenizer_json(tokenizer: Tokenizer) -> str:
    """`tokenizer` as a Hugging Face tokenizer.json that encodes exactly as it does, so
    `AutoTokenizer.from_pretrained` on an exported directory gives gptjax's ids."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.json_text
    if isinstance(tokenizer, TiktokenTokenizer):
        return _tiktoken_to_hf(tokenizer).to_str()
    if isinstance(tokenizer, CharTokenizer):
        return _chars_to_hf(tokenizer).to_str()
    raise TokenizerError(f"tokenizer {tokenizer.name!r} has no Hugging Face form")


def _byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = dict(zip(printable, map(chr, printable))), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return chars


def _tiktoken_to_hf(tokenizer: TiktokenTokenizer):
    """A byte-level BPE whose merges are recovered from tiktoken's ranks: each token's merge is the
    pair that BPE with only the lower ranks leaves it as."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    enc = tokenizer._encoding
    ranks = enc._mergeable_ranks
    chars = _byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = _bpe(ranks, token, rank)
            if len(parts) != 2:
                raise TokenizerError(f"{tokenizer.name}: token {token!r} is not one merge of lower-ranked tokens")
            merges.append((text(parts[0]), text(parts[1])))
    bpe = models.BPE({text(t): r for t, r in ranks.items()}, merges, ignore_merges=True)
    hf = tokenizers.Tokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(enc._pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in enc._special_tokens])
    return hf


def _bpe(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        pairs = [(ranks.get(parts[i] + parts[i + 1], below), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _chars_to_hf(tokenizer: CharTokenizer):
    """One token per character: a word-level vocabulary over single characters, joined back without spaces."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return hf


# --- saving and restoring -----------------------------------------------------------------------

def from_dict(data: dict[str, Any]) -> Tokenizer:
    """The tokenizer that `to_dict()` described."""
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind == "tiktoken":
        tok = TiktokenTokenizer(data["name"])
        saved = data.get("vocab_size", tok.vocab_size)
        if saved != tok.vocab_size:
            raise TokenizerError(f"tokenizer {tok.name!r}: saved vocab_size {saved} but the encoding "
                                 f"loaded here has {tok.vocab_size}")
        return tok
    if kind == "hf":
        return HFTokenizer(data["tokenizer_json"], data.get("eot_id"))
    raise TokenizerError(f"tokenizer kind = {kind!r} is not one of 'tiktoken', 'char', 'hf'")


__all__ = ["RANK_FILE_URLS", "CharTokenizer", "HFTokenizer", "MissingEncodingError", "TiktokenTokenizer", "Tokenizer",
           "TokenizerError", "cache_file_name", "from_dict"]
