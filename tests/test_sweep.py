"""Sweeps: sweep.yaml validation with positions, expansion, `ci plan` trials and budgets, the local
runner (with successive halving), the PR report's trials table, `sweep apply`, and the release that
reuses the winning run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import git
from typer.testing import CliRunner

from gitops.cli import app
from gitops.config import sweep
from gitops.repo.tree import FsTree

HEADER = "# yaml-language-server: $schema=../../schemas/sweep.schema.json\n"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def write_sweep(repo: Path, text: str, model: str = "digits-mlp") -> Path:
    path = repo / "models" / model / "sweep.yaml"
    path.write_text(HEADER + text, encoding="utf-8")
    return path


def shrink(repo: Path) -> None:
    """digits-mlp trained in seconds: 60 steps, evaluated and checkpointed every 20."""
    path = repo / "models/digits-mlp/train.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in (("steps: 1500", "steps: 60"), ("eval_every: 250", "eval_every: 20"),
                     ("log_every: 50", "log_every: 20"), ("every_steps: 500", "every_steps: 20"),
                     ("warmup_steps: 100", "warmup_steps: 10")):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


SMALL = """method: grid
trials: 4
metric: val/accuracy
parameters:
  train.optimizer.learning_rate: {values: [1e-3, 1e-2]}
  model.hidden_sizes: {values: [[16], [32]]}
"""


def test_shipped_example_sweep_validates_and_expands_to_six_trials() -> None:
    from conftest import REPO

    spec, problems = sweep.load("digits-mlp", FsTree(REPO))
    assert problems == [] and spec is not None
    trials = spec.expand()
    assert len(trials) == 6
    assert {dict(t.values)["train.optimizer.learning_rate"] for t in trials} == {1e-3, 3e-3, 1e-2}
    # the trial equal to the committed config has the model's own fingerprint: its run is shared
    from gitops import config

    base = config.load("digits-mlp", REPO).training_fingerprint
    resolved, problems = sweep.resolve_trials(spec, FsTree(REPO))
    assert problems == [] and base in {cfg.training_fingerprint for _, cfg in resolved}


def test_expansion_grid_order_log_and_integer_ranges_and_seeded_random(tmp_path: Path) -> None:
    from gitops.repo.tree import FsTree

    (tmp_path / "models/m").mkdir(parents=True)
    write_sweep(tmp_path, """method: grid
trials: 12
parameters:
  train.optimizer.learning_rate: {min: 1e-4, max: 1e-2, scale: log, count: 3}
  train.batch_size: {min: 16, max: 128, scale: log, count: 4}
""", model="m")
    spec, problems = sweep.load("m", FsTree(tmp_path))
    assert problems == []
    assert spec.parameters[0].points() == [1e-4, 1e-3, 1e-2]
    assert spec.parameters[1].points() == [16, 32, 64, 128]
    trials = spec.expand()
    assert len(trials) == 12
    assert trials[0].values == (("train.optimizer.learning_rate", 1e-4), ("train.batch_size", 16))
    assert trials[1].values == (("train.optimizer.learning_rate", 1e-4), ("train.batch_size", 32))
    assert trials[0].overrides() == ["train.optimizer.learning_rate=0.0001", "train.batch_size=16"]

    write_sweep(tmp_path, """method: random
seed: 7
trials: 5
parameters:
  train.optimizer.learning_rate: {min: 1e-4, max: 1e-2, scale: log}
  train.batch_size: {min: 16, max: 128}
  model.activation: {values: [relu, gelu]}
""", model="m")
    first = sweep.load("m", FsTree(tmp_path))[0].expand()
    again = sweep.load("m", FsTree(tmp_path))[0].expand()
    assert first == again and len(first) == 5
    for trial in first:
        values = dict(trial.values)
        assert 1e-4 <= values["train.optimizer.learning_rate"] <= 1e-2
        assert isinstance(values["train.batch_size"], int) and 16 <= values["train.batch_size"] <= 128
        assert values["model.activation"] in ("relu", "gelu")
    (tmp_path / "models/m/sweep.yaml").write_text(
        (tmp_path / "models/m/sweep.yaml").read_text().replace("seed: 7", "seed: 8"))
    assert sweep.load("m", FsTree(tmp_path))[0].expand() != first


def test_bad_sweep_files_get_positioned_errors(example_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_repo)
    write_sweep(example_repo, """method: grid
trials: 8
metric: val/acc
parameters:
  train.optimizer.learning_rat: {values: [1e-3, 3e-3]}
  model.dropout: {values: [0.1, 1.5]}
