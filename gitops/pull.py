"""Pull a released version: download, verify every checksum, join parts, extract safely, rename.

Nothing is left behind on failure: all work happens in a temporary folder beside the target, which
appears (by one rename) only after every check passed. The archive's checksum is checked against
SHA256SUMS *and* against the release tag's message, so a swapped asset plus a swapped SHA256SUMS is
still caught.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from gitops import jsonio, killpoints, registry_ops, scratch, tags
from gitops.backends.base import Backend
from gitops.checksums import sha256_file
from gitops.errors import IntegrityError, UsageError

PULLED_DIR = Path(".gitops") / "pulled"
MAX_MEMBERS = 100_000
MAX_EXTRACTED_BYTES = 64 * 1024**3


def parse_sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        digest, _, name = line.partition("  ")
        name = name.lstrip("*")
        if len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise IntegrityError(f"SHA256SUMS has a malformed line: {line[:120]!r}")
        sums[name] = digest.lower()
    return sums


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse anything that could land outside `dest` or isn't a plain file or folder."""
    name = member.name
    path = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or path.is_absolute() or ":" in path.parts[0] or "\\" in name:
        raise IntegrityError(f"archive member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise IntegrityError(f"archive member {name!r} points outside the target ('..'); refusing to extract")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = path.parent if member.issym() else PurePosixPath(".")
        resolved = os.path.normpath(str(base / target))
        if target.is_absolute() or resolved.startswith("..") or resolved.startswith("/"):
            raise IntegrityError(f"archive member {name!r} links outside the target ({member.linkname!r})")
        raise IntegrityError(f"archive member {name!r} is a link; release archives hold plain files only")
    if not (member.isfile() or member.isdir()):
        raise IntegrityError(f"archive member {name!r} is a device, fifo or other special file; refusing it")
    full = (dest / name).resolve()
    if not full.is_relative_to(dest.resolve()):
        raise IntegrityError(f"archive member {name!r} resolves outside the target")


def check_layout(members: list[tarfile.TarInfo]) -> None:
    """Refuse members that collide: one path twice as a file, or as a file and a folder, or a file used
    as another member's folder (extracting those raises IsADirectoryError or silently overwrites)."""
    kinds: dict[str, str] = {}
    for member in members:
        key = os.path.normpath(member.name)
        kind = "folder" if member.isdir() else "file"
        seen = kinds.get(key)
        if seen is not None and (seen != kind or kind == "file"):
            raise IntegrityError(f"archive member {member.name!r} appears twice (as a {seen} and a {kind}); "
                                 "refusing to extract")
        kinds[key] = kind
    for key in kinds:
        for parent in PurePosixPath(key).parents:
            if kinds.get(str(parent)) == "file":
                raise IntegrityError(f"archive member {key!r} is inside {str(parent)!r}, which is a file; "
                                     "refusing to extract")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract with our own checks first, then tarfile's `data` filter as a second line."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise IntegrityError(f"archive has {len(members)} members (limit {MAX_MEMBERS})")
        total = 0
        for member in members:
            check_member(member, dest)
            total += max(0, member.size)
        check_layout(members)
        if total > MAX_EXTRACTED_BYTES:
            raise IntegrityError(f"archive would extract to {total} bytes (limit {MAX_EXTRACTED_BYTES})")
        try:
            tar.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise IntegrityError(f"archive refused by tarfile's data filter: {exc}") from None
    for path in dest.rglob("*"):  # no executable bits or odd modes from the archive
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)


def default_target(root: Path, model: str, version: str) -> Path:
    return root / PULLED_DIR / model / version


