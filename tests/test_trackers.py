"""Experiment trackers: TensorBoard event files and a real MLflow tracking server, fed from real runs.

The MLflow server (`mlflow server`, SQLite backend store, local artifact root, on 127.0.0.1) starts once
per session; the server-kill test starts a second one of its own. Runs are the session's trained
example runs (tests/conftest.py), copied into a fresh repository, or trained for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from loop_support import commit_all
from typer.testing import CliRunner

from gitops import config, trackers
from gitops.cli import app
from gitops.config import settings
from gitops.errors import ConfigError, GitopsError
from gitops.registry.runs import RunFolder, read_json
from gitops.repo.tree import FsTree

MODEL = "wine-mlp"
MLFLOW = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
FAST_RETRIES = "    attempts: 3\n    backoff_s: 0.05\n    timeout_s: 5\n"


# --- a real MLflow server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group (it starts helper processes: all are stopped together)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health within 120 s")

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the whole process group; SIGKILL what is left after 10 s. Returns once the port is closed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # helpers of the group that outlived the parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.1)
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def repo(example_repo, trained_examples, monkeypatch):
    """The example repository with the session's trained wine-mlp run under runs/ (no retraining)."""
    source = trained_examples[MODEL]
    shutil.copytree(source, example_repo / "runs" / MODEL / source.name)
    monkeypatch.chdir(example_repo)
    for var in ("MLFLOW_TRACKING_URI", "GITHUB_EVENT_PATH", "GITOPS_PR", "GITHUB_ACTIONS"):
        monkeypatch.delenv(var, raising=False)
    return example_repo


def _settings(repo: Path, text: str) -> None:
    (repo / "gitops.yaml").write_text(text, encoding="utf-8")
    commit_all(repo, "trackers")


