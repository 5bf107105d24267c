"""A plugin package inside the repository (issue 17, fault 15): declared in gitops.yaml, loaded through
the same registry and checks as installed plugins, hashed into the training fingerprint of the models
that use it, and never imported where GITOPS_REPO_PLUGINS=off (jobs holding write tokens).

The example plugin (examples/gitops-plugin-example) is copied in as `plugins/`; tests/test_plugins.py
installs the same files as a package (entry points): one package, both ways.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from loop_support import commit_all, git
from typer.testing import CliRunner

from gitops import config
from gitops.cli import app

EXAMPLE = REPO / "examples" / "gitops-plugin-example" / "gitops_plugin_example"
XOR = {
    "model.yaml": "architecture: tiny-linear\npairwise: true\n",
    "train.yaml": "seed: 0\nbatch_size: 32\nsteps: 200\noptimizer:\n  name: adam\n  learning_rate: 5e-2\n"
                  "eval_every: 100\nlog_every: 50\ncheckpoint:\n  every_steps: 100\n  best_metric: val/brier\n",
    "data.yaml": "dataset:\n  name: xor-blobs\n  n_samples: 400\n  noise: 0.3\naugmentation:\n"
                 "  - name: feature-dropout\n    probability: 0.05\n",
    "release.yaml": "description: XOR with the repository's plugin.\ngates:\n  - metric: test/brier\n    max: 0.1\n",
}
REGRESSION = {  # uses nothing of the plugin (brier is a classification metric)
    "model.yaml": "architecture: mlp\nhidden_sizes: [8]\n",
    "train.yaml": "seed: 0\nbatch_size: 32\nsteps: 50\noptimizer:\n  name: adam\n  learning_rate: 1e-2\n",
    "data.yaml": "dataset:\n  name: diabetes\n",
}


def write_model(repo: Path, name: str, files: dict[str, str]) -> None:
    folder = repo / "models" / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A repository set up by `gitops init` whose plugin package is a copy of the example."""
    repo = tmp_path / "repo"
    assert CliRunner().invoke(app, ["init", str(repo)]).exit_code == 0
    shutil.copytree(EXAMPLE, repo / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    with (repo / "gitops.yaml").open("a") as fh:
        fh.write("plugins:\n  package: plugins\n")
    write_model(repo, "xor-tiny", XOR)
    write_model(repo, "diabetes-mlp", REGRESSION)
    shutil.copytree(REPO / "models" / "wine-mlp", repo / "models" / "wine-mlp")
    git(repo, "config", "user.name", "T")
    git(repo, "config", "user.email", "t@example.com")
    commit_all(repo, "models and plugins")
    monkeypatch.chdir(repo)
    return repo


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_repository_plugins_validate_and_join_the_fingerprints_of_the_models_that_use_them(repo) -> None:
    done = cli("validate")
    assert done.exit_code == 0, done.output
    xor = json.loads(cli("show", "xor-tiny", "--json").stdout)
    assert xor["config"]["plugins"]["package"] == "plugins" and len(xor["config"]["plugins"]["sha256"]) == 64
    # brier is a classification metric: wine-mlp computes it too; the regression model uses nothing of it
    source = {k: xor["config"]["plugins"][k] for k in ("package", "sha256")}
    assert json.loads(cli("show", "wine-mlp", "--json").stdout)["config"]["plugins"] == source
    # the plugin's own parts are fingerprinted as written (beside the package's source), and a run folder's
    # config.resolved.yaml carries them: hashing it again gives the fingerprint (how runs are trusted and reused)
    assert xor["config"]["plugins"]["written"]["model"] == {"architecture": "tiny-linear", "pairwise": True}
    assert config.build("xor-tiny", xor["config"]).training_fingerprint == xor["training_fingerprint"]
    assert "plugins" not in json.loads(cli("show", "diabetes-mlp", "--json").stdout)["config"]
    assert cli("schemas").exit_code == 0
    assert "tiny-linear" in (repo / "schemas/model.schema.json").read_text()

    # a PR that edits only the plugin retrains exactly the models that use it
    git(repo, "switch", "-q", "-c", "plugin-edit")
    (repo / "plugins/model.py").write_text((repo / "plugins/model.py").read_text() + "\n# a change\n")
    commit_all(repo, "edit the plugin only")
    plan = json.loads(cli("ci", "plan", "--base", "main", "--head", "HEAD").stdout)
    assert sorted(t["model"] for t in plan["train"]) == ["wine-mlp", "xor-tiny"]
    assert {t["reason"] for t in plan["train"]} == {"plugin package plugins/ changed"}
    before = config.load("xor-tiny", repo, tree=__import__("gitops.repo.tree", fromlist=["GitTree"]).GitTree(repo, "main"))
    assert before.training_fingerprint != config.load("xor-tiny", repo).training_fingerprint
    # bytecode caches never count
    (repo / "plugins/__pycache__").mkdir(exist_ok=True)
    (repo / "plugins/__pycache__/x.cpython-311.pyc").write_bytes(b"junk")
    assert json.loads(cli("ci", "plan", "--head", "HEAD").stdout)["train"] == plan["train"]


NEW_ENTRY = """
open({marker!r}, "a").close()  # the pull request's plugin code: a plan must never run it
import dataclasses as _dc

TINY_LINEAR_2 = _dc.replace(TINY_LINEAR, name="tiny-linear-2", description="The same, under a new name.")
GITOPS_PLUGINS["architectures"].append(TINY_LINEAR_2)
"""


def _pr_adding_an_architecture(repo: Path, marker: Path) -> str:
    """A branch that adds a plugin architecture (its module records being imported) and a model using it."""
    git(repo, "switch", "-q", "-c", "new-entry")
    init = repo / "plugins/__init__.py"
    init.write_text(init.read_text() + NEW_ENTRY.format(marker=str(marker)))
    # `pairwise` left to its default: the plan can't know it (the entry's schema is PR code)
    write_model(repo, "xor-two", {**XOR, "model.yaml": "architecture: tiny-linear-2\n"})
    head = commit_all(repo, "a plugin entry and a model that uses it")
    git(repo, "switch", "-q", "main")  # the base branch's checkout, as pr-train's plan job has
    return head


def _shown(repo: Path, *args: str) -> dict:
    """`gitops show --json` in a fresh process (the PR's checkout: its plugin package is imported there)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from gitops.cli import main; main()", "show", *args, "--json"],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_plan_with_base_branch_code_schedules_a_pr_that_adds_a_plugin_entry_and_a_model_using_it(repo) -> None:
    """pr-train's plan (base-branch code, the PR head read as git objects) never imports the PR's plugin code:
    a model using an entry the PR adds is planned with the fingerprint training records, its plugin part marked
    as checked when training; errors in the rest of its config are still reported by the plan."""
    marker = repo.parent / "pr-plugin-imported"
    head = _pr_adding_an_architecture(repo, marker)
    done = cli("ci", "plan", "--base", "main", "--head", head)
    assert done.exit_code == 0, done.output
    assert not marker.exists()  # the PR's plugins/ was hashed from git objects, never imported
    planned = {t["model"]: t for t in json.loads(done.stdout)["train"]}
    # the new model, and the models whose plugin package changed (xor-tiny's entries, wine-mlp's brier metric)
    assert sorted(planned) == ["wine-mlp", "xor-tiny", "xor-two"]
    assert planned["xor-two"]["reason"] == "new model"
    # every entry of the changed package waits for training to be checked (its schema is the PR's code)
    assert planned["xor-two"]["checked_when_training"] == planned["xor-tiny"]["checked_when_training"] == [
        "model", "data.dataset", "data.augmentation[0]", "train.checkpoint.best_metric", "release.gates[0].metric"]
    assert "checked_when_training" not in planned["wine-mlp"]
    diffed = cli("diff", "--base", "main", "--head", head)
    assert "xor-two (train: new model)" in diffed.stdout and "checked when training" in diffed.stdout

    git(repo, "switch", "-q", "new-entry")  # the train job: the PR's checkout, its plugins imported
    for model in planned:
        shown = _shown(repo, model)
        assert shown["training_fingerprint"] == planned[model]["training_fingerprint"], model
    assert marker.exists()
    assert shown["config"]["model"] == {"architecture": "tiny-linear-2", "pairwise": True}  # xor-two: defaults filled

    # a mistake in the part of the config the plan can check is still reported there, with its position
    (repo / "models/xor-two/train.yaml").write_text(XOR["train.yaml"].replace("batch_size: 32", "batch_size: 0"))
    (repo / "models/xor-two/model.yaml").write_text("architecture: tiny-linear-2\npairwise: 3\n")  # checked when training
    bad = commit_all(repo, "a bad batch size")
    git(repo, "switch", "-q", "main")
    marker.unlink()
    done = cli("ci", "plan", "--base", "main", "--head", bad)
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert f"{bad}:models/xor-two/train.yaml:2" in done.output and "train.batch_size" in done.output, done.output
    assert "pairwise" not in done.output and not marker.exists()
    git(repo, "switch", "-q", "new-entry")  # the train job loads the plugin and reports the rest, positioned
    import subprocess
    import sys

    trained = subprocess.run([sys.executable, "-c", "from gitops.cli import main; main()", "validate", "models/xor-two"],
                             cwd=repo, capture_output=True, text=True, timeout=120)
    assert trained.returncode == 1 and "models/xor-two/model.yaml:2" in trained.stdout + trained.stderr


def test_the_first_pr_that_adds_a_plugin_package_plans_with_the_fingerprints_training_records(tmp_path, monkeypatch) -> None:
    """An adopter's first plugin PR: gitops.yaml gains `plugins:`, plugins/ and a model using it. The plan (base
    code, which has no plugin package) imports nothing of it, yet knows that the package's classification
    metric joins wine-mlp's fingerprint (read from the source as data, never run)."""
    repo = tmp_path / "repo"
    assert cli("init", str(repo)).exit_code == 0
    write_model(repo, "diabetes-mlp", REGRESSION)
    shutil.copytree(REPO / "models" / "wine-mlp", repo / "models" / "wine-mlp")
    git(repo, "config", "user.name", "T")
    git(repo, "config", "user.email", "t@example.com")
    commit_all(repo, "built-in models only")
    monkeypatch.chdir(repo)
    git(repo, "switch", "-q", "-c", "first-plugin")
    shutil.copytree(EXAMPLE, repo / "plugins_first", ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "pr-plugin-imported"
    init = repo / "plugins_first/__init__.py"
    init.write_text(f"open({str(marker)!r}, 'a').close()\n" + init.read_text())
    with (repo / "gitops.yaml").open("a") as fh:
        fh.write("plugins:\n  package: plugins_first\n")
    write_model(repo, "xor-tiny", XOR)
    head = commit_all(repo, "our first plugin package and a model that uses it")
    git(repo, "switch", "-q", "main")
    done = cli("ci", "plan", "--base", "main", "--head", head)
    assert done.exit_code == 0, done.output
    assert not marker.exists()
    planned = {t["model"]: t["training_fingerprint"] for t in json.loads(done.stdout)["train"]}
    assert sorted(planned) == ["wine-mlp", "xor-tiny"]  # wine-mlp: brier, a classification metric of the package
    git(repo, "switch", "-q", "first-plugin")
    assert {model: _shown(repo, model)["training_fingerprint"] for model in planned} == planned
    assert marker.exists()


def test_the_guard_never_imports_the_package(repo, monkeypatch) -> None:
    marker = repo / "imported"
    init = repo / "plugins/__init__.py"
    init.write_text(f"open({str(marker)!r}, 'w').close()\n" + init.read_text())
    (repo / "plugins").rename(repo / "plugins_guarded")  # a fresh package name: nothing cached in this process
    (repo / "gitops.yaml").write_text((repo / "gitops.yaml").read_text().replace("package: plugins", "package: plugins_guarded"))
    monkeypatch.setenv("GITOPS_REPO_PLUGINS", "off")
    done = cli("show", "xor-tiny")
    assert done.exit_code == 1 and "GITOPS_REPO_PLUGINS=off" in done.output and "write token" in done.output
    assert cli("show", "diabetes-mlp").exit_code == 0  # models that don't use it still resolve
    assert not marker.exists()
    monkeypatch.delenv("GITOPS_REPO_PLUGINS")
    assert cli("show", "xor-tiny").exit_code == 0 and marker.exists()


def test_release_workflow_jobs_with_write_tokens_set_the_guard() -> None:
    import yaml

    for name in ("release.yml", "pr-train.yml"):
        doc = yaml.safe_load((REPO / ".github/workflows" / name).read_text())
        for job in doc["jobs"].values():
            writes = [k for k, v in (job.get("permissions") or {}).items() if v == "write"]
            steps_run_gitops = any("gitops" in str(s.get("run", "")) for s in job.get("steps", []))
            if writes and steps_run_gitops:
                assert job.get("env", {}).get("GITOPS_REPO_PLUGINS") == "off", (name, writes)


@pytest.mark.parametrize("case,message", [
    ("builtin", "collides with the built-in architecture 'mlp'"),
    ("symlink", "not a package folder"),
    ("no-table", "GITOPS_PLUGINS must map"),
])
def test_bad_repository_packages_are_clear_errors(tmp_path, monkeypatch, case, message) -> None:
    repo = tmp_path / f"repo-{case}"
    assert cli("init", str(repo)).exit_code == 0
    package = f"bad_{case.replace('-', '_')}"
    folder = repo / package
    if case == "symlink":
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "__init__.py").write_text("GITOPS_PLUGINS = {}\n")
        folder.symlink_to(outside)
    else:
        folder.mkdir()
        body = "" if case == "no-table" else textwrap.dedent("""
            from gitops.config.plugins import Plugin
            GITOPS_PLUGINS = {"architectures": [Plugin(name="mlp", description="Clash.", build=".m:M")]}
        """)
        (folder / "__init__.py").write_text(body)
    with (repo / "gitops.yaml").open("a") as fh:
        fh.write(f"plugins:\n  package: {package}\n")
    write_model(repo, "diabetes-mlp", REGRESSION)
    monkeypatch.chdir(repo)
    done = cli("validate")
    assert done.exit_code == 1 and message in done.output, done.output
    assert "Traceback" not in done.output


