"""The local backend's side of the Backend protocol: what it can do, said by capabilities, not by its name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitops.backends.base import ArtifactInfo, AssetNotFoundError
from gitops.backends.local import LocalBackend


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": str(cwd), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_push_tags_publishes_the_tags_to_origin(tmp_path: Path) -> None:
    origin, repo = tmp_path / "origin.git", tmp_path / "repo"
    git(tmp_path, "init", "--quiet", "--bare", str(origin))
    git(tmp_path, "init", "--quiet", "-b", "main", str(repo))
    (repo / "f").write_text("x")
    git(repo, "add", "f")
    git(repo, "commit", "--quiet", "-m", "one")
    git(repo, "remote", "add", "origin", str(origin))
    backend = LocalBackend(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    backend.create_tag("m@v1.0.0", head, "first")
    backend.create_tag("m#production#1", head, "stage")
    assert backend.push_tags(["m@v1.0.0"]) is True
    remote = git(repo, "ls-remote", "--tags", "origin")
    assert "refs/tags/m@v1.0.0" in remote and "m#production" not in remote  # only the tags named


def test_local_backend_has_no_pull_requests_or_ci_artifacts(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    assert not backend.hosted and not backend.hosts_pull_requests and not backend.keeps_ci_artifacts
    assert backend.repository == ""
    assert backend.pull_head_sha(3) is None and backend.pulls_for_commit("a" * 40) == []
    assert backend.workflow_run(7) is None and backend.list_artifacts("run-m-0123456789ab") == []
    with pytest.raises(AssetNotFoundError, match="keeps no CI artifacts"):
        backend.download_artifact_zip(ArtifactInfo(1, "x", 1, "", 7, ""), tmp_path / "x.zip", 10)
