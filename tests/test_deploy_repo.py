"""Stage moves drive deploys: `gitops deploy MODEL@STAGE --to-repo` keeps a Kustomize deploy repository
(what Argo CD or Flux syncs) equal to the registry, and protected stages move only through a merged,
reviewed promotion PR.

Real parts: git repositories in temporary folders (the model repository, a deploy repository as a
folder and as a bare "remote" reached by URL), the released wine-mlp v1.0.0 of the session's trained
examples, the Kubernetes schemas of `kubernetes-validate`, `kubectl kustomize`, and the serving
image's own start command run as a process and probed over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import git
from typer.testing import CliRunner

from gitops.cli import app

REPO = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl")

PROTECTED = """\
protected_stages:
  production:
    approvers: ["@acme/ml-leads", "@alice"]
"""


@pytest.fixture(scope="module")
def released(trained_examples, tmp_path_factory):
    """A git repository with wine-mlp v1.0.0 released by the local backend."""
    from conftest import make_example_repo

    from gitops.api import release
    from gitops.backends.local import LocalBackend

    repo = make_example_repo(tmp_path_factory.mktemp("deployrepo") / "repo")
    run = trained_examples["wine-mlp"]
    shutil.copytree(run, repo / "runs" / "wine-mlp" / run.name)
    release(repo, LocalBackend(repo), "wine-mlp")
    return repo


@pytest.fixture
def repo(released, tmp_path):
    """A private copy of the released repository (tags included), so each test moves stages freely."""
    copy = tmp_path / "repo"
    shutil.copytree(released, copy, symlinks=True)
    return copy


def gitops(repo: Path, monkeypatch, *args: str):
    monkeypatch.chdir(repo)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITOPS_BACKEND", raising=False)
    return CliRunner().invoke(app, list(args))


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def log(repo: Path) -> list[str]:
    out = git(repo, "log", "--format=%s", "--all") if (repo / ".git").exists() else ""
    return [line for line in out.splitlines() if line]


def kustomize(folder: Path) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (Debian package kubernetes-client; .ci/run installs it)")
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_stage_moves_commit_to_a_deploy_repository(repo, monkeypatch, tmp_path):
    deploy_root = tmp_path / "deploy"
    staging_tag = ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "staging")).strip()
    assert staging_tag == "wine-mlp#staging#1"
    text = ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@staging", "--to-repo", str(deploy_root)))
    assert "Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1)" in text
    (subject,) = log(deploy_root)
    body = git(deploy_root, "log", "-1", "--format=%B")
    assert subject == "Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1)"
    for line in ("model: wine-mlp", "version: v1.0.0", "stage: staging", "stage-tag: wine-mlp#staging#1"):
        assert line in body

    # the layout: version-free base, the stage overlay naming the version and its archive checksum
    from gitops.backends.local import LocalBackend
    from gitops.registry import versions

    _, version = versions.resolve(LocalBackend(repo), "wine-mlp@v1.0.0")
    sha = versions.release_metadata(version.message)["sha256"]
    cm = yaml.safe_load((deploy_root / "overlays/staging/wine-mlp/configmap.yaml").read_text())
    assert cm["data"]["GITOPS_VERSION"] == "v1.0.0" and cm["data"]["GITOPS_SHA256"] == sha
    assert cm["data"]["GITOPS_STAGE_TAG"] == "wine-mlp#staging#1"
    stage_k = yaml.safe_load((deploy_root / "overlays/staging/kustomization.yaml").read_text())
    assert stage_k["bases"] == ["wine-mlp"]  # folders: `bases` is what kustomize v2.0 (Debian's kubectl) reads
    base = {p.name: yaml.safe_load(p.read_text()) for p in (deploy_root / "base/wine-mlp").glob("*.yaml")}
    assert "v1.0.0" not in json.dumps(base), "the base must be the same for every version and stage"
    for name in ("deployment.yaml", "service.yaml", "hpa.yaml"):
        validate(base[name])
    validate(cm)
    container = base["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["envFrom"] == [{"configMapRef": {"name": "wine-mlp-release"}},  # what to pull
                                     {"secretRef": {"name": "gitops-artifacts", "optional": True}}]  # store creds

    # kubectl kustomize builds the overlay: the pods carry version and checksum (a new one rolls them)
    built = {d["kind"]: d for d in kustomize(deploy_root / "overlays/staging")}
    assert set(built) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    annotations = built["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["gitops.dev/version"] == "v1.0.0" and annotations["gitops.dev/sha256"] == sha
    for doc in built.values():
        validate(doc)

    # idempotent: the same stage again writes nothing
    text = ok(gitops(repo, monkeypatch, "deploy", "wine-mlp#staging#1", "--to-repo", str(deploy_root)))
    assert "unchanged (no commit)" in text and len(log(deploy_root)) == 1

    # a user's patch in the stage's kustomization survives our edits
    kpath = deploy_root / "overlays/staging/kustomization.yaml"
    kdoc = yaml.safe_load(kpath.read_text())
    kdoc["namespace"] = "ml-staging"
    kpath.write_text(yaml.safe_dump(kdoc))
    git(deploy_root, "commit", "-qam", "user: staging namespace")

    # a demote removes the model from the stage's overlay, in a commit that says so
    demote_tag = ok(gitops(repo, monkeypatch, "demote", "wine-mlp", "--from", "staging")).strip()
    assert demote_tag == "wine-mlp#staging!#2"
    ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@staging", "--to-repo", str(deploy_root)))
    assert log(deploy_root)[0] == "Remove wine-mlp from staging (demoted: wine-mlp#staging!#2)"
    assert not (deploy_root / "overlays/staging/wine-mlp").exists()
    kdoc = yaml.safe_load(kpath.read_text())
    assert kdoc["bases"] == [] and kdoc["namespace"] == "ml-staging"
    assert kustomize(deploy_root / "overlays/staging") == []
    assert not git(deploy_root, "status", "--porcelain").strip()


def test_stage_moves_deploy_themselves_when_gitops_yaml_names_a_deploy_repository(repo, monkeypatch, tmp_path):
    """The issue's "done when", locally: promote to staging commits manifests; promote to production opens a
    promotion branch and only its merge (then `ci promote-approved`) writes the tag and the deploy commit; a
    demote removes the model; `--no-deploy` skips; a deploy that fails leaves the tag and names the rerun."""
    deploy_root = tmp_path / "deploy-repo"
    (repo / "gitops.yaml").write_text(f"deploy:\n  repository: ../deploy-repo\n{PROTECTED}")  # relative to the repo
    git(repo, "add", "gitops.yaml")
    git(repo, "commit", "-qm", "deploys")
    result = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "staging")
    assert ok(result).strip() == "wine-mlp#staging#1"  # stdout stays the tag alone
    assert "Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1): commit" in result.stderr
    assert log(deploy_root) == ["Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1)"]

    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "production"))
    assert "wine-mlp#production" not in git(repo, "tag", "--list") and len(log(deploy_root)) == 1
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #3", "promote/wine-mlp-production-v1.0.0")
    result = gitops(repo, monkeypatch, "ci", "promote-approved")
    assert ok(result).split() == ["wine-mlp#production#2"]
    assert log(deploy_root)[0] == "Deploy wine-mlp v1.0.0 to production (wine-mlp#production#2)"
    assert (deploy_root / "overlays/production/wine-mlp/configmap.yaml").is_file()

    assert ok(gitops(repo, monkeypatch, "demote", "wine-mlp", "--from", "staging")).strip() == "wine-mlp#staging!#3"
    assert log(deploy_root)[0] == "Remove wine-mlp from staging (demoted: wine-mlp#staging!#3)"
    assert not (deploy_root / "overlays/staging/wine-mlp").exists()

    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "canary", "--no-deploy"))
    assert len(log(deploy_root)) == 3 and not (deploy_root / "overlays/canary").exists()

    # a deploy repository that cannot be reached: the tag stands (the stage moved), exit 3 names the rerun
    (repo / "gitops.yaml").write_text(f"deploy:\n  repository: {(tmp_path / 'gone.git').as_uri()}\n")
    result = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "qa")
    assert result.exit_code == 3, result.output
    assert "wine-mlp#qa#5 is written, but the deploy failed" in result.output
    assert "gitops deploy wine-mlp@qa" in result.output and "Traceback" not in result.output
    assert "wine-mlp#qa#5" in git(repo, "tag", "--list")
    (repo / "gitops.yaml").unlink()
    bad = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "qa3", "--deploy")
    assert bad.exit_code == 2 and "deploy.repository" in bad.output
    assert "wine-mlp#qa3" not in git(repo, "tag", "--list")  # refused before the tag


def test_a_deploy_folder_inside_the_model_repository_is_committed_there(repo, monkeypatch):
    """`deploy.repository: deploy` (a folder of this repository): the deploy commit holds only that folder;
    what the user has staged stays staged and uncommitted."""
    (repo / "gitops.yaml").write_text("deploy:\n  repository: deploy\n")
    git(repo, "add", "gitops.yaml")
    git(repo, "commit", "-qm", "deploys into deploy/")
    (repo / "notes.txt").write_text("work in progress\n")
    git(repo, "add", "notes.txt")
    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "staging"))
    assert git(repo, "log", "-1", "--format=%s").strip() == "Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1)"
    files = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert files and all(f.startswith("deploy/") for f in files)
    assert "deploy/overlays/staging/wine-mlp/configmap.yaml" in files
    assert git(repo, "status", "--porcelain").splitlines() == ["A  notes.txt"]
    kustomize(repo / "deploy/overlays/staging")


def test_deploy_all_to_a_url_and_a_custom_path(repo, monkeypatch, tmp_path):
    remote = tmp_path / "deploy.git"
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    (seed / "README.md").write_text("deploy repository\n")
    git(seed, "add", "-A")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    git(seed, "push", "-q", "origin", "HEAD:main")

    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "staging"))
    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "canary"))
    url = remote.as_uri()
    text = ok(gitops(repo, monkeypatch, "deploy", "--all", "--to-repo", url))
    assert "Deploy wine-mlp v1.0.0 to canary" in text and "Deploy wine-mlp v1.0.0 to staging" in text
    subjects = git(remote, "log", "--format=%s", "main").splitlines()
    assert subjects[:2] == ["Deploy wine-mlp v1.0.0 to staging (wine-mlp#staging#1)",
                            "Deploy wine-mlp v1.0.0 to canary (wine-mlp#canary#2)"]
    assert "unchanged" in ok(gitops(repo, monkeypatch, "deploy", "--all", "--to-repo", url))
    assert len(git(remote, "log", "--format=%s", "main").splitlines()) == 3

    # --path: the user's own layout (envs/<stage>); bad paths are refused before anything is written
    folder = tmp_path / "envs-repo"
    ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@staging", "--to-repo", str(folder), "--path", "envs/staging"))
    assert (folder / "envs/staging/wine-mlp/configmap.yaml").is_file()
    kust = yaml.safe_load((folder / "envs/staging/wine-mlp/kustomization.yaml").read_text())
    assert kust["bases"] == ["../../../base/wine-mlp"] and kust["resources"] == ["configmap.yaml"]
    kustomize(folder / "envs/staging")
    for bad in ("../outside", "/abs"):
        result = gitops(repo, monkeypatch, "deploy", "wine-mlp@staging", "--to-repo", str(folder), "--path", bad)
        assert result.exit_code == 2 and "--path" in result.output and "Traceback" not in result.output
    result = gitops(repo, monkeypatch, "deploy", "wine-mlp@v1.0.0", "--to-repo", str(folder))
    assert result.exit_code == 2 and "MODEL@STAGE" in result.output


def test_generic_render_and_bake(repo, monkeypatch, tmp_path):
    out = tmp_path / "render"
    ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@v1.0.0", "--render", str(out)))
    assert not (out / "Dockerfile").exists()
    cm = yaml.safe_load((out / "overlays/default/wine-mlp/configmap.yaml").read_text())
    assert cm["data"]["GITOPS_VERSION"] == "v1.0.0"
    kustomize(out / "overlays/default")
    baked = tmp_path / "baked"
    ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@v1.0.0", "--render", str(baked), "--bake"))
    assert (baked / "Dockerfile").is_file() and (baked / "model" / "manifest.json").is_file()


def _promotion_setup(repo: Path) -> None:
    (repo / "gitops.yaml").write_text(PROTECTED)
    git(repo, "add", "gitops.yaml")
    git(repo, "commit", "-qm", "protect production")


def test_protected_stage_moves_only_through_a_merged_promotion(repo, monkeypatch, tmp_path):
    deploy_root = tmp_path / "deploy"
    _promotion_setup(repo)
    before = git(repo, "status", "--porcelain")
    text = ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "production"))
    assert "promotion branch promote/wine-mlp-production-v1.0.0" in text
    assert "wine-mlp#production" not in git(repo, "tag", "--list")  # no tag before the merge
    assert git(repo, "status", "--porcelain") == before and git(repo, "branch", "--show-current").strip() == "main"
    branch = "promote/wine-mlp-production-v1.0.0"
    files = git(repo, "show", "--name-only", "--format=", branch).split()
    assert sorted(files) == [".github/CODEOWNERS", "promotions/wine-mlp.yaml"]
    promo = yaml.safe_load(git(repo, "show", f"{branch}:promotions/wine-mlp.yaml"))
    assert promo["model"] == "wine-mlp" and promo["version"] == "v1.0.0" and promo["stage"] == "production"
    assert "/promotions/ @acme/ml-leads @alice" in git(repo, "show", f"{branch}:.github/CODEOWNERS")
    again = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "production")
    assert again.exit_code == 2 and "already exists" in again.output

    # nothing merged yet: nothing to tag
    assert "no merged promotion" in ok(gitops(repo, monkeypatch, "ci", "promote-approved"))

    # someone pushes a production tag by hand: history and doctor call it unapproved; it is not deployed
    from gitops.backends.local import LocalBackend
    from gitops.registry import versions

    rogue = versions.promote(LocalBackend(repo), "wine-mlp@v1.0.0", "production")
    history = ok(gitops(repo, monkeypatch, "history", "wine-mlp"))
    assert "UNAPPROVED: its tag names no promotion commit" in history
    doc = json.loads(ok(gitops(repo, monkeypatch, "history", "wine-mlp", "--json")))
    assert [e["tag"] for e in doc["events"] if e.get("unapproved")] == [rogue]
    from gitops.config.settings import load_settings
    from gitops.registry import promotions
    from gitops.repo.tree import FsTree

    check = promotions.doctor_check(repo, LocalBackend(repo), load_settings(FsTree(repo)))
    assert not check.ok and rogue in check.detail
    refused = gitops(repo, monkeypatch, "deploy", "wine-mlp@production", "--to-repo", str(deploy_root))
    assert refused.exit_code == 1 and "unapproved" in refused.output
    assert not (deploy_root / "overlays/production").exists()
    ok(gitops(repo, monkeypatch, "demote", "wine-mlp", "--from", "production"))

    # the merge (after review) is what writes the tag; its message names the promotion commit
    promotion_commit = git(repo, "rev-parse", branch).strip()
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #7 from acme/promote", branch)
    (tag,) = ok(gitops(repo, monkeypatch, "ci", "promote-approved")).split()
    message = git(repo, "tag", "-l", "--format=%(contents)", tag)
    assert f"promotion: {promotion_commit}" in message and "pull-request: #7" in message
    assert "no merged promotion" in ok(gitops(repo, monkeypatch, "ci", "promote-approved"))  # idempotent
    history = ok(gitops(repo, monkeypatch, "history", "wine-mlp"))
    assert history.count("UNAPPROVED") == 1  # only the rogue tag
    text = ok(gitops(repo, monkeypatch, "deploy", "--all", "--to-repo", str(deploy_root)))
    assert f"Deploy wine-mlp v1.0.0 to production ({tag})" in text
    assert yaml.safe_load((deploy_root / "overlays/production/wine-mlp/configmap.yaml").read_text())[
        "data"]["GITOPS_STAGE_TAG"] == tag

    # a promotion commit on a branch that never reached main does not approve anything
    git(repo, "switch", "-q", "-c", "side", "HEAD~1")
    (repo / "promotions").mkdir(exist_ok=True)
    (repo / "promotions/wine-mlp.yaml").write_text("model: wine-mlp\nversion: v1.0.0\nstage: production\n")
    git(repo, "add", "promotions")
    git(repo, "commit", "-qm", "unreviewed")
    side = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "switch", "-q", "main")
    from gitops.registry import tags

    event = tags.Event(tags.Action.ASSIGN, "wine-mlp", "x", "", "", "", f"promotion: {side}\n", "v1.0.0",
                       "production")
    assert "not reachable from main" in promotions.approval(repo, event, load_settings(FsTree(repo)))


def test_protected_stage_settings_errors(repo, monkeypatch):
    (repo / "gitops.yaml").write_text("protected_stages:\n  production:\n    approvers: [alice]\n")
    result = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "production")
    assert result.exit_code == 1 and "gitops.yaml:3" in result.output and "approvers" in result.output
    (repo / "gitops.yaml").write_text(PROTECTED)
    (repo / ".gto").write_text("stages: [dev, staging, prod]\n")
    result = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "production")
    assert result.exit_code == 2 and "not an allowed stage in .gto" in result.output
    (repo / ".gto").unlink()
    monkeypatch.setenv("GTO_STAGES", '["dev", "staging"]')  # GTO's environment setting wins over .gto, as in GTO
    result = gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "production")
    assert result.exit_code == 2 and "not an allowed stage in $GTO_STAGES (stages: dev, staging)" in result.output
    assert not git(repo, "branch", "--list", "promote/*").strip()


def test_promotion_pr_on_github(repo, monkeypatch, tmp_path, github_server, github_env):
    """github backend: the branch is pushed and a PR opened; after the merge the tag names that PR."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    _promotion_setup(repo)
    git(repo, "push", "-q", "origin", "main")
    release_tag = "wine-mlp@v1.0.0"
    github_server.add_annotated_tag(release_tag, git(repo, "rev-list", "-1", release_tag).strip(),
                                    git(repo, "tag", "-l", "--format=%(contents)", release_tag))
    from gitops.backends.github import GitHubBackend
    from gitops.backends.local import LocalBackend

    local, assets = LocalBackend(repo), tmp_path / "assets"
    files = [local.download_asset(release_tag, name, assets / name) for name in local.list_assets(release_tag)]
    GitHubBackend.from_env(github_env).publish_release(release_tag, release_tag, "notes", files)
    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(repo)
    runner = CliRunner()
    result = runner.invoke(app, ["promote", "wine-mlp@v1.0.0", "--to", "production", "--backend", "github"])
    assert result.exit_code == 0, result.output
    assert "pull request: " in result.output
    (posted,) = github_server.requests_matching("POST", r"/pulls$")
    pr_body = json.loads(posted.body)
    assert pr_body["head"] == "promote/wine-mlp-production-v1.0.0" and pr_body["base"] == "main"
    pushed = git(origin, "rev-parse", "promote/wine-mlp-production-v1.0.0").strip()
    # GitHub squash-merges it: the promotion commit on main is associated with PR #1
    git(repo, "merge", "-q", "--squash", "promote/wine-mlp-production-v1.0.0")
    git(repo, "commit", "-qm", "Promote wine-mlp v1.0.0 to production (#1)")
    squashed = git(repo, "rev-parse", "HEAD").strip()
    github_server.merge_pull(1, squashed, pushed)
    result = runner.invoke(app, ["ci", "promote-approved", "--backend", "github"])
    assert result.exit_code == 0, result.output
    tag = result.output.split()[0]
    assert tag == "wine-mlp#production#1" and tag in github_server.tag_names()
    (message,) = [json.loads(t.body)["message"] for t in github_server.requests_matching("POST", r"/git/tags$")
                  if json.loads(t.body)["tag"] == tag]
    assert f"promotion: {squashed}" in message and "pull-request: #1" in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def image_cmd() -> list[str]:
    text = (REPO / "docker" / "Dockerfile").read_text()
    return json.loads([line for line in text.splitlines() if line.startswith("CMD ")][-1][4:])


