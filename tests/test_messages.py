"""What `validate` and the model-name commands tell a user (issue 17, faults 5 and 10).

- one pass reports every error it can find: unknown keys beside type errors, keys under a
  misspelled selector, and the semantic checks on the parts that parsed;
- every JSON Schema validator the schemas use is worded as what is expected ("must be at most 1");
- did-you-mean for enum values, selectors, metric names and model names, wherever a model is named;
- every hint a scaffolded folder carries validates when followed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from loop_support import fake_run
from typer.testing import CliRunner

from gitops import config
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.config import catalog, schema
from gitops.repo import scaffold
from gitops.repo.tree import FsTree


def _write(repo: Path, relpath: str, text: str) -> None:
    (repo / relpath).write_text(text, encoding="utf-8")


def _problems(repo: Path, model: str) -> list[str]:
    cfg, problems = config.resolve(model, FsTree(repo))
    assert cfg is None
    return [f"{p.file.rsplit('/', 1)[-1]}:{p.line}: {p.path}: {p.message}" for p in problems]


def test_validate_reports_every_error_in_one_pass(example_repo, monkeypatch):
    """The issue's three rounds, in one: schema errors, keys under a bad selector, and a semantic error."""
    monkeypatch.chdir(example_repo)
    _write(example_repo, "models/digits-mlp/model.yaml",
           "architecture: MLP\nhiden_sizes: [128, 64]\nactivation: ReLU\ndropout: 1.5\n")
    train = (example_repo / "models/digits-mlp/train.yaml").read_text()
    _write(example_repo, "models/digits-mlp/train.yaml",
           train.replace("batch_size: 64", "batch_size: lots").replace("best_metric: val/accuracy",
                                                                         "best_metric: val/acc"))
    result = CliRunner().invoke(app, ["validate", "models/digits-mlp"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == [
        "models/digits-mlp/model.yaml:1:15: model.architecture: 'MLP' is not one of: "
        f"{', '.join(sorted(catalog.ARCHITECTURES))} (did you mean 'mlp'?)",
        "models/digits-mlp/model.yaml:2:1: model.hiden_sizes: unknown key 'hiden_sizes' (did you mean "
        "'hidden_sizes'?); allowed here: activation, architecture, dropout, extends, hidden_sizes, layer_norm, "
        "schema_version",
        "models/digits-mlp/model.yaml:3:13: model.activation: 'ReLU' is not one of: relu, gelu, silu, tanh, "
        "sigmoid, elu, leaky_relu (did you mean 'relu'?)",
        "models/digits-mlp/model.yaml:4:10: model.dropout: must be less than 1, got 1.5",
        "models/digits-mlp/train.yaml:3:13: train.batch_size: expected an integer, got string 'lots'",
        "models/digits-mlp/train.yaml:18:16: train.checkpoint.best_metric: classification models produce no "
        "metric 'acc' (did you mean 'val/accuracy'?); they produce val/ + one of: accuracy, loss, top3_accuracy, "
        "top5_accuracy",
    ]
    assert "6 problem(s) in 1 of 1 model(s)" in result.stderr


def test_selector_without_a_close_name_checks_keys_against_every_branch(example_repo):
    _write(example_repo, "models/wine-mlp/model.yaml", "architecture: perceptron\nhiden_sizes: [8]\n")
    found = _problems(example_repo, "wine-mlp")
    assert any("model.architecture: 'perceptron' is not one of" in p for p in found)
    assert any("model.hiden_sizes: unknown key 'hiden_sizes' (did you mean 'hidden_sizes'?) (no architecture "
               "has it)" in p for p in found)


def test_semantic_checks_skip_what_a_schema_error_already_named(example_repo):
    """A dropped value is not reported twice: batch_size 'lots' gives no batch-size semantic error."""
    train = (example_repo / "models/wine-mlp/train.yaml").read_text()
    _write(example_repo, "models/wine-mlp/train.yaml",
           train.replace("batch_size: 32", "batch_size: lots").replace("warmup_steps: 20", "warmup_steps: 100000"))
    found = _problems(example_repo, "wine-mlp")
    assert [p.split(": ", 2)[1] for p in found] == ["train.batch_size", "train.schedule.warmup_steps"]
    assert "warm-up (100000 steps) must be shorter than the run" in found[1]


@pytest.fixture(scope="module")
def models_copy(tmp_path_factory) -> Path:
    """One copy of models/ for the message cases (each restores the file it edits)."""
    root = tmp_path_factory.mktemp("messages")
    shutil.copytree(REPO / "models", root / "models")
    return root


@pytest.mark.parametrize(("relpath", "old", "new", "path", "message"), [
    ("model.yaml", "dropout: 0.1", "dropout: 1.5", "model.dropout", "must be less than 1, got 1.5"),
    ("model.yaml", "dropout: 0.1", "dropout: -0.5", "model.dropout", "must be at least 0, got -0.5"),
    ("model.yaml", "hidden_sizes: [128, 64]", "hidden_sizes: [0]", "model.hidden_sizes[0]",
     "must be at least 1, got 0"),
    ("model.yaml", "hidden_sizes: [128, 64]", "hidden_sizes: 128", "model.hidden_sizes",
     "expected a list, got integer 128"),
    ("model.yaml", "activation: relu", "activation: Gelu", "model.activation",
     "'Gelu' is not one of: relu, gelu, silu, tanh, sigmoid, elu, leaky_relu (did you mean 'gelu'?)"),
    ("model.yaml", "dropout: 0.1", "dropout: yes", "model.dropout", "expected a number, got string 'yes'"),
    ("train.yaml", "seed: 0", "seed: 2147483648", "train.seed", "must be at most 2147483647, got 2147483648"),
    ("train.yaml", "grad_clip_norm: 1.0", "grad_clip_norm: 0", "train.grad_clip_norm", "must be greater than 0, got 0"),
    ("train.yaml", "best_metric: val/accuracy", "best_metric: accuracy", "train.checkpoint.best_metric",
     "expected a validation metric as val/<metric> (e.g. val/accuracy), got 'accuracy'"),
    ("train.yaml", "name: cosine", "name: cosin", "train.schedule.name",
     "'cosin' is not one of: constant, cosine, exponential, linear, piecewise (did you mean 'cosine'?)"),
    ("train.yaml", "name: adamw", "name: AdamW", "train.optimizer.name", "(did you mean 'adamw'?)"),
    ("release.yaml", "- metric: test/accuracy", "- metric: accuracy", "release.gates[0].metric",
     "expected a metric name as <split>/<metric> with split train, val or test (e.g. test/accuracy), "
     "got 'accuracy'"),
    ("release.yaml", "min: 0.9", "below: 0.9", "release.gates[0]",
     "a gate needs at least one of min, max, max_regression"),
])
def test_messages_say_what_is_expected(models_copy, relpath, old, new, path, message):
    file = models_copy / "models" / "digits-mlp" / relpath
    text = file.read_text()
    assert old in text, (relpath, old)
    file.write_text(text.replace(old, new, 1), encoding="utf-8")
    try:
        problems = config.resolve("digits-mlp", FsTree(models_copy))[1]
    finally:
        file.write_text(text, encoding="utf-8")
    found = [p for p in problems if p.path == path]
    assert found and message in found[0].message, [p.message for p in problems]
    assert "greater than or equal" not in found[0].message and "is not valid under" not in found[0].message


def test_no_validator_falls_back_to_jsonschema_wording():
    """Every validator keyword in our schemas has its own sentence (a new one must get one too)."""
    handled = {"additionalProperties", "required", "enum", "const", "type", "minimum", "maximum",
               "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "minLength",
               "maxLength", "minProperties", "maxProperties", "uniqueItems", "anyOf", "oneOf", "pattern", "not"}
    structural = {"$schema", "$id", "title", "description", "default", "properties", "items", "allOf", "if",
                  "then", "examples", "$ref", "$defs"}
    from gitops.config.settings import SETTINGS_SCHEMA

    used: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            used.update(k for k in node if not isinstance(node.get(k), dict) or k in ("not",))
            for key, value in node.items():
                if key == "properties":
                    for sub in value.values():
                        walk(sub)
                elif key not in ("default", "examples", "const", "enum"):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for kind in schema.KINDS:
        walk(schema.schema_for(kind))
    walk(SETTINGS_SCHEMA)
    assert used - handled - structural == set()


def test_did_you_mean_for_model_names_everywhere(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    runner = CliRunner()
    for args in (["train", "wine-mpl"], ["show", "wine-mpl"], ["train", "wine-mpl", "--dry-run"],
                 ["new", "mine", "--from", "wine-mpl"], ["validate", "models/wine-mpl"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "(did you mean 'wine-mlp'?)" in result.stderr, (args, result.stderr)
    from gitops import api

    fake_run(example_repo, "wine-mlp", {"test/accuracy": 0.95, "val/loss": 0.2})
    api.release(example_repo, LocalBackend(example_repo), "wine-mlp")
    for args in (["pull", "wine-mpl"], ["pull", "wine-mpl@v1.0.0"], ["history", "wine-mpl"],
                 ["promote", "wine-mpl@v1.0.0", "--to", "production"], ["predict", "wine-mpl@v1.0.0",
                                                                       "--input", "x.json"],
                 ["demote", "wine-mpl", "--from", "production"], ["deprecate", "wine-mpl"],
                 ["rollback", "wine-mpl", "--to", "v1.0.0"], ["release", "wine-mpl"], ["serve", "wine-mpl"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "(did you mean 'wine-mlp'?)" in result.stderr, (args, result.stderr)


def test_every_scaffold_hint_validates_when_followed(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    target = scaffold.new_model(tmp_path, "first-model")
    followed = 0
    for kind in ("model", "train", "data", "release"):
        path = target / f"{kind}.yaml"
        original = path.read_text()
        hints = scaffold.read_hints(original)
        assert len(hints) == len(scaffold.HINTS.get(kind, []))
        for what, body in hints:
            header = "".join(line + "\n" for line in original.splitlines() if line.startswith("#"))
            path.write_text(header + body, encoding="utf-8")  # the user's edit: the settings replaced
            cfg, problems = config.resolve("first-model", FsTree(tmp_path))
            assert cfg is not None, (kind, what, [str(p) for p in problems])
            followed += 1
        path.write_text(original, encoding="utf-8")
    assert followed >= 4
    assert re.search(r"For a convolutional network .*\n#   architecture: cnn", (target / "model.yaml").read_text())
