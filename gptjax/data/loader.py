"""Corpora -> memory-mapped token files -> deterministic, resumable, per-process batches.

Token files use nanoGPT's layout (flat uint16/uint32 `train.bin` / `val.bin`) so users can bring
theirs; `meta.json` beside them records tokenizer, counts and checksums. The loader is a pure
function of (seed, step, process index) built on grain's random-access datasets.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import re
import shutil
import sys
import urllib.request

import grain
import numpy as np
from etils import epath

from gptjax.config import DataConfig
from gptjax.data import text_files
from gptjax.data import tokenizer as tok_lib
from gptjax.data.remote import RemoteTokens
from gptjax.errors import DataError
from gptjax.store.paths import as_path, cache_root, copy_file, is_remote, write_text
from gptjax.store.paths import sha256 as sha256_file


@dataclasses.dataclass(frozen=True)
class Corpus:
    file: str
    url: str
    sha256: str
    size: int


CORPORA = {
    "tinyshakespeare": Corpus(
        file="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
}


# Corpora that exist only as a local copy (no canonical download of that exact text): a
# directory of .txt files under GPTJAX_DATA_DIR, checked against its own SHA256SUMS.
LOCAL_CORPORA = {"gutenberg": "gutenberg"}  # NLTK's 17-book Gutenberg selection, word-tokenised


def corpus_path(corpus: str) -> pathlib.Path:
    """A named corpus (GPTJAX_DATA_DIR, then the cache, then a verified download), a text file, or
    a directory of .txt files."""
    if corpus in LOCAL_CORPORA:
        return _local_corpus(corpus)
    if corpus not in CORPORA:
        path = pathlib.Path(corpus).expanduser()
        if not (path.is_file() or (path.is_dir() and any(path.glob("*.txt")))):
            raise DataError(f"data.corpus = {corpus!r}: no such file; give a text file, a directory of .txt files, "
                            f"or one of {', '.join([*CORPORA, *LOCAL_CORPORA])}")
        return path
    spec = CORPORA[corpus]
    if os.environ.get("GPTJAX_DATA_DIR"):
        path = pathlib.Path(os.environ["GPTJAX_DATA_DIR"]) / spec.file
        if not path.is_file():
            raise DataError(f"GPTJAX_DATA_DIR={os.environ['GPTJAX_DATA_DIR']} holds no {spec.file}")
        _verify(path, spec)
        return path
    path = cache_root() / "data" / spec.file
    if not path.is_file():
        _download(spec, path)
    _verify(path, spec)
    return path


def _local_corpus(name: str) -> pathlib.Path:
    data_dir = os.environ.get("GPTJAX_DATA_DIR")
    path = pathlib.Path(data_dir or "") / LOCAL_CORPORA[name]
    if not data_dir or not path.is_dir():
        raise DataError(f"data.corpus = {name!r} is read from $GPTJAX_DATA_DIR/{LOCAL_CORPORA[name]}/ (a directory of .txt "
                        f"files), which {'is unset' if not data_dir else f'{path} does not exist'}; set "
                        "GPTJAX_DATA_DIR, or point data.corpus at any text file or directory of .txt files")
    sums = path / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            file = path / pathlib.PurePath(rel).name
            if not file.is_file() or sha256_file(file) != digest:
                raise DataError(f"{file} is missing or does not match its sha256 in {sums}")
    return path


def read_corpus(path: pathlib.Path) -> str:
    """A text file, or the .txt files of a directory in name order, one after another."""
    if path.is_dir():
        return "\n".join(p.read_text(encoding="utf-8") for p in sorted(path.glob("*.txt")))
    return path.read_text(encoding="utf-8")


def _content_hash(path: pathlib.Path) -> str:
    if path.is_dir():
        return hashlib.sha256("".join(sha256_file(p) for p in sorted(path.glob("*.txt"))).encode()).hexdigest()
    return sha256_file(path)


def _verify(path: pathlib.Path, spec: Corpus) -> None:
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest} does not match the published {spec.sha256} "
                        f"({spec.size} bytes); replace the file with the original from {spec.url}")


def _download(spec: Corpus, dest: pathlib.Path) -> None:
    tmp = text_files.temporary(dest, directory=False)
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(spec.url, timeout=30) as resp:
            shutil.copyfileobj(resp, out)
        if sha256_file(pathlib.Path(tmp)) != spec.sha256:
            raise DataError(f"{spec.url}: downloaded bytes do not match sha256 {spec.sha256}")
        os.replace(tmp, dest)
    except (OSError, ValueError) as e:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"could not download {spec.file} from {spec.url} ({e}). Set GPTJAX_DATA_DIR to a directory "
            f"holding {spec.file} (sha256 {spec.sha256}), or data.corpus to a local text file") from e


# --- token files --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tokens:
    train: np.ndarray | RemoteTokens  # memory-mapped or read in place from object storage, flat
    val: np.ndarray | RemoteTokens
    tokenizer: tok_lib.Tokenizer
    directory: pathlib.Path | epath.Path
    max_id: dict[str, int] | None = None  # per split, where meta.json records it


def make_tokenizer(cfg: DataConfig, checkpoint_tokenizer: tok_lib.Tokenizer | None = None) -> tok_lib.Tokenizer | None:
    """The tokenizer data.tokenizer names; None for characters (their vocabulary is the corpus's).
    `checkpoint_tokenizer`: init_from's own, for data.tokenizer = 'init_from'
    (warm_start.checkpoint_tokenizer reads it)."""
    if cfg.tokenizer == "char":
        return None
    if cfg.tokenizer == "hf":
        return tok_lib.HFTokenizer.from_path(cfg.tokenizer_path)
    if cfg.tokenizer == "init_from":
        if checkpoint_tokenizer is None:
            raise DataError("data.tokenizer = 'init_from' needs init_from (the checkpoint whose tokenizer to use); "
                            "set init_from, or name a tokenizer: gpt2, r50k_base, cl100k_base, o200k_base, char, hf")
        return checkpoint_tokenizer
    return tok_lib.TiktokenTokenizer(cfg.tokenizer)


def load_tokens(cfg: DataConfig, checkpoint_tokenizer: tok_lib.Tokenizer | None = None) -> Tokens:
    """Token files for this data config: a user's nanoGPT directory, text files, or a corpus,
    encoded once and cached. `checkpoint_tokenizer`: as for make_tokenizer."""
    if cfg.token_dir is not None:
        return load_token_dir(cfg.token_dir, cfg)
    tokenizer = make_tokenizer(cfg, checkpoint_tokenizer)
    if cfg.text_files:
        return _load_text_files(cfg, tokenizer)
    path = corpus_path(cfg.corpus)
    text = read_corpus(path)
    if not text.strip():
        raise DataError(f"{path}: the corpus is empty; give a text file with content")
    tokenizer = tokenizer or tok_lib.CharTokenizer.from_text(text)
    keyed = [_content_hash(path), tokenizer.to_dict(), cfg.val_fraction, _FORMAT]
    if cfg.unknown_chars != "error":
        keyed.append(cfg.unknown_chars)
    directory = cache_root() / "tokens" / hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]
    if not (directory / "meta.json").is_file():
        counts: collections.Counter = collections.Counter()
        text = tok_lib.known_chars(text, tokenizer, cfg.unknown_chars, counts)
        _encode_to(directory, text, tokenizer, cfg, unknown={"policy": cfg.unknown_chars, "counts": dict(counts)})
    return _open(directory, tokenizer)


def _load_text_files(cfg: DataConfig, tokenizer: tok_lib.Tokenizer | None) -> Tokens:
    files = text_files.expand(cfg.text_files, "data.text_files")
    val_files = text_files.expand(cfg.val_files, "data.val_files")
    tokenizer = tokenizer or text_files.char_vocabulary([*files, *val_files], cfg.text_field)
    directory = text_files.prepare(files, val_files, tokenizer, val_fraction=cfg.val_fraction,
                                 text_field=cfg.text_field, processes=cfg.encode_processes,
                                 threads=cfg.encode_threads, unknown_chars=cfg.unknown_chars)
    return _open(directory, tokenizer)


# Cut only after a newline with a non-space character on each side: no BPE pre-token of the
# supported encodings spans such a point or changes beside it (a cut after "\n\n" would make it
# one pre-token through the pattern's end-of-text alternative), so chunked encoding equals
# whole-text encoding.
_FORMAT = 2  # in the cache key: 2 fixed cuts after "\n\n", which changed a token at some cuts
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def _split_points(text: str, target: int = 1 << 20) -> list[str]:
    chunks, start = [], 0
    while start < len(text):
        m = _SAFE_CUT.search(text, min(start + target, len(text)))
        end = m.end() if m else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def _encode(text: str, tokenizer, threads: int) -> np.ndarray:
    ids = tokenizer.encode_batch(_split_points(text), num_threads=threads)
    return np.fromiter((i for chunk in ids for i in chunk), np.int64)


def _encode_to(directory: pathlib.Path, text: str, tokenizer, cfg: DataConfig, unknown: dict) -> None:
    # nanoGPT splits the text (not the tokens) 90/10; so do we.
    cut = int(len(text) * (1 - cfg.val_fraction))
    dtype = text_files.token_dtype(tokenizer.vocab_size)
    tmp = text_files.temporary(directory)
    meta = {"tokenizer": tokenizer.to_dict(), "dtype": np.dtype(dtype).name, "val_fraction": cfg.val_fraction,
            **({"unknown_chars": unknown} if unknown["counts"] else {})}
    for split, part in (("train", text[:cut]), ("val", text[cut:])):
        ids = _encode(part, tokenizer, cfg.encode_threads).astype(dtype)
        ids.tofile(tmp / f"{split}.bin")
        meta[split] = {"tokens": int(ids.size), "sha256": sha256_file(tmp / f"{split}.bin")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, directory)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _open(directory: pathlib.Path, tokenizer) -> Tokens:
    meta = json.loads((directory / "meta.json").read_text())
    train, val = _token_arrays(directory, np.dtype(meta["dtype"]), meta, f"delete {directory} to re-encode")
    if "unknown_chars" in meta:  # said at every start, cached or not
        unknown = meta["unknown_chars"]
        print(tok_lib.describe_unknown(unknown["policy"], collections.Counter(unknown["counts"])), file=sys.stderr)
    return Tokens(train, val, tokenizer, directory)


def _token_arrays(root, dtype, meta: dict | None, remedy: str, cache_bytes: int = 0):
    """train.bin and val.bin under `root`: memory-mapped, or read in place from object storage
    through `cache_bytes` of blocks; their sizes checked against meta.json's counts where given."""
    arrays = []
    for split in ("train", "val"):
        path = root / f"{split}.bin"
        if is_remote(root):
            array = RemoteTokens(str(path), dtype, cache_bytes=cache_bytes)
        else:
            array = np.memmap(os.fspath(path), dtype=dtype, mode="r")
        if meta is not None and array.size != meta[split]["tokens"]:
            raise DataError(f"{path}: {array.size} tokens, meta.json says {meta[split]['tokens']}; {remedy}")
        arrays.append(array)
    return arrays


class _VocabOnlyUnpickler(pickle.Unpickler):
    """meta.pkl may hold only dicts, strings and integers: any class or function reference
    (the way a pickle executes code) is refused before it is resolved."""

    def find_class(self, module, name):
        raise DataError(f"meta.pkl references {module}.{name}; only plain dicts, strings and integers "
                        "are accepted, since unpickling anything else can execute code")


def read_meta_pkl(path: pathlib.Path) -> tok_lib.CharTokenizer:
    with open(path, "rb") as f:
        meta = _VocabOnlyUnpickler(f).load()
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or not all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items()):
        raise DataError(f"{path}: expected a dict with 'itos' mapping int -> str (nanoGPT's char vocabulary)")
    if sorted(itos) != list(range(len(itos))):
        raise DataError(f"{path}: 'itos' ids must be 0..{len(itos) - 1}")
    return tok_lib.CharTokenizer("".join(itos[i] for i in range(len(itos))))


