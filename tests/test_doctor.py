"""`gitops doctor` on this CPU machine: what passes, what it says is missing, and its exit codes."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gitops.cli import app
from gitops.errors import UsageError
from gitops.repo import doctor

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jaxcache"))
    for name in ("GITOPS_RUN_CACHE", "JAX_COORDINATOR_ADDRESS", "GITOPS_EXPECT_GPU"):
        monkeypatch.delenv(name, raising=False)


def test_cpu_machine_is_ready_without_gpu_expectation() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["devices"]["ok"] and "cpu" in checks["devices"]["detail"]
    assert "jax" in checks["packages"]["detail"]


def test_expecting_a_gpu_on_cpu_fails_with_the_fix() -> None:
    result = runner.invoke(app, ["doctor", "--expect-gpu"])
    assert result.exit_code == 1
    assert "FAIL devices" in result.stdout and "jax[cuda12]" in result.stdout


def test_env_expectation_matches_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITOPS_EXPECT_GPU", "true")
    assert runner.invoke(app, ["doctor"]).exit_code == 1


def test_unwritable_run_cache_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("GITOPS_RUN_CACHE", str(blocker / "cache"))  # a path through a file
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1 and "run cache" in result.stdout


def test_disk_threshold() -> None:
    result = runner.invoke(app, ["doctor", "--min-free-gib", "1e9"])
    assert result.exit_code == 1 and "at least" in result.stdout


def test_coordinator_reachability() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    def accept_once() -> None:
        try:
            server.accept()
        except OSError:  # closed by the test before a connection came
            pass

    threading.Thread(target=accept_once, daemon=True).start()
    try:
        assert doctor.check_coordinator(f"127.0.0.1:{port}", process_id=1).ok
    finally:
        server.close()
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))  # bound but never listening: connections are refused
    closed_port = unused.getsockname()[1]
    try:
        closed = doctor.check_coordinator(f"127.0.0.1:{closed_port}", process_id=1, timeout=0.5)
    finally:
        unused.close()
    assert not closed.ok and "cannot connect" in closed.detail
    assert doctor.check_coordinator("no-port", process_id=1).ok is False
    assert doctor.check_coordinator(f"127.0.0.1:{port}", process_id=0).ok


def test_cluster_check_reads_the_environment_like_train() -> None:
    from gitops.learn import parallel

    assert doctor.check_cluster({}) is None and parallel.cluster_from(env={}) is None
    partial = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}  # what train refuses, doctor fails
    check = doctor.check_cluster(partial)
    assert check is not None and not check.ok and "JAX_NUM_PROCESSES" in check.detail
    with pytest.raises(UsageError, match="missing"):
        parallel.cluster_from(env=partial)
    bad_id = {**partial, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}
    assert not doctor.check_cluster(bad_id).ok
    full = {**partial, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert parallel.cluster_from(env=full) == parallel.Cluster("127.0.0.1:1", 2, 0)
    ok = doctor.check_cluster(full)
    assert ok.ok and "process 0 of 2" in ok.detail
    # flags win over the environment, as in `gitops train --coordinator ...`
    assert parallel.cluster_from("10.0.0.1:9", 4, 3, env=full) == parallel.Cluster("10.0.0.1:9", 4, 3)
