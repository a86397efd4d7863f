"""A hang becomes an exit that a launcher restarts ("crashes are better than hangs").

A run whose peer was stopped, whose data source blocks or whose collective never completes sits
for ever while holding its allocation. The watchdog, a thread of the training process, expects
progress: a completed step within `watchdog.timeout_s` (by default scaled from the measured step
time: 20 medians, at least MIN_TIMEOUT_S), and the first step (distributed start-up, the peer
barrier, a restore from object storage, the first compile) within `watchdog.startup_s`.
Evaluations and checkpoint saves get the start-up budget. When the deadline passes it writes every
thread's stack and the last completed step to the log and to RUN_DIR/watchdog-<time>.txt, and ends
the process with EXIT_HUNG (3): the last committed checkpoint is intact, and the launchers (local,
sweeps, SLURM's requeue) start the same command again, which resumes from it.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from gptjax.config import WatchdogConfig
from gptjax.errors import EXIT_HUNG
from gptjax.store import paths

MIN_TIMEOUT_S = 300.0
STEP_TIMES = 20  # recent step times whose median scales the automatic timeout
WARM_UP = 3  # steps after the first (which compiles) before the step time is trusted


class Watchdog:
    def __init__(self, cfg: WatchdogConfig, run_dir, *, say: Callable[[str], None],
                 before_exit: Callable[[], None] = lambda: None, check_every_s: float = 0.5):
        self.cfg, self.run_dir, self.say, self.before_exit = cfg, str(run_dir), say, before_exit
        self.check_every_s = check_every_s
        self.last_step: int | None = None
        self._phase, self._since = "start-up", time.monotonic()
        self._budget = cfg.startup_s
        self._times: list[float] = []  # the last STEP_TIMES step times after warm-up
        self._timed = 0  # steps completed by this process
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="gptjax-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def step_done(self, step: int, seconds: float | None) -> None:
        """A step completed (its metrics were read); `seconds` since the previous one, or None for a
        step that compiled."""
        with self._lock:
            self.last_step = step
            self._timed += 1
            if seconds is not None and self._timed > WARM_UP:
                self._times = (self._times + [seconds])[-STEP_TIMES:]
            self._enter("training", self._training_budget())

    def training(self) -> None:
        """The loop moves on to another step (after an evaluation or a save, too)."""
        with self._lock:
            self._enter("training", self._training_budget())

    def _training_budget(self) -> float:
        # Until this process has completed a step, the first compile may still be under way.
        return self.step_timeout() if self._timed else self.cfg.startup_s

    def phase(self, name: str) -> None:
        """An evaluation or a checkpoint save begins: the start-up budget, until the next step."""
        with self._lock:
            self._enter(name, max(self.cfg.startup_s, self.step_timeout()))

    def step_timeout(self) -> float:
        if self.cfg.timeout_s is not None:
            return self.cfg.timeout_s
        if not self._times:
            return self.cfg.startup_s  # no step time measured yet: compiles may still come
        return max(MIN_TIMEOUT_S, 20 * statistics.median(self._times))

    def _enter(self, phase: str, budget: float) -> None:
        self._phase, self._since, self._budget = phase, time.monotonic(), budget

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            with self._lock:
                waited, budget, phase = time.monotonic() - self._since, self._budget, self._phase
            if waited > budget:
                self._fire(phase, waited, budget)

    def _fire(self, phase: str, waited: float, budget: float) -> None:
        what = "no step completed" if phase == "training" else f"the {phase} did not end"
        done = str(self.last_step) if self.last_step is not None else "none"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"watchdog-{stamp}.txt"
        stacks = _stacks()
        report = (f"watchdog: {what} in {waited:.0f} s (limit {budget:.0f} s); last completed step: {done}\n"
                  f"Stacks of every thread:\n{stacks}")
        print(report, file=sys.stderr, flush=True)
        try:
            paths.write_text(paths.as_path(self.run_dir) / name, report)
            where = f"{self.run_dir}/{name}"
        except Exception as e:  # the storage may be what hangs: the log has the stacks
            where = f"the log ({name} could not be written: {e})"
        self.say(f"watchdog: {what} in {waited:.0f} s (limit {budget:.0f} s, watchdog.timeout_s / "
                 f"watchdog.startup_s); last completed step {done}; every thread's stack is in {where}; exiting "
                 f"with code {EXIT_HUNG} so that the launcher restarts the run from its last checkpoint")
        try:
            self.before_exit()
        finally:
            os._exit(EXIT_HUNG)  # the main thread is stuck (in a collective, a read): end the process


def _stacks() -> str:
    with tempfile.TemporaryFile("w+") as f:  # faulthandler writes to a file descriptor
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        return f.read()

