"""Release in two jobs: prepare with the repository's code and a read-only token, publish with a write
token and no repository code.

A model may use the repository's own plugin package (`plugins/`, gitops.yaml `plugins:`): resolving its
config and choosing its bump import that code. On a push to `main` the code is the merged commit's,
reviewed like the rest of `main`, so the *prepare* job of release.yml imports it, trains or reuses runs
and packs the releases, holding only a read-only token. It writes nothing to the registry: a
`SpoolBackend` wraps the real backend, reads through it and records every write (assets staged, tags
created, releases finalized) in a spool folder, which goes to the next job as an artifact.

The *publish* job holds the write token (`contents: write`) and sets GITOPS_REPO_PLUGINS=off: it never
resolves a config, never imports the repository's code, and treats the spool as data. `publish` checks
every recorded write before replaying it: tag names in the registry's grammar, tagged commits in the
history of the checked-out commit (the pushed `main`), each file's size and SHA-256 as recorded, each
version tag's archive SHA-256 as its message records; then stages, tags and finalizes through the real
backend in the recorded order (bytes first, tag last). A rerun after an interruption completes: a tag
that exists with the same commit and message counts as done.

Layout of a spool folder::

    spool.json          {"gitops_spool": 1, "head": <commit>, "backend": <name>, "ops": [...]}
    files/<n>/<asset>   the files of the n-th `stage` operation

Borrowed idea: the "plan then apply" split of Terraform's saved plans (`terraform plan -out`, `apply PLAN`),
where the apply step runs with the credentials and only what the plan recorded.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from gitops.backends.base import (
    ArtifactInfo,
    AssetNotFoundError,
    Backend,
    PullRequestInfo,
    TagExistsError,
    TagInfo,
    WorkflowRunInfo,
)
from gitops.errors import GitopsError, IntegrityError, UsageError
from gitops.registry import archive

FORMAT = 1
SPOOL_FILE = "spool.json"
SPOOL_ARTIFACT = "gitops-release-spool"
MAX_SPOOL_ARTIFACT_BYTES = 16 * 1024**3
_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_ASSET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class SpoolBackend(Backend):
    """Reads through `inner`; records writes in `folder` instead of making them (see the module docstring)."""

    name = "spool"

    def __init__(self, inner: Backend, folder: Path, head: str):
        self.inner, self.folder, self.head = inner, Path(folder), head
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ops: list[dict] = []
        self._tags: dict[str, TagInfo] = {}
        self._files: dict[str, list[Path]] = {}
        self._save()

    def _save(self) -> None:
        from gitops.learn import checksum_list

        doc = {"gitops_spool": FORMAT, "head": self.head, "backend": self.inner.name, "ops": self.ops}
        checksum_list.write_atomic(self.folder / SPOOL_FILE, json.dumps(doc, indent=1, allow_nan=False) + "\n")

    # --- reads: through the real registry, plus what this spool already holds ---
    def list_tags(self) -> list[TagInfo]:
        """The real registry's tags plus the tags this spool recorded (not yet created anywhere)."""
        return [*self.inner.list_tags(), *self._tags.values()]

    def list_assets(self, tag: str) -> list[str]:
        """The names of the files this spool staged for `tag`, else the real registry's assets of `tag`."""
        if tag in self._files:
            return [p.name for p in self._files[tag]]
        return self.inner.list_assets(tag)

    def download_asset(self, tag: str, asset: str, dest: Path) -> Path:
        """Copy the spooled file `asset` of `tag` to `dest`, or read it through the real registry if `tag` is not
        spooled.

        Raises AssetNotFoundError when `tag` is spooled without that asset (or the real registry lacks it).
        """
        for path in self._files.get(tag, []):
            if path.name == asset:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                return Path(dest)
        if tag in self._files:
            raise AssetNotFoundError(f"{tag}: no asset {asset} in the spool")
        return self.inner.download_asset(tag, asset, dest)

    def is_published(self, tag: str) -> bool:
        """For a spooled tag, whether a `finalize` was recorded for it; else the real registry's answer."""
        if tag in self._tags:
            return any(op["op"] == "finalize" and op["tag"] == tag for op in self.ops)
        return self.inner.is_published(tag)

    # the hosting backend's read-only look-ups (PRs, CI runs, artifacts: reuse of a PR's run), delegated
    # through the Backend protocol (a backend without them answers "nothing of that kind exists")
    @property
    def repository(self) -> str:  # type: ignore[override]
        """The wrapped backend's "OWNER/NAME" ("" for the local backend)."""
        return self.inner.repository

    @property
    def hosted(self) -> bool:  # type: ignore[override]
        """The wrapped backend's `hosted` capability."""
        return self.inner.hosted

    @property
    def hosts_pull_requests(self) -> bool:  # type: ignore[override]
        """The wrapped backend's `hosts_pull_requests` capability."""
        return self.inner.hosts_pull_requests

    @property
    def keeps_ci_artifacts(self) -> bool:  # type: ignore[override]
        """The wrapped backend's `keeps_ci_artifacts` capability."""
        return self.inner.keeps_ci_artifacts

    def pull_head_sha(self, pr: int) -> str | None:
        """Read through: the wrapped backend's head commit of PR `pr` (None where PRs don't exist)."""
        return self.inner.pull_head_sha(pr)

    def pulls_for_commit(self, sha: str) -> list[PullRequestInfo]:
        """Read through: the wrapped backend's pull requests associated with commit `sha`."""
        return self.inner.pulls_for_commit(sha)

    def workflow_run(self, run_id: int) -> WorkflowRunInfo | None:
        """Read through: the wrapped backend's record of CI run `run_id`."""
        return self.inner.workflow_run(run_id)

    def list_artifacts(self, name: str, run_id: int | None = None) -> list[ArtifactInfo]:
        """Read through: the wrapped backend's unexpired CI artifacts called `name`."""
        return self.inner.list_artifacts(name, run_id=run_id)

    def download_artifact_zip(self, artifact: ArtifactInfo, dest: Path, max_bytes: int) -> Path:
        """Read through: download an artifact zip (at most `max_bytes` bytes) via the wrapped backend."""
        return self.inner.download_artifact_zip(artifact, dest, max_bytes)

    # --- writes: recorded ---
    def stage_release(self, tag: str, commit: str, title: str, notes: str, files: list[Path]) -> str:
        """Record a `stage` op: copy `files` into `files/<n>/` of the spool with each size (bytes) and SHA-256.

        Nothing is uploaded; returns the spool subfolder. `gitops ci publish` later uploads these copies.
        """
        index = len(self.ops)
        target = self.folder / "files" / str(index)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        from gitops.checksums import sha256_file

        kept, listed = [], []
        for path in files:
            copy = target / Path(path).name
            shutil.copyfile(path, copy)
            kept.append(copy)
            listed.append({"name": copy.name, "size": copy.stat().st_size, "sha256": sha256_file(copy)})
        self._files[tag] = kept
        self.ops.append({"op": "stage", "tag": tag, "commit": commit, "title": title, "notes": notes,
                         "dir": f"files/{index}", "files": listed})
        self._save()
        return str(target)

    def publish_release(self, tag: str, title: str, notes: str, files: list[Path]) -> str:
        """Record a `stage` of `files` for `tag` on the spool's head commit (finalizing is a separate op)."""
        return self.stage_release(tag, self.head, title, notes, files)

    def create_tag(self, name: str, commit: str, message: str) -> TagInfo:
        """Record a `tag` op and return the TagInfo it will have (tagger "gitops (spooled)", date now, UTC).

        Raises TagExistsError when the tag is already spooled or exists in the real registry.
        """
        if name in self._tags or any(t.name == name for t in self.inner.list_tags()):
            raise TagExistsError(f"tag {name} already exists")
        info = TagInfo(name, commit, message, "gitops (spooled) <gitops@localhost>",
                       datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self._tags[name] = info
        self.ops.append({"op": "tag", "tag": name, "commit": commit, "message": message})
        self._save()
        return info

    def finalize_release(self, tag: str, title: str, notes: str) -> str:
        """Record a `finalize` op for `tag`; returns the spool folder's path with a note."""
        self.ops.append({"op": "finalize", "tag": tag, "title": title, "notes": notes})
        self._save()
        return f"{self.folder} (spooled for `gitops ci publish`)"

    def discard_staged(self, tag: str) -> None:
        """Drop the recorded `stage` ops of `tag` and forget its spooled files."""
        self.ops = [op for op in self.ops if not (op["op"] == "stage" and op["tag"] == tag)]
        self._files.pop(tag, None)
        self._save()

    def delete_tag(self, name: str) -> None:
        """Forget a tag this spool recorded, with every op on it.

        Raises GitopsError for a tag of the real registry: the prepare job holds no write token.
        """
        if name not in self._tags:
            raise GitopsError(f"cannot delete {name} while preparing a release (read-only job)")
        del self._tags[name]
        self.ops = [op for op in self.ops if op.get("tag") != name]
        self._save()

    @contextlib.contextmanager
    def release_lock(self, model: str) -> Iterator[None]:
        """No lock: release.yml's concurrency group already runs one prepare+publish at a time."""
        yield  # release.yml's concurrency group serializes prepare + publish

    def upsert_comment(self, pr: int, body: str) -> str:
        """Always raises GitopsError: the prepare job posts no PR comments."""
        raise GitopsError("a release spool posts no comments")

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> str | None:
        """Always raises GitopsError: the prepare job opens no pull requests."""
        raise GitopsError("a release spool opens no pull requests")


def load(folder: Path) -> dict:
    """The spool document of `folder`, its form checked.

    Raises:
        UsageError: no spool there (exit 2).
        GitopsError: a malformed spool (exit 1).
    """
    path = Path(folder) / SPOOL_FILE
    if not path.is_file():
        raise UsageError(f"{folder}: no {SPOOL_FILE} (write one with `gitops ci release-pending --spool DIR`)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise GitopsError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("gitops_spool") != FORMAT or not isinstance(doc.get("ops"), list):
        raise GitopsError(f"{path}: not a gitops release spool of format {FORMAT}")
    return doc


def check(folder: Path, doc: dict, root: Path) -> None:
    """Refuse a spool whose writes the publish job must not make (see the module docstring).

    Raises:
        GitopsError: an unknown operation, a tag name outside the grammar, a commit outside HEAD's history,
            an asset name that is not a plain file name (exit 1).
        IntegrityError: a file's size or SHA-256, or a version's archive, differs from the record (exit 1).
    """
    from gitops.checksums import sha256_file
    from gitops.registry import tags, versions
    from gitops.repo import gitutil

    head = gitutil.head_commit(root)
    sums: dict[str, dict[str, str]] = {}
    for n, op in enumerate(doc["ops"]):
        where = f"{SPOOL_FILE}: ops[{n}]"
        if not isinstance(op, dict) or op.get("op") not in ("stage", "tag", "finalize"):
            raise GitopsError(f"{where}: unknown operation {op!r:.80}")
        if not isinstance(op.get("tag"), str) or tags.parse(op["tag"]) is None:
            raise GitopsError(f"{where}: {op.get('tag')!r} is not a registry tag (MODEL@vX.Y.Z or MODEL#STAGE#N)")
        if op["op"] in ("stage", "tag"):
            commit = op.get("commit")
            if not isinstance(commit, str) or not _SHA_RE.match(commit) or not gitutil.commit_exists(root, commit):
                raise GitopsError(f"{where}: {op['tag']}: commit {commit!r} is not in this repository")
            if gitutil.run(root, "merge-base", "--is-ancestor", commit, head, check=False).returncode != 0:
                raise GitopsError(f"{where}: {op['tag']}: commit {commit[:12]} is not in the history of {head[:12]} "
                                  "(a release tags only what was merged)")
        if op["op"] == "stage":
            base = (Path(folder) / op.get("dir", "")).resolve()
            if not base.is_relative_to(Path(folder).resolve()) or not base.is_dir():
                raise GitopsError(f"{where}: {op['tag']}: no folder {op.get('dir')!r} in the spool")
            for item in op.get("files") or []:
                name = item.get("name", "")
                path = base / name
                if not _ASSET_RE.match(name) or path.is_symlink() or not path.is_file():
                    raise GitopsError(f"{where}: {op['tag']}: {name!r} is not a plain file of the spool")
                got = sha256_file(path)
                if path.stat().st_size != item.get("size") or got != item.get("sha256"):
                    raise IntegrityError(f"{where}: {op['tag']}: {name} has sha256 {got}, the spool recorded "
                                         f"{item.get('sha256')}")
                sums.setdefault(op["tag"], {})[name] = got
        if op["op"] == "tag":
            meta = versions.release_metadata(op.get("message") or "")
            archive = meta.get("archive") if isinstance(meta.get("archive"), str) else None
            staged = sums.get(op["tag"], {})
            if meta.get("sha256") and archive and staged.get(archive) not in (None, meta["sha256"]):
                raise IntegrityError(f"{where}: {op['tag']}: the archive {archive} has sha256 {staged[archive]}, "
                                     f"the tag message records {meta['sha256']}")


ATTESTATION_SUBJECTS = "release-archives.sha256"


def _add_attestation_subject(dist: Path, tag: str, files: list[Path]) -> None:
    """Append the release's whole-archive line to `dist/release-archives.sha256` (sha256sum format).

    The file is what the release workflow attests (`actions/attest-build-provenance`'s
    `subject-checksums`): it names each archive by its digest, so a release whose bytes live in an
    artifact store (no tarball in `dist/`) is attested too, and several models' SHA256SUMS, which
    share one name, never overwrite each other's subjects. A rerun does not repeat a line.
    """
    sums_file = next((p for p in files if p.name == archive.SUMS_FILE), None)
    if sums_file is None:
        return
    model, version = tag.split("@", 1)
    name = archive.archive_name(model, version)
    digest = archive.parse_sums(sums_file.read_text(encoding="utf-8")).get(name)
    if digest is None:
        return
    out = dist / ATTESTATION_SUBJECTS
    line = f"{digest}  {name}\n"
    if not out.is_file() or line not in out.read_text(encoding="utf-8").splitlines(keepends=True):
        with out.open("a", encoding="utf-8") as fh:
            fh.write(line)


def publish(folder: Path, backend: Backend, root: Path, *, dist: Path | None = None) -> list[str]:
    """Check the spool, then make its writes through `backend` in order; returns one line per write.

    Never resolves a config or imports repository code. Rerunnable: a tag that already exists with the
    recorded commit and message is skipped; staging and finalizing are idempotent in every backend.

    Raises:
        GitopsError / IntegrityError: see `check`; a tag taken meanwhile by another commit or message.
    """
    folder = Path(folder)
    doc = load(folder)
    check(folder, doc, root)
    lines: list[str] = []
    for op in doc["ops"]:
        tag = op["tag"]
        if op["op"] == "stage":
            base = folder / op["dir"]
            files = [base / item["name"] for item in op.get("files") or []]
            backend.stage_release(tag, op["commit"], op["title"], op["notes"], files)
            lines.append(f"staged {tag}: {', '.join(p.name for p in files)}")
            if dist is not None:
                dist.mkdir(parents=True, exist_ok=True)
                for path in files:
                    shutil.copyfile(path, dist / path.name)
                _add_attestation_subject(dist, tag, files)
        elif op["op"] == "tag":
            try:
                backend.create_tag(tag, op["commit"], op["message"])
                lines.append(f"tagged {tag} at {op['commit'][:12]}")
            except TagExistsError:
                same = [t for t in backend.list_tags() if t.name == tag]
                if same and same[0].commit == op["commit"] and _same_message(same[0].message, op["message"]):
                    lines.append(f"{tag} already tagged (an earlier publish of this spool)")
                    continue
                raise GitopsError(f"{tag} was created meanwhile for another commit or release; rerun the release "
                                  "workflow (its prepare job picks the next version)") from None
        else:
            location = backend.finalize_release(tag, op["title"], op["notes"])
            lines.append(f"released {tag} -> {location}" if location else f"released {tag}")
    if not doc["ops"]:
        lines.append("nothing to publish: the spool is empty")
    return lines


def _same_message(stored: str, recorded: str) -> bool:
    """A tag message as a backend stores it (git cleans whitespace) against the spooled one."""
    from gitops.registry.versions import release_metadata

    meta = release_metadata(recorded)
    if meta:
        return release_metadata(stored) == meta
    return [line.rstrip() for line in stored.strip().splitlines()] == [line.rstrip() for line in recorded.strip().splitlines()]


def fetch(backend: Backend, run_id: int, out: Path) -> Path | None:
    """The `gitops-release-spool` artifact of workflow run `run_id`, extracted into `out`; None if absent."""
    import tempfile

    from gitops.registry import artifacts

    if not backend.keeps_ci_artifacts:
        raise UsageError("fetching the release spool needs the github backend")
    found = backend.list_artifacts(SPOOL_ARTIFACT, run_id=run_id)
    found = [a for a in found if a.run_id in (None, run_id)]
    if not found:
        return None
    with tempfile.TemporaryDirectory(prefix="gitops-spool-") as tmp:
        zpath = Path(tmp) / "spool.zip"
        backend.download_artifact_zip(found[0], zpath, MAX_SPOOL_ARTIFACT_BYTES)
        artifacts.safe_extract_zip(zpath, Path(out), max_bytes=MAX_SPOOL_ARTIFACT_BYTES)
    return Path(out)
