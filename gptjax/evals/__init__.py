"""Benchmark evaluation: task files and metrics (tasks, code), the model side (scorer), the command (evaluate)."""


class EvalError(ValueError):
    """A benchmark file, task, option or request that cannot be evaluated; the message says which and why."""
