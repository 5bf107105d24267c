"""Where log lines go and how they look: one owner for the format of every line we log.

Commands: library warnings (`gitops.*` loggers, e.g. a registry tag that cannot be read) reach
stderr as `warning: <message>`, each message once per command. `gitops serve`: our lines and
uvicorn's share one format, plain text or one JSON object per line (`--log-json`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

_OWNED = "_gitops_owned"  # marks the handlers installed here, so a second setup replaces them
SERVE_LOGGERS = ("gitops", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class _Stderr(logging.Handler):
    """Writes to whatever `sys.stderr` is at emit time (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _Once(logging.Filter):
    """Lets each distinct registry warning through once (the tags are read many times per command,
    and every poll of a followed stage); other loggers' lines all pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("gitops.registry"):
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _CommandFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
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


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _install(logger_names: tuple[str, ...], handler: logging.Handler, level: int) -> None:
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
    """
    logger = logging.getLogger("gitops")
    before = (logger.level, logger.propagate)
    handler = _Stderr(logging.WARNING)
    handler.setFormatter(_CommandFormatter())
    handler.addFilter(_Once())
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
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_Once())
    _install(SERVE_LOGGERS, handler, getattr(logging, level.upper(), logging.INFO))
    return handler
