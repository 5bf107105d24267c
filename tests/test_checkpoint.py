"""Checkpoints: retention keeps the best and the last K, SIGKILL + --resume is bit-identical, plain Orbax reads them."""

from __future__ import annotations

import json
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

    from gitops.learn.checkpoint import Checkpoints

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


def test_save_returns_before_writing_and_keeps_the_arrays_of_its_step(tmp_path: Path) -> None:
    """The training loop donates (overwrites) its state right after save() returns: the checkpoint still holds
    the values at the saved step, for device arrays and host arrays alike; a save that fails in the save
    thread raises in the training thread (at wait)."""
    import jax
    import jax.numpy as jnp

    from gitops.learn.checkpoint import Checkpoints

    step_fn = jax.jit(lambda w: w * 2 + 1, donate_argnums=0)
    ckpt = Checkpoints(tmp_path / "ckpt", keep=3)
    w = jnp.arange(1 << 16, dtype=jnp.float32)
    host = np.arange(5, dtype=np.int32)
    expected = {}
    for step in (1, 2, 3):
        expected[step] = (np.asarray(w).copy(), host.copy())
        ckpt.save(step, {"w": w, "host": host}, {"step": step})
        w = step_fn(w)  # the saved buffer is donated: reused for the next state
        host += 100
    for step, (w_then, host_then) in expected.items():
        restored = ckpt.restore_state(step, {"w": w, "host": host})
        assert np.array_equal(restored["w"], w_then), step
        assert np.array_equal(restored["host"], host_then), step
    ckpt.save(4, {"w": object()}, {"step": 4})  # Orbax has no handler for it
    with pytest.raises(Exception, match="(?i)type|handler"):
        ckpt.wait()
    ckpt.close()


def _readme_restore_snippet() -> str:
    """The README's plain-Orbax restore, verbatim (the block that calls `StandardCheckpointer().restore`)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    return next(b for b in blocks if "StandardCheckpointer().restore" in b)


PLAIN_RESTORE_CHECKS = """
assert not any(m.startswith("gitops") for m in sys.modules), "gitops was imported"
def shapes(t):
    return {k: shapes(v) for k, v in t.items()} if isinstance(t, dict) else list(t.shape)
print(json.dumps(shapes(tree)))
"""


def test_handed_on_checkpoint_restores_with_plain_orbax(trained_examples: dict[str, Path]) -> None:
    # the README's script as a user runs it, on the relative run path `gitops train` printed
    import json

    from gitops.registry.runs import RunFolder

    run = RunFolder(trained_examples["digits-mlp"])
    cwd = run.path.parents[2]  # the folder holding runs/
    script = _readme_restore_snippet() + PLAIN_RESTORE_CHECKS
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script, str(run.path.relative_to(cwd))], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    shapes = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(shapes) == {"model", "optimizer"}
    assert shapes["model"]["head"]["kernel"] == [64, 10]
    assert shapes["model"]["hidden"]["0"]["kernel"] == [64, 128]


def _gitops(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "1"}
    return subprocess.Popen([sys.executable, "-m", "gitops.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _largest_data_file(state_dir: Path) -> Path:
    """The biggest file of a `state` item: an OCDBT data file (or, in a zarr-per-array checkpoint, a chunk)."""
    return max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_one_before_restores(tmp_path: Path, cut: str) -> None:
    """A data file of the newest step cut to 0 bytes or to half (a disk that filled up, a copy cut short):
    `restore_latest` names the file in one line, moves the step to checkpoints.damaged/ and hands back
    the step before, with its values; the next save of that step number does not collide."""
    import jax.numpy as jnp

    from gitops.learn.checkpoint import Checkpoints

    rng = np.random.default_rng(0)
    states = {step: {"model": {"w": jnp.asarray(rng.random((512, 1024), dtype=np.float32))}} for step in (1, 2)}
    ckpt = Checkpoints(tmp_path / "checkpoints", keep=3)
    for step, state in states.items():
        ckpt.save(step, state, {"step": step})
    ckpt.wait()
    damaged = _largest_data_file(tmp_path / "checkpoints" / "2" / "state")
    assert damaged.stat().st_size >= 512 * 1024 * 4  # the array's bytes are in it
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2] if cut == "half" else b"")
    notes: list[str] = []
    step, state, meta = ckpt.restore_latest(states[1], notes.append)
    assert (step, meta["step"]) == (1, 1)
    assert np.array_equal(np.asarray(state["model"]["w"]), np.asarray(states[1]["model"]["w"]))
    assert len(notes) == 1 and "checkpoint 2 is damaged" in notes[0], notes
    # an empty file is named; a cut OCDBT data file by the array whose read failed
    assert (damaged.name if cut == "empty" else "array model.w") in notes[0], notes
    assert "TensorStore(" not in notes[0], notes  # one line of tensorstore's message, not Orbax's wrapper
    assert (tmp_path / "checkpoints.damaged" / "2").is_dir() and ckpt.steps() == [1]
    ckpt.save(2, states[2], {"step": 2})
    assert ckpt.steps() == [1, 2]
    ckpt.close()


def test_sigkill_damaged_checkpoint_then_train_again_is_bit_identical(example_repo: Path, resume_reference: Path) -> None:
    """SIGKILL mid-run, the newest checkpoint then damaged (an array file truncated to 0 bytes), then plain
    `gitops train` (no --resume): the unfinished run is resumed, not deleted; the damaged step is moved out
    with one line naming it; the result equals the uninterrupted run (best step, metrics, params)."""
    from conftest import RESUME_OVERRIDES, assert_same_run

    from gitops import config

    sets = [a for o in RESUME_OVERRIDES for a in ("--set", o)]
    cfg = config.load("digits-mlp", example_repo, RESUME_OVERRIDES)
    run_dir = example_repo / "runs" / "digits-mlp" / cfg.short_fingerprint
    ckpt_dir = run_dir / "checkpoints"

    proc = _gitops(["train", "digits-mlp", *sets], example_repo)
    deadline = time.monotonic() + 120
    committed: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir():
            committed = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
            if committed and max(committed) >= 900:  # past the best (500) and two more saves
                break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    latest = steps[-1]
    damaged = _largest_data_file(ckpt_dir / str(latest) / "state")
    damaged.write_bytes(b"")

    again = _gitops(["train", "digits-mlp", *sets], example_repo)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert "Traceback" not in err
    assert "resuming the unfinished run" in err
    lines = [line for line in err.splitlines() if f"checkpoint {latest} is damaged" in line]
    assert len(lines) == 1 and damaged.name in lines[0], err
    assert (run_dir / "checkpoints.damaged" / str(latest)).is_dir()
    assert f"resuming from step {steps[-2]}" in err
    assert_same_run(run_dir, resume_reference)


FOUR_DEVICES = """
import sys
from pathlib import Path
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gitops.learn.checkpoint import Checkpoints
devices = jax.devices()
assert len(devices) == 4, devices
mesh = Mesh(np.array(devices), ("data",))
state = {"on_cpu3": jax.device_put(np.arange(6, dtype=np.float32), devices[3]),
         "replicated": jax.device_put(np.ones((4, 2), np.float32), NamedSharding(mesh, P())),
         "split": jax.device_put(np.arange(8, dtype=np.float32).reshape(4, 2), NamedSharding(mesh, P("data")))}
