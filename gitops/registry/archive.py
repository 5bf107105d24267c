"""The release archive: its name, packing, split parts, SHA256SUMS, verification and safe extraction.

A released version's bytes are one deterministic gzip'd tar, `<model>-vX.Y.Z.tar.gz` (sorted entries,
fixed mtime, uid/gid 0, normalised modes: the same files always hash the same), split into
`<archive>.partNNN` files when it is over the backend's asset limit, plus `SHA256SUMS` in the
`sha256sum` format listing the whole archive first and then each part. `gitops.registry.release` packs it,
`gitops.registry.pull` (and the site, deploys, servers through it) verifies and unpacks it, and
`gitops.registry.artifact_store` keeps the same names and SHA256SUMS when the bytes live in an object store.
Nothing else builds these names or reads these files.

Unpacking trusts nothing in the archive: every member must stay inside the target (no absolute
paths, no `..`, no links, no devices), the whole is bounded in members and bytes, and tarfile's
`data` filter runs as a second line (PEP 706).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from gitops import jsonio
from gitops.checksums import sha256_file
from gitops.errors import GitopsError, IntegrityError

if TYPE_CHECKING:  # tarfile and gzip load when an archive is written or read, not at start-up (`gitops ls`)
    import tarfile

SUMS_FILE = "SHA256SUMS"
SUFFIX = ".tar.gz"
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: archives of the same files hash the same
MAX_MEMBERS = 100_000
MAX_EXTRACTED_BYTES = 64 * 1024**3
RELEASE_FILE = "release.json"  # inside the archive: the version's tag metadata, so an unpacked folder names itself
CARD_FILE = "MODEL_CARD.md"
OBJECTS_SUFFIX = ".objects.json"  # with an artifact store: the asset listing where the archive's parts live


# --- names ---------------------------------------------------------------------------------------


def archive_name(model: str, version: str) -> str:
    """`<model>-<version>.tar.gz`, e.g. `wine-mlp-v1.2.0.tar.gz` (`version` with its leading `v`)."""
    return f"{model}-{version}{SUFFIX}"


def part_name(archive: str, index: int) -> str:
    """The name of split part `index` (from 0) of `archive`: `<archive>.part000`, `.part001`, ..."""
    return f"{archive}.part{index:03d}"


def is_part_of(name: str, archive: str) -> bool:
    """Whether asset `name` is one of `archive`'s split parts."""
    return name.startswith(archive + ".part")


