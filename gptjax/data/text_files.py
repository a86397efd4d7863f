"""`data.text_files`: a user's documents -> cached token files, streamed and tokenized in parallel.

.jsonl files hold one document per line (in `data.text_field`); any other file is one plain-text
document. Documents are joined by the tokenizer's end-of-text id and packed into one token
stream, so training windows cross document boundaries as in GPT-2's and nanoGPT's pipelines.

Memory stays bounded whatever the corpus size: files are read in blocks, at most a few blocks
are in flight, and token ids go straight to disk. Blocks are encoded by worker processes, one
text at a time in each (neither tokenizer library scales across cores in one process as well as
processes do), and results are written in submission order, so the token files do not depend on
the number of processes.
The cache key is the files' content, the tokenizer and the split: edit a file and it re-encodes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence

import numpy as np

from gptjax.data import jsonl
from gptjax.data import tokenizer as tok_lib
from gptjax.errors import DataError
from gptjax.store.paths import cache_root
from gptjax.store.paths import sha256 as sha256_file

BLOCK_CHARS = 1 << 20  # text per task handed to a worker
FORMAT = 1  # bump when the encoding of documents changes


def token_dtype(vocab_size: int):
    """The dtype of a token file: uint16 while every id fits."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def expand(patterns: Sequence[str], field: str) -> list[pathlib.Path]:
    """Paths and globs -> files, each pattern's matches in name order, duplicates once."""
    files: list[pathlib.Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataError(f"{field}: {pattern!r} matches no file; give text (.txt) or JSON-lines (.jsonl) "
                            "files, or globs such as 'corpus/*.jsonl'")
        files.extend(pathlib.Path(m) for m in matches if pathlib.Path(m) not in files)
    return files


def pieces(files: Sequence[pathlib.Path], text_field: str) -> Iterator[tuple[str, bool]]:
    """(text, ends a document) pieces of the files in order; a long plain-text document comes in
    blocks cut after a newline with a non-space character on each side, where no byte-level BPE
    pre-token (GPT-2, NeoX) spans the cut and none at either side changes ("\n\n" before a cut
    would become one pre-token through the end-of-text alternative of GPT-2's pattern)."""
    for path in files:
        if path.suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        else:
            yield from _text_blocks(path)


def _jsonl_documents(path: pathlib.Path, field: str) -> Iterator[tuple[str, bool]]:
    for number, record in jsonl.records(path, DataError):
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}:{number}: no string field {field!r} (found {keys}); set data.text_field "
                            "to the field that holds the text")
        yield text, True


def _text_blocks(path: pathlib.Path) -> Iterator[tuple[str, bool]]:
    carry, cut_before = "", False
    with open(path, encoding="utf-8") as f:
        while True:
            try:
                block = f.read(BLOCK_CHARS)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block); convert it "
                                "to UTF-8 or leave it out of data.text_files") from None
            if not block:
                break
            text = carry + block
            cut = _last_safe_cut(text)
            carry = text[cut:]
            if cut:
                yield text[:cut], False
                cut_before = True
    if carry or cut_before:  # an empty file is no document
        yield carry, True


def _last_safe_cut(text: str) -> int:
    i = len(text) - 1
    while True:
        i = text.rfind("\n", 0, i)
        if i < 0:
            return 0
        if 0 < i < len(text) - 1 and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1


# --- encoding ------------------------------------------------------------------------------------

_WORKER_TOKENIZER: tok_lib.Tokenizer | None = None


def _init_worker(tokenizer_dict: dict) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tok_lib.from_dict(tokenizer_dict)


