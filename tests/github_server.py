"""A small GitHub REST emulator on 127.0.0.1 for testing the `github` backend.

It answers the endpoints the backend uses the way GitHub's REST docs describe them (status codes,
JSON shapes with the fields PyGithub parses, RFC 5988 `Link` pagination, rate-limit headers), keeps
its state in memory, records every request, and injects faults:

    with GitHubServer(token="ghs_x") as gh:
        gh.add_pull(7)
        gh.inject("POST", r"/git/refs$", status=502, times=2)
        gh.inject_secondary_rate_limit("GET", r"/comments$", retry_after=1)
        gh.inject_primary_rate_limit("*", r".", reset_in=3600)
        gh.inject_drop("POST", r"^/uploads/", leave_partial=True)
        backend = GitHubBackend(token="ghs_x", repository=gh.full_name, api_url=gh.url, ...)

Besides tags, releases, comments, pulls and artifacts it knows workflow runs (`add_workflow_run`:
event, workflow path, head SHA and repository, as `GET /actions/runs/{id}` reports them), the
commit-to-PR association (`merge_pull`, `GET /commits/{sha}/pulls`), and the settings `gitops doctor
--github` reads (`settings`, `forbidden`, `private`; org runner groups under `/orgs/{org}/...`).
`POST /_test/artifacts?name=&run_id=` (no token, test-only) files an artifact the way the runner's
artifact service does for actions/upload-artifact; the act harness's upload stand-in uses it.

Every request body is read completely before any answer (an error answered before the body is read
would leave the body on a kept-alive connection, to be parsed as the next request); the one exception
is `inject_drop`, which reads part of the body and then closes the socket, as a dropped connection does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DOCS = "https://docs.github.com/rest"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _q(segment: str) -> str:
    """Percent-encode one path segment the way GitHub writes `@`, `#` and `/` in URLs it returns."""
    return urllib.parse.quote(segment, safe="")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, *, errors: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict:
        out: dict[str, Any] = {"message": self.message, "documentation_url": DOCS}
        if self.errors is not None:
            out["errors"] = self.errors
        out["status"] = str(self.status)
        return out


def validation_failed(resource: str, code: str, field_name: str, message: str | None = None) -> HTTPError:
    err: dict[str, Any] = {"resource": resource, "code": code, "field": field_name}
    if message:
        err["message"] = message
    return HTTPError(422, "Validation Failed", errors=[err])


@dataclass
class RecordedRequest:
    method: str
    path: str  # as sent, query included
    headers: dict[str, str]  # Authorization removed
    body: bytes
    status: int | None = None  # None: the connection was dropped


@dataclass
class Fault:
    method: str  # "*" for any
    pattern: re.Pattern
    times: int | None  # None: forever
    kind: str  # "status" | "drop" | "delay"
    status: int = 502
    body: dict | None = None
    headers: dict = field(default_factory=dict)
    after_bytes: int | None = None
    leave_partial: bool = False
    after_processing: bool = False
    delay: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method == "*" or self.method == method) and bool(self.pattern.search(path))


@dataclass
class User:
    login: str
    id: int
    type: str = "User"

    def json(self, base: str) -> dict:
        return {
            "login": self.login,
            "id": self.id,
            "node_id": f"U_{self.id}",
            "type": self.type,
            "site_admin": False,
            "url": f"{base}/users/{_q(self.login)}",
            "html_url": f"{base}/{_q(self.login)}",
            "avatar_url": f"{base}/avatars/{self.id}",
        }


class GitHubServer:
    """In-memory GitHub for one repository; a context manager that serves on 127.0.0.1:<free port>."""

    def __init__(
        self,
        *,
        owner: str = "acme",
        repo: str = "models",
        token: str = "ghs_testtoken0000000000000000000000000",
        login: str = "github-actions[bot]",
        user_type: str = "Bot",
        user_endpoint: str = "ok",  # "ok" | "forbidden" (installation tokens) | "not_found"
        rate_limit: int = 5000,
    ):
        self.owner, self.repo = owner, repo
        self.full_name = f"{owner}/{repo}"
        self._ids = itertools.count(1000)
        self.tokens: dict[str, User] = {token: User(login, 41898282, user_type)}
        self.token = token
        self.user_endpoint = user_endpoint
        self.rate_limit = rate_limit
        self.rate_used: dict[str, int] = {}
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        # state
        self.issues: dict[int, dict] = {}  # number -> {"pull": bool, ...}
        self.next_number = 1
        self.comments: dict[int, dict] = {}  # id -> stored comment
        self.tag_objects: dict[str, dict] = {}  # sha -> stored tag object
        self.refs: dict[str, dict] = {}  # "refs/tags/x" -> {"sha", "type"}
        self.releases: dict[int, dict] = {}
        self.assets: dict[int, dict] = {}  # id -> stored asset (with "data")
        self.pulls: dict[int, dict] = {}
        self.artifacts: dict[int, dict] = {}  # id -> stored Actions artifact (with "data": the zip)
        self.workflow_runs: dict[int, dict] = {}  # id -> stored workflow run (event, path, head repository)
        self.commit_pulls: dict[str, list[int]] = {}  # commit sha -> PR numbers GitHub associates with it
        # Settings `gitops doctor --github` reads. Each is the JSON GitHub answers, or None for "404".
        # `forbidden` names settings answered with 403 (the token may not read them).
        self.private = False
        self.settings: dict[str, Any] = {
            "fork_pr_approval": {"approval_policy": "all_external_contributors"},
            "fork_pr_private": {"run_workflows_from_fork_pull_requests": True, "send_write_tokens_to_workflows": False,
                                "send_secrets_and_variables": False, "require_approval_for_fork_pr_workflows": True},
            "environments": {},  # name -> environment JSON (protection_rules, ...)
            "runner_groups": None,  # None: the owner is not an organization (404); else a list of groups
        }
        self.forbidden: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> GitHubServer:
        server = self

        class Handler(_Handler):
            gh = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="github-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> GitHubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def repo_url(self) -> str:
        return f"{self.url}/repos/{self.owner}/{self.repo}"

    # --- fault injection ----------------------------------------------------------------
    def inject(
        self,
        method: str,
        path_regex: str,
        status: int = 502,
        times: int | None = 1,
        *,
        body: dict | None = None,
        headers: dict | None = None,
        after_processing: bool = False,
    ) -> Fault:
        """Answer the next `times` matching requests (None: all) with `status`.

        `path_regex` is searched in the decoded path (no query), e.g. r"/git/refs$". With
        `after_processing`, the request takes effect first and only its answer is lost (as when a
        proxy times out on a request GitHub did carry out).
        """
        f = Fault(method.upper(), re.compile(path_regex), times, "status", status, body, dict(headers or {}),
                  after_processing=after_processing)
        with self.lock:
            self.faults.append(f)
        return f

    def inject_secondary_rate_limit(
        self, method: str, path_regex: str, *, retry_after: int | None = 1, times: int | None = 1
    ) -> Fault:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        body = {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
        }
        return self.inject(method, path_regex, 403, times, body=body, headers=headers)

    def inject_primary_rate_limit(
        self, method: str, path_regex: str, *, reset_in: float = 3600, status: int = 403, times: int | None = 1
    ) -> Fault:
        reset = int(time.time() + reset_in)
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Used": str(self.rate_limit),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Resource": "core",
        }
        body = {
            "message": "API rate limit exceeded for installation ID 1.",
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
        }
        return self.inject(method, path_regex, status, times, body=body, headers=headers)

    def inject_drop(
        self, method: str, path_regex: str, *, times: int | None = 1, after_bytes: int | None = None,
        leave_partial: bool = False,
    ) -> Fault:
        """Close the connection after reading `after_bytes` of the body (default: half of it).

        With `leave_partial`, an upload leaves a half-finished asset (state "starter") behind, as
        GitHub does when an upload breaks off.
        """
        f = Fault(method.upper(), re.compile(path_regex), times, "drop", after_bytes=after_bytes,
                  leave_partial=leave_partial)
        with self.lock:
            self.faults.append(f)
        return f

    def inject_delay(self, method: str, path_regex: str, seconds: float, *, times: int | None = 1) -> Fault:
        """Hold matching requests for `seconds` before handling them normally (to widen races)."""
        f = Fault(method.upper(), re.compile(path_regex), times, "delay", delay=seconds)
        with self.lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path):
                    f.hits += 1
                    return f
        return None

    # --- test helpers -------------------------------------------------------------------
    def add_token(self, token: str, login: str, user_type: str = "User") -> None:
        with self.lock:
            self.tokens[token] = User(login, next(self._ids), user_type)

    def add_pull(self, number: int | None = None, head: str = "feature", base: str = "main",
                 head_sha: str = "0" * 40, base_sha: str = "0" * 40, head_repo: str | None = None) -> int:
        """A pull request; `head_repo` (OWNER/NAME) is where its head branch lives (a fork's name, or this one)."""
        with self.lock:
            number = number or self.next_number
            self.next_number = max(self.next_number, number + 1)
            self.issues[number] = {"pull": True}
            self.pulls[number] = self._new_pull(number, head, base, "PR", "", self._any_user())
            self.pulls[number].update(head_sha=head_sha, base_sha=base_sha, head_repo=head_repo or self.full_name)
            return number

    def merge_pull(self, number: int, merge_commit_sha: str, *commits: str) -> None:
        """Mark PR `number` merged as `merge_commit_sha` and associate that commit (and `commits`, e.g. the
        rebased ones) with it, as GitHub does for merge, squash and rebase merges alike."""
        with self.lock:
            p = self.pulls[number]
            p.update(state="closed", merged=True, merge_commit_sha=merge_commit_sha)
            for sha in (merge_commit_sha, p.get("head_sha", ""), *commits):
                if sha and number not in self.commit_pulls.setdefault(sha, []):
                    self.commit_pulls[sha].append(number)

    def add_workflow_run(self, run_id: int, *, path: str, event: str, head_sha: str, head_branch: str = "main",
                         head_repo: str | None = None, name: str = "", conclusion: str | None = "success") -> None:
        """A workflow run as GitHub's API describes it: `path` is the workflow file (`.github/workflows/x.yml`),
        `event` what triggered it, `head_repo` the repository of its head commit (a fork's for fork PRs)."""
        with self.lock:
            self.workflow_runs[run_id] = {"id": run_id, "path": path, "event": event, "head_sha": head_sha,
                                          "head_branch": head_branch, "head_repo": head_repo or self.full_name,
                                          "name": name or path.rsplit("/", 1)[-1], "conclusion": conclusion}

    def add_artifact(self, name: str, data: bytes, *, run_id: int = 1, head_sha: str = "0" * 40,
                     head_branch: str = "feature", expired: bool = False, created_at: str | None = None) -> int:
        """An Actions artifact (`data` is its zip archive) of workflow run `run_id` at `head_sha`."""
        with self.lock:
            aid = next(self._ids)
            run = self.workflow_runs.get(run_id)
            if run is not None:  # an artifact's workflow_run fields are its run's
                head_sha, head_branch = run["head_sha"], run["head_branch"]
            self.artifacts[aid] = {"id": aid, "name": name, "data": data, "run_id": run_id, "head_sha": head_sha,
                                   "head_branch": head_branch, "expired": expired,
                                   "created_at": created_at or _now_iso()}
            return aid

    def add_comment(self, pr: int, body: str, login: str = "someone", user_type: str = "User") -> int:
        with self.lock:
            user = User(login, 7000 + len(login), user_type)
            return self._new_comment(pr, body, user)["id"]

    def comment_bodies(self, pr: int, login: str | None = None) -> list[str]:
        with self.lock:
            return [
                c["body"]
                for c in sorted(self.comments.values(), key=lambda c: c["id"])
                if c["issue"] == pr and (login is None or c["user"].login == login)
            ]

    def add_release_asset(self, tag: str, name: str, data: bytes, state: str = "uploaded") -> int:
        """Attach an asset directly (e.g. a half-finished upload with state "starter")."""
        with self.lock:
            rel = self._release_by_tag(tag)
            if rel is None:
                raise KeyError(tag)
            return self._new_asset(rel, name, data, "application/octet-stream", state, self._any_user())["id"]

    def release_assets(self, tag: str) -> dict[str, bytes]:
        with self.lock:
            rel = self._release_by_tag(tag)
            if rel is None:
                return {}
            return {a["name"]: a["data"] for a in self.assets.values() if a["release"] == rel["id"]}

    def tag_names(self) -> list[str]:
        with self.lock:
            return sorted(r[len("refs/tags/"):] for r in self.refs if r.startswith("refs/tags/"))

    def add_annotated_tag(self, name: str, commit: str, message: str, tagger: str = "Bot",
                          email: str = "bot@example.com", date: str = "2024-05-01T12:00:00Z") -> str:
        with self.lock:
            content = f"object {commit}\ntype commit\ntag {name}\ntagger {tagger} <{email}> {date}\n\n{message}"
            sha = hashlib.sha1(f"tag {len(content.encode())}\0{content}".encode()).hexdigest()
            self.tag_objects[sha] = {"sha": sha, "tag": name, "message": message, "object": commit,
                                     "type": "commit", "tagger": {"name": tagger, "email": email, "date": date}}
            self.refs[f"refs/tags/{name}"] = {"sha": sha, "type": "tag"}
            return sha

    def add_lightweight_tag(self, name: str, commit: str) -> None:
        with self.lock:
            self.refs[f"refs/tags/{name}"] = {"sha": commit, "type": "commit"}

    def requests_matching(self, method: str, path_regex: str) -> list[RecordedRequest]:
        pat = re.compile(path_regex)
        with self.lock:
            return [
                r for r in self.requests
                if (method == "*" or r.method == method) and pat.search(urllib.parse.unquote(r.path.split("?")[0]))
            ]

    def reset_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # --- state helpers (called with the lock held) --------------------------------------
    def _any_user(self) -> User:
        return next(iter(self.tokens.values()))

    def _rate_headers(self, token: str | None) -> dict[str, str]:
        used = self.rate_used.get(token or "", 0)
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(self.rate_limit - used, 0)),
            "X-RateLimit-Reset": str(int(time.time()) + 3600),
            "X-RateLimit-Used": str(used),
            "X-RateLimit-Resource": "core",
        }

    def _new_comment(self, issue: int, body: str, user: User) -> dict:
        cid = next(self._ids)
        now = _now_iso()
        c = {"id": cid, "issue": issue, "body": body, "user": user, "created_at": now, "updated_at": now}
        self.comments[cid] = c
        return c

    def _comment_json(self, c: dict) -> dict:
        base, repo = self.url, self.repo_url
        return {
            "id": c["id"],
            "node_id": f"IC_{c['id']}",
            "url": f"{repo}/issues/comments/{c['id']}",
            "html_url": f"{base}/{self.full_name}/pull/{c['issue']}#issuecomment-{c['id']}",
            "issue_url": f"{repo}/issues/{c['issue']}",
            "body": c["body"],
            "user": c["user"].json(base),
            "created_at": c["created_at"],
            "updated_at": c["updated_at"],
            "author_association": "NONE",
        }

    def _tag_object_json(self, t: dict) -> dict:
        return {
            "node_id": f"TAG_{t['sha'][:10]}",
            "sha": t["sha"],
            "url": f"{self.repo_url}/git/tags/{t['sha']}",
            "tag": t["tag"],
            "message": t["message"],
            "tagger": t["tagger"],
            "object": {"type": t["type"], "sha": t["object"], "url": self._object_url(t["type"], t["object"])},
            "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None},
        }

    def _object_url(self, typ: str, sha: str) -> str:
        kind = {"commit": "commits", "tag": "tags", "tree": "trees", "blob": "blobs"}.get(typ, "commits")
        return f"{self.repo_url}/git/{kind}/{sha}"

    def _ref_json(self, name: str) -> dict:
        r = self.refs[name]
        quoted = "/".join(_q(p) for p in name.split("/"))
        return {
            "ref": name,
            "node_id": f"REF_{hashlib.sha1(name.encode()).hexdigest()[:10]}",
            "url": f"{self.repo_url}/git/{quoted}",
            "object": {"type": r["type"], "sha": r["sha"], "url": self._object_url(r["type"], r["sha"])},
        }

    def _ensure_release_tag(self, tag: str, target: str) -> None:
        """As GitHub does on publishing a release whose tag does not exist: a lightweight tag on target."""
        if f"refs/tags/{tag}" not in self.refs:
            sha = target if re.fullmatch(r"[0-9a-f]{40}", target) else hashlib.sha1(target.encode()).hexdigest()
            self.refs[f"refs/tags/{tag}"] = {"sha": sha, "type": "commit"}

    def _release_by_tag(self, tag: str, include_drafts: bool = False) -> dict | None:
        for rel in self.releases.values():
            if rel["tag_name"] == tag and (include_drafts or not rel["draft"]):
                return rel
        return None

    def _release_json(self, rel: dict) -> dict:
        rid, base, repo = rel["id"], self.url, self.repo_url
        assets = sorted((a for a in self.assets.values() if a["release"] == rid), key=lambda a: a["id"])
        return {
            "url": f"{repo}/releases/{rid}",
            "html_url": f"{base}/{self.full_name}/releases/tag/{_q(rel['tag_name'])}",
            "assets_url": f"{repo}/releases/{rid}/assets",
            "upload_url": f"{base}/uploads/repos/{self.full_name}/releases/{rid}/assets{{?name,label}}",
            "tarball_url": f"{repo}/tarball/{_q(rel['tag_name'])}",
            "zipball_url": f"{repo}/zipball/{_q(rel['tag_name'])}",
            "id": rid,
            "node_id": f"RE_{rid}",
            "tag_name": rel["tag_name"],
            "target_commitish": rel["target_commitish"],
            "name": rel["name"],
            "body": rel["body"],
            "draft": rel["draft"],
            "prerelease": rel["prerelease"],
            "created_at": rel["created_at"],
            "published_at": None if rel["draft"] else rel["created_at"],
            "author": rel["author"].json(base),
            "assets": [self._asset_json(a) for a in assets],
        }

    def _new_asset(self, rel: dict, name: str, data: bytes, content_type: str, state: str, user: User) -> dict:
        aid = next(self._ids)
        now = _now_iso()
        a = {
            "id": aid, "release": rel["id"], "name": name, "label": "", "data": data, "state": state,
            "content_type": content_type, "created_at": now, "updated_at": now, "uploader": user,
            "download_count": 0,
        }
        self.assets[aid] = a
        return a

    def _asset_json(self, a: dict) -> dict:
        rel = self.releases[a["release"]]
        return {
            "url": f"{self.repo_url}/releases/assets/{a['id']}",
            "browser_download_url": f"{self.url}/{self.full_name}/releases/download/"
            f"{_q(rel['tag_name'])}/{_q(a['name'])}",
            "id": a["id"],
            "node_id": f"RA_{a['id']}",
            "name": a["name"],
            "label": a["label"],
            "state": a["state"],
            "content_type": a["content_type"],
            "size": len(a["data"]),
            "digest": "sha256:" + hashlib.sha256(a["data"]).hexdigest() if a["state"] == "uploaded" else None,
            "download_count": a["download_count"],
            "created_at": a["created_at"],
            "updated_at": a["updated_at"],
            "uploader": a["uploader"].json(self.url),
        }

    def _new_pull(self, number: int, head: str, base: str, title: str, body: str, user: User) -> dict:
        return {
            "number": number, "head": head, "base": base, "title": title, "body": body, "user": user,
            "state": "open", "created_at": _now_iso(), "id": next(self._ids),
        }

    def _pull_json(self, p: dict) -> dict:
        repo, n = self.repo_url, p["number"]
        return {
            "url": f"{repo}/pulls/{n}",
            "id": p["id"],
            "node_id": f"PR_{p['id']}",
            "html_url": f"{self.url}/{self.full_name}/pull/{n}",
            "issue_url": f"{repo}/issues/{n}",
            "comments_url": f"{repo}/issues/{n}/comments",
            "number": n,
            "state": p["state"],
            "locked": False,
            "title": p["title"],
            "body": p["body"],
            "user": p["user"].json(self.url),
            "created_at": p["created_at"],
            "updated_at": p["created_at"],
            "draft": False,
            "merged": bool(p.get("merged")),
            "merged_at": p["created_at"] if p.get("merged") else None,
            "merge_commit_sha": p.get("merge_commit_sha"),
            "head": {"label": f"{p.get('head_repo', self.full_name).split('/')[0]}:{p['head']}", "ref": p["head"],
                     "sha": p.get("head_sha", "0" * 40),
                     "repo": {"full_name": p.get("head_repo", self.full_name),
                              "fork": p.get("head_repo", self.full_name) != self.full_name}},
            "base": {"label": f"{self.owner}:{p['base']}", "ref": p["base"], "sha": p.get("base_sha", "0" * 40),
                     "repo": {"full_name": self.full_name}},
        }

    def _artifact_json(self, a: dict) -> dict:
        repo = self.repo_url
        return {
            "id": a["id"], "node_id": f"MDg6QXJ0aWZhY3Q{a['id']}", "name": a["name"],
            "size_in_bytes": len(a["data"]), "url": f"{repo}/actions/artifacts/{a['id']}",
            "archive_download_url": f"{repo}/actions/artifacts/{a['id']}/zip", "expired": a["expired"],
            "created_at": a["created_at"], "updated_at": a["created_at"], "expires_at": None,
            "digest": "sha256:" + hashlib.sha256(a["data"]).hexdigest(),
            "workflow_run": {"id": a["run_id"], "repository_id": 1, "head_repository_id": 1,
                             "head_branch": a["head_branch"], "head_sha": a["head_sha"]},
        }

    def _run_json(self, r: dict) -> dict:
        head = r["head_repo"]
        return {
            "id": r["id"], "name": r["name"], "node_id": f"WFR_{r['id']}", "path": r["path"],
            "event": r["event"], "status": "completed" if r["conclusion"] else "in_progress",
            "conclusion": r["conclusion"], "head_branch": r["head_branch"], "head_sha": r["head_sha"],
            "url": f"{self.repo_url}/actions/runs/{r['id']}", "run_attempt": 1,
            "repository": {"id": 1, "full_name": self.full_name},
            "head_repository": {"id": 1 if head == self.full_name else 2, "full_name": head},
        }

    def _repo_json(self) -> dict:
        user = User(self.owner, 1, "Organization")
        return {
            "id": 1, "node_id": "R_1", "name": self.repo, "full_name": self.full_name, "private": self.private,
            "visibility": "private" if self.private else "public",
            "owner": user.json(self.url), "html_url": f"{self.url}/{self.full_name}",
            "url": self.repo_url, "default_branch": "main", "fork": False,
            "created_at": "2024-01-01T00:00:00Z", "updated_at": _now_iso(), "pushed_at": _now_iso(),
        }


