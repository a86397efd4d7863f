"""`gptjax eval`: one task on one model -> metrics, and the report written beside them.

The task families live in tasks.py (multiple choice and LAMBADA, scored as lm-eval does) and
code.py (HumanEval pass@k); scorer.py is the model side. This file reads the options, loads the
items, builds few-shot prompts, asks the scorer or the generator, and writes the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from gptjax.evals import code, scorer, tasks
from gptjax.store import paths

log = logging.getLogger(__name__)

# What each task name reads, and what users pass on the command line; "arc" and "lambada" are
# the short names of arc_easy and lambada_openai (ARC-Challenge has the same layout).
ALIASES = {"arc": "arc_easy", "lambada": "lambada_openai"}
TASK_NAMES = ("perplexity", *tasks.TASKS, *ALIASES, "humaneval")
TRAINING_TASKS = (*tasks.TASKS, *ALIASES)  # log-likelihood tasks, which eval.tasks runs during training


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    task: str
    data: str | None = None
    shots: int = 0
    fewshot_data: str | None = None  # demonstrations; MMLU and the rest draw from this train or dev file
    separator: str = tasks.FEWSHOT_DELIMITER
    seed: int = 1234  # lm-eval's default few-shot seed
    limit: int | None = None
    stride: int | None = None  # perplexity: default half the window, as the GPT-2 recipe in transformers' docs
    max_length: int | None = None  # default: the model's max_seq_len
    batch_size: int = 8
    # humaneval
    samples: int = 1
    ks: tuple[int, ...] = (1,)
    temperature: float | None = None  # default: 0 (greedy) for one sample, 0.8 (Chen et al.'s pass@100) for more
    top_p: float = 0.95
    max_new_tokens: int = 384
    allow_code_execution: bool = False
    timeout_s: float = 10.0

    def check(self) -> None:
        if self.task not in TASK_NAMES:
            raise tasks.TaskError(f"unknown task {self.task!r}; known tasks: {', '.join(TASK_NAMES)}")
        if self.data is None:
            raise tasks.TaskError(f"--data FILE is required for task {self.task!r}: "
                                  f"{'a text file' if self.task == 'perplexity' else _layout(self.task)}")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise tasks.TaskError(f"shots = {self.shots!r}; expected a number of demonstrations >= 0")
        if self.shots and self.task in ("perplexity", "humaneval"):
            raise tasks.TaskError(f"shots = {self.shots} does not apply to task {self.task!r}; leave it at 0")
        if self.shots and self.fewshot_data is None:
            raise tasks.TaskError(f"shots = {self.shots} needs --fewshot-data FILE (the train or dev split to draw "
                                  "demonstrations from, in the same layout as --data)")
        if self.limit is not None and self.limit < 1:
            raise tasks.TaskError(f"limit = {self.limit}; expected a positive number of items")


def _layout(task: str) -> str:
    name = ALIASES.get(task, task)
    if name == "humaneval":
        return 'JSONL {"task_id", "prompt", "test", "entry_point"} (HumanEval.jsonl or .jsonl.gz)'
    reader = tasks.task_spec(name).reader
    return f"a file read by tasks.{reader.__name__} ({(reader.__doc__ or '').strip().splitlines()[0]})"


def evaluate(model, opts: EvalOptions, *, progress: bool = True) -> dict[str, Any]:
    """Metrics of `model` (with its `tokenizer` attribute) on one task, plus counts and throughput."""
    opts.check()
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise tasks.TaskError("this model has no tokenizer to encode the benchmark's text; evaluate a run directory "
                              "or a Hugging Face directory with tokenizer.json")
    start = time.perf_counter()
    if opts.task == "perplexity":
        metrics = _perplexity(model, tokenizer, opts, progress)
        count = metrics["tokens"]
    elif opts.task == "humaneval":
        metrics, count = _humaneval(model, tokenizer, opts, progress)
    else:
        metrics, count = _loglikelihood_task(model, tokenizer, opts, progress)
    elapsed = time.perf_counter() - start
    return {**metrics, "examples": count, "seconds": elapsed, "examples_per_s": count / elapsed}


def _scorer(model, opts: EvalOptions, progress: bool) -> scorer.Scorer:
    return scorer.Scorer(model, batch_size=opts.batch_size, max_length=opts.max_length, progress=progress)


def _perplexity(model, tokenizer, opts: EvalOptions, progress: bool) -> dict[str, Any]:
    text = _read_text(opts.data)
    # With an end-of-text token in front every token of the text is predicted (lm-eval's rolling
    # log-likelihood does the same); without one the first token is context only.
    ids = ([tokenizer.eot_id] if tokenizer.eot_id is not None else []) + tokenizer.encode(text)
    s = _scorer(model, opts, progress)
    stride = opts.stride if opts.stride is not None else max(1, s.max_length // 2)
    return scorer.perplexity(s, ids, lambda run: len(tokenizer.decode(run).encode("utf-8")), stride)


def _read_text(path: str) -> str:
    p = pathlib.Path(path)
    if not p.is_file():
        raise tasks.TaskError(f"--data {path}: no such file; expected a UTF-8 text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise tasks.TaskError(f"--data {path}: not UTF-8 text ({e})") from None


def _loglikelihood_task(model, tokenizer, opts: EvalOptions, progress: bool) -> tuple[dict, int]:
    items = task_items(opts)
    return score_items(_scorer(model, opts, progress), tokenizer, opts.task, items), len(items)


def task_items(opts: EvalOptions) -> list:
    """The items of a log-likelihood task, with their few-shot demonstrations (read once: the
    trainer scores the same items at every evaluation)."""
    name = ALIASES.get(opts.task, opts.task)
    items = tasks.load_task(name, opts.data, limit=opts.limit)
    if opts.shots:
        pool = tasks.load_task(name, opts.fewshot_data)
        items = tasks.build_fewshot(items, pool, opts.shots, seed=opts.seed, separator=opts.separator,
                                    sampler=tasks.task_spec(name).sampler)
    return items


def score_items(s: scorer.Scorer, tokenizer, task: str, items: list) -> dict[str, Any]:
    """Metrics of a log-likelihood task's items, scored as lm-eval scores them."""
    name = ALIASES.get(task, task)
    requests = [(r.context, r.continuation) for item in items for r in tasks.requests_for(item)]
    flat = scorer.loglikelihood(s, tokenizer, requests)
    metrics = tasks.score_task(name, items, tasks.results_per_item(items, flat))
    return {**metrics, "items": len(items), "requests": len(requests)}


