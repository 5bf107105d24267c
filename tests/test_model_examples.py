"""The ResNet and Transformer examples: they learn, and a released ResNet keeps its BatchNorm statistics.

Both models come from the session's `trained_examples` (trained once for the whole suite).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from gitops import config
from gitops.cli import app
from gitops.repo.tree import FsTree

NEW_EXAMPLES = {"digits-resnet": ("resnet", 0.95), "sequences-transformer": ("transformer", 0.95)}


def _train_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEW_EXAMPLES))
def test_example_learns(trained_examples, name: str) -> None:
    architecture, floor = NEW_EXAMPLES[name]
    run = trained_examples[name]
    assert config.load(name, REPO).model.architecture == architecture
    losses = _train_losses(run)
    assert len(losses) >= 4 and losses[-1] < 0.25 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/accuracy"] >= floor, metrics


@pytest.mark.slow
def test_released_resnet_restores_batch_statistics_and_predicts_the_same(trained_examples, example_repo, monkeypatch):
    import jax
    from flax import nnx

    import gitops
    from gitops import api

    run = trained_examples["digits-resnet"]
    monkeypatch.chdir(example_repo)
    runner = CliRunner()
    done = runner.invoke(app, ["release", "digits-resnet", "--run", str(run)])
    assert done.exit_code == 0, done.output
    pulled = example_repo / "pulled"
    done = runner.invoke(app, ["pull", "digits-resnet@v1.0.0", "--to", str(pulled)])
    assert done.exit_code == 0, done.output

    before = api.load(run)
    released = gitops.load("digits-resnet@v1.0.0")
    from_folder = gitops.load(str(pulled))
    stats = jax.tree.leaves(nnx.state(before.model, nnx.BatchStat))
    assert stats and any(np.abs(np.asarray(s)).max() > 0 for s in stats)  # trained running averages, not init
    for loaded in (released, from_folder):
        assert loaded.checkpoint_step == before.checkpoint_step
        for a, b in zip(stats, jax.tree.leaves(nnx.state(loaded.model, nnx.BatchStat)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    from sklearn.datasets import load_digits

    x = load_digits().data[:200]
    expected = before.predict(x)
    for loaded in (released, from_folder):
        assert np.array_equal(loaded.predict(x), expected)  # bit for bit
    accuracy = float(np.mean(expected.argmax(-1) == load_digits().target[:200]))
    assert accuracy > 0.95


def test_transformer_needs_unscaled_tokens_and_a_big_enough_vocabulary() -> None:
    tree = FsTree(REPO)
    cfg, problems = config.resolve("sequences-transformer", tree, ["data.preprocessing.scale=standardize"])
    assert cfg is None and any(p.path == "data.preprocessing.scale" and "must not be scaled" in p.message for p in problems)
    cfg, problems = config.resolve("sequences-transformer", tree, ["model.vocab_size=4"])
    assert cfg is None and any(p.path == "model.vocab_size" and "smaller than the dataset" in p.message for p in problems)
    cfg, problems = config.resolve("sequences-transformer", tree, ["model.embed_dim=30"])
    assert cfg is None and any(p.path == "model.embed_dim" for p in problems)
    cfg, problems = config.resolve("digits-resnet", tree, ["data.dataset.name=wine", "data.augmentation=[]"])
    assert cfg is None and any("needs image inputs" in p.message for p in problems)
