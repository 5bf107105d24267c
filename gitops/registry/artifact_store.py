"""Release archives in an object store the team owns (S3, GCS, Azure or a folder), through fsspec.

Configured by `gitops.yaml`'s `artifacts:` (`url`, optional `endpoint_url`, `part_size_mb`). Layout,
content-addressed like DVC's cache and git's object store:

    <prefix>/sha256/<first two hex>/<sha256>      one object per archive part (or the whole archive)
    <prefix>/tmp/<sha256>.<random>                 file:// only: an upload in flight (renamed into place)

- a part is streamed in blocks of `block_size_mb` (s3fs/gcsfs/adlfs make that a multipart, resumable or
  block-list upload, which the store publishes only when it completes: S3's CompleteMultipartUpload,
  GCS's final chunk, Azure's Put Block List), so a reader never sees a partial object; a `file://`
  store writes a temporary file and renames it. An upload killed midway leaves an incomplete multipart
  upload, invisible to readers (a bucket lifecycle rule AbortIncompleteMultipartUpload reclaims it)
  or, for a folder, a file under `tmp/` that `gc --artifacts` removes after the grace period; a part
  whose final key already exists with the same size is skipped (re-releases and retries cost nothing);
- every object is read back by size after the move (`verify`); readers hash every byte they fetch
  against the sha256 the tag recorded, so a tampered object is refused (`IntegrityError`, exit 1);
- fetched objects go to the hash-keyed cache shared with remote data (`remote_data.cache_dir()`);
- failures are retried with exponential backoff (`attempts`, `backoff_s`); still failing is a
  `ServiceError` (exit 3) naming the URL and the SDK's reason. Credentials come only from each SDK's
  own environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*); they are never in the
  config, and any value of those variables found in an error message is masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops import jsonio, killpoints
from gitops.checksums import sha256_file
from gitops.config.settings import StoreSettings
from gitops.errors import GitopsError, IntegrityError, ServiceError, UsageError
from gitops.registry import archive as archive_format

CHUNK = 1 << 20
FETCH_CHUNK = 8 << 20
PROGRESS_MIN_BYTES = 64 << 20  # smaller archives upload without progress lines
PARALLEL_PARTS = 4  # parts of a split archive uploaded at once (each is its own object)
SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "file": None}
OBJECTS_SUFFIX = archive_format.OBJECTS_SUFFIX
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET")


@dataclass(frozen=True)
class StoredObject:
    """One archive part in the store: its file name in SHA256SUMS, sha256 (hex), size (bytes), URL."""

    name: str
    sha256: str
    size: int
    url: str

    def as_dict(self) -> dict:
        """The object as the JSON entry of the tag message and `<archive>.objects.json`."""
        return {"name": self.name, "sha256": self.sha256, "size": self.size, "url": self.url}


def _mask(text: str) -> str:
    for var in _SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class ArtifactStore:
    """A content-addressed object store at `settings.url` (see the module docstring)."""

    def __init__(self, settings: StoreSettings, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self._sleep = sleep
        self._fs: Any = None
        self._root = ""
        self._scheme = self.url.split("://", 1)[0].lower()

    # --- plumbing ---------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec filesystem for `url`, made on first use (S3 with one SDK attempt: our retries apply).

        Raises UsageError for a scheme other than s3, gs, az or file, or when its fsspec package
        (s3fs, gcsfs, adlfs) is not installed.
        """
        if self._fs is None:
            import fsspec

            scheme = self.url.split("://", 1)[0].lower()
            if scheme not in SCHEMES:
                raise UsageError(f"artifacts.url {self.url}: unsupported scheme {scheme!r}; use s3, gs, az or file")
            options: dict[str, Any] = {}
            if scheme == "s3":  # one retry loop (ours, with the configured attempts), not three nested ones
                options["config_kwargs"] = {"retries": {"max_attempts": 1, "mode": "standard"}}
                if self.settings.endpoint_url:
                    options["endpoint_url"] = self.settings.endpoint_url
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url, **options)
            except ImportError:
                package = SCHEMES[scheme]
                raise UsageError(f"artifacts.url {self.url}: {scheme}:// stores need the package {package} "
                                 f"(pip install {package})") from None
            self._root = self._root.rstrip("/")
            if scheme == "s3":
                self._fs.retries = 1
        return self._fs

    def key(self, sha256: str) -> str:
        """The object key (fsspec path, no scheme) of the part with this sha256."""
        _ = self.fs
        return f"{self._root}/sha256/{sha256[:2]}/{sha256}"

    def object_url(self, sha256: str) -> str:
        """The full URL of the object holding the part with this sha256 (64 hex digits):
        `<url>/sha256/<first two hex>/<sha256>`.
        """
        return f"{self.url}/sha256/{sha256[:2]}/{sha256}"

    def _call(self, what: str, url: str, fn: Callable[[], Any]) -> Any:
        """`fn()` with retries; FileNotFoundError passes through; the rest ends as ServiceError (exit 3)."""
        attempts = max(1, int(self.settings.attempts))
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(min(30.0, self.settings.backoff_s * 2 ** (attempt - 1)))
            try:
                return fn()
            except (FileNotFoundError, GitopsError):
                raise
            except Exception as exc:  # noqa: BLE001 - every SDK has its own error classes
                last = exc
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        raise ServiceError(_mask(f"artifact store: {what} {url} still failing after {tries}: "
                                 f"{type(last).__name__}: {last}"))

    def size_of(self, sha256: str) -> int | None:
        """The stored object's size in bytes, None when absent."""
        key = self.key(sha256)

        def info() -> int | None:
            try:
                return int(self.fs.info(key)["size"])
            except FileNotFoundError:
                return None

        return self._call("looking up", self.object_url(sha256), info)

    # --- writing ----------------------------------------------------------------------------
    def put_range(self, path: Path, start: int, length: int, sha256: str, name: str,
                  progress: Callable[[int], None] | None = None) -> StoredObject:
        """Upload bytes [start, start+length) of `path`, whose sha256 is `sha256`, as one object.

        Skipped when the object already exists with this size. Written to a temporary key, then moved
        into place and its size read back.

        Raises:
            ServiceError: the store kept failing (exit 3). IntegrityError: it stored another size.
        """
        url = self.object_url(sha256)
        if self.size_of(sha256) == length:
            if progress:
                progress(length)
            return StoredObject(name, sha256, length, url)
        final = self.key(sha256)
        from fsspec.implementations.local import LocalFileSystem

        local = isinstance(self.fs, LocalFileSystem)
        # Object stores publish an object only when its (multipart) upload completes, so writing the final
        # key is already all-or-nothing there; a folder needs a temporary file and a rename.
        tmp = f"{self._root}/tmp/{sha256}.{secrets.token_hex(6)}" if local else final
        block = max(5, int(self.settings.block_size_mb)) * 1024**2

        whole = start == 0 and length == path.stat().st_size

        def upload() -> None:
            fs = self.fs
            if whole:  # fsspec's own upload: concurrent multipart parts (s3fs), resumable chunks (gcsfs), blocks (adlfs)
                if local:
                    fs.makedirs(fs._parent(tmp), exist_ok=True)
                options = {"chunksize": block} if self._scheme in ("s3", "gs", "gcs") else {}
                callback = _upload_callback(length, progress)
                fs.put_file(str(path), tmp, callback=callback, **options)
                callback.finish()
                if local:  # the kernel's copy, then a rename
                    killpoints.reached("release.uploading")
                    fs.makedirs(fs._parent(final), exist_ok=True)
                    fs.mv(tmp, final)
                return
            if local:
                fs.makedirs(fs._parent(tmp), exist_ok=True)
            with open(path, "rb") as src, fs.open(tmp, "wb", block_size=block) as out:
                src.seek(start)
                left = length
                while left:
                    data = src.read(min(CHUNK, left))
                    if not data:
                        raise GitopsError(f"{path} is shorter than expected")
                    out.write(data)
                    left -= len(data)
                    if progress:
                        progress(len(data))
                killpoints.reached("release.uploading")  # bytes sent, object not yet in place
            if local:
                fs.makedirs(fs._parent(final), exist_ok=True)
                fs.mv(tmp, final)  # a rename: atomic

        try:
            self._call("uploading", url, upload)
        except FileNotFoundError as exc:
            raise GitopsError(f"artifact store: cannot write {url}: the bucket or folder does not exist "
                              f"({_mask(str(exc))}); create it or fix gitops.yaml's artifacts.url") from None
        finally:
            if local:
                with contextlib.suppress(Exception):
                    self.fs.rm(tmp)
        got = self.size_of(sha256)
        if got != length:
            raise IntegrityError(f"artifact store: {url} reads back with {got} bytes, {length} were sent")
        return StoredObject(name, sha256, length, url)

    # --- reading ----------------------------------------------------------------------------
    def fetch(self, obj: StoredObject, cache: Path | None = None) -> Path:
        """The local, verified copy of `obj` in the shared hash-keyed cache (downloaded unless cached).

        Raises:
            IntegrityError: the object's bytes have another sha256 or size (tampered; exit 1).
            GitopsError: the object is not in the store (exit 1). ServiceError: store outage (exit 3).
        """
        from gitops.learn import remote_data

        folder = Path(cache) if cache is not None else remote_data.cache_dir()
        target = folder / obj.sha256
        if target.is_file() and target.stat().st_size == obj.size and sha256_file(target) == obj.sha256:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{obj.sha256[:16]}.{secrets.token_hex(4)}.part"
        key = self.key(obj.sha256)

        def download() -> str:
            digest = hashlib.sha256()
            pending = None
            with ThreadPoolExecutor(max_workers=1) as hasher, \
                    self.fs.open(key, "rb", block_size=max(5, int(self.settings.block_size_mb)) * 1024**2) as src, \
                    open(tmp, "wb") as out:
                for block in iter(lambda: src.read(FETCH_CHUNK), b""):
                    if pending is not None:
                        pending.result()
                    pending = hasher.submit(digest.update, block)  # hashlib drops the GIL: overlaps the write
                    out.write(block)
                if pending is not None:
                    pending.result()
            return digest.hexdigest()

        try:
            try:
                got = self._call("downloading", obj.url, download)
            except FileNotFoundError:
                raise GitopsError(f"artifact store: {obj.url} does not exist (removed by gc, or another store?)") from None
            if got != obj.sha256 or tmp.stat().st_size != obj.size:
                raise IntegrityError(f"artifact store: {obj.url} is tampered or corrupt: its sha256 is {got[:16]}…, "
                                     f"the release records {obj.sha256[:16]}…; refusing it")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    # --- gc -----------------------------------------------------------------------------------
    def list_objects(self) -> list[tuple[str, str, float | None]]:
        """(sha256 or temporary name, fsspec key, last-modified as a UNIX time or None) of every object."""
        fs = self.fs
        out = []
        for sub in ("sha256", "tmp"):
            base = f"{self._root}/{sub}"

            def find(base: str = base) -> dict:
                try:
                    return fs.find(base, detail=True)
                except FileNotFoundError:
                    return {}

            for key, info in sorted(self._call("listing", f"{self.url}/{sub}", find).items()):
                out.append((key.rsplit("/", 1)[-1] if sub == "sha256" else "", key, _mtime(info)))
        return out

    def remove(self, key: str) -> None:
        """Delete the object at `key` (an fsspec path, as `list_objects` gives it); one already gone is no error.

        Raises ServiceError (exit 3) when the store still fails after the configured retries.
        """
        with contextlib.suppress(FileNotFoundError):  # already gone (another gc)
            self._call("removing", key, lambda: self.fs.rm(key))


