"""`gitops demo` (the README's first command, `make demo`): the whole loop in-process, once."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from typer.testing import CliRunner

from gitops.cli import app

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_loop_and_keeps_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo finds the checkout through the package, not the working folder
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # ignored: the demo always uses the local backend
    target = tmp_path / "demo"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["demo", "--keep", str(target)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    text = result.stdout
    for step in ("Step 1:", "Step 5: Plan", "Step 7: The PR report", "Step 14: History"):
        assert step in text
    assert "released digits-mlp@v1.0.0 (initial: first release)" in text
    assert "released wine-mlp@v1.0.0" in text
    assert "released digits-mlp@v1.1.0 (minor: training config changed: train.optimizer.learning_rate)" in text
    assert "train digits-mlp (own files changed: train.yaml)" in text and "train wine-mlp" not in text
    assert "Baseline: **digits-mlp@v1.0.0**" in text
    assert "digits-mlp#production#1" in text
    assert "stages: production -> v1.1.0" in text
    assert f"rm -rf {target}" in text and "gitops serve digits-mlp@production" in text
    # the scratch repository is there to look at
    tags = subprocess.run(["git", "-C", str(target), "tag", "--list"], capture_output=True, text=True).stdout.split()
    assert sorted(tags) == ["digits-mlp#production#1", "digits-mlp-finetune@v1.0.0", "digits-mlp@v1.0.0",
                            "digits-mlp@v1.1.0", "wine-mlp@v1.0.0"]
    # the fine-tuned child grew from production (v1.1.0), its first layer frozen
    assert "released digits-mlp-finetune@v1.0.0 (initial: first release)" in text
    assert re.search(r"digits-mlp@v1\.1\.0  \[production\]\n\s+-> digits-mlp-finetune@v1\.0\.0 <\s+\(loaded all, "
                     r"frozen hidden/0/bias, hidden/0/kernel\)", text)
    assert (target / ".gitops/comments/pr-1.md").read_text().startswith("<!-- gitops:report -->")
    assert (target / ".gitops/pulled/digits-mlp/v1.1.0/MODEL_CARD.md").is_file()
    assert re.search(r"predicted: (\d ){7}\d", text) and re.search(r"[678] of 8 right", text)
    print(f"demo took {elapsed:.1f} s")  # not asserted: shared machines are noisy
    again = CliRunner().invoke(app, ["demo", "--keep", str(target)])
    assert again.exit_code == 2 and "not empty" in again.output
