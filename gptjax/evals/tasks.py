"""Benchmark files -> log-likelihood requests -> metrics, scored exactly as lm-evaluation-harness 0.4.x.

lm-eval is the reference users compare against, so each task reproduces its YAML's doc_to_text,
doc_to_choice and doc_to_target, its few-shot layout (description + demonstrations, each
`context + " " + answer + "\\n\\n"`, then the query) and its metric code (lm_eval/api/task.py,
`ConfigurableTask.process_results`; lm_eval/api/metrics.py for means and standard errors).
Nothing here runs a model: the model side answers each `Request` with lm-eval's `loglikelihood`
contract, (sum of log-probabilities of the continuation's tokens given the context, whether
greedy decoding would have produced the continuation).

Every reader takes one local file in the layout its dataset is published in (see each reader).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import difflib
import itertools
import math
import pathlib
import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from gptjax.data import jsonl
from gptjax.evals import EvalError

# lm-eval's TaskConfig defaults; none of the tasks below overrides them.
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


class TaskError(EvalError):
    """A benchmark file, task name or result table that cannot be used; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question.

    `labels` are the indices of the correct choices, ascending: one index for single-answer tasks,
    every true answer for TruthfulQA MC2. `description` is the task's preamble, written once before
    any demonstrations (MMLU's per-subject sentence); `group` names the pool that few-shot
    demonstrations must come from (the MMLU subject), "" for tasks without one.
    """

    context: str
    choices: tuple[str, ...]
    labels: tuple[int, ...]
    description: str = ""
    group: str = ""

    def __post_init__(self):
        _check_choices(self.choices)
        _check_labels(self.labels, len(self.choices))


@dataclasses.dataclass(frozen=True)
class LastWordItem:
    """One LAMBADA passage: the context, and the target word with its leading space."""

    context: str
    target: str
    description: str = ""
    group: str = ""

    def __post_init__(self):
        if not self.target.strip():
            raise TaskError(f"target {self.target!r} is blank; expected a word such as ' dog'")


Item = ChoiceItem | LastWordItem


@dataclasses.dataclass(frozen=True)
class Request:
    """One log-likelihood request: score `continuation` given `context`."""

    context: str
    continuation: str


# One answer per request: (summed log-probability of the continuation, is_greedy).
Result = tuple[float, bool]
Metrics = dict[str, float | None]


def _check_choices(choices: tuple[str, ...]) -> None:
    if not isinstance(choices, tuple) or not choices:
        raise TaskError(f"choices {choices!r} are empty; expected a non-empty tuple of strings")
    for j, choice in enumerate(choices):
        # An empty choice would divide acc_norm's log-likelihood by a length of zero.
        if not isinstance(choice, str) or not choice:
            raise TaskError(f"choice {j} is {choice!r}; expected a non-empty string")


def _check_labels(labels: tuple[int, ...], n_choices: int) -> None:
    if not isinstance(labels, tuple) or not labels:
        raise TaskError(f"labels {labels!r} are empty; expected a tuple of correct choice indices")
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_choices:
            raise TaskError(f"label {label!r} is out of range for {n_choices} choices; expected 0..{n_choices - 1}")
    if list(labels) != sorted(set(labels)):
        raise TaskError(f"labels {labels!r} must be ascending without repeats")


# ---------------------------------------------------------------------------------------------
# Reading files. Row parsers raise TaskError without a location; _rows adds file and line.


def _json_rows(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
    if not path.is_file():
        raise TaskError(f"{path}: no such file; expected a benchmark file exported as docs/evaluation.md describes")
    return jsonl.records(path, TaskError, "one JSON object per line (JSONL)")


def _parse_all(path: pathlib.Path, rows: Iterator[tuple[int, Any]], parse: Callable[[Any], Item],
               layout: str) -> list[Item]:
    items = []
    for lineno, row in rows:
        try:
            items.append(parse(row))
        except TaskError as e:
            raise TaskError(f"{path}:{lineno}: {e}; a row looks like {layout}") from None
    if not items:
        raise TaskError(f"{path}: holds no rows; expected at least one row like {layout}")
    return items


def _read_jsonl(path: str | pathlib.Path, parse: Callable[[dict], Item], layout: str) -> list[Item]:
    path = pathlib.Path(path)
    return _parse_all(path, _json_rows(path), parse, layout)


def _field(row: Any, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
    if not isinstance(row, dict):
        raise TaskError(f"the line holds a {type(row).__name__}, not a JSON object")
    if key not in row:
        raise TaskError(f"missing field {key!r} (fields seen: {sorted(row)})")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TaskError(f"field {key!r} is {_show(value)}; expected {expected}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _text(row: Any, key: str) -> str:
    return _field(row, key, str, "a string")


def _texts(row: Any, key: str) -> tuple[str, ...]:
    values = _field(row, key, list, "a list of strings")
    if not all(isinstance(v, str) for v in values):
        raise TaskError(f"field {key!r} is {_show(values)}; expected a list of strings")
    return tuple(values)


def _index(row: Any, key: str) -> int:
    # Hugging Face exports HellaSwag's label as a string ("0".."3"), most others as an int.
    value = _field(row, key, (int, str), 'an integer or a string of digits such as "2"')
    if isinstance(value, str):
        if not value.isdigit():
            raise TaskError(f"field {key!r} is {_show(value)}; expected an integer or a string of digits "
                            "(an empty label means an unlabelled test split: use the validation split)")
        return int(value)
    return value


def _flags(row: Any, key: str) -> tuple[str, ...]:
    """A TruthfulQA target set {"choices": [...], "labels": [0/1, ...]} -> the choices, checked."""
    targets = _field(row, key, dict, '{"choices": [str, ...], "labels": [0 or 1, ...]}')
    choices, flags = _texts(targets, "choices"), _field(targets, "labels", list, "a list of 0/1")
    if len(flags) != len(choices) or any(f not in (0, 1) or isinstance(f, bool) for f in flags):
        raise TaskError(f"{key}.labels is {_show(flags)}; expected one 0 or 1 per choice ({len(choices)})")
    return choices


def _true_indices(row: Any, key: str) -> tuple[int, ...]:
    return tuple(j for j, flag in enumerate(row[key]["labels"]) if flag == 1)


# --- generic ---------------------------------------------------------------------------------

MC_LAYOUT = '{"context": str, "choices": [str, ...], "label": int or [int, ...]}'


def _mc_row(row: Any) -> ChoiceItem:
    label = _field(row, "label", (int, list), "an integer or a list of integers")
    if isinstance(label, list) and not all(isinstance(x, int) and not isinstance(x, bool) for x in label):
        raise TaskError(f"field 'label' is {_show(label)}; expected an integer or a list of integers")
    labels = tuple(sorted(set(label))) if isinstance(label, list) else (label,)
    return ChoiceItem(_text(row, "context"), _texts(row, "choices"), labels)


def read_mc(path: str | pathlib.Path) -> list[ChoiceItem]:
    """Generic multiple choice, JSONL: context, choices, label (an index, or a list of correct indices)."""
    return _read_jsonl(path, _mc_row, MC_LAYOUT)


# --- HellaSwag -------------------------------------------------------------------------------

HELLASWAG_LAYOUT = ('{"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": [str, ...], '
                    '"label": int or "0".."3"}')


def _hellaswag_clean(text: str) -> str:
    # lm-eval hellaswag/utils.py `preprocess`, step for step: the brackets are WikiHow artefacts.
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_row(row: Any) -> ChoiceItem:
    # str.capitalize also lower-cases the rest of ctx_b; lm-eval does the same.
    ctx = _text(row, "ctx_a") + " " + _text(row, "ctx_b").capitalize()
    query = _hellaswag_clean(_text(row, "activity_label") + ": " + ctx)
    endings = tuple(_hellaswag_clean(e) for e in _texts(row, "endings"))
    return ChoiceItem(query, endings, (_index(row, "label"),))


def read_hellaswag(path: str | pathlib.Path) -> list[ChoiceItem]:
    """HellaSwag, JSONL: rowanz/hellaswag's files or Hugging Face Rowan/hellaswag exported with to_json."""
    return _read_jsonl(path, _hellaswag_row, HELLASWAG_LAYOUT)


# --- MMLU ------------------------------------------------------------------------------------

MMLU_LAYOUT = '{"question": str, "subject": str, "choices": [4 strings], "answer": 0..3}'
MMLU_CSV_LAYOUT = "question,A,B,C,D,answer-letter in a file named {subject}_{test|dev|val}.csv"
MMLU_LETTERS = ("A", "B", "C", "D")


def _mmlu_item(question: str, subject: str, choices: tuple[str, ...], answer: int) -> ChoiceItem:
    # lm-eval mmlu/default/_default_template_yaml and the description from _generate_configs.py.
    if len(choices) != 4:
        raise TaskError(f"{len(choices)} choices {_show(list(choices))}; MMLU's prompt needs exactly 4")
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, choices))
    description = ("The following are multiple choice questions (with answers) about "
                   f"{' '.join(subject.split('_'))}.\n\n")
    return ChoiceItem(f"{question.strip()}{options}\nAnswer:", MMLU_LETTERS, (answer,), description, subject)


