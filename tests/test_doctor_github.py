"""`gitops doctor --github` against the GitHub emulator answering safe, unsafe and unreadable settings."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from gitops.cli import app

REPO = "acme/models"
TRAIN = f"{REPO}/.github/workflows/pr-train.yml@refs/heads/main"
RELEASE = f"{REPO}/.github/workflows/release.yml@refs/heads/main"


def safe_settings(gh) -> None:
    gh.settings["fork_pr_approval"] = {"approval_policy": "all_external_contributors"}
    gh.settings["environments"] = {"gpu-fork-approval": {"protection_rules": [
        {"id": 1, "type": "required_reviewers", "prevent_self_review": True,
         "reviewers": [{"type": "Team", "reviewer": {"slug": "maintainers"}}]}]}}
    gh.settings["runner_groups"] = [
        {"id": 2, "name": "gitops-gpu", "visibility": "selected", "default": False, "allows_public_repositories": False,
         "restricted_to_workflows": True, "selected_workflows": [TRAIN, RELEASE], "repositories": [REPO]},
        {"id": 3, "name": "gitops-gpu-untrusted", "visibility": "selected", "default": False,
         "allows_public_repositories": False, "restricted_to_workflows": True,
         # GitHub also accepts the short ref form
         "selected_workflows": [TRAIN.replace("@refs/heads/main", "@main")], "repositories": [REPO]},
    ]


@pytest.fixture
def doctor(github_env, github_server, monkeypatch):
    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    safe_settings(github_server)

    def run(*extra: str):
        result = CliRunner().invoke(app, ["doctor", "--github", "--json", *extra])
        doc = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
        states = {f["name"]: f["state"] for f in doc["findings"]} if doc else {}
        return result, states

    return run


def test_safe_settings_pass(doctor, github_server):
    result, states = doctor()
    assert result.exit_code == 0, result.output
    assert states == {"fork PR approval": "safe", "environment gpu-fork-approval": "safe",
                      "runner group gitops-gpu": "safe", "runner group gitops-gpu-untrusted": "safe"}
    assert github_server.requests_matching("GET", r"/orgs/acme/actions/runner-groups$")
    # the human form says the same
    text = CliRunner().invoke(app, ["doctor", "--github"])
    assert text.exit_code == 0 and "every setting is safe" in text.stdout


def test_each_unsafe_setting_is_named_and_fails(doctor, github_server):
    github_server.settings["fork_pr_approval"] = {"approval_policy": "first_time_contributors"}
    github_server.settings["environments"] = {}  # GitHub would create it unprotected on first use
    groups = github_server.settings["runner_groups"]
    groups[0]["selected_workflows"] = [TRAIN, RELEASE, f"{REPO}/.github/workflows/pr.yml@refs/pull/1/merge"]
    groups[1]["restricted_to_workflows"] = False
    result, states = doctor()
    assert result.exit_code == 1, result.output
    assert set(states.values()) == {"unsafe"}, states
    doc = json.loads(result.stdout)
    details = {f["name"]: f["detail"] for f in doc["findings"]}
    assert "pr.yml@refs/pull/1/merge" in details["runner group gitops-gpu"]
    assert "first_time_contributors" in details["fork PR approval"]
    assert all(f["fix"] for f in doc["findings"]), "every unsafe finding says what to change"


def test_an_environment_without_reviewers_or_a_missing_group_is_unsafe(doctor, github_server):
    github_server.settings["environments"] = {"gpu-fork-approval": {"protection_rules": [
        {"id": 1, "type": "wait_timer", "wait_timer": 5}]}}
    github_server.settings["runner_groups"] = github_server.settings["runner_groups"][:1]
    github_server.settings["runner_groups"][0]["allows_public_repositories"] = True
    result, states = doctor()
    assert result.exit_code == 1
    assert "also open to public repositories" in result.stdout
    assert states["environment gpu-fork-approval"] == "unsafe"
    assert states["runner group gitops-gpu-untrusted"] == "unsafe"
    assert states["runner group gitops-gpu"] == "safe"


def test_unreadable_settings_are_unknown_never_safe(doctor, github_server):
    github_server.settings["runner_groups"] = None  # not an organisation (404)
    github_server.forbidden.add("fork_pr_approval")  # the token may not read it (403)
    result, states = doctor()
    assert result.exit_code == 1, result.output
    assert states["fork PR approval"] == "unknown"
    assert states["runner group gitops-gpu"] == states["runner group gitops-gpu-untrusted"] == "unknown"
    assert states["environment gpu-fork-approval"] == "safe"
    text = CliRunner().invoke(app, ["doctor", "--github"])
    assert "unknown is never safe" in text.stdout and text.exit_code == 1


def test_private_repository_fork_settings(doctor, github_server):
    github_server.private = True
    result, states = doctor()
    assert result.exit_code == 0 and states["fork PR workflows (private repository)"] == "safe"
    github_server.settings["fork_pr_private"]["send_write_tokens_to_workflows"] = True
    result, states = doctor()
    assert result.exit_code == 1 and states["fork PR workflows (private repository)"] == "unsafe"


def test_unreachable_github_exits_3(doctor, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GITOPS_GITHUB_RETRIES", "1")
    result = CliRunner().invoke(app, ["doctor", "--github"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
