"""Deliberate failures a run injects into itself for fault-injection tests (config.FaultConfig,
`gptjax chaos`): the loop calls these at the moments the faults name. Nothing here is traced
into a compiled step."""

from __future__ import annotations

import os
import signal
import threading

from gptjax.config import ConfigError

DISK_FILLER = "disk_filler"  # the file fill_disk writes in the run directory; delete it to free the space
FILL_LIMIT = 256 * 2**20


def kill_now(name: str = "SIGKILL") -> None:
    os.kill(os.getpid(), getattr(signal, name))


HUNG_MARKER = "fault-hung"  # hang_once's mark in the run directory: the restarted run passes


def hang_once(run_dir) -> None:
    """Block for ever, as a stalled read or a lost peer would, unless this run directory has hung
    before (then return: the restarted run goes on)."""
    from gptjax.store import paths

    marker = paths.as_path(run_dir) / HUNG_MARKER
    if paths.exists(marker):
        return
    paths.write_text(marker, "hung here once\n")
    threading.Event().wait()


def fillable(run_dir: str) -> int:
    """The free bytes faults.fill_disk_at_step would fill, refused above FILL_LIMIT: the fault is
    for a small filesystem (the chaos harness's tmpfs), never a user's disk."""
    path = os.path.abspath(run_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free > FILL_LIMIT:
        raise ConfigError(f"faults.fill_disk_at_step: {path} has {free / 2**20:.0f} MiB free; the fault fills only "
                          f"a filesystem with at most {FILL_LIMIT // 2**20} MiB free (mount a small tmpfs there)")
    return free


def fill_disk(run_dir: str, leave: int = 64 * 1024) -> None:
    """Fill the run directory's filesystem (the file DISK_FILLER in it) until `leave` bytes are
    free: room for the metrics, not for a checkpoint."""
    chunk = b"\0" * (64 * 1024)
    with open(os.path.join(run_dir, DISK_FILLER), "wb", buffering=0) as f:
        try:
            for _ in range(max(0, fillable(run_dir) - leave) // len(chunk)):
                f.write(chunk)
        except OSError:  # full already: tmpfs counts whole pages
            pass
