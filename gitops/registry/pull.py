"""Pull a released version: download, verify every checksum, join parts, extract safely, rename.

Nothing is left behind on failure: all work happens in a temporary folder beside the target, which
appears (by one rename) only after every check passed. The archive's checksum is checked against
SHA256SUMS *and* against the release tag's message, so a swapped asset plus a swapped SHA256SUMS is
still caught.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gitops import killpoints, scratch
from gitops.backends.base import Backend
from gitops.errors import IntegrityError, UsageError
from gitops.registry import archive as archive_format
from gitops.registry import tags, versions

PULLED_DIR = Path(".gitops") / "pulled"


def default_target(root: Path, model: str, version: str) -> Path:
    """Where `pull` unpacks a version by default: `<root>/.gitops/pulled/<model>/<version>/`."""
    return root / PULLED_DIR / model / version


def pull(root: Path, backend: Backend, ref: str, to: Path | None = None, *, force: bool = False,
         say: Callable[[str], None] | None = None, expect_sha256: str = "") -> Path:
    """Download, verify and unpack the release `ref` names; return the folder (a run folder).

    `say` receives one sentence for people (what was verified, or that the folder already holds
    this release); the CLI prints it on stderr so stdout stays the folder alone.
    `expect_sha256`: the archive's checksum as a deployment names it (the deploy ConfigMap); the tag
    must record the same one, so a pod never serves another build than the one deployed.
    """
    from gitops.config.refs import parse_target

    st, version = versions.resolve(backend, parse_target(ref, allow_path=False).ref)
    if expect_sha256:
        recorded = versions.release_metadata(version.message).get("sha256")
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
    meta = versions.release_metadata(version.message)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = scratch.make(target.parent, f".pull-{model}-")
    try:
        archive = fetch_archive(backend, version, meta, work / "download", root)
        killpoints.reached("pull.downloaded")
        unpacked = work / "unpacked"
        archive_format.safe_extract(archive, unpacked)
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
    archive_name = archive_format.check_name(meta.get("archive") or archive_format.archive_name(model, version.version),
                                             tag)
    assets = backend.list_assets(tag)
    if archive_format.SUMS_FILE not in assets:
        raise IntegrityError(f"{tag} has no {archive_format.SUMS_FILE} asset (assets: {', '.join(assets) or 'none'})")
    work.mkdir(parents=True, exist_ok=True)
    backend.download_asset(tag, archive_format.SUMS_FILE, work / archive_format.SUMS_FILE)
    sums = archive_format.parse_sums((work / archive_format.SUMS_FILE).read_text(encoding="utf-8"))
    archive_format.check_sums(sums, archive_name, meta.get("sha256"), tag)
    if meta.get("objects"):  # the archive lives in an artifact store (gitops.registry.artifact_store)
        from gitops.registry import artifact_store

        archive = artifact_store.fetch_archive(artifact_store.objects_from_meta(meta), sums, archive_name, work,
                                               root)
        archive_format.verify_file(archive, sums[archive_name], archive_name)
        return archive
    parts = sorted(a for a in assets if archive_format.is_part_of(a, archive_name))
    paths = archive_format.download_verified(parts or [archive_name], sums, tag, work,
                                             lambda name, dest: backend.download_asset(tag, name, dest))
    archive = work / archive_name
    if parts:  # each part was verified; the joined bytes are checked as a whole too
        archive_format.join_parts(paths, archive)
        archive_format.verify_file(archive, sums[archive_name], archive_name)
    return archive


def _same_release(folder: Path, version: tags.VersionState) -> bool:
    """Whether `folder` already holds `version` (its release.json names the version and release fingerprint)."""
    meta = archive_format.read_release_record(folder)
    if meta is None:
        return False
    recorded = versions.release_metadata(version.message)
    return meta.get("version") == version.version and meta.get("release_fingerprint") == recorded.get(
        "release_fingerprint")


def cache_dir() -> Path:
    """gitops' download cache: $GITOPS_CACHE, else $XDG_CACHE_HOME/gitops (~/.cache/gitops)."""
    env = os.environ.get("GITOPS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gitops"