def _upload_callback(total: int, progress: Callable[[int], None] | None):
    """An fsspec upload callback that forwards byte counts to `progress` and, once every byte is sent (before
    the store publishes the object, e.g. S3's CompleteMultipartUpload), reaches the `release.uploading` kill
    point. Its `finish()` reports what the filesystem did not (a local copy reports nothing)."""
    from fsspec.callbacks import Callback

    class Uploaded(Callback):
        sent = 0
        killed = False

        def call(self, *args, **kwargs) -> None:
            self._forward(self.value)
            if self.size and self.value >= self.size and not self.killed:
                self.killed = True
                killpoints.reached("release.uploading")

        def _forward(self, value: int) -> None:
            delta, self.sent = value - self.sent, max(self.sent, value)
            if delta > 0 and progress:
                progress(delta)

        def finish(self) -> None:
            self._forward(total)

    return Uploaded(size=total)


def _mtime(info: dict) -> float | None:
    for field in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        with contextlib.suppress(ValueError):
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return None


# --- settings ---------------------------------------------------------------------------------------


def for_tree(tree: Any) -> ArtifactStore | None:
    """The store `gitops.yaml` in `tree` configures, or None (release assets stay with the backend)."""
    from gitops.config import settings as settings_mod

    spec = settings_mod.load_settings(tree).artifacts
    return ArtifactStore(spec) if spec is not None else None