def _mmlu_row(row: Any) -> ChoiceItem:
    return _mmlu_item(_text(row, "question"), _text(row, "subject"), _texts(row, "choices"), _index(row, "answer"))


def _mmlu_subject(path: pathlib.Path) -> str:
    match = re.fullmatch(r"(.+)_(test|dev|val)", path.stem)
    if match is None:
        raise TaskError(f"{path}: an MMLU CSV's name gives its subject; expected {{subject}}_test.csv, "
                        f"{{subject}}_dev.csv or {{subject}}_val.csv, got {path.name!r}")
    return match.group(1)


def _mmlu_csv_rows(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
    subject = _mmlu_subject(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        # Questions may hold newlines, so a row's location is the line where it ends.
        for row in reader:
            yield reader.line_num, (subject, row)


def _mmlu_csv_row(subject_row: tuple[str, list[str]]) -> ChoiceItem:
    subject, row = subject_row
    if len(row) != 6:
        raise TaskError(f"{len(row)} columns {_show(row)}; expected 6")
    if row[5] not in MMLU_LETTERS:
        raise TaskError(f"answer {row[5]!r} is not one of {MMLU_LETTERS}")
    return _mmlu_item(row[0], subject, tuple(row[1:5]), MMLU_LETTERS.index(row[5]))


def read_mmlu(path: str | pathlib.Path) -> list[ChoiceItem]:
    """MMLU: cais/mmlu exported to JSONL, or the original CSVs (one file, or a folder of them, read in name order)."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise TaskError(f"{path}: a folder without *.csv files; expected MMLU's {MMLU_CSV_LAYOUT}")
        return [item for file in files for item in read_mmlu(file)]
    if path.suffix == ".csv":
        if not path.is_file():
            raise TaskError(f"{path}: no such file; expected MMLU's {MMLU_CSV_LAYOUT}")
        return _parse_all(path, _mmlu_csv_rows(path), _mmlu_csv_row, MMLU_CSV_LAYOUT)
    return _read_jsonl(path, _mmlu_row, MMLU_LAYOUT)


# --- ARC -------------------------------------------------------------------------------------

ARC_LAYOUT = '{"question": str, "choices": {"text": [str, ...], "label": [str, ...]}, "answerKey": str}'


def _arc_row(row: Any) -> ChoiceItem:
    choices = _field(row, "choices", dict, '{"text": [str, ...], "label": [str, ...]}')
    texts, keys, answer = _texts(choices, "text"), _texts(choices, "label"), _text(row, "answerKey")
    if len(texts) != len(keys):
        raise TaskError(f"{len(texts)} choice texts but {len(keys)} choice labels; expected one label per text")
    # lm-eval: choices.label.index(answerKey); the keys are letters or, in some questions, digits.
    if answer not in keys:
        raise TaskError(f"answerKey {answer!r} is not one of the choice labels {list(keys)}")
    return ChoiceItem(f"Question: {_text(row, 'question')}\nAnswer:", texts, (keys.index(answer),))


def read_arc(path: str | pathlib.Path) -> list[ChoiceItem]:
    """ARC Easy or Challenge, JSONL: Hugging Face allenai/ai2_arc exported with to_json."""
    return _read_jsonl(path, _arc_row, ARC_LAYOUT)


# --- PIQA ------------------------------------------------------------------------------------

PIQA_LAYOUT = '{"goal": str, "sol1": str, "sol2": str, "label": 0 or 1}'


def _piqa_row(row: Any) -> ChoiceItem:
    choices = (_text(row, "sol1"), _text(row, "sol2"))
    return ChoiceItem(f"Question: {_text(row, 'goal')}\nAnswer:", choices, (_index(row, "label"),))


def read_piqa(path: str | pathlib.Path) -> list[ChoiceItem]:
    """PIQA, JSONL: Hugging Face piqa / baber/piqa exported with to_json (labels inline)."""
    return _read_jsonl(path, _piqa_row, PIQA_LAYOUT)


# --- TruthfulQA ------------------------------------------------------------------------------

# The six QA pairs from the TruthfulQA paper, exactly as lm-eval's truthfulqa_mc1.yaml renders them.
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
TRUTHFULQA_LAYOUT = ('{"question": str, "mc1_targets": {"choices": [str, ...], "labels": [0/1, ...]}, '
                     '"mc2_targets": {...}}')


def _truthfulqa_query(row: Any) -> str:
    return TRUTHFULQA_PRIMER + "\n\nQ: " + _text(row, "question") + "\nA:"


def _truthfulqa_mc1_row(row: Any) -> ChoiceItem:
    choices = _flags(row, "mc1_targets")
    labels = _true_indices(row, "mc1_targets")
    # lm-eval hard-codes the target as index 0, where the published data puts MC1's single truth.
    if len(labels) != 1:
        raise TaskError(f"mc1_targets marks {len(labels)} choices true; expected exactly one")
    return ChoiceItem(_truthfulqa_query(row), choices, labels)


def _truthfulqa_mc2_row(row: Any) -> ChoiceItem:
    choices = _flags(row, "mc2_targets")
    labels = _true_indices(row, "mc2_targets")
    if not labels:
        raise TaskError("mc2_targets marks no choice true; expected at least one")
    return ChoiceItem(_truthfulqa_query(row), choices, labels)


def read_truthfulqa_mc1(path: str | pathlib.Path) -> list[ChoiceItem]:
    """TruthfulQA MC1, JSONL: truthfulqa/truthful_qa config "multiple_choice" exported with to_json."""
    return _read_jsonl(path, _truthfulqa_mc1_row, TRUTHFULQA_LAYOUT)


def read_truthfulqa_mc2(path: str | pathlib.Path) -> list[ChoiceItem]:
    """TruthfulQA MC2 (labels = every true answer), same file as MC1."""
    return _read_jsonl(path, _truthfulqa_mc2_row, TRUTHFULQA_LAYOUT)


# --- LAMBADA ---------------------------------------------------------------------------------

LAMBADA_LAYOUT = '{"text": str}'


def _lambada_row(row: Any) -> LastWordItem:
    # lm-eval lambada_openai.yaml splits on single spaces, not on any whitespace.
    words = _text(row, "text").split(" ")
    if len(words) < 2 or not words[-1]:
        raise TaskError(f"text ends {_show(row['text'][-40:])}; expected a passage ending in a space and its last word")
    return LastWordItem(" ".join(words[:-1]), " " + words[-1])


def read_lambada(path: str | pathlib.Path) -> list[LastWordItem]:
    """LAMBADA (OpenAI's version), JSONL: EleutherAI/lambada_openai or OpenAI's lambada_test.jsonl."""
    return _read_jsonl(path, _lambada_row, LAMBADA_LAYOUT)


# ---------------------------------------------------------------------------------------------
# The registry: plain data, built once here.


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How to read and score one benchmark, and what lm-eval reports for it.

    `metrics` are the metrics lm-eval's YAML lists (score_task returns them and their stderrs);
    `sampler` is its few-shot sampler: "first_n" takes the pool in order (MMLU's dev split),
    "random" draws seeded demonstrations.
    """

    reader: Callable[[pathlib.Path], list[Item]]
    scoring: Literal["choice", "mc2", "last_word"]
    metrics: tuple[str, ...]
    sampler: Literal["random", "first_n"] = "random"


TASKS: dict[str, TaskSpec] = {
    "mc": TaskSpec(read_mc, "choice", ("acc", "acc_norm")),
    "hellaswag": TaskSpec(read_hellaswag, "choice", ("acc", "acc_norm")),
    "mmlu": TaskSpec(read_mmlu, "choice", ("acc",), sampler="first_n"),
    "arc_easy": TaskSpec(read_arc, "choice", ("acc", "acc_norm")),
    "arc_challenge": TaskSpec(read_arc, "choice", ("acc", "acc_norm")),
    "piqa": TaskSpec(read_piqa, "choice", ("acc", "acc_norm")),
    "truthfulqa_mc1": TaskSpec(read_truthfulqa_mc1, "choice", ("acc",)),
    "truthfulqa_mc2": TaskSpec(read_truthfulqa_mc2, "mc2", ("acc",)),
    "lambada_openai": TaskSpec(read_lambada, "last_word", ("perplexity", "acc")),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        near = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise TaskError(f"unknown task {name!r}{hint}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def load_task(name: str, path: str | pathlib.Path, *, limit: int | None = None) -> list[Item]:
    """The items of task `name` read from `path`; `limit` keeps the first N, as lm-eval's --limit."""
    spec = task_spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit = {limit!r}; expected a positive integer or None for every item")
    return spec.reader(pathlib.Path(path))[:limit]


# ---------------------------------------------------------------------------------------------
# Prompts.


def _answer(item: Item) -> str:
    # lm-eval writes a demonstration as context + target delimiter + answer. LAMBADA's answer
    # already starts with a space, so its demonstrations carry two: lm-eval does the same.
    return item.target if isinstance(item, LastWordItem) else item.choices[item.labels[0]]


def _demonstration(item: Item, separator: str) -> str:
    return item.context + TARGET_DELIMITER + _answer(item) + separator


@dataclasses.dataclass(frozen=True)
class _Pool:
    """Few-shot candidates by group, with how often each item occurs (so it can be left out of its own prompt)."""

    groups: dict[str, list[Item]]
    copies: collections.Counter

    @classmethod
    def of(cls, pool: Sequence[Item]) -> _Pool:
        groups: dict[str, list[Item]] = {}
        for p in pool:
            groups.setdefault(p.group, []).append(p)
        return cls(groups, collections.Counter(pool))

    def draw(self, item: Item, index: int, k: int, rng: random.Random | None) -> list[Item]:
        """k demonstrations for `item`: the group's first k (rng None) or a seeded sample, never `item`."""
        group, copies = self.groups.get(item.group, []), self.copies[item]
        if len(group) - copies < k:
            where = f" of group {item.group!r}" if item.group else ""
            raise TaskError(f"item {index} needs {k} demonstrations but the pool has {len(group) - copies} "
                            f"other items{where}; lower k or give a larger pool")
        # Equal items are the same row. Drawing k + copies and dropping them is lm-eval's way
        # (samplers.py rm_eval_doc) and keeps a draw O(k) for pools of tens of thousands.
        picks = group if rng is None else rng.sample(group, k + copies)
        return list(itertools.islice((p for p in picks if p != item), k))


def build_fewshot(items: Sequence[Item], pool: Sequence[Item], k: int, *, seed: int,
                  separator: str = FEWSHOT_DELIMITER,
                  sampler: Literal["random", "first_n"] = "random") -> list[Item]:
    """Each item with its prompt: description + k demonstrations, each ended by `separator`, + its context.

    The returned items hold the whole prompt in `context` and an empty `description`; k = 0
    only folds in the description. Demonstrations come from pool items of the item's group.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise TaskError(f"k = {k!r}; expected a number of demonstrations >= 0")
    if sampler not in ("random", "first_n"):
        raise TaskError(f"sampler = {sampler!r}; expected 'random' or 'first_n'")
    candidates, prompts = _Pool.of(pool), []
    for index, item in enumerate(items):
        # A per-item generator makes each prompt independent of which other items are evaluated.
        rng = random.Random(f"{seed}:{index}") if sampler == "random" else None
        demos = candidates.draw(item, index, k, rng) if k else []
        shots = "".join(_demonstration(d, separator) for d in demos)
        prompts.append(dataclasses.replace(item, context=item.description + shots + item.context, description=""))
    return prompts


def requests_for(item: Item) -> list[Request]:
    """The log-likelihood requests for one item: one per choice, or LAMBADA's single target."""
    context = item.description + item.context
    if isinstance(item, LastWordItem):
        return [Request(context, item.target)]  # lm-eval: (ctx, doc_to_target), no delimiter added
    return [Request(context, TARGET_DELIMITER + choice) for choice in item.choices]


def results_per_item(items: Sequence[Item], flat: Sequence[Result]) -> list[list[Result]]:
    """Split results for the concatenated requests_for(item) of every item back into one list per item."""
    sizes = [len(requests_for(item)) for item in items]
    if len(flat) != sum(sizes):
        raise TaskError(f"{len(flat)} results for {sum(sizes)} requests; expected one result per request")
    ends = list(itertools.accumulate(sizes))
    return [list(flat[end - size:end]) for size, end in zip(sizes, ends)]


# ---------------------------------------------------------------------------------------------
# Metrics. Means and standard errors use lm-eval's own arithmetic (api/metrics.py `mean`,
# `sample_stddev`, `mean_stderr`) so that the numbers agree to the last bit.


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _mean_stderr(values: Sequence[float]) -> float | None:
    if len(values) < 2:  # lm-eval reports "N/A" for a single document
        return None
    mu = _mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1)) / math.sqrt(len(values))


def _with_stderr(name: str, values: Sequence[float]) -> Metrics:
    return {name: _mean(values), f"{name}_stderr": _mean_stderr(values)}


def _logprobs(items: Sequence[Item], results: Sequence[Sequence[Result]]) -> list[list[float]]:
    if not items or len(results) != len(items):
        raise TaskError(f"{len(results)} result lists for {len(items)} items; expected one list per item (and items)")
    table = []
    for index, (item, row) in enumerate(zip(items, results)):
        n = len(requests_for(item))
        if len(row) != n:
            raise TaskError(f"item {index} has {len(row)} results for {n} requests; expected one per request")
        lls = [float(ll) for ll, _ in row]
        if any(math.isnan(ll) for ll in lls):
            raise TaskError(f"item {index} has log-likelihoods {lls}; NaN means the model side failed")
        table.append(lls)
    return table


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first of ties, as np.argmax


def _hit(scores: Sequence[float], item: ChoiceItem) -> float:
    return 1.0 if _argmax(scores) in item.labels else 0.0


def score_choice(items: Sequence[ChoiceItem], results: Sequence[Sequence[Result]]) -> Metrics:
    """acc, acc_norm and acc_bytes with standard errors; results[i][j] answers choice j of item i.

    As lm-eval 0.4.13: acc_norm divides by the choice's length in characters and acc_bytes by its
    UTF-8 length, neither counting the target delimiter; an item counts as right when the argmax
    is any of its labels.
    """
    table = _logprobs(items, results)
    per_item: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for item, lls in zip(items, table):
        per_item["acc"].append(_hit(lls, item))
        per_item["acc_norm"].append(_hit([ll / len(c) for ll, c in zip(lls, item.choices)], item))
        per_item["acc_bytes"].append(_hit([ll / len(c.encode("utf-8")) for ll, c in zip(lls, item.choices)], item))
    return {k: v for name, values in per_item.items() for k, v in _with_stderr(name, values).items()}


def _true_mass(lls: Sequence[float], labels: tuple[int, ...]) -> float:
    # lm-eval truthfulqa/utils.py process_results_mc2, in numpy as there.
    probs = np.exp(np.array(lls))
    if np.sum(probs) == 0.0:
        # Every exp underflowed (lm-eval returns NaN here); the shifted form is the same quantity.
        probs = np.exp(np.array(lls) - max(lls))
    probs_norm = probs / np.sum(probs)
    return float(np.sum(probs_norm[list(labels)]))


def score_mc2(items: Sequence[ChoiceItem], results: Sequence[Sequence[Result]]) -> Metrics:
    """TruthfulQA MC2: mean over items of the normalised probability on the true answers, as "acc"."""
    table = _logprobs(items, results)
    return _with_stderr("acc", [_true_mass(lls, item.labels) for item, lls in zip(items, table)])


def score_lambada(items: Sequence[LastWordItem], results: Sequence[Sequence[Result]]) -> Metrics:
    """acc (fraction greedy) with stderr, and perplexity = exp(-mean over items of the target's summed log-prob).

    lm-eval's perplexity stderr is a bootstrap, left out here.
    """
    lls = [row[0] for row in _logprobs(items, results)]
    greedy = [1.0 if bool(row[0][1]) else 0.0 for row in results]
    return {"perplexity": math.exp(-_mean(lls)), **_with_stderr("acc", greedy)}


SCORERS: dict[str, Callable[[Sequence[Any], Sequence[Sequence[Result]]], Metrics]] = {
    "choice": score_choice,
    "mc2": score_mc2,
    "last_word": score_lambada,
}


def score_task(name: str, items: Sequence[Item], results: Sequence[Sequence[Result]]) -> Metrics:
    """The metrics lm-eval reports for task `name` (and their stderrs), from one result list per item."""
    spec = task_spec(name)
    metrics = SCORERS[spec.scoring](items, results)
    return {k: v for k, v in metrics.items() if k.removesuffix("_stderr") in spec.metrics}