# each case replaces one entry of the example with code that raises where gitops calls it: the class
# refusing its parameters, the dataset function, the augmentation's per-batch function (inside the jitted
# train step) and the metric (traced in the first evaluation, where a Python `if` on a value fails)
BROKEN = {
    "architecture": ("model.py", "_Tiny = TinyLinear\n\n\nclass TinyLinear(_Tiny):\n"
                     "    def __init__(self, **kwargs):\n"
                     "        raise ValueError('pairwise needs two features')  # RAISES\n",
                     "ValueError: pairwise needs two features"),
    "dataset": ("data.py", "_xor = xor_blobs\n\n\ndef xor_blobs(params, root):\n"
                "    raise FileNotFoundError('blobs.csv')  # RAISES\n", "FileNotFoundError: blobs.csv"),
    "augmentation": ("augment.py", "_drop = feature_dropout\n\n\ndef feature_dropout(**params):\n"
                     "    def augment(key, x):\n        return x[:, :, 0]  # RAISES\n    return augment\n",
                     "IndexError: Too many indices"),
    "metric": ("metrics.py", "_brier = brier\n\n\ndef brier(outputs, labels):\n"
               "    if outputs.sum() > 0:  # RAISES\n        return _brier(outputs, labels)\n"
               "    return _brier(outputs, labels)\n", "TracerBoolConversionError"),
    # the model's forward pass: called by the training step, not through the registry
    "architecture-call": ("model.py", "_Tiny = TinyLinear\n\n\nclass TinyLinear(_Tiny):\n"
                          "    def __call__(self, x, *, rngs=None):\n"
                          "        raise RuntimeError('boom in call')  # RAISES\n",
                          "RuntimeError: boom in call"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_plugin_that_raises_is_one_error_naming_its_line_and_leaves_no_run_folder(repo, kind) -> None:
    file, code, message = BROKEN[kind]
    source = repo / "plugins" / file
    text = source.read_text() + "\n\n" + code
    source.write_text(text)
    line = text.splitlines().index(next(t for t in text.splitlines() if t.endswith("# RAISES"))) + 1
    commit_all(repo, f"a broken {kind}")
    for args in (["train", "xor-tiny"], ["train", "xor-tiny", "--dry-run"]):
        done = cli(*args)
        assert done.exit_code == 1 and isinstance(done.exception, SystemExit), (done.output, done.exception)
        assert f"failed at plugins/{file}:{line}: {message}" in done.output, done.output
        if kind == "architecture-call":  # raised in the step, outside the registry's calls: the package is named
            assert "error: plugin code of the repository plugin package plugins/ failed at" in done.output
        else:
            assert "GITOPS_PLUGINS of the repository package plugins/" in done.output
        if kind == "architecture":  # the file that named it
            assert done.output.startswith("error: models/xor-tiny/model.yaml: architecture 'tiny-linear': ")
        assert not list((repo / "runs").glob("xor-tiny/*")), "no run folder is left behind"


@pytest.mark.slow
def test_the_run_trained_for_a_planned_new_plugin_entry_has_the_plan_s_fingerprint(repo) -> None:
    """The train job (the PR's checkout, its plugins loaded) records the fingerprint the plan computed without
    them, and the run folder hashes to it again: the release after merging reuses the PR's run."""
    import subprocess
    import sys

    from gitops.registry import runs

    head = _pr_adding_an_architecture(repo, repo.parent / "imported")
    planned = {t["model"]: t for t in json.loads(cli("ci", "plan", "--base", "main", "--head", head).stdout)["train"]}
    git(repo, "switch", "-q", "new-entry")
    done = subprocess.run([sys.executable, "-c", "from gitops.cli import main; main()", "train", "xor-two"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trained = repo / "runs/xor-two" / planned["xor-two"]["fingerprint"]
    info = runs.read_run(trained)
    assert info.finished and info.training_fingerprint == planned["xor-two"]["training_fingerprint"]
    assert runs.recompute_fingerprint(info) == info.training_fingerprint


@pytest.mark.slow
def test_trains_releases_and_loads_with_the_repository_plugin(repo) -> None:
    import numpy as np

    import gitops

    done = cli("train", "xor-tiny")
    assert done.exit_code == 0, done.output
    run = next((repo / "runs/xor-tiny").iterdir())
    assert "plugins:" in (run / "config.resolved.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["test/brier"] < 0.1
    done = cli("release", "xor-tiny")
    assert done.exit_code == 0, done.output
    model = gitops.load("xor-tiny@v1.0.0")  # config.resolved.yaml carries the plugin hash: the fingerprint checks
    probs = model.predict(np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32))
    assert probs.argmax(-1).tolist() == [0, 1, 1, 0]


@pytest.mark.slow
def test_a_lower_is_better_plugin_metric_ranks_sweeps_and_reports_and_picks_the_checkpoint(repo) -> None:
    """`brier` is the plugin's metric, declared higher_is_better=False where it is registered (its name says
    nothing): successive halving, the sweep ranking, the best checkpoint and the report all follow that."""
    (repo / "models/xor-tiny/sweep.yaml").write_text(
        "method: grid\ntrials: 2\nmetric: val/brier\nparameters:\n"
        "  train.optimizer.learning_rate: {values: [1e-4, 5e-2]}\n")  # trial 0 barely learns, trial 1 does
    halved = cli("sweep", "xor-tiny", "--halving", "--json")
    assert halved.exit_code == 0, halved.output
    first = json.loads(halved.stdout)
    assert first["higher_is_better"] is False and first["best_trial"] == 1
    assert [(t["trial"], t["status"]) for t in first["trials"]] == [(1, "finished"), (0, "stopped")]
    resumed = cli("train", "xor-tiny", "--trial", "0", "--resume")  # the stopped trial, from its rung checkpoint
    assert resumed.exit_code == 0 and "resuming from step 100 of 200" in resumed.output, resumed.output
    done = cli("sweep", "xor-tiny", "--json")
    assert done.exit_code == 0, done.output
    swept = json.loads(done.stdout)
    assert [(t["trial"], t["status"]) for t in swept["trials"]] == [(1, "finished"), (0, "finished")]
    good, bad = (Path(t["run"]) for t in swept["trials"])
    assert swept["trials"][0]["value"] < swept["trials"][1]["value"]

    for run in (good, bad):  # the handed-on checkpoint is the lowest val/brier (ties: the later step)
        evals = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        evals = [r for r in evals if r["split"] == "val"]
        lowest = min(evals, key=lambda r: (r["brier"], -r["step"]))
        assert json.loads((run / "manifest.json").read_text())["checkpoint_step"] == lowest["step"]
        assert json.loads((run / "metrics.json").read_text())["val/brier"] == pytest.approx(lowest["brier"], rel=1e-5)
    assert evals[0]["brier"] != evals[-1]["brier"]

    def rows(run: Path, baseline: Path) -> tuple[int, dict]:
        shown = cli("report", str(run), "--baseline", str(baseline), "--json")
        return shown.exit_code, {r["metric"]: r for r in json.loads(shown.stdout)["models"][0]["metrics"]}

    code, better = rows(good, bad)
    assert code == 0 and better["val/brier"]["higher_is_better"] is False
    assert better["val/brier"]["status"] == better["test/brier"]["status"] == "better"
    code, worse = rows(bad, good)
    assert code == 1  # the release gate `test/brier max 0.1` fails for the run that barely learned
    assert worse["val/brier"]["status"] == "worse" and worse["test/brier"]["status"] == "failed"
