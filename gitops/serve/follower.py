"""Following a stage: poll where `MODEL@STAGE` points, load the new version beside the old, switch.

The switch is one reference assignment (`ServingState.current`), so a request sees either the old
version or the new one, never a mix. A version that fails to fetch, verify, load or warm is recorded
(state UNAVAILABLE with the error, on `/v1/models/<name>`) and the old version keeps serving; the
follower does not retry that version until the stage points elsewhere and back again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gitops.serve.version import ServedVersion

log = logging.getLogger("gitops.serve")

AVAILABLE, LOADING, UNAVAILABLE, END = "AVAILABLE", "LOADING", "UNAVAILABLE", "END"


class VersionSource(Protocol):
    """Where the version to serve comes from: a fixed folder, a released version, or a stage."""

    follows: bool  # True when `current()` may change over time (a stage, or the latest release)

    def describe(self) -> str:
        """Human-readable, e.g. `digits-mlp@production`."""

    def current(self) -> str:
        """The version to serve now (cheap: called every poll)."""

    def fetch(self, version: str) -> Path:
        """A verified folder holding `version` (may download; raises on a checksum mismatch)."""


@dataclass
class FixedSource:
    """One folder, served as `version` (a run folder or an already pulled release)."""

    path: Path
    version: str
    follows: bool = False

    def describe(self) -> str:
        """The folder's path, for log lines."""
        return str(self.path)

    def current(self) -> str:
        """The fixed version label (never changes: `follows` is False)."""
        return self.version

    def fetch(self, version: str) -> Path:
        """The folder itself: it is already on disk, nothing is downloaded or verified here."""
        return self.path


class RegistrySource:
    """A released version, the latest release, or a stage, read from the registry's tags.

    Args:
        root: the repository whose tags (and, for the local backend, `.gitops/releases/`) hold releases.
        ref: `MODEL@v1.2.0`, `MODEL@STAGE` or `MODEL` (the latest release).
        cache_dir: where fetched versions are unpacked (`<cache_dir>/<model>/<version>`); `gitops pull`'s
            default folder (`.gitops/pulled/`) when None, so both share what they downloaded.
        backend: a `gitops.backends.Backend`; the default one for `root` when None.
    """

    def __init__(self, root: Path, ref: str, cache_dir: Path | None = None, *, backend=None):
        from gitops.registry import tags

        self.root = Path(root)
        self.ref = tags.parse_ref(ref)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._backend = backend
        self.follows = self.ref.version is None

    @property
    def backend(self):
        """The registry backend: the one given, else `gitops.backends.get_backend(None, root)` on first use."""
        if self._backend is None:
            from gitops.backends import get_backend

            self._backend = get_backend(None, self.root)
        return self._backend

    def describe(self) -> str:
        """The reference as given, e.g. `digits-mlp@production`."""
        return str(self.ref)

    def current(self) -> str:
        """The SemVer (e.g. `v1.2.0`) the reference resolves to now, read from the registry's tags.

        Raises the registry's GitopsError when the model, version or stage is unknown; the follower logs it
        and keeps serving.
        """
        from gitops.registry import versions

        return versions.resolve(self.backend, self.ref)[1].version

    def fetch(self, version: str) -> Path:
        """Pull `version` (download, verify SHA256SUMS and the tag's checksum, unpack)."""
        from gitops.registry import pull

        dest = self.cache_dir / self.ref.model / version if self.cache_dir is not None else None
        return Path(pull.pull(self.root, self.backend, f"{self.ref.model}@{version}", dest))


# --- the state the server reads and the follower writes -----------------------------------------


@dataclass(frozen=True)
class VersionStatus:
    """What happened to one version the follower saw, for TF Serving's `model_version_status`.

    `number` is TF Serving's integer version (`version_number`), `since` a Unix time in seconds.
    """

    version: str
    number: int
    state: str  # AVAILABLE | LOADING | UNAVAILABLE | END
    error: str = ""
    since: float = 0.0

    def as_tf(self) -> dict:
        """TF Serving's `model_version_status` entry, plus our SemVer."""
        return {
            "version": str(self.number),
            "state": self.state,
            "status": {"error_code": "UNKNOWN" if self.error else "OK", "error_message": self.error},
            "semver": self.version,
        }


