"""Orbax CheckpointManager with our own integrity manifest, on local disks, gs:// and s3://.

Orbax commits atomically (rename of a tmp directory locally, a commit file on gs://) but checksums
no data chunk and follows symlinks, so a flipped byte or a planted link would restore silently as
wrong values. Before each commit we write `gptjax_manifest.json` (sha256 of every file); restore
verifies it. Only a checkpoint whose own integrity check fails (manifest mismatch, missing or
truncated files, a link) is set aside, loudly, in favour of the previous one. Any other failure
(a shape or tree mismatch, out of memory, an I/O error, an interrupt) is an error that leaves every
checkpoint exactly as it was. No loadable checkpoint at all is an error, never a silent restart.

Each step holds three items, so inspection can read the parameters alone: `params`, `train`
({"step", "opt_state"}) and `meta` (JSON). s3:// goes through a local staging mirror (mirror.py),
because Orbax 0.12 cannot write s3:// itself.
"""

from __future__ import annotations

import logging
import sys
import threading

import jax
import orbax.checkpoint as ocp

from gptjax.store import paths
from gptjax.store.manifest import set_aside, verify, write_manifest
from gptjax.store.tensor_files import CheckpointError

log = logging.getLogger(__name__)
ITEMS = ("params", "train", "meta")
class _ReadOnlyNotices(logging.Filter):
    """Orbax warns that a read-only manager is read-only ("CheckpointManagerOptions.read_only=True,
    setting ...", "Given directory is read only=..."): gptjax opens run directories read-only on
    purpose (sample, eval, convert, warm starts), so those lines said nothing before every output."""

    NOTICES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


def _quiet_read_only_notices() -> None:
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _ReadOnlyNotices) for f in absl.filters):
        absl.addFilter(_ReadOnlyNotices())


class RestoreError(CheckpointError):
    """A checkpoint that passed its integrity check could not be restored into this run's state."""


class SaveError(OSError):
    """A save that did not commit (a full disk, a lost connection); earlier checkpoints are intact."""


