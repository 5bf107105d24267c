"""Pytest fixtures for code that talks to GitHub: an emulator on 127.0.0.1 and the env pointing at it.

Wire it from tests/conftest.py with `pytest_plugins = ["conftest_github"]`. Then:

    def test_release_on_github(github_env, github_server):
        backend = GitHubBackend.from_env(github_env)      # or monkeypatch the env for the CLI
        ...
        assert github_server.tag_names() == ["digits-mlp@v1.0.0"]
"""

from __future__ import annotations

import pytest
from github_server import GitHubServer

GITHUB_TEST_TOKEN = "ghs_TestTokenForTheEmulator0000000000"


@pytest.fixture
def github_server():
    """A fresh in-memory GitHub (repository acme/models, token GITHUB_TEST_TOKEN) for one test."""
    with GitHubServer(token=GITHUB_TEST_TOKEN) as server:
        yield server


@pytest.fixture
def github_env(github_server: GitHubServer) -> dict[str, str]:
    """Environment for `GitHubBackend.from_env`/the CLI: fast retries, no write spacing, 5 s rate-limit cap."""
    return {
        "GITHUB_TOKEN": GITHUB_TEST_TOKEN,
        "GITHUB_REPOSITORY": github_server.full_name,
        "GITHUB_API_URL": github_server.url,
        "GITOPS_GITHUB_BACKOFF": "0.01",
        "GITOPS_GITHUB_WRITE_INTERVAL": "0",
        "GITOPS_GITHUB_MAX_WAIT": "5",
        "GITOPS_GITHUB_TIMEOUT": "10",
    }
