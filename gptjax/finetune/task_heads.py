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

The run uses pretraining's pieces: init_from for the model and tokenizer, the mesh's parameter
and batch shardings, Optax, Orbax checkpoints with resume, metrics.jsonl; at the end eval.json.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from gptjax.config import TrainConfig
from gptjax.data import jsonl, loader
from gptjax.errors import DataError
from gptjax.model.gpt import abstract_model
from gptjax.runtime import sharding, xla
from gptjax.store.rundir import RunDir
from gptjax.training import optim, resume, warm_start

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
class TaskTrainer:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    graphdef: object
    head: Head
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: dict
    abstract_state: dict

    def batch_sharding(self, ndim: int):
        return sharding.batch_sharding(self.mesh, ndim)


def make_trainer(cfg: TrainConfig, mesh, head: Head) -> TaskTrainer:
    sharding.check_batch(cfg.data.batch_size, mesh)
    model = abstract_model(extended_config(cfg))
    graphdef, state = nnx.split(model)
    shapes = {"model": nnx.to_pure_dict(state),
              "head": {"kernel": jax.ShapeDtypeStruct((cfg.model.d_model, head.n_out), jnp.float32),
                       "bias": jax.ShapeDtypeStruct((head.n_out,), jnp.float32)}}
    param_sh = {"model": sharding.param_shardings(sharding.logical_axes(model), shapes["model"], mesh),
                "head": {"kernel": sharding.replicated(mesh), "bias": sharding.replicated(mesh)}}
    tx = optim.build(cfg.optim, cfg.model.width_mult)
    opt_shapes = jax.eval_shape(tx.init, shapes)
    state_sh = {"step": sharding.replicated(mesh), "params": param_sh,
                "opt_state": sharding.opt_state_shardings(tx, opt_shapes, shapes, param_sh, mesh)}
    abstract = sharding.abstract({"step": jax.ShapeDtypeStruct((), jnp.int32), "params": shapes,
                                  "opt_state": opt_shapes}, state_sh)
    return TaskTrainer(cfg, mesh, graphdef, head, tx, optim.schedule(cfg.optim, cfg.steps), state_sh, abstract)


def init_state(tr: TaskTrainer) -> dict:
    cfg = tr.cfg
    base = warm_start.load_params(cfg, tr.mesh, sharding.param_shardings(
        sharding.logical_axes(abstract_model(cfg.model)), nnx.to_pure_dict(nnx.state(abstract_model(cfg.model))),
        tr.mesh))

    def init(base):
        model = _extend(base, cfg.model.vocab_size, extended_config(cfg), cfg.seed)
        shape = (cfg.model.d_model, tr.head.n_out)
        kernel = cfg.model.init_std * jax.random.normal(jax.random.key(cfg.seed + 1), shape)
        params = {"model": model, "head": {"kernel": kernel, "bias": jnp.zeros((tr.head.n_out,))}}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tr.tx.init(params)}

    return jax.jit(init, out_shardings=tr.state_shardings)(base)


def _outputs(tr: TaskTrainer, params, tokens_BxVxT, ends_BxV, key):
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


def _losses(tr: TaskTrainer, params, tokens, ends, labels, key):
    out, logits = _outputs(tr, params, tokens, ends, key)
    if tr.head.regression:
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


