"""Budgets in gitops.yaml: `ci plan` refuses an over-budget PR unless a maintainer label lifts it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gitops.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copytree(REPO / "data", tmp_path / "data")  # pinned corpora of the examples
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    (tmp_path / "gitops.yaml").write_text(
        "budgets:\n  max_models_per_pr: 1\n  max_steps_per_model: 5000\n  max_device_minutes_per_pr: 1\n"
    )
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "base")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_EVENT_PATH", raising=False)
    monkeypatch.delenv("GITOPS_RUN_CACHE", raising=False)
    return tmp_path


def commit_change(root: Path, replacements: dict[str, tuple[str, str]]) -> tuple[str, str]:
    base = git(root, "rev-parse", "HEAD")
    for rel, (old, new) in replacements.items():
        path = root / rel
        path.write_text(path.read_text().replace(old, new))
    git(root, "commit", "-qam", "change")
    return base, git(root, "rev-parse", "HEAD")


def plan(base: str, head: str, *extra: str):
    return runner.invoke(app, ["ci", "plan", "--base", base, "--head", head, *extra])


def test_within_budget_plans(repo: Path) -> None:
    base, head = commit_change(repo, {"models/wine-mlp/train.yaml": ("seed: 0", "seed: 1")})
    result = plan(base, head)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["budget"]["violations"] == []


def test_too_many_models_is_refused_then_lifted_by_label(repo: Path) -> None:
    base, head = commit_change(repo, {
        "models/wine-mlp/train.yaml": ("seed: 0", "seed: 1"),
        "models/digits-cnn/train.yaml": ("seed: 0", "seed: 1"),
    })
    refused = plan(base, head)
    assert refused.exit_code == 1
    assert "2 models to train; the budget allows 1" in refused.output and "gitops:budget-override" in refused.output
    lifted = plan(base, head, "--label", "gitops:budget-override")
    assert lifted.exit_code == 0
    assert json.loads(lifted.stdout)["budget"]["lifted_by_label"] == "gitops:budget-override"


def test_label_read_from_the_github_event(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, head = commit_change(repo, {"models/digits-cnn/train.yaml": ("steps: 1200", "steps: 9000")})
    assert plan(base, head).exit_code == 1  # 9000 steps > 5000
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"labels": [{"name": "gitops:budget-override"}]}}))
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(event))
    assert plan(base, head).exit_code == 0


def test_device_minutes_from_the_last_measured_rate(repo: Path) -> None:
    base, head = commit_change(repo, {"models/digits-cnn/train.yaml": ("seed: 0", "seed: 1")})
    assert plan(base, head).exit_code == 0  # never trained: no estimate, no refusal
    run = repo / "runs/digits-cnn/000000000000"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"steps_per_second": 10.0, "finished_at": "2026-01-01T00:00:00Z"}))
    refused = plan(base, head)  # 1200 steps at 10 steps/s = 2 minutes > 1
    assert refused.exit_code == 1 and "estimated 2.0 device-minutes" in refused.output


def test_invalid_settings_are_reported_by_validate(repo: Path) -> None:
    (repo / "gitops.yaml").write_text("budgets:\n  max_models_per_pr: many\n  max_stepz: 3\n")
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1
    assert "gitops.yaml:2:22: budgets.max_models_per_pr: expected an integer" in result.output
    assert "unknown key 'max_stepz'" in result.output
