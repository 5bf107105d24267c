"""train.repeats: N seeds in one run folder, mean and spread, resume, releases, and the report's noise band."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from loop_support import commit_all, edit, fake_run

from gitops import api
from gitops.backends.local import LocalBackend
from gitops.registry import report, stats, versions

# --- the statistics (no training) --------------------------------------------------------------------


def test_summary_is_sample_std_and_representative_is_closest_to_mean() -> None:
    s = stats.summarize([0.9, 0.95, 1.0])
    assert s["mean"] == pytest.approx(0.95) and s["std"] == pytest.approx(0.05)
    assert (s["min"], s["max"], s["n"]) == (0.9, 1.0, 3)
    assert stats.summarize([0.5])["std"] == 0.0
    assert math.isnan(stats.summarize([0.5, math.nan])["mean"])
    per_seed = [{"a": 0.90}, {"a": 0.99}, {"a": 0.96}]
    assert stats.closest_to_mean(per_seed, "a") == 2
    assert stats.closest_to_mean(per_seed, "missing") == 0


def test_noise_band_combines_standard_errors_and_borrows_a_missing_spread() -> None:
    a, b = {"std": 0.03, "n": 3}, {"std": 0.04, "n": 4}
    assert stats.noise_band(a, b) == pytest.approx(2 * math.sqrt(0.03**2 / 3 + 0.04**2 / 4))
    assert stats.noise_band(a, None) == pytest.approx(2 * math.sqrt(0.03**2 / 3 + 0.03**2 / 1))
    assert stats.noise_band(None, {"std": 0.0, "n": 1}) is None


# --- the report on fake runs --------------------------------------------------------------------------

GOOD = {"test/accuracy": 0.95, "test/loss": 0.20}


def _with_spread(folder: Path, per_seed: list[dict]) -> Path:
    spread = stats.summarize_runs(per_seed)
    (folder / "metrics_spread.json").write_text(json.dumps(
        {"n": len(per_seed), "seeds": list(range(len(per_seed))), "metrics": spread}))
    (folder / "metrics.json").write_text(json.dumps(stats.means(spread)))
    return folder


def test_report_shows_mean_std_marks_noise_and_gates_on_the_mean(example_repo: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(example_repo)
    base = fake_run(example_repo, "wine-mlp", GOOD)
    _with_spread(base, [{"test/accuracy": a, "test/loss": loss} for a, loss in [(0.94, 0.21), (0.95, 0.20), (0.96, 0.19)]])
    api.release(example_repo, LocalBackend(example_repo), "wine-mlp")
    meta = versions.release_metadata(versions.state(LocalBackend(example_repo), "wine-mlp").latest().message)
    assert meta["metrics_spread"]["n"] == 3 and meta["metrics_spread"]["metrics"]["test/accuracy"]["std"] > 0
    edit(example_repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.02")
    commit_all(example_repo, "lr")
    # accuracy moves by +0.01 (inside the band of ~0.016), loss by -0.1 (far outside it)
    run = _with_spread(fake_run(example_repo, "wine-mlp", GOOD),
                       [{"test/accuracy": a, "test/loss": loss} for a, loss in [(0.95, 0.11), (0.96, 0.10), (0.97, 0.09)]])
    built = report.build(example_repo, [run], LocalBackend(example_repo))
    m = built.models[0]
    assert m.repeats == 3 and m.baseline.repeats == 3
    rows = {r["metric"]: r for r in m.metrics}
    acc, loss = rows["test/accuracy"], rows["test/loss"]
    band = 2 * math.sqrt(0.01**2 / 3 + 0.01**2 / 3)
    assert acc["noise_band"] == pytest.approx(band) and acc["delta"] == pytest.approx(0.01)
    assert acc["status"] == "noise" and loss["status"] == "better"
    assert acc["value_std"] == pytest.approx(0.01) and acc["value_n"] == 3 and acc["baseline_n"] == 3
    text = report.markdown(built)
    assert "| metric | baseline (v1.0.0, mean ± std of 3 seeds) | this run, mean ± std of 3 seeds |" in text
    assert "| test/accuracy (↑ better) | 0.95 ± 0.01 | 0.96 ± 0.01 | +0.01 (±0.016) | +1.05% | ≈ noise |" in text
    assert "≈ noise: |Δ| ≤ 2 × SE" in text and "gates apply to the mean" in text
    gate = next(g for g in m.gates if g.kind == "min")
    assert gate.status == "pass" and "gate on the mean of 3 seeds" in gate.note
    out = tmp_path / "r.json"
    out.write_text(json.dumps(report.as_json(built)))
    data = report.validate_report_json(out.read_text(), head_sha=None, pr=1)
    first = data["models"][0]
    assert first["repeats"] == 3 and first["baseline"]["repeats"] == 3 and first["noise_rule"]
    assert {r["metric"]: r["status"] for r in first["metrics"]} == {"test/accuracy": "noise", "test/loss": "better"}


def test_single_seed_run_against_a_repeated_baseline_borrows_its_spread(example_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(example_repo)
    base = fake_run(example_repo, "wine-mlp", GOOD)
    _with_spread(base, [{"test/accuracy": a} for a in (0.93, 0.95, 0.97)])
    api.release(example_repo, LocalBackend(example_repo), "wine-mlp")
    edit(example_repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.02")
    commit_all(example_repo, "lr")
    run = fake_run(example_repo, "wine-mlp", {"test/accuracy": 0.92})  # one seed: no spread file
    row = next(r for r in report.build(example_repo, [run], LocalBackend(example_repo)).models[0].metrics
               if r["metric"] == "test/accuracy")
    assert row["noise_band"] == pytest.approx(2 * math.sqrt(0.02**2 / 3 + 0.02**2))
    assert row["status"] == "noise" and row["value_std"] is None and row["baseline_std"] == pytest.approx(0.02)


# --- real runs ------------------------------------------------------------------------------------------

FEW = ("epochs: 60", "epochs: 20\nrepeats: 3")


class _CtrlCAt:
    """A reporter that sends this process SIGINT at the first logged step of the `nth` seed."""

    def __init__(self, nth: int):
        self.nth, self.starts, self.notes = nth, 0, []

    def note(self, text):
        self.notes.append(text)

    def start(self, total, start):
        self.starts += 1

    def log(self, step, record, rate):
        if self.starts == self.nth and record["split"] == "train":
            os.kill(os.getpid(), signal.SIGINT)
            self.nth = -1

    def finish(self):
        pass


@pytest.mark.slow
def test_repeats_layout_resume_release_and_report(example_repo: Path, monkeypatch, tmp_path) -> None:
    from test_train import _flatten, cli

    from gitops import config
    from gitops.errors import RunInterrupted
    from gitops.learn import dispatch, train
    from gitops.learn.checkpoint import restore_plain
    from gitops.learn.repeats import seed_config
    from gitops.registry.runs import RunFolder

    edit(example_repo, "models/wine-mlp/train.yaml", *FEW)
    commit_all(example_repo, "3 seeds, fewer epochs")
    result = cli(["train", "wine-mlp"], example_repo, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "seed 2 (3 of 3)" in result.stderr
    cfg = config.load("wine-mlp", example_repo)
    run = RunFolder(example_repo / "runs" / "wine-mlp" / cfg.short_fingerprint)
    manifest, spread = run.manifest, json.loads((run.path / "metrics_spread.json").read_text())

    # layout: DESIGN.md's files on top, the mean in metrics.json, per-seed runs below
    assert manifest["finished_at"] and manifest["training_fingerprint"] == cfg.training_fingerprint
    assert manifest["repeats"]["n"] == 3 and manifest["repeats"]["seeds"] == [0, 1, 2]
    chosen = manifest["repeats"]["representative"]
    assert chosen["by"] == "test/accuracy" and chosen["rule"] == "closest to the mean"
    assert spread["n"] == 3 and set(spread["metrics"]) == set(run.metrics)
    per_seed = [RunFolder(run.path / "repeats" / str(i)).metrics for i in range(3)]
    for name, value in run.metrics.items():
        assert value == pytest.approx(float(np.mean([m[name] for m in per_seed])))
        assert spread["metrics"][name]["values"] == [m[name] for m in per_seed]
        assert spread["metrics"][name]["std"] == pytest.approx(float(np.std([m[name] for m in per_seed], ddof=1)))
    rep_run = RunFolder(run.path / "repeats" / str(chosen["index"]))
    assert manifest["checkpoint_step"] == rep_run.manifest["checkpoint_step"]
    top = _flatten(restore_plain(run.checkpoint_path))
    below = _flatten(restore_plain(rep_run.checkpoint_path))
    assert top.keys() == below.keys() and all(np.array_equal(top[k], below[k]) for k in top)
    assert run.history() == rep_run.history()

    # seed i is exactly the single-seed run of seed + i
    single = seed_config(cfg, 1)
    assert RunFolder(run.path / "repeats" / "1").manifest["training_fingerprint"] == single.training_fingerprint
    assert train.train_and_evaluate(single, tmp_path / "seed1", root=example_repo) == per_seed[1]

    # Ctrl-C in the second seed, then --resume: the first seed is skipped and the end is identical
    again = tmp_path / "again"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # even when the runner ignores SIGINT
    try:
        with pytest.raises(RunInterrupted) as info:
            dispatch.run_training(cfg, again, root=example_repo, reporter=_CtrlCAt(2))
    finally:
        signal.signal(signal.SIGINT, before)
    assert "of seed 1 (2 of 3); resume with: gitops train wine-mlp --resume" in info.value.message
    assert not RunFolder(again).is_finished
    notes = _CtrlCAt(0)
    dispatch.run_training(cfg, again, root=example_repo, resume=True, reporter=notes)
    assert any("seed 0 (1 of 3) already finished; skipped" in n for n in notes.notes)
    assert any("seed 1 (2 of 3): resuming" in n for n in notes.notes)
    assert json.loads((again / "metrics_spread.json").read_text())["metrics"] == spread["metrics"]

    # release: the representative checkpoint plus every seed's metrics
    monkeypatch.chdir(example_repo)
    backend = LocalBackend(example_repo)
    released = api.release(example_repo, backend, "wine-mlp")
    assert released.version == "v1.0.0" and not released.trained
    import tarfile

    archive = next(p for p in released.assets if p.name.endswith(".tar.gz"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert "metrics_spread.json" in names
        assert not any(n.startswith("repeats/") for n in names)
        assert any(n.startswith(f"checkpoints/{manifest['checkpoint_step']}/") for n in names)
        card = tar.extractfile("MODEL_CARD.md").read().decode()
    assert "mean ± std of 3 seeds" in card

    # a PR that changes only the seeds (same recipe): the report shows ±, gates on the mean, noise bands
    edit(example_repo, "models/wine-mlp/train.yaml", "seed: 0", "seed: 3")
    commit_all(example_repo, "other seeds")
    assert cli(["train", "wine-mlp"], example_repo, monkeypatch).exit_code == 0
    new_cfg = config.load("wine-mlp", example_repo)
    new_run = example_repo / "runs" / "wine-mlp" / new_cfg.short_fingerprint
    built = report.build(example_repo, [new_run], backend)
    text = report.markdown(built)
    m = built.models[0]
    assert m.repeats == 3 and m.baseline.repeats == 3
    assert "this run, mean ± std of 3 seeds" in text and " ± " in text and "gates apply to the mean" in text
    assert all("gate on the mean of 3 seeds" in g.note for g in m.gates)
    for row in m.metrics:  # the status follows the documented rule
        if row["status"] in ("better", "worse"):
            assert abs(row["delta"]) > row["noise_band"]
        if row["status"] == "noise":
            assert abs(row["delta"]) <= row["noise_band"]
    assert any(row["status"] == "noise" for row in m.metrics), m.metrics  # seeds alone rarely move the mean
    assert "≈ noise" in text
    report.validate_report_json(json.dumps(report.as_json(built)), head_sha=None, pr=1)
    (tmp_path / "report.md").write_text(text)
