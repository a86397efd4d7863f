"""Supervised fine-tuning data (`data.sft_files`): prompt/response or chat JSONL -> training rows
whose loss covers response tokens only, packed with per-document attention or padded.

Layouts, one example per line:
  {"prompt": "...", "response": "..."}
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
Chat messages are rendered with data.chat_template ("{role}" and "{content}" placeholders); the
content and the template's text after it are trained for assistant messages, nothing else is.
Every example ends with the tokenizer's end-of-text token, trained as part of the response, so
the model learns to stop.

Rows are {"tokens" [T+1], "weights" [T] (1 where the target token is trained), "segments"
[T+1] (which example each token belongs to; 0 is padding) and "positions" [T+1] (restarting
at each example)}. Packing fills rows with whole examples in order; attention is masked to each
segment and positions restart, so a packed row computes exactly what the same examples padded to
one row each compute.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

from gptjax.config import DataConfig
from gptjax.data import jsonl, text_files
from gptjax.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Example:
    ids: list[int]
    trained: list[bool]  # per token: is it a target the loss covers


@dataclasses.dataclass(frozen=True)
class SFTData:
    train: dict[str, np.ndarray]  # rows, as in the module docstring
    val: dict[str, np.ndarray]
    tokenizer: object
    examples: tuple[int, int]  # (train, validation) examples after dropping empty ones


def render(record: dict, where: str, tokenizer, template: str) -> Example:
    """One example's tokens and which of them are trained."""
    eot = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: messages = {messages!r}; give a list of {{'role', 'content'}} objects")
        head, _, tail = template.partition("{content}")
        ids, trained = [], []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} = {m!r}; each needs a role in {ROLES} and a string content")
            for text, train in ((head.format(role=m["role"]), False),
                                (m["content"] + tail.format(role=m["role"]), m["role"] == "assistant")):
                piece = tokenizer.encode(text)
                ids += piece
                trained += [train] * len(piece)
        if not any(trained):
            raise DataError(f"{where}: no assistant message, so nothing to train on")
        return Example(ids + eot, trained + [True] * len(eot))
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: expected string fields prompt and response, or messages (found {keys})")
    p, r = tokenizer.encode(prompt), tokenizer.encode(response) + eot
    return Example(p + r, [False] * len(p) + [True] * len(r))


def read(files, tokenizer, template: str) -> list[Example]:
    out = []
    for path in files:
        for number, record in jsonl.records(path, DataError):
            out.append(render(record if isinstance(record, dict) else {}, f"{path}:{number}", tokenizer, template))
    return out


def _row(length: int) -> dict[str, np.ndarray]:
    return {"tokens": np.zeros(length + 1, np.int32), "weights": np.zeros(length, np.float32),
            "segments": np.zeros(length + 1, np.int32), "positions": np.zeros(length + 1, np.int32)}


def rows(examples: list[Example], seq_len: int, packing: bool) -> dict[str, np.ndarray]:
    """Examples (each cut to seq_len + 1 tokens) packed greedily in order, or one per row."""
    out, row, used, segment = [], _row(seq_len), 0, 0
    for ex in examples:
        ids, trained = ex.ids[: seq_len + 1], ex.trained[: seq_len + 1]
        if used and (not packing or used + len(ids) > seq_len + 1):
            out.append(row)
            row, used, segment = _row(seq_len), 0, 0
        segment += 1
        n = len(ids)
        row["tokens"][used:used + n] = ids
        row["segments"][used:used + n] = segment
        row["positions"][used:used + n] = np.arange(n)
        # weights[t] belongs to the target tokens[t + 1]: trained, and in the same example.
        row["weights"][used:used + n - 1] = np.asarray(trained[1:], np.float32)
        used += n
    if used:
        out.append(row)
    if not out:
        return {k: v[None][:0] for k, v in _row(seq_len).items()}
    return {k: np.stack([r[k] for r in out]) for k in out[0]}


def load(cfg: DataConfig, tokenizer, seq_len: int) -> SFTData:
    files = text_files.expand(cfg.sft_files, "data.sft_files")
    examples = read(files, tokenizer, cfg.chat_template)
    if cfg.val_files:
        val = read(text_files.expand(cfg.val_files, "data.val_files"), tokenizer, cfg.chat_template)
        train = examples
    else:  # the last val_fraction of the examples, as the text pipelines hold out the end
        cut = int(len(examples) * (1 - cfg.val_fraction))
        train, val = examples[:cut], examples[cut:]
    train_rows, val_rows = rows(train, seq_len, cfg.sft_packing), rows(val, seq_len, cfg.sft_packing)
    for split, r, exs in (("train", train_rows, train), ("validation", val_rows, val)):
        if len(exs) == 0 or r["weights"].sum() == 0:
            raise DataError(f"data.sft_files: the {split} split has no trained tokens ({len(exs)} examples); add "
                            "examples, or change data.val_fraction / data.val_files")
    cut_off = sum(len(e.ids) > seq_len + 1 for e in examples)
    if cut_off:
        print(f"gptjax: {cut_off} SFT examples are longer than data.seq_len + 1 = {seq_len + 1} tokens and were cut",
              file=sys.stderr)
    return SFTData(train_rows, val_rows, tokenizer, (len(train), len(val)))


class Batches:
    """Example i is row i mod n of epoch i // n's seeded permutation of all rows, and a step's
    batch the next `global_batch` examples, like data.TrainBatches; a process takes only the
    global rows it holds."""

    def __init__(self, data: dict[str, np.ndarray], global_batch: int, seed: int, local_rows=None):
        self.data, self.global_batch, self.seed = data, global_batch, seed
        self.n = len(data["tokens"])
        self.rows = np.arange(global_batch) if local_rows is None else np.asarray(local_rows)

    def at(self, first: int) -> dict[str, np.ndarray]:
        epoch, i = np.divmod(first + self.rows, self.n)
        idx = np.asarray([self._permutation(int(e))[int(j)] for e, j in zip(epoch, i)])
        return {k: v[idx] for k, v in self.data.items()}

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a batch spans at most two epochs
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def iterate(self, first: int, steps: int):
        return (self.at(first + i * self.global_batch) for i in range(steps))


def eval_batches(data: dict[str, np.ndarray], global_batch: int, local_rows=None):
    """All validation rows in order, the last batch padded with zero-weight rows: (rows, row weights)."""
    n = len(data["tokens"])
    local = np.arange(global_batch) if local_rows is None else np.asarray(local_rows)
    for start in range(0, n, global_batch):
        ids = start + local
        real = ids < n
        batch = {k: v[np.where(real, ids, 0)] for k, v in data.items()}
        yield batch, real.astype(np.float32)