class ServingState:
    """The version now serving (one reference) and what happened to every version seen."""

    def __init__(self, model: str, stage: str | None = None):
        self.model = model
        self.stage = stage
        self.current: ServedVersion | None = None
        self._statuses: dict[str, VersionStatus] = {}
        self._lock = threading.Lock()  # guards `_statuses` only; readers of `current` take no lock
        self.on_switch: Callable[[ServedVersion], None] | None = None

    @property
    def ready(self) -> bool:
        """True when a version is serving and has been warmed (what `/readyz` answers)."""
        current = self.current
        return current is not None and current.warmed

    def set_status(self, version: str, number: int, state: str, error: str = "") -> None:
        """Record `version`'s state (AVAILABLE, LOADING, UNAVAILABLE or END) and why, stamped with the time now."""
        with self._lock:
            self._statuses[version] = VersionStatus(version, number, state, error, time.time())

    def statuses(self) -> list[VersionStatus]:
        """Every version seen, newest status change first (a copy, safe to read while the follower writes)."""
        with self._lock:
            return sorted(self._statuses.values(), key=lambda s: s.since, reverse=True)

    def switch(self, new: ServedVersion) -> ServedVersion | None:
        """Make `new` the serving version (one assignment); returns the previous one."""
        old, self.current = self.current, new
        self.set_status(new.version, new.number, AVAILABLE)
        if old is not None and old.version != new.version:
            self.set_status(old.version, old.number, END)
        if self.on_switch is not None:
            self.on_switch(new)
        return old


class Follower:
    """Keeps `state.current` on the version `source` names, loading and warming new ones first.

    Args:
        state: what the server reads.
        source: where the version comes from.
        load: `(folder, version) -> ServedVersion` (loads, does not warm).
        poll_seconds: how often to ask `source` again (only when `source.follows`).
        on_failure: called with (version, message) when a version is refused (metrics).
    """

    def __init__(self, state: ServingState, source: VersionSource,
                 load: Callable[[Path, str], ServedVersion], *, poll_seconds: float = 10.0,
                 on_failure: Callable[[str, str], None] | None = None):
        self.state = state
        self.source = source
        self.load = load
        self.poll_seconds = poll_seconds
        self.on_failure = on_failure
        self.failed: dict[str, str] = {}  # version -> why it was refused
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Poll once; switch if the source names another version. Returns True when it switched."""
        from gitops.serve.version import version_number

        try:
            version = self.source.current()
        except Exception as exc:  # the registry is unreadable right now: keep serving, try again later
            self.last_error = f"cannot resolve {self.source.describe()}: {exc}"
            log.warning("%s", self.last_error)
            return False
        current = self.state.current
        if current is not None and current.version == version:
            self.failed.clear()  # back on a good version: a later move to a failed one is retried
            return False
        if version in self.failed:
            return False
        number = _safe_number(version, version_number)
        self.state.set_status(version, number, LOADING)
        log.info("loading %s %s", self.state.model, version)
        started = time.perf_counter()
        try:
            folder = self.source.fetch(version)
            new = self.load(folder, version)
            if new.model != self.state.model:
                raise ValueError(f"{folder} holds model {new.model!r}, not {self.state.model!r}")
            new.warm()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(type(exc).__name__) else str(exc)
            self.failed[version] = message
            self.state.set_status(version, number, UNAVAILABLE, message)
            keep = f"; still serving {current.version}" if current is not None else ""
            log.error("refused %s %s: %s%s", self.state.model, version, message, keep)
            if self.on_failure is not None:
                self.on_failure(version, message)
            return False
        old = self.state.switch(new)
        one = new.predict_seconds.get(new.buckets[0])
        log.info("serving %s %s (warmed in %.2fs%s)%s", self.state.model, version, time.perf_counter() - started,
                 f"; a batch of {new.buckets[0]} predicts in {one * 1e3:.3f} ms" if one is not None else "",
                 f", replaced {old.version}" if old is not None else "")
        return True

    def run(self) -> None:
        """Poll until stopped: once for a fixed source, every `poll_seconds` for a stage or the latest release.

        The thread body `start` runs; errors of one poll are logged and never end the loop.
        """
        self.check_once()
        while not self._stop.is_set():
            if self.state.current is not None and not self.source.follows:
                return  # a fixed version, loaded: nothing left to do
            if self._stop.wait(self.poll_seconds):
                return
            self.check_once()

    def start(self) -> threading.Thread:
        """Run `run` in a daemon thread named `gitops-follower`; returns the thread."""
        self._thread = threading.Thread(target=self.run, name="gitops-follower", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the poll loop to end and wait up to `timeout` seconds for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _safe_number(version: str, fn: Callable[[str], int]) -> int:
    try:
        return fn(version)
    except Exception:
        return 0
