"""Where a run came from: the gptjax commit, package versions, host and devices."""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import platform
import subprocess
from importlib import metadata as importlib_metadata

PACKAGES = ("gptjax", "jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint", "grain", "tiktoken", "numpy")


def git_commit() -> str | None:
    """The commit of the gptjax checkout that is running, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[name] = importlib_metadata.version(name)
    return out


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def describe() -> dict:
    """What run.json records for each start of a run."""
    import jax

    return {"git_commit": git_commit(), "versions": versions(), "host": platform.node(),
            "python": platform.python_version(), "devices": [str(d) for d in jax.devices()],
            "process_count": jax.process_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "start_time": now()}