def for_root(root: Path | None) -> ArtifactStore | None:
    """The store the working folder's gitops.yaml configures (see `for_tree`); None without one or a root."""
    if root is None:
        return None
    from gitops.repo.tree import FsTree

    return for_tree(FsTree(Path(root)))


# --- releases -------------------------------------------------------------------------------------


def publish_archive(store: ArtifactStore, archive: Path, out_dir: Path, sha256: str | None = None,
                    ) -> tuple[list[Path], list[dict]]:
    """Upload `archive` (whole, or in parts of `part_size_mb`) and write the small assets beside it.

    `sha256`: the archive's, when the caller already hashed it (saves a pass when it is one object).

    Returns ([SHA256SUMS, <archive>.objects.json], the objects as dicts for the tag message). SHA256SUMS
    lists the archive and, when split, each part, exactly as for backend-held parts.
    """
    total = archive.stat().st_size
    part = store.settings.part_size_mb
    size = part * 1024**2 if part else max(total, 1)
    ranges = [(i, min(size, total - i)) for i in range(0, total, size)] or [(0, 0)]
    name = archive.name
    names = [name] if len(ranges) == 1 else [archive_format.part_name(name, i) for i in range(len(ranges))]
    report = _progress(name, total)
    if len(ranges) == 1:
        whole = sha256 or sha256_file(archive)
        objects = [store.put_range(archive, 0, total, whole, name, report)]
    else:
        def one(i: int) -> StoredObject:  # hash the part, then upload it; parts go up side by side
            start, length = ranges[i]
            return store.put_range(archive, start, length, _range_sha256(archive, start, length), names[i], report)

        _ = store.fs  # made once, before the threads share it
        with ThreadPoolExecutor(max_workers=min(PARALLEL_PARTS, len(ranges))) as pool:
            objects = list(pool.map(one, range(len(ranges))))
        whole = sha256 or sha256_file(archive)
    sums = [(name, whole)] + ([(o.name, o.sha256) for o in objects] if len(objects) > 1 else [])
    sums_path = archive_format.write_sums(out_dir, sums)
    listing = out_dir / (name + OBJECTS_SUFFIX)
    docs = [o.as_dict() for o in objects]
    listing.write_text(jsonio.dumps({"archive": name, "sha256": whole, "size": total, "objects": docs},
                                    indent=1) + "\n", encoding="utf-8")
    return [sums_path, listing], docs