def load_token_dir(location: str, cfg: DataConfig) -> Tokens:
    """data.token_dir: a directory (local, gs:// or s3://) of train.bin and val.bin with the
    meta.json `gptjax data prepare` writes (its tokenizer, dtype and counts), or nanoGPT's layout
    (meta.pkl for characters, else data.tokenizer). Files on object storage are read in place
    (data.remote.RemoteTokens), with at most data.read_cache_mb of blocks kept per split."""
    root = as_path(location)
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    for name in ("train.bin", "val.bin"):
        if name not in names:
            raise DataError(f"data.token_dir = {location!r} has no {name} (nanoGPT's prepare.py layout, or the "
                            "output of gptjax data prepare)")
    meta = json.loads((root / "meta.json").read_text()) if "meta.json" in names else None
    if meta is not None:
        tokenizer = tok_lib.from_dict(meta["tokenizer"])
    elif "meta.pkl" in names:
        tokenizer = read_meta_pkl(root / "meta.pkl")
    else:
        tokenizer = tok_lib.TiktokenTokenizer(cfg.tokenizer)
    dtype = np.dtype(meta["dtype"]) if meta is not None else text_files.token_dtype(tokenizer.vocab_size)
    train, val = _token_arrays(root, dtype, meta, "prepare the directory again", cfg.read_cache_mb << 20)
    return Tokens(train, val, tokenizer, root, None if meta is None else meta.get("max_id"))


