"""`gitops validate`, `show`, `new`, `schemas` as a user runs them: messages, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import example_model_names
from typer.testing import CliRunner

from gitops.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copytree(REPO / "data", tmp_path / "data")  # pinned corpora of the examples
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return runner.invoke(app, list(args))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_validate_examples_ok(repo: Path) -> None:
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert f"{len(example_model_names())} model(s) valid" in result.output


BAD_INPUTS = {
    "syntax": ("model.yaml", "architecture: mlp\nhidden_sizes: [1, 2\n", "syntax"),
    "tabs": ("model.yaml", "architecture: mlp\nhidden_sizes:\n\t- 3\n", "syntax"),
    "duplicate": ("model.yaml", "architecture: mlp\narchitecture: cnn\n", "duplicate"),
    "unknown-key": ("model.yaml", "architecture: mlp\nwidth: 3\n", "unknown key 'width'"),
    "wrong-type": ("train.yaml", "batch_size: lots\nsteps: 10\noptimizer: {name: sgd, learning_rate: 0.1}\n", "expected an integer"),
    "missing-required": ("train.yaml", "steps: 10\noptimizer: {name: sgd, learning_rate: 0.1}\n", "missing required key 'batch_size'"),
    "out-of-range": ("model.yaml", "architecture: mlp\ndropout: 1.5\n", "dropout"),
    "python-tag": ("model.yaml", "architecture: !!python/object/apply:os.system ['true']\n", "tag"),
    "alias-bomb": (
        "model.yaml",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\narchitecture: mlp\n",
        "alias",
    ),
    "list-not-mapping": ("data.yaml", "- dataset: digits\n", "mapping"),
    "cycle": ("model.yaml", "extends: ../digits-mlp\narchitecture: mlp\n", "extends cycle"),
    "missing-target": ("model.yaml", "extends: ../nowhere\n", "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_cleanly(repo: Path, case: str) -> None:
    filename, text, fragment = BAD_INPUTS[case]
    model = "digits-mlp-wide" if case == "missing-target" else "digits-mlp"
    if case == "cycle":
        (repo / "models/digits-mlp-wide/model.yaml").write_text("extends: ../digits-mlp\n")
    (repo / "models" / model / filename).write_text(text, encoding="utf-8")
    before = snapshot(repo)
    result = invoke("validate", f"models/{model}")
    assert result.exit_code == 1, result.output
    assert f"models/{model}/{filename}:" in result.output
    assert fragment.lower() in result.output.lower()
    assert "Traceback" not in result.output
    assert snapshot(repo) == before  # nothing written


def test_invalid_utf8_is_rejected(repo: Path) -> None:
    (repo / "models/digits-mlp/release.yaml").write_bytes(b"description: caf\xe9\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "digits-mlp/release.yaml:1:" in result.output and "UTF-8" in result.output


def test_validate_json_lists_every_problem(repo: Path) -> None:
    (repo / "models/digits-mlp/model.yaml").write_text("architecture: mlp\nhiden: 1\nactivation: relux\n")
    result = invoke("validate", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    problems = doc["models"]["digits-mlp"]
    assert {p["path"] for p in problems} == {"model.hiden", "model.activation"}
    assert all({"file", "line", "col", "message"} <= set(p) for p in problems)
    assert doc["models"]["wine-mlp"] == []


def test_validate_annotations_for_github(repo: Path) -> None:
    (repo / "models/wine-mlp/train.yaml").write_text("batch_size: 1\nsteps: 3\noptimizer: {name: sgd}\n")
    result = invoke("validate", "--annotations")
    assert result.exit_code == 1
    assert "::error file=models/wine-mlp/train.yaml,line=3,col=" in result.output


def test_validate_missing_path_is_usage_error(repo: Path) -> None:
    result = invoke("validate", "models/nothing-here")
    assert result.exit_code == 2
    assert "no such model, file or folder" in result.output


def test_validate_takes_a_model_name_like_every_other_command(repo: Path) -> None:
    (repo / "models/wine-mlp/train.yaml").write_text("batch_size: 1\nsteps: 3\noptimizer: {name: sgd}\n")
    doc = json.loads(invoke("validate", "wine-mlp", "--json").stdout)
    assert list(doc["models"]) == ["wine-mlp"] and doc["models"]["wine-mlp"] and not doc["ok"]
    assert json.loads(invoke("validate", "digits-mlp", "--json").stdout) == {"ok": True, "models": {"digits-mlp": []}}
    result = invoke("validate", "wine-mpl")
    assert result.exit_code == 2 and "wine-mpl: no such model, file or folder" in result.output


def test_show_json_and_stable_fingerprint(repo: Path) -> None:
    first = json.loads(invoke("show", "digits-mlp", "--json").stdout)
    second = json.loads(invoke("show", "digits-mlp", "--json").stdout)
    assert first == second
    assert set(first) >= {"config", "training_fingerprint", "release_fingerprint"}
    assert len(first["training_fingerprint"]) == 64
    changed = json.loads(invoke("show", "digits-mlp", "--json", "--set", "train.seed=1").stdout)
    assert changed["training_fingerprint"] != first["training_fingerprint"]


def test_show_human_output(repo: Path) -> None:
    result = invoke("show", "models/digits-mlp-wide")
    assert result.exit_code == 0
    assert "training fingerprint:" in result.stdout and "hidden_sizes:" in result.stdout


def test_show_unknown_model_is_usage_error(repo: Path) -> None:
    result = invoke("show", "nope-model")
    assert result.exit_code == 2 and "no model 'nope-model'" in result.output


def test_new_scaffold_validates(repo: Path) -> None:
    result = invoke("new", "my-model")
    assert result.exit_code == 0, result.output
    assert invoke("validate", "models/my-model").exit_code == 0
    result = invoke("new", "my-copy", "--from", "digits-cnn")
    assert result.exit_code == 0
    assert invoke("show", "my-copy", "--json").exit_code == 0


@pytest.mark.parametrize("args", [("new", "Bad_Name"), ("new", "digits-mlp"), ("new", "x-y", "--from", "nope")])
def test_new_refuses_bad_requests(repo: Path, args) -> None:
    before = snapshot(repo)
    result = invoke(*args)
    assert result.exit_code == 2
    assert snapshot(repo) == before
    assert not [p for p in (repo / "models").iterdir() if p.name.startswith(".")]


def test_schemas_check(repo: Path) -> None:
    assert invoke("schemas", "--check").exit_code == 0
    (repo / "schemas/model.schema.json").write_text("{}")
    assert invoke("schemas", "--check").exit_code == 1


def _run_cli(args: list[str], cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("command", [["validate"], ["show", "digits-mlp"], ["new", "fresh-model"]])
def test_config_commands_never_import_jax(repo: Path, command: list[str]) -> None:
    proc = _run_cli(["-X", "importtime", "-m", "gitops.cli", *command], repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"jax", "jaxlib", "flax", "optax", "orbax"}, imported & {"jax", "flax", "optax", "orbax"}


def test_process_exit_codes_and_no_traceback(repo: Path) -> None:
    (repo / "models/digits-mlp/model.yaml").write_text("architecture: [\n")
    proc = _run_cli(["-m", "gitops.cli", "validate"], repo)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    proc = _run_cli(["-m", "gitops.cli", "show", "digits-mlp", "--set", "nonsense"], repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = _run_cli(["-m", "gitops.cli", "--debug", "show", "digits-mlp"], repo)
    assert proc.returncode == 1 and "Traceback" in proc.stderr  # --debug shows it
