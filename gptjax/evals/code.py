"""HumanEval-style functional correctness: read problems, run completions in a fresh process, pass@k.

Chen et al. (2021), "Evaluating Large Language Models Trained on Code". A completion passes when
`prompt + completion + test + check(entry_point)` runs to its end in a new Python process.

The sandbox that runs them (evals/sandbox.py) is NOT a security boundary; read its docstring.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

from gptjax.evals.sandbox import CheckResult, CodeEvalError, Sandbox, require_arg, run_program

# Where a completion of a function body ends: the next top-level statement (human-eval, Chen et
# al. 2021 section 2.3, and lm-evaluation-harness's humaneval task use these five).
STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

_REQUIRED_FIELDS = ("task_id", "prompt", "test", "entry_point")


@dataclasses.dataclass(frozen=True)
class CodeProblem:
    """One HumanEval-style task: a prompt to complete and a test defining `check(candidate)`."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str | None = None  # reference completion, when the file has one

    def program(self, completion: str) -> str:
        """The source that is run: human-eval's check_correctness joins exactly these parts."""
        return f"{self.prompt}{completion}\n{self.test}\ncheck({self.entry_point})\n"


# ----------------------------------------------------------------------------- problems


def read_problems(path: str | os.PathLike) -> list[CodeProblem]:
    """Problems from a JSON-lines file (gzip when the name ends in .gz), in file order."""
    path = Path(path)
    problems: list[CodeProblem] = []
    seen: dict[str, int] = {}
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():  # human-eval's reader skips blank lines too
                continue
            problem = _parse_problem(line, f"{path}:{lineno}")
            if problem.task_id in seen:
                raise CodeEvalError(f"{path}:{lineno}: task_id {problem.task_id!r} already appeared on line "
                                    f"{seen[problem.task_id]}; each task_id must be unique")
            seen[problem.task_id] = lineno
            problems.append(problem)
    if not problems:
        raise CodeEvalError(f"{path}: no problems; expected one JSON object per line with "
                            f"{', '.join(_REQUIRED_FIELDS)}")
    return problems


def _parse_problem(line: str, where: str) -> CodeProblem:
    expected = f"a JSON object with string fields {', '.join(_REQUIRED_FIELDS)} (canonical_solution optional)"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CodeEvalError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); expected {expected}") from None
    if not isinstance(record, dict):
        raise CodeEvalError(f"{where}: got a JSON {type(record).__name__}; expected {expected}")
    missing = [name for name in _REQUIRED_FIELDS if name not in record]
    if missing:
        raise CodeEvalError(f"{where}: missing field(s) {', '.join(missing)}; expected {expected}")
    for name in (*_REQUIRED_FIELDS, "canonical_solution"):
        value = record.get(name, "")
        if not isinstance(value, str) and not (name == "canonical_solution" and value is None):
            raise CodeEvalError(f"{where}: field {name} is a {type(value).__name__}; expected {expected}")
    if not record["entry_point"].isidentifier():  # it is spliced into `check(...)`
        raise CodeEvalError(f"{where}: entry_point {record['entry_point']!r} is not a Python identifier")
    return CodeProblem(record["task_id"], record["prompt"], record["test"], record["entry_point"],
                       record.get("canonical_solution"))


