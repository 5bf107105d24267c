"""Schema migrations: old files load unchanged in meaning, `gitops migrate` rewrites them keeping comments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gitops import config
from gitops.cli import app
from gitops.config import migrate, schema
from gitops.repo.tree import FsTree

REPO = Path(__file__).resolve().parents[1]


def _rename_clip(doc) -> None:
    migrate.rename_key(doc, "clip_norm", "grad_clip_norm")


@pytest.fixture
def v2_schema(monkeypatch: pytest.MonkeyPatch):
    """A world where train.yaml v1 spelled `clip_norm` and v2 spells `grad_clip_norm`."""
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(migrate.MIGRATIONS, "train", {1: migrate.Step("rename clip_norm -> grad_clip_norm", _rename_clip)})


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copytree(REPO / "data", tmp_path / "data")  # pinned corpora of the examples
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_current_examples_need_no_migration(repo: Path) -> None:
    result = CliRunner().invoke(app, ["migrate", "--check"])
    assert result.exit_code == 0 and "schema_version 1" in result.output


def test_old_file_loads_and_migrates_keeping_comments(repo: Path, v2_schema) -> None:
    train = repo / "models/wine-mlp/train.yaml"
    current = config.load("wine-mlp", repo, tree=FsTree(repo))
    old_text = train.read_text().replace("checkpoint:", "clip_norm: 2.0   # keep this comment\ncheckpoint:")
    train.write_text(old_text)
    before = config.load("wine-mlp", repo, tree=FsTree(repo))  # loads through the in-memory migration
    assert before.train.grad_clip_norm == 2.0
    assert before.training_fingerprint != current.training_fingerprint  # the value changed, not the format

    runner = CliRunner()
    check = runner.invoke(app, ["migrate", "--check"])
    assert check.exit_code == 1 and "models/wine-mlp/train.yaml" in check.output
    assert train.read_text() == old_text  # --check writes nothing
    result = runner.invoke(app, ["migrate", "models/wine-mlp"])
    assert result.exit_code == 0, result.output
    text = train.read_text()
    line = next(x for x in text.splitlines() if x.startswith("grad_clip_norm:"))
    assert line.startswith("grad_clip_norm: 2.0") and line.endswith("# keep this comment")
    assert "\nclip_norm" not in text
    assert text.index("grad_clip_norm") < text.index("checkpoint:")  # kept its place
    assert "schema_version: 2" in text
    assert text.splitlines()[0].startswith("# yaml-language-server:")
    after = config.load("wine-mlp", repo, tree=FsTree(repo))
    assert after.training_fingerprint == before.training_fingerprint  # migrating never changes the hash
    assert runner.invoke(app, ["migrate", "--check", "models/wine-mlp"]).exit_code == 0


def test_file_from_a_newer_gitops_is_refused(repo: Path) -> None:
    path = repo / "models/wine-mlp/model.yaml"
    path.write_text(path.read_text() + "schema_version: 7\n")
    _, problems = config.resolve("wine-mlp", FsTree(repo))
    assert any("schema_version 7" in p.message and "upgrade gitops" in p.message for p in problems)
