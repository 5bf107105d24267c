"""End-to-end training: example quality, run folder, cache, --force, NaN, dry run, determinism, load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

THRESHOLDS = {"digits-mlp": 0.95, "digits-mlp-wide": 0.95, "digits-cnn": 0.97, "wine-mlp": 0.9, "shapes-cnn": 0.85,
              "tabular-mlp": 0.8}
MANIFEST_KEYS = {
    "model", "training_fingerprint", "release_fingerprint", "data_fingerprint", "git_commit", "git_dirty",
    "packages", "device_kind", "device_count", "process_count", "xla_flags", "seed", "started_at", "finished_at",
    "steps", "param_count", "checkpoint_step", "wall_time_s", "steps_per_second", "task",
}


def cli(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None):
    """Run `gitops ...` in-process (jax stays imported across calls), in `cwd`."""
    from gitops.cli import app

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CI", "1")
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_example_reaches_its_quality(trained_examples: dict[str, Path], name: str) -> None:
    from gitops.registry.runs import RunFolder

    run = RunFolder(trained_examples[name])
    assert run.metrics["test/accuracy"] >= THRESHOLDS[name], run.metrics
    manifest = run.manifest
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["finished_at"] and manifest["model"] == name
    assert set(manifest["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "python"}
    assert run.path.name == manifest["training_fingerprint"][:12] and run.path.parent.name == name
    assert (run.checkpoints_dir / str(manifest["checkpoint_step"]) / "state").is_dir()
    assert run.config_path.is_file() and run.preprocessing_path.is_file()
    history = run.history()
    assert {r["split"] for r in history} == {"train", "val"}
    assert all({"step", "epoch", "split", "loss", "time"} <= set(r) for r in history)
    assert manifest["wall_time_s"] < 120


def test_handed_on_checkpoint_is_best_by_validation(trained_examples: dict[str, Path]) -> None:
    from gitops.registry.runs import RunFolder

    run = RunFolder(trained_examples["digits-mlp"])  # best_metric: val/accuracy
    vals = run.history("val")
    best = max(r["accuracy"] for r in vals)
    chosen = [r for r in vals if r["step"] == run.checkpoint_step]
    assert chosen and chosen[0]["accuracy"] == best
    assert run.metrics["val/accuracy"] == pytest.approx(best)


def test_load_predicts_raw_inputs_like_the_test_metric(trained_examples: dict[str, Path]) -> None:
    import gitops
    from gitops.learn import data

    for name in ("digits-mlp", "wine-mlp"):
        loaded = gitops.load(str(trained_examples[name]))
        dataset = data.load(loaded.config.data, REPO)
        probs = loaded.predict(dataset.raw_test_x)
        assert probs.shape == (len(dataset.test), loaded.preprocessing.num_classes)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
        accuracy = float((probs.argmax(-1) == dataset.test.y).mean())
        assert accuracy == pytest.approx(loaded.metrics["test/accuracy"], abs=1e-6)
        assert loaded.checkpoint_step == loaded.manifest["checkpoint_step"]
        assert "head" in loaded.params


def test_cache_hit_force_and_shared_cache(example_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train", "wine-mlp", "--set", "train.epochs=10"]
    first = cli(args, example_repo, monkeypatch)
    assert first.exit_code == 0, first.output
    assert "run: " in first.stdout
    run_dir = next((example_repo / "runs" / "wine-mlp").iterdir())
    started = json.loads((run_dir / "manifest.json").read_text())["started_at"]

    again = cli(args, example_repo, monkeypatch)
    assert again.exit_code == 0 and "cache hit: " in again.stdout and str(run_dir.name) in again.stdout

    forced = cli([*args, "--force"], example_repo, monkeypatch)
    assert forced.exit_code == 0 and "run: " in forced.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["finished_at"] and manifest["started_at"] >= started
    assert [p.name for p in (example_repo / "runs" / "wine-mlp").iterdir()] == [run_dir.name]  # no leftovers

    cache = tmp_path / "shared-cache"
    env = {"GITOPS_RUN_CACHE": str(cache)}
    filled = cli([*args, "--out", "out-a", "--force"], example_repo, monkeypatch, env)
    assert filled.exit_code == 0
    assert (cache / "wine-mlp" / run_dir.name / "manifest.json").is_file()
    hit = cli([*args, "--out", "out-b"], example_repo, monkeypatch, env)
    assert hit.exit_code == 0 and "cache hit: " in hit.stdout and "GITOPS_RUN_CACHE" in hit.stdout
    assert (example_repo / "out-b" / "wine-mlp" / run_dir.name / "metrics.json").is_file()


def test_unfinished_run_is_never_deleted(example_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without checkpoints it is trained in place; another config's unfinished run is refused; --force
    moves it aside for gc."""
    from gitops import config

    cfg = config.load("wine-mlp", example_repo, ["train.epochs=10"])
    stale = example_repo / "runs" / "wine-mlp" / cfg.short_fingerprint
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps({"finished_at": None, "training_fingerprint": "f" * 64}))
    (stale / "checkpoints" / "40").mkdir(parents=True)
    args = ["train", "wine-mlp", "--set", "train.epochs=10"]
    refused = cli(args, example_repo, monkeypatch)
    assert refused.exit_code == 1 and "another config" in refused.stderr and "--force" in refused.stderr
    assert (stale / "checkpoints" / "40").is_dir()
    forced = cli([*args, "--force"], example_repo, monkeypatch)
    assert forced.exit_code == 0, forced.output
    aside = [p for p in stale.parent.iterdir() if p.name.startswith(f".{stale.name}.aside-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "40").is_dir() and "moved the unfinished run" in forced.stderr
    assert json.loads((stale / "manifest.json").read_text())["finished_at"]


def test_divergence_exits_1_naming_the_step(example_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli(["train", "digits-mlp", "--set", "train.optimizer.learning_rate=1e6"], example_repo, monkeypatch)
    assert result.exit_code == 1
    found = re.search(r"training diverged at step (\d+): (loss|gradient norm) is (nan|inf)", result.stderr)
    assert found, result.stderr
    assert "Traceback" not in result.output
    from gitops import config

    every = config.load("digits-mlp", example_repo).train.checkpoint["every_steps"]
    assert int(found.group(1)) < every  # so it failed before its first checkpoint: no run folder is left
    assert not list((example_repo / "runs").glob("digits-mlp/*")), list((example_repo / "runs").rglob("*"))


def test_dry_run_reports_and_writes_nothing(example_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    t0 = time.perf_counter()
    result = cli(["train", "digits-cnn", "--dry-run"], example_repo, monkeypatch)
    elapsed = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    assert "parameters:" in result.stdout and "FLOPs per step:" in result.stdout and "estimated run:" in result.stdout
    assert not (example_repo / "runs").exists()
    assert elapsed < 30


def test_same_seed_is_bit_identical(tmp_path: Path) -> None:
    from gitops import config
    from gitops.learn import train
    from gitops.learn.checkpoint import restore_plain

    cfg = config.load("digits-mlp", REPO, ["train.steps=120", "train.eval_every=60", "train.checkpoint.every_steps=60"])
    states = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        train.train_and_evaluate(cfg, run, root=REPO)
        states.append(restore_plain(run / "checkpoints" / "120"))
    leaves = [sorted(_flatten(s).items()) for s in states]
    assert [k for k, _ in leaves[0]] == [k for k, _ in leaves[1]]
    for (key, a), (_, b) in zip(*leaves, strict=True):
        assert np.array_equal(a, b), key


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def test_cli_module_does_not_import_jax() -> None:
    code = "import sys, gitops.cli; bad = [m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules]; print(bad)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


def test_benchmark_quick_smoke() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_overhead.py"), "--quick"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("median ratio") == 2


def test_accumulation_bfloat16_and_early_stopping(tmp_path: Path) -> None:
    from gitops import config
    from gitops.learn import train
    from gitops.registry.runs import RunFolder

    doc = config.load("wine-mlp", REPO).as_dict()
    doc["train"].update(
        gradient_accumulation=2,
        precision="bfloat16",
        eval_every=20,
        early_stopping={"metric": "val/loss", "patience": 1, "min_delta": 100.0},
    )
    cfg = config.build("wine-mlp", doc)
    metrics = train.train_and_evaluate(cfg, tmp_path / "run", root=REPO)
    run = RunFolder(tmp_path / "run")
    manifest = run.manifest
    assert manifest["stopped_early"] and manifest["steps_done"] == 40 < manifest["steps"]
    assert manifest["checkpoint_step"] in (20, 40)  # best by val/loss among the evaluated checkpoints
    assert metrics["test/accuracy"] > 0.5
