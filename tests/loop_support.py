"""Helpers shared by the GitOps-loop tests: git calls, config edits, and fake (untrained) run folders.

A fake run folder has every file of DESIGN.md's run folder with chosen metrics and a tiny stand-in
checkpoint, so plan/report/release logic is tested in milliseconds; the end-to-end test trains for real.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gitops import config
from gitops.config.yamlio import dump_yaml


def git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], check=check, capture_output=True, text=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def edit(repo: Path, relpath: str, old: str, new: str) -> None:
    path = repo / relpath
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {relpath}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def fake_run(repo: Path, model: str, metrics: dict, *, history: list[dict] | None = None,
             steps: int = 100, out: Path | None = None) -> Path:
    """A finished run folder for the working tree's config of `model` (no training)."""
    cfg = config.load(model, repo)
    folder = (out or repo / "runs") / model / cfg.short_fingerprint
    (folder / "checkpoints" / str(steps) / "state").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / str(steps) / "state" / "params.bin").write_bytes(b"\x00" * 64 + model.encode())
    (folder / "config.resolved.yaml").write_text(dump_yaml(cfg.as_dict()), encoding="utf-8")
    manifest = {
        "model": model, "training_fingerprint": cfg.training_fingerprint,
        "release_fingerprint": cfg.release_fingerprint, "data_fingerprint": cfg.data_fingerprint,
        "git_commit": git(repo, "rev-parse", "HEAD", check=False), "git_dirty": False,
        "device_kind": "cpu", "device_count": 1, "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:10Z", "steps": steps, "checkpoint_step": steps,
        "wall_time_s": 10.0, "param_count": 1234,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "preprocessing.json").write_text("{}", encoding="utf-8")
    rows = history if history is not None else [
        {"step": s, "split": "train", "loss": 2.0 / (1 + s / 10), "time": s / 10} for s in range(10, steps + 1, 10)
    ]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder
