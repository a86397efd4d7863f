"""GPT-1's task fine-tuning (Radford et al. 2018, section 3.3): `gptjax finetune`.

Inputs are transformed into token sequences with three new embedding rows, start (s), delimiter
(d) and extract (x), appended to the vocabulary:
  classification   s text x
  entailment       s premise d hypothesis x
  similarity       s a d b x  and  s b d a x   (both orderings; their final states are added)
  multiple choice  s context d choice x        (one sequence per choice, a softmax over choices)
A linear head reads the final hidden state at the extract token. The objective is
L3 = L2 + λ·L1: the task loss plus λ (finetune.aux_lm_weight) times the language-model loss on
the same sequences. A float label makes similarity a regression (mean squared error; Pearson and
Spearman on the eval file), an integer label a classification (accuracy).

The run is pretraining's run with another objective (TaskObjective) and batches (TaskBatches):
the same step, loop, checkpoints and resume, signals, NaN policy and metrics.jsonl; init_from
gives the model and tokenizer; at the end the final checkpoint is scored into eval.json.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gptjax.config import TrainConfig
from gptjax.data import jsonl, loader
from gptjax.errors import DataError
from gptjax.model.gpt import abstract_model
from gptjax.runtime import sharding, xla
from gptjax.store.rundir import RunDir
from gptjax.training import loop, trainer, warm_start

FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"),
          "similarity": ("text_a", "text_b"), "multiple_choice": ("context", "choices")}
N_SPECIAL = 3  # start, delimiter, extract


@dataclasses.dataclass(frozen=True)
class TaskData:
    tokens: np.ndarray  # [N, V, T] int32: V views (orderings or choices) of each example
    ends: np.ndarray  # [N, V] position of the extract token
    labels: np.ndarray  # [N] int32 class / choice, or float32 target


@dataclasses.dataclass(frozen=True)
class Head:
    """What the head predicts: n_out logits (classes; 1 per choice for multiple choice) or a value."""

    n_out: int
    regression: bool


def read_examples(path: str, task: str) -> list[dict]:
    """The JSONL file's records, each checked for the task's fields and an int or float label."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such file; give a JSONL file with {', '.join(FIELDS[task])} and label per line")
    out = []
    for number, record in jsonl.records(file, DataError):
        missing = [f for f in (*FIELDS[task], "label") if not isinstance(record, dict) or f not in record]
        if missing:
            raise DataError(f"{path}:{number}: a {task} example needs {', '.join((*FIELDS[task], 'label'))}; "
                            f"missing {', '.join(missing)}")
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise DataError(f"{path}:{number}: label = {label!r}; accepted: an integer (class or choice index), or "
                            "a float for similarity regression")
        if task == "multiple_choice" and not (isinstance(record["choices"], list) and len(record["choices"]) >= 2):
            raise DataError(f"{path}:{number}: choices = {record['choices']!r}; give a list of at least two strings")
        out.append(record)
    if not out:
        raise DataError(f"{path}: holds no examples")
    return out


def head_for(task: str, train: list[dict], path: str) -> Head:
    labels = [r["label"] for r in train]
    if any(isinstance(x, float) for x in labels):
        if task != "similarity":
            raise DataError(f"{path}: float labels mean regression, which GPT-1 defines for similarity only; use "
                            "integer class labels for a classification task")
        return Head(1, True)
    if task == "multiple_choice":
        n = len(train[0]["choices"])
        for i, r in enumerate(train):
            if len(r["choices"]) != n or not 0 <= r["label"] < n:
                raise DataError(f"{path}: example {i + 1} has {len(r['choices'])} choices and label {r['label']}; "
                                f"every example needs the first one's {n} choices and a label in [0, {n})")
        return Head(1, False)
    if min(labels) < 0:
        raise DataError(f"{path}: label {min(labels)} is negative; class labels are 0, 1, ...")
    return Head(max(labels) + 1, False)


