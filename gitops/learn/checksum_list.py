"""Checksum lists of streaming datasets: the `sha256sum` format, written streamed, verified in parallel.

A dataset that streams files (`image_folder`, `parquet`, `array_record`) names a checksum list in the
repository (`checksums:`) and pins the list itself (`checksums_sha256:`). The data fingerprint and
`ci plan` hash only the pin, never the data. The list is what `sha256sum` writes and `sha256sum -c`
reads: one `<64 hex>  <path>` per line (`*<path>` for binary mode is accepted), paths relative to the
dataset's `path`, in sorted order.

Verification before the first step hashes every listed file in a thread pool (hashlib releases the GIL
on large buffers) and remembers each verified file by (absolute path, size, mtime_ns) -> SHA-256 in
`<data cache>/verified/<list pin>.json`, so a second run re-hashes only files that changed on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gitops import scratch
from gitops.checksums import sha256_file
from gitops.errors import GitopsError, IntegrityError, UsageError

_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


@dataclass(frozen=True)
class Entry:
    """One line of a checksum list: the path relative to the dataset root, its SHA-256, its line number."""

    path: str
    sha256: str
    line: int


def parse(text: str, label: str) -> list[Entry]:
    """Entries of a checksum list, in file order.

    Raises:
        GitopsError: a malformed line, an absolute or `..` path, a duplicate, or no entry at all
            (`label:line: ...`, exit 1).
    """
    entries: list[Entry] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise GitopsError(f"{label}:{number}: expected '<sha256>  <path>' (the sha256sum format), got {line[:80]!r}")
        sha, path = match.group(1).lower(), match.group(2)
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or "\\" in path:
            raise GitopsError(f"{label}:{number}: {path!r} must be a relative path inside the dataset folder")
        if path in seen:
            raise GitopsError(f"{label}:{number}: {path} is listed twice")
        seen.add(path)
        entries.append(Entry(str(pure), sha, number))
    if not entries:
        raise GitopsError(f"{label}: lists no files: the dataset is empty")
    return entries


def assign_splits(split_files: Mapping[str, Iterable[str]], listed: list[str],
                  label: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Which split each listed path belongs to under `split_files` (split name -> glob patterns).

    Returns `(path -> split name as written, problems)`; each problem is `(key, message)` with `key` the
    split whose pattern matches nothing (`"test"`) or "" for a file in no split or in two. Only the list
    is read, so `gitops validate` reports the same problems training would (issue 18).
    """
    import fnmatch

    problems: list[tuple[str, str]] = []
    for name, globs in split_files.items():
        for glob in globs:
            if not any(fnmatch.fnmatchcase(p, glob) for p in listed):
                problems.append((name, f"{glob!r} matches no file of {label}"))
    chosen: dict[str, str] = {}
    for path in listed:
        hits = [name for name, globs in split_files.items() if any(fnmatch.fnmatchcase(path, g) for g in globs)]
        if not hits:
            problems.append(("", f"{label}: {path} is in no split: it matches none of data.dataset.split_files"))
        elif len(hits) > 1:
            problems.append(("", f"{label}: {path} matches the split_files patterns of both {hits[0]} and {hits[1]}"))
        else:
            chosen[path] = hits[0]
    return chosen, problems


def list_files(folder: Path, *, exclude: Iterable[Path] = ()) -> list[str]:
    """Every regular file under `folder` (POSIX paths relative to it, sorted); hidden files and symlinks skipped.

    Raises:
        UsageError: `folder` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder" if folder.exists() else f"{folder}: no such folder")
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk does not follow symlinked folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = Path(dirpath) / name
            if name.startswith(".") or full.is_symlink() or full.resolve() in skip:
                continue
            found.append(full.relative_to(folder).as_posix())
    return sorted(found)


def write(folder: Path, out: Path | None = None, *, progress: Callable[[int, int], None] | None = None,
          workers: int | None = None) -> tuple[str, int]:
    """Hash every file under `folder` (streamed, in parallel) and return (list text, total bytes).

    `folder` may also be one file (a dataset whose `path` is that file): the list then names it alone,
    by its file name. With `out`, the list is also written there atomically (the list file itself is
    never listed). `progress(done_bytes, total_bytes)` is called as files finish.

    Raises:
        UsageError: `folder` does not exist (exit 2).
        GitopsError: `folder` holds no files (exit 1: the data, not the command line, is wrong).
    """
    folder = Path(folder)
    if folder.is_file():
        files, folder = [folder.name], folder.parent
    else:
        files = list_files(folder, exclude=[out] if out else ())
    if not files:
        raise GitopsError(f"{folder}: holds no files to list (hidden files and symlinks are not listed)")
    sizes = [(folder / f).stat().st_size for f in files]
    total, done = sum(sizes), 0
    lines = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for rel, size, digest in zip(files, sizes, pool.map(lambda f: sha256_file(folder / f), files), strict=True):
            lines.append(f"{digest}  {rel}\n")
            done += size
            if progress:
                progress(done, total)
    text = "".join(lines)
    if out is not None:
        write_atomic(Path(out), text)
    return text, total


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` so a reader or a crash never sees half a file
    (`gitops.scratch.write_text_atomic`, not fsynced: a lost list is rebuilt by its command)."""
    scratch.write_text_atomic(path, text, fsync=False)


def _memo_path(cache: Path, pin: str) -> Path:
    return cache / "verified" / f"{pin}.json"


def verify(base: Path, entries: list[Entry], *, label: str, pin: str, cache: Path | None,
           workers: int | None = None, check: Callable[[Path], str | None] | None = None) -> dict[str, str | None]:
    """Check that every listed file exists under `base` and has its listed SHA-256.

    Args:
        base: the dataset folder the list's paths are relative to, or the dataset's one file (then the
            list names that file alone, by its file name).
        entries: the parsed list.
        label: the list's name for messages (e.g. `models/x/data.sha256`).
        pin: the list's own SHA-256 (names the memo file).
        cache: the data cache folder (None: remember nothing).
        workers: hashing threads (default: CPU count, at most 8).
        check: optional content check run once per newly hashed file (e.g. "does the image decode?");
            returns a problem text or None; its answer is remembered with the hash.

    Returns:
        path -> problem text (or None) from `check` for every entry.

    Raises:
        GitopsError: a listed file is missing (exit 1, naming the list line and the file).
        IntegrityError: a file's SHA-256 differs from the list (exit 1, naming the file).
    """
    memo_file = _memo_path(cache, pin) if cache else None
    memo: dict[str, list] = {}
    if memo_file and memo_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
    stats = {}
    if base.is_file():  # a dataset of one file: the list names it by its file name, relative to its folder
        stray = next((e for e in entries if e.path != base.name), None)
        if stray is not None:
            raise GitopsError(f"{label}:{stray.line}: lists {stray.path}, but the dataset's path is the one file "
                              f"{base}: list only {base.name} (or point data.dataset.path at the folder)")
        base = base.parent
    for entry in entries:
        full = base / entry.path
        try:
            st = full.stat()
        except OSError:
            raise GitopsError(f"{label}:{entry.line}: lists {entry.path}, but {full} does not exist") from None
        if not full.is_file():
            raise GitopsError(f"{label}:{entry.line}: {full} is not a file")
        stats[entry.path] = (str(full.resolve()), st.st_size, st.st_mtime_ns)

    def known(entry: Entry) -> bool:
        key, size, mtime = stats[entry.path]
        hit = memo.get(key)
        return bool(hit) and hit[0] == size and hit[1] == mtime and hit[2] == entry.sha256

    todo = [e for e in entries if not known(e)]

    def work(entry: Entry) -> tuple[str, str | None]:
        full = base / entry.path
        digest = sha256_file(full)
        problem = check(full) if check and digest == entry.sha256 else None
        return digest, problem

    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for entry, (digest, problem) in zip(todo, pool.map(work, todo), strict=True):
                if digest != entry.sha256:
                    raise IntegrityError(
                        f"{base / entry.path}: SHA-256 mismatch (the list {label}:{entry.line} says {entry.sha256}, "
                        f"the file has {digest}); nothing was trained. Regenerate the list with "
                        "`gitops data checksums` if the change is intended"
                    )
                key, size, mtime = stats[entry.path]
                memo[key] = [size, mtime, digest, problem]
        if memo_file:
            with contextlib.suppress(OSError):
                write_atomic(memo_file, json.dumps(memo, sort_keys=True, allow_nan=False))
    return {e.path: memo[stats[e.path][0]][3] if len(memo[stats[e.path][0]]) > 3 else None for e in entries}
