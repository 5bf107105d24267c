"""Ctrl-C or SIGTERM during training: stop at a step boundary, checkpoint, exit 130 (143 for SIGTERM) with
the command that resumes (`gitops.errors.RunInterrupted` carries the model and step; the CLI adds how the
run was started).

SIGTERM is what systemd, Kubernetes and CI runners send before they kill a job; it is handled exactly
like Ctrl-C (the exit code says which one came). Outside training, `install_terminate_handler` turns
SIGTERM into `Terminated` (a KeyboardInterrupt), so `finally` blocks clean up and the CLI exits 143.

Python's default SIGINT handler raises `KeyboardInterrupt` between any two bytecodes: between a
jitted chunk returning (its input buffers already donated) and the assignment of its result, or
between advancing the state and advancing the step counter. A checkpoint saved from there is
mislabelled or impossible. So while the loop runs, SIGINT only sets a flag (`StopFlag`), which the
loop reads after each dispatched chunk, where the state and the step agree; the loop then saves that
step (unless the event at that step just saved it), waits for the save to commit, and raises
`RunInterrupted`. At an event step (log, eval, checkpoint) the event runs first, so a resumed run
replays exactly the events an uninterrupted one has. A second Ctrl-C raises
`KeyboardInterrupt` at once (no checkpoint) for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: unwinds like Ctrl-C; the CLI exits 143."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def install_terminate_handler() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (where it is not ignored)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """Raised by the loop itself, at a step boundary, after the first Ctrl-C."""


class StopFlag:
    """Turns (between `install()` and `restore()`, or as a context manager) the first SIGINT or SIGTERM into
    `requested = True` (main thread only); `signum` says which came.

    Off the main thread (where signal handlers cannot be installed) it does nothing and Ctrl-C keeps
    Python's default behaviour; where a signal is ignored (nohup, background jobs) it stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C (or SIGTERM): stop now
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested, self.signum = True, signum

    def install(self) -> StopFlag:
        """Route SIGINT and SIGTERM to this flag (keeping the previous handlers for `restore`) and return self; a no-op
        off the main thread, and signals that are ignored (SIG_IGN) stay ignored.
        """
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:  # nohup, a background job: keep ignoring it
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def restore(self) -> None:
        """Put back the signal handlers `install` replaced; safe to call when nothing was installed."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
