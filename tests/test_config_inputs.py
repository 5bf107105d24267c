"""Config inputs read the way users mean them (issue 14, faults 1, 2, 4 and 10).

`--set` values keep a `#` as typed; a child switching a selector (optimizer, schedule, dataset,
architecture) replaces the parent's mapping; non-finite numbers are positioned errors; symbolic
links under models/ are refused by validate, show, train and ci plan alike.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import git, make_example_repo
from typer.testing import CliRunner

from gitops import config
from gitops.cli import app
from gitops.errors import ConfigError
from gitops.repo.tree import FsTree, GitTree

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return runner.invoke(app, list(args))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- fault 1: --set values --------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("see #12 for details", "see #12 for details"),
    ("#1 model", "#1 model"),
    ("a#b # c", "a#b # c"),
])
def test_set_keeps_hash_as_typed(repo: Path, value: str, expected: str) -> None:
    result = invoke("show", "digits-mlp", "--set", f"release.description={value}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["release"]["description"] == expected


def test_set_flow_list_with_hash_still_parses(repo: Path) -> None:
    result = invoke("show", "digits-mlp", "--set", "release.owners=[a #1, '@b']", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["release"]["owners"] == ["a #1", "@b"]


def test_set_value_yaml_cannot_read_says_how_to_quote(repo: Path) -> None:
    result = invoke("show", "digits-mlp", "--set", "release.description=@ml-team owns this", "--json")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "--set release.description:1:1:" in result.output
    suggested = shlex.split(result.output.split("quote it: --set ", 1)[1].strip())[0]
    again = invoke("show", "digits-mlp", "--set", suggested, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["config"]["release"]["description"] == "@ml-team owns this"


# --- fault 2: selectors in extends --------------------------------------------------------------

PARENT_TRAIN = """\
seed: 0
batch_size: 32
steps: 100
optimizer:
  name: adamw
  learning_rate: 1e-3
  weight_decay: 1e-4
  b1: 0.8
schedule:
  name: cosine
  warmup_steps: 10
  end_scale: 0.1
