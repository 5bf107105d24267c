"""Lineage of a run (issue 17, faults 1 and 2): what `git_commit`/`git_dirty` record, and what reads them.

One real training of a tiny wine-mlp in a repository with no commit yet; everything else reads its
run folder. The git-state cases run git only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from loop_support import commit_all, fake_run, git
from typer.testing import CliRunner

from gitops.cli import app
from gitops.registry import versions
from gitops.repo import gitutil


def _new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copytree(REPO / "schemas", path / "schemas")
    (path / ".gitignore").write_text("runs/\n.gitops/\n", encoding="utf-8")
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "commit.gpgsign", "false")
    return path


def _add_model(repo: Path, name: str = "wine-mlp", steps: int = 40) -> None:
    shutil.copytree(REPO / "models" / "wine-mlp", repo / "models" / name)
    train = repo / "models" / name / "train.yaml"
    text = train.read_text(encoding="utf-8").replace("epochs: 60", f"steps: {steps}")
    text = text.replace("eval_every: 50", "eval_every: 20").replace("every_steps: 200", "every_steps: 40")
    train.write_text(text.replace("warmup_steps: 20", "warmup_steps: 5"), encoding="utf-8")


def test_lineage_counts_untracked_model_files_and_nothing_else(tmp_path):
    repo = _new_repo(tmp_path / "repo")
    (repo / "README.md").write_text("hello\n", encoding="utf-8")
    assert gitutil.lineage(repo, ["models/wine-mlp"]) == (None, True, [])  # no commit: nothing reproduces it
    commit_all(repo, "readme")
    head = git(repo, "rev-parse", "HEAD")
    _add_model(repo)  # a model folder never committed
    (repo / "scratch.txt").write_text("notes\n", encoding="utf-8")  # untracked, outside the model: not dirty
    commit, dirty, paths = gitutil.lineage(repo, ["models/wine-mlp"])
    assert (commit, dirty) == (head, True)
    assert "models/wine-mlp/train.yaml" in paths and "scratch.txt" not in paths
    assert gitutil.lineage(repo, ["models/other"])[:2] == (head, False)  # another model's run: clean
    git(repo, "add", "models")
    git(repo, "commit", "-q", "-m", "model")
    head = git(repo, "rev-parse", "HEAD")
    assert gitutil.lineage(repo, ["models/wine-mlp"]) == (head, False, [])
    (repo / "models" / "wine-mlp" / "notes.yaml").write_text("x: 1\n", encoding="utf-8")
    assert gitutil.lineage(repo, ["models/wine-mlp"]) == (head, True, ["models/wine-mlp/notes.yaml"])
    (repo / "models" / "wine-mlp" / "notes.yaml").unlink()
    (repo / "README.md").write_text("changed\n", encoding="utf-8")  # a tracked change anywhere counts
    assert gitutil.lineage(repo, ["models/wine-mlp"]) == (head, True, ["README.md"])
    assert gitutil.lineage(tmp_path, ["models/wine-mlp"]) == (None, None, [])  # not a repository


def test_extends_parents_count_as_the_model_folders(example_repo):
    from gitops import config
    from gitops.learn import train

    (example_repo / "models" / "digits-mlp-wide" / "extra.txt").write_text("x\n", encoding="utf-8")
    cfg = config.load("digits-mlp-wide", example_repo)
    folders = train.model_folders(cfg)
    assert folders == ["models/digits-mlp", "models/digits-mlp-wide"]  # digits-mlp-wide extends digits-mlp
    assert gitutil.lineage(example_repo, folders)[1] is True


def test_run_before_the_first_commit_reports_and_releases_with_a_warning(tmp_path, monkeypatch):
    repo = _new_repo(tmp_path / "repo")
    _add_model(repo)
    monkeypatch.chdir(repo)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "wine-mlp"])
    assert trained.exit_code == 0, trained.output
    run = next((repo / "runs" / "wine-mlp").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    # fault 11: plain progress lines (not a terminal): percent, training-only steps/s, ETA; eval, saves
    # and compilation shown apart, and kept out of the training rate
    log = trained.stderr
    assert re.search(r"step 20/40 \(50%\) train: .*; [\d,]+ steps/s training; ETA \d+s", log), log
    assert re.search(r"step 40/40 \(100%\) val: .* \(evaluated in \d+\.\d\d s\)", log)
    assert "checkpoint queued in" in log and "compiled the training step in" in log
    assert manifest["train_steps_per_second"] > manifest["steps_per_second"]  # the latter counts eval too
    assert manifest["eval_time_s"] > 0 and manifest["checkpoint_time_s"] > 0
    assert manifest["git_commit"] is None and manifest["git_dirty"] is True
    assert "models/wine-mlp/train.yaml" in manifest["git_uncommitted"]

    # fault 1: every reader of the manifest copes with git_commit null
    text = runner.invoke(app, ["report", str(run)])
    assert text.exit_code == 0, text.output
    assert "commit not recorded" in text.stdout
    as_json = runner.invoke(app, ["report", str(run), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["models"][0]["git_commit"] == ""

    # fault 2: the commit holding the same files reproduces the fingerprint: released, with a warning
    head = commit_all(repo, "wine-mlp")
    released = runner.invoke(app, ["release", "wine-mlp", "--json"])
    assert released.exit_code == 0, released.output
    assert "trained outside git or before the repository's first commit" in released.stderr
    assert f"commit {head[:12]} reproduces its training fingerprint" in released.stderr
    assert json.loads(released.stdout)["version"] == "v1.0.0"  # stdout stays the JSON
    message = git(repo, "tag", "-l", "--format=%(contents)", "wine-mlp@v1.0.0")
    meta = versions.release_metadata(message)
    assert meta["trained_at_commit"] is None and meta["reproduced_at_commit"] == head
    pulled = runner.invoke(app, ["pull", "wine-mlp@v1.0.0", "--to", str(tmp_path / "pulled")])
    assert pulled.exit_code == 0, pulled.output
    card = next((tmp_path / "pulled").rglob("MODEL_CARD.md")).read_text()
    assert "- trained at commit: not recorded (trained outside git or before the first commit)" in card
    assert f"- reproduced at commit: {head} (same training fingerprint)" in card
    site = runner.invoke(app, ["site", "--out", str(tmp_path / "site")])
    assert site.exit_code == 0, site.output  # the site names the reproducing commit beside "not recorded"
    html = "".join(p.read_text() for p in (tmp_path / "site").rglob("*.html"))
    assert f"reproduced at <code>{head}</code>" in html


@pytest.mark.parametrize("manifest_patch", [
    {"git_commit": None, "git_dirty": None, "device_kind": None, "device_count": None, "steps": None,
     "checkpoint_step": None, "param_count": None, "wall_time_s": None, "started_at": None},
    {"git_commit": "", "training_fingerprint": None},
])
def test_optional_manifest_fields_are_formatted_everywhere(example_repo, monkeypatch, tmp_path, manifest_patch):
    """A manifest with nulls (older versions, no git) never crashes report, release, model card or history."""
    monkeypatch.chdir(example_repo)
    run = fake_run(example_repo, "wine-mlp", {"test/accuracy": 0.95, "val/loss": 0.2})
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    fingerprint = manifest["training_fingerprint"]
    manifest.update(manifest_patch)
    path.write_text(json.dumps(manifest))
    runner = CliRunner()
    for args in (["report", str(run)], ["report", str(run), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "None" not in result.stdout
    if manifest.get("training_fingerprint") is None:  # release needs the fingerprint: put it back
        manifest["training_fingerprint"] = fingerprint
        path.write_text(json.dumps(manifest))
    released = runner.invoke(app, ["release", "wine-mlp", "--run", str(run)])
    assert released.exit_code == 0, released.output
    history = runner.invoke(app, ["history", "wine-mlp"])
    assert history.exit_code == 0 and "None" not in history.stdout
    pulled = runner.invoke(app, ["pull", "wine-mlp", "--to", str(tmp_path / "p")])
    assert pulled.exit_code == 0, pulled.output
    card = next((tmp_path / "p").rglob("MODEL_CARD.md")).read_text()
    assert "None" not in card
    if "device_kind" in manifest_patch:
        assert "- device: unknown x1" in card and "- checkpoint step: unknown of unknown" in card


def test_terminal_progress_shows_percent_rate_and_eta():
    """The rich bar (a terminal): percent, training steps/s, ETA; an evaluation line with its own time."""
    import io

    from rich.console import Console

    from gitops.commands.training import RichReporter

    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=140))
    reporter.start(100, 0)
    reporter.timing(0, "compile", 0.5)
    reporter.log(50, {"split": "train", "loss": 0.25}, 1234.0)
    reporter.timing(50, "eval", 0.125)
    reporter.log(50, {"split": "val", "accuracy": 0.9}, 0.0)
    reporter.finish()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())  # without the colours
    assert "50%" in text and "1,234 steps/s" in text and "ETA " in text
    assert "step 50 val: accuracy=0.9 (evaluated in 0.12 s)" in text
    assert "compiled the training step in 0.50 s" in text