def _paginate(items: list, query: dict[str, list[str]], base_url: str, path: str) -> tuple[list, dict]:
    try:
        per_page = min(max(int(query.get("per_page", ["30"])[0]), 1), 100)
        page = max(int(query.get("page", ["1"])[0]), 1)
    except ValueError as e:
        raise HTTPError(422, "Invalid pagination parameters") from e
    last = max((len(items) + per_page - 1) // per_page, 1)
    chunk = items[(page - 1) * per_page: page * per_page]

    def link(p: int) -> str:
        q = {k: v[0] for k, v in query.items()}
        q.update(per_page=str(per_page), page=str(p))
        return f"<{base_url}{path}?{urllib.parse.urlencode(q)}>"

    rels = []
    if page < last:
        rels += [f'{link(page + 1)}; rel="next"', f'{link(last)}; rel="last"']
    if page > 1:
        rels += [f'{link(page - 1)}; rel="prev"', f'{link(1)}; rel="first"']
    return chunk, ({"Link": ", ".join(rels)} if rels else {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gh: GitHubServer  # set by the subclass made in start()

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every kept-alive request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    # --- plumbing -----------------------------------------------------------------------
    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            length = min(length, limit)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, headers: dict | None = None, raw: bytes | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        hdrs = {**self.gh._rate_headers(self._token), **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        if data or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)
        self._record.status = status

    def _drop(self, fault: Fault, path: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        n = fault.after_bytes if fault.after_bytes is not None else length // 2
        partial = self.rfile.read(min(n, length)) if length else b""
        self._record.body = partial
        if fault.leave_partial:
            m = re.match(rf"^/uploads/repos/{re.escape(self.gh.full_name)}/releases/(\d+)/assets$", path)
            if m:
                with self.gh.lock:
                    rel = self.gh.releases.get(int(m.group(1)))
                    name = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("name", [""])[0]
                    if rel is not None and name and not any(
                        a["release"] == rel["id"] and a["name"] == name for a in self.gh.assets.values()
                    ):
                        self.gh._new_asset(rel, name, partial, "application/octet-stream", "starter",
                                           self.gh._any_user())
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        gh = self.gh
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        self._token = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith(("token ", "Bearer ", "bearer ")):
            self._token = auth.split(" ", 1)[1].strip()
        self._record = RecordedRequest(self.command, self.path, headers, b"")
        with gh.lock:
            gh.requests.append(self._record)
            if self._token is not None:
                gh.rate_used[self._token] = gh.rate_used.get(self._token, 0) + 1
        fault = gh._take_fault(self.command, path)
        if fault is not None and fault.kind == "drop":
            self._drop(fault, path)
            return
        body = self._read_body()  # always read the whole body before answering
        self._record.body = body
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
            fault = None
        self._user = gh.tokens.get(self._token or "")
        if fault is not None and fault.after_processing and self._user is not None:
            try:
                self._route(self.command, path, split.query, body)
            except HTTPError:
                pass  # the answer is lost anyway
        if fault is not None:
            payload = fault.body if fault.body is not None else (
                {"message": "Server Error"} if fault.status >= 500 else {"message": "Injected failure"}
            )
            raw = json.dumps(payload).encode() if fault.status < 500 or fault.body is not None else (
                b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            )
            ctype = "application/json; charset=utf-8" if raw.startswith(b"{") else "text/html"
            self._send(fault.status, raw=raw, headers=fault.headers, content_type=ctype)
            return
        try:
            if self._user is None and not path.startswith(("/_downloads/", "/_artifacts/", "/_test/")):
                raise HTTPError(401, "Bad credentials")
            status, payload, extra = self._route(self.command, path, split.query, body)
        except HTTPError as e:
            self._send(e.status, e.body(), headers=e.headers)
            return
        if isinstance(payload, bytes):
            self._send(status, raw=payload, headers=extra, content_type="application/octet-stream")
        else:
            self._send(status, payload, headers=extra)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = _handle

    # --- routes -------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: str, body: bytes) -> tuple[int, Any, dict]:
        gh = self.gh
        q = urllib.parse.parse_qs(query)
        raw_path = urllib.parse.urlsplit(self.path).path
        with gh.lock:
            if path == "/user" and method == "GET":
                if gh.user_endpoint == "forbidden":
                    raise HTTPError(403, "Resource not accessible by integration")
                if gh.user_endpoint == "not_found":
                    raise HTTPError(404, "Not Found")
                return 200, self._user.json(gh.url), {}
            if path == "/rate_limit" and method == "GET":
                core = {"limit": gh.rate_limit, "remaining": gh.rate_limit, "reset": int(time.time()) + 3600,
                        "used": 0}
                return 200, {"resources": {"core": core}, "rate": core}, {}
            if path.startswith("/_downloads/") and method == "GET":
                aid = int(path.split("/")[2])
                a = gh.assets.get(aid)
                if a is None:
                    raise HTTPError(404, "Not Found")
                a["download_count"] += 1
                return 200, a["data"], {}
            if path.startswith("/_artifacts/") and method == "GET":  # the blob storage an archive redirects to
                art = gh.artifacts.get(int(path.split("/")[2]))
                if art is None or art["expired"]:
                    raise HTTPError(404, "Not Found")
                return 200, art["data"], {}
            if path.startswith("/uploads/"):
                return self._upload(method, path, q, body)
            if path == "/_test/artifacts" and method == "POST":
                # Test-only: what actions/upload-artifact does through the runner's artifact service. The
                # act harness's upload stand-in posts a job's files here (zip body, ?name=&run_id=).
                name, run_id = q.get("name", [""])[0], q.get("run_id", [""])[0]
                if not name or not run_id.isdigit():
                    raise HTTPError(422, "name and run_id are required")
                if any(a["name"] == name and a["run_id"] == int(run_id) for a in gh.artifacts.values()):
                    raise HTTPError(409, f"an artifact named {name} already exists in run {run_id}")
                return 201, {"id": gh.add_artifact(name, body, run_id=int(run_id))}, {}
            org = re.fullmatch(r"/orgs/([^/]+)/actions/runner-groups(?:/(\d+)/repositories)?", path)
            if org and method == "GET":
                return self._runner_groups(org.group(1), org.group(2), q)
            prefix = f"/repos/{gh.full_name}"
            if path != prefix and not path.startswith(prefix + "/"):
                raise HTTPError(404, "Not Found")
            # route on the raw path so that names with an encoded "/" or "#" stay in one segment
            raw_prefix = f"/repos/{_q(gh.owner)}/{_q(gh.repo)}"
            if not raw_path.startswith(raw_prefix):
                raise HTTPError(404, "Not Found")
            rest_raw = raw_path[len(raw_prefix):]
            if rest_raw == "" and method == "GET":
                return 200, gh._repo_json(), {}
            data = self._json(body) if body and method in ("POST", "PATCH", "PUT") else {}
            for regex, handler in _ROUTES:
                m = re.fullmatch(regex, rest_raw)
                if m and (handler.__name__.split("_", 1)[0].upper() == method):
                    args = [urllib.parse.unquote(g) for g in m.groups()]
                    return handler(self, *args, q=q, data=data, path=prefix + urllib.parse.unquote(rest_raw))
            raise HTTPError(404, "Not Found")

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            out = json.loads(body)
        except ValueError as e:
            raise HTTPError(400, "Problems parsing JSON") from e
        if not isinstance(out, dict):
            raise HTTPError(400, "Problems parsing JSON")
        return out

    def _page(self, items: list, q: dict, path: str) -> tuple[int, list, dict]:
        chunk, headers = _paginate(items, q, self.gh.url, urllib.parse.urlsplit(self.path).path)
        return 200, chunk, headers

    # issues and their comments
    def get_issue(self, number: str, *, q, data, path):
        n = int(number)
        if n not in self.gh.issues:
            raise HTTPError(404, "Not Found")
        p = self.gh.pulls.get(n)
        out = self.gh._pull_json(p) if p else {"number": n, "url": f"{self.gh.repo_url}/issues/{n}"}
        out["pull_request"] = {"url": f"{self.gh.repo_url}/pulls/{n}"} if p else None
        return 200, out, {}

    def get_comments(self, number: str, *, q, data, path):
        n = int(number)
        if n not in self.gh.issues:
            raise HTTPError(404, "Not Found")
        items = [self.gh._comment_json(c) for c in sorted(self.gh.comments.values(), key=lambda c: c["id"])
                 if c["issue"] == n]
        return self._page(items, q, path)

    def post_comments(self, number: str, *, q, data, path):
        n = int(number)
        if n not in self.gh.issues:
            raise HTTPError(404, "Not Found")
        if not isinstance(data.get("body"), str):
            raise validation_failed("IssueComment", "missing_field", "body")
        if len(data["body"]) > 65536:
            raise validation_failed("IssueComment", "custom", "body", "body is too long (maximum is 65536 characters)")
        return 201, self.gh._comment_json(self.gh._new_comment(n, data["body"], self._user)), {}

    def patch_comment(self, cid: str, *, q, data, path):
        c = self.gh.comments.get(int(cid))
        if c is None:
            raise HTTPError(404, "Not Found")
        if not isinstance(data.get("body"), str):
            raise validation_failed("IssueComment", "missing_field", "body")
        c["body"] = data["body"]
        c["updated_at"] = _now_iso()
        return 200, self.gh._comment_json(c), {}

    def get_comment(self, cid: str, *, q, data, path):
        c = self.gh.comments.get(int(cid))
        if c is None:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._comment_json(c), {}

    def delete_comment(self, cid: str, *, q, data, path):
        if self.gh.comments.pop(int(cid), None) is None:
            raise HTTPError(404, "Not Found")
        return 204, None, {}

    # git data
    def post_gittags(self, *, q, data, path):
        for k in ("tag", "message", "object", "type"):
            if not isinstance(data.get(k), str):
                raise validation_failed("Tag", "missing_field", k)
        if not re.fullmatch(r"[0-9a-f]{40}", data["object"]):
            raise HTTPError(422, "Object does not exist")
        tagger = data.get("tagger") or {"name": self._user.login, "email": f"{self._user.login}@users.noreply"}
        tagger = {"name": tagger.get("name", ""), "email": tagger.get("email", ""),
                  "date": tagger.get("date") or _now_iso()}
        content = (f"object {data['object']}\ntype {data['type']}\ntag {data['tag']}\n"
                   f"tagger {tagger['name']} <{tagger['email']}> {tagger['date']}\n\n{data['message']}")
        sha = hashlib.sha1(f"tag {len(content.encode())}\0{content}".encode()).hexdigest()
        t = {"sha": sha, "tag": data["tag"], "message": data["message"], "object": data["object"],
             "type": data["type"], "tagger": tagger}
        self.gh.tag_objects[sha] = t
        return 201, self.gh._tag_object_json(t), {}

    def get_gittag(self, sha: str, *, q, data, path):
        t = self.gh.tag_objects.get(sha)
        if t is None:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._tag_object_json(t), {}

    def post_refs(self, *, q, data, path):
        ref, sha = data.get("ref"), data.get("sha")
        if not isinstance(ref, str) or not isinstance(sha, str):
            raise validation_failed("Reference", "missing_field", "ref" if not isinstance(ref, str) else "sha")
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise HTTPError(422, "Reference name must start with 'refs/' and have at least two slashes.")
        if ref in self.gh.refs:
            raise HTTPError(422, "Reference already exists")
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise HTTPError(422, "Object does not exist")
        self.gh.refs[ref] = {"sha": sha, "type": "tag" if sha in self.gh.tag_objects else "commit"}
        return 201, self.gh._ref_json(ref), {}

    def get_ref(self, ref: str, *, q, data, path):
        name = "refs/" + ref
        if name not in self.gh.refs:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._ref_json(name), {}

    def get_matchingrefs(self, prefix: str, *, q, data, path):
        items = [self.gh._ref_json(r) for r in sorted(self.gh.refs) if r.startswith("refs/" + prefix)]
        return self._page(items, q, path)

    def delete_ref(self, ref: str, *, q, data, path):
        if self.gh.refs.pop("refs/" + ref, None) is None:
            raise HTTPError(422, "Reference does not exist")
        return 204, None, {}

    # releases
    def post_releases(self, *, q, data, path):
        tag = data.get("tag_name")
        if not isinstance(tag, str) or not tag:
            raise validation_failed("Release", "missing_field", "tag_name")
        if self.gh._release_by_tag(tag, include_drafts=False) is not None:
            raise validation_failed("Release", "already_exists", "tag_name")
        target = data.get("target_commitish") or "main"
        if not data.get("draft"):  # a draft makes no tag; publishing it does
            self.gh._ensure_release_tag(tag, target)
        rid = next(self.gh._ids)
        rel = {"id": rid, "tag_name": tag, "target_commitish": target, "name": data.get("name") or tag,
               "body": data.get("body") or "", "draft": bool(data.get("draft")),
               "prerelease": bool(data.get("prerelease")), "created_at": _now_iso(), "author": self._user}
        self.gh.releases[rid] = rel
        return 201, self.gh._release_json(rel), {}

    def get_releases(self, *, q, data, path):
        items = [self.gh._release_json(r) for r in sorted(self.gh.releases.values(), key=lambda r: -r["id"])]
        return self._page(items, q, path)

    def get_releasebytag(self, tag: str, *, q, data, path):
        rel = self.gh._release_by_tag(tag)
        if rel is None:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._release_json(rel), {}

    def _release(self, rid: str) -> dict:
        rel = self.gh.releases.get(int(rid))
        if rel is None:
            raise HTTPError(404, "Not Found")
        return rel

    def get_release(self, rid: str, *, q, data, path):
        return 200, self.gh._release_json(self._release(rid)), {}

    def patch_release(self, rid: str, *, q, data, path):
        rel = self._release(rid)
        for k in ("tag_name", "target_commitish", "name", "body", "draft", "prerelease"):
            if k in data:
                rel[k] = data[k]
        if not rel["draft"]:
            self.gh._ensure_release_tag(rel["tag_name"], rel["target_commitish"])
        return 200, self.gh._release_json(rel), {}

    def delete_release(self, rid: str, *, q, data, path):
        rel = self._release(rid)
        del self.gh.releases[rel["id"]]
        for aid in [a["id"] for a in self.gh.assets.values() if a["release"] == rel["id"]]:
            del self.gh.assets[aid]
        return 204, None, {}

    def get_releaseassets(self, rid: str, *, q, data, path):
        rel = self._release(rid)
        items = [self.gh._asset_json(a) for a in sorted(self.gh.assets.values(), key=lambda a: a["id"])
                 if a["release"] == rel["id"]]
        return self._page(items, q, path)

    def get_asset(self, aid: str, *, q, data, path):
        a = self.gh.assets.get(int(aid))
        if a is None:
            raise HTTPError(404, "Not Found")
        if "application/octet-stream" in self.headers.get("Accept", ""):
            loc = f"{self.gh.url}/_downloads/{a['id']}/{_q(a['name'])}"
            return 302, None, {"Location": loc}
        return 200, self.gh._asset_json(a), {}

    def delete_asset(self, aid: str, *, q, data, path):
        if self.gh.assets.pop(int(aid), None) is None:
            raise HTTPError(404, "Not Found")
        return 204, None, {}

    def _upload(self, method: str, path: str, q: dict, body: bytes) -> tuple[int, Any, dict]:
        gh = self.gh
        m = re.fullmatch(rf"/uploads/repos/{re.escape(gh.full_name)}/releases/(\d+)/assets", path)
        if not m or method != "POST":
            raise HTTPError(404, "Not Found")
        rel = gh.releases.get(int(m.group(1)))
        if rel is None:
            raise HTTPError(404, "Not Found")
        name = q.get("name", [""])[0]
        if not name:
            raise validation_failed("ReleaseAsset", "missing_field", "name")
        if any(a["release"] == rel["id"] and a["name"] == name for a in gh.assets.values()):
            raise validation_failed("ReleaseAsset", "already_exists", "name")
        expected = int(self.headers.get("Content-Length") or len(body))
        if len(body) != expected:
            raise HTTPError(400, "Bad Content-Length")
        a = gh._new_asset(rel, name, body, self.headers.get("Content-Type") or "application/octet-stream",
                          "uploaded", self._user)
        label = q.get("label", [""])[0]
        a["label"] = label
        return 201, gh._asset_json(a), {}

    # pulls
    def post_pulls(self, *, q, data, path):
        for k in ("head", "base"):
            if not isinstance(data.get(k), str):
                raise validation_failed("PullRequest", "missing_field", k)
        head = data["head"].split(":", 1)[-1]
        for p in self.gh.pulls.values():
            if p["head"] == head and p["base"] == data["base"] and p["state"] == "open":
                raise HTTPError(422, "Validation Failed", errors=[{
                    "resource": "PullRequest", "code": "custom",
                    "message": f"A pull request already exists for {self.gh.owner}:{head}."}])
        n = self.gh.next_number
        self.gh.next_number += 1
        self.gh.issues[n] = {"pull": True}
        p = self.gh._new_pull(n, head, data["base"], data.get("title") or "", data.get("body") or "", self._user)
        self.gh.pulls[n] = p
        return 201, self.gh._pull_json(p), {}

    def get_pull(self, number: str, *, q, data, path):
        p = self.gh.pulls.get(int(number))
        if p is None:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._pull_json(p), {}

    # Actions artifacts (https://docs.github.com/rest/actions/artifacts)
    def _artifact_list(self, q: dict, run_id: int | None) -> tuple[int, dict, dict]:
        name = q.get("name", [""])[0]
        items = [self.gh._artifact_json(a) for a in sorted(self.gh.artifacts.values(), key=lambda a: -a["id"])
                 if (not name or a["name"] == name) and (run_id is None or a["run_id"] == run_id)]
        status, chunk, headers = self._page(items, q, "")
        return status, {"total_count": len(items), "artifacts": chunk}, headers

    def get_artifacts(self, *, q, data, path):
        return self._artifact_list(q, None)

    def get_runartifacts(self, run_id: str, *, q, data, path):
        return self._artifact_list(q, int(run_id))

    def get_artifact(self, aid: str, *, q, data, path):
        a = self.gh.artifacts.get(int(aid))
        if a is None:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._artifact_json(a), {}

    def get_artifactzip(self, aid: str, *, q, data, path):
        a = self.gh.artifacts.get(int(aid))
        if a is None:
            raise HTTPError(404, "Not Found")
        if a["expired"]:
            raise HTTPError(410, "Artifact has expired")
        return 302, None, {"Location": f"{self.gh.url}/_artifacts/{a['id']}/{_q(a['name'])}.zip"}

    # Workflow runs, commit-to-PR association, and the settings `gitops doctor --github` reads
    def get_run(self, run_id: str, *, q, data, path):
        r = self.gh.workflow_runs.get(int(run_id))
        if r is None:
            raise HTTPError(404, "Not Found")
        return 200, self.gh._run_json(r), {}

    def get_commitpulls(self, sha: str, *, q, data, path):
        gh = self.gh
        items = [gh._pull_json(gh.pulls[n]) for n in gh.commit_pulls.get(sha, []) if n in gh.pulls]
        return self._page(items, q, path)

    def _setting(self, key: str) -> Any:
        if key in self.gh.forbidden:
            raise HTTPError(403, "Resource not accessible by integration")
        value = self.gh.settings.get(key)
        if value is None:
            raise HTTPError(404, "Not Found")
        return value

    def get_forkapproval(self, *, q, data, path):
        return 200, self._setting("fork_pr_approval"), {}

    def get_forkprivate(self, *, q, data, path):
        if not self.gh.private:  # GitHub answers this one only for private repositories
            raise HTTPError(422, "this setting applies to private repositories")
        return 200, self._setting("fork_pr_private"), {}

    def get_environment(self, name: str, *, q, data, path):
        env = self._setting("environments").get(name)
        if env is None:
            raise HTTPError(404, "Not Found")
        return 200, {"id": 1, "name": name, "url": f"{self.gh.repo_url}/environments/{_q(name)}",
                     "protection_rules": [], "deployment_branch_policy": None, "can_admins_bypass": True,
                     **env}, {}

    def _runner_groups(self, org: str, group_id: str | None, q: dict) -> tuple[int, Any, dict]:
        gh = self.gh
        if org != gh.owner:
            raise HTTPError(404, "Not Found")
        groups = self._setting("runner_groups")
        if group_id is None:
            items = [{k: v for k, v in g.items() if k != "repositories"} for g in groups]
            return 200, {"total_count": len(items), "runner_groups": items}, {}
        group = next((g for g in groups if str(g["id"]) == group_id), None)
        if group is None:
            raise HTTPError(404, "Not Found")
        repos = [{"full_name": name, "id": i} for i, name in enumerate(group.get("repositories", []), 1)]
        return 200, {"total_count": len(repos), "repositories": repos}, {}

    def get_pulls(self, *, q, data, path):
        state = q.get("state", ["open"])[0]
        head = q.get("head", [""])[0].split(":", 1)[-1]
        base = q.get("base", [""])[0]
        items = [self.gh._pull_json(p) for n, p in sorted(self.gh.pulls.items(), reverse=True)
                 if (state == "all" or p["state"] == state) and (not head or p["head"] == head)
                 and (not base or p["base"] == base)]
        return self._page(items, q, path)


_SEG = r"([^/]+)"
_ROUTES = [
    (r"/issues/(\d+)", _Handler.get_issue),
    (r"/issues/(\d+)/comments", _Handler.get_comments),
    (r"/issues/(\d+)/comments", _Handler.post_comments),
    (r"/issues/comments/(\d+)", _Handler.get_comment),
    (r"/issues/comments/(\d+)", _Handler.patch_comment),
    (r"/issues/comments/(\d+)", _Handler.delete_comment),
    (r"/git/tags", _Handler.post_gittags),
    (rf"/git/tags/{_SEG}", _Handler.get_gittag),
    (r"/git/refs", _Handler.post_refs),
    (r"/git/refs?/(.+)", _Handler.get_ref),
    (r"/git/matching-refs/(.*)", _Handler.get_matchingrefs),
    (r"/git/refs/(.+)", _Handler.delete_ref),
    (r"/releases", _Handler.post_releases),
    (r"/releases", _Handler.get_releases),
    (rf"/releases/tags/{_SEG}", _Handler.get_releasebytag),
    (r"/releases/(\d+)", _Handler.get_release),
    (r"/releases/(\d+)", _Handler.patch_release),
    (r"/releases/(\d+)", _Handler.delete_release),
    (r"/releases/(\d+)/assets", _Handler.get_releaseassets),
    (r"/releases/assets/(\d+)", _Handler.get_asset),
    (r"/releases/assets/(\d+)", _Handler.delete_asset),
    (r"/pulls", _Handler.post_pulls),
    (r"/pulls", _Handler.get_pulls),
    (r"/pulls/(\d+)", _Handler.get_pull),
    (r"/actions/artifacts", _Handler.get_artifacts),
    (r"/actions/runs/(\d+)/artifacts", _Handler.get_runartifacts),
    (r"/actions/artifacts/(\d+)", _Handler.get_artifact),
    (r"/actions/artifacts/(\d+)/zip", _Handler.get_artifactzip),
    (r"/actions/runs/(\d+)", _Handler.get_run),
    (rf"/commits/{_SEG}/pulls", _Handler.get_commitpulls),
    (r"/actions/permissions/fork-pr-contributor-approval", _Handler.get_forkapproval),
    (r"/actions/permissions/fork-pr-workflows-private-repos", _Handler.get_forkprivate),
    (rf"/environments/{_SEG}", _Handler.get_environment),
]