""")
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    text = result.output
    assert "models/digits-mlp/sweep.yaml:4:9: sweep.metric:" in text and "'acc'" in text
    assert ("models/digits-mlp/sweep.yaml:6:3: sweep.parameters.train.optimizer.learning_rat: unknown key "
            "'learning_rat' (did you mean 'learning_rate'?)") in text
    assert "models/digits-mlp/sweep.yaml:7:33: sweep.parameters.model.dropout:" in text and "1.5" in text
    assert "Traceback" not in text

    write_sweep(example_repo, """trials: 3
parameters:
  train.optimizer.learning_rate: {values: [1e-3, 3e-3]}
  model.hidden_sizes: {values: [[16], [32]]}
  release.description: {values: [a]}
  train.batch_size: {min: 3}
  train.seed: {min: 5, max: 1}
""")
    text = invoke("validate").output
    assert "sweep.yaml:6:3: sweep.parameters.release.description: 'release.description' is not a key path" in text
    assert "sweep.yaml:7:21: sweep.parameters.train.batch_size: a parameter is either" in text

    write_sweep(example_repo, """trials: 3
parameters:
  train.optimizer.learning_rate: {values: [1e-3, 3e-3]}
  model.hidden_sizes: {values: [[16], [32]]}
""")
    text = invoke("validate").output
    assert "sweep.yaml:2:9: sweep.trials: the grid has 4 trials (2 x 2); the cap `trials` is 3" in text

    write_sweep(example_repo, """parameters:
  train.seed: {min: 5, max: 1}
  train.optimizer.learning_rate: {min: 0, max: 1, scale: log}
