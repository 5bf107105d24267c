"""Data-parallel and multi-host training (gitops/learn/parallel.py), in subprocesses: a process's device count
is fixed when it imports jax.

- 4 forced host devices train digits-mlp with the loss curve of one device (1e-5 relative);
- a checkpoint written on 4 devices resumes on 1 device and the reverse; `gitops.load` reads it;
- two processes joined by `jax.distributed` on 127.0.0.1 train as one: one run folder, one manifest
  (process_count 2), the loss of one process; killed after their first checkpoint, both resume and
  end with the parameters of the uninterrupted pair, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

MODEL = "digits-mlp"
STEPS = 300
OVERRIDES = [f"train.steps={STEPS}", "train.eval_every=100", "train.log_every=50", "train.checkpoint.every_steps=50",
             "train.checkpoint.keep=10"]
TIMEOUT = 120  # seconds, any one subprocess


def _env(devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR") and k not in
           ("XLA_FLAGS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    env.update(JAX_PLATFORMS="cpu", CI="1")
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _args(out: Path, *extra: str) -> list[str]:
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    return [sys.executable, "-m", "gitops.cli", "train", MODEL, *sets, "--out", str(out), *extra]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _cfg():
    from gitops import config

    return config.load(MODEL, REPO, OVERRIDES)


def _run_dir(out: Path) -> Path:
    (folder,) = (out / MODEL).iterdir()
    return folder


def _losses(run: Path) -> list[tuple[str, int, float]]:
    from gitops.registry.runs import RunFolder

    return [(r["split"], r["step"], r["loss"]) for r in RunFolder(run).history()]


def _params(run: Path, step: int = STEPS) -> dict:
    from flax import traverse_util

    from gitops.learn.checkpoint import restore_plain

    tree = restore_plain(run / "checkpoints" / str(step))
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree["model"], sep="/").items()}


def _assert_curves_close(a: Path, b: Path, rtol: float = 1e-5) -> float:
    la, lb = _losses(a), _losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]
    worst = max(abs(x[2] - y[2]) / abs(x[2]) for x, y in zip(la, lb, strict=True))
    assert worst <= rtol, (worst, la, lb)
    return worst


def _unfinish(finished: Path, target: Path, keep_until: int) -> Path:
    """A copy of a finished run as if it had been killed right after the checkpoint at `keep_until`."""
    from gitops.registry.runs import RunFolder, read_json

    shutil.copytree(finished, target)
    for step_dir in (target / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > keep_until:
            shutil.rmtree(step_dir)
    manifest = read_json(target / "manifest.json")
    manifest.update(finished_at=None, checkpoint_step=None)
    RunFolder(target).write_manifest(manifest)
    (target / "metrics.json").unlink()
    return target


@pytest.fixture(scope="module")
def one_device(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, one device (in this test process)."""
    from gitops.learn import dispatch

    out = tmp_path_factory.mktemp("one-device")
    return dispatch.train(_cfg(), out, root=REPO).run.path


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("four-devices")
    _run(_args(out), _env(devices=4))
    return _run_dir(out)