def truncate_completion(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """`text` cut at the earliest stop sequence (the stop itself removed); unchanged when none occurs."""
    if any(not stop for stop in stops):
        raise CodeEvalError(f"truncate_completion: stops={tuple(stops)!r} holds an empty string, "
                            "which would cut everything")
    cuts = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


# ----------------------------------------------------------------------------- running, parent side


def check_program(problem: CodeProblem, completion: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
                  cpu_s: float | None = None) -> CheckResult:
    """Run `completion` against `problem`'s test in the sandbox."""
    sandbox = Sandbox(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s)
    return run_program(problem.program(completion), sandbox)


def check_many(problems_and_completions: Iterable[tuple[CodeProblem, str]], *, workers: int = 2,
               timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: float | None = None,
               progress: bool = False) -> list[CheckResult]:
    """check_program over many pairs, `workers` at a time (threads, each waiting on its own process), in input order."""
    require_arg(isinstance(workers, int) and workers >= 1, "workers", workers, "a positive integer")
    pairs = list(problems_and_completions)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-check")
    try:
        futures = [pool.submit(check_program, problem, completion, timeout_s=timeout_s, memory_mb=memory_mb,
                               cpu_s=cpu_s) for problem, completion in pairs]
        for _ in _progress(concurrent.futures.as_completed(futures), len(futures), "checking", progress):
            pass
        return [future.result() for future in futures]
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, do not run the checks still queued


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import (
        tqdm,  # here, not at the top: the sandbox child runs this file with the standard library only
    )

    return tqdm(iterable, total=total, desc=desc)


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021), eq. 1: 1 - C(n-c, k) / C(n, k) for c correct of n samples."""
    return float(_pass_at_k_exact(n, c, k))


def _pass_at_k_exact(n: int, c: int, k: int) -> Fraction:
    for name, value in (("n", n), ("c", c), ("k", k)):
        require_arg(isinstance(value, int) and not isinstance(value, bool), f"pass_at_k: {name}", value, "an integer")
    require_arg(n >= 1, "pass_at_k: n", n, "at least one sample")
    require_arg(0 <= c <= n, "pass_at_k: c", c, f"between 0 and n={n}")
    require_arg(1 <= k <= n, "pass_at_k: k", k, f"between 1 and n={n}: pass@k needs at least k samples")
    if n - c < k:  # every k-subset holds a correct sample
        return Fraction(1)
    # The paper's product form, 1 - prod_{i=n-c+1}^{n} (1 - k/i), never builds the huge binomials;
    # taken in exact rationals, pass@1 is exactly c/n and the float is rounded once.
    return 1 - math.prod(Fraction(i - k, i) for i in range(n - c + 1, n + 1))


def pass_at_k_table(results_by_task: dict[str, list[bool]], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """{"pass@k": mean over tasks} for each k that no task has fewer samples than; the other ks are omitted."""
    require_arg(bool(results_by_task), "pass_at_k_table: results_by_task", results_by_task, "at least one task")
    counts = {task: (len(results), sum(map(bool, results))) for task, results in results_by_task.items()}
    empty = [task for task, (n, _) in counts.items() if n == 0]
    require_arg(not empty, "pass_at_k_table: tasks without samples", empty, "at least one sample per task")
    table = {}
    for k in ks:
        require_arg(isinstance(k, int) and k >= 1, "pass_at_k_table: k", k, "a positive integer")
        if all(n >= k for n, _ in counts.values()):
            total = sum(_pass_at_k_exact(n, c, k) for n, c in counts.values())
            table[f"pass@{k}"] = float(total / len(counts))
    return table


# ----------------------------------------------------------------------------- evaluation

_EXECUTION_OFF = (
    "evaluate_code runs model-generated programs on this machine. They may delete files, reach the network or "
    "exhaust memory, and the sandbox in gptjax/evals/sandbox.py reduces such accidents but is not a security "
    "boundary. Running them is therefore off unless you pass --allow-code-execution (allow_code_execution=True), "
    "as human-eval and lm-evaluation-harness also require; better still, run inside a container or VM."
)


def evaluate_code(problems: Sequence[CodeProblem], generate: Callable[[list[str], int], list[list[str]]], *,
                  n_samples: int, ks: Sequence[int] = (1,), allow_code_execution: bool, timeout_s: float = 10.0,
                  workers: int = 2, progress: bool = True) -> dict:
    """pass@k of `generate` on `problems`.

    generate(prompts, n) returns n completions per prompt, already cut at STOP_SEQUENCES (see
    truncate_completion); it is called once per problem so that the progress bar moves.
    """
    if not allow_code_execution:
        raise CodeEvalError(_EXECUTION_OFF)
    problems = list(problems)
    _check_evaluation_args(problems, n_samples, ks)
    completions = [_generate_one(problem, generate, n_samples)
                   for problem in _progress(problems, len(problems), "generating", progress)]
    pairs = [(problem, completion) for problem, samples in zip(problems, completions) for completion in samples]
    results = check_many(pairs, workers=workers, timeout_s=timeout_s, progress=progress)
    per_task = {problem.task_id: [r.status for r in results[i * n_samples:(i + 1) * n_samples]]
                for i, problem in enumerate(problems)}
    table = pass_at_k_table({task: [s == "passed" for s in statuses] for task, statuses in per_task.items()}, ks)
    return {**table, "n_samples": n_samples, "problems": len(problems), "per_task": per_task,
            "isolation": "+".join(results[0].layers),
            "reads": ("confined to the program's directory and the interpreter's files (Landlock)"
                      if "landlock-read" in results[0].layers else
                      "not confined: a program could read any file this user can (no Landlock here)")}


def _check_evaluation_args(problems: list[CodeProblem], n_samples: int, ks: Sequence[int]) -> None:
    require_arg(bool(problems), "evaluate_code: problems", problems, "at least one CodeProblem")
    ids = [problem.task_id for problem in problems]
    require_arg(len(set(ids)) == len(ids), "evaluate_code: task_ids", sorted({i for i in ids if ids.count(i) > 1}),
             "unique task_ids")
    require_arg(isinstance(n_samples, int) and n_samples >= 1, "evaluate_code: n_samples", n_samples, "a positive integer")
    # Refused here rather than omitted later: finding pass@100 missing after hours of sampling helps nobody.
    bad = [k for k in ks if not (isinstance(k, int) and 1 <= k <= n_samples)]
    require_arg(not bad, "evaluate_code: ks", tuple(ks), f"integers between 1 and n_samples={n_samples}")


def _generate_one(problem: CodeProblem, generate: Callable[[list[str], int], list[list[str]]], n: int) -> list[str]:
    out = generate([problem.prompt], n)
    ok = isinstance(out, list) and len(out) == 1 and isinstance(out[0], list) and len(out[0]) == n
    if not ok or not all(isinstance(text, str) for text in out[0]):
        raise CodeEvalError(f"generate([prompt of {problem.task_id}], {n}) returned {repr(out)[:200]}; "
                            f"expected a list holding one list of {n} strings")
    return out[0]
