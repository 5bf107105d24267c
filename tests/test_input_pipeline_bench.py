"""The input-pipeline benchmark's --quick mode runs and prints every figure (their values are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_input_pipeline_benchmark_quick_prints_its_ratios(tmp_path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GITOPS_DATA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "input_pipeline.py"), "--quick"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for figure in ("memory ratio (peak RSS", "feed compute-bound 784-1024-1024-10, batch 1024: ArrayRecord + 0 workers",
                   "feed tiny 64-128-10", "decode image folder: 1 worker", "ratio 2 workers / (2 x 1 worker)"):
        assert figure in done.stdout, done.stdout
    assert "ratio" in done.stdout.splitlines()[-1]
