"""Ctrl-C during `gitops train`: checkpoint at the current step, exit 130 naming the resume command,
and `--resume` ends bit-identical to an uninterrupted run."""

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

OVERRIDES = ["train.steps=3000", "train.checkpoint.every_steps=1000", "train.eval_every=500", "train.log_every=50"]


def _gitops(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "1"}
    command = [sys.executable, "-m", "gitops.cli", *args]
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # a runner started in the background: so would the child be
        command = [sys.executable, "-c", REARMED, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


REARMED = """import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["gitops", *sys.argv[1:]]
runpy.run_module("gitops.cli", run_name="__main__")
"""


def test_sigint_checkpoints_exits_130_and_resume_is_bit_identical(example_repo: Path, tmp_path: Path) -> None:
    from test_train import _flatten

    from gitops import config, train
    from gitops.checkpoint import restore_plain

    sets = [a for o in OVERRIDES for a in ("--set", o)]
    cfg = config.load("digits-mlp", example_repo, OVERRIDES)
    run_dir = example_repo / "runs" / "digits-mlp" / cfg.short_fingerprint

    proc = _gitops(["train", "digits-mlp", *sets], example_repo)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the first logged step: the loop is running
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("step "):
            break
    assert proc.poll() is None, "".join(lines)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    expected = "resume with: gitops train digits-mlp " + " ".join(sets) + " --resume"
    assert expected in err, err
    interrupted_at = int(err.split("interrupted at step ")[1].split(";")[0])
    assert 0 < interrupted_at < 3000

    from gitops.runs import RunFolder

    run = RunFolder(run_dir)
    assert not run.is_finished  # left unfinished for --resume
    assert str(interrupted_at) in {p.name for p in run.checkpoints_dir.iterdir()}  # committed, not a tmp folder
    assert max(r["step"] for r in run.history()) <= interrupted_at  # history so far was written

    resumed = _gitops(["train", "digits-mlp", *sets, "--resume"], example_repo)
    _, err2 = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err2
    assert f"resuming from step {interrupted_at}" in err2
    assert run.is_finished and run.manifest["steps_done"] == 3000

    reference = tmp_path / "reference"
    train.train_and_evaluate(cfg, reference, root=example_repo)
    a = _flatten(restore_plain(run.checkpoints_dir / "3000"))
    b = _flatten(restore_plain(reference / "checkpoints" / "3000"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert run.metrics == RunFolder(reference).metrics
    assert [r["step"] for r in run.history("val")] == [r["step"] for r in RunFolder(reference).history("val")]


def test_stop_flag_second_ctrl_c_raises_and_ignored_sigint_stays_ignored() -> None:
    from gitops.interrupt import StopFlag

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopFlag() as flag:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert flag.requested
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with StopFlag() as flag:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert not flag.requested
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
