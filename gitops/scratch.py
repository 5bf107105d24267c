"""Scratch folders that a killed process leaves behind are found and removed by the next one.

Every temporary folder gitops creates beside its target (a pull, a release's packaging, a staged
release, a run copied into the cache) is named `<prefix><host>-<pid>-<random>`. A later command
calls `sweep(parent, prefix)`, which removes those whose process is gone (same host, pid not alive),
so SIGKILL, SIGTERM or a power cut leave at most one stale folder until the next command; a folder of
a live process (a concurrent pull) is never touched. Folders on a shared file system made by
another host are left alone (their pid means nothing here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _host() -> str:
    import socket  # only here: a quarter of a millisecond of every command's start-up otherwise

    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def make(parent: Path, prefix: str) -> Path:
    """Create and return a new scratch folder in `parent` (created too), named for this process."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # not at start-up: `ci plan` reads tags through the local backend (tests/test_startup.py)

    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_host()}-{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep(parent: Path, prefix: str) -> list[Path]:
    """Remove the scratch folders (and files) `prefix*` in `parent` left by dead processes of this host."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    host = _host()
    removed = []
    for path in parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        rest = path.name[len(prefix):]
        owner, _, tail = rest.partition("-")
        pid_text = tail.partition("-")[0]
        if owner != host or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_text_atomic(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write `text` (UTF-8) to `path` so that a reader, or a crash, sees the old file or the new one,
    never half of one: a temporary sibling (`.<name>.*.tmp`), flushed and (with `fsync`) synced to
    disk, then renamed over `path` (`os.replace`, atomic on POSIX). Creates the parent folder; a failed
    write removes its temporary file. The one atomic text writer of the package (run files, checksum
    lists, the release spool, migrated and sweep-applied model files).

    Raises:
        OSError: the folder is not writable or the disk is full (`path` is then unchanged).
    """
    import tempfile  # not at start-up: `validate` and `ci plan` stay light (tests/test_startup.py)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
