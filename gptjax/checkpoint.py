"""Orbax CheckpointManager with our own integrity manifest and fallback to the last good step.

Orbax commits atomically (rename of a tmp directory) but checksums no data chunk and follows
symlinks, so a flipped byte or a planted link would restore silently as wrong values. After each
commit we write `gptjax_manifest.json` (sha256 of every file); restore verifies it and falls back,
loudly, to the previous good checkpoint. No loadable checkpoint at all is an error, never a
silent restart from step 0.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from gptjax.checkpoint_io import CheckpointError, sha256_file

log = logging.getLogger(__name__)
MANIFEST = "gptjax_manifest.json"


ITEMS = ("state", "meta")
# Orbax's own markers, rewritten around the commit after our manifest is written.
_UNHASHED = {MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA"}


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """Every data file of the checkpoint; any symbolic link anywhere in it is refused."""
    out = []
    for root, dirs, files in os.walk(step_dir, followlinks=False):
        for name in dirs + files:
            p = pathlib.Path(root) / name
            if p.is_symlink():
                raise CheckpointError(f"{p} is a symbolic link; checkpoints must hold only regular files")
        out += [pathlib.Path(root) / f for f in files if f not in _UNHASHED]
    return sorted(out)


def write_manifest(step_dir: pathlib.Path) -> None:
    entries = {str(p.relative_to(step_dir)): sha256_file(p) for p in _files(step_dir)}
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(entries, indent=0, sort_keys=True))
    os.replace(tmp, step_dir / MANIFEST)


def verify(step_dir: pathlib.Path) -> str | None:
    """None if every file matches the manifest; otherwise what is wrong."""
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return f"{step_dir} has no {MANIFEST} (the run stopped before the save was verified)"
    expected = json.loads(manifest.read_text())
    try:
        files = _files(step_dir)
    except CheckpointError as e:
        return str(e)
    found = {str(p.relative_to(step_dir)): p for p in files}
    for rel in sorted(set(expected) | set(found)):
        if rel not in found:
            return f"{step_dir / rel} is missing"
        if rel not in expected:
            return f"{step_dir / rel} is not in the manifest"
        if sha256_file(found[rel]) != expected[rel]:
            return f"{step_dir / rel} does not match its sha256 in the manifest (corrupted or truncated)"
    return None


class Checkpoints:
    """Asynchronous saves of {state, meta}; keep the last N plus every K-th step."""

    def __init__(self, directory: pathlib.Path, keep_last: int, keep_every: int | None):
        self.directory = pathlib.Path(directory).absolute()
        self._pending: list[int] = []
        self._lock = threading.Lock()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last, keep_period=keep_every, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._on_commit))
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def _on_commit(self) -> None:
        # Orbax calls this after the data is written and before the atomic rename, so the
        # manifest is committed together with the data: a committed step always has one.
        with self._lock:
            pending, self._pending = self._pending, []
        if jax.process_index() != 0:
            return
        for step in pending:
            tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            step_dir = tmp[-1] if tmp else self.directory / str(step)
            if step_dir.is_dir():
                write_manifest(step_dir)

    def save(self, step: int, state: Any, meta: dict) -> None:
        # Orbax finishes the previous save before starting one anyway; waiting here first means
        # the commit callback of that save cannot mistake this step for its own.
        self.manager.wait_until_finished()
        with self._lock:
            self._pending.append(step)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """The newest verified checkpoint restored into `abstract_state`'s shardings (or `step`).

        Returns None only when there is no checkpoint at all.
        """
        steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            return None
        unusable = []
        try:
            for s in steps:
                step_dir = self.directory / str(s)
                problem = verify(step_dir)
                if problem is None:
                    try:
                        out = self.manager.restore(s, args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                        return out["state"], out["meta"]
                    except Exception as e:  # noqa: BLE001 - any failure means: try the previous step
                        problem = f"{step_dir} failed to restore: {type(e).__name__}: {e}"
                _loud(f"checkpoint step {s} is unusable: {problem}; falling back to the previous one")
                unusable.append(s)
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored (tried steps {steps}); refusing to start "
                "from step 0. Move the directory aside to start afresh.")
        finally:
            self._set_aside(unusable)

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unusable steps to `<step>.unusable` (kept for inspection): left in place, Orbax
        would count them against max_to_keep and refuse to save that step number again."""
        if not steps:
            return
        if jax.process_index() == 0:
            for s in steps:
                target = self.directory / f"{s}.unusable"
                n = 1
                while target.exists():
                    target, n = self.directory / f"{s}.unusable.{n}", n + 1
                os.replace(self.directory / str(s), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("gptjax_checkpoint_set_aside")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _loud(message: str) -> None:
    log.error(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
