"""The release invariant under SIGKILL: `release`, `promote`, `pull` and `ci release-pending` die at each
named point (`GITOPS_TEST_KILL_AT`, gitops/killpoints.py); then no version tag lacks its assets, no
scratch folder is left, and the next command completes. Local and GitHub (emulator) backends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loop_support import commit_all, edit, fake_run, git
from typer.testing import CliRunner

from gitops import killpoints
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.registry import tags, versions

GOOD = {"test/accuracy": 0.95, "test/loss": 0.2}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    return example_repo


def _killed(repo: Path, args: list[str], point: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `gitops ARGS` in a subprocess that SIGKILLs itself at `point`."""
    full = {**os.environ, **(env or {}), killpoints.ENV: point, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "gitops.cli", *args], cwd=repo, env=full, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, f"{point} was not reached: {done.returncode}\n{done.stderr}"
    return done


def _no_tag_without_assets(backend) -> None:
    """Every active version (a retired, deregistered one may stay empty) has all its assets."""
    for model_state in tags.registry_state(backend.list_tags()).values():
        for version in model_state.active_versions():
            meta = versions.release_metadata(version.message)
            assert versions.missing_assets(backend, version.tag, meta) == [], f"{version.tag} has no assets"


def _no_scratch(repo: Path) -> None:
    left = [p for p in (repo / ".gitops").rglob("*") if p.name.startswith((".stage-", ".pull-", "release-"))]
    assert left == [], left


@pytest.mark.parametrize("point", killpoints.POINTS["release"])
def test_release_killed_at_each_point_is_completed_by_the_next_release(repo, point):
    fake_run(repo, "wine-mlp", GOOD)
    _killed(repo, ["release", "wine-mlp"], point)
    backend = LocalBackend(repo)
    _no_tag_without_assets(backend)
    result = CliRunner().invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 0, result.output
    assert [t.name for t in backend.list_tags()] == ["wine-mlp@v1.0.0"]  # one version, never a second
    _no_scratch(repo)
    pulled = CliRunner().invoke(app, ["pull", "wine-mlp", "--to", "pulled"])
    assert pulled.exit_code == 0, pulled.output
    assert json.loads((repo / "pulled/metrics.json").read_text()) == GOOD


@pytest.mark.parametrize("point", killpoints.POINTS["release"])
def test_release_killed_on_github_is_completed_by_the_next_release(repo, point, github_env, github_server,
                                                                   monkeypatch):
    from gitops.backends.github import GitHubBackend

    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    fake_run(repo, "wine-mlp", GOOD)
    _killed(repo, ["release", "wine-mlp", "--backend", "github"], point, github_env)
    backend = GitHubBackend.from_env(github_env)
    _no_tag_without_assets(backend)  # a tag's assets are readable from the moment it exists
    result = CliRunner().invoke(app, ["release", "wine-mlp", "--backend", "github"])
    assert result.exit_code == 0, result.output
    assert github_server.tag_names() == ["wine-mlp@v1.0.0"]
    assert sorted(github_server.release_assets("wine-mlp@v1.0.0")) == ["SHA256SUMS", "wine-mlp-v1.0.0.tar.gz"]
    assert [r for r in github_server.releases.values() if r["draft"]] == []  # no debris
    pulled = CliRunner().invoke(app, ["pull", "wine-mlp", "--to", "pulled", "--backend", "github"])
    assert pulled.exit_code == 0, pulled.output