def _range_sha256(path: Path, start: int, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left:
            block = fh.read(min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _progress(name: str, total: int) -> Callable[[int], None] | None:
    """Progress lines on stderr (every 10%) for archives of PROGRESS_MIN_BYTES or more."""
    if total < PROGRESS_MIN_BYTES:
        return None
    import threading

    state = {"done": 0, "shown": 0}
    lock = threading.Lock()  # parts upload side by side

    def report(n: int) -> None:
        with lock:
            state["done"] += n
            tenth = state["done"] * 10 // total
            if tenth <= state["shown"]:
                return
            state["shown"] = tenth
            sys.stderr.write(f"uploading {name}: {state['done'] / 1024**2:.0f}/{total / 1024**2:.0f} MiB\n")

    return report


def objects_from_meta(meta: dict) -> list[StoredObject]:
    """The tag's record of where each part lives (raises IntegrityError when malformed)."""
    out = []
    for doc in meta.get("objects") or []:
        try:
            obj = StoredObject(str(doc["name"]), str(doc["sha256"]).lower(), int(doc["size"]), str(doc["url"]))
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"the release's objects list has a malformed entry: {str(doc)[:120]}") from None
        if len(obj.sha256) != 64 or "/" in obj.name or obj.name.startswith("."):
            raise IntegrityError(f"the release's objects list has a malformed entry: {str(doc)[:120]}")
        out.append(obj)
    return out


def store_for_objects(objects: list[StoredObject], root: Path | None) -> ArtifactStore:
    """The configured store when it holds these URLs (its endpoint and options), else one at their prefix.

    `root` None: the repository around the working folder, if any (a server or the site outside one
    reaches the store with the SDK's own settings, e.g. $AWS_ENDPOINT_URL)."""
    if root is None:
        from gitops.config import find_root

        with contextlib.suppress(GitopsError):
            root = find_root()
    configured = for_root(root)
    prefix = objects[0].url.split("/sha256/", 1)[0]
    if configured is not None and configured.url == prefix.rstrip("/"):
        return configured
    endpoint = configured.settings.endpoint_url if configured is not None else None
    return ArtifactStore(StoreSettings(url=prefix, endpoint_url=endpoint))


def fetch_archive(objects: list[StoredObject], sums: dict[str, str], archive_name: str, work: Path,
                  root: Path | None) -> Path:
    """Fetch every part from the store (cached by hash, verified), join them into `work/<archive>`.

    Each part's sha256 must be the one SHA256SUMS lists for its name; the joined archive's is checked
    by the caller against SHA256SUMS and the tag.
    """
    store = store_for_objects(objects, root)
    work.mkdir(parents=True, exist_ok=True)
    archive = work / archive_name
    for obj in objects:
        if sums.get(obj.name) != obj.sha256:
            raise IntegrityError(f"SHA256SUMS does not list {obj.name} with the sha256 the tag records")
    if len(objects) == 1:
        cached = store.fetch(objects[0])
        try:
            os.link(cached, archive)
        except OSError:
            shutil.copyfile(cached, archive)
        return archive
    _ = store.fs  # made once, before the threads share it
    with ThreadPoolExecutor(max_workers=min(PARALLEL_PARTS, len(objects))) as pool:  # parts come down side by side
        cached = list(pool.map(store.fetch, objects))
    return archive_format.join_parts(cached, archive, remove=False)


def referenced(tag_messages: list[str]) -> set[str]:
    """Every sha256 that a release tag's objects list names."""
    from gitops.registry.versions import release_metadata

    keep = set()
    for message in tag_messages:
        for doc in release_metadata(message).get("objects") or []:
            if isinstance(doc, dict) and isinstance(doc.get("sha256"), str):
                keep.add(doc["sha256"].lower())
    return keep


def gc(store: ArtifactStore, tag_messages: list[str], *, grace_s: float, dry_run: bool,
       now: float | None = None) -> list[str]:
    """Remove objects no tag references (and abandoned temporary uploads) older than `grace_s` seconds.

    Returns the URLs removed (or, with `dry_run`, that would be). Objects whose age the store does not
    report are kept.
    """
    keep = referenced(tag_messages)
    now = time.time() if now is None else now
    removed = []
    for sha, key, mtime in store.list_objects():
        if sha and sha in keep:
            continue
        if mtime is None or now - mtime < grace_s:
            continue
        url = store.object_url(sha) if sha else f"{store.url}/tmp/{key.rsplit('/', 1)[-1]}"
        removed.append(url)
        if not dry_run:
            store.remove(key)
    return removed


def parse_duration(text: str) -> float:
    """'24h', '30m', '2d', '90s' or plain seconds -> seconds. Raises UsageError otherwise."""
    raw = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if raw and raw[-1] in units:
            value = float(raw[:-1]) * units[raw[-1]]
        else:
            value = float(raw)
    except ValueError:
        raise UsageError(f"--grace {text!r}: expected a duration such as 24h, 30m, 2d or seconds") from None
    if value < 0:
        raise UsageError(f"--grace {text!r} is negative")
    return value