def gpt1_recipe(n_examples: int, given: dict) -> dict:
    """GPT-1's fine-tuning settings (section 4.1) for every key the command line leaves unset
    (`given`: dotted key -> value): batch 32, lr 6.25e-5 with 0.2% linear warmup and linear decay,
    3 epochs; λ = 0.5 is finetune.aux_lm_weight's default."""
    batch = given.get("data.batch_size", 32)
    steps = given.get("steps", math.ceil(3 * n_examples / batch))
    recipe = {"data.batch_size": 32, "steps": steps, "optim.lr": 6.25e-5, "optim.min_lr": 0.0,
              "optim.warmup_steps": max(int(0.002 * steps), 1), "optim.schedule": "wsd",
              "optim.wsd_decay_fraction": 1.0, "eval_batch_size": 32, "sample_tokens": 0,
              "checkpoint_every": steps, "log_every": 10}
    return {k: v for k, v in recipe.items() if k not in given}


def views(record: dict, task: str, encode, ids: tuple[int, int, int]) -> list[list[list[int]]]:
    """Each view's segments (token lists) before truncation: GPT-1's input transformations."""
    s, d, x = ids
    if task == "classification":
        return [[[s], encode(record["text"]), [x]]]
    if task == "entailment":
        return [[[s], encode(record["premise"]), [d], encode(record["hypothesis"]), [x]]]
    if task == "similarity":
        a, b = encode(record["text_a"]), encode(record["text_b"])
        return [[[s], a, [d], b, [x]], [[s], b, [d], a, [x]]]
    context = encode(record["context"])
    return [[[s], context, [d], encode(c), [x]] for c in record["choices"]]


def _fit(segments: list[list[int]], length: int) -> list[int]:
    """Drop tokens from the start of the first text segment (then the end of the second) until the
    sequence fits: the end of a context is what the question or answer follows."""
    segments = [list(seg) for seg in segments]
    over = sum(map(len, segments)) - length
    if over > 0:
        cut = min(over, len(segments[1]))
        segments[1] = segments[1][cut:]
        over -= cut
    if over > 0 and len(segments) > 3:
        segments[3] = segments[3][: len(segments[3]) - over]
    return [t for seg in segments for t in seg]


def encode(records: list[dict], task: str, tokenizer, vocab_size: int, seq_len: int, head: Head) -> TaskData:
    ids = (vocab_size, vocab_size + 1, vocab_size + 2)
    seqs = [[_fit(v, seq_len) for v in views(r, task, tokenizer.encode, ids)] for r in records]
    n_views = len(seqs[0])
    tokens = np.zeros((len(records), n_views, seq_len), np.int32)
    ends = np.zeros((len(records), n_views), np.int32)
    for i, example in enumerate(seqs):
        for j, seq in enumerate(example):
            tokens[i, j, :len(seq)] = seq
            ends[i, j] = len(seq) - 1
    labels = np.asarray([r["label"] for r in records], np.float32 if head.regression else np.int32)
    return TaskData(tokens, ends, labels)


# --- the model: the pretrained GPT with three new rows, and a linear head ------------------------

def extended_config(cfg: TrainConfig):
    return cfg.model.replace(vocab_size=cfg.model.vocab_size + N_SPECIAL)


def _extend(params: dict, old_vocab: int, new_cfg, seed: int) -> dict:
    """The embedding table (and an untied head) with the special rows appended: drawn like GPT-1's
    embeddings, N(0, init_std); rows past the vocabulary (padding) are zero."""
    key = jax.random.key(seed)

    def grow(x, axis):
        x = jax.lax.slice_in_dim(x, 0, old_vocab, axis=axis)
        shape = list(x.shape)
        shape[axis] = N_SPECIAL
        new = new_cfg.init_std * jax.random.normal(key, shape, x.dtype) if axis == 0 else jnp.zeros(shape, x.dtype)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, new_cfg.padded_vocab - new_cfg.vocab_size)
        return jnp.pad(jnp.concatenate([x, new], axis=axis), widths)

    out = {**params, "embed": {"table": grow(params["embed"]["table"], 0)}}
    if params.get("head") is not None and "kernel" in params["head"]:
        out["head"] = {**params["head"], "kernel": grow(params["head"]["kernel"], 1)}
        if "bias" in params["head"]:
            out["head"]["bias"] = grow(params["head"]["bias"], 0) * 0
    return out


