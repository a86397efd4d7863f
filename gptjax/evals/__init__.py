"""Benchmark evaluation.

tasks     multiple choice, LAMBADA and perplexity task files, scored as lm-eval does
code      HumanEval problems, completions checked in the sandbox, pass@k
sandbox   the process sandbox that runs model-written programs (not a security boundary)
scorer    the model side: batched log-likelihoods and greedy continuations
evaluate  options, the evaluation of one task, its report
commands  `gptjax eval` and `gptjax lm-eval`
"""


class EvalError(ValueError):
    """A benchmark file, task, option or request that cannot be evaluated; the message says which and why."""
