"""Small git helpers over `subprocess` (no GitPython): commits, dirtiness, tags, branches.

Every helper takes the repository root explicitly; none of them changes the current directory.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gitops.errors import GitopsError, UsageError

# Used when neither git config nor the environment names anyone (a fresh CI container).
_FALLBACK_IDENTITY = {"name": "gitops", "email": "gitops@localhost"}


def run(root: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run `git -C root args...` capturing text output; GitopsError on failure when `check`."""
    full_env = None
    if env:
        full_env = {**os.environ, **env}
    proc = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, input=input, env=full_env, check=False
    )
    if check and proc.returncode != 0:
        raise GitopsError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def head_commit(root: Path) -> str:
    """HEAD's full commit SHA (40 hex).

    Raises UsageError when `root` has no commits yet or is not a git repository.
    """
    proc = run(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    if proc.returncode != 0:
        raise UsageError(f"{root} has no commits yet (or is not a git repository)")
    return proc.stdout.strip()


def head_or_none(root: Path) -> str | None:
    """HEAD's SHA, or None outside a repository or before its first commit."""
    proc = run(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def commit_exists(root: Path, sha: str) -> bool:
    """Whether `sha` names a commit present in the clone at `root` (`git cat-file -e`); nothing is fetched."""
    return run(root, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0


def ensure_commit(root: Path, ref: str) -> str:
    """The full SHA of `ref`; in a shallow clone, fetch a missing SHA from origin once (depth 1)."""
    proc = run(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if proc.returncode == 0:
        return proc.stdout.strip()
    fetched = run(root, "fetch", "--quiet", "--no-tags", "--depth=1", "origin", ref, check=False,
                  env=_fetch_auth_env(root))
    if fetched.returncode == 0:
        proc = run(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
    why = fetched.stderr.strip().splitlines()[-1] if fetched.stderr.strip() else "not found"
    raise UsageError(
        f"commit {ref!r} is not in this clone and `git fetch --depth=1 origin {ref}` failed ({why}); "
        "check out with more history (fetch-depth: 0) or pass SHAs that exist"
    )


def uncommitted(root: Path, paths: list[str]) -> list[str]:
    """Files under `paths` that differ from HEAD, untracked files included (a model folder's state)."""
    done = run(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths)
    entries, found, i = done.stdout.split("\0"), [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) >= 4:
            found.append(entry[3:])
            i += 1 if entry[0] in "RC" else 0
    return sorted(found)


def _fetch_auth_env(root: Path) -> dict[str, str] | None:
    """Git config (as GIT_CONFIG_* variables, never on the command line) that sends $GITHUB_TOKEN to
    origin, as actions/checkout does, when origin is on $GITHUB_SERVER_URL's host over https.

    A checkout made with `persist-credentials: false` (every one in our workflows) keeps no token, so
    a private repository's PR head could not be fetched otherwise. None when there is nothing to add.
    """
    import base64
    import urllib.parse

    token = os.environ.get("GITHUB_TOKEN", "").strip()
    url = remote_url(root) or ""
    server = urllib.parse.urlsplit(os.environ.get("GITHUB_SERVER_URL", "https://github.com"))
    parts = urllib.parse.urlsplit(url)
    if not token or parts.scheme != "https" or parts.hostname != server.hostname or server.scheme != "https":
        return None
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{server.scheme}://{server.hostname}/.extraheader",
            "GIT_CONFIG_VALUE_0": f"AUTHORIZATION: basic {basic}", "GIT_TERMINAL_PROMPT": "0"}


MAX_LISTED_PATHS = 50


def lineage(root: Path, model_paths: list[str]) -> tuple[str | None, bool | None, list[str]]:
    """Where a run is being trained: (HEAD commit or None, dirty or None, uncommitted paths).

    Dirty means HEAD alone does not reproduce the working tree the run reads: a tracked file anywhere
    differs from HEAD (staged or not), or a file under `model_paths` (the model's folder and the
    folders its `extends` chains name) is untracked; a model folder that was never committed is all
    untracked, so it is dirty. Untracked files elsewhere (scratch files, other new models) don't
    count. Outside a git repository: (None, None, []); before the first commit: (None, True, paths).
    At most MAX_LISTED_PATHS paths are listed (sorted; the flag covers the rest).
    """
    if run(root, "rev-parse", "--git-dir", check=False).returncode != 0:
        return None, None, []
    proc = run(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    commit = proc.stdout.strip() if proc.returncode == 0 else None
    changed: set[str] = set()
    listings = [("status", "--porcelain=v1", "-z", "--untracked-files=no")]
    if model_paths:
        listings.append(("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *model_paths))
    for args in listings:
        done = run(root, *args, check=False)
        if done.returncode != 0:
            return commit, None, []
        entries = done.stdout.split("\0")
        i = 0
        while i < len(entries):
            entry = entries[i]
            i += 1
            if len(entry) < 4:
                continue
            changed.add(entry[3:])
            if entry[0] in "RC":  # a rename's source path follows as its own entry
                i += 1
    if commit is None and not changed:
        return None, True, []  # no commit at all: nothing reproduces the tree
    return commit, bool(changed) or commit is None, sorted(changed)[:MAX_LISTED_PATHS]


def identity(root: Path) -> dict[str, str]:
    """Who is acting: git config user, else GIT_COMMITTER_* / GIT_AUTHOR_*, else a fallback."""
    out: dict[str, str] = {}
    for key in ("name", "email"):
        proc = run(root, "config", f"user.{key}", check=False)
        value = proc.stdout.strip() or os.environ.get(f"GIT_COMMITTER_{key.upper()}") or os.environ.get(
            f"GIT_AUTHOR_{key.upper()}"
        )
        out[key] = value or _FALLBACK_IDENTITY[key]
    return out


def author(root: Path) -> str:
    """The identity git would tag with, as "Name <email>" (config, then GIT_* variables, then a fallback)."""
    who = identity(root)
    return f"{who['name']} <{who['email']}>"


def identity_env(root: Path) -> dict[str, str]:
    """Environment that makes git commit/tag work even without a configured user."""
    who = identity(root)
    return {
        "GIT_COMMITTER_NAME": who["name"],
        "GIT_COMMITTER_EMAIL": who["email"],
        "GIT_AUTHOR_NAME": who["name"],
        "GIT_AUTHOR_EMAIL": who["email"],
    }


def create_annotated_tag(root: Path, name: str, commit: str, message: str) -> subprocess.CompletedProcess:
    """`git tag -a`; returns the process (callers interpret 'already exists')."""
    return run(root, "tag", "-a", name, "-F", "-", commit, input=message, env=identity_env(root), check=False)


def push_tags(root: Path, names: list[str], remote: str = "origin") -> None:
    """`git push <remote> refs/tags/<name>...` for `names` (nothing when empty).

    Raises GitopsError when the push fails (no remote, rejected, no credentials).
    """
    if names:
        run(root, "push", remote, *[f"refs/tags/{n}" for n in names])


def current_branch(root: Path) -> str | None:
    """The checked-out branch's short name; None on a detached HEAD."""
    proc = run(root, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return proc.stdout.strip() or None


def branch_exists(root: Path, name: str) -> bool:
    """Whether the local branch `refs/heads/<name>` exists."""
    return run(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0


def default_base(root: Path) -> str:
    """The merge-base of HEAD with main (local or origin); on main itself, HEAD~."""
    head = head_commit(root)
    for candidate in ("main", "origin/main", "master", "origin/master"):
        proc = run(root, "merge-base", "HEAD", candidate, check=False)
        base = proc.stdout.strip()
        if proc.returncode == 0 and base and base != head:
            return base
    proc = run(root, "rev-parse", "--verify", "--quiet", "HEAD~^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else head


def remote_url(root: Path, remote: str = "origin") -> str | None:
    """The URL of `remote` (default "origin"); None when there is no such remote."""
    proc = run(root, "remote", "get-url", remote, check=False)
    return proc.stdout.strip() or None
