"""The checkpoint benchmark's --quick mode runs and prints both ratios (their values are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_checkpoint_benchmark_quick_prints_both_ratios() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "checkpoint_overhead.py"), "--quick"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "training time with checkpoints / without: median ratio " in done.stdout
    assert "save bandwidth Orbax / np.save: median ratio " in done.stdout
