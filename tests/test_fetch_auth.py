"""`gitutil.ensure_commit` fetching a PR head for `ci plan` in a base-branch checkout: the read-only
token goes to GitHub's host over https only, through GIT_CONFIG_* variables (never on a command line)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from gitops.repo import gitutil


def _repo(tmp_path: Path, origin: str) -> Path:
    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin", origin], check=True)
    return repo


@pytest.mark.parametrize(("origin", "server", "sent"), [
    ("https://github.com/acme/models", None, True),
    ("https://github.com/acme/models.git", "https://github.com", True),
    ("https://ghe.example.com/acme/models", "https://ghe.example.com", True),
    ("https://evil.example/acme/models", None, False),  # another host never sees the token
    ("http://github.com/acme/models", None, False),  # not over plain http
    ("git@github.com:acme/models.git", None, False),
])
def test_token_is_sent_only_to_the_github_host(tmp_path, monkeypatch, origin, server, sent):
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_secret")
    if server:
        monkeypatch.setenv("GITHUB_SERVER_URL", server)
    else:
        monkeypatch.delenv("GITHUB_SERVER_URL", raising=False)
    env = gitutil._fetch_auth_env(_repo(tmp_path, origin))
    if not sent:
        assert env is None
        return
    host = (server or "https://github.com").split("//")[1]
    assert env["GIT_CONFIG_KEY_0"] == f"http.https://{host}/.extraheader"
    assert env["GIT_CONFIG_VALUE_0"] == "AUTHORIZATION: basic " + base64.b64encode(b"x-access-token:ghs_secret").decode()


def test_no_token_no_header(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert gitutil._fetch_auth_env(_repo(tmp_path, "https://github.com/acme/models")) is None


def test_a_missing_head_is_fetched_from_origin(tmp_path, monkeypatch):
    """The base checkout lacks the PR head's commit: ensure_commit fetches it by SHA."""
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    origin = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    for args in (["config", "user.email", "t@e.x"], ["config", "user.name", "t"],
                 ["config", "uploadpack.allowAnySHA1InWant", "true"],
                 ["commit", "-q", "--allow-empty", "-m", "base"], ["switch", "-q", "-c", "pr"],
                 ["commit", "-q", "--allow-empty", "-m", "head"]):
        subprocess.run(["git", "-C", str(origin), *args], check=True)
    head = gitutil.head_commit(origin)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-local", "--branch", "main", "--single-branch", str(origin), str(clone)], check=True)
    assert not gitutil.commit_exists(clone, head)
    assert gitutil.ensure_commit(clone, head) == head
