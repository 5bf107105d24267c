"""The embedded backend: tags in the local git repository, assets and comments in `.gitops/`.

Works with no network and no GitHub: `.gitops/releases/<model>/v<version>/` holds each release's
files (git-ignored), `.gitops/comments/pr-<N>.md` the sticky comment. `--push` publishes the tags.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from gitops import killpoints, scratch
from gitops.backends.base import AssetNotFoundError, Backend, TagExistsError, TagInfo
from gitops.checksums import sha256_file
from gitops.errors import GitopsError, IntegrityError, UsageError
from gitops.registry.runs import replace_dir
from gitops.repo import gitutil

_STAGE_PREFIX = ".stage-"



class LocalBackend(Backend):
    """The embedded backend rooted at a git clone `root`: tags are the clone's git tags, release files live under
    `<root>/.gitops/releases/<model>/<version>/`, PR comments under `<root>/.gitops/comments/`.
    """
    name = "local"

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.state_dir = self.root / ".gitops"

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # --- tags -------------------------------------------------------------------------------
    def list_tags(self) -> list[TagInfo]:
        """Every annotated tag of the local clone (read with `git for-each-ref`), peeled to its commit."""
        from gitops.repo import git_tags

        return git_tags.list_tags(self.root)

    def create_tag(self, name: str, commit: str, message: str) -> TagInfo:
        """`git tag -a name commit` (message on stdin) in the clone; returns the tag as read back.

        Raises:
            TagExistsError: the tag already exists (also after waiting out a racing writer's ref lock).
            GitopsError: git failed for another reason (e.g. an unknown commit).
        """
        proc = gitutil.create_annotated_tag(self.root, name, commit, message)
        if proc.returncode != 0:
            # A racing writer may still hold the ref's lock: give it a moment to finish.
            for _ in range(20):
                if "already exists" in proc.stderr or self._tag_exists(name):
                    raise TagExistsError(f"tag {name} already exists")
                if "lock" not in proc.stderr:
                    break
                time.sleep(0.05)
            raise GitopsError(f"git tag {name} failed: {proc.stderr.strip()}")
        for tag in self._tags_named(name):
            return tag
        raise GitopsError(f"tag {name} was created but cannot be read back")  # pragma: no cover

    def _tag_exists(self, name: str) -> bool:
        proc = gitutil.run(self.root, "rev-parse", "--verify", "--quiet", f"refs/tags/{name}", check=False)
        return proc.returncode == 0

    def _tags_named(self, name: str) -> list[TagInfo]:
        from gitops.repo import git_tags

        return git_tags.list_tags(self.root, f"refs/tags/{name}", annotated_only=False)[:1]

    def delete_tag(self, name: str) -> None:
        """`git tag -d name`; a tag that does not exist is no error. Release files are left in place."""
        gitutil.run(self.root, "tag", "-d", name, check=False)

    def push_tags(self, names: list[str]) -> bool:
        """`git push origin refs/tags/<name>...`: the tags live in this clone until pushed."""
        gitutil.push_tags(self.root, names)
        return True

    # --- assets -----------------------------------------------------------------------------
    def release_dir(self, tag: str) -> Path:
        """The folder that holds the files of version tag `tag`: `.gitops/releases/<model>/<version>/` (may not exist).

        Raises UsageError when `tag` is not a version tag of the GTO grammar (`<model>@v1.2.3`).
        """
        from gitops.registry import tags as tag_grammar

        parsed = tag_grammar.parse(tag)
        if parsed is None or parsed.version is None:
            raise UsageError(f"{tag!r} is not a version tag (<model>@v1.2.3)")
        return self.state_dir / "releases" / parsed.model / parsed.version

    @contextlib.contextmanager
    def release_lock(self, model: str) -> Iterator[None]:
        """An exclusive `flock` on `.gitops/releases/<model>/.lock`: one release of a model at a time
        chooses its version, stages and tags. The kernel drops it when the holder dies (even SIGKILL)."""
        folder = self.state_dir / "releases" / model
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def stage_release(self, tag: str, commit: str, title: str, notes: str, files: list[Path]) -> str:
        """Copy `files` into a scratch folder, verify each copy's sha256, then rename it into place.

        An existing folder for this version is replaced whole: without a tag it is what an interrupted
        release left; with one (a repair) `release` has checked that the bytes are the tag's.
        """
        final = self.release_dir(tag)
        scratch.sweep(final.parent, _STAGE_PREFIX)
        tmp = scratch.make(final.parent, _STAGE_PREFIX)
        tmp.chmod(0o755)
        try:
            for src in files:
                dest = tmp / src.name
                shutil.copyfile(src, dest)
                if sha256_file(dest) != sha256_file(src):
                    raise IntegrityError(f"staging {tag}: {dest.name} did not read back as written")
                killpoints.reached("release.staging")  # some assets copied, not all
            (tmp / ".release.md").write_text(f"# {title}\n\n{notes}\n", encoding="utf-8")
            replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(final)

    def finalize_release(self, tag: str, title: str, notes: str) -> str:
        """Nothing to publish locally (staging already renamed the folder into place); returns that folder."""
        return str(self.release_dir(tag))

    def publish_release(self, tag: str, title: str, notes: str, files: list[Path]) -> str:
        """Same as `stage_release` with no commit: copy, verify and move `files` into `release_dir(tag)`."""
        return self.stage_release(tag, "", title, notes, files)

    def list_assets(self, tag: str) -> list[str]:
        """File names in `release_dir(tag)`, sorted, hidden files (`.release.md`) left out; [] if absent."""
        folder = self.release_dir(tag)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def download_asset(self, tag: str, asset: str, dest: Path) -> Path:
        """Copy `release_dir(tag)/asset` to the file `dest` (creating its folder); returns `dest`.

        Raises AssetNotFoundError when the file is missing or `asset` is a path or hidden name, UsageError when
        `tag` is not a version tag.
        """
        if "/" in asset or "\\" in asset or asset.startswith("."):
            raise AssetNotFoundError(f"{tag} has no asset {asset!r}")
        src = self.release_dir(tag) / asset
        if not src.is_file():
            raise AssetNotFoundError(f"{tag} has no asset {asset!r} (looked in {src.parent})")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest

    # --- pull requests ----------------------------------------------------------------------
    def upsert_comment(self, pr: int, body: str) -> str:
        """Write `body` to `.gitops/comments/pr-<pr>.md` (atomically, replacing it); returns that path."""
        target = self.state_dir / "comments" / f"pr-{int(pr)}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(target)
        return str(target)

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> str | None:
        """A plain git clone has no pull requests: always None."""
        return None