def _run_dir(repo: Path) -> Path:
    return next((repo / "runs" / MODEL).iterdir())


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def read_events(folder: Path) -> list:
    """Every Event of the TFRecord files under `folder` (tensorboardX's protobufs; the format is
    length, masked CRC of the length, data, masked CRC of the data)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            events.append((path.parent.name, event))
            i += 12 + length + 4
    return events


# --- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, where, message", [
    ("trackers:\n  - name: wandb\n", "trackers[0].name", "tensorboard"),
    ("trackers:\n  - name: mlflow\n  - name: mlflow\n", "trackers[1].name", "listed twice"),
    ("trackers:\n  - name: tensorboard\n    tracking_uri: http://x\n", "trackers[0].tracking_uri", "not an option"),
    ("trackers:\n  - name: tensorboard\n    logdir: ../outside\n", "trackers[0].logdir", ""),
    ("trackers:\n  - name: mlflow\n    attempts: 0\n", "trackers[0].attempts", ""),
])
def test_bad_tracker_settings_are_positioned_errors(tmp_path, text, where, message):
    (tmp_path / "gitops.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        settings.load_settings(FsTree(tmp_path))
    problem = caught.value.problems[0]
    assert problem.path == where and problem.line >= 2 and problem.file.endswith("gitops.yaml")
    assert message in problem.message


def test_trackers_never_change_fingerprints(example_repo, monkeypatch):
    monkeypatch.chdir(example_repo)
    before = config.load(MODEL, example_repo)
    (example_repo / "gitops.yaml").write_text("trackers:\n  - name: mlflow\n    experiment_prefix: team-\n"
                                              "  - name: tensorboard\n", encoding="utf-8")
    after = config.load(MODEL, example_repo)
    assert (before.training_fingerprint, before.release_fingerprint) == \
        (after.training_fingerprint, after.release_fingerprint)
    assert [s.name for s in settings.load_settings(FsTree(example_repo)).trackers] == ["mlflow", "tensorboard"]


def test_missing_extra_names_it_and_exits_1(repo, monkeypatch):
    _settings(repo, "trackers:\n  - name: mlflow\n")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: import and find_spec fail
    result = cli("train", MODEL, code=1)
    assert "pip install 'gitops-nn[mlflow]'" in result.output and "Traceback" not in result.output
    cli("train", MODEL, "--no-track")  # the way out without the extra
    with pytest.raises(GitopsError, match=r"gitops-nn\[mlflow\]"):
        trackers.specs_for(repo)


def test_track_without_trackers_is_a_usage_error(repo):
    assert "lists no trackers" in cli("train", MODEL, "--track", code=2).output
    assert "no trackers" in cli("track", MODEL, code=2).output
    cli("track", code=2)  # neither MODEL nor --all


# --- TensorBoard ---------------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_run(repo):
    _settings(repo, "trackers:\n  - name: tensorboard\n")
    run = _run_dir(repo)
    cli("train", MODEL, "--no-track")
    assert not (run / "tensorboard").exists() and "trackers" not in RunFolder(run).manifest

    out = cli("train", MODEL).output  # a cache hit is sent too
    assert "tensorboard: logged" in out
    assert RunFolder(run).manifest["trackers"]["tensorboard"]["status"] == "logged"
    events = read_events(run / "tensorboard")
    scalars = {(v.tag, e.step): v.simple_value for d, e in events if d == "tensorboard" for v in e.summary.value
               if v.WhichOneof("value") == "simple_value"}
    history = RunFolder(run).history()
    assert history
    for record in history:
        for key in ("loss", "accuracy"):
            assert scalars[(f"{record['split']}/{key}", record["step"])] == pytest.approx(record[key], rel=1e-6)
    train_steps = sorted(s for (tag, s) in scalars if tag == "train/loss")
    assert train_steps == [r["step"] for r in RunFolder(run).history("train")]
    texts = {v.tag: v.tensor.string_val[0].decode() for _, e in events for v in e.summary.value if v.tensor.string_val}
    assert "hidden/0/kernel" in texts["model/summary/text_summary"]
    assert RunFolder(run).manifest["training_fingerprint"] in texts["gitops/run/text_summary"]
    final = {v.tag: v.simple_value for d, e in events if d == "hparams" for v in e.summary.value
             if v.WhichOneof("value") == "simple_value"}
    metrics = RunFolder(run).metrics
    assert final["final/test/accuracy"] == pytest.approx(metrics["test/accuracy"], rel=1e-6)
    hparams = [v for d, e in events if d == "hparams" for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    assert hparams, "no hyperparameters were written"

    files = sorted(p.name for p in (run / "tensorboard").rglob("events.*"))
    out = cli("track", MODEL).output  # backfill again: matched, not rewritten
    assert "tensorboard: matched" in out
    assert sorted(p.name for p in (run / "tensorboard").rglob("events.*")) == files


# --- MLflow ------------------------------------------------------------------------------------------


def test_mlflow_run_release_stages_report(repo, mlflow_server, monkeypatch):
    prefix = "t1-"
    _settings(repo, f"trackers:\n  - name: mlflow\n    experiment_prefix: {prefix}\n{FAST_RETRIES}")
    user_uri = mlflow_server.url.replace("http://", "http://someone:s3cret-pass@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user_uri)
    monkeypatch.setenv("GITOPS_PR", "42")
    run = _run_dir(repo)
    out = cli("train", MODEL).output
    assert "mlflow: logged http://127.0.0.1" in out and "s3cret" not in out
    record = RunFolder(run).manifest["trackers"]["mlflow"]
    assert "s3cret" not in json.dumps(record) and record["target"] == mlflow_server.url

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name(f"{prefix}{MODEL}")
    [found] = client.search_runs([experiment.experiment_id])
    manifest = RunFolder(run).manifest
    assert found.info.run_id == record["run_id"] and found.info.status == "FINISHED"
    tags = found.data.tags
    assert tags["gitops.training_fingerprint"] == manifest["training_fingerprint"]
    assert tags["gitops.release_fingerprint"] == manifest["release_fingerprint"]
    assert tags["mlflow.source.git.commit"] == manifest["git_commit"] and tags["gitops.pr"] == "42"
    resolved = config.load(MODEL, repo).as_dict()
    assert found.data.params["train.optimizer.learning_rate"] == str(resolved["train"]["optimizer"]["learning_rate"])
    assert found.data.params["model.hidden_sizes"] == json.dumps(resolved["model"]["hidden_sizes"], separators=(",", ":"))
    losses = client.get_metric_history(found.info.run_id, "train/loss")
    expected = [(r["step"], r["loss"]) for r in RunFolder(run).history("train")]
    got = sorted((m.step, m.value) for m in losses)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert found.data.metrics["test/accuracy"] == pytest.approx(RunFolder(run).metrics["test/accuracy"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "gitops")}
    assert {"gitops/history.jsonl", "gitops/manifest.json", "gitops/config.resolved.yaml"} <= artifacts

    # the report links the run
    report = cli("report", str(run), "--json-out", "report.json").output
    assert f"[MLflow run]({mlflow_server.url}/#/experiments/{experiment.experiment_id}/runs/{found.info.run_id})" in report
    from gitops.registry.report import validate_report_json

    data = validate_report_json(Path("report.json").read_text(), head_sha=None, pr=42)
    assert data["models"][0]["trackers"] == [{"name": "mlflow", "url": record["url"]}]

    # release -> a model version; stages -> aliases (reserved names mapped), demote removes
    cli("release", MODEL)
    name = f"{prefix}{MODEL}"
    [mv] = client.search_model_versions(f"name = '{name}'")
    assert mv.tags["gitops.version"] == "v1.0.0" and mv.run_id == found.info.run_id
    assert client.get_run(found.info.run_id).data.tags["gitops.version"] == "v1.0.0"
    cli("promote", f"{MODEL}@v1.0.0", "--to", "production")
    cli("promote", f"{MODEL}@v1.0.0", "--to", "v2")
    assert client.get_registered_model(name).aliases == {"production": mv.version, "stage_v2": mv.version}
    cli("demote", MODEL, "--from", "v2")
    assert client.get_registered_model(name).aliases == {"production": mv.version}
    cli("promote", f"{MODEL}@v1.0.0", "--to", "staging", "--no-track")  # tags stay the source...
    assert "staging" not in client.get_registered_model(name).aliases
    out = cli("track", MODEL).output  # ...and a backfill brings MLflow back in step, duplicating nothing
    assert f"{MODEL}@v1.0.0 -> mlflow: matched" in out
    assert client.get_registered_model(name).aliases == {"production": mv.version, "staging": mv.version}
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


def test_backfill_sends_old_runs_and_releases_once(repo, mlflow_server, monkeypatch):
    prefix = "t2-"
    cli("release", MODEL)  # released and promoted before any tracker was configured
    cli("promote", f"{MODEL}@v1.0.0", "--to", "v2")  # a stage name MLflow reserves for its own aliases
    _settings(repo, f"trackers:\n  - name: mlflow\n    experiment_prefix: {prefix}\n{FAST_RETRIES}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    client, name = mlflow_server.client(), f"{prefix}{MODEL}"
    for attempt in range(2):
        out = cli("track", "--all").output
        assert f"{MODEL}/{_run_dir(repo).name} -> mlflow: {'logged' if attempt == 0 else 'matched'}" in out
        experiment = client.get_experiment_by_name(name)
        [found] = client.search_runs([experiment.experiment_id])
        [mv] = client.search_model_versions(f"name = '{name}'")
        assert mv.run_id == found.info.run_id and mv.tags["gitops.version"] == "v1.0.0"
        assert client.get_registered_model(name).aliases == {"stage_v2": mv.version}
    # a run cut off half way (no completion tag) is replaced, not duplicated
    client.delete_tag(found.info.run_id, "gitops.logged")
    cli("track", MODEL)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id != found.info.run_id
    assert runs[0].data.tags["gitops.logged"] == "1"


def test_server_killed_mid_run_keeps_the_run_and_records_the_skip(example_repo, tmp_path, monkeypatch,
                                                                  mlflow_server):
    """Train for real; the MLflow server dies at the first logged step. The run finishes, TensorBoard
    still gets it, MLflow is retried then recorded as skipped; a backfill later sends it."""
    from gitops.commands import training

    monkeypatch.chdir(example_repo)
    _settings(example_repo, f"trackers:\n  - name: tensorboard\n  - name: mlflow\n{FAST_RETRIES}")
    server = MlflowServer(tmp_path / "doomed")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url.replace("://", "://someone:s3cret-pass@"))

        class KillAtFirstLog(training.PlainReporter):
            killed_at: int | None = None

            def log(self, step, record, steps_per_second):
                if KillAtFirstLog.killed_at is None:
                    server.stop(signal.SIGKILL)
                    KillAtFirstLog.killed_at = step
                super().log(step, record, steps_per_second)

        monkeypatch.setattr(training, "_reporter", KillAtFirstLog)
        result = CliRunner().invoke(app, ["train", MODEL])
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    run = _run_dir(example_repo)
    manifest = RunFolder(run).manifest
    assert KillAtFirstLog.killed_at is not None and KillAtFirstLog.killed_at < manifest["steps_done"]
    assert manifest["finished_at"] and read_json(run / "metrics.json")["test/accuracy"] > 0
    skipped = manifest["trackers"]["mlflow"]
    assert skipped["status"] == "skipped" and skipped["attempts"] == 3 and skipped["warning"]
    assert manifest["trackers"]["tensorboard"]["status"] == "logged"
    assert "warning: tracker mlflow: skipped run" in result.output
    assert "s3cret" not in result.output and "s3cret" not in json.dumps(manifest)

    # with the server still down, a backfill says so and exits 3; against a live server it sends the run
    assert "could not be sent" in cli("track", MODEL, code=3).output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    _settings(example_repo, f"trackers:\n  - name: mlflow\n    experiment_prefix: t3-\n{FAST_RETRIES}")
    assert "mlflow: logged" in cli("track", MODEL).output
    assert RunFolder(run).manifest["trackers"]["mlflow"]["status"] == "logged"
    assert len(mlflow_server.client().search_runs([mlflow_server.client().get_experiment_by_name(
        f"t3-{MODEL}").experiment_id])) == 1


def test_tensorboard_logdir_option_and_no_symlink_out(repo, tmp_path):
    _settings(repo, "trackers:\n  - name: tensorboard\n    logdir: tb\n")
    run = _run_dir(repo)
    assert "tensorboard: logged" in cli("track", MODEL).output
    target = repo / "tb" / MODEL / run.name
    assert any(target.glob("events.out.tfevents.*")) and not (run / "tensorboard").exists()
    assert RunFolder(run).manifest["trackers"]["tensorboard"]["logdir"] == f"tb/{MODEL}/{run.name}"

    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "tb-link").symlink_to(outside)
    _settings(repo, "trackers:\n  - name: tensorboard\n    logdir: tb-link\n")
    result = cli("track", MODEL, code=3)
    assert "leads outside the repository" in result.output and not any(outside.iterdir())
    assert RunFolder(run).manifest["trackers"]["tensorboard"]["status"] == "skipped"