def publish(tokens: Tokens, output: str) -> None:
    """Copy prepared token files to `output` (a directory, gs:// or s3://): the token files first,
    meta.json last, so a reader that finds meta.json finds them whole (one object store PUT is
    atomic; a local copy is renamed into place)."""
    meta = json.loads((pathlib.Path(tokens.directory) / "meta.json").read_text())
    meta["max_id"] = {split: int(getattr(tokens, split).max()) for split in ("train", "val")}
    root = as_path(output)
    for split in ("train", "val"):
        source, target = pathlib.Path(tokens.directory) / f"{split}.bin", root / f"{split}.bin"
        if is_remote(output):
            copy_file(source, target)
        else:  # a local copy appears whole, by rename
            partial = pathlib.Path(os.fspath(target)).with_name(f".{split}.bin.partial")
            copy_file(source, partial)
            os.replace(partial, os.fspath(target))
    write_text(root / "meta.json", json.dumps(meta, indent=1))


def check_vocab(tokens: Tokens, vocab_size: int) -> None:
    """Token ids must index the model's embedding: checked once, before anything compiles (from
    meta.json's max_id where `gptjax data prepare --output` recorded it: no full read of a remote file)."""
    for split in ("train", "val"):
        arr = getattr(tokens, split)
        if arr.size == 0:
            raise DataError(f"{tokens.directory}: the {split} split is empty")
        top = tokens.max_id[split] if tokens.max_id else int(arr.max())
        if top >= vocab_size:
            raise DataError(f"{tokens.directory / (split + '.bin')}: token id {top} is beyond the model's "
                            f"vocabulary (model.vocab_size = {vocab_size}); set model.vocab_size >= {top + 1}")


