"""Errors that reach the user as a message and an exit code, never as a traceback.

The CLI maps every `GitopsError` to its `exit_code`; anything else is a bug and shows a
traceback only under `--debug`.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence

from gitops.records import record

EXIT_OK = 0
EXIT_INVALID = 1  # the thing checked is wrong: invalid config, gate failed, checksum mismatch, diverged
EXIT_USAGE = 2  # bad flag, missing path, unknown model
EXIT_SERVICE = 3  # an outside service (GitHub, a data URL) still failing after retries
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report it


class GitopsError(Exception):
    """An error with a user-facing message and the exit code the CLI returns for it."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        """The user-facing text (the exception's str), as printed after `error:` by the CLI."""
        return str(self)


class UsageError(GitopsError):
    """The user asked for something that cannot be done as asked: a bad flag, missing path, unknown model (exit 2)."""

    exit_code = EXIT_USAGE


class ServiceError(GitopsError):
    """An outside service kept failing after retries (exit 3)."""

    exit_code = EXIT_SERVICE


class IntegrityError(GitopsError):
    """A checksum or signature does not match (exit 1)."""


class TrainingError(GitopsError):
    """Training could not finish: diverged (NaN/inf), or the data did not fit (exit 1)."""


class Interrupted(GitopsError):
    """Stopped by Ctrl-C (exit 130) or SIGTERM (exit 143)."""

    exit_code = EXIT_INTERRUPTED


class RunInterrupted(Interrupted):
    """Training stopped by Ctrl-C (exit 130) or SIGTERM (exit 143) after a committed checkpoint at `step`.

    The library fills in what it knows: `model`, `step`, `where` (context for the step, e.g.
    " of seed 1 (2 of 3)"), whether the checkpoint was `saved` (else `reason`), and `signum`. The
    command line that resumes is `gitops train ARGS --resume`: `train_args` defaults to the model's name,
    and the CLI, which knows how the run was started (the model as typed, its `--set` overrides, `--out`),
    hands those in with `replace(train_args=...)`; the message is worded from these fields alone.
    """

    def __init__(self, model: str, step: int, *, where: str = "", train_args: Sequence[str] | None = None,
                 saved: bool = True, reason: str = "", signum: int = signal.SIGINT):
        self.model, self.step, self.where, self.saved, self.reason = model, step, where, saved, reason
        self.signum = signum
        self.train_args: tuple[str, ...] = tuple(train_args) if train_args is not None else (model,)
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        if saved:
            text = f"{what} at step {step}{where}; resume with: {self.command}"
        else:
            text = (f"{what} at step {step}{where}; the checkpoint could not be saved ({reason}); "
                    f"--resume continues from the last committed checkpoint: {self.command}")
        super().__init__(text, exit_code=EXIT_TERMINATED if signum == signal.SIGTERM else None)

    @property
    def command(self) -> str:
        """The command line that resumes the run: `gitops train ARGS --resume`, shell-quoted."""
        return shlex.join(["gitops", "train", *self.train_args, "--resume"])

    def replace(self, *, where: str | None = None, train_args: Sequence[str] | None = None) -> RunInterrupted:
        """A copy with `where` and/or `train_args` replaced (the other fields kept)."""
        return RunInterrupted(self.model, self.step, where=self.where if where is None else where,
                              train_args=self.train_args if train_args is None else train_args, saved=self.saved, reason=self.reason,
                              signum=self.signum)


class OverrideError(UsageError):
    """A `--set KEY.PATH=VALUE` override that is not one: `text` as given, `kinds` the first keys allowed.

    `problem` is "no_value" (no `=`) or "bad_path" (the path does not start with one of `kinds` or
    does not name a key below it).
    """

    def __init__(self, text: str, problem: str, kinds: Sequence[str]):
        self.text, self.problem, self.kinds = text, problem, tuple(kinds)
        if problem == "no_value":
            message = f"--set {text!r}: expected KEY.PATH=VALUE, e.g. train.optimizer.learning_rate=3e-4"
        else:
            message = (f"--set {text!r}: the path must start with one of {', '.join(self.kinds)} and name a key, "
                       "e.g. train.batch_size=64")
        super().__init__(message)


@record(frozen=True, order=True)
class Problem:
    """One finding about a config file, positioned for editors and GitHub annotations."""

    file: str
    line: int
    col: int
    path: str  # dotted key path, e.g. "train.optimizer.learning_rate"; "" for the document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict:
        """The finding as plain JSON data: {file, line, col, path, message} (`--json` output, annotations)."""
        return {"file": self.file, "line": self.line, "col": self.col, "path": self.path, "message": self.message}


class ConfigError(GitopsError):
    """One or more problems in config files; the message lists all of them."""

    def __init__(self, problems: list[Problem], *, exit_code: int | None = None):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems), exit_code=exit_code)