def _humaneval(model, tokenizer, opts: EvalOptions, progress: bool) -> tuple[dict, int]:
    from gptjax import generation

    problems = code.read_problems(opts.data)[:opts.limit]
    temperature = opts.temperature if opts.temperature is not None else (0.0 if opts.samples == 1 else 0.8)
    calls = iter(range(len(problems)))

    def generate(prompts: list[str], n: int) -> list[list[str]]:
        ids = tokenizer.encode(prompts[0])
        out = generation.generate(model, [ids], opts.max_new_tokens, temperature=temperature,
                                  top_p=opts.top_p if temperature > 0 else None, num_return_sequences=n,
                                  stop=code.STOP_SEQUENCES, seed=opts.seed + next(calls), tokenizer=tokenizer)
        new = [[t for t in seq[len(ids):] if t != tokenizer.eot_id] for seq in out]
        return [[code.truncate_completion(tokenizer.decode(x)) for x in new]]

    result = code.evaluate_code(problems, generate, n_samples=opts.samples, ks=opts.ks,
                                allow_code_execution=opts.allow_code_execution, timeout_s=opts.timeout_s,
                                progress=progress)
    result["temperature"] = temperature
    return result, len(problems)


def params_sha256(model) -> str:
    """A hash of the parameter values (names, shapes, dtypes and bytes), whatever the file format."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)),
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def report(model_path: str, model, opts: EvalOptions, metrics: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: results by task, the options, the model and the versions used."""
    versions = {pkg: _version(pkg) for pkg in ("gptjax", "jax", "flax", "tiktoken", "tokenizers")}
    return {"results": {opts.task: metrics}, "task": opts.task, "shots": opts.shots,
            "model": {"path": str(model_path), "params_sha256": params_sha256(model),
                      "config": dataclasses.asdict(model.cfg)},
            "options": dataclasses.asdict(opts), "scoring": "lm-evaluation-harness 0.4.13 conventions",
            "versions": versions, "devices": [str(d) for d in jax.devices()[:1]]}


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_report(path: str, data: dict[str, Any]) -> None:
    paths.write_text(paths.as_path(path), json.dumps(data, indent=2, default=str) + "\n")


def table(data: dict[str, Any]) -> str:
    """The printed summary: one line per metric."""
    lines = [f"{'task':<16} {'metric':<16} {'value':>12}  stderr"]
    for task, metrics in data["results"].items():
        for key, value in metrics.items():
            if key.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            err = metrics.get(f"{key}_stderr")
            lines.append(f"{task:<16} {key:<16} {value:>12.6g}  {'' if err is None else f'± {err:.4g}'}")
    return "\n".join(lines)
