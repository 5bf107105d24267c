"""DESIGN's "done when" story, in-process through the CLI, on a real git repository and real training.

train + release v1.0.0 -> branch, change the config -> ci plan names only that model -> train ->
report against v1.0.0 with the curve -> merge -> release v1.1.0 -> promote -> pull -> predict ->
history -> rollback to v1.0.0 -> release v1.2.0 reusing the old run (no training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from loop_support import commit_all, edit, git
from typer.testing import CliRunner

import gitops
from gitops.cli import app

pytestmark = pytest.mark.slow


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"gitops {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result.stdout


def test_done_when_story(example_repo, monkeypatch, tmp_path):
    repo = example_repo
    monkeypatch.chdir(repo)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    # baseline: train and release v1.0.0
    _ok("train", "wine-mlp")
    fp_a = json.loads(_ok("show", "wine-mlp", "--json"))["training_fingerprint"][:12]
    run_a = repo / "runs/wine-mlp" / fp_a
    assert "released wine-mlp@v1.0.0" in _ok("release", "wine-mlp")

    # a PR changes one model's config
    git(repo, "switch", "-q", "-c", "tune-wine")
    edit(repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.03")
    head = commit_all(repo, "wine-mlp: lower the learning rate")
    plan = json.loads(_ok("ci", "plan", "--base", "main", "--head", head))
    assert [c["model"] for c in plan["train"]] == ["wine-mlp"]
    assert plan["train"][0]["reason"] == "own files changed: train.yaml"
    assert plan["release_only"] == [] and plan["deleted"] == []

    _ok("train", "wine-mlp")
    fp_b = plan["train"][0]["fingerprint"]
    run_b = repo / "runs/wine-mlp" / fp_b
    assert (run_b / "manifest.json").is_file()
    _ok("report", str(run_b), "--out", "report.md", "--json-out", "report.json", "--pr", "1")
    text = (repo / "report.md").read_text()
    assert text.startswith("<!-- gitops:report -->")
    assert "Baseline: **wine-mlp@v1.0.0**" in text
    assert "```mermaid\nxychart-beta" in text and "**Training loss**" in text
    assert "`train.optimizer.learning_rate` | `0.05` | `0.03`" in text
    data = json.loads((repo / "report.json").read_text())
    assert data["head_sha"] == head and data["models"][0]["baseline"]["version"] == "v1.0.0"
    _ok("comment", "--pr", "1", "--file", "report.md", "--head-sha", head, "--report-json", "report.json")
    (repo / "report.md").unlink()
    (repo / "report.json").unlink()

    # merge, release, promote, pull, predict
    git(repo, "switch", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "tune-wine", "-m", "Merge tune-wine")
    assert "released wine-mlp@v1.1.0 (minor" in _ok("release", "wine-mlp")
    assert "nothing to release" in _ok("release", "wine-mlp")
    assert _ok("promote", "wine-mlp@v1.1.0", "--to", "production").strip() == "wine-mlp#production#1"
    pulled = Path(_ok("pull", "wine-mlp@production").strip())
    assert pulled == repo / ".gitops/pulled/wine-mlp/v1.1.0"
    assert (pulled / "MODEL_CARD.md").read_text().startswith("# wine-mlp v1.1.0")

    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    np.save(tmp_path / "x.npy", x[::10])
    out = json.loads(_ok("predict", "wine-mlp@production", "--input", str(tmp_path / "x.npy")))
    classes = [p["class"] for p in out["predictions"]]
    assert len(classes) == len(x[::10]) and np.mean(np.array(classes) == y[::10]) > 0.8
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-3 for p in out["predictions"])
    loaded = gitops.load("wine-mlp@1.1.0")
    assert loaded.predict(x[:2]).shape == (2, 3)

    history = json.loads(_ok("history", "wine-mlp", "--json"))
    assert [v["version"] for v in history["versions"]] == ["v1.0.0", "v1.1.0"]
    assert history["stages"] == {"production": "v1.1.0"}
    assert any(e["event"] == "assign" and e["stage"] == "production" for e in history["events"])

    # roll back to v1.0.0: a branch, then a release that reuses the old run
    manifest_a = run_a / "manifest.json"
    before = (manifest_a.read_bytes(), os.stat(manifest_a).st_mtime_ns)
    _ok("rollback", "wine-mlp", "--to", "v1.0.0")
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "rollback/wine-mlp-v1.0.0"
    released = json.loads(_ok("release", "wine-mlp", "--json"))
    assert released["tag"] == "wine-mlp@v1.2.0" and released["trained"] is False
    assert Path(released["run"]) == run_a
    assert (manifest_a.read_bytes(), os.stat(manifest_a).st_mtime_ns) == before
    assert "wine-mlp@v1.2.0" in git(repo, "tag", "--list", "wine-mlp@*")


def test_predict_input_formats_and_output_shape(tmp_path):
    from gitops.errors import UsageError
    from gitops.serve import predict

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", first=x, second=x * 2)
    (tmp_path / "c.json").write_text(json.dumps({"instances": x.tolist()}))
    (tmp_path / "d.json").write_text(json.dumps(x.tolist()))
    (tmp_path / "e.csv").write_text("f1,f2,f3\n0,1,2\n3,4,5\n")
    for name in ("a.npy", "b.npz", "c.json", "d.json", "e.csv"):
        np.testing.assert_array_equal(predict.read_inputs(tmp_path / name), x)
    np.testing.assert_array_equal(predict.read_inputs(tmp_path / "b.npz", key="second"), x * 2)
    with pytest.raises(UsageError, match="no array 'nope'"):
        predict.read_inputs(tmp_path / "b.npz", key="nope")
    (tmp_path / "f.txt").write_text("1")
    with pytest.raises(UsageError, match="unknown input format"):
        predict.read_inputs(tmp_path / "f.txt")
    # non-finite inputs are refused in every format, as the server refuses them (400)
    (tmp_path / "nan.json").write_text('[[0, 1, NaN]]')
    (tmp_path / "big.json").write_text('[[0, 1e400, 2]]')  # json reads inf without a NaN/Infinity literal
    (tmp_path / "inf.csv").write_text("0,1,2\n3,inf,5\n")
    np.save(tmp_path / "f64.npy", np.array([[0.0, 1e300, 2.0]]))  # finite in float64, inf in float32
    for name, index in (("nan.json", None), ("big.json", "[0, 1]"), ("inf.csv", "[1, 1]"), ("f64.npy", "[0, 1]")):
        with pytest.raises(UsageError, match="non-finite") as caught:
            predict.read_inputs(tmp_path / name)
        assert index is None or index in str(caught.value)

    class Stub:
        def predict(self, inputs):
            return np.array([[0.1, 0.9], [0.8, 0.2]])

    out = predict.predictions(Stub(), x, ["cat", "dog"], "classification")
    assert out == [{"class": 1, "label": "dog", "probabilities": [0.1, 0.9]},
                   {"class": 0, "label": "cat", "probabilities": [0.8, 0.2]}]
    assert predict.predictions(Stub(), x, [], "regression")[0] == {"value": [0.1, 0.9]}
