"""The interface every registry backend implements: tags, release assets, PR comments.

The GitOps loop (release, promote, history, pull, report, comment, rollback) talks only to this
interface, so the embedded `local` backend and the `github` backend are interchangeable and the
same tests exercise the logic once.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gitops.errors import GitopsError

COMMENT_MARKER = "<!-- gitops:report -->"


@dataclass(frozen=True)
class TagInfo:
    """An annotated tag as the registry sees it (GTO grammar lives in `gitops.tags`)."""

    name: str
    commit: str  # the commit the tag points to (peeled)
    message: str  # the annotation message (bump reason, fingerprints, ...)
    tagger: str  # "Name <email>"
    date: str  # ISO 8601


class TagExistsError(GitopsError):
    """Another release or promotion created this tag first (a lost race): pick the next one."""


class AssetNotFoundError(GitopsError):
    pass


class Backend(abc.ABC):
    """Where versions (tags) and their files (assets) live, and where PR comments go."""

    name: str = "abstract"

    # --- tags ---------------------------------------------------------------------------
    @abc.abstractmethod
    def list_tags(self) -> list[TagInfo]:
        """Every annotated tag in the registry (all models, versions and stages)."""

    @abc.abstractmethod
    def create_tag(self, name: str, commit: str, message: str) -> TagInfo:
        """Create an annotated tag on `commit`; raise TagExistsError if `name` exists."""

    @abc.abstractmethod
    def delete_tag(self, name: str) -> None:
        """Remove a tag (used only to clean up a release that failed half-way)."""

    # --- release assets -----------------------------------------------------------------
    @abc.abstractmethod
    def publish_release(self, tag: str, title: str, notes: str, files: list[Path]) -> str:
        """Attach `files` to the release of `tag` (creating it; completing a half-finished one).

        Returns a human-readable location (a folder or a URL).
        """

    # --- the release invariant: bytes first, tag last --------------------------------------
    # `release` stages every asset (uploaded and verified, invisible to readers, who go through the
    # tag), then creates the tag (the commit point), then finalizes. A process killed anywhere in
    # between leaves either no tag (the next release restages, reusing or replacing what it finds)
    # or a tag whose assets are staged (the next release finalizes it).

    @contextlib.contextmanager
    def release_lock(self, model: str) -> Iterator[None]:
        """Held while a release of `model` chooses its version, stages and tags (a no-op by default)."""
        yield

    def stage_release(self, tag: str, commit: str, title: str, notes: str, files: list[Path]) -> str:
        """Upload `files` for `tag` (which need not exist yet) and verify them; returns a location.

        Raises:
            IntegrityError: an uploaded file does not read back with the size or checksum sent.
        """
        return self.publish_release(tag, title, notes, files)

    def finalize_release(self, tag: str, title: str, notes: str) -> str:
        """Make the staged release of `tag` public once the tag exists; returns its location."""
        return ""

    def is_published(self, tag: str) -> bool:
        """Whether the release of `tag` was finalized (False: a release killed after its tag; rerun it)."""
        return True

    def discard_staged(self, tag: str) -> None:
        """Remove what `stage_release` put up for `tag` (its tag went to another release)."""
        return None

    @abc.abstractmethod
    def list_assets(self, tag: str) -> list[str]:
        """File names attached to the release of `tag` ([] when no release exists)."""

    @abc.abstractmethod
    def download_asset(self, tag: str, asset: str, dest: Path) -> Path:
        """Copy one asset of `tag` to the file `dest`; raise AssetNotFoundError if absent."""

    # --- pull requests ------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_comment(self, pr: int, body: str) -> str:
        """Create or replace the one sticky comment (marked by COMMENT_MARKER) on PR `pr`.

        Returns where it went (a path or URL).
        """

    @abc.abstractmethod
    def open_pull_request(self, head: str, base: str, title: str, body: str) -> str | None:
        """Open a PR from branch `head` to `base` (a no-op returning None where PRs don't exist)."""