def check_name(name: object, where: str) -> str:
    """`name` when it is a plain file name (no folder, not hidden); IntegrityError naming `where` otherwise."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise IntegrityError(f"{where}: archive name {name!r} is not a plain file name")
    return name


def expected_assets(meta: dict) -> list[str]:
    """The assets a release whose tag metadata is `meta` must hold ([] for tags gitops did not make).

    SHA256SUMS, and the archive (or its parts); with an artifact store (`objects` in the metadata),
    the objects list `<archive>.objects.json` instead of the archive's bytes.
    """
    archive = meta.get("archive")
    if not isinstance(archive, str) or not meta.get("sha256"):
        return []
    if meta.get("objects"):
        return [SUMS_FILE, f"{archive}{OBJECTS_SUFFIX}"]
    parts = int(meta.get("parts") or 0)
    return [SUMS_FILE, *([part_name(archive, i) for i in range(parts)] if parts else [archive])]



def release_record(meta: dict) -> bytes:
    """The bytes of the archive's release.json for tag metadata `meta` (sorted keys: deterministic)."""
    return (jsonio.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_release_record(folder: Path) -> dict | None:
    """The release.json of an unpacked release (its version, fingerprints, metrics), None for a plain run
    folder or a file that is not a JSON object."""
    try:
        doc = jsonio.loads((Path(folder) / RELEASE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --- packing -------------------------------------------------------------------------------------


def write_deterministic_tar(dest: Path, files: list[tuple[str, bytes | Path]]) -> None:
    """gzip'd tar with sorted entries, fixed mtime, uid/gid 0 and normalised modes (0644 files, 0755 folders).

    `files`: (member path, bytes or a file to stream) pairs; parent folders are added as entries.
    """
    import gzip
    import tarfile

    files = sorted(files, key=lambda e: e[0])
    dirs = sorted({str(Path(name).parent.as_posix()) for name, _ in files} - {"."})
    all_dirs = sorted({p for d in dirs for p in [*(str(x.as_posix()) for x in Path(d).parents), d] if p != "."})
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=FIXED_MTIME, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        entries = [(d + "/", None) for d in all_dirs] + list(files)
        for name, content in sorted(entries, key=lambda e: e[0].rstrip("/")):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            info.mode = 0o644
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:  # streamed: checkpoints may be large
                info.size = Path(content).stat().st_size
                with open(content, "rb") as fh:
                    tar.addfile(info, fh)


def split_file(path: Path, size: int) -> list[Path]:
    """Cut `path` into `part_name` files of `size` bytes (the last shorter) beside it; the parts in order."""
    parts = []
    with open(path, "rb") as fh:
        index = 0
        while True:
            chunk = fh.read(size)
            if not chunk:
                break
            part = path.with_name(part_name(path.name, index))
            part.write_bytes(chunk)
            parts.append(part)
            index += 1
    return parts


def pack(out_dir: Path, name: str, entries: list[tuple[str, bytes | Path]], *,
         max_part_bytes: int | None) -> tuple[list[Path], str]:
    """Write archive `name` of `entries` into `out_dir`, split it over `max_part_bytes` (None: never), and
    write SHA256SUMS; returns (the assets to publish, SHA256SUMS last; the whole archive's sha256).

    Unsplit, the assets are [archive, SHA256SUMS]; split, [part000, part001, ..., SHA256SUMS] (the
    whole archive stays in `out_dir`, listed first in SHA256SUMS so a reader checks the joined bytes).
    """
    archive = out_dir / name
    write_deterministic_tar(archive, entries)
    digest = sha256_file(archive)
    sums = [(name, digest)]
    assets = [archive]
    if max_part_bytes is not None and archive.stat().st_size > max_part_bytes:
        assets = split_file(archive, max_part_bytes)
        sums += [(p.name, sha256_file(p)) for p in assets]
    return [*assets, write_sums(out_dir, sums)], digest


# --- SHA256SUMS ----------------------------------------------------------------------------------


def format_sums(entries: list[tuple[str, str]]) -> str:
    """SHA256SUMS text (`sha256sum` format) of (file name, sha256 hex) pairs, in the order given."""
    return "".join(f"{digest}  {name}\n" for name, digest in entries)


def write_sums(out_dir: Path, entries: list[tuple[str, str]]) -> Path:
    """Write `out_dir/SHA256SUMS` (`format_sums`); returns its path."""
    path = out_dir / SUMS_FILE
    path.write_text(format_sums(entries), encoding="utf-8")
    return path


def parse_sums(text: str) -> dict[str, str]:
    """file name -> sha256 (lowercase hex) of a SHA256SUMS text (`*name`, binary mode, accepted).

    Raises:
        IntegrityError: a line without a 64-hex digest, two spaces and a plain file name.
    """
    sums = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        digest, _, name = line.partition("  ")
        name = name.lstrip("*")
        if len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise IntegrityError(f"{SUMS_FILE} has a malformed line: {line[:120]!r}")
        sums[name] = digest.lower()
    return sums


def verify_file(path: Path, expected: str, name: str | None = None) -> None:
    """Raise IntegrityError ("checksum mismatch for NAME") unless `path`'s sha256 is `expected`."""
    got = sha256_file(path)
    if got != expected:
        raise IntegrityError(f"checksum mismatch for {name or path.name}: expected {expected[:16]}…, got {got[:16]}…")


def check_sums(sums: dict[str, str], archive: str, recorded_sha256: str | None, tag: str) -> None:
    """SHA256SUMS must list `archive` with the sha256 the tag recorded (when it recorded one).

    Raises:
        IntegrityError: the archive is not listed, or is listed with another checksum.
    """
    if archive not in sums:
        raise IntegrityError(f"{SUMS_FILE} of {tag} does not list {archive}")
    if recorded_sha256 and sums[archive] != recorded_sha256:
        raise IntegrityError(f"{SUMS_FILE} of {tag} disagrees with the tag's recorded checksum of {archive}")


def download_verified(names: list[str], sums: dict[str, str], tag: str, work: Path,
                      download: Callable[[str, Path], Path]) -> list[Path]:
    """Download each of `names` with `download(name, dest)` into `work`, checking each against SHA256SUMS.

    Raises:
        IntegrityError: a name SHA256SUMS does not list, or a checksum that differs.
    """
    paths = []
    for name in names:
        if name not in sums:
            raise IntegrityError(f"{SUMS_FILE} of {tag} does not list {name}")
        path = download(name, work / name)
        verify_file(path, sums[name], name)
        paths.append(path)
    return paths


def join_parts(parts: list[Path], archive: Path, *, remove: bool = True) -> Path:
    """Concatenate `parts` (in order) into `archive`; the parts are removed unless `remove` is False."""
    with open(archive, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            if remove:
                part.unlink()
    return archive


# --- safe extraction -----------------------------------------------------------------------------


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse anything that could land outside `dest` or isn't a plain file or folder (IntegrityError)."""
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
    """Extract with our own checks first, then tarfile's `data` filter as a second line.

    Raises:
        IntegrityError: an unsafe or colliding member, more than MAX_MEMBERS members or
            MAX_EXTRACTED_BYTES bytes, or a member tarfile's filter refuses.
    """
    import tarfile

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


def read_members(archive: Path, wanted: set[str] | frozenset[str] | tuple[str, ...], *, max_members: int,
                 max_member_bytes: int, skip_folders: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The `wanted` files of a tar archive, read from the stream into memory (nothing is extracted).

    A member counts at the archive's top level or one folder down (a run folder packed with its
    name; not under `skip_folders`); the shallower wins. Links, devices, absolute paths and `..` are
    skipped, not followed; a member over `max_member_bytes` is skipped.

    Raises:
        GitopsError: more than `max_members` members.
        tarfile.TarError, OSError, EOFError: an unreadable archive (the caller words it).
    """
    import tarfile

    found: dict[str, tuple[int, bytes]] = {}
    with tarfile.open(archive, "r|*") as tar:
        for count, member in enumerate(tar):
            if count >= max_members:
                raise GitopsError(f"{archive.name}: more than {max_members} members")
            path = PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts or not path.parts:
                continue
            depth = len(path.parts) - 1
            if path.name not in wanted or depth > 1 or (depth and path.parts[0] in skip_folders):
                continue
            if member.size > max_member_bytes or (path.name in found and found[path.name][0] <= depth):
                continue
            fh = tar.extractfile(member)
            if fh is not None:
                found[path.name] = (depth, fh.read(max_member_bytes + 1)[:max_member_bytes])
    return {name: data for name, (_, data) in found.items()}
