"""Release in two jobs (issue 17, fault 15 after merge): `ci release-pending --spool` prepares with the
repository's plugin package imported and writes nothing to the registry; `ci publish` makes the recorded
writes without importing repository code, after checking every tag, commit and file of the spool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from loop_support import commit_all, git
from test_repo_plugins import EXAMPLE, XOR, write_model
from typer.testing import CliRunner

from gitops.checksums import sha256_file
from gitops.cli import app
from gitops.errors import GitopsError, IntegrityError
from gitops.registry import spool

pytestmark = pytest.mark.slow


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_prepare_with_plugins_then_publish_without_importing_them(tmp_path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    assert cli("init", str(repo)).exit_code == 0
    shutil.copytree(EXAMPLE, repo / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    with (repo / "gitops.yaml").open("a") as fh:
        fh.write("plugins:\n  package: plugins\n")
    write_model(repo, "xor-tiny", {**XOR, "train.yaml": XOR["train.yaml"].replace("steps: 200", "steps: 100")})
    git(repo, "config", "user.name", "T")
    git(repo, "config", "user.email", "t@example.com")
    commit_all(repo, "a model of the repository's plugin")
    monkeypatch.chdir(repo)

    done = cli("ci", "release-pending", "--spool", "spool")  # the prepare job: plugins imported, read-only
    assert done.exit_code == 0, done.output
    assert "released xor-tiny@v1.0.0" in done.output and "spooled for `gitops ci publish`" in done.output
    assert git(repo, "tag", "-l") == "" and not (repo / ".gitops/releases").exists(), "nothing written yet"
    doc = spool.load(repo / "spool")
    assert [op["op"] for op in doc["ops"]] == ["stage", "tag", "finalize"]

    # the publish job: a fresh process that would leave a mark if it imported the plugin package
    marker = tmp_path / "imported"
    init = repo / "plugins/__init__.py"
    init.write_text(f"open({str(marker)!r}, 'w').close()\n" + init.read_text())
    env = {**os.environ, "GITOPS_BACKEND": "local"}
    env.pop("GITOPS_REPO_PLUGINS", None)  # not even the guard is needed: publish resolves no config
    publish = [sys.executable, "-c", "from gitops.cli import main; main()", "ci", "publish", "--spool", "spool",
               "--dist", "dist"]
    first = subprocess.run(publish, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "tagged xor-tiny@v1.0.0" in first.stdout and not marker.exists()
    assert git(repo, "tag", "-l") == "xor-tiny@v1.0.0" and (repo / "dist/xor-tiny-v1.0.0.tar.gz").is_file()
    # what the workflow attests: each archive by its digest (also when the bytes live in an object store)
    subjects = (repo / "dist/release-archives.sha256").read_text(encoding="utf-8").splitlines()
    assert subjects == [f"{sha256_file(repo / 'dist/xor-tiny-v1.0.0.tar.gz')}  xor-tiny-v1.0.0.tar.gz"]
    again = subprocess.run(publish, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already tagged" in again.stdout, again.stdout + again.stderr
    assert (repo / "dist/release-archives.sha256").read_text(encoding="utf-8").splitlines() == subjects
    init.write_text(init.read_text().split("\n", 1)[1])
    pulled = cli("pull", "xor-tiny@v1.0.0")
    assert pulled.exit_code == 0, pulled.output  # checksums verified against what publish uploaded
    assert json.loads(git(repo, "tag", "-l", "--format=%(contents)", "xor-tiny@v1.0.0").split("```json", 1)[1]
                      .split("```", 1)[0])["commit"] == git(repo, "rev-parse", "HEAD")

    # what a spool may not make the write job do
    forged = tmp_path / "forged"
    shutil.copytree(repo / "spool", forged)
    archive = next((forged / "files").rglob("*.tar.gz"))
    archive.write_bytes(archive.read_bytes() + b"x")
    with pytest.raises(IntegrityError, match="the spool recorded"):
        spool.check(forged, spool.load(forged), repo)
    shutil.rmtree(forged)
    shutil.copytree(repo / "spool", forged)
    git(repo, "switch", "-q", "-c", "side")
    (repo / "side.txt").write_text("not merged\n")
    side = commit_all(repo, "a commit main never saw")
    git(repo, "switch", "-q", "main")
    doc = json.loads((forged / spool.SPOOL_FILE).read_text())
    for op in doc["ops"]:
        op["tag"] = op["tag"].replace("v1.0.0", "v9.0.0")
        if "commit" in op:
            op["commit"] = side
    (forged / spool.SPOOL_FILE).write_text(json.dumps(doc))
    with pytest.raises(GitopsError, match="is not in the history of"):
        spool.check(forged, spool.load(forged), repo)
    doc["ops"][0]["tag"] = "refs/heads/main"
    (forged / spool.SPOOL_FILE).write_text(json.dumps(doc))
    done = cli("ci", "publish", "--spool", str(forged))
    assert done.exit_code == 1 and "is not a registry tag" in done.output and "Traceback" not in done.output
    assert git(repo, "tag", "-l") == "xor-tiny@v1.0.0"