"""


@pytest.fixture
def family(repo: Path) -> Path:
    """models/parent (adamw with b1: 0.8, cosine) and models/child extending every file of it."""
    shutil.copytree(repo / "models" / "digits-mlp", repo / "models" / "parent")
    write(repo / "models" / "parent" / "train.yaml", PARENT_TRAIN)
    for kind in ("model", "data", "release"):
        write(repo / "models" / "child" / f"{kind}.yaml", "extends: ../parent\n")
    return repo


def child(repo: Path, train: str, **files: str):
    write(repo / "models" / "child" / "train.yaml", "extends: ../parent\n" + train)
    for kind, text in files.items():
        write(repo / "models" / "child" / f"{kind}.yaml", "extends: ../parent\n" + text)
    return config.resolve("child", FsTree(repo))


def test_child_switching_optimizer_replaces_the_parents_mapping(family: Path) -> None:
    cfg, problems = child(family, "optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}\n")
    assert problems == []
    assert dict(cfg.train.optimizer) == {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    # the same config written out in full, without extends, is the same training
    shutil.copytree(family / "models" / "parent", family / "models" / "alone")
    write(family / "models" / "alone" / "train.yaml",
          PARENT_TRAIN.split("optimizer:")[0] + "optimizer: {name: sgd, learning_rate: 0.1, momentum: 0.9}\n"
          "schedule: {name: cosine, warmup_steps: 10, end_scale: 0.1}\n")
    assert config.load("alone", family).training_fingerprint == cfg.training_fingerprint


@pytest.mark.parametrize("extra", ["", "  b1: null\n"])
def test_child_switch_errors_point_at_the_child(family: Path, extra: str) -> None:
    _, problems = child(family, "optimizer:\n  name: sgd\n  momentum: 0.9\n" + extra)
    child_file = str(family / "models" / "child" / "train.yaml")
    assert problems and all(os.path.abspath(p.file) == child_file for p in problems), problems
    messages = " | ".join(p.message for p in problems)
    assert "learning_rate" in messages
    assert ("b1" in messages) == bool(extra)
    # the parent validates alone, and no problem names it
    assert config.resolve("parent", FsTree(family))[1] == []


def test_same_or_absent_selector_deep_merges(family: Path) -> None:
    cfg, problems = child(family, "optimizer: {name: adamw, learning_rate: 0.01}\n")
    assert problems == [] and cfg.train.optimizer["b1"] == 0.8 and cfg.train.optimizer["learning_rate"] == 0.01
    cfg, problems = child(family, "optimizer: {learning_rate: 0.02}\nschedule: {warmup_steps: 5}\n")
    assert problems == [] and cfg.train.optimizer["b1"] == 0.8
    assert dict(cfg.train.schedule) == {"name": "cosine", "warmup_steps": 5, "end_scale": 0.1}


def test_child_switching_schedule_dataset_and_architecture(family: Path) -> None:
    cfg, problems = child(family, "schedule: {name: constant}\n", model="architecture: cnn\nchannels: [4]\n")
    assert problems == []
    assert dict(cfg.train.schedule) == {"name": "constant", "warmup_steps": 0}
    assert cfg.model.architecture == "cnn" and "hidden_sizes" not in cfg.model.params
    assert list(cfg.model.params["channels"]) == [4]
    parent_data = (family / "models" / "parent" / "data.yaml").read_text()
    write(family / "models" / "parent" / "data.yaml",
          parent_data.replace("name: digits", "name: blobs\n  n_samples: 300\n  centers: 2"))
    cfg, problems = child(family, "", model="", data="dataset: {name: moons}\n", release="labels: [a, b]\n")
    assert problems == []
    assert dict(cfg.data.dataset) == {"name": "moons", "n_samples": 1000, "noise": 0.1}


def test_grandchild_merges_into_the_switched_mapping(family: Path) -> None:
    child(family, "optimizer: {name: sgd, learning_rate: 0.1}\n")
    for kind in ("model", "data", "release"):
        write(family / "models" / "grandchild" / f"{kind}.yaml", "extends: ../child\n")
    write(family / "models" / "grandchild" / "train.yaml", "extends: ../child\noptimizer: {momentum: 0.5}\n")
    cfg = config.load("grandchild", family)
    assert dict(cfg.train.optimizer) == {"name": "sgd", "learning_rate": 0.1, "momentum": 0.5, "nesterov": False, "weight_decay": 0.0}


@pytest.mark.parametrize("order", [0, 1])
def test_set_switching_a_selector_starts_afresh_in_any_order(family: Path, order: int) -> None:
    sets = ["train.optimizer.name=sgd", "train.optimizer.learning_rate=0.1"]
    cfg = config.load("parent", family, sets if order == 0 else sets[::-1])
    assert dict(cfg.train.optimizer) == {"name": "sgd", "learning_rate": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    with pytest.raises(ConfigError) as info:
        config.load("parent", family, ["train.optimizer.name=sgd"])
    assert [p.file for p in info.value.problems] == ["--set"]


def _plain_merge(base, override):
    """The merge before selectors existed: mappings merge, everything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _plain_merge(base[k], v) if k in base else v for k, v in override.items()}}
    return override


def test_shipped_children_keep_their_fingerprints(tmp_path: Path) -> None:
    """No shipped child switches a selector: written out in full with the old merge, each resolves to
    the same fingerprints as through `extends` today."""
    from gitops.config.yamlio import dump_yaml, load_yaml_text

    children = sorted({p.parent.name for p in (REPO / "models").glob("*/*.yaml") if "extends:" in p.read_text()})
    assert children  # digits-mlp-wide at least
    shutil.copytree(REPO / "models", tmp_path / "models")
    for name in children:
        for kind in config.FILE_KINDS:
            chain, rel = [], f"{name}"
            while (REPO / "models" / rel / f"{kind}.yaml").is_file():
                doc = load_yaml_text((REPO / "models" / rel / f"{kind}.yaml").read_bytes()).data
                chain.append(doc)
                if "extends" not in doc:
                    break
                rel = doc["extends"][3:]
            merged: dict = {}
            for doc in reversed(chain):
                merged = _plain_merge(merged, doc)
            merged.pop("extends", None)
            write(tmp_path / "models" / f"{name}-flat" / f"{kind}.yaml", dump_yaml(merged))
        ours, flat = config.load(name, REPO), config.load(f"{name}-flat", tmp_path)
        assert (ours.training_fingerprint, ours.release_fingerprint) == (flat.training_fingerprint,
                                                                         flat.release_fingerprint), name


