"""SIGTERM and SIGUSR1 (timeout, Slurm, Kubernetes): stop like Ctrl-C, saving a checkpoint first.

Schedulers end a job with SIGTERM, and Slurm sends SIGUSR1 ahead of a time limit (`--signal`).
While the training loop runs (`armed`), the handler only records the signal; the loop saves a
checkpoint at the next step boundary and raises `Stopped`, so a requeued job loses at most one
step. Outside the loop (setup, evaluation), or on a second signal, it raises `Stopped` at once.
`Stopped` is a KeyboardInterrupt: the CLI prints the same message and the locks are released.
"""

from __future__ import annotations

import signal
import threading


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int, saved_step: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved_step = signum, saved_step

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    NAMES = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.received: int | None = None
        self.armed = False

    def install(self) -> dict:
        """Handle SIGTERM / SIGUSR1 in this process (only possible from the main thread); returns the
        handlers replaced, for `restore`."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self.received, self.armed = None, False
        return {s: signal.signal(s, self._handle) for s in (getattr(signal, n) for n in self.NAMES if hasattr(signal, n))}

    def restore(self, old: dict) -> None:
        for signum, handler in old.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame) -> None:
        if self.armed and self.received is None:
            self.received = signum  # the loop saves at the next step boundary
            return
        raise Stopped(signum)


STOP = StopSignals()
