"""Checkpoints: retention keeps the best and the last K, SIGKILL + --resume is bit-identical, plain Orbax reads them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_retention_keeps_best_and_last(tmp_path: Path) -> None:
    import jax.numpy as jnp

    from gitops.checkpoint import Checkpoints

    ckpt = Checkpoints(tmp_path / "ckpt", keep=2, best_metric="val/accuracy", higher_is_better=True)
    accuracies = {10: 0.5, 20: 0.9, 30: 0.7, 40: None, 50: 0.8, 60: 0.6}
    for step, acc in accuracies.items():
        metrics = {} if acc is None else {"val/accuracy": acc}
        ckpt.save(step, {"w": jnp.full((3,), step, jnp.float32)}, {"step": step, "metrics": metrics}, metrics)
    ckpt.wait()
    assert ckpt.steps() == [20, 50, 60]
    assert ckpt.best_step() == 20
    restored = ckpt.restore_state(20, {"w": jnp.zeros((3,), jnp.float32)})
    assert np.array_equal(restored["w"], np.full((3,), 20, np.float32))
    ckpt.close()

    lower = Checkpoints(tmp_path / "ckpt2", keep=1, best_metric="val/loss", higher_is_better=False)
    for step, loss in {1: 0.3, 2: 0.1, 3: 0.2, 4: 0.1, 5: 0.4}.items():
        lower.save(step, {"w": jnp.zeros(2)}, {"metrics": {"val/loss": loss}}, {"val/loss": loss})
    assert lower.best_step() == 4  # ties go to the later step
    assert lower.steps() == [4, 5]
    lower.close()


PLAIN_RESTORE = """
import sys, json
import orbax.checkpoint as ocp
tree = ocp.StandardCheckpointer().restore(sys.argv[1])
assert not any(m.startswith("gitops") for m in sys.modules), "gitops was imported"
def shapes(t):
    return {k: shapes(v) for k, v in t.items()} if isinstance(t, dict) else list(t.shape)
print(json.dumps(shapes(tree)))
"""


def test_handed_on_checkpoint_restores_with_plain_orbax(trained_examples: dict[str, Path]) -> None:
    import json

    from gitops.runs import RunFolder

    run = RunFolder(trained_examples["digits-mlp"])
    state_dir = run.checkpoints_dir / str(run.checkpoint_step) / "state"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", PLAIN_RESTORE, str(state_dir)], capture_output=True, text=True,
                          env=env, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    shapes = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(shapes) == {"model", "optimizer"}
    assert shapes["model"]["head"]["kernel"] == [64, 10]
    assert shapes["model"]["hidden"]["0"]["kernel"] == [64, 128]


def _gitops(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "1"}
    return subprocess.Popen([sys.executable, "-m", "gitops.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_is_bit_identical(example_repo: Path, tmp_path: Path) -> None:
    from gitops import config, train
    from gitops.checkpoint import restore_plain

    overrides = ["train.steps=3000", "train.checkpoint.every_steps=100", "train.eval_every=500", "train.log_every=50"]
    sets = [a for o in overrides for a in ("--set", o)]
    cfg = config.load("digits-mlp", example_repo, overrides)
    run_dir = example_repo / "runs" / "digits-mlp" / cfg.short_fingerprint
    ckpt_dir = run_dir / "checkpoints"

    proc = _gitops(["train", "digits-mlp", *sets], example_repo)
    deadline = time.monotonic() + 90
    committed: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir():
            committed = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
            if committed:
                break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed

    resumed = _gitops(["train", "digits-mlp", *sets, "--resume"], example_repo)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resuming from step" in err and "resuming from step 0" not in err

    reference = tmp_path / "reference"
    train.train_and_evaluate(cfg, reference, root=example_repo)
    a = restore_plain(ckpt_dir / "3000")
    b = restore_plain(reference / "checkpoints" / "3000")
    from test_train import _flatten

    fa, fb = _flatten(a), _flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert np.array_equal(fa[key], fb[key]), key
