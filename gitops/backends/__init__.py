"""Registry backends: `local` (git tags + `.gitops/`) and `github` (tags, releases, PR comments)."""

from __future__ import annotations

import os
from pathlib import Path

from gitops.backends.base import Backend
from gitops.errors import UsageError

BACKENDS = ("local", "github")


def get_backend(name: str | None, root: Path) -> Backend:
    """The backend `name` names; with None: `github` inside GitHub Actions, else `local`."""
    if name is None:
        name = os.environ.get("GITOPS_BACKEND") or (
            "github" if os.environ.get("GITHUB_ACTIONS", "").lower() == "true" else "local"
        )
    if name == "local":
        from gitops.backends.local import LocalBackend

        return LocalBackend(root)
    if name == "github":
        from gitops.backends.github import GitHubBackend

        return GitHubBackend.from_env()
    raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
