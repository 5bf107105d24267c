"""`gitops site --serve`: build the site, serve it on localhost, rebuild when the registry's tags change.

The standard library's http.server is enough for a preview. A background thread polls the
backend's tags (for the local backend that is one `git for-each-ref refs/tags`) and rebuilds into
the same folder atomically, so a request never sees a half-written page.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gitops.backends.base import Backend
from gitops.errors import GitopsError, UsageError


def tags_signature(backend: Backend) -> str:
    """A digest of every tag's name, target and message: it changes exactly when the registry does."""
    h = hashlib.sha256()
    for tag in sorted(backend.list_tags(), key=lambda t: t.name):
        h.update(f"{tag.name}\0{tag.commit}\0{tag.date}\0{tag.message}\0".encode())
    return h.hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class Watcher(threading.Thread):
    """Polls `signature()` every `interval` seconds and calls `rebuild()` when it changes."""

    def __init__(self, signature: Callable[[], str], rebuild: Callable[[], None], interval: float,
                 first: str, log: Callable[[str], None]):
        super().__init__(name="gitops-site-watch", daemon=True)
        self.signature, self.rebuild, self.interval, self.last, self.log = signature, rebuild, interval, first, log
        self.stopped = threading.Event()
        self.rebuilds = 0

    def run(self) -> None:
        """Poll until stopped; a failed rebuild is logged and the previous site keeps being served."""
        while not self.stopped.wait(self.interval):
            try:
                current = self.signature()
                if current != self.last:
                    self.rebuild()
                    self.last = current
                    self.rebuilds += 1
                    self.log("tags changed: site rebuilt")
            except GitopsError as exc:  # keep serving the last good site
                self.log(f"rebuild failed (still serving the previous site): {exc.message}")

    def stop(self) -> None:
        """End the poll loop: the thread exits at once, or after the rebuild it is running."""
        self.stopped.set()


def serve(build: Callable[[Path], None], backend: Backend, *, out: Path | None, host: str, port: int,
          interval: float, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
          ready: Callable[[ThreadingHTTPServer, Watcher], None] | None = None) -> None:
    """Build into `out` (a temporary folder when None), serve it until Ctrl-C, rebuild on tag changes.

    Args:
        build: writes the site into the folder it is given (atomically).
        backend: whose tags are watched.
        out: where the site goes; None keeps it in a temporary folder removed at exit.
        host, port: where to listen (port 0 picks a free one).
        interval: seconds between tag polls.
        log: progress lines.
        ready: called once the server listens (tests use it to learn the port and stop the server).
    """
    if interval <= 0:
        raise UsageError("--interval must be a positive number of seconds")
    holder = Path(tempfile.mkdtemp(prefix="gitops-site-")) if out is None else None
    site = (holder / "site") if holder is not None else Path(out)  # type: ignore[arg-type]
    try:
        first = tags_signature(backend)
        build(site)
        handler = functools.partial(_QuietHandler, directory=str(site))
        try:
            server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        watcher = Watcher(lambda: tags_signature(backend), lambda: build(site), interval, first, log)
        watcher.start()
        bound_host, bound_port = server.server_address[:2]
        log(f"serving the registry site on http://{bound_host}:{bound_port}/ (Ctrl-C to stop); "
            f"checking tags every {interval:g}s")
        if ready is not None:
            ready(server, watcher)
        _stop_on_sigterm()
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:  # Ctrl-C is how a preview ends: not an error
            log("stopped")
        finally:
            watcher.stop()
            server.server_close()
    finally:
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)


def _stop_on_sigterm() -> None:
    """SIGTERM ends the preview like Ctrl-C does, so the temporary folder is removed."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
