"""JSON Lines files: one JSON value per line, blank lines skipped, errors that name the line."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any


def records(path, error: type[Exception], expected: str = "") -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of `path`. A line that is not JSON raises
    `error` (the caller's kind: DataError, TaskError, ...) naming the file, the line and the
    column, then `expected` (what the file should hold)."""
    with pathlib.Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})"
                            + (f"; expected {expected}" if expected else "")) from None