def make_train_step(tr: TaskTrainer):
    cfg = tr.cfg
    dropout = cfg.model.embed_dropout or cfg.model.attn_dropout or cfg.model.resid_dropout

    def loss_fn(params, tokens, ends, labels, key):
        task_loss, lm_loss, _ = _losses(tr, params, tokens, ends, labels, key)
        return task_loss + cfg.finetune.aux_lm_weight * lm_loss, (task_loss, lm_loss)

    def step(state, tokens, ends, labels):
        key = jax.random.fold_in(jax.random.key(cfg.seed), state["step"]) if dropout else None
        (loss, (task_loss, lm_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], tokens, ends, labels, key)
        lr = tr.schedule(state["step"])
        opt_state = optim.with_learning_rate(state["opt_state"], lr)
        updates, opt_state = tr.tx.update(grads, opt_state, state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "task_loss": task_loss, "lm_loss": lm_loss, "lr": lr,
                   "grad_norm": optax.tree.norm(grads)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return xla.jit(step, mesh=tr.mesh, in_shardings=(tr.state_shardings, tr.batch_sharding(3),
                                                     tr.batch_sharding(2), tr.batch_sharding(1)),
                   out_shardings=(tr.state_shardings, sharding.replicated(tr.mesh)), donate_argnums=0)


def make_predict(tr: TaskTrainer):
    def predict(params, tokens, ends):
        out, _ = _outputs(tr, params, tokens, ends, None)
        return out

    return xla.jit(predict, mesh=tr.mesh,
                   in_shardings=(tr.state_shardings["params"], tr.batch_sharding(3), tr.batch_sharding(2)),
                   out_shardings=sharding.replicated(tr.mesh))


def predictions(tr: TaskTrainer, predict, params, task_data: TaskData) -> np.ndarray:
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
    """Fine-tune cfg.init_from on cfg.finetune's task (or resume), evaluate, write eval.json."""
    ft = cfg.finetune
    rd = RunDir(run_dir)
    changes = resume.check(rd, cfg)
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
    rd.check_tokenizer(tokenizer)
    mesh = sharding.make_mesh(cfg.mesh)
    tr = make_trainer(cfg, mesh, head)
    ckpts = rd.checkpoints(cfg)
    try:
        restored = ckpts.restore(tr.abstract_state)
        state, start = (restored[0], int(restored[1]["step"])) if restored is not None else (init_state(tr), 0)
        rd.record_start(cfg, tokenizer, start, changes)
        rd.truncate_metrics(start)
        state = _loop(tr, state, start, train_data, rd, ckpts, progress)
        ckpts.wait()
    finally:
        ckpts.close()
    result = {"task": ft.task, "init_from": cfg.init_from, "aux_lm_weight": ft.aux_lm_weight, "steps": cfg.steps,
              "train_examples": len(train_records)}
    if eval_data is not None:
        outputs = predictions(tr, make_predict(tr), state["params"], eval_data)
        result.update(scores(head, outputs, eval_data.labels), eval_examples=len(eval_records))
    rd.write_json("eval.json", result)
    return result


def _loop(tr: TaskTrainer, state, start, task_data: TaskData, rd, ckpts, progress):
    cfg = tr.cfg
    step_fn = make_train_step(tr)
    log = rd.metrics_log()
    n, b = len(task_data.labels), cfg.data.batch_size
    per_epoch = max(n // b, 1)
    bar = tqdm.tqdm(total=cfg.steps, initial=start, unit="step", disable=not progress or jax.process_index() != 0)
    try:
        for step in range(start, cfg.steps):
            # Batch `step` is a function of (seed, step): epoch e's rows come from its own permutation.
            epoch, i = divmod(step, per_epoch)
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            rows = perm[(i * b) % n:][:b] if n >= b else np.resize(perm, b)
            state, m = step_fn(state, task_data.tokens[rows], task_data.ends[rows], task_data.labels[rows])
            number = step + 1
            bar.update(1)
            if number % cfg.log_every == 0 or number == cfg.steps:
                row = {"step": number, **{k: float(v) for k, v in jax.device_get(m).items()}}
                if not math.isfinite(row["loss"]):
                    raise DataError(f"non-finite loss at step {number}: {row}; lower optim.lr")
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            if number % cfg.checkpoint_every == 0 or number == cfg.steps:
                ckpts.save(number, state, {"step": number, "config": cfg.to_dict()})
                log.flush()
    finally:
        bar.close()
        log.close()
    return state


def say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
