"""What the trainer measures at each evaluation: the validation split, the held-out files of
`eval.sets` (loss and bits per byte) and the benchmarks of `eval.tasks`.

Everything is read, encoded and checked once, before the first step compiles; a bad file is
refused then, naming it. Each pass covers its whole data, and a stop signal abandons the whole
evaluation (errors.Interrupted): the trainer saves and the resumed run evaluates again, so a
half-done evaluation is never logged.

Bits per byte: the summed negative log-likelihood of the scored tokens, in bits, over the UTF-8
bytes those tokens spell (end-of-text tokens spell none), so models with different tokenizers are
compared on the same text (Gao et al. 2020, The Pile, section 5).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np
from flax import nnx

from gptjax.config import EvalTask, TrainConfig
from gptjax.data import loader, text_files
from gptjax.errors import DataError, Interrupted
from gptjax.finetune import sft
from gptjax.runtime import distributed, sharding


@dataclasses.dataclass(frozen=True)
class TextSet:
    """One held-out file as the model reads it."""

    name: str
    path: str
    ids: np.ndarray  # the file's tokens, after an end-of-text token where the tokenizer has one
    n_bytes: int  # UTF-8 bytes spelled by the scored tokens ids[1:]


def load_set(name: str, path: str, tokenizer, text_field: str) -> TextSet:
    """A .txt or .jsonl file encoded with the run's tokenizer, or a .bin token file in it."""
    where = f"eval.sets.{name} = {path!r}"
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(f"{where}: no such file; give a UTF-8 text file (.txt), JSON lines (.jsonl, documents in "
                        f"data.text_field = {text_field!r}) or a token file (.bin) in the run's tokenizer")
    if file.suffix == ".bin":
        ids = np.fromfile(file, dtype=text_files.token_dtype(tokenizer.vocab_size)).astype(np.int64)
        if ids.size and int(ids.max()) >= tokenizer.vocab_size:
            raise DataError(f"{where}: token id {int(ids.max())} is beyond the tokenizer's {tokenizer.vocab_size} "
                            "ids; a token file must be in the run's own tokenizer")
    else:
        try:
            ids = np.concatenate([np.zeros(0, np.int64), *text_files.encode_stream(
                text_files.pieces([file], text_field), tokenizer, processes=1)]).astype(np.int64)
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{where}: cannot be encoded with the run's {tokenizer.name} tokenizer ({e})") from None
    if tokenizer.eot_id is not None:  # then every token of the text is predicted, the first included
        ids = np.concatenate([[tokenizer.eot_id], ids])
    if ids.size < 2:
        raise DataError(f"{where}: {ids.size} token(s); a held-out set needs at least 2")
    spelled = [int(t) for t in ids[1:] if t != tokenizer.eot_id]
    n_bytes = len(tokenizer.decode(spelled).encode("utf-8"))
    if n_bytes == 0:
        raise DataError(f"{where}: its tokens spell no text, so bits per byte are undefined")
    return TextSet(name, path, ids, n_bytes)


def windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, first scored target) of windows of seq_len + 1 tokens that score every target (each
    token but the first) exactly once: back to back, the last one ending at the end of the text."""
    out = [(start, start + 1) for start in range(0, n_tokens - seq_len, seq_len)]
    scored = out[-1][0] + seq_len + 1 if out else 1  # targets below this are done
    if scored < n_tokens:
        out.append((max(n_tokens - seq_len - 1, 0), scored))
    return out


def _set_batches(ids: np.ndarray, seq_len: int, global_batch: int, rows: np.ndarray):
    """This process's (rows [b, T+1], weights [b, T]) of each global batch of the set's windows."""
    spans = windows(ids.size, seq_len)
    for begin in range(0, len(spans), global_batch):
        tokens = np.zeros((len(rows), seq_len + 1), np.int32)
        weights = np.zeros((len(rows), seq_len), np.float32)
        for r, j in enumerate(rows):
            if begin + j >= len(spans):
                continue  # padding rows weigh nothing
            start, first = spans[begin + j]
            piece = ids[start:start + seq_len + 1]
            tokens[r, :piece.size] = piece
            weights[r, first - start - 1:piece.size - 1] = 1.0
        yield tokens, weights


def _split_batches(split, cfg: TrainConfig, rows: np.ndarray):
    """The validation split's batches with per-token weights (whole windows, the tail dropped, as
    nanoGPT measures it)."""
    b, t = cfg.eval_batch_size, cfg.resolved_seq_len
    if isinstance(split, dict):
        for batch, w in sft.eval_batches(split, b, rows):
            yield batch, np.repeat(w[:, None], batch["tokens"].shape[1] - 1, axis=1)
    else:
        for batch, w in loader.eval_batches(split, t, b, rows):
            yield batch, np.repeat(w[:, None], t, axis=1)


@dataclasses.dataclass(frozen=True)
class Task:
    spec: EvalTask
    items: list


def load_task(spec: EvalTask) -> Task:
    from gptjax.evals import evaluate, tasks

    if spec.task not in evaluate.TRAINING_TASKS:
        raise tasks.TaskError(f"eval.tasks: task {spec.task!r} cannot run during training; accepted: "
                              f"{', '.join(evaluate.TRAINING_TASKS)} (held-out text goes in eval.sets; humaneval "
                              "runs generated code and belongs to `gptjax eval --allow-code-execution`)")
    opts = evaluate.EvalOptions(task=spec.task, data=spec.data, shots=spec.shots, fewshot_data=spec.fewshot_data,
                                limit=spec.limit)
    opts.check()
    return Task(spec, evaluate.task_items(opts))


class HeldOut:
    """The measurements of one run: built (files read and checked) before anything compiles.
    `split` is the validation split (None: only the sets and tasks)."""

    def __init__(self, cfg: TrainConfig, tr, split, tokenizer):
        self.cfg, self.tr, self.split, self.tokenizer = cfg, tr, split, tokenizer
        text_field = cfg.data.text_field
        self.sets = [load_set(name, path, tokenizer, text_field) for name, path in cfg.eval.sets.items()]
        self.tasks = [load_task(spec) for spec in cfg.eval.tasks]
        self.rows = sharding.local_rows(tr.batch_sharding, cfg.eval_batch_size)
        self.step_fn = None  # built and compiled (on every process together) by the first batch

    def tasks_due(self, step: int) -> bool:
        every, last = self.cfg.eval.tasks_every, step == self.cfg.steps
        return bool(self.tasks) and (last or (every is not None and step % every == 0))

    def measure(self, params, frozen, *, tasks: bool, interrupted: Callable[[], bool],
                on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
        """One evaluation: `val_loss` (unless there is no split), eval/NAME/loss and eval/NAME/bpb
        of each set, and (when `tasks`) eval/TASK/METRIC of each task. Raises errors.Interrupted
        when a stop signal comes."""
        row = {}
        if self.split is not None:
            total, count = self._pass(params, frozen, _split_batches(self.split, self.cfg, self.rows), interrupted,
                                      on_batch)
            row["val_loss"] = total / count
        for s in self.sets:
            batches = _set_batches(s.ids, self.cfg.resolved_seq_len, self.cfg.eval_batch_size, self.rows)
            total, count = self._pass(params, frozen, batches, interrupted)
            row[f"eval/{s.name}/loss"] = total / count
            row[f"eval/{s.name}/bpb"] = total / math.log(2) / s.n_bytes
        if tasks:
            row.update(self._tasks(params, frozen, interrupted))
        return row

    def _pass(self, params, frozen, batches: Iterator, interrupted, on_batch=None) -> tuple[float, float]:
        """(summed token loss, tokens) over every batch."""
        b, sh = self.cfg.eval_batch_size, self.tr.batch_sharding
        total, count = 0.0, 0.0
        for i, (batch, weights) in enumerate(batches):
            if interrupted():
                raise Interrupted(f"evaluation stopped at batch {i}")
            batch = jax.tree.map(lambda x: sharding.global_array(x, self.rows, sh, b), batch)
            args = (params, frozen, batch, sharding.global_array(weights, self.rows, sh, b))
            if self.step_fn is None:
                from gptjax.training import trainer

                self.step_fn = trainer.make_eval_step(self.tr)
                distributed.compile_together(self.step_fn, *args, name="gptjax-eval-step-compiled")
            s, c = self.step_fn(*args)
            with jax.transfer_guard_device_to_host("allow"):
                total, count = total + float(s), count + float(c)
            if on_batch is not None:
                on_batch(i)
        return total, count

    def _tasks(self, params, frozen, interrupted) -> dict[str, float]:
        from gptjax.evals import evaluate, scorer

        full = params if frozen is None else jax.jit(self.tr.model_params)(params, frozen)
        model = nnx.merge(self.tr.graphdef, full)
        row = {}
        for task in self.tasks:
            s = scorer.Scorer(model, batch_size=self.cfg.eval_batch_size, progress=False, interrupted=interrupted)
            with jax.transfer_guard_device_to_host("allow"):
                metrics = evaluate.score_items(s, self.tokenizer, task.spec.task, task.items)
            row.update({f"eval/{task.spec.metric_name}/{k}": float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        return row


def stop_check(stop) -> Callable[[], bool]:
    """Whether any process has heard a stop signal (StopFlag `stop`), agreed by all processes."""
    return lambda: distributed.any_process(stop.signal is not None)


def evals_of(rows: list[dict]) -> dict[str, dict]:
    """result.json's `evals`: each name's metrics from the last row that measured it, with its step."""
    out: dict[str, dict] = {}
    for row in rows:
        for key, value in row.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval":
                entry = out.setdefault(parts[1], {})
                if entry.get("step") != row["step"]:
                    entry.clear()
                    entry["step"] = row["step"]
                entry[parts[2]] = value
    return out
