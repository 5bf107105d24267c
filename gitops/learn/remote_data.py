"""Remote data files for the `url` dataset: fetched once, pinned by SHA-256, cached by hash.

`fetch(url, sha256)` returns a local path whose content has exactly that SHA-256:

- the cache is `~/.cache/gitops/data/<sha256>` (`$GITOPS_DATA_CACHE` names another folder); the file
  name *is* the pin, so two models or two URLs serving the same bytes share one copy, and a changed pin
  never reads a stale file. A cached file is hashed again on every use (a corrupt one is fetched anew);
- a download streams into a temporary file in the cache folder while hashing, is verified, and only
  then renamed into place (atomic), so an interrupted or wrong download never looks like a cached one;
- a hash mismatch is an `IntegrityError` (exit 1) naming the expected and the actual hash, raised while
  the data loads, before any model is built or step trained;
- connection errors, timeouts and HTTP 5xx/408/429 are retried with exponential backoff
  (`$GITOPS_DATA_RETRIES` attempts, 4 by default; first wait `$GITOPS_DATA_BACKOFF` s, 1 by default,
  doubling); still failing after that is a `ServiceError` (exit 3). Other HTTP errors (404, 403, ...)
  and a missing `file://` path are answers, not outages: exit 1 at once.

Schemes: `https://` and `http://` through httpx; `file://`, `s3://` and `gs://` through fsspec, whose
s3 and gs backends live in the optional packages s3fs and gcsfs (a clear error names the one to install).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gitops.checksums import sha256_file
from gitops.errors import GitopsError, IntegrityError, ServiceError, UsageError

CACHE_ENV = "GITOPS_DATA_CACHE"
RETRIES_ENV = "GITOPS_DATA_RETRIES"
BACKOFF_ENV = "GITOPS_DATA_BACKOFF"
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
CHUNK = 1 << 20
FSSPEC_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
RETRY_STATUS = frozenset({408, 429})


class _Transient(Exception):
    """A failure worth another try (connection refused/reset, timeout, 5xx)."""


def cache_dir() -> Path:
    """Where fetched files live: `$GITOPS_DATA_CACHE`, else `~/.cache/gitops/data`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "gitops" / "data"


def _env_number(name: str, default: float, cast: Callable[[str], float]) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise UsageError(f"${name}={raw!r} is not a number") from None


def fetch(
    url: str,
    sha256: str,
    *,
    cache: Path | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """The local, verified copy of `url` whose SHA-256 must be `sha256` (downloaded unless cached).

    Args:
        url: https://, http://, file://, s3:// or gs:// location of the file.
        sha256: the pin (64 lowercase hex digits), from data.yaml.
        cache: cache folder (default `cache_dir()`).
        attempts: tries for transient failures (default `$GITOPS_DATA_RETRIES` or 4).
        backoff: first wait between tries in seconds, doubled each time (default `$GITOPS_DATA_BACKOFF` or 1).
        sleep: how to wait (tests pass a recorder).

    Raises:
        IntegrityError: the downloaded bytes have another SHA-256 (exit 1).
        ServiceError: still failing after the retries (exit 3).
        GitopsError: the server answered a definite error such as 404 (exit 1).
        UsageError: an unsupported scheme, or the fsspec backend's package is not installed (exit 2).
    """
    sha256 = sha256.lower()
    folder = Path(cache) if cache is not None else cache_dir()
    target = folder / sha256
    if target.is_file():
        if sha256_file(target) == sha256:
            return target
        target.unlink(missing_ok=True)  # corrupted in place: fetch it again
    opener = _opener(url)
    attempts = int(attempts if attempts is not None else _env_number(RETRIES_ENV, DEFAULT_ATTEMPTS, int))
    backoff = float(backoff if backoff is not None else _env_number(BACKOFF_ENV, DEFAULT_BACKOFF_S, float))
    folder.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(max(1, attempts)):
        if attempt:
            sleep(min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1)))
        fd, tmp_name = tempfile.mkstemp(prefix=f".{sha256[:16]}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _copy_hashing(opener, url, out)
            if actual != sha256:
                raise IntegrityError(
                    f"data URL {url}: SHA-256 mismatch (expected {sha256}, got {actual}); nothing was trained. "
                    "Update data.dataset.sha256 if the new content is intended"
                )
            os.replace(tmp, target)
            return target
        except _Transient as exc:
            last = exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    raise ServiceError(f"data URL {url}: still failing after {tries}: {last}")


def _copy_hashing(opener: Callable[[str], contextlib.AbstractContextManager[BinaryIO]], url: str, out: BinaryIO) -> str:
    digest = hashlib.sha256()
    with opener(url) as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _opener(url: str) -> Callable[[str], contextlib.AbstractContextManager[BinaryIO]]:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return _http_stream
    if scheme in ("file", *FSSPEC_PACKAGES):
        return _fsspec_stream
    raise UsageError(f"data URL {url}: unsupported scheme {scheme or '(none)'!r}; use https, http, file, s3 or gs")


class _HttpBody:
    """A file-like `read(n)` over an httpx streaming response (network errors become _Transient)."""

    def __init__(self, response):
        self._chunks = response.iter_bytes(CHUNK)
        self._buffer = b""

    def read(self, n: int) -> bytes:
        import httpx

        try:
            while len(self._buffer) < n:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer += chunk
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        block, self._buffer = self._buffer[:n], self._buffer[n:]
        return block


@contextlib.contextmanager
def _http_stream(url: str):
    import httpx

    try:
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            with client.stream("GET", url) as response:
                status = response.status_code
                if status >= 500 or status in RETRY_STATUS:
                    raise _Transient(f"HTTP {status} {response.reason_phrase}")
                if status >= 400:
                    raise GitopsError(f"data URL {url}: the server answered HTTP {status} {response.reason_phrase}")
                yield _HttpBody(response)
    except httpx.TransportError as exc:  # connection refused/reset, DNS, timeouts
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _fsspec_stream(url: str):
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"data URL {url}: file, s3 and gs URLs need the package fsspec (pip install fsspec)") from None
    scheme = url.split("://", 1)[0].lower()
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError:
        package = FSSPEC_PACKAGES.get(scheme, scheme)
        raise UsageError(
            f"data URL {url}: {scheme}:// URLs need the package {package}, which is not installed (pip install {package})"
        ) from None
    try:
        with fs.open(path, "rb") as stream:
            yield stream
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise GitopsError(f"data URL {url}: {type(exc).__name__}: {exc}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # remote filesystems surface outages as OSError subclasses
        if scheme == "file":
            raise GitopsError(f"data URL {url}: {exc}") from None
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
