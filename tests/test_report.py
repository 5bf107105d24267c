"""The PR report and the sticky comment, on fake run folders and a local registry (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loop_support import commit_all, edit, fake_run
from typer.testing import CliRunner

from gitops import api
from gitops.backends.base import COMMENT_MARKER, COMMENT_MAX_CHARS
from gitops.backends.local import LocalBackend
from gitops.cli import app
from gitops.errors import GitopsError
from gitops.registry import report

GOOD = {"test/accuracy": 0.95, "test/loss": 0.20, "val/accuracy": 0.96, "val/loss": 0.18}


@pytest.fixture
def released(example_repo, monkeypatch):
    """wine-mlp v1.0.0 released from a fake run; then its learning rate changed (a PR)."""
    monkeypatch.chdir(example_repo)
    fake_run(example_repo, "wine-mlp", GOOD)
    api.release(example_repo, LocalBackend(example_repo), "wine-mlp")
    edit(example_repo, "models/wine-mlp/train.yaml", "learning_rate: 0.05", "learning_rate: 0.02")
    commit_all(example_repo, "lr")
    return example_repo


def _row(built: report.Report, metric: str) -> dict:
    return next(r for r in built.models[0].metrics if r["metric"] == metric)


def test_table_values_and_direction_aware_status(released):
    run = fake_run(released, "wine-mlp", {"test/accuracy": 0.97, "test/loss": 0.25, "val/accuracy": 0.96,
                                          "val/loss": 0.1})
    built = report.build(released, [run], LocalBackend(released))
    acc, loss = _row(built, "test/accuracy"), _row(built, "test/loss")
    assert acc["baseline"] == 0.95 and acc["value"] == 0.97
    assert acc["delta"] == pytest.approx(0.02) and acc["relative"] == pytest.approx(0.02 / 0.95)
    # +2 points of accuracy on wine's 36 test examples is inside their sampling noise (single-seed rule)
    assert acc["status"] == "noise" and acc["noise_basis"] == "binomial (n=36)"
    assert acc["noise_band"] == pytest.approx(2 * ((0.95 * 0.05 + 0.97 * 0.03) / 36) ** 0.5)
    assert loss["status"] == "worse"  # higher loss is worse
    assert _row(built, "val/loss")["status"] == "better"
    assert _row(built, "val/accuracy")["status"] == "equal"
    text = report.markdown(built)
    assert text.startswith(COMMENT_MARKER + "\n")
    assert "wine-mlp@v1.0.0" in text
    assert "| test/accuracy (↑ better) | 0.95 | 0.97 | +0.02 (±0.092) | +2.11% | ≈ noise |" in text
    assert "| test/loss (↓ better) | 0.2 | 0.25 | +0.05 | +25.00% | ⚠️ |" in text
    assert "| val/accuracy (↑ better) | 0.96 | 0.96 | +0 | +0.00% | ➖ |" in text
    assert "`train.optimizer.learning_rate` | `0.05` | `0.02`" in text  # config diff against the baseline
    assert "<details>" in text and "```mermaid\nxychart-beta" in text
    assert "Device cpu x1" in text and "10.0 s" in text
    assert built.ok


def test_gate_failure_exits_1_and_writes_step_summary(released, tmp_path, monkeypatch):
    edit(released, "models/wine-mlp/release.yaml", "min: 0.85", "min: 0.85\n  - metric: test/accuracy\n"
         "    max_regression: 0.01")
    commit_all(released, "regression gate")
    run = fake_run(released, "wine-mlp", {**GOOD, "test/accuracy": 0.90})  # 0.05 worse than v1.0.0
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.md"),
                                      "--json-out", str(tmp_path / "r.json"), "--pr", "7"])
    assert result.exit_code == 1, result.output
    text = (tmp_path / "r.md").read_text()
    assert summary.read_text().startswith(COMMENT_MARKER)
    assert "❌ gate failed: wine-mlp" in text
    assert "| test/accuracy max_regression 0.01 | fail:" in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["pr"] == 7 and len(data["head_sha"]) == 40 and data["ok"] is False
    gates = data["models"][0]["gates"]
    assert {(g["kind"], g["status"]) for g in gates} == {("min", "pass"), ("max_regression", "fail")}
    report.validate_report_json((tmp_path / "r.json").read_text(), head_sha=data["head_sha"], pr=7)


def test_no_baseline_says_so_and_skips_max_regression(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    run = fake_run(example_repo, "digits-mlp", {"test/accuracy": 0.97, "test/loss": 0.1})
    built = report.build(example_repo, [run], LocalBackend(example_repo))
    text = report.markdown(built)
    assert "No baseline: digits-mlp has no release yet" in text
    gates = {g.kind: g for g in built.models[0].gates}
    assert gates["max_regression"].status == "skipped" and "no baseline" in gates["max_regression"].note
    assert gates["min"].status == "pass"
    assert built.ok


def test_curve_is_downsampled_and_report_is_capped(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    history = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 1001)]
    history += [{"step": s, "split": "val", "loss": 9.0} for s in range(100, 1001, 100)]
    run = fake_run(example_repo, "wine-mlp", GOOD, history=history, steps=1000)
    built = report.build(example_repo, [run] * 400, LocalBackend(example_repo))
    assert len(built.models[0].curve) == report.MAX_CURVE_POINTS
    assert built.models[0].curve[0] == (1, 1.0) and built.models[0].curve[-1][0] == 1000
    assert report.sparkline([3, 2, 1]) == "█▅▁"
    text = report.markdown(built)
    assert len(text) <= COMMENT_MAX_CHARS
    assert "Report cut at 65536 characters" in text
    assert text.count("```") % 2 == 0


def test_comment_validates_report_json_as_data(released, tmp_path):
    run = fake_run(released, "wine-mlp", GOOD)
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run), "--out", str(md), "--json-out", str(js), "--pr", "3",
                                 "--head-sha", "a" * 40])
    assert result.exit_code == 0, result.output
    ok = runner.invoke(app, ["comment", "--pr", "3", "--file", str(md), "--head-sha", "a" * 40,
                             "--report-json", str(js)])
    assert ok.exit_code == 0, ok.output
    posted = released / ".gitops/comments/pr-3.md"
    assert posted.read_text() == md.read_text()
    # edited in place on the next push
    md.write_text(md.read_text() + "\nsecond push\n")
    assert runner.invoke(app, ["comment", "--pr", "3", "--file", str(md)]).exit_code == 0
    assert posted.read_text().endswith("second push\n")
    bad = runner.invoke(app, ["comment", "--pr", "3", "--file", str(md), "--head-sha", "b" * 40,
                              "--report-json", str(js)])
    assert bad.exit_code == 1 and "another commit" in bad.output
    other_pr = runner.invoke(app, ["comment", "--pr", "4", "--file", str(md), "--head-sha", "a" * 40,
                                   "--report-json", str(js)])
    assert other_pr.exit_code == 1 and "PR #3" in other_pr.output
    data = json.loads(js.read_text())
    data["models"][0]["ok"] = "$(curl evil)"
    js.write_text(json.dumps(data))
    bad = runner.invoke(app, ["comment", "--pr", "3", "--file", str(md), "--head-sha", "a" * 40,
                              "--report-json", str(js)])
    assert bad.exit_code == 1 and "schema" in bad.output


def test_validate_report_json_rejects_non_json_and_extra_keys():
    with pytest.raises(GitopsError, match="not valid JSON"):
        report.validate_report_json("{", head_sha=None, pr=1)
    doc = {"version": 1, "head_sha": "", "pr": None, "ok": True, "models": [], "run": "x"}
    with pytest.raises(GitopsError, match="schema"):
        report.validate_report_json(json.dumps(doc), head_sha=None, pr=1)


def test_report_with_baseline_folder(released, tmp_path):
    base = fake_run(released, "wine-mlp", {**GOOD, "test/accuracy": 0.5}, out=tmp_path / "base")
    run = fake_run(released, "wine-mlp", GOOD)
    built = report.build(released, [run], None, baseline=str(base))
    assert _row(built, "test/accuracy")["baseline"] == 0.5
    assert built.models[0].baseline.source == "folder"


def test_report_missing_run_is_usage_error(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    result = CliRunner().invoke(app, ["report", str(Path("runs/nope"))])
    assert result.exit_code == 2


def test_report_pattern_that_matched_nothing_is_usage_error(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    result = CliRunner().invoke(app, ["report", "runs/*/*"])
    assert result.exit_code == 2
    assert "runs/*/* matched no run folder" in result.output
    run = fake_run(example_repo, "wine-mlp", GOOD)  # a quoted pattern that matches is expanded
    result = CliRunner().invoke(app, ["report", "runs/*/*", "--baseline", str(run)])
    assert result.exit_code == 0, result.output


def _github_cli_env(monkeypatch, github_env):
    for key, value in github_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_EVENT_PATH", raising=False)


def test_comment_on_github_checks_the_pr_head_and_caps_the_body(released, tmp_path, monkeypatch, github_env,
                                                                  github_server):
    run = fake_run(released, "wine-mlp", GOOD)
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    head = "c" * 40
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run), "--out", str(md), "--json-out", str(js), "--pr", "1",
                                 "--head-sha", head, "--baseline", str(run)])
    assert result.exit_code == 0, result.output
    _github_cli_env(monkeypatch, github_env)
    github_server.add_pull(1, head_sha="d" * 40)  # the PR moved on (or the artifact names another PR)
    args = ["comment", "--pr", "1", "--file", str(md), "--head-sha", head, "--report-json", str(js)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "PR #1 is at dddddddddddd, not cccccccccccc" in refused.output
    assert github_server.comment_bodies(1) == []
    github_server.pulls[1]["head_sha"] = head
    md.write_text(md.read_text() + "x" * 70_000)  # over GitHub's limit: cut, not refused
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    (body,) = github_server.comment_bodies(1)
    assert body.startswith(COMMENT_MARKER) and len(body) <= 65_536 and "Report cut at" in body
    del github_server.pulls[1]  # an issue, not a pull request
    missing = runner.invoke(app, args)
    assert missing.exit_code == 1 and "#1 is not a pull request" in missing.output


def _zip(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zip_folder(folder: Path, prefix: str) -> bytes:
    return _zip({f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()})


def test_fetch_runs_from_cache_and_artifacts(example_repo, tmp_path, monkeypatch, github_env, github_server):
    from gitops import config

    monkeypatch.chdir(example_repo)
    made = fake_run(example_repo, "wine-mlp", GOOD, out=tmp_path / "made")
    fp = config.load("wine-mlp", example_repo).short_fingerprint
    matrix = json.dumps({"include": [{"model": "wine-mlp", "fingerprint": fp}]})
    runner = CliRunner()
    # the runner's run cache (how act stands in for artifacts)
    monkeypatch.setenv("GITOPS_RUN_CACHE", str(tmp_path / "made"))
    result = runner.invoke(app, ["ci", "fetch-runs", "--matrix", matrix, "--out", "runs", "--backend", "local"])
    assert result.exit_code == 0, result.output
    assert f"wine-mlp/{fp}: run cache" in result.stdout
    assert (example_repo / "runs/wine-mlp" / fp / "manifest.json").is_file()
    # on GitHub: this run's artifact run-<model>-<fp12> through the REST API
    monkeypatch.delenv("GITOPS_RUN_CACHE")
    import shutil

    shutil.rmtree(example_repo / "runs")
    _github_cli_env(monkeypatch, github_env)
    github_server.add_artifact(f"run-wine-mlp-{fp}", _zip({"wine-mlp/x": b"not this run"}), run_id=9)
    github_server.add_artifact(f"run-wine-mlp-{fp}", _zip_folder(made, f"wine-mlp/{fp}"), run_id=77)
    github_server.add_artifact(f"run-wine-mlp-{fp}", _zip({"../evil": b"x"}), run_id=78, head_sha="e" * 40)
    result = runner.invoke(app, ["ci", "fetch-runs", "--matrix", matrix, "--run-id", "77"])
    assert result.exit_code == 0, result.output
    assert json.loads((example_repo / "runs/wine-mlp" / fp / "metrics.json").read_text()) == GOOD
    shutil.rmtree(example_repo / "runs")
    result = runner.invoke(app, ["ci", "fetch-runs", "--matrix", matrix, "--run-id", "78", "--head-sha", "e" * 40])
    assert result.exit_code == 1 and "unsafe member name '../evil'" in result.output
    assert not (tmp_path / "evil").exists() and not (example_repo / "evil").exists()
    bad = runner.invoke(app, ["ci", "fetch-runs", "--matrix", '{"include": [{"model": "../x", "fingerprint": "0"}]}'])
    assert bad.exit_code == 2


def test_fetch_report_takes_only_the_four_files(tmp_path, monkeypatch, github_env, github_server):
    monkeypatch.chdir(tmp_path)
    _github_cli_env(monkeypatch, github_env)
    out = tmp_path / "got"
    runner = CliRunner()
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    none = runner.invoke(app, ["ci", "fetch-report", "--run-id", "5", "--out", str(out), "--github-output"])
    assert none.exit_code == 0 and "nothing to post" in none.stdout
    files = {"report.md": b"# r", "report.json": b"{}", "pr-number": b"1\n", "head-sha": b"a\n",
             "extra.sh": b"rm -rf /"}
    github_server.add_artifact("gitops-report", _zip(files), run_id=5)
    got = runner.invoke(app, ["ci", "fetch-report", "--run-id", "5", "--out", str(out), "--github-output"])
    assert got.exit_code == 0, got.output
    assert sorted(p.name for p in out.iterdir()) == ["head-sha", "pr-number", "report.json", "report.md"]
    assert (tmp_path / "output").read_text() == "found=false\nfound=true\n"


def test_single_seed_deltas_inside_the_noise_band_get_no_warning(released):
    """A fraction of a percent worse is noise for a single seed; a real regression still warns."""
    run = fake_run(released, "wine-mlp", {"test/accuracy": 0.9472, "test/loss": 0.2008, "val/accuracy": 0.80,
                                          "val/loss": 0.18})
    built = report.build(released, [run], LocalBackend(released))
    assert _row(built, "test/accuracy")["status"] == "noise"  # -0.3 points on 36 examples
    assert _row(built, "test/loss")["status"] == "noise"  # +0.4 % < the 0.5 % floor
    assert _row(built, "test/loss")["noise_basis"] == "0.5% floor"
    assert _row(built, "val/accuracy")["status"] == "worse"  # -16 points: beyond 2 x binomial SE on 36
    text = report.markdown(built)
    assert "≈ noise (single seed)" in text and "⚠️" in text.split("val/accuracy", 1)[1].splitlines()[0]
    assert report.as_json(built)["models"][0]["noise_rule"].startswith("≈ noise (single seed)")
    checked = report.validate_report_json(json.dumps(report.as_json(built)), head_sha=built.head_sha, pr=0)
    assert checked["models"][0]["metrics"][0]["noise_basis"] == "binomial (n=36)"  # test/accuracy first


def test_terminal_view_has_no_mermaid_or_sparkline(released, monkeypatch):
    run = fake_run(released, "wine-mlp", {**GOOD, "test/loss": 0.3})
    built = report.build(released, [run], LocalBackend(released))
    text = report.terminal(built)
    assert "mermaid" not in text and "<details>" not in text and not any(c in text for c in report.SPARK)
    lines = text.splitlines()
    header = next(line for line in lines if "METRIC" in line)
    loss = next(line for line in lines if line.strip().startswith("test/loss"))
    assert loss[header.index("THIS RUN"):].split()[0] == "0.3" and loss.rstrip().endswith("WORSE")
    assert "train.optimizer.learning_rate" in text and "-> " in text
    # the command picks it on a terminal only; pipes, --out and --markdown keep the Markdown
    from gitops.commands import loop

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(loop, "_is_terminal", lambda: True)
    shown = CliRunner().invoke(app, ["report", str(run)])
    assert "METRIC" in shown.stdout and "```mermaid" not in shown.stdout
    forced = CliRunner().invoke(app, ["report", str(run), "--markdown"])
    assert forced.stdout.startswith(COMMENT_MARKER)


def test_a_metric_nobody_registered_is_shown_without_a_guessed_verdict(released, tmp_path):
    """E.g. a plugin's metric in a baseline after the plugin was uninstalled: its name ends in "error",
    which once made the report guess lower-is-better; now only a registered direction gives a verdict."""
    base = fake_run(released, "wine-mlp", {**GOOD, "test/calibration_error": 0.10}, out=tmp_path / "base")
    run = fake_run(released, "wine-mlp", {**GOOD, "test/calibration_error": 0.05})
    built = report.build(released, [run], None, baseline=str(base))
    row = _row(built, "test/calibration_error")
    assert row["higher_is_better"] is None and row["status"] == "none" and row["delta"] == pytest.approx(-0.05)
    assert _row(built, "test/loss")["higher_is_better"] is False  # registered metrics keep theirs
    assert "| test/calibration_error (direction unknown) | 0.1 | 0.05 | -0.05 | -50.00% | — |" in report.markdown(built)
    assert "test/calibration_error ?" in report.terminal(built)
    doc = report.as_json(built)
    report.validate_report_json(json.dumps(doc), head_sha=doc["head_sha"], pr=doc["pr"])  # the schema allows null