class Checkpoints:
    """Asynchronous saves of {params, train, meta}; keep the last N plus every K-th step.

    `read_only` opens for inspection: nothing in the directory is created, renamed, written or
    deleted, and damaged steps are skipped rather than set aside.
    """

    def __init__(self, directory, keep_last: int, keep_every: int | None, *, read_only: bool = False):
        self.directory = paths.as_path(directory)
        self.read_only = read_only
        self.keep_last, self.keep_every = keep_last, keep_every
        self._pending: list[int] = []  # saved, manifest not yet written (the commit callback's queue)
        self._unconfirmed: list[int] = []  # saved, commit not yet checked by wait()
        self._lock = threading.Lock()
        self.mirror = None
        local = self.directory
        if paths.scheme(self.directory) == "s3":
            from gptjax.store.mirror import Mirror

            self.mirror = Mirror(self.directory, keep_last, keep_every, read_only=read_only)
            local = self.mirror.staging
        paths.tensorstore_env()
        self._local = local
        if read_only:
            _quiet_read_only_notices()
            options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep_last, keep_period=keep_every, create=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._on_commit))
        self.manager = ocp.CheckpointManager(local, options=options, item_names=ITEMS)

    def _on_commit(self) -> None:
        # Orbax calls this after the data is written and before the commit (rename or commit
        # file), so the manifest is committed together with the data.
        with self._lock:
            pending, self._pending = self._pending, []
        if jax.process_index() != 0:
            return
        for step in pending:
            tmp = sorted(self._local.glob(f"{step}.orbax-checkpoint-tmp*"))
            step_dir = tmp[-1] if tmp else self._local / str(step)
            if step_dir.is_dir():
                write_manifest(step_dir)

    def save(self, step: int, state: dict, meta: dict) -> None:
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; refusing to save step {step}")
        # Orbax finishes the previous save before starting one anyway; waiting here first means
        # the commit callback of that save cannot mistake this step for its own.
        self.wait()
        with self._lock:
            self._pending.append(step)
        self._unconfirmed.append(step)
        train_state = {"step": state["step"], "opt_state": state["opt_state"]}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]), train=ocp.args.StandardSave(train_state),
            meta=ocp.args.JsonSave(meta)), force=True)
        if self.mirror is not None:
            self.mirror.upload_when_committed(step)

    def wait(self) -> None:
        """Block until every save has finished, and raise if one did not commit: Orbax logs a
        failed background write (a full disk) and carries on, which would lose it silently."""
        self.manager.wait_until_finished()
        missing = []
        if self._unconfirmed:
            self.manager.reload()
            committed = self.manager.all_steps()  # locally: the staging directory for s3://
            missing = [s for s in self._unconfirmed if s not in committed]
            self._unconfirmed = []
        if self.mirror is not None:
            self.mirror.wait(abandoned=missing)  # an uncommitted step never appears to be uploaded
        if missing:
            raise SaveError(
                f"saving checkpoint step {missing[0]} to {self.directory} did not commit (Orbax reported why above: "
                f"a full disk, a lost connection, ...); the last committed checkpoint is step {self.latest_step()}, "
                "intact. Free space (or move the run directory), then run the same command to resume from it.")

    def all_steps(self) -> list[int]:
        if self.mirror is not None:
            return self.mirror.committed_steps()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, dict] | None:
        """The newest verified checkpoint (or exactly `step`) restored into `abstract_state`'s
        shardings. Returns None only when there is no checkpoint at all.
        """
        args = {"params": ocp.args.StandardRestore(abstract_state["params"]),
                "train": ocp.args.StandardRestore({"step": abstract_state["step"],
                                                   "opt_state": abstract_state["opt_state"]})}
        found = self._restore_newest(args, skip=(), only=step)
        if found is None:
            return None
        out, meta = found
        return {"step": out["train"]["step"], "params": out["params"],
                "opt_state": out["train"]["opt_state"]}, meta

    def restore_params(self, abstract_params: dict) -> tuple[dict, dict] | None:
        """Parameters (and meta) only, for inspection: the optimizer state is never read."""
        found = self._restore_newest({"params": ocp.args.StandardRestore(abstract_params)}, skip=("train",))
        return None if found is None else (found[0]["params"], found[1])

    def _restore_newest(self, args: dict, skip: tuple[str, ...], only: int | None = None):
        steps = sorted(self.all_steps(), reverse=True) if only is None else [only]
        if not steps:
            return None
        for s in steps:
            step_dir = self.mirror.fetch(s, skip=skip) if self.mirror is not None else self._local / str(s)
            problem = verify(step_dir, skip=skip)
            if problem is None:
                out = self._restore_step(s, {**args, "meta": ocp.args.JsonRestore()})
                return out, out["meta"]
            action = "skipping it (read-only)" if self.read_only else f"setting it aside as {s}.unusable"
            _loud(f"checkpoint step {s} is unusable: {problem}; {action} and falling back to the previous one")
            if not self.read_only:
                self._set_aside(s)
        raise CheckpointError(
            f"no checkpoint in {self.directory} passes its integrity check (tried steps {steps}); refusing to "
            "start from step 0. Move the directory aside to start afresh.")

    def _restore_step(self, step: int, args: dict) -> dict:
        if self.mirror is not None:
            self.manager.reload()  # the step was just downloaded into the staging directory
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - reported whole; nothing is set aside
            raise RestoreError(
                f"checkpoint step {step} in {self.directory} passed its integrity check but could not be restored "
                f"into this run's state ({type(e).__name__}: {str(e)[:600]}). No checkpoint was changed. If the "
                "config changed, resume with the one in the run directory's config.yaml, or start a new run "
                "with --run-dir.") from e

    def _set_aside(self, step: int) -> None:
        """Rename a damaged step to `<step>.unusable` (kept for inspection): left in place, Orbax
        would count it against max_to_keep and refuse to save that step number again."""
        if jax.process_index() == 0:
            if self.mirror is not None:
                self.mirror.set_aside(step)
            else:
                set_aside(self.directory, step)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("gptjax_checkpoint_set_aside")
        self.manager.reload()

    def close(self) -> None:
        self.wait()
        self.manager.close()
        if self.mirror is not None:
            self.mirror.close()


def _loud(message: str) -> None:
    log.error(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