def check_lengths(tokens: Tokens, seq_len: int) -> None:
    """Each split must fill at least one window, or training or the first eval would fail late."""
    for split in ("train", "val"):
        n = getattr(tokens, split).size
        if n < seq_len + 1:
            raise DataError(f"{tokens.directory}: the {split} split has {n} tokens, fewer than one window of "
                            f"data.seq_len + 1 = {seq_len + 1}; use a longer corpus, a shorter data.seq_len, "
                            "or another data.val_fraction")


# --- loaders ------------------------------------------------------------------------------------

class Windows:
    """Random-access source: every offset of the token stream starts one window of `length`."""

    def __init__(self, tokens: np.ndarray, length: int, stride: int = 1):
        if tokens.size < length:
            raise DataError(f"{tokens.size} tokens cannot fill one window of {length}; "
                            "use a longer corpus or a shorter data.seq_len")
        self.tokens, self.length, self.stride = tokens, length, stride

    def __len__(self) -> int:
        return (self.tokens.size - self.length) // self.stride + 1

    def __getitem__(self, i: int) -> np.ndarray:
        start = i * self.stride
        return np.asarray(self.tokens[start:start + self.length], np.int32)


class TrainBatches:
    """Example i of the stream is window i of a seeded shuffle of all windows (reshuffled each
    epoch); a step's batch is the next `global_batch` examples from where the run stands, so the
    order of examples depends on the seed alone: a resume with another batch size continues at the
    example reached, none seen twice or skipped. A process materialises only the global rows its
    devices hold (`rows`, from sharding.local_rows), so a batch does not depend on how many
    processes assemble it or how the mesh lays it over them."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                 rows: np.ndarray | None = None):
        self.windows = grain.MapDataset.source(Windows(tokens, seq_len + 1)).shuffle(seed=seed).repeat()
        self.global_batch = global_batch
        self.rows = np.arange(global_batch) if rows is None else np.asarray(rows)

    def at(self, first: int) -> np.ndarray:
        """This process's rows of the batch of examples [first, first + global_batch)."""
        return np.stack([self.windows[first + int(j)] for j in self.rows])

    def iterate(self, first: int, steps: int, prefetch: int = 4):
        """The batches of `steps` steps from example `first`, prepared ahead by grain's reader threads."""
        ds = grain.MapDataset.range(steps).map(lambda i: self.at(first + i * self.global_batch))
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)))


def eval_batches(tokens: np.ndarray, seq_len: int, global_batch: int, rows: np.ndarray | None = None):
    """The whole split as non-overlapping windows, in fixed order; the last batch is padded with
    zero-weight rows so every real token counts exactly once. Yields this process's (rows,
    weights) of each global batch (`rows` as in TrainBatches)."""
    windows = Windows(tokens, seq_len + 1, stride=seq_len)
    n = len(windows)
    local = np.arange(global_batch) if rows is None else np.asarray(rows)
    for start in range(0, n, global_batch):
        ids = [start + int(j) for j in local]
        batch = np.stack([windows[i] if i < n else np.zeros(seq_len + 1, np.int32) for i in ids])
        weights = np.asarray([1.0 if i < n else 0.0 for i in ids], np.float32)
        yield batch, weights
