"""Ctrl-C during `gitops train`: checkpoint at the current step, exit 130 naming the resume command,
and `--resume` ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_exits_and_resume_is_bit_identical(example_repo: Path, resume_reference: Path,
                                                              signum: int) -> None:
    """Ctrl-C (exit 130) and SIGTERM (exit 143, what systemd and Kubernetes send) after the best checkpoint:
    a checkpoint of the current step, the resume command, and a resumed run equal to an uninterrupted one
    (same best step, metrics.json and params)."""
    from conftest import RESUME_OVERRIDES, assert_same_run

    from gitops import config

    sets = [a for o in RESUME_OVERRIDES for a in ("--set", o)]
    cfg = config.load("digits-mlp", example_repo, RESUME_OVERRIDES)
    run_dir = example_repo / "runs" / "digits-mlp" / cfg.short_fingerprint

    proc = _gitops(["train", "digits-mlp", *sets], example_repo)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a logged step past the best one (500) and a few saves
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        logged = re.match(r"step (\d+)/", line)  # progress lines; others ("step 0: compile ...") are skipped
        if logged and int(logged.group(1)) >= 900:
            break
    assert proc.poll() is None, "".join(lines)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), err
    assert "Traceback" not in err
    expected = "resume with: gitops train digits-mlp " + " ".join(sets) + " --resume"
    assert expected in err, err
    word = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    interrupted_at = int(err.split(f"{word} at step ")[1].split(";")[0])
    assert 900 <= interrupted_at < 2000

    from gitops.registry.runs import RunFolder

    run = RunFolder(run_dir)
    assert not run.is_finished  # left unfinished for --resume
    assert str(interrupted_at) in {p.name for p in run.checkpoints_dir.iterdir()}  # committed, not a tmp folder
    assert max(r["step"] for r in run.history()) <= interrupted_at  # history so far was written

    resumed = _gitops(["train", "digits-mlp", *sets, "--resume"], example_repo)
    _, err2 = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err2
    assert f"resuming from step {interrupted_at}" in err2
    assert run.is_finished and run.manifest["steps_done"] == 2000
    assert_same_run(run_dir, resume_reference)
    assert [r["step"] for r in run.history("val")] == [r["step"] for r in RunFolder(resume_reference).history("val")]


def test_stop_flag_second_ctrl_c_raises_and_ignored_sigint_stays_ignored() -> None:
    from gitops.learn.interrupt import StopFlag

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
