"""Where log lines go and how they look: one owner for the format of every line we log.

Commands: library warnings (`gitops.*` loggers, e.g. a registry tag that cannot be read) reach
stderr as `warning: <message>`, each message once per command. `gitops serve`: our lines and
uvicorn's share one format, plain text or one JSON object per line (`--log-json`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

_OWNED = "_gitops_owned"  # marks the handlers installed here, so a second setup replaces them
SERVE_LOGGERS = ("gitops", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@functools.cache
def _parts() -> SimpleNamespace:
    """The handler, filter and formatters, defined on first use: `logging` costs ~2 ms of every command's
    start-up, and commands that never log (`validate`, `show`, `ls`) never import it (see `logger`)."""
    import json
    import logging
    import time

    class Stderr(logging.Handler):
        """Writes to whatever `sys.stderr` is at emit time (a test runner may swap it)."""

        def emit(self, record: logging.LogRecord) -> None:
            """Write the formatted record and a newline to the current `sys.stderr`."""
            try:
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
            except Exception:  # pragma: no cover - logging must never raise
                self.handleError(record)

    class Once(logging.Filter):
        """Lets each distinct registry warning through once (the tags are read many times per command,
        and every poll of a followed stage); other loggers' lines all pass."""

        def __init__(self) -> None:
            super().__init__()
            self.seen: set[tuple[str, str]] = set()

        def filter(self, record: logging.LogRecord) -> bool:
            """False for a registry warning already shown."""
            if not record.name.startswith("gitops.registry"):
                return True
            key = (record.name, record.getMessage())
            if key in self.seen:
                return False
            self.seen.add(key)
            return True

    class CommandFormatter(logging.Formatter):
        """`warning: <message>`."""

        def format(self, record: logging.LogRecord) -> str:
            """The record as `<level>: <message>`."""
            return f"{record.levelname.lower()}: {record.getMessage()}"

    class JsonFormatter(logging.Formatter):
        """One JSON object per line: time (UTC, ISO 8601), level, logger, message (+ exception)."""

        def format(self, record: logging.LogRecord) -> str:
            """The record as one line of JSON (`time` in UTC with milliseconds, e.g. `2026-01-31T12:00:00.123Z`)."""
            doc = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            return json.dumps(doc, ensure_ascii=False, allow_nan=False)

    return SimpleNamespace(logging=logging, Stderr=Stderr, Once=Once, CommandFormatter=CommandFormatter,
                           JsonFormatter=JsonFormatter)


def __getattr__(name: str) -> Any:
    if name == "JsonFormatter":  # the JSON line format (`serve --log-json`), for callers that want it
        return _parts().JsonFormatter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _install(logger_names: tuple[str, ...], handler: logging.Handler, level: int) -> None:
    logging = _parts().logging
    setattr(handler, _OWNED, True)
    for name in logger_names:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _OWNED, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def setup_command() -> Callable[[], None]:
    """Warnings of the `gitops.*` loggers to stderr as `warning: ...`, each once (one per command).

    Not propagated to the root logger (libraries such as absl install a root handler, which would
    print each line twice). Returns the function that undoes it, for the end of the command, so a
    process running several commands (tests, notebooks) is left as it was.

    Before `logging` is imported nothing can log, so the set-up waits for the first `logger()` call (the
    modules that log make theirs with it): a command that never logs never imports `logging`.
    """
    if "logging" not in sys.modules:
        state: dict[str, Callable[[], None]] = {}
        _PENDING.append(state)

        def restore_pending() -> None:
            if state in _PENDING:
                _PENDING.remove(state)
            if "undo" in state:
                state.pop("undo")()

        return restore_pending
    return _setup_command_now()


_PENDING: list[dict[str, Callable[[], None]]] = []  # command set-ups waiting for the first `logger()`


def logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` for a module of ours that logs; a pending `setup_command` is completed first."""
    parts = _parts()
    while _PENDING:
        state = _PENDING.pop(0)
        state["undo"] = _setup_command_now()
    return parts.logging.getLogger(name)


def _setup_command_now() -> Callable[[], None]:
    parts = _parts()
    logging = parts.logging
    logger = logging.getLogger("gitops")
    before = (logger.level, logger.propagate)
    handler = parts.Stderr(logging.WARNING)
    handler.setFormatter(parts.CommandFormatter())
    handler.addFilter(parts.Once())
    _install(("gitops",), handler, logger.level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]

    return restore


def setup_serve(level: str = "info", *, as_json: bool = False) -> logging.Handler:
    """One handler for our loggers and uvicorn's: the same text format, or JSON lines.

    Pass `log_config=None` to uvicorn so it keeps these handlers instead of installing its own.
    """
    parts = _parts()
    logging = parts.logging
    handler = parts.Stderr()
    handler.setFormatter(parts.JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(parts.Once())
    _install(SERVE_LOGGERS, handler, getattr(logging, level.upper(), logging.INFO))
    return handler
