"""Preemption: SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""

from __future__ import annotations

import signal


class StopFlag:
    """While active, SIGTERM and SIGINT are recorded instead of ending the process."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal is not None else None

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
