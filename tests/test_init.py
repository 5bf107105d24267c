"""`gitops init` and the adopter's first steps in a new repository (issue 17, faults 3 and 6)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from gitops.cli import app
from gitops.repo import init as init_mod

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != ".git"}


def test_init_sets_up_a_repository_that_validates_and_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "team-models"
    result = invoke("init", str(target), "--example", "--package", "gitops-nn==9.9.9", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert (target / ".git").is_dir() and git(target, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    for rel in ("models/my-model/model.yaml", "gitops.yaml", ".gitignore", "schemas/model.schema.json",
                "schemas/settings.schema.json", ".github/workflows/pr.yml", ".github/workflows/release.yml",
                ".github/workflows/pr-train.yml", ".github/actions/setup-gitops/action.yml"):
        assert (target / rel).is_file(), rel
    # the workflows install the pinned package, never the adopter's checkout ('.')
    for rel in (".github/workflows/pr.yml", ".github/workflows/release.yml", ".github/actions/setup-gitops/action.yml"):
        text = (target / rel).read_text()
        assert "gitops-nn==9.9.9" in text and "|| '.'" not in text and 'default: "."' not in text, rel
    ignored = (target / ".gitignore").read_text().split()
    assert {"runs/", ".gitops/", "/site/"} <= set(ignored)
    # what it wrote validates, its schemas are current, and runs/ stays out of commits
    assert invoke("validate", cwd=target).exit_code == 0
    assert invoke("schemas", "--check", cwd=target).exit_code == 0
    (target / "runs/my-model").mkdir(parents=True)
    (target / "runs/my-model/x").write_text("1")
    assert "runs" not in git(target, "status", "--porcelain", "--untracked-files=all")
    # idempotent: a second run changes nothing
    before = files(target)
    again = invoke("init", str(target), "--package", "gitops-nn==9.9.9", cwd=tmp_path)
    assert again.exit_code == 0 and "nothing changed" in again.stdout
    assert files(target) == before


def test_init_refuses_to_overwrite_what_differs_and_force_updates_workflows(tmp_path: Path) -> None:
    target = tmp_path / "repo"
    assert invoke("init", str(target), "--package", "gitops-nn==1.0.0", cwd=tmp_path).exit_code == 0
    (target / "gitops.yaml").write_text("budgets:\n  max_models_per_pr: 2\n")
    (target / ".gitignore").write_text("*.log\n")
    before = files(target)
    # a newer gitops version: the workflows differ, so nothing is written without --force
    result = invoke("init", str(target), "--package", "gitops-nn==2.0.0", cwd=tmp_path)
    assert result.exit_code == 1 and ".github/workflows/pr.yml" in result.output and "--force" in result.output
    assert "Traceback" not in result.output and files(target) == before
    result = invoke("init", str(target), "--package", "gitops-nn==2.0.0", "--force", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "gitops-nn==2.0.0" in (target / ".github/workflows/pr.yml").read_text()
    assert (target / "gitops.yaml").read_text() == "budgets:\n  max_models_per_pr: 2\n"  # the user's, kept
    assert (target / ".gitignore").read_text().startswith("*.log\n")  # appended to, not replaced
    assert "runs/" in (target / ".gitignore").read_text()


def test_init_in_an_existing_repository_keeps_its_history_and_refuses_a_subfolder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "trunk")
    (repo / "sub").mkdir()
    result = invoke("init", str(repo / "sub"), cwd=tmp_path)
    assert result.exit_code == 2 and "top level" in result.output
    assert not (repo / "sub/models").exists()
    result = invoke("init", str(repo / "new-folder"), cwd=tmp_path)  # no nested repository either
    assert result.exit_code == 2 and not (repo / "new-folder").exists()
    result = invoke("init", cwd=repo)
    assert result.exit_code == 0 and "initialized" not in result.output
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/trunk"


def test_new_outside_a_repository_points_to_init(tmp_path: Path) -> None:
    result = invoke("new", "my-model", cwd=tmp_path)
    assert result.exit_code == 2 and "gitops init" in result.output


def test_bad_package_spec_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("init", str(tmp_path / "x"), "--package", "gitops'; rm -rf /", cwd=tmp_path)
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


def test_pin_follows_how_gitops_was_installed() -> None:
    spec = init_mod.installed_package_spec()
    assert spec.startswith("gitops-nn") and ("==" in spec or "@ git+https://" in spec)


def test_written_workflows_pass_actionlint(tmp_path: Path) -> None:
    target = tmp_path / "repo"
    assert invoke("init", str(target), "--package", "gitops-nn @ git+https://github.com/o/r@abc123", cwd=tmp_path).exit_code == 0
    tool = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert tool, "actionlint (the test extra) is not installed"
    proc = subprocess.run([tool, "-no-color"], cwd=target, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_releasing_an_uncommitted_model_says_commit_it_first(tmp_path: Path) -> None:
    target = tmp_path / "repo"
    assert invoke("init", str(target), cwd=tmp_path).exit_code == 0
    git(target, "-c", "user.name=T", "-c", "user.email=t@example.com", "add", "-A")
    git(target, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init")
    assert invoke("new", "cnn-model", cwd=target).exit_code == 0
    result = invoke("release", "cnn-model", cwd=target)
    assert result.exit_code == 1, result.output
    assert "models/cnn-model is not committed; commit it first" in result.output
    assert "Traceback" not in result.output


def test_new_in_a_plain_git_repository_writes_the_schemas_its_headers_name(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert invoke("schemas", "--check", cwd=tmp_path).output.count("missing: schemas/model.schema.json") == 1
    assert invoke("new", "first-model", cwd=tmp_path).exit_code == 0
    header = (tmp_path / "models/first-model/model.yaml").read_text().splitlines()[0]
    assert header.endswith("../../schemas/model.schema.json") and (tmp_path / "schemas/model.schema.json").is_file()
    assert invoke("schemas", "--check", cwd=tmp_path).exit_code == 0


def test_the_source_deploy_copies_into_an_image_still_builds_a_wheel_with_the_templates(tmp_path: Path) -> None:
    import zipfile

    from hatchling.builders.wheel import WheelBuilder

    from gitops.serve import deploy

    source = deploy._source_root()
    assert source is not None
    deploy._copy_source(source, tmp_path / "app")
    wheel = next(iter(WheelBuilder(str(tmp_path / "app")).build(directory=str(tmp_path / "dist"), versions=["standard"])))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"gitops/_workflows/{src}" for src, _ in init_mod.WORKFLOW_FILES} <= names
