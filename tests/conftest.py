"""Shared fixtures. The environment is set before anything imports jax:

- `JAX_PLATFORMS=cpu` and a persistent compilation cache in `<repo>/.jax_cache` (git-ignored), so
  test processes and CLI subprocesses share compiled steps;
- `trained_examples`: every example model in `models/` trained once per session (name -> run folder);
- `example_repo`: a fresh git repository (one commit on `main`) holding copies of models/ and schemas/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
os.environ.pop("GITOPS_RUN_CACHE", None)  # tests opt in explicitly

pytest_plugins = ["conftest_github"]


def example_model_names() -> list[str]:
    """Every example model; `GITOPS_TEST_EXAMPLES=a,b` limits `trained_examples` to those (.ci/lowest.sh)."""
    names = sorted(p.name for p in (REPO / "models").iterdir() if (p / "model.yaml").is_file())
    only = [n for n in os.environ.get("GITOPS_TEST_EXAMPLES", "").split(",") if n]
    return [n for n in names if n in only] if only else names


# Examples that take minutes to train: their own tests train a tiny variant (tests/test_language_model.py).
SLOW_EXAMPLES = frozenset({"stdlib-lm"})


@pytest.fixture(autouse=True)
def _no_plugin_package_left_in_view():
    """Each test starts with no repository's plugin package in view: one that resolved configs in a temporary
    repository (`gitops.config.plugins.use_repository`) would otherwise leave its package to the next test."""
    yield
    from gitops.config import plugins

    plugins.use_repository(None)
    plugins._root_of_cwd.clear()


@pytest.fixture(scope="session")
def trained_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each example model trained exactly once per session; name -> its finished run folder."""
    from gitops import config
    from gitops.learn import dispatch

    out = tmp_path_factory.mktemp("example-runs")
    runs: dict[str, Path] = {}
    for name in example_model_names():
        if name in SLOW_EXAMPLES:
            continue
        cfg = config.load(name, REPO)
        if cfg.train.start_from and "model" in cfg.train.start_from:
            continue  # starts from a release of this registry, which a test repository makes first (test_start_from.py)
        runs[name] = dispatch.train(cfg, out, root=REPO).run.path
    return runs


S3_BUCKET = "models"


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on a free 127.0.0.1 port, with the bucket S3_BUCKET; stopped at the end.
    Yields its endpoint URL (tests/test_artifact_store.py, tests/test_deploy_repo.py)."""
    pytest.importorskip("s3fs")
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return done.stdout


def _data_folders(folder: str, names: list[str]) -> list[str]:
    """Data files of the streaming examples (models/<name>/<subfolder>/): thousands of files that the
    loop tests, which reuse `trained_examples`' runs, never read; their checksum lists still travel."""
    here = Path(folder)
    return [n for n in names if here.parent.name == "models" and (here / n).is_dir()]


def make_example_repo(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for folder in ("models", "schemas", "data"):
        if (REPO / folder).is_dir():
            shutil.copytree(REPO / folder, target / folder, ignore=_data_folders)
    (target / ".gitignore").write_text("runs/\n.gitops/\n.jax_cache/\n", encoding="utf-8")
    git(target, "init", "-q", "-b", "main")
    git(target, "config", "user.name", "Test User")
    git(target, "config", "user.email", "test@example.com")
    git(target, "config", "commit.gpgsign", "false")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "initial models")
    return target


@pytest.fixture
def example_repo(tmp_path: Path) -> Path:
    """A temporary git repository (branch main, one commit) with the repository's models/ and schemas/."""
    return make_example_repo(tmp_path / "repo")


# Interrupted-training tests (SIGKILL, SIGINT, SIGTERM) resume this config and compare with one
# uninterrupted run of it: the best checkpoint by val/loss comes early (step 500), so a resume that loses
# it hands on another step and the comparison fails (issue 13, fault 2).
RESUME_OVERRIDES = ["train.steps=2000", "train.checkpoint.every_steps=100", "train.eval_every=500",
                    "train.log_every=50", "train.checkpoint.best_metric=val/loss"]


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run of RESUME_OVERRIDES (digits-mlp), trained once per session."""
    from gitops import config
    from gitops.learn import train

    folder = tmp_path_factory.mktemp("resume-reference") / "run"
    train.train_and_evaluate(config.load("digits-mlp", REPO, RESUME_OVERRIDES), folder, root=REPO)
    return folder


def assert_same_run(run: Path, reference: Path) -> None:
    """Same handed-on step, metrics.json and params (handed-on and last checkpoint), bit for bit."""
    import json

    import numpy as np

    from gitops.learn.checkpoint import restore_plain

    a_manifest = json.loads((run / "manifest.json").read_text())
    b_manifest = json.loads((reference / "manifest.json").read_text())
    assert a_manifest["checkpoint_step"] == b_manifest["checkpoint_step"]
    assert (run / "metrics.json").read_text() == (reference / "metrics.json").read_text()
    for step in {b_manifest["checkpoint_step"], b_manifest["steps"]}:
        a = restore_plain(run / "checkpoints" / str(step))
        b = restore_plain(reference / "checkpoints" / str(step))
        fa, fb = _flatten(a), _flatten(b)
        assert fa.keys() == fb.keys()
        for key in fa:
            assert np.array_equal(fa[key], fb[key]), (step, key)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    return {prefix: tree}