def pull(root: Path, backend: Backend, ref: str, to: Path | None = None, *, force: bool = False,
         say: Callable[[str], None] | None = None, expect_sha256: str = "") -> Path:
    """Download, verify and unpack the release `ref` names; return the folder (a run folder).

    `say` receives one sentence for people (what was verified, or that the folder already holds
    this release); the CLI prints it on stderr so stdout stays the folder alone.
    `expect_sha256`: the archive's checksum as a deployment names it (the deploy ConfigMap); the tag
    must record the same one, so a pod never serves another build than the one deployed.
    """
    from gitops.refs import parse_target

    st, version = registry_ops.resolve(backend, parse_target(ref, allow_path=False).ref)
    if expect_sha256:
        recorded = registry_ops.release_metadata(version.message).get("sha256")
        if recorded != expect_sha256.strip().lower():
            raise IntegrityError(f"{version.tag} records archive sha256 {str(recorded)[:16]}…, but "
                                 f"{expect_sha256[:16]}… was expected (the deployment names another build)")
    model = st.model
    say = say or (lambda _text: None)
    target = Path(to) if to is not None else default_target(root, model, version.version)
    scratch.sweep(target.parent, f".pull-{model}-")  # what killed pulls left
    if target.exists():
        if not force and (target / "manifest.json").is_file() and _same_release(target, version):
            say(f"{model}@{version.version} is already in {target} (same release; its checksums were verified "
                "when it was pulled)")
            return target
        if any(target.iterdir()) if target.is_dir() else True:
            raise UsageError(f"{target} already exists and is not this release; pass another --to")
    meta = registry_ops.release_metadata(version.message)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = scratch.make(target.parent, f".pull-{model}-")
    try:
        archive = fetch_archive(backend, version, meta, work / "download", root)
        killpoints.reached("pull.downloaded")
        unpacked = work / "unpacked"
        safe_extract(archive, unpacked)
        killpoints.reached("pull.extracted")
        if target.exists():
            target.rmdir()
        unpacked.rename(target)
        killpoints.reached("pull.done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    recorded = f" and the sha256 its tag records ({meta['sha256'][:16]}…)" if meta.get("sha256") else ""
    say(f"pulled {model}@{version.version} into {target}: {archive.name} verified against SHA256SUMS{recorded}")
    return target


def fetch_archive(backend: Backend, version: tags.VersionState, meta: dict, work: Path,
                  root: Path | None = None) -> Path:
    """Download a release's archive into `work` (joining split parts), verifying every checksum.

    SHA256SUMS must list the archive and each part, and agree with the checksum the tag recorded,
    so swapping an asset (or an asset and SHA256SUMS together) is refused. A release whose tag lists
    `objects` is fetched from the artifact store (`root`'s gitops.yaml gives its endpoint).

    Raises:
        IntegrityError: a missing SHA256SUMS or entry, or any checksum that differs.
    """
    tag = version.tag
    model = tag.split("@", 1)[0]
    archive_name = meta.get("archive") or f"{model}-{version.version}.tar.gz"
    if not isinstance(archive_name, str) or "/" in archive_name or "\\" in archive_name or archive_name.startswith("."):
        raise IntegrityError(f"{tag}: archive name {archive_name!r} is not a plain file name")
    assets = backend.list_assets(tag)
    if "SHA256SUMS" not in assets:
        raise IntegrityError(f"{tag} has no SHA256SUMS asset (assets: {', '.join(assets) or 'none'})")
    work.mkdir(parents=True, exist_ok=True)
    backend.download_asset(tag, "SHA256SUMS", work / "SHA256SUMS")
    sums = parse_sums((work / "SHA256SUMS").read_text(encoding="utf-8"))
    if archive_name not in sums:
        raise IntegrityError(f"SHA256SUMS of {tag} does not list {archive_name}")
    if meta.get("sha256") and sums[archive_name] != meta["sha256"]:
        raise IntegrityError(f"SHA256SUMS of {tag} disagrees with the tag's recorded checksum of {archive_name}")
    if meta.get("objects"):  # the archive lives in an artifact store (gitops.artifact_store)
        from gitops import artifact_store

        archive = artifact_store.fetch_archive(artifact_store.objects_from_meta(meta), sums, archive_name, work,
                                               root)
        got = sha256_file(archive)
        if got != sums[archive_name]:
            raise IntegrityError(f"checksum mismatch for {archive_name}: expected {sums[archive_name][:16]}…, "
                                 f"got {got[:16]}…")
        return archive
    parts = sorted(a for a in assets if a.startswith(archive_name + ".part"))
    for name in parts or [archive_name]:
        if name not in sums:
            raise IntegrityError(f"SHA256SUMS of {tag} does not list {name}")
        path = backend.download_asset(tag, name, work / name)
        got = sha256_file(path)
        if got != sums[name]:
            raise IntegrityError(f"checksum mismatch for {name}: expected {sums[name][:16]}…, got {got[:16]}…")
    archive = work / archive_name
    if parts:
        with open(archive, "wb") as out:
            for name in parts:
                with open(work / name, "rb") as fh:
                    shutil.copyfileobj(fh, out)
                (work / name).unlink()
    got = sha256_file(archive)
    if got != sums[archive_name]:
        raise IntegrityError(f"checksum mismatch for {archive_name}: expected {sums[archive_name][:16]}…, "
                             f"got {got[:16]}…")
    return archive


def _same_release(folder: Path, version: tags.VersionState) -> bool:

    try:
        meta = jsonio.loads((folder / "release.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recorded = registry_ops.release_metadata(version.message)
    return meta.get("version") == version.version and meta.get("release_fingerprint") == recorded.get(
        "release_fingerprint")


def cache_dir() -> Path:
    env = os.environ.get("GITOPS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gitops"