""")
    text = invoke("validate").output
    assert "sweep.yaml:3:21: sweep.parameters.train.seed: min (5) is greater than max (1)" in text
    assert "sweep.yaml:4:40: sweep.parameters.train.optimizer.learning_rate: scale: log needs min > 0" in text


def _plan(repo: Path, base: str, head: str) -> dict:
    result = invoke("ci", "plan", "--base", base, "--head", head)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ci_plan_trains_every_trial_of_a_changed_sweep_only(example_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_repo)
    base = git(example_repo, "rev-parse", "HEAD").strip()
    write_sweep(example_repo, SMALL)
    git(example_repo, "commit", "-qam", "edit the sweep")
    head = git(example_repo, "rev-parse", "HEAD").strip()
    doc = _plan(example_repo, base, head)
    assert doc["train"] == []  # a sweep never changes the model's own fingerprint
    assert [s["model"] for s in doc["sweeps"]] == ["digits-mlp"]
    entries = doc["matrix"]["include"]
    assert [e["trial"] for e in entries] == [0, 1, 2, 3]
    assert len({e["fingerprint"] for e in entries}) == 4
    assert doc["sweeps"][0]["trials"][1]["set"] == ["train.optimizer.learning_rate=0.001", "model.hidden_sizes=[32]"]

    # an edit of the model's other files trains the model alone, not the sweep again
    (example_repo / "models/digits-mlp/model.yaml").write_text(
        (example_repo / "models/digits-mlp/model.yaml").read_text().replace("dropout: 0.1", "dropout: 0.2"))
    git(example_repo, "commit", "-qam", "dropout")
    doc = _plan(example_repo, head, git(example_repo, "rev-parse", "HEAD").strip())
    assert "digits-mlp" in [c["model"] for c in doc["train"]] and doc["sweeps"] == []
    assert all("trial" not in e for e in doc["matrix"]["include"])


def test_budgets_refuse_or_sample_a_sweep(example_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_repo)
    base = git(example_repo, "rev-parse", "HEAD").strip()
    (example_repo / "gitops.yaml").write_text("budgets:\n  max_models_per_pr: 3\n", encoding="utf-8")
    write_sweep(example_repo, SMALL)
    git(example_repo, "add", "-A")
    git(example_repo, "commit", "-qm", "sweep over budget")
    head = git(example_repo, "rev-parse", "HEAD").strip()
    result = invoke("ci", "plan", "--base", base, "--head", head)
    assert result.exit_code == 1
    assert "over budget: 4 models to train; the budget allows 3 per PR" in result.output

    write_sweep(example_repo, SMALL + "over_budget: sample\nseed: 3\n")
    git(example_repo, "commit", "-qam", "sample it")
    head = git(example_repo, "rev-parse", "HEAD").strip()
    doc = _plan(example_repo, base, head)
    plan = doc["sweeps"][0]
    assert plan["sampled_from"] == 4 and len(plan["trials"]) == 3
    again = _plan(example_repo, base, head)
    assert again["sweeps"][0]["trials"] == plan["trials"]  # the sample is seeded
    assert len(doc["matrix"]["include"]) == 3


@pytest.mark.slow
def test_local_sweep_report_apply_and_release_reuse_the_winner(example_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_repo)
    shrink(example_repo)
    release_yaml = example_repo / "models/digits-mlp/release.yaml"
    release_yaml.write_text(release_yaml.read_text().replace("min: 0.95", "min: 0.5"))
    write_sweep(example_repo, SMALL)
    git(example_repo, "add", "-A")
    git(example_repo, "commit", "-qm", "small sweep")

    result = invoke("sweep", "digits-mlp", "--json")
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    assert [t["status"] for t in ranked["trials"]] == ["finished"] * 4
    values = [t["value"] for t in ranked["trials"]]
    assert values == sorted(values, reverse=True)  # val/accuracy: higher is better, best first
    winner = ranked["best_trial"]
    assert ranked["trials"][0]["trial"] == winner
    assert set(ranked["importance"]) == {"train.optimizer.learning_rate", "model.hidden_sizes"}

    again = invoke("sweep", "digits-mlp")  # resumable: every trial is a cache hit now
    assert again.exit_code == 0 and "0 to run" in again.output

    # the PR report folds the trials into one section: the ranked table and the winner's comparison
    rep = invoke("report", *[str(p) for p in sorted((example_repo / "runs/digits-mlp").iterdir())],
                 "--out", "report.md", "--json-out", "report.json")
    assert rep.exit_code in (0, 1), rep.output
    body = (example_repo / "report.md").read_text(encoding="utf-8")
    assert f"best sweep trial #{winner}" in body and body.count("### ") == 1
    assert f"gitops sweep apply digits-mlp --trial {winner} --commit" in body
    data = json.loads((example_repo / "report.json").read_text(encoding="utf-8"))
    assert data["models"][0]["sweep"]["best_trial"] == winner

    applied = invoke("sweep", "apply", "digits-mlp", "--commit")
    assert applied.exit_code == 0, applied.output
    assert "apply sweep trial" in git(example_repo, "log", "-1", "--format=%s")
    train_yaml = (example_repo / "models/digits-mlp/train.yaml").read_text(encoding="utf-8")
    assert "# yaml-language-server" in train_yaml  # comments kept
    from gitops import config

    fp = config.load("digits-mlp", example_repo).training_fingerprint
    assert fp.startswith(ranked["trials"][0]["fingerprint"])

    manifest_path = example_repo / "runs/digits-mlp" / fp[:12] / "manifest.json"
    before = manifest_path.read_text()
    released = invoke("release", "digits-mlp")
    assert released.exit_code == 0, released.output
    assert manifest_path.read_text() == before  # the winning trial's run was released, not retrained
    assert json.loads(before)["training_fingerprint"] == fp
    assert "digits-mlp@v1.0.0" in git(example_repo, "tag", "--list")


@pytest.mark.slow
def test_successive_halving_stops_losers_as_unfinished_runs(example_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_repo)
    shrink(example_repo)
    write_sweep(example_repo, SMALL)
    result = invoke("sweep", "digits-mlp", "--halving", "--out", "halved", "--json")
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    statuses = [t["status"] for t in ranked["trials"]]
    assert statuses.count("finished") == 1 and statuses.count("stopped") == 3  # 4 -> 2 -> 1
    for t in ranked["trials"]:
        manifest = json.loads((example_repo / "halved/digits-mlp" / t["fingerprint"] / "manifest.json").read_text())
        assert bool(manifest.get("finished_at")) == (t["status"] == "finished")
        if t["status"] == "stopped":
            assert "successive halving" in t["note"]
    state = json.loads((example_repo / "halved/.sweeps/digits-mlp.json").read_text())
    assert len(state["stopped"]) == 3
    # the survivor resumed across rungs and ends where an uninterrupted run of the same trial ends
    winner = ranked["trials"][0]
    straight = invoke("train", "digits-mlp", *[a for s in winner["set"] for a in ("--set", s)], "--out", "straight")
    assert straight.exit_code == 0, straight.output
    a = json.loads((example_repo / "halved/digits-mlp" / winner["fingerprint"] / "metrics.json").read_text())
    b = json.loads((example_repo / "straight/digits-mlp" / winner["fingerprint"] / "metrics.json").read_text())
    assert a == b and math.isfinite(a["test/accuracy"])
