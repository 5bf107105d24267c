"""One reference grammar for every command that names a trained model (issue 17, fault 7), plus
`gitops ls` / `gitops runs` and `ci plan`'s defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from loop_support import commit_all, edit, fake_run, git
from typer.testing import CliRunner

from gitops.cli import app
from gitops.config import refs
from gitops.errors import UsageError

GOOD = {"test/accuracy": 0.95, "test/loss": 0.2}


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def released(trained_examples, tmp_path_factory):
    """wine-mlp trained (the session's run), released as v1.0.0 and promoted to production."""
    from conftest import make_example_repo

    from gitops.api import release
    from gitops.backends.local import LocalBackend
    from gitops.registry.versions import promote

    repo = make_example_repo(tmp_path_factory.mktemp("refs") / "repo")
    run = trained_examples["wine-mlp"]
    shutil.copytree(run, repo / "runs" / "wine-mlp" / run.name)
    release(repo, LocalBackend(repo), "wine-mlp")
    promote(LocalBackend(repo), "wine-mlp@v1.0.0", "production")
    return repo


def test_every_reference_form_names_the_same_release_in_predict_and_pull(released, monkeypatch, tmp_path):
    monkeypatch.chdir(released)
    from sklearn.datasets import load_wine

    np.save(tmp_path / "x.npy", load_wine().data[:5])
    run = next((released / "runs" / "wine-mlp").iterdir())
    forms = ["wine-mlp", "wine-mlp@latest", "wine-mlp@v1.0.0", "wine-mlp@1.0.0", "wine-mlp@production",
             "wine-mlp#production", str(run.relative_to(released))]
    outputs = []
    for form in forms:
        done = cli("predict", form, "--input", str(tmp_path / "x.npy"))
        assert done.exit_code == 0, (form, done.output)
        outputs.append(json.loads(done.stdout)["predictions"])
    assert all(o == outputs[0] for o in outputs)
    for form in forms[:-1]:
        done = cli("pull", form)
        assert done.exit_code == 0, (form, done.output)
        assert done.stdout.strip().endswith(".gitops/pulled/wine-mlp/v1.0.0")
    # pull takes released versions only: a path is a clear usage error
    done = cli("pull", str(run.relative_to(released)))
    assert done.exit_code == 2 and "not a path" in done.output


def test_serve_and_deploy_accept_the_bare_name(released, monkeypatch, tmp_path):
    monkeypatch.chdir(released)
    from gitops.serve import server

    srv = server.build("wine-mlp", root=released)
    assert srv.follower.source.describe() == "wine-mlp" and srv.follower.source.follows
    run = next((released / "runs" / "wine-mlp").iterdir())
    fixed = server.build(str(run), root=released)
    assert not fixed.follower.source.follows
    done = cli("deploy", "wine-mlp", "--render", str(tmp_path / "render"))
    assert done.exit_code == 0 and "wine-mlp v1.0.0" in done.output, done.output


def test_an_existing_path_wins_over_a_model_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits-mlp").mkdir()
    with pytest.raises(UsageError, match="not a run folder.*digits-mlp@latest"):
        refs.parse_target("digits-mlp")
    assert str(refs.parse_target("digits-mlp@latest").ref) == "digits-mlp"
    (tmp_path / "digits-mlp" / "manifest.json").write_text("{}")
    assert refs.parse_target("digits-mlp").path == Path("digits-mlp")
    with pytest.raises(UsageError, match="no such run folder"):
        refs.parse_target("runs/nope/abc")
    with pytest.raises(UsageError, match="MAJOR.MINOR.PATCH"):
        refs.parse_target("digits-mlp@v1.2")
    for text, version, stage in [("m-1@v1.2.3", "v1.2.3", None), ("m-1@1.2.3", "v1.2.3", None),
                                 ("m-1@staging", None, "staging"), ("m-1@latest", None, None), ("m-1", None, None)]:
        ref = refs.parse_target(text).ref
        assert (ref.model, ref.version, ref.stage) == ("m-1", version, stage)


def test_latest_is_reserved_and_cannot_be_a_stage(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    fake_run(example_repo, "wine-mlp", GOOD)
    assert cli("release", "wine-mlp").exit_code == 0
    done = cli("promote", "wine-mlp@v1.0.0", "--to", "latest")
    assert done.exit_code == 2 and "reserved" in done.output
    assert "#latest#" not in git(example_repo, "tag")


def test_ls_and_runs_show_versions_stages_and_unreleased_runs(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    first = fake_run(example_repo, "wine-mlp", GOOD)
    assert cli("release", "wine-mlp").exit_code == 0
    assert cli("promote", "wine-mlp@v1.0.0", "--to", "production").exit_code == 0
    edit(example_repo, "models/wine-mlp/train.yaml", "seed: 0", "seed: 1")
    second = fake_run(example_repo, "wine-mlp", {"test/accuracy": 0.97, "test/loss": 0.1})

    done = cli("ls", "--json")
    assert done.exit_code == 0, done.output
    wine = next(e for e in json.loads(done.stdout) if e["model"] == "wine-mlp")
    assert wine["latest"] == "v1.0.0" and wine["stages"] == {"production": "v1.0.0"}
    assert wine["unreleased_runs"] == [f"runs/wine-mlp/{second.name}"]
    mlp = next(e for e in json.loads(done.stdout) if e["model"] == "digits-mlp")
    assert mlp == {"model": "digits-mlp", "in_repository": True, "valid": True, "latest": None, "stages": {},
                   "deprecated": False, "unreleased_runs": []}
    table = cli("ls").stdout
    assert "production=v1.0.0" in table and "wine-mlp" in table

    done = cli("runs", "wine-mlp", "--json")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    by_run = {r["run"]: r for r in doc["runs"]}
    assert by_run[f"runs/wine-mlp/{first.name}"]["released_as"] == ["v1.0.0"]
    assert by_run[f"runs/wine-mlp/{second.name}"]["current"] is True
    assert by_run[f"runs/wine-mlp/{second.name}"]["metrics"]["test/accuracy"] == 0.97
    text = cli("runs", "wine-mlp").stdout
    header = text.splitlines()[0].split()
    assert header[:4] == ["RUN", "STATUS", "FINISHED", "STEPS"] and "test/accuracy" in header
    assert "0.97" in text and "v1.0.0" in text


def test_ci_plan_without_base_defaults_like_diff(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    git(example_repo, "switch", "-q", "-c", "change")
    edit(example_repo, "models/wine-mlp/train.yaml", "seed: 0", "seed: 3")
    commit_all(example_repo, "change seed")
    done = cli("ci", "plan")
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert [t["model"] for t in plan["train"]] == ["wine-mlp"]
    # uncommitted edits count too (the head defaults to the working tree, as in `gitops diff`)
    edit(example_repo, "models/digits-mlp/train.yaml", "seed: 0", "seed: 5")
    plan = json.loads(cli("ci", "plan").stdout)
    assert [t["model"] for t in plan["train"]] == ["digits-mlp", "digits-mlp-wide", "wine-mlp"]  # wide extends it
