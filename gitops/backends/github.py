"""The `github` backend: tags, release assets and PR comments through GitHub's REST API (PyGithub).

This module imports PyGithub at the top; nothing else in the package imports this module at
start-up, so the CLI pays for PyGithub (and requests) only when the github backend is chosen.

Failure handling lives in one place, `GitHubBackend._call`, instead of PyGithub's urllib3 retry:
- 5xx answers and connection errors (refused, reset, dropped mid-upload, timeouts) are retried with
  exponential backoff (`backoff` * 2**attempt, a little jitter, `retries` times);
- 403/429 rate limits wait as GitHub says (`Retry-After`, else `X-RateLimit-Reset` when
  `X-RateLimit-Remaining` is 0, else a minute for a secondary limit), at most `max_wait` seconds in
  all, then raise ServiceError (exit 3) saying when the limit resets;
- 401 raises UsageError (the token is wrong or expired); other 4xx answers the caller does not
  expect raise ServiceError naming the operation and the HTTP status.
Doing it ourselves (PyGithub is built with `retry=None`) lets uploads re-check the release before
re-sending a file: a dropped upload can leave a half-finished asset that must be deleted first.

The token never appears in messages: every message is scrubbed, exceptions from PyGithub/requests are
not chained (`from None`), and PyGithub's own debug log masks the Authorization header.
"""

from __future__ import annotations

import functools
import math
import mimetypes
import os
import random
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import github
import requests
from github import Auth, GithubException
from github.Artifact import Artifact
from github.GitRelease import GitRelease
from github.GitReleaseAsset import GitReleaseAsset
from github.PaginatedList import PaginatedList

from gitops import logs
from gitops.backends.base import (
    COMMENT_MARKER,
    COMMENT_MAX_CHARS,
    ArtifactInfo,
    AssetNotFoundError,
    Backend,
    PullRequestInfo,
    TagExistsError,
    TagInfo,
    WorkflowRunInfo,
)
from gitops.errors import GitopsError, ServiceError, UsageError

log = logs.logger(__name__)  # through gitops.logs: a command's warning set-up applies

T = TypeVar("T")

DEFAULT_API_URL = "https://api.github.com"
ACTIONS_BOT = "github-actions[bot]"
ACTIONS_BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"
SECONDARY_RATE_WAIT = 60.0  # GitHub: "wait at least one minute" when no Retry-After is given
MAX_RATE_LIMIT_RETRIES = 10
_REPO_RE = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


class _Retryable(Exception):
    """Raised inside an attempt to have `_call` retry it (a lost race, a truncated download)."""


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value < 0:  # float() reads "inf" and "nan"; int(inf) would crash later
        raise UsageError(f"{name} must be a finite number, not negative, not {raw!r}")
    return value


def _gh_message(e: GithubException) -> str:
    data = e.data
    if isinstance(data, dict):
        msg = str(data.get("message") or data.get("data") or "")
        for err in data.get("errors") or []:
            if isinstance(err, dict):
                detail = err.get("message") or err.get("code")
                if detail:
                    msg += f" ({detail})"
        msg = msg.strip()
        if msg.lstrip().startswith("<"):  # an HTML error page from a proxy
            msg = ""
        return msg[:300]
    return ""


def _gh_codes(e: GithubException) -> set[str]:
    data = e.data if isinstance(e.data, dict) else {}
    return {str(err.get("code")) for err in data.get("errors") or [] if isinstance(err, dict)}


def _full_name(repo: Any) -> str:
    return str(repo.full_name or "") if repo is not None else ""


def _iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else str(value or "")


def _pull_info(pr: Any) -> PullRequestInfo:
    """A PyGithub PullRequest (from a listing: no further request) as the backend-neutral record."""
    head = pr.head
    return PullRequestInfo(number=int(pr.number), merged=pr.merged_at is not None, head_sha=str(head.sha or ""),
                           head_repository=_full_name(head.repo), base_ref=str(pr.base.ref or ""))


def _artifact_info(artifact: Artifact) -> ArtifactInfo:
    run = artifact.workflow_run
    return ArtifactInfo(id=int(artifact.id), name=str(artifact.name), size_in_bytes=int(artifact.size_in_bytes or 0),
                        created_at=_iso(artifact.created_at), run_id=int(run.id) if run is not None and run.id else None,
                        head_sha=str(run.head_sha or "") if run is not None else "")


def _is_ours(body: str) -> bool:
    return body.replace("\r\n", "\n").split("\n", 1)[0].strip() == COMMENT_MARKER


