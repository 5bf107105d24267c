"""The interface every registry backend implements: tags, release assets, PR comments.

The GitOps loop (release, promote, history, pull, report, comment, rollback) talks only to this
interface, so the embedded `local` backend and the `github` backend are interchangeable and the
same tests exercise the logic once.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from pathlib import Path

from gitops.errors import GitopsError
from gitops.records import record

COMMENT_MARKER = "<!-- gitops:report -->"
COMMENT_MAX_CHARS = 65_536  # GitHub's limit on an issue comment body; the PR report is capped to fit


@record(frozen=True)
class TagInfo:
    """An annotated tag as the registry sees it (GTO grammar lives in `gitops.registry.tags`)."""

    name: str
    commit: str  # the commit the tag points to (peeled)
    message: str  # the annotation message (bump reason, fingerprints, ...)
    tagger: str  # "Name <email>"
    date: str  # ISO 8601


class TagExistsError(GitopsError):
    """Another release or promotion created this tag first (a lost race): pick the next one."""


class AssetNotFoundError(GitopsError):
    """The release of a tag has no asset of that name (or no release exists); CI artifacts gone too."""
    pass


@record(frozen=True)
class PullRequestInfo:
    """A pull request as a hosting backend reports it (GitHub: GET /repos/{o}/{r}/pulls/{n})."""

    number: int
    merged: bool  # merged into its base (merge, squash or rebase)
    head_sha: str  # the PR head's commit
    head_repository: str  # "OWNER/NAME" the head branch lives in ("" when its fork was deleted)
    base_ref: str  # the branch it targets


@record(frozen=True)
class WorkflowRunInfo:
    """A CI workflow run as the host records it (GitHub: GET /repos/{o}/{r}/actions/runs/{id})."""

    id: int
    event: str  # "pull_request_target", "push", ...
    path: str  # the workflow file, e.g. ".github/workflows/pr-train.yml" (any "@ref" suffix removed)
    head_sha: str
    head_repository: str  # "OWNER/NAME" whose code the run built
    repository: str  # "OWNER/NAME" the run belongs to


@record(frozen=True)
class ArtifactInfo:
    """A CI artifact (GitHub Actions: an uploaded zip, kept until it expires)."""

    id: int
    name: str
    size_in_bytes: int
    created_at: str  # ISO 8601
    run_id: int | None  # the workflow run that uploaded it
    head_sha: str  # that run's head commit


class Backend(abc.ABC):
    """Where versions (tags) and their files (assets) live, and where PR comments go.

    Callers ask a backend what it can do through the capability attributes below, never by its name:
    a method a backend lacks has a default here that says "nothing of that kind exists".
    """

    name: str = "abstract"  # for messages only: callers never branch on it
    repository: str = ""  # "OWNER/NAME" of the hosted repository ("" where there is none: local)
    hosted: bool = False  # the registry lives on a hosting service whose workflows act on it (deploy on stage moves)
    hosts_pull_requests: bool = False  # PRs exist: open_pull_request opens one, pull_head_sha/pulls_for_commit read them
    keeps_ci_artifacts: bool = False  # CI runs and their artifacts are readable (workflow_run, list_artifacts, ...)

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

    def push_tags(self, names: list[str]) -> bool:
        """Publish tags this backend created only locally (`--push`); returns whether anything was pushed.

        A hosted backend creates its tags on the server, so the default pushes nothing.
        """
        return False

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

    def pull_head_sha(self, pr: int) -> str | None:
        """The head commit of pull request `pr` as the host sees it now; None where PRs don't exist.

        Raises:
            GitopsError: `pr` is not a pull request of the repository.
        """
        return None

    def pulls_for_commit(self, sha: str) -> list[PullRequestInfo]:
        """The pull requests the host associates with commit `sha` ([] where PRs don't exist).

        A merge commit, a squash commit and each rebased commit all name the PR they came from.

        Raises:
            UsageError: `sha` is not a full 40-hex commit SHA.
        """
        return []

    # --- CI runs and artifacts (keeps_ci_artifacts) ------------------------------------------
    def workflow_run(self, run_id: int) -> WorkflowRunInfo | None:
        """The host's record of CI run `run_id`; None if it is gone or the backend keeps none."""
        return None

    def list_artifacts(self, name: str, run_id: int | None = None) -> list[ArtifactInfo]:
        """Unexpired CI artifacts called `name` (of run `run_id` if given), newest first ([] if none kept)."""
        return []

    def download_artifact_zip(self, artifact: ArtifactInfo, dest: Path, max_bytes: int) -> Path:
        """Download an artifact's zip archive to the file `dest` (at most `max_bytes` bytes).

        Raises:
            AssetNotFoundError: the artifact is gone (or this backend keeps no artifacts).
            GitopsError: it is larger than `max_bytes`.
        """
        raise AssetNotFoundError(f"the {self.name} backend keeps no CI artifacts ({artifact.name})")
