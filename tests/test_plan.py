"""`gitops ci plan` and `gitops diff` on real git repositories (copies of the example models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loop_support import commit_all, edit, git
from typer.testing import CliRunner

from gitops.cli import app
from gitops.errors import ConfigError, UsageError
from gitops.registry import plan

REPO = Path(__file__).resolve().parents[1]


def _plan(repo: Path, base: str, head: str) -> dict:
    return plan.plan(repo, base, head).as_dict()


def _names(doc: dict, key: str) -> list[str]:
    return [c["model"] for c in doc[key]]


def test_formatting_and_comment_only_edits_plan_nothing(example_repo):
    base = git(example_repo, "rev-parse", "HEAD")
    path = example_repo / "models/digits-mlp/train.yaml"
    text = path.read_text()
    # comments, blank lines, key order, quoting style and float spelling change no fingerprint
    lines = text.splitlines()
    path.write_text("# a new comment\n" + "\n".join(reversed(lines[1:3])) + "\n\n" + "\n".join(lines[3:]) + "\n")
    edit(example_repo, "models/digits-mlp/train.yaml", "learning_rate: 3e-3", "learning_rate: 0.003  # same")
    edit(example_repo, "models/wine-mlp/model.yaml", "activation: tanh", 'activation: "tanh"')
    head = commit_all(example_repo, "cosmetic")
    doc = _plan(example_repo, base, head)
    assert doc["train"] == [] and doc["release_only"] == [] and doc["deleted"] == []
    assert doc["matrix"] == {"include": []}


def test_own_file_change_and_extends_parent(example_repo):
    base = git(example_repo, "rev-parse", "HEAD")
    edit(example_repo, "models/digits-mlp/train.yaml", "learning_rate: 3e-3", "learning_rate: 1e-3")
    edit(example_repo, "models/digits-mlp/model.yaml", "dropout: 0.1", "dropout: 0.2")
    head = commit_all(example_repo, "lr")
    doc = _plan(example_repo, base, head)
    reasons = {c["model"]: c["reason"] for c in doc["train"]}
    assert set(reasons) == {"digits-mlp", "digits-mlp-wide"}  # the child extends model.yaml and train.yaml
    assert reasons["digits-mlp"] == "own files changed: model.yaml, train.yaml"
    assert reasons["digits-mlp-wide"] == "parent digits-mlp changed (extends)"
    include = doc["matrix"]["include"]
    assert [i["model"] for i in include] == ["digits-mlp", "digits-mlp-wide"]
    assert all(len(i["fingerprint"]) == 12 for i in include)


def test_a_checksum_list_or_tokenizer_file_added_alone_is_an_input_of_the_plan(example_repo):
    # at base the checksum list of shapes-cnn and the tokenizer file of a language model were never
    # committed (both configs invalid there); the PR adds only those files, no YAML: the models count as
    # changed ("config was invalid at base"), not as unchanged because their YAML is the same
    lm = example_repo / "models/stdlib-lm/data.yaml"
    lm.write_text(lm.read_text().replace("tokenizer: {name: byte}",
                                         "tokenizer: {name: file, path: tok/vocab.json, sha256: '" + "0" * 64 + "'}"))
    listed = example_repo / "models/shapes-cnn/images.sha256"
    text = listed.read_text()
    listed.unlink()
    git(example_repo, "add", "-A")
    git(example_repo, "commit", "-q", "-m", "forgot the list and the tokenizer")
    base = git(example_repo, "rev-parse", "HEAD")
    listed.write_text(text)
    (example_repo / "tok").mkdir()
    (example_repo / "tok/vocab.json").write_text("{}")
    head = commit_all(example_repo, "add them")
    reasons = {c["model"]: c["reason"] for c in _plan(example_repo, base, head)["train"]}
    assert reasons == {"shapes-cnn": "config was invalid at base", "stdlib-lm": "config was invalid at base"}


def test_release_yaml_only_is_release_only(example_repo):
    base = git(example_repo, "rev-parse", "HEAD")
    edit(example_repo, "models/wine-mlp/release.yaml", "min: 0.85", "min: 0.8")
    head = commit_all(example_repo, "gate")
    doc = _plan(example_repo, base, head)
    assert doc["train"] == []
    assert _names(doc, "release_only") == ["wine-mlp"]


def test_new_and_deleted_models(example_repo):
    base = git(example_repo, "rev-parse", "HEAD")
    git(example_repo, "mv", "models/wine-mlp", "models/wine-mlp2")
    head = commit_all(example_repo, "rename")
    doc = _plan(example_repo, base, head)
    assert [(c["model"], c["reason"]) for c in doc["train"]] == [("wine-mlp2", "new model")]
    assert _names(doc, "deleted") == ["wine-mlp"]


def test_invalid_config_at_head_exits_1_with_problems(example_repo):
    base = git(example_repo, "rev-parse", "HEAD")
    edit(example_repo, "models/wine-mlp/train.yaml", "batch_size: 32", "batch_size: -3")
    head = commit_all(example_repo, "bad")
    with pytest.raises(ConfigError, match="batch_size"):
        plan.plan(example_repo, base, head)
    os.chdir(example_repo)
    result = CliRunner().invoke(app, ["ci", "plan", "--base", base, "--head", head])
    assert result.exit_code == 1
    assert "models/wine-mlp/train.yaml" in result.output


def test_github_output_and_cli(example_repo, tmp_path, monkeypatch):
    base = git(example_repo, "rev-parse", "HEAD")
    edit(example_repo, "models/wine-mlp/train.yaml", "batch_size: 32", "batch_size: 16")
    head = commit_all(example_repo, "bs")
    out_file = tmp_path / "gh-output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out_file))
    monkeypatch.chdir(example_repo)
    result = CliRunner().invoke(app, ["ci", "plan", "--base", base, "--head", head, "--github-output"])
    assert result.exit_code == 0, result.output
    assert _names(json.loads(result.stdout), "train") == ["wine-mlp"]
    lines = out_file.read_text().splitlines()
    matrix = json.loads(lines[0].removeprefix("matrix="))
    assert matrix["include"][0]["model"] == "wine-mlp"
    assert lines[1] == "has_train=true"


def test_shallow_clone_fetches_missing_sha(example_repo, tmp_path):
    base = git(example_repo, "rev-parse", "HEAD")
    edit(example_repo, "models/wine-mlp/train.yaml", "batch_size: 32", "batch_size: 16")
    head = commit_all(example_repo, "bs")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{example_repo}", str(clone))
    assert git(clone, "cat-file", "-t", base, check=False) == ""  # not in the shallow clone
    doc = _plan(clone, base, head)  # fetched once with --depth=1
    assert _names(doc, "train") == ["wine-mlp"]
    with pytest.raises(UsageError, match="0123456789abcdef0123456789abcdef01234567"):
        plan.plan(clone, "0123456789abcdef0123456789abcdef01234567", head)


def test_diff_shows_changed_keys_against_the_working_tree(example_repo, monkeypatch):
    git(example_repo, "switch", "-q", "-c", "feature")
    edit(example_repo, "models/wine-mlp/model.yaml", "hidden_sizes: [32]", "hidden_sizes: [64]")
    monkeypatch.chdir(example_repo)
    result = CliRunner().invoke(app, ["diff"])
    assert result.exit_code == 0, result.output
    assert "wine-mlp (train: own files changed: model.yaml)" in result.stdout
    assert "model.hidden_sizes: [32] -> [64]" in result.stdout


def test_ci_plan_does_not_import_jax(example_repo):
    base = git(example_repo, "rev-parse", "HEAD")
    edit(example_repo, "models/wine-mlp/train.yaml", "batch_size: 32", "batch_size: 16")
    head = commit_all(example_repo, "bs")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gitops.cli", "ci", "plan", "--base", base, "--head", head],
        cwd=example_repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"jax", "jaxlib", "flax", "optax", "orbax"}
    assert json.loads(proc.stdout)["train"][0]["model"] == "wine-mlp"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gitops.cli", "diff", "--base", base, "--head", head],
        cwd=example_repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and "batch_size" in proc.stdout, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"jax", "jaxlib", "flax", "optax", "orbax"}
