"""Preemption: SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly.

`gptjax train` holds a StopFlag for the whole life of its process (cli.py), so a signal that
arrives during start-up, after the last step's checkpoint or while the run writes its result ends
the process as documented (exit 0 after a save) instead of by the signal's default action. A
StopFlag entered inside another one hears what the outer one heard before it, and hands on what
it hears."""

from __future__ import annotations

import signal
import threading

_active: list[StopFlag] = []  # entered StopFlags, innermost last


class StopFlag:
    """While active, SIGTERM and SIGINT are recorded instead of ending the process."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        if _active:
            self.signal = _active[-1].signal  # heard before this run started
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        _active.append(self)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal is not None else None

    def __exit__(self, *exc):
        _active.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if _active and self.signal is not None and _active[-1].signal is None:
            _active[-1].signal = self.signal


def heard() -> str | None:
    """The name of a stop signal any active StopFlag has recorded, or None."""
    return next((f.name for f in reversed(_active) if f.signal is not None), None)