# --- fault 4: non-finite numbers ------------------------------------------------------------------


@pytest.mark.parametrize("text", [".inf", ".nan", "-.Inf", "1e400"])
def test_non_finite_number_in_a_file_is_a_positioned_error(repo: Path, text: str) -> None:
    path = repo / "models" / "digits-mlp" / "train.yaml"
    path.write_text(path.read_text().replace("grad_clip_norm: 1.0", f"grad_clip_norm: {text}"))
    line = path.read_text().splitlines().index(f"grad_clip_norm: {text}") + 1
    result = invoke("validate")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"models/digits-mlp/train.yaml:{line}:17: grad_clip_norm: " in result.output
    result = invoke("show", "digits-mlp")
    assert result.exit_code == 1 and "Traceback" not in result.output and text in result.output


@pytest.mark.parametrize("text", [".inf", ".NaN", "1e999"])
def test_non_finite_number_via_set_is_an_error(repo: Path, text: str) -> None:
    for command in (("show", "digits-mlp"), ("train", "digits-mlp", "--dry-run")):
        result = invoke(*command, "--set", f"train.grad_clip_norm={text}")
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and "--set train.grad_clip_norm:1:1:" in result.output


def test_non_finite_number_in_settings_is_a_positioned_error(repo: Path) -> None:
    write(repo / "gitops.yaml", "budgets:\n  max_gpu_hours: .inf\n")
    result = invoke("validate")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "gitops.yaml:2:18: budgets.max_gpu_hours: non-finite number" in result.output


# --- fault 10: symbolic links ---------------------------------------------------------------------

LINK_MESSAGE = "is a symbolic link"


def test_linked_file_to_outside_is_refused_everywhere(repo: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "model.yaml"
    outside.write_text("architecture: mlp\nsecret_value: 12345\n")
    target = repo / "models" / "wine-mlp" / "model.yaml"
    target.unlink()
    target.symlink_to(outside)
    for command in (("validate",), ("validate", "--annotations"), ("show", "wine-mlp"), ("validate", "models/wine-mlp"),
                    ("train", "wine-mlp", "--dry-run")):
        result = invoke(*command)
        assert result.exit_code == 1, (command, result.output)
        assert f"models/wine-mlp/model.yaml:1:1: {LINK_MESSAGE}" in result.output, (command, result.output)
        assert "12345" not in result.output and "Traceback" not in result.output


def test_linked_model_folder_and_linked_models_dir_are_refused(repo: Path) -> None:
    (repo / "models" / "alias").symlink_to("digits-mlp")
    result = invoke("validate")
    assert result.exit_code == 1 and f"models/alias:1:1: {LINK_MESSAGE}" in result.output
    for command in (("show", "alias"), ("show", "models/alias"), ("new", "copy", "--from", "alias")):
        result = invoke(*command)
        assert result.exit_code == 1 and LINK_MESSAGE in result.output, (command, result.output)
    assert not (repo / "models" / "copy").exists()
    # a link inside the repository but under models/ (here: one file of a model) is refused too
    (repo / "models" / "alias").unlink()
    data = repo / "models" / "wine-mlp" / "data.yaml"
    data.unlink()
    data.symlink_to("../digits-mlp/data.yaml")
    assert LINK_MESSAGE in invoke("validate").output
    shutil.move(repo / "models", repo / "real-models")
    (repo / "models").symlink_to("real-models")
    result = invoke("validate")
    assert result.exit_code == 1 and f"models:1:1: {LINK_MESSAGE}" in result.output


def test_fs_tree_refuses_paths_leading_out_of_the_repository(repo: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "x.npz").write_bytes(b"data")
    (repo / "data").mkdir()
    (repo / "data" / "x.npz").symlink_to(outside / "x.npz")
    (repo / "data" / "inside.npz").symlink_to("../schemas/model.schema.json")
    tree = FsTree(repo)
    with pytest.raises(ConfigError, match="outside the repository"):
        tree.read("data/x.npz")
    assert tree.read("data/inside.npz") == (repo / "schemas" / "model.schema.json").read_bytes()


def test_ci_plan_refuses_a_committed_link_like_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_example_repo(tmp_path / "repo")
    monkeypatch.chdir(root)
    target = root / "models" / "wine-mlp" / "model.yaml"
    target.unlink()
    target.symlink_to("../digits-mlp/model.yaml")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "link")
    _, git_problems = config.resolve("wine-mlp", GitTree(root, "HEAD"))
    _, fs_problems = config.resolve("wine-mlp", FsTree(root))
    assert [p.message for p in git_problems] == [p.message for p in fs_problems]
    assert LINK_MESSAGE in git_problems[0].message and git_problems[0].file.endswith("models/wine-mlp/model.yaml")
    result = invoke("ci", "plan", "--base", "HEAD~1", "--head", "HEAD")
    assert result.exit_code == 1 and LINK_MESSAGE in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", [("doctor", "--min-free-gib", "nan"), ("site", "--interval", "inf"),
                                     ("serve", "digits-mlp", "--poll-seconds", "inf"),
                                     ("serve", "digits-mlp", "--max-wait-ms", "nan")])
