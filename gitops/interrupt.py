"""Ctrl-C during training: stop at a step boundary, checkpoint, exit 130 with the command that resumes.

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

from gitops.errors import Interrupted


class RunInterrupted(Interrupted):
    """Training stopped by Ctrl-C after a committed checkpoint at `step` (exit 130).

    `where` adds context to the step (e.g. " of seed 1 (2 of 3)"); `command` is the command line
    that resumes (the CLI fills in the overrides and output folder it was given).
    """

    def __init__(self, model: str, step: int, *, where: str = "", command: str | None = None,
                 saved: bool = True, reason: str = ""):
        self.model, self.step, self.where, self.saved, self.reason = model, step, where, saved, reason
        self.command = command or f"gitops train {model} --resume"
        if saved:
            text = f"interrupted at step {step}{where}; resume with: {self.command}"
        else:
            text = (f"interrupted at step {step}{where}; the checkpoint could not be saved ({reason}); "
                    f"--resume continues from the last committed checkpoint: {self.command}")
        super().__init__(text)

    def replace(self, *, where: str | None = None, command: str | None = None) -> RunInterrupted:
        return RunInterrupted(self.model, self.step, where=self.where if where is None else where,
                              command=command or self.command, saved=self.saved, reason=self.reason)


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """Raised by the loop itself, at a step boundary, after the first Ctrl-C."""


class StopFlag:
    """Turns (between `install()` and `restore()`, or as a context manager) the first SIGINT into `requested = True` (main thread only).

    Off the main thread (where signal handlers cannot be installed) it does nothing and Ctrl-C keeps
    Python's default behaviour; where SIGINT is ignored (nohup, background jobs) it stays ignored.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> StopFlag:
        # a process started with SIGINT ignored (nohup, a background job) keeps ignoring it
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