checkpoints = Checkpoints(Path(sys.argv[1]), keep=1)
checkpoints.save(1, state, {"step": 1})
checkpoints.close()
"""


def _bind_to_cuda(state_dir: Path) -> None:
    """Rewrite a `state` item as it was saved on one GPU before this fix: jax arrays whose recorded
    sharding is `cuda:0`."""
    import shutil

    import jax
    import orbax.checkpoint as ocp

    from gitops.learn.checkpoint import restore_anywhere

    tree = jax.tree.map(jax.numpy.asarray, restore_anywhere(state_dir))  # jax arrays on cpu:0
    shutil.rmtree(state_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(state_dir, tree)
    sharding = state_dir / "_sharding"
    entries = {name: json.loads(value) for name, value in json.loads(sharding.read_text()).items()}
    assert entries and all(e["sharding_type"] == "SingleDeviceSharding" for e in entries.values())
    for entry in entries.values():
        entry["device_str"] = "cuda:0"  # (this machine's name for its device is e.g. cpu:0 or TFRT_CPU_0)
    sharding.write_text(json.dumps({name: json.dumps(e) for name, e in entries.items()}))


def test_checkpoints_carry_no_device_binding(tmp_path: Path, trained_examples: dict[str, Path]) -> None:
    """Saved on 4 devices (one array on cpu:3, one replicated, one split), restored here on 1 with plain
    Orbax; a published checkpoint whose metadata says cuda:0 still loads with gitops.load."""
    import shutil

    from gitops import api
    from gitops.learn.checkpoint import restore_plain

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(tmp_path / "ck")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    step = tmp_path / "ck" / "1"
    sharding = step / "state" / "_sharding"
    assert not sharding.exists() or "cpu:" not in sharding.read_text()
    tree = restore_plain(step)  # this process has one device
    assert np.array_equal(tree["on_cpu3"], np.arange(6))
    assert np.array_equal(tree["replicated"], np.ones((4, 2)))
    assert np.array_equal(tree["split"], np.arange(8).reshape(4, 2))

    run = tmp_path / "gpu-run"
    shutil.copytree(trained_examples["digits-mlp"], run)
    manifest = json.loads((run / "manifest.json").read_text())
    state_dir = run / "checkpoints" / str(manifest["checkpoint_step"]) / "state"
    _bind_to_cuda(state_dir)
    with pytest.raises(Exception, match="(?i)topology|device|cuda"):  # the README snippet, as before the fix
        restore_plain(state_dir.parent)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    loaded, original = api.load(run), api.load(trained_examples["digits-mlp"])
    assert np.array_equal(np.asarray(loaded.predict(x)), np.asarray(original.predict(x)))