def image_env() -> dict[str, str]:
    text = (REPO / "docker" / "Dockerfile").read_text()
    block = re.search(r"^ENV (.*?)(?<!\\)$", text.split("ARG GPU=false", 1)[1], re.M | re.S).group(1)
    return dict(pair.split("=", 1) for pair in block.replace("\\\n", " ").split())


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule (last matching pattern wins; `!` re-includes; a folder's pattern covers
    what is inside it), enough for the patterns our ignore file uses."""
    import fnmatch

    ignored = False
    parts = rel.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.rstrip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_the_serving_image_installs_from_what_its_dockerfile_copies(tmp_path):
    """No Docker engine here: the build context the image sees (docker/Dockerfile's COPY sources through
    docker/Dockerfile.dockerignore), copied into a folder, must build the wheel its `pip install` builds."""
    from hatchling.builders.wheel import WheelBuilder

    text = (REPO / "docker" / "Dockerfile").read_text()
    patterns = [line.strip() for line in (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    src = tmp_path / "opt-gitops-src"
    copies = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies and all(dest.startswith("/opt/gitops-src/") for *_, dest in copies)
    for *sources, dest in copies:
        for source in sources:
            origin = REPO / source.rstrip("/")
            files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
            kept = [p for p in files if not _dockerignored(p.relative_to(REPO).as_posix(), patterns)]
            assert kept, f"{source}: the .dockerignore leaves nothing of it in the context"
            for path in kept:
                rel = path.name if origin.is_file() else path.relative_to(origin)
                target = src / dest.removeprefix("/opt/gitops-src/") / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    assert _dockerignored(".venv/bin/python", patterns) and _dockerignored("runs/x/manifest.json", patterns)
    (wheel,) = WheelBuilder(str(src)).build(directory=str(tmp_path / "dist"), versions=["standard"])
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "gitops/cli.py" in names and "gitops/_workflows/workflows/release.yml" in names
    assert re.search(r'pip install "/opt/gitops-src\[\$EXTRAS\]"', text) and "ARG EXTRAS=s3,gcs,azure" in text


@pytest.mark.slow
def test_serving_image_start_command_pulls_verifies_and_serves(repo, monkeypatch, tmp_path):
    """The generic image's CMD, run as a process with the ConfigMap's environment (local backend)."""
    deploy_root = tmp_path / "deploy"
    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.0", "--to", "staging"))
    ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@staging", "--to-repo", str(deploy_root)))
    cm = yaml.safe_load((deploy_root / "overlays/staging/wine-mlp/configmap.yaml").read_text())["data"]
    port = _free_port()
    env = {**os.environ, **image_env(), **cm, "GITOPS_BACKEND": "local", "GITOPS_HOST": "127.0.0.1",
           "GITOPS_PORT": str(port), "GITOPS_MODEL_DIR": str(tmp_path / "model"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    assert env["GITOPS_SHA256"] and env["GITOPS_VERSION"] == "v1.0.0"

    # a ConfigMap naming another build: the pod refuses to start
    bad = subprocess.run(image_cmd(), cwd=repo, env={**env, "GITOPS_SHA256": "0" * 64}, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "expected" in bad.stderr and not (tmp_path / "model").exists()

    proc = subprocess.Popen(image_cmd(), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if _get(f"http://127.0.0.1:{port}/readyz") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        assert _get(f"http://127.0.0.1:{port}/healthz") == 200
        release = json.loads((tmp_path / "model" / "release.json").read_text())
        assert release["version"] == "v1.0.0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pods_pull_a_release_from_an_s3_compatible_artifact_store(repo, monkeypatch, tmp_path, s3_server):
    """A release whose archive is in an S3-compatible store: the ConfigMap carries the store's endpoint
    (botocore's AWS_ENDPOINT_URL_S3), the Deployment the optional credentials Secret, and the image's pull
    step, run with only that environment (no endpoint in any gitops.yaml), fetches and verifies it."""
    from conftest import S3_BUCKET

    creds = {"AWS_ACCESS_KEY_ID": "pod-key", "AWS_SECRET_ACCESS_KEY": "pod-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    (repo / "gitops.yaml").write_text(f"artifacts:\n  url: s3://{S3_BUCKET}/pods\n  endpoint_url: {s3_server}\n")
    release_yaml = repo / "models/wine-mlp/release.yaml"
    release_yaml.write_text(release_yaml.read_text().replace("description:", "description: In S3 -"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "archives in S3; a patch release")
    ok(gitops(repo, monkeypatch, "release", "wine-mlp"))
    tag_text = git(repo, "tag", "-l", "--format=%(contents)", "wine-mlp@v1.0.1")
    assert f"object: s3://{S3_BUCKET}/pods/sha256/" in tag_text
    deploy_root = tmp_path / "deploy"
    ok(gitops(repo, monkeypatch, "promote", "wine-mlp@v1.0.1", "--to", "staging"))
    ok(gitops(repo, monkeypatch, "deploy", "wine-mlp@staging", "--to-repo", str(deploy_root)))
    cm = yaml.safe_load((deploy_root / "overlays/staging/wine-mlp/configmap.yaml").read_text())["data"]
    assert cm["AWS_ENDPOINT_URL_S3"] == s3_server and cm["GITOPS_VERSION"] == "v1.0.1"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(cm)  # credentials never in a ConfigMap
    validate(yaml.safe_load((deploy_root / "overlays/staging/wine-mlp/configmap.yaml").read_text()))

    (repo / "gitops.yaml").unlink()  # the pod has no gitops.yaml: the ConfigMap's endpoint is all it knows
    pull_step = image_cmd()[-1].split("; exec ")[0]  # `set -e; gitops pull ...` before `exec gitops serve`
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **image_env(), **cm, **creds,
           "GITOPS_BACKEND": "local", "GITOPS_MODEL_DIR": str(tmp_path / "model"),
           "GITOPS_DATA_CACHE": str(tmp_path / "pod-cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    done = subprocess.run(["sh", "-c", pull_step], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "model" / "release.json").read_text())["version"] == "v1.0.1"
    assert any((tmp_path / "pod-cache").iterdir())  # fetched from the store (cached by hash)


def test_argo_cd_and_flux_examples_parse():
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    docs = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    by_kind = {d["kind"]: d for d in docs if isinstance(d, dict) and "kind" in d}
    app_ = by_kind["Application"]
    assert app_["apiVersion"] == "argoproj.io/v1alpha1"
    assert app_["spec"]["source"]["path"] == "overlays/production"
    assert app_["spec"]["syncPolicy"]["automated"]["prune"] is True  # a demote must delete the pods
    flux = by_kind["Kustomization"]
    assert flux["apiVersion"].startswith("kustomize.toolkit.fluxcd.io/")
    assert flux["spec"]["path"] == "./overlays/production" and flux["spec"]["prune"] is True
