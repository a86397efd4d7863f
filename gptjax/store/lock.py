"""One writer per run directory.

A job started twice (a requeue that overlaps the old allocation, a retry, two terminals) must not
train into one directory: both would write metrics rows and checkpoints, and one dies on the
other's step. The run takes this lock before it writes anything; a second writer is refused at
once (exit 2), naming the holder: host, process and start time.

- Local directories: `fcntl.flock` on RUN_DIR/lock.json, held while the process lives. The kernel
  drops it when the process dies, however it dies, so a killed run's lock is free at once.
- gs:// and s3://: a lease. lock.json holds the holder and an expiry; a thread renews it every
  LEASE_S / 3 while the run lives; a release deletes it. A writer that finds a lease takes it when
  it has expired, when its holder ran on this host and that process is gone, or when it has gone
  unrenewed past two renewal periods (its holder is dead on another host: the new writer waits for
  the expiry, at most LEASE_S, then takes it). Taking writes our lease, waits SETTLE_S and reads
  it back: of two writers that both saw no lease, the one whose write landed last keeps it and
  the other is refused. Wall clocks of the hosts must agree to a few seconds.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

from gptjax.config import ConfigError
from gptjax.store import paths

LOCK = "lock.json"
LEASE_S = 60.0
SETTLE_S = 2.0


class RunDirBusy(ConfigError):
    """Another live process writes this run directory (exit 2: nothing was written)."""


def _holder() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "started": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
            "renewed": now, "expires": now + LEASE_S}


def describe(holder: dict) -> str:
    return f"host {holder.get('host')}, process {holder.get('pid')}, started {holder.get('started')}"


class RunLock:
    """`with RunLock(run_dir):` the only writer of run_dir, or RunDirBusy."""

    def __init__(self, run_dir, *, lease_s: float = LEASE_S, settle_s: float = SETTLE_S):
        self.run_dir, self.path = str(run_dir), paths.as_path(run_dir) / LOCK
        self.lease_s, self.settle_s = lease_s, settle_s
        self.holder = _holder()
        self._file = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        if paths.is_remote(self.path):
            self._take_lease()
        else:
            self._take_flock()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- local: flock ---------------------------------------------------------------------------

    def _take_flock(self) -> None:
        import fcntl

        path = os.fspath(self.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            f.close()
            raise RunDirBusy(self._busy(holder)) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(self.holder) + "\n")
        f.flush()
        self._file = f

    # -- object storage: a lease ------------------------------------------------------------------

    def _read(self) -> dict | None:
        try:
            return json.loads(paths.read_text(self.path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # a damaged lease: no holder to respect

    def _take_lease(self) -> None:
        current = self._read()
        if current:
            wait = self._wait_for(current)
            if wait is None:
                raise RunDirBusy(self._busy(current))
            time.sleep(wait)
        self._write()
        time.sleep(self.settle_s)
        if (self._read() or {}).get("token") != self.holder["token"]:
            raise RunDirBusy(self._busy(self._read() or {}))
        self._renewer = threading.Thread(target=self._renew, name="gptjax-run-lock", daemon=True)
        self._renewer.start()

    def _wait_for(self, current: dict) -> float | None:
        """Seconds to wait before taking `current`'s lease, or None when its holder is alive."""
        now = time.time()
        expires, renewed = float(current.get("expires", 0)), float(current.get("renewed", 0))
        if expires <= now:
            return 0.0
        if current.get("host") == socket.gethostname() and not _alive(current.get("pid")):
            return 0.0
        if now - renewed > 2 * self.lease_s / 3:  # two renewals missed: its holder is gone
            return expires - now
        return None

    def _write(self) -> None:
        now = time.time()
        self.holder.update(renewed=now, expires=now + self.lease_s)
        paths.write_text(self.path, json.dumps(self.holder))

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if (self._read() or {}).get("token") != self.holder["token"]:
                    print(f"WARNING: {self.run_dir}: the run directory's lease was taken over "
                          f"({describe(self._read() or {})}); this run no longer holds it", flush=True)
                    return
                self._write()
            except OSError as e:  # a storage hiccup: the next renewal tries again
                print(f"WARNING: {self.run_dir}: could not renew the run directory's lease: {e}", flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._file is not None:
            self._file.close()  # the kernel drops the flock
            self._file = None
        if self._renewer is not None:
            self._renewer = None
            try:
                if (self._read() or {}).get("token") == self.holder["token"]:
                    paths.as_path(self.path).unlink()
            except OSError:
                pass  # the lease expires by itself

    def _busy(self, holder: dict) -> str:
        return (f"{self.run_dir}: another process is training into this run directory ({describe(holder)}); "
                "one run directory has one writer. Wait for it to end, stop it, or give this run another "
                "--run-dir")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