class GitHubBackend(Backend):
    """Tags, releases and PR comments of one GitHub repository."""

    name = "github"
    hosted = True
    hosts_pull_requests = True
    keeps_ci_artifacts = True

    def __init__(
        self,
        token: str,
        repository: str,
        api_url: str = DEFAULT_API_URL,
        *,
        max_wait: float = 60.0,
        backoff: float = 1.0,
        retries: int = 5,
        timeout: float = 30.0,
        seconds_between_writes: float = 1.0,
        tagger_name: str = ACTIONS_BOT,
        tagger_email: str = ACTIONS_BOT_EMAIL,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not token:
            raise UsageError("the github backend needs a token (GITHUB_TOKEN)")
        if not _REPO_RE.fullmatch(repository or ""):
            raise UsageError(f"GITHUB_REPOSITORY must be OWNER/NAME, not {repository!r}")
        self._token = token
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.max_wait = max_wait
        self.backoff = backoff
        self.retries = retries
        self.tagger_name, self.tagger_email = tagger_name, tagger_email
        self._sleep = sleep
        # retry=None: PyGithub/urllib3 do not retry; `_call` does (see the module docstring).
        # lazy=True: get_repo()/get_issue() build objects without a request.
        self._gh = github.Github(
            base_url=self.api_url,
            auth=Auth.Token(token),
            retry=None,
            timeout=int(timeout) if timeout >= 1 else 1,
            per_page=100,
            seconds_between_requests=0,
            seconds_between_writes=seconds_between_writes,
            user_agent="gitops-nn",
            lazy=True,
        )
        self._repo = self._gh.get_repo(repository)
        self._requester = self._gh.requester
        self._tag_objects: dict[str, tuple[str, str, str, str, str]] = {}  # sha -> (type, object, msg, tagger, date)
        self._login: str | None = None
        self._staged: dict[str, GitRelease] = {}  # tag -> the draft stage_release filled

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> GitHubBackend:
        """Build from GITHUB_TOKEN, GITHUB_REPOSITORY, GITHUB_API_URL and GITOPS_GITHUB_* settings."""
        env = os.environ if env is None else env
        token = env.get("GITHUB_TOKEN", "").strip()
        if not token:
            raise UsageError(
                "GITHUB_TOKEN is not set: the github backend needs a token "
                "(in a workflow step: `env: GITHUB_TOKEN: ${{ github.token }}`)"
            )
        repository = env.get("GITHUB_REPOSITORY", "").strip()
        if not repository:
            raise UsageError("GITHUB_REPOSITORY is not set: the github backend needs OWNER/NAME")
        settings: dict[str, Any] = {
            "max_wait": _env_float(env, "GITOPS_GITHUB_MAX_WAIT", 60.0),
            "backoff": _env_float(env, "GITOPS_GITHUB_BACKOFF", 1.0),
            "retries": int(_env_float(env, "GITOPS_GITHUB_RETRIES", 5)),
            "timeout": _env_float(env, "GITOPS_GITHUB_TIMEOUT", 30.0),
            "seconds_between_writes": _env_float(env, "GITOPS_GITHUB_WRITE_INTERVAL", 1.0),
        }
        settings.update(kwargs)
        api_url = env.get("GITHUB_API_URL", "").strip() or DEFAULT_API_URL
        return cls(token, repository, api_url, **settings)

    def __repr__(self) -> str:
        return f"GitHubBackend({self.repository!r}, api_url={self.api_url!r})"

    # --- failure handling ---------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _call(self, op: str, fn: Callable[[], T], *, expect: Iterable[int] = ()) -> T:
        """Run `fn` (one or a few API calls) with retries; see the module docstring.

        A GithubException whose status is in `expect` (e.g. 404, 422) goes back to the caller as is.
        """
        expected = set(expect)
        attempt = 0
        rate_waits = 0
        waited = 0.0
        while True:
            try:
                return fn()
            except GithubException as e:
                status = e.status
                headers = {str(k).lower(): str(v) for k, v in (e.headers or {}).items()}
                message = self._scrub(_gh_message(e))
                wait = self._rate_limit_wait(status, headers, message)
                if wait is None and status in expected:
                    raise
                if wait is not None:
                    reset_at = datetime.fromtimestamp(time.time() + wait, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                    if waited + wait > self.max_wait or rate_waits >= MAX_RATE_LIMIT_RETRIES:
                        raise ServiceError(
                            f"GitHub API rate limit during {op} (HTTP {status}"
                            f"{': ' + message if message else ''}): reset at {reset_at}, waited {waited:.0f} s "
                            f"(GITOPS_GITHUB_MAX_WAIT allows {self.max_wait:g} s)"
                        ) from None
                    log.warning("GitHub API rate limit during %s: waiting %.1f s (until %s)", op, wait, reset_at)
                    self._sleep(wait)
                    waited += wait
                    rate_waits += 1
                    continue
                if status == 401:
                    raise UsageError(
                        f"GitHub rejected the token during {op} (HTTP 401{': ' + message if message else ''}): "
                        "check that GITHUB_TOKEN is set to a valid, unexpired token"
                    ) from None
                if status >= 500 and attempt < self.retries:
                    attempt = self._backoff(op, f"HTTP {status}", attempt)
                    continue
                tried = f" after {attempt + 1} attempts" if attempt else ""
                raise ServiceError(
                    f"GitHub {op} failed: HTTP {status}{': ' + message if message else ''}{tried}"
                ) from None
            except (requests.RequestException, ConnectionError, _Retryable) as e:
                if attempt < self.retries:
                    attempt = self._backoff(op, self._describe(e), attempt)
                    continue
                raise ServiceError(
                    f"GitHub {op} failed: {self._describe(e)} after {attempt + 1} attempts"
                ) from None

    def _describe(self, e: BaseException) -> str:
        if isinstance(e, _Retryable):
            return self._scrub(str(e))
        if isinstance(e, requests.Timeout):
            return "timed out"
        if isinstance(e, requests.ConnectionError | ConnectionError):
            return "connection error (refused, reset or closed by the server)"
        return self._scrub(f"{type(e).__name__}: {e}")[:300]

    def _backoff(self, op: str, why: str, attempt: int) -> int:
        delay = min(self.backoff * (2**attempt), 60.0) * (1 + random.random() / 4)
        log.info("GitHub %s: %s; retrying in %.2f s (attempt %d of %d)", op, why, delay, attempt + 2,
                 self.retries + 1)
        self._sleep(delay)
        return attempt + 1

    def _rate_limit_wait(self, status: int, headers: dict[str, str], message: str) -> float | None:
        """Seconds to wait for a rate limit, or None when this answer is not a rate limit."""
        if status not in (403, 429):
            return None
        lowered = message.lower()
        is_limit = status == 429 or "rate limit" in lowered or headers.get("x-ratelimit-remaining") == "0"
        if not is_limit and "retry-after" not in headers:
            return None
        if "retry-after" in headers:
            try:
                return max(float(headers["retry-after"]), 0.0)
            except ValueError:
                pass
        if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
            try:
                # +1: the reset epoch has one-second resolution
                return max(float(headers["x-ratelimit-reset"]) - time.time(), 0.0) + 1.0
            except ValueError:
                pass
        return SECONDARY_RATE_WAIT

    # --- tags ---------------------------------------------------------------------------
    def list_tags(self) -> list[TagInfo]:
        """Every tag of the repository, annotated ones peeled to their commit.

        Read with GitHub's REST API: GET /git/matching-refs/tags/, then GET /git/tags/{sha} per annotated tag.

        Lightweight tags come back with empty message, tagger and date. An empty repository gives [].
        Raises ServiceError when GitHub keeps failing or rate-limits past `max_wait` seconds.
        """
        # Cost: one request per 100 refs (matching-refs is paginated) plus one GET per annotated tag
        # object (the REST API has no batch read), so N tags take about N + N/100 requests, fetched
        # serially (one PyGithub connection). Tag objects are immutable, so they are cached by sha
        # for the life of this backend: a second listing costs only the ref pages. (GraphQL could
        # fetch 100 tags with their targets per request if thousands of tags ever make this slow.)
        def refs() -> list[tuple[str, str, str]]:
            return [(r.ref, r.object.type, r.object.sha) for r in self._repo.get_git_matching_refs("tags/")]

        try:
            found = self._call("list tags", refs, expect=(404, 409))
        except GithubException:  # 409: the repository is empty; 404: no refs at all
            return []
        out = []
        for ref, typ, sha in found:
            name = ref.removeprefix("refs/tags/")
            if typ != "tag":  # a lightweight tag: no annotation
                out.append(TagInfo(name=name, commit=sha, message="", tagger="", date=""))
                continue
            _, commit, message, tagger, date = self._peel(name, sha)
            out.append(TagInfo(name=name, commit=commit, message=message, tagger=tagger, date=date))
        return out

    def _tag_object(self, name: str, sha: str) -> tuple[str, str, str, str, str]:
        cached = self._tag_objects.get(sha)
        if cached is None:
            t = self._call(f"read tag {name}", lambda: self._repo.get_git_tag(sha))
            tagger = t.tagger
            who = f"{tagger.name} <{tagger.email}>" if tagger is not None else ""
            date = tagger.date.isoformat() if tagger is not None and tagger.date is not None else ""
            cached = (t.object.type, t.object.sha, (t.message or "").rstrip("\n"), who, date)
            self._tag_objects[sha] = cached
        return cached

    def _peel(self, name: str, sha: str) -> tuple[str, str, str, str, str]:
        """The outermost tag's annotation with the commit that (possibly nested) tags point to."""
        first = obj = self._tag_object(name, sha)
        for _ in range(10):
            if obj[0] != "tag":
                break
            obj = self._tag_object(name, obj[1])
        return (obj[0], obj[1], first[2], first[3], first[4])

    def _get_ref_sha(self, name: str) -> str | None:
        quoted = urllib.parse.quote(f"tags/{name}", safe="/")

        def get() -> str:
            _, data = self._requester.requestJsonAndCheck("GET", f"{self._repo.url}/git/ref/{quoted}")
            return str(data["object"]["sha"])

        try:
            return self._call(f"read tag {name}", get, expect=(404,))
        except GithubException:
            return None

    def create_tag(self, name: str, commit: str, message: str) -> TagInfo:
        """Create the annotated tag object, then its ref (POST /git/tags, POST /git/refs); returns it as TagInfo.

        Raises:
            TagExistsError: another writer's ref `refs/tags/<name>` is already there.
            GitopsError: GitHub refused the tag object (commit not pushed, or not a full 40-hex sha).
            ServiceError: any other refusal or persistent failure.
        """
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        tagger = github.InputGitAuthor(self.tagger_name, self.tagger_email, date)
        op = f"create tag {name}"
        try:
            obj = self._call(op, lambda: self._repo.create_git_tag(name, message, commit, "commit", tagger),
                             expect=(422,))
        except GithubException as e:
            raise GitopsError(
                f"GitHub refused tag {name} on {commit}: {self._scrub(_gh_message(e))} "
                "(is the commit pushed, and a full 40-character sha?)"
            ) from None
        try:
            self._call(op, lambda: self._repo.create_git_ref(f"refs/tags/{name}", obj.sha), expect=(422,))
        except GithubException as e:
            if "already exists" not in _gh_message(e).lower():
                raise ServiceError(f"GitHub {op} failed: HTTP 422: {self._scrub(_gh_message(e))}") from None
            # A retried POST whose first answer was lost created it for us: same tag object sha.
            if self._get_ref_sha(name) != obj.sha:
                raise TagExistsError(f"tag {name} already exists") from None
        who = f"{self.tagger_name} <{self.tagger_email}>"
        iso = datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).isoformat()
        self._tag_objects[obj.sha] = ("commit", commit, message, who, iso)
        return TagInfo(name=name, commit=commit, message=message, tagger=who, date=iso)

    def delete_tag(self, name: str) -> None:
        """Delete the tag and, if one exists, its release (a release left without its tag is debris)."""
        release = self._find_release(name)
        if release is not None:
            try:
                self._call(f"delete release {name}", release.delete_release, expect=(404,))
            except GithubException:
                pass
        quoted = urllib.parse.quote(f"tags/{name}", safe="/")

        def delete() -> None:
            self._requester.requestJsonAndCheck("DELETE", f"{self._repo.url}/git/refs/{quoted}")

        try:
            self._call(f"delete tag {name}", delete, expect=(404, 422))
        except GithubException:  # 422 "Reference does not exist": already gone
            pass

    # --- release assets -----------------------------------------------------------------
    def _find_release(self, tag: str) -> GitRelease | None:
        """The published release of `tag`, else its newest draft: a release killed between creating the
        tag and publishing left its verified assets there, and readers (who verify every checksum against
        the tag) use them until the next `release` publishes it."""
        try:
            return self._call(f"read release {tag}", lambda: self._repo.get_release(tag), expect=(404,))
        except GithubException:
            pass
        drafts = [r for r in self._releases_for(tag) if r.draft]
        return drafts[-1] if drafts else None

    def _assets_by_name(self, release: GitRelease, tag: str) -> dict[str, GitReleaseAsset]:
        assets = self._call(f"list assets of {tag}", lambda: list(release.get_assets()))
        return {a.name: a for a in assets}

    def _releases_for(self, tag: str) -> list[GitRelease]:
        """Every release (drafts included: the token can push) whose tag name is `tag`, oldest first."""
        found = self._call("list releases", lambda: [r for r in self._repo.get_releases() if r.tag_name == tag])
        return sorted(found, key=lambda r: r.id)

    def stage_release(self, tag: str, commit: str, title: str, notes: str, files: list[Path]) -> str:
        """Upload `files` to a *draft* release of `tag` and verify them; the tag need not exist.

        A draft makes no tag and is invisible to readers, who go through the published release of a
        tag. A draft with the same notes (they carry the archive's sha256) is one an interrupted run
        of this very release left: it is reused, and its finished assets are not uploaded again. A
        published release of `tag` (a repair: the tag exists, assets went missing) is completed.

        Raises:
            IntegrityError: an asset reads back with another size or sha256 digest than the file sent.
        """
        candidates = self._releases_for(tag)
        release = next((r for r in candidates if not r.draft), None)
        if release is None:
            release = next((r for r in candidates if r.draft and (r.body or "") == notes), None)
        if release is None:
            release = self._call(
                f"create draft release {tag}",
                lambda: self._repo.create_git_release(tag, name=title, message=notes, draft=True,
                                                      target_commitish=commit or github.GithubObject.NotSet),
            )
        existing = self._assets_by_name(release, tag)
        from gitops import killpoints

        for path in files:
            existing = self._upload(release, tag, Path(path), existing)
            killpoints.reached("release.staging")  # some assets uploaded, not all
        self._verify(release, tag, files)
        self._staged[tag] = release
        return release.html_url

    def _verify(self, release: GitRelease, tag: str, files: list[Path]) -> None:
        from gitops.checksums import sha256_file
        from gitops.errors import IntegrityError

        listed = self._assets_by_name(release, tag)
        for path in files:
            asset = listed.get(Path(path).name)
            size = Path(path).stat().st_size
            if asset is None or asset.state != "uploaded" or asset.size != size:
                raise IntegrityError(f"release {tag}: {Path(path).name} is not on GitHub as uploaded "
                                     f"({'missing' if asset is None else f'{asset.state}, {asset.size} bytes'})")
            digest = getattr(asset, "digest", None)  # "sha256:<hex>" (GitHub computes it since 2025)
            if digest and digest != "sha256:" + sha256_file(Path(path)):
                raise IntegrityError(f"release {tag}: {asset.name} on GitHub has digest {digest[:23]}..., "
                                     "not the file's")

    def finalize_release(self, tag: str, title: str, notes: str) -> str:
        """Publish the staged draft of `tag` (the tag exists now); remove other drafts of `tag`."""
        release = self._staged.pop(tag, None)
        candidates = self._releases_for(tag)
        if release is None:
            drafts = [r for r in candidates if r.draft]
            release = next((r for r in candidates if not r.draft), None) or next(
                (r for r in drafts if (r.body or "").rstrip("\n") == notes.rstrip("\n")), None) or (
                drafts[-1] if drafts else None)
        if release is None:
            raise GitopsError(f"release {tag}: nothing was staged to publish")
        if release.draft:
            rel = release
            release = self._call(f"publish release {tag}", lambda: rel.update_release(
                name=title, message=notes, draft=False, prerelease=rel.prerelease))
        for other in candidates:  # drafts that interrupted or losing runs left for this tag
            if other.draft and other.id != release.id:
                try:
                    self._call(f"delete stale draft of {tag}", other.delete_release, expect=(404,))
                except GithubException:
                    pass
        return release.html_url

    def is_published(self, tag: str) -> bool:
        """Whether `tag` has a published (non-draft) GitHub release.

        GitHub's GET /releases/tags/{tag} does not show drafts, so a staged, unfinalized release reads as False.
        """
        try:
            self._call(f"read release {tag}", lambda: self._repo.get_release(tag), expect=(404,))
            return True
        except GithubException:
            return False

    def discard_staged(self, tag: str) -> None:
        """Delete the draft release this backend staged for `tag` (a published one is left alone)."""
        release = self._staged.pop(tag, None)
        if release is not None and release.draft:
            try:
                self._call(f"delete draft release {tag}", release.delete_release, expect=(404,))
            except GithubException:
                pass

    def publish_release(self, tag: str, title: str, notes: str, files: list[Path]) -> str:
        """Stage `files` on a draft release of `tag`, then publish it; returns the release's html URL."""
        self.stage_release(tag, "", title, notes, files)
        return self.finalize_release(tag, title, notes)

    def _upload(
        self, release: GitRelease, tag: str, path: Path, existing: dict[str, GitReleaseAsset]
    ) -> dict[str, GitReleaseAsset]:
        """Upload `path` unless a finished asset of that name and size is there; returns the new listing.

        A half-finished asset (other size, state != "uploaded") is deleted and uploaded again. Each
        retry first re-reads the release: a dropped upload may have left such an asset behind.
        """
        name, size = path.name, path.stat().st_size
        ctype, encoding = mimetypes.guess_type(name)
        ctype = "application/gzip" if encoding == "gzip" else (ctype or "application/octet-stream")
        state = {"assets": existing, "fresh": True}

        def attempt() -> None:
            if not state["fresh"]:
                state["assets"] = self._assets_by_name(release, tag)
            state["fresh"] = False
            current = state["assets"].get(name)
            if current is not None:
                if current.state == "uploaded" and current.size == size:
                    return
                log.info("release %s: replacing half-finished asset %s (%s, %d bytes)", tag, name,
                         current.state, current.size)
                try:
                    self._call(f"delete asset {name} of {tag}", current.delete_asset, expect=(404,))
                except GithubException:
                    pass
            with path.open("rb") as fh:
                try:
                    asset = release.upload_asset_from_memory(fh, size, name, content_type=ctype)
                except GithubException as e:
                    if e.status == 422 and "already_exists" in _gh_codes(e):
                        raise _Retryable(f"asset {name} appeared while uploading it") from None
                    raise
            state["assets"] = {**state["assets"], name: asset}

        self._call(f"upload {name} to release {tag}", attempt)
        return state["assets"]

    def list_assets(self, tag: str) -> list[str]:
        """Names of the fully uploaded assets (state "uploaded") of `tag`'s release, sorted; [] with no release."""
        release = self._find_release(tag)
        if release is None:
            return []
        return sorted(n for n, a in self._assets_by_name(release, tag).items() if a.state == "uploaded")

    def download_asset(self, tag: str, asset: str, dest: Path) -> Path:
        """Stream asset `asset` of `tag`'s release to the file `dest` (via a `.part` file, renamed when complete).

        A download that ends short of the asset's size in bytes is retried. Returns `dest`.
        Raises AssetNotFoundError when the release or the asset is missing (or deleted meanwhile).
        """
        release = self._find_release(tag)
        if release is None:
            raise AssetNotFoundError(f"no GitHub release for {tag}")
        assets = self._assets_by_name(release, tag)
        found = assets.get(asset)
        if found is None or found.state != "uploaded":
            have = ", ".join(sorted(assets)) or "none"
            raise AssetNotFoundError(f"release {tag} has no asset {asset} (it has: {have})")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> None:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                written = 0
                with os.fdopen(fd, "wb") as fh:
                    try:
                        _, _, chunks = found.download_asset(None, chunk_size=1 << 16)
                    except requests.HTTPError as e:  # a streamed answer's error status
                        resp = e.response
                        raise GithubException(
                            resp.status_code, {"message": resp.reason}, dict(resp.headers)
                        ) from None
                    for chunk in chunks:
                        fh.write(chunk)
                        written += len(chunk)
                if written != found.size:
                    raise _Retryable(f"download of {asset} ended after {written} of {found.size} bytes")
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        try:
            self._call(f"download {asset} of {tag}", attempt, expect=(404,))
        except GithubException:
            raise AssetNotFoundError(f"release {tag} has no asset {asset} (it was deleted)") from None
        return dest

    # --- pull requests ------------------------------------------------------------------
    def _my_login(self) -> str:
        """The token's login; installation tokens may not read /user: they act as github-actions[bot]."""
        if self._login is None:
            try:
                self._login = str(self._call("read the authenticated user", lambda: self._gh.get_user().login,
                                             expect=(403, 404)))
            except GithubException:
                self._login = ACTIONS_BOT
        return self._login

    def _our_comments(self, pr: int) -> list[Any]:
        login = self._my_login()
        issue = self._repo.get_issue(pr)
        comments = self._call(f"list comments of #{pr}", lambda: list(issue.get_comments()), expect=(404,))
        ours = [c for c in comments if c.user is not None and c.user.login == login and _is_ours(c.body or "")]
        return sorted(ours, key=lambda c: (c.created_at, c.id))

    def upsert_comment(self, pr: int, body: str) -> str:
        """Create or edit the one PR comment carrying COMMENT_MARKER; returns its html URL.

        The body is capped at COMMENT_MAX_CHARS characters. Duplicates from a racing run are deleted (oldest kept).

        Raises GitopsError when `pr` is no issue or PR of the repository, ServiceError when GitHub keeps failing.
        """
        if not _is_ours(body):
            body = f"{COMMENT_MARKER}\n{body}"
        if len(body) > COMMENT_MAX_CHARS:
            note = "\n\n… (truncated: the report is longer than a GitHub comment allows)"
            body = body[: COMMENT_MAX_CHARS - len(note)] + note
        op = f"comment on #{pr}"
        for _ in range(5):  # a comment deleted under us by a racing run: look again
            try:
                ours = self._our_comments(pr)
                if ours:
                    keep = ours[0]
                    if keep.body != body:
                        self._call(op, functools.partial(keep.edit, body), expect=(404,))
                else:
                    create = functools.partial(self._repo.get_issue(pr).create_comment, body)
                    self._call(op, create, expect=(404,))
                # Another run may have posted at the same moment: keep the oldest, delete the rest.
                ours = self._our_comments(pr)
                if not ours:
                    continue
                keep = ours[0]
                for extra in ours[1:]:
                    try:
                        self._call(f"delete duplicate comment on #{pr}", extra.delete, expect=(404,))
                    except GithubException:
                        pass  # the other run deleted it
                if keep.body != body:
                    self._call(op, functools.partial(keep.edit, body), expect=(404,))
                return keep.html_url
            except GithubException as e:
                if e.status == 404 and not self._pr_exists(pr):
                    raise GitopsError(f"#{pr} is not an issue or pull request of {self.repository}") from None
                continue  # our comment vanished between listing and editing: start over
        raise ServiceError(f"GitHub {op} failed: the comment kept changing under us")

    def _pr_exists(self, pr: int) -> bool:
        try:
            self._call(f"read #{pr}", lambda: self._repo.get_issue(int(pr)).complete(), expect=(404,))
            return True
        except GithubException:
            return False

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> str | None:
        """Open a PR from branch `head` to `base` (POST /pulls); returns its html URL, or the open PR's if one exists.

        Raises ServiceError when GitHub refuses it (HTTP 422 for another reason, e.g. no commits between the branches).
        """
        op = f"open pull request {head} -> {base}"
        try:
            pr = self._call(op, lambda: self._repo.create_pull(base=base, head=head, title=title, body=body),
                            expect=(422,))
            return pr.html_url
        except GithubException as e:
            message = self._scrub(_gh_message(e))
            if "already exists" in message.lower():
                pulls = self._call(
                    op, lambda: list(self._repo.get_pulls(state="open", head=f"{self.owner}:{head}", base=base))
                )
                if pulls:
                    return pulls[0].html_url
            raise ServiceError(f"GitHub {op} failed: HTTP 422: {message}") from None

    # --- pull request heads and Actions artifacts (used by comment, ci fetch-*, release-pending) ----
    def pull_head_sha(self, pr: int) -> str:
        """The head commit of pull request `pr` as GitHub sees it now (GET /repos/{o}/{r}/pulls/{n}).

        Raises:
            GitopsError: `pr` is not a pull request of the repository.
        """
        try:
            return self._call(f"read pull request #{pr}", lambda: str(self._repo.get_pull(int(pr)).head.sha or ""),
                              expect=(404,))
        except GithubException:
            raise GitopsError(f"#{pr} is not a pull request of {self.repository}") from None

    def get_json(self, op: str, path: str, *, missing: Iterable[int] = (404,)) -> tuple[int, Any]:
        """GET `path` (relative to the API root, e.g. `/repos/o/r/environments/x`) with retries.

        For the endpoints PyGithub has no method for (the settings `gitops doctor --github` reads).
        Returns (200, JSON) or, for a status in `missing` (e.g. 403 a setting the token may not read, 404),
        (status, None). Other failures raise like every call here (ServiceError: exit 3).
        """
        url = f"{self.api_url}{path}"
        try:
            _, data = self._call(op, lambda: self._requester.requestJsonAndCheck("GET", url), expect=tuple(missing))
        except GithubException as e:
            return int(e.status), None
        return 200, data

    def pulls_for_commit(self, sha: str) -> list[PullRequestInfo]:
        """The pull requests GitHub associates with commit `sha` (GET /repos/{o}/{r}/commits/{sha}/pulls).

        A merge commit, a squash commit and each rebased commit all name the PR they came from; so does a
        commit of the PR's own branch. Empty when GitHub knows none (or the commit is unknown to it).

        Raises:
            UsageError: `sha` is not a 40-hex commit SHA.
        """
        if not re.fullmatch(r"[0-9a-f]{40}", sha or ""):
            raise UsageError(f"not a commit SHA: {sha!r}")

        def fetch() -> list[PullRequestInfo]:
            return [_pull_info(p) for p in self._repo.get_commit(sha).get_pulls()]

        try:
            return self._call(f"list pull requests of commit {sha[:12]}", fetch, expect=(404, 422))
        except GithubException:
            return []

    def workflow_run(self, run_id: int) -> WorkflowRunInfo | None:
        """GitHub's record of workflow run `run_id` (GET /repos/{o}/{r}/actions/runs/{id}); None if gone."""

        def fetch() -> WorkflowRunInfo:
            run = self._repo.get_workflow_run(int(run_id))
            return WorkflowRunInfo(id=int(run.id), event=str(run.event or ""),
                                   path=str(run.path or "").split("@", 1)[0], head_sha=str(run.head_sha or ""),
                                   head_repository=_full_name(run.head_repository),
                                   repository=_full_name(run.repository))

        try:
            return self._call(f"read workflow run {int(run_id)}", fetch, expect=(404,))
        except GithubException:
            return None

    def list_artifacts(self, name: str, run_id: int | None = None) -> list[ArtifactInfo]:
        """Unexpired Actions artifacts called `name` (of workflow run `run_id` if given), newest first.

        GET /repos/{o}/{r}/actions/artifacts?name= (or .../actions/runs/{id}/artifacts?name=), through
        PyGithub's paginated listing; at most 5,000 are read, far beyond any real repository.
        """
        if run_id:  # WorkflowRun.get_artifacts() would first GET the run; list its artifacts directly
            pages: Iterable[Artifact] = PaginatedList(Artifact, self._requester,
                                                      f"{self._repo.url}/actions/runs/{int(run_id)}/artifacts",
                                                      {"name": name}, list_item="artifacts")
        else:
            pages = self._repo.get_artifacts(name=name)

        def fetch() -> list[ArtifactInfo]:
            found = []
            for i, artifact in enumerate(pages):
                if i >= 5000:
                    break
                if artifact.name == name and not artifact.expired:
                    found.append(_artifact_info(artifact))
            return found

        try:
            live = self._call(f"list artifacts {name}", fetch, expect=(404,))
        except GithubException:
            return []
        return sorted(live, key=lambda a: (a.created_at, a.id), reverse=True)

    def download_artifact_zip(self, artifact: ArtifactInfo, dest: Path, max_bytes: int) -> Path:
        """Download an artifact's zip archive to the file `dest` (at most `max_bytes`).

        A plain streamed `requests.get`: PyGithub has no download for artifacts, and requests drops the
        Authorization header when GitHub redirects to its blob storage.

        Raises:
            AssetNotFoundError: the artifact is gone (404, 410).
            GitopsError: it is larger than `max_bytes`.
        """
        url = f"{self.api_url}/repos/{self.repository}/actions/artifacts/{int(artifact.id)}/zip"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/vnd.github+json",
                   "User-Agent": "gitops-nn", "X-GitHub-Api-Version": "2022-11-28"}
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> None:
            # requests drops the Authorization header when GitHub redirects to its blob storage host
            with requests.get(url, headers=headers, stream=True, timeout=60, allow_redirects=True) as resp:
                if resp.status_code >= 400:
                    raise GithubException(resp.status_code, {"message": resp.reason}, dict(resp.headers))
                written = 0
                with dest.open("wb") as fh:
                    for chunk in resp.iter_content(1 << 16):
                        written += len(chunk)
                        if written > max_bytes:
                            raise GitopsError(f"artifact {artifact.name} is larger than {max_bytes} bytes")
                        fh.write(chunk)

        try:
            self._call(f"download artifact {artifact.name}", attempt, expect=(404, 410))
        except GithubException:
            raise AssetNotFoundError(f"artifact {artifact.name} (id {artifact.id}) is gone") from None
        return dest