def test_a_tag_without_assets_is_repaired_or_named(repo, tmp_path):
    """Tags made before this fix (tag first, assets after) that lost their assets."""
    run = fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    folder = repo / ".gitops/releases/wine-mlp/v1.0.0"
    shutil.rmtree(folder)
    # the rebuilt archive has the tag's sha256: repaired by a plain rerun
    result = runner.invoke(app, ["release", "wine-mlp"])
    assert result.exit_code == 0 and "repaired wine-mlp@v1.0.0" in result.output, result.output
    assert runner.invoke(app, ["pull", "wine-mlp", "--to", "p1"]).exit_code == 0

    # the run is gone: exit 1 naming the repair, and nothing is published under the old number
    shutil.rmtree(folder)
    shutil.move(run, tmp_path / "kept-run")
    for command in (["release", "wine-mlp"], ["promote", "wine-mlp@v1.0.0", "--to", "prod"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert "gitops release wine-mlp --repair v1.0.0" in result.output
    # --repair from a given run that matches re-publishes it, and --dist keeps the re-published bytes
    result = runner.invoke(app, ["release", "wine-mlp", "--repair", "v1.0.0", "--run", str(tmp_path / "kept-run"),
                                 "--dist", str(tmp_path / "dist")])
    assert result.exit_code == 0 and "repaired" in result.output, result.output
    kept = sorted(p.name for p in (tmp_path / "dist").iterdir())
    assert kept == ["SHA256SUMS", "wine-mlp-v1.0.0.tar.gz"]
    for name in kept:
        assert (tmp_path / "dist" / name).read_bytes() == (folder / name).read_bytes()
    assert runner.invoke(app, ["release", "wine-mlp", "--repair", "v1.0.0"]).output.startswith("nothing to repair")

    # a run that can't give the same bytes (another retrain): the empty version is retired, HEAD gets a new number
    shutil.rmtree(folder)
    fake_run(repo, "wine-mlp", {"test/accuracy": 0.96, "test/loss": 0.2})
    result = runner.invoke(app, ["release", "wine-mlp", "--repair", "v1.0.0"])
    assert result.exit_code == 0, result.output
    st = versions.state(LocalBackend(repo), "wine-mlp")
    assert not st.versions["v1.0.0"].active and st.latest().version == "v1.1.0"
    assert runner.invoke(app, ["pull", "wine-mlp", "--to", "p2"]).exit_code == 0
    assert json.loads((repo / "p2/metrics.json").read_text())["test/accuracy"] == 0.96
    _no_tag_without_assets(LocalBackend(repo))


@pytest.mark.parametrize("point", killpoints.POINTS["promote"] + killpoints.POINTS["pull"])
def test_promote_and_pull_killed_then_rerun(repo, point):
    fake_run(repo, "wine-mlp", GOOD)
    runner = CliRunner()
    assert runner.invoke(app, ["release", "wine-mlp"]).exit_code == 0
    command = ["promote", "wine-mlp@v1.0.0", "--to", "production"] if point.startswith("promote") else \
        ["pull", "wine-mlp@v1.0.0"]
    _killed(repo, command, point)
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    st = versions.state(LocalBackend(repo), "wine-mlp")
    if point.startswith("promote"):
        assert st.stages == {"production": "v1.0.0"}
        assert len([t for t in LocalBackend(repo).list_tags() if "#production#" in t.name]) == 1
    else:
        pulled = repo / ".gitops/pulled/wine-mlp/v1.0.0"
        assert json.loads((pulled / "metrics.json").read_text()) == GOOD
        assert [p.name for p in pulled.parent.iterdir()] == ["v1.0.0"]  # no .pull-* left


def test_release_pending_killed_after_staging_then_rerun(repo):
    edit(repo, "models/wine-mlp/release.yaml", "min: 0.85", "min: 0.8")
    commit_all(repo, "gate")
    for name in ("wine-mlp", "digits-mlp"):
        fake_run(repo, name, {"test/accuracy": 0.99, "test/loss": 0.1})
    git(repo, "rm", "-q", "-r", *[f"models/{p.name}" for p in (repo / "models").iterdir()
                                  if p.name not in ("wine-mlp", "digits-mlp")])
    commit_all(repo, "two models")
    _killed(repo, ["ci", "release-pending"], "release.staged")
    _no_tag_without_assets(LocalBackend(repo))
    result = CliRunner().invoke(app, ["ci", "release-pending"])
    assert result.exit_code == 0, result.output
    assert sorted(t.name for t in LocalBackend(repo).list_tags()) == ["digits-mlp@v1.0.0", "wine-mlp@v1.0.0"]
    _no_tag_without_assets(LocalBackend(repo))
    _no_scratch(repo)


def test_sigterm_outside_training_unwinds_cleans_up_and_exits_143(repo):
    """SIGTERM (systemd, Kubernetes) in the middle of a pull: `finally` blocks run, exit 143, no scratch."""
    fake_run(repo, "wine-mlp", GOOD)
    assert CliRunner().invoke(app, ["release", "wine-mlp"]).exit_code == 0
    env = {**os.environ, killpoints.ENV: "pull.downloaded:TERM", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "gitops.cli", "pull", "wine-mlp"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143 and "terminated (SIGTERM)" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in (repo / ".gitops/pulled/wine-mlp").iterdir()] == []
