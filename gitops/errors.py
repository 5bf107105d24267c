"""Errors that reach the user as a message and an exit code, never as a traceback.

The CLI maps every `GitopsError` to its `exit_code`; anything else is a bug and shows a
traceback only under `--debug`.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INVALID = 1  # the thing checked is wrong: invalid config, gate failed, checksum mismatch, diverged
EXIT_USAGE = 2  # bad flag, missing path, unknown model
EXIT_SERVICE = 3  # an outside service (GitHub, a data URL) still failing after retries
EXIT_INTERRUPTED = 130


class GitopsError(Exception):
    """An error with a user-facing message and the exit code the CLI returns for it."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class UsageError(GitopsError):
    exit_code = EXIT_USAGE


class ServiceError(GitopsError):
    """An outside service kept failing after retries (exit 3)."""

    exit_code = EXIT_SERVICE


class IntegrityError(GitopsError):
    """A checksum or signature does not match (exit 1)."""


class TrainingError(GitopsError):
    """Training could not finish: diverged (NaN/inf), or the data did not fit (exit 1)."""


class Interrupted(GitopsError):
    exit_code = EXIT_INTERRUPTED


@dataclass(frozen=True, order=True)
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
        return {"file": self.file, "line": self.line, "col": self.col, "path": self.path, "message": self.message}


class ConfigError(GitopsError):
    """One or more problems in config files; the message lists all of them."""

    def __init__(self, problems: list[Problem], *, exit_code: int | None = None):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems), exit_code=exit_code)