def _encode_task(task: list[tuple[str, bool]], tokenizer=None, threads: int = 1) -> np.ndarray:
    tokenizer = tokenizer or _WORKER_TOKENIZER
    ids = tokenizer.encode_batch([text for text, _ in task], num_threads=threads)
    eot = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    parts = [np.asarray(chunk + eot if ends else chunk, np.uint32) for chunk, (_, ends) in zip(ids, task)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def _tasks(stream: Iterator[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    task, size = [], 0
    for text, ends in stream:
        task.append((text, ends))
        size += len(text)
        if size >= BLOCK_CHARS:
            yield task
            task, size = [], 0
    if task:
        yield task


def encode_stream(stream: Iterator[tuple[str, bool]], tokenizer: tok_lib.Tokenizer, processes: int,
                  threads: int = 1) -> Iterator[np.ndarray]:
    """Token ids of each task's documents, in order, with at most 2 tasks per process in flight."""
    if processes == 1:
        for task in _tasks(stream):
            yield _encode_task(task, tokenizer, threads)
        return
    # spawn, not fork: the parent may hold JAX's threads, which a forked child would inherit broken.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker,
                                                initargs=(tokenizer.to_dict(),)) as pool:
        pending: collections.deque = collections.deque()
        for task in _tasks(stream):
            pending.append(pool.submit(_encode_task, task))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --- the cache -----------------------------------------------------------------------------------

def cache_key(files: Sequence[pathlib.Path], val_files: Sequence[pathlib.Path], tokenizer: tok_lib.Tokenizer,
              val_fraction: float, text_field: str, unknown_chars: str = "error") -> str:
    contents = [[sha256_file(p), p.suffix == ".jsonl"] for p in files]
    val = [[sha256_file(p), p.suffix == ".jsonl"] for p in val_files]
    data = [FORMAT, contents, val, tokenizer.to_dict(), None if val_files else val_fraction, text_field]
    if unknown_chars != "error":
        data.append(unknown_chars)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def char_vocabulary(files: Sequence[pathlib.Path], text_field: str) -> tok_lib.CharTokenizer:
    """A character tokenizer over every character of the files (one streaming pass)."""
    chars: set[str] = set()
    for text, _ in pieces(files, text_field):
        chars.update(text)
    if not chars:
        raise DataError(f"data.text_files: {', '.join(map(str, files))} hold no text")
    return tok_lib.CharTokenizer("".join(sorted(chars)))


def prepare(files: Sequence[pathlib.Path], val_files: Sequence[pathlib.Path], tokenizer: tok_lib.Tokenizer, *,
            val_fraction: float, text_field: str, processes: int | None = None,
            threads: int = 1, unknown_chars: str = "error") -> pathlib.Path:
    """The cache directory (train.bin, val.bin, meta.json) of these files, encoding them if needed.
    The directory appears whole or not at all. `unknown_chars`: DataConfig.unknown_chars."""
    key = cache_key(files, val_files, tokenizer, val_fraction, text_field, unknown_chars)
    directory = cache_root() / "tokens" / key
    if (directory / "meta.json").is_file():
        return directory
    # One process with the library's thread pool was the faster default here (2 cores: tiktoken
    # 14.6 MB/s against 12.2 on 2 processes; tokenizers 3.8 against 3.3); processes scale past
    # one machine's pool and suit tokenizers whose batch encoder does not parallelise.
    processes = processes or 1

    dtype = token_dtype(tokenizer.vocab_size)
    tmp = temporary(directory)
    try:
        t0 = time.perf_counter()
        unknown: collections.Counter = collections.Counter()

        def known(stream):
            return ((tok_lib.known_chars(text, tokenizer, unknown_chars, unknown), ends) for text, ends in stream)

        stats = _write(known(pieces(files, text_field)), tmp / "train.bin", tokenizer, dtype, processes, threads)
        if val_files:
            val_stats = _write(known(pieces(val_files, text_field)), tmp / "val.bin", tokenizer, dtype, processes,
                               threads)
        else:
            val_stats = _split_tail(tmp / "train.bin", tmp / "val.bin", dtype, val_fraction)
            stats = {**stats, "tokens": stats["tokens"] - val_stats["tokens"]}
        seconds = time.perf_counter() - t0
        meta = {"tokenizer": tokenizer.to_dict(), "dtype": np.dtype(dtype).name, "val_fraction": val_fraction,
                "files": [str(p) for p in files], "val_files": [str(p) for p in val_files],
                "text_field": text_field, "processes": processes, "encode_seconds": seconds,
                "mb_per_sec": (stats["bytes"] + val_stats.get("bytes", 0)) / 1e6 / seconds if seconds else None,
                **({"unknown_chars": {"policy": unknown_chars, "counts": dict(unknown)}} if unknown else {})}
        for split, st in (("train", stats), ("val", val_stats)):
            meta[split] = {"tokens": st["tokens"], "sha256": sha256_file(tmp / f"{split}.bin")}
            if "documents" in st:
                meta[split]["documents"] = st["documents"]
        for split in ("train", "val"):
            if meta[split]["tokens"] == 0:
                raise DataError(f"data.text_files: the {split} split is empty ({meta[split]}); add text, or "
                                "change data.val_fraction / data.val_files")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def temporary(target: pathlib.Path, *, directory: bool = True) -> pathlib.Path:
    """A temporary directory (or empty file) beside `target`, to be renamed onto it when complete,
    named `.NAME.HOST.PID.*` so that the next call removes it if this process dies first (first
    removing what dead processes of this host left: SIGTERM or SIGKILL skip a cleanup, and an
    encoding's leftovers are 70 MB for TinyShakespeare, gigabytes for a real corpus)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent)
    prefix = f".{target.name}.{socket.gethostname()}.{os.getpid()}."
    if not directory:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=prefix)
        os.close(fd)
        return pathlib.Path(name)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the token cache may be shared by several users
    return tmp


def remove_abandoned(parent: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporaries (`temporary`) in `parent` of this host's processes that are no
    longer alive; an encoding still running here, or on another host sharing the cache, keeps its own."""
    owned = re.compile(rf"\..+\.{re.escape(socket.gethostname())}\.(\d+)\.[^.]+")
    removed = []
    for path in parent.glob(".*"):
        match = owned.fullmatch(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write(stream, path: pathlib.Path, tokenizer, dtype, processes: int, threads: int) -> dict:
    counted = _Counted(stream)
    tokens = 0
    with open(path, "wb") as out:
        for ids in encode_stream(iter(counted), tokenizer, processes, threads):
            ids.astype(dtype).tofile(out)
            tokens += ids.size
    return {"tokens": tokens, "bytes": counted.bytes, "documents": counted.documents}


class _Counted:
    def __init__(self, stream):
        self.stream, self.bytes, self.documents = stream, 0, 0

    def __iter__(self):
        for text, ends in self.stream:
            self.bytes += len(text.encode("utf-8"))
            self.documents += ends
            yield text, ends


def _split_tail(train: pathlib.Path, val: pathlib.Path, dtype, fraction: float) -> dict:
    """Move the last `fraction` of the token stream into its own file (nanoGPT holds out the end)."""
    itemsize = np.dtype(dtype).itemsize
    n = train.stat().st_size // itemsize
    cut = int(n * (1 - fraction))
    with open(train, "rb+") as src, open(val, "wb") as dst:
        src.seek(cut * itemsize)
        shutil.copyfileobj(src, dst, 16 << 20)
        src.truncate(cut * itemsize)
    return {"tokens": n - cut}