@dataclasses.dataclass(frozen=True)
class TaskObjective:
    """GPT-1's L3 = L2 + λ·L1 (trainer.Objective): the trained parameters are the extended model
    and the head, {"model": ..., "head": {"kernel", "bias"}}; rows are TaskBatches' dicts."""

    head: Head

    def model_config(self, cfg: TrainConfig):
        return extended_config(cfg)

    def layout(self, cfg, shapes, axes, shardings, mesh) -> trainer.Layout:
        head = {"kernel": jax.ShapeDtypeStruct((cfg.model.d_model, self.head.n_out), jnp.float32),
                "bias": jax.ShapeDtypeStruct((self.head.n_out,), jnp.float32)}
        return trainer.Layout({"model": shapes, "head": head},
                              {"model": shardings, "head": jax.tree.map(lambda _: sharding.replicated(mesh), head)})

    def starting_params(self, tr: trainer.Trainer) -> dict:
        cfg = tr.cfg
        base_model = abstract_model(cfg.model)
        base = warm_start.load_params(cfg, tr.mesh, sharding.param_shardings(
            sharding.logical_axes(base_model), nnx.to_pure_dict(nnx.state(base_model)), tr.mesh))

        def init(base):
            model = _extend(base, cfg.model.vocab_size, extended_config(cfg), cfg.seed)
            shape = (cfg.model.d_model, self.head.n_out)
            kernel = cfg.model.init_std * jax.random.normal(jax.random.key(cfg.seed + 1), shape)
            return {"model": model, "head": {"kernel": kernel, "bias": jnp.zeros((self.head.n_out,))}}

        return jax.jit(init, out_shardings=tr.state_shardings["params"])(base)

    def model_params(self, params, frozen):
        return params["model"]

    def loss(self, tr, params, frozen, rows, key):
        task_loss, lm_loss, _ = _losses(tr, self.head, params, rows["tokens"], rows["ends"], rows["labels"], key)
        total = task_loss + tr.cfg.finetune.aux_lm_weight * lm_loss
        return total, {"loss": total, "task_loss": task_loss, "lm_loss": lm_loss}


class TaskBatches:
    """Batch `step` is a function of (seed, step): epoch e's rows come from its own permutation.
    Yields this process's rows (`rows` of the global batch) as the task objective's dicts."""

    def __init__(self, data: TaskData, batch_size: int, seed: int, rows: np.ndarray):
        self.data, self.batch_size, self.seed, self.rows = data, batch_size, seed, rows

    def iterate(self, examples: int, steps: int):
        n, b = len(self.data.labels), self.batch_size
        per_epoch = max(n // b, 1)
        for step in range(examples // b, examples // b + steps):
            epoch, i = divmod(step, per_epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            picked = (perm[(i * b) % n:][:b] if n >= b else np.resize(perm, b))[self.rows]
            yield {"tokens": self.data.tokens[picked], "ends": self.data.ends[picked],
                   "labels": self.data.labels[picked]}


def _outputs(tr: trainer.Trainer, params, tokens_BxVxT, ends_BxV, key):
    """(head outputs [B, n_out] or [B, V] for multiple choice, LM logits [B·V, T, vocab])."""
    b, v, t = tokens_BxVxT.shape
    model = nnx.merge(tr.graphdef, params["model"])
    h = model.hidden(tokens_BxVxT.reshape(b * v, t), key=key)
    extract = jnp.take_along_axis(h, ends_BxV.reshape(b * v, 1, 1), axis=1)[:, 0].reshape(b, v, -1)
    kernel, bias = params["head"]["kernel"], params["head"]["bias"]
    task = tr.cfg.finetune.task
    if task == "multiple_choice":
        out = (extract @ kernel + bias)[..., 0]
    elif task == "similarity":
        out = extract.sum(axis=1) @ kernel + bias
    else:
        out = extract[:, 0] @ kernel + bias
    return out.astype(jnp.float32), model._head(h)


def _losses(tr: trainer.Trainer, head: Head, params, tokens, ends, labels, key):
    out, logits = _outputs(tr, params, tokens, ends, key)
    if head.regression:
        task_loss = jnp.mean(jnp.square(out[:, 0] - labels))
    else:
        task_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, labels))
    b, v, t = tokens.shape
    flat = tokens.reshape(b * v, t)
    targets = flat[:, 1:]
    # L1 over the text the model reads: targets before the extract token that are real tokens.
    mask = (targets < tr.cfg.model.vocab_size) & (jnp.arange(1, t)[None] < ends.reshape(b * v, 1))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
    lm_loss = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)
    return task_loss, lm_loss, out