def test_non_finite_number_options_are_usage_errors(repo: Path, command: tuple[str, ...]) -> None:
    result = invoke(*command)
    assert result.exit_code == 2 and f"Invalid value for '{command[-2]}'" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_non_finite_github_settings_are_usage_errors(value: str) -> None:
    from gitops.backends.github import GitHubBackend
    from gitops.errors import UsageError

    env = {"GITHUB_TOKEN": "t", "GITHUB_REPOSITORY": "o/r", "GITOPS_GITHUB_RETRIES": value}
    with pytest.raises(UsageError, match="GITOPS_GITHUB_RETRIES must be a finite number"):
        GitHubBackend.from_env(env)


@pytest.mark.parametrize("path", ["../outside.npz", "data/../../outside.npz", "/etc/hostname", "data/link.npz"])
def test_file_dataset_outside_the_repository_is_refused(repo: Path, tmp_path_factory, path: str) -> None:
    outside = tmp_path_factory.mktemp("outside") / "x.npz"
    outside.write_bytes(b"not read")
    (repo / "data").mkdir()
    (repo / "data" / "link.npz").symlink_to(outside)
    write(repo / "models" / "wine-mlp" / "data.yaml",
          f"dataset:\n  name: file\n  path: {path}\n  sha256: {'a' * 64}\n  task: classification\n")
    _, problems = config.resolve("wine-mlp", FsTree(repo))
    assert [p.path for p in problems] == ["data.dataset.path"], problems
    assert "outside the repository" in problems[0].message


def test_linked_sweep_file_is_refused(repo: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "sweep.yaml"
    outside.write_text((REPO / "models" / "digits-mlp" / "sweep.yaml").read_text())
    (repo / "models" / "digits-mlp" / "sweep.yaml").unlink()
    (repo / "models" / "digits-mlp" / "sweep.yaml").symlink_to(outside)
    result = invoke("validate")
    assert result.exit_code == 1 and f"models/digits-mlp/sweep.yaml:1:1: {LINK_MESSAGE}" in result.output


def test_training_reads_no_pinned_file_outside_the_repository(tmp_path: Path, tmp_path_factory) -> None:
    from gitops.config import catalog
    from gitops.errors import TrainingError
    from gitops.learn import text_data, tokenize

    outside = tmp_path_factory.mktemp("outside")
    (outside / "x.npz").write_bytes(b"secret")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.npz").symlink_to(outside / "x.npz")
    pin = {"sha256": "a" * 64}
    with pytest.raises(TrainingError, match="outside the repository"):
        catalog.DATASETS.get("file")({"path": "data/x.npz", **pin}, tmp_path)
    with pytest.raises(TrainingError, match="outside the repository"):
        text_data.load({"dataset": {"name": "text", "path": "../" + outside.name + "/x.npz", "sequence_length": 8, **pin},
                        "splits": {"validation": 0.1, "test": 0.1, "seed": 0}}, tmp_path)
    with pytest.raises(TrainingError, match="outside the repository"):
        tokenize.from_config({"name": "file", "path": str(outside / "x.npz"), **pin}, tmp_path)
