"""Checkpoints on s3://, which Orbax 0.12 cannot write (it turns `s3://b/x` into the local path
`s3:/b/x`), without touching any private Orbax function.

Design: Orbax saves and commits to a local staging directory (GPTJAX_CACHE_DIR/staging/<hash of
the URL>), exactly as on a local disk, manifest included. A background thread uploads each
committed step object by object and writes `gptjax_committed` last; a remote step exists for us
only once that marker does, so a kill mid-upload leaves an uncommitted prefix that is ignored (and
overwritten by the next save of that step). Restore downloads the newest committed step into the
staging directory (always afresh: the check must see the bucket's bytes) and verifies it against
the manifest, then Orbax restores from disk. Retention (keep_last, keep_every) is applied to the
remote steps after each upload.

Costs: local disk of keep_last checkpoints (Orbax's retention in the staging directory), one upload
per save (in the background; training continues), one download of a step per resume.
Multi-process runs need a directory every process sees; the staging directories are per host,
so s3:// run directories are refused for them (gs:// works natively with several processes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time

import jax

from gptjax.store import manifest, paths
from gptjax.store.manifest import COMMIT_MARKER as MARKER
from gptjax.store.tensor_files import CheckpointError


def keep_set(steps: list[int], keep_last: int, keep_every: int | None) -> set[int]:
    """Orbax's retention (max_to_keep plus keep_period), for the remote copy Orbax does not manage."""
    kept = set(sorted(steps)[-keep_last:])
    return kept | {s for s in steps if keep_every and s % keep_every == 0}


class Mirror:
    def __init__(self, remote, keep_last: int, keep_every: int | None, *, read_only: bool):
        if jax.process_count() > 1:
            raise CheckpointError(
                f"{remote}: s3:// run directories support single-process runs only (checkpoints are staged on "
                "each host's disk, and a multi-process Orbax save needs one directory all processes see); use "
                "gs:// or a shared filesystem for multi-host runs")
        self.remote = paths.as_path(remote)
        self.keep_last, self.keep_every = keep_last, keep_every
        self._temporary = read_only  # inspection stages into a throwaway directory
        if read_only:
            self.staging = paths.as_path(tempfile.mkdtemp(prefix="gptjax-inspect-"))
        else:
            key = hashlib.sha256(os.fspath(self.remote).encode()).hexdigest()[:16]
            self.staging = paths.as_path(paths.cache_root() / "staging" / key / "checkpoints")
            os.makedirs(os.fspath(self.staging), exist_ok=True)
        self._threads: list[threading.Thread] = []
        self._abandoned: set[int] = set()  # steps whose local save failed: their uploads give up
        self._errors: list[BaseException] = []
        if not read_only:
            self._finish_interrupted_uploads()

    def _finish_interrupted_uploads(self) -> None:
        """A step committed locally whose upload was cut short (the process was killed) is
        uploaded now if it verifies, else dropped: Orbax would refuse to save its number again."""
        remote = set(self.committed_steps())
        for entry in self.staging.iterdir():
            if not entry.name.isdigit() or int(entry.name) in remote:
                continue
            if manifest.verify(entry) is None:
                self._upload(int(entry.name))
                self.wait()
            else:
                paths.remove_tree(entry)

    def committed_steps(self) -> list[int]:
        fs, prefix = paths.filesystem(self.remote)
        if not fs.exists(prefix):
            return []
        steps = []
        for entry in fs.ls(prefix, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.isdigit() and fs.exists(f"{entry.rstrip('/')}/{MARKER}"):
                steps.append(int(name))
        return sorted(steps)

    # --- upload -----------------------------------------------------------------------------

    def upload_when_committed(self, step: int) -> None:
        thread = threading.Thread(target=self._upload, args=(step,), name=f"gptjax-upload-{step}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _upload(self, step: int) -> None:
        local = self.staging / str(step)
        try:
            while not local.is_dir():  # Orbax commits locally by renaming its tmp directory
                if step in self._abandoned:
                    return
                time.sleep(0.05)
            target = self.remote / str(step)
            paths.remove_tree(target)  # an uncommitted upload of the same step number
            for rel in paths.files(local):
                paths.copy_file(local / rel, target / rel)
            paths.write_text(target / MARKER, f"{step}\n")  # last: the remote commit
            self._prune()
        except BaseException as e:  # noqa: BLE001 - re-raised on the training thread by wait()
            self._errors.append(e)

    def _prune(self) -> None:
        steps = self.committed_steps()
        for s in sorted(set(steps) - keep_set(steps, self.keep_last, self.keep_every)):
            paths.remove_tree(self.remote / str(s) / MARKER)  # uncommit first, then delete
            paths.remove_tree(self.remote / str(s))

    def wait(self, abandoned: list[int] = ()) -> None:
        """Join the uploads and raise the first upload error. `abandoned`: steps whose local save
        did not commit (the caller raises that error); their uploads stop waiting for them."""
        self._abandoned.update(abandoned)
        for thread in self._threads:
            thread.join()
        self._threads = []
        if self._errors:
            error, self._errors = self._errors[0], []
            raise CheckpointError(f"uploading a checkpoint to {self.remote} failed: {type(error).__name__}: "
                                  f"{error}; the local copy in {self.staging} is intact") from error

    # --- download ---------------------------------------------------------------------------

    def fetch(self, step: int, skip: tuple[str, ...] = ()):
        """A local copy of a committed remote step, downloaded afresh (item folders in `skip` are
        not): the integrity check must see the bucket's bytes, not an earlier staged copy."""
        local = self.staging / str(step)
        source = self.remote / str(step)
        tmp = self.staging / f".{step}.download"
        paths.remove_tree(tmp)
        for rel in paths.files(source):
            if rel.split("/", 1)[0] not in skip and rel != MARKER:
                paths.copy_file(source / rel, tmp / rel)
        paths.remove_tree(local)
        tmp.rename(local)
        return local

    def set_aside(self, step: int) -> None:
        paths.remove_tree(self.remote / str(step) / MARKER)  # uncommitted first, then renamed
        manifest.set_aside(self.remote, step)
        paths.remove_tree(self.staging / str(step))

    def close(self) -> None:
        self.wait()
        if self._temporary:
            shutil.rmtree(os.fspath(self.staging), ignore_errors=True)