def test_four_devices_follow_the_one_device_curve(one_device: Path, four_devices: Path) -> None:
    from gitops.registry.runs import RunFolder

    _assert_curves_close(one_device, four_devices)
    manifest = RunFolder(four_devices).manifest
    assert manifest["device_count"] == 4 and manifest["process_count"] == 1
    assert manifest["parallelism"] == {"strategy": "data", "mesh": {"data": 4}}
    assert RunFolder(one_device).manifest["parallelism"] is None
    assert four_devices.name == one_device.name  # the device count is not part of the fingerprint
    for name, value in _params(one_device).items():
        np.testing.assert_allclose(_params(four_devices)[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_checkpoints_move_between_device_counts(one_device: Path, four_devices: Path, tmp_path: Path) -> None:
    import gitops
    from gitops.learn import dispatch

    # written on 4 devices, resumed here on 1
    resumed_here = _unfinish(four_devices, tmp_path / "a" / MODEL / four_devices.name, keep_until=100)
    result = dispatch.train(_cfg(), tmp_path / "a", root=REPO, resume=True)
    assert result.run.path == resumed_here and not result.cache_hit
    _assert_curves_close(one_device, resumed_here)
    # written on 1 device, resumed on 4
    resumed_there = _unfinish(one_device, tmp_path / "b" / MODEL / one_device.name, keep_until=150)
    _run(_args(tmp_path / "b", "--resume"), _env(devices=4))
    _assert_curves_close(one_device, resumed_there)
    assert json.loads((resumed_there / "manifest.json").read_text())["device_count"] == 4
    # the 4-device checkpoint loads here (1 device) with gitops.load and predicts like the test metric
    from gitops.learn import data

    loaded = gitops.load(str(four_devices))
    dataset = data.load(loaded.config.data, REPO)
    accuracy = float((loaded.predict(dataset.raw_test_x).argmax(-1) == dataset.test.y).mean())
    assert accuracy == pytest.approx(loaded.metrics["test/accuracy"], abs=1e-6)


def test_fsdp_splits_large_arrays_and_follows_the_one_device_curve(tmp_path: Path) -> None:
    import gitops
    from gitops import config
    from gitops.learn import dispatch
    from gitops.registry.runs import RunFolder

    wide = ["model.hidden_sizes=[256,256]", "train.steps=200"]  # 256x256 kernels: split over the 4 devices
    one = dispatch.train(config.load(MODEL, REPO, [*OVERRIDES, *wide]), tmp_path / "one", root=REPO).run.path
    extra = [arg for item in [*wide, "train.parallelism.strategy=fsdp"] for arg in ("--set", item)]
    _run(_args(tmp_path / "four", *extra), _env(devices=4))
    four = _run_dir(tmp_path / "four")
    assert four.name == one.name  # the strategy is not part of the fingerprint
    assert RunFolder(four).manifest["parallelism"] == {"strategy": "fsdp", "mesh": {"data": 4}}
    _assert_curves_close(one, four)
    assert gitops.load(str(four)).metrics == RunFolder(four).metrics  # restores here, on one device


def test_batch_that_does_not_split_over_the_devices_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(_args(tmp_path, "--set", "train.batch_size=66"), cwd=REPO, env=_env(devices=4),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "train.batch_size 66 does not divide evenly over 4 devices" in done.stderr
    assert "Traceback" not in done.stderr


# --- two processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_pair(out: Path, *extra: str) -> list[tuple[subprocess.Popen, Any]]:
    """Processes 0 and 1 of a fresh cluster (a free port each time), each logging to a file."""
    port = _free_port()
    logs = out.parent / f"{out.name}-logs"
    logs.mkdir(exist_ok=True)
    procs = []
    for index in range(2):
        args = _args(out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(index), *extra)
        log = open(logs / f"p{index}-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115 - closed in _wait
        procs.append((subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _wait(procs: list[tuple[subprocess.Popen, Any]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _kill(procs)
    for proc, log in procs:
        log.seek(0)
        text = log.read()
        log.close()
        assert proc.returncode == 0, text[-3000:]


def _kill(procs: list[tuple[subprocess.Popen, Any]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc, _ in procs:
        proc.wait()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-processes") / "runs"
    _wait(_start_pair(out))
    return _run_dir(out)


def test_two_processes_train_as_one(one_device: Path, two_processes: Path) -> None:
    from gitops.registry.runs import RunFolder

    assert len(list(two_processes.parent.iterdir())) == 1  # one run folder, one manifest
    run = RunFolder(two_processes)
    manifest = run.manifest
    assert manifest["process_count"] == 2 and manifest["device_count"] == 2 and manifest["finished_at"]
    assert sorted(p.name for p in two_processes.iterdir()) == sorted(
        ["checkpoints", "config.resolved.yaml", "history.jsonl", "manifest.json", "metrics.json", "preprocessing.json"])
    steps = sorted(int(p.name) for p in run.checkpoints_dir.iterdir() if p.name.isdigit())
    assert steps == list(range(50, STEPS + 1, 50))
    assert not [p for p in run.checkpoints_dir.iterdir() if "tmp" in p.name]
    # one record per event (process 1 wrote nothing), and the loss of one process
    assert len(run.history()) == len(RunFolder(one_device).history())
    _assert_curves_close(one_device, two_processes)


def test_two_processes_resume_after_being_killed(two_processes: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    procs = _start_pair(out)
    checkpoints = out / MODEL / two_processes.name / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (checkpoints / "50").is_dir():  # committed (renamed from its tmp folder)
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in procs), "no first checkpoint"
            time.sleep(0.02)
    finally:
        _kill(procs)
        for _, log in procs:
            log.close()
    manifest = json.loads((checkpoints.parent / "manifest.json").read_text())
    assert manifest["finished_at"] is None, "the pair finished before it was killed: lengthen the run"
    _wait(_start_pair(out, "--resume"))
    resumed = _params(checkpoints.parent)
    for name, value in _params(two_processes).items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    assert _losses(checkpoints.parent) == _losses(two_processes)