def make_predict(tr: trainer.Trainer):
    def predict(params, tokens, ends):
        out, _ = _outputs(tr, params, tokens, ends, None)
        return out

    return xla.jit(predict, mesh=tr.mesh, in_shardings=(tr.state_shardings["params"], tr.batch_sharding,
                                                        tr.batch_sharding),
                   out_shardings=sharding.replicated(tr.mesh))


def predictions(tr: trainer.Trainer, predict, params, task_data: TaskData) -> np.ndarray:
    """Head outputs for every example, in batches padded to the batch size (padding dropped)."""
    b, n = tr.cfg.eval_batch_size, len(task_data.labels)
    outs = []
    for start in range(0, n, b):
        idx = np.arange(start, start + b) % n
        outs.append(np.asarray(jax.device_get(predict(params, task_data.tokens[idx], task_data.ends[idx]))))
    return np.concatenate(outs)[:n]


def scores(head: Head, outputs: np.ndarray, labels: np.ndarray) -> dict:
    if head.regression:
        from scipy import stats

        pred = outputs[:, 0]
        return {"pearson": float(stats.pearsonr(pred, labels)[0]), "spearman": float(stats.spearmanr(pred, labels)[0]),
                "mse": float(np.mean((pred - labels) ** 2))}
    return {"accuracy": float(np.mean(np.argmax(outputs, axis=-1) == labels))}


# --- the run ------------------------------------------------------------------------------------

def finetune_run(cfg: TrainConfig, run_dir, *, progress: bool = True) -> dict:
    """Fine-tune cfg.init_from on cfg.finetune's task (or resume) with the training loop every run
    uses, then evaluate the final checkpoint and write eval.json."""
    ft = cfg.finetune
    warm_start.check(cfg)
    tokenizer = loader.make_tokenizer(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    if tokenizer is None:
        raise DataError("gptjax finetune encodes text with the model's tokenizer: data.tokenizer = 'char' has no "
                        "vocabulary here; use init_from's (the default) or name one")
    train_records = read_examples(ft.train_file, ft.task)
    head = head_for(ft.task, train_records, ft.train_file)
    eval_records = read_examples(ft.eval_file, ft.task) if ft.eval_file else []
    seq_len = cfg.resolved_seq_len
    train_data = encode(train_records, ft.task, tokenizer, cfg.model.vocab_size, seq_len, head)
    eval_data = encode(eval_records, ft.task, tokenizer, cfg.model.vocab_size, seq_len, head) if eval_records else None
    objective = TaskObjective(head)
    job = loop.Job(objective, tokenizer, functools.partial(TaskBatches, train_data),
                   tokens_per_row=train_data.tokens.shape[1] * seq_len, plain_causal=True)
    run = loop.train_run(cfg, run_dir, progress=progress, job=job)
    result = {"task": ft.task, "init_from": cfg.init_from, "aux_lm_weight": ft.aux_lm_weight, "steps": cfg.steps,
              "train_examples": len(train_records)}
    if run.stopped is not None:
        return {**result, "stopped": run.stopped, "steps": run.final_step}
    if eval_data is not None:
        tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh), objective)
        params = RunDir(run_dir, read_only=True).restore_params(cfg, tr.abstract_state["params"])[0]
        outputs = predictions(tr, make_predict(tr), params, eval_data)
        result.update(scores(head, outputs, eval_data.labels), eval_examples=len(eval_records))
    RunDir(run_dir).write_json("eval.json", result)
    return result


def say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
