"""`gitops serve`: TF Serving's REST shapes, bad input, dynamic batching, metrics, following a stage.

Request/response tests use Starlette's TestClient on a toy model (no jax, milliseconds); the real
model tests run uvicorn in a thread on 127.0.0.1 with a free port; the stage-following test drives a
real git repository whose stage tags are moved by `gitops promote`. Every request loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from gitops.serve.batcher import Batcher
from gitops.serve.follower import UNAVAILABLE, FixedSource, Follower, RegistrySource, ServingState
from gitops.serve.server import Limits, ModelServer, build, free_port
from gitops.serve.version import ServedVersion, Signature, bucket_for, buckets_for, version_number

with warnings.catch_warnings():  # starlette 1.x nudges towards httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
W = np.arange(6, dtype=np.float32).reshape(3, 2)


def toy(version: str = "v1.0.0", *, max_batch: int = 8, fn=None, calls: list | None = None) -> ServedVersion:
    def predict(x: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(x.shape[0])
        return x @ W if fn is None else fn(x)

    return ServedVersion("toy", version, Signature((3,), (2,), "classification", "probabilities"),
                         predict_fn=predict, training_fingerprint="ab" * 32, buckets=buckets_for(max_batch),
                         max_wait_s=0.002)


def toy_server(version: ServedVersion | None = None, *, limits: Limits = Limits(), stage: str | None = "production",
               load=None, source=None) -> ModelServer:
    version = version or toy()
    state = ServingState("toy", stage)
    follower = Follower(state, source or FixedSource(Path("/nowhere"), version.version),
                        load or (lambda folder, v: version), poll_seconds=0.05)
    return ModelServer(state, follower, limits=limits)


def wait_ready(client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("server never became ready")


@pytest.fixture
def client():
    with TestClient(toy_server().app) as c:
        wait_ready(c)
        yield c


# --- versions and buckets -------------------------------------------------------------------------


def test_version_numbers_and_buckets():
    assert version_number("v1.2.3") == 1002003
    assert version_number("1.0.0") == 1000000
    assert version_number("run-abc") == 0
    assert version_number("v2.0.0") > version_number("v1.999.999")
    assert buckets_for(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_for(24) == (1, 2, 4, 8, 16, 24)
    assert buckets_for(1) == (1,)
    assert [bucket_for(n, buckets_for(32)) for n in (1, 3, 17, 32)] == [1, 4, 32, 32]


# --- request and response shapes ------------------------------------------------------------------


def test_predict_row_columnar_named_and_version_paths(client):
    x = [[1, 2, 3], [4, 5, 6]]
    expected = (np.asarray(x, np.float32) @ W).tolist()
    r = client.post("/v1/models/toy:predict", json={"instances": x})
    assert r.status_code == 200 and r.json() == {"predictions": expected}
    assert r.headers["x-model-version"] == "v1.0.0" and r.headers["x-model-version-number"] == "1000000"
    assert client.post("/v1/models/toy:predict", json={"inputs": x}).json() == {"outputs": expected}
    named = {"instances": [{"inputs": row} for row in x], "signature_name": "serving_default"}
    assert client.post("/v1/models/toy:predict", json=named).json() == {"predictions": expected}
    for path in ("versions/1000000", "versions/v1.0.0", "versions/1.0.0", "labels/production"):
        r = client.post(f"/v1/models/toy/{path}:predict", json={"instances": x})
        assert r.status_code == 200, (path, r.text)
    # more instances than one batch: split into chunks, answered in order
    many = np.random.default_rng(0).normal(size=(37, 3)).round(3).tolist()
    got = client.post("/v1/models/toy:predict", json={"instances": many}).json()["predictions"]
    np.testing.assert_allclose(got, np.asarray(many, np.float32) @ W, rtol=1e-6)


def test_status_metadata_health(client):
    status = client.get("/v1/models/toy").json()
    assert status == {"model_version_status": [{"version": "1000000", "state": "AVAILABLE", "semver": "v1.0.0",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.get("/v1/models/toy/versions/1000000").status_code == 200
    assert client.get("/v1/models/toy/labels/production").status_code == 200
    meta = client.get("/v1/models/toy/metadata").json()
    assert meta["model_spec"] == {"name": "toy", "signature_name": "", "version": "1000000"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["inputs"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["inputs"]["tensor_shape"]["dim"]] == ["-1", "3"]
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "2"]
    assert meta["gitops"]["version"] == "v1.0.0" and meta["gitops"]["training_fingerprint"] == "ab" * 32
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["version"] == "v1.0.0"


BAD_BODIES = {
    "malformed json": b'{"instances": [[1, 2, 3]',
    "not an object": b"[[1, 2, 3]]",
    "empty body": b"",
    "neither key": b'{"examples": [[1, 2, 3]]}',
    "both keys": b'{"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}',
    "instances not a list": b'{"instances": 5}',
    "wrong width": b'{"instances": [[1, 2]]}',
    "wrong rank": b'{"instances": [[[1, 2, 3]]]}',
    "scalar columnar": b'{"inputs": 3}',
    "ragged": b'{"instances": [[1, 2, 3], [1, 2]]}',
    "nested ragged": b'{"instances": [[1, [2], 3]]}',
    "strings": b'{"instances": [["1", "2", "3"]]}',
    "string instance": b'{"instances": ["abc"]}',
    "booleans": b'{"instances": [[true, false, true]]}',
    "null": b'{"instances": [[null, 1, 2]]}',
    "object in row": b'{"instances": [[{"a": 1}, 1, 2]]}',
    "NaN literal": b'{"instances": [[NaN, 1, 2]]}',
    "Infinity literal": b'{"instances": [[Infinity, 1, 2]]}',
    "overflowing float": b'{"instances": [[1e400, 1, 2]]}',
    "beyond float32": b'{"instances": [[1e39, 1, 2]]}',
    "huge integer": b'{"instances": [[100000000000000000000000000000, 1, 2]]}',
    "empty instances": b'{"instances": []}',
    "unknown signature": b'{"instances": [[1, 2, 3]], "signature_name": "other"}',
    "bad named instance": b'{"instances": [{"x": [1, 2, 3]}]}',
    "deep nesting": b"[" * 50_000 + b"]" * 50_000,
    "not utf-8": b'{"instances": [[1, 2, \xff]]}',
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_requests_are_400_with_a_message(client, name):
    r = client.post("/v1/models/toy:predict", content=BAD_BODIES[name],
                    headers={"content-type": "application/json"})
    assert r.status_code == 400, (name, r.status_code, r.text)
    assert r.json()["error"]


def test_oversized_bodies_and_too_many_instances():
    limits = Limits(max_body_bytes=2000, max_instances=10)
    with TestClient(toy_server(limits=limits).app) as c:
        wait_ready(c)
        r = c.post("/v1/models/toy:predict", content=b'{"instances": [' + b"[1,2,3]," * 400 + b"[1,2,3]]}")
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: the streamed body is cut off at the limit
            for _ in range(100):
                yield b" " * 100

        r = c.post("/v1/models/toy:predict", content=chunks())
        assert r.status_code == 413
        r = c.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]] * 11})
        assert r.status_code == 413 and "at most 10" in r.json()["error"]
        assert c.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]] * 10}).status_code == 200


def test_unknown_model_version_label_route_method(client):
    body = {"instances": [[1, 2, 3]]}
    assert client.post("/v1/models/other:predict", json=body).status_code == 404
    assert client.post("/v1/models/toy/versions/2000000:predict", json=body).status_code == 404
    assert client.post("/v1/models/toy/versions/v9.9.9:predict", json=body).status_code == 404
    assert client.post("/v1/models/toy/labels/staging:predict", json=body).status_code == 404
    assert client.get("/v1/models/other").status_code == 404
    assert client.get("/v1/models/toy/versions/5").status_code == 404
    assert client.get("/v1/models/other/metadata").status_code == 404
    assert client.post("/v1/models/toy:classify", json=body).status_code == 404
    assert client.get("/v1/models/toy:predict").status_code == 405
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_not_ready_until_warm_and_load_failure_is_reported():
    release = threading.Event()

    def slow_load(folder, v):
        release.wait(10)
        return toy()

    with TestClient(toy_server(load=slow_load).app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]]}).status_code == 503
        assert c.get("/healthz").status_code == 200
        release.set()
        wait_ready(c)

    def broken(folder, v):
        raise OSError("checkpoint missing")

    with TestClient(toy_server(load=broken).app) as c:
        deadline = time.monotonic() + 10
        while c.get("/v1/models/toy").json()["model_version_status"][0]["state"] != UNAVAILABLE:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status = c.get("/v1/models/toy").json()["model_version_status"][0]
        assert "checkpoint missing" in status["status"]["error_message"]
        assert "checkpoint missing" in c.get("/readyz").json()["error"]


def test_a_model_failing_at_predict_time_is_a_500_json_and_the_server_survives():
    failed = []

    def flaky(x):
        if version.warmed and not failed:  # warm-up passes, then it fails once
            failed.append(1)
            raise RuntimeError("device lost")
        return x @ W

    version = toy(fn=flaky)
    with TestClient(toy_server(version).app) as c:
        wait_ready(c)
        r = c.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]]})
        assert r.status_code == 500 and "device lost" in r.json()["error"]
        assert c.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]]}).status_code == 200


def test_warm_up_rejects_wrong_shapes_and_non_finite_outputs():
    with pytest.raises(Exception, match="shape"):
        toy(fn=lambda x: x).warm()
    with pytest.raises(Exception, match="non-finite"):
        toy(fn=lambda x: (x @ W) * np.nan).warm()


def test_metrics_in_prometheus_text_format(client):
    client.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3]]})
    client.post("/v1/models/toy:predict", content=b"{")
    text = client.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"gitops_serve_requests", "gitops_serve_request_latency_seconds", "gitops_serve_batch_size",
            "gitops_serve_errors", "gitops_serve_model_version_info"} <= set(families)
    codes = {(s.labels["route"], s.labels["code"]) for s in families["gitops_serve_requests"].samples
             if s.name.endswith("_total")}
    assert ("predict", "200") in codes and ("predict", "400") in codes
    info = [s for s in families["gitops_serve_model_version_info"].samples if s.value == 1]
    assert info[0].labels["version"] == "v1.0.0" and info[0].labels["version_number"] == "1000000"
    client.post("/v1/models/toy:predict", json={"instances": [[1, 2, 3], [4, 5, 6]]})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}

    def value(family: str, sample: str, **labels) -> float:
        return next(s.value for s in families[family].samples if s.name == sample and s.labels == labels)

    # the predict path's loop metrics count what happened: two answered predicts of 1 and 2 rows
    assert value("gitops_serve_requests", "gitops_serve_requests_total", route="predict", code="200") == 2
    assert value("gitops_serve_requests", "gitops_serve_requests_total", route="predict", code="400") == 1
    assert value("gitops_serve_instances", "gitops_serve_instances_total") == 3
    assert value("gitops_serve_request_latency_seconds", "gitops_serve_request_latency_seconds_count",
                 route="predict") == 2
    assert value("gitops_serve_request_latency_seconds", "gitops_serve_request_latency_seconds_bucket",
                 route="predict", le="+Inf") == 2
    assert value("gitops_serve_batch_size", "gitops_serve_batch_size_sum") == 3
    assert value("gitops_serve_batch_size", "gitops_serve_batch_size_bucket", le="1.0") == 1


def test_predict_behind_a_path_prefix_and_in_any_json_encoding():
    """The predict path answered outside Starlette's routes gives the same answers through them
    (a proxy's root_path) and reads bodies as json.loads does (UTF-8 with a BOM, UTF-16)."""
    from gitops.serve.server import BadRequest, parse_json

    doc = {"instances": [[1, 2, 3]]}
    for body in (json.dumps(doc).encode(), b"\xef\xbb\xbf" + json.dumps(doc).encode(),
                 json.dumps(doc).encode("utf-16")):
        assert parse_json(body) == doc
    with pytest.raises(BadRequest, match="non-finite"):
        parse_json(b'{"instances": [[NaN, 1, 2]]}')
    with TestClient(toy_server().app, root_path="/api") as c:
        wait_ready(c)
        r = c.post("/api/v1/models/toy:predict", json=doc)
        assert r.status_code == 200 and r.headers["x-model-version"] == "v1.0.0", r.text
        np.testing.assert_allclose(r.json()["predictions"], np.asarray([[1, 2, 3]], np.float32) @ W, rtol=1e-6)
        r = c.post("/api/v1/models/toy:predict", content=b"{")
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


# --- dynamic batching -----------------------------------------------------------------------------


def test_batcher_groups_concurrent_requests_and_never_mixes_versions():
    calls: list[int] = []
    v1 = toy("v1.0.0", max_batch=8, fn=lambda x: np.full((x.shape[0], 2), 1.0, np.float32), calls=calls)
    v2 = toy("v2.0.0", max_batch=8, fn=lambda x: np.full((x.shape[0], 2), 2.0, np.float32), calls=calls)
    v1.max_wait_s = v2.max_wait_s = 0.02

    async def main():
        batcher = Batcher(on_batch=lambda rows: None)
        xs = [np.full((1 + i % 3, 3), i, np.float32) for i in range(40)]
        versions = [v1 if i < 13 or i % 2 else v2 for i in range(40)]
        outs = await asyncio.gather(*(batcher.submit(v, x) for v, x in zip(versions, xs, strict=True)))
        big = await batcher.submit(v2, np.zeros((30, 3), np.float32))  # 4 chunks, all on v2
        await batcher.close()
        return versions, xs, outs, big

    versions, xs, outs, big = asyncio.run(main())
    for v, x, y in zip(versions, xs, outs, strict=True):
        assert y.shape == (x.shape[0], 2)
        assert np.all(y == (1.0 if v is v1 else 2.0)), "a request got rows from another version"
    assert big.shape == (30, 2) and np.all(big == 2.0)
    assert len(calls) < 40  # batched: far fewer executions than requests
    assert all(c in buckets_for(8) for c in calls)  # always padded to a bucket


# --- a real model -----------------------------------------------------------------------------------


@contextlib.contextmanager
def live(server: ModelServer):
    """uvicorn in a thread on 127.0.0.1 and a free port; stopped on exit."""
    import uvicorn

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning",
                                       lifespan="on", access_log=False))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(15)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_serves_a_trained_run_like_loaded_predict(trained_examples):
    import httpx

    from gitops import api

    run = trained_examples["wine-mlp"]
    loaded = api.load(run)
    x = np.asarray(json.loads((run / "preprocessing.json").read_text())["shift"], np.float32)[None, :].repeat(5, 0)
    x = x * np.linspace(0.8, 1.2, 5, dtype=np.float32)[:, None]
    server = build(str(run), max_batch_size=8, max_wait_ms=1)
    with live(server) as url, httpx.Client(base_url=url, timeout=30) as http:
        wait_for(lambda: http.get("/readyz").status_code == 200, what="warm-up")
        assert server.state.current.warmed and server.state.current.buckets == (1, 2, 4, 8)
        r = http.post("/v1/models/wine-mlp:predict", json={"instances": x.tolist()})
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["predictions"], loaded.predict(x), rtol=1e-5, atol=1e-6)
        meta = http.get("/v1/models/wine-mlp/metadata").json()
        assert meta["gitops"]["training_fingerprint"] == loaded.config.training_fingerprint
        assert meta["gitops"]["signature"]["inputs"]["shape"] == [-1, 13]
        assert r.headers["x-model-version"] == f"run-{loaded.config.training_fingerprint[:12]}"
        assert http.post("/v1/models/wine-mlp:predict", json={"instances": [[1.0] * 12]}).status_code == 400


# --- following a stage in a real git repository -----------------------------------------------------


@pytest.fixture(scope="module")
def released_repo(trained_examples, tmp_path_factory):
    """A git repository with wine-mlp v1.0.0, v1.0.1 and v1.0.2 released locally (same run, patch bumps)."""
    from conftest import make_example_repo

    from gitops.api import release
    from gitops.backends.local import LocalBackend

    repo = make_example_repo(tmp_path_factory.mktemp("serve") / "repo")
    run = trained_examples["wine-mlp"]
    shutil.copytree(run, repo / "runs" / "wine-mlp" / run.name)
    backend = LocalBackend(repo)
    for i in range(3):
        if i:
            path = repo / "models" / "wine-mlp" / "release.yaml"
            path.write_text(path.read_text().replace("description: ", f"description: (rev {i}) ", 1))
            subprocess.run(["git", "-C", str(repo), "commit", "-qam", f"release.yaml rev {i}"], check=True)
        release(repo, backend, "wine-mlp")
    return repo


def promote(repo: Path, ref: str, stage: str, monkeypatch) -> None:
    from typer.testing import CliRunner

    from gitops.cli import app

    monkeypatch.chdir(repo)
    result = CliRunner().invoke(app, ["promote", ref, "--to", stage])
    assert result.exit_code == 0, result.output


def test_follows_a_stage_switches_under_load_refuses_bad_checksums_and_rolls_back(released_repo, monkeypatch):
    import httpx

    repo = released_repo
    promote(repo, "wine-mlp@v1.0.0", "production", monkeypatch)
    server = build("wine-mlp@production", root=repo, backend="local", max_batch_size=4, max_wait_ms=1,
                   poll_seconds=0.1)
    assert isinstance(server.follower.source, RegistrySource) and server.follower.source.follows
    row = [13.0, 2.4, 2.4, 19.7, 99.8, 2.2, 1.9, 0.37, 1.56, 5.4, 0.94, 2.5, 751.0]
    with live(server) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            wait_for(lambda: http.get("/readyz").status_code == 200, what="v1.0.0 warm")
            assert http.get("/readyz").json()["version"] == "v1.0.0"

        stop = threading.Event()
        results: list[list[tuple[int, str]]] = [[] for _ in range(4)]

        def client_loop(out: list) -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(3000):  # bounded; normally stopped well before
                    if stop.is_set():
                        return
                    r = http.post("/v1/models/wine-mlp/labels/production:predict",
                                  json={"instances": [row, row, row]})
                    out.append((r.status_code, r.headers.get("x-model-version", "")))

        threads = [threading.Thread(target=client_loop, args=(out,), daemon=True) for out in results]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(r) >= 3 for r in results), 30, "requests on v1.0.0")
            promote(repo, "wine-mlp@v1.0.1", "production", monkeypatch)
            wait_for(lambda: server.state.current.version == "v1.0.1", 60, "switch to v1.0.1")
            n = [len(r) for r in results]
            wait_for(lambda: all(len(r) >= k + 3 for r, k in zip(results, n, strict=True)), 30, "requests on v1.0.1")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        for out in results:
            assert all(code == 200 for code, _ in out), "a request failed during the switch"
            versions = [v for _, v in out]
            assert set(versions) <= {"v1.0.0", "v1.0.1"}
            assert versions == sorted(versions), "a client saw the old version after the new one"
        assert {v for out in results for _, v in out} == {"v1.0.0", "v1.0.1"}

        # A release whose archive fails its checksum is refused; v1.0.1 keeps serving.
        archive = repo / ".gitops" / "releases" / "wine-mlp" / "v1.0.2" / "wine-mlp-v1.0.2.tar.gz"
        archive.write_bytes(archive.read_bytes() + b"tampered")
        promote(repo, "wine-mlp@v1.0.2", "production", monkeypatch)
        with httpx.Client(base_url=url, timeout=30) as http:
            def refused() -> bool:
                states = {s["semver"]: s for s in http.get("/v1/models/wine-mlp").json()["model_version_status"]}
                return states.get("v1.0.2", {}).get("state") == UNAVAILABLE

            wait_for(refused, 60, "v1.0.2 refused")
            states = {s["semver"]: s for s in http.get("/v1/models/wine-mlp").json()["model_version_status"]}
            assert "checksum" in states["v1.0.2"]["status"]["error_message"]
            assert states["v1.0.1"]["state"] == "AVAILABLE" and states["v1.0.0"]["state"] == "END"
            r = http.post("/v1/models/wine-mlp:predict", json={"instances": [row]})
            assert r.status_code == 200 and r.headers["x-model-version"] == "v1.0.1"
            assert http.get("/readyz").status_code == 200
            assert "version_refused" in http.get("/metrics").text

            # Roll back by moving the stage tag: blue/green back to v1.0.0.
            promote(repo, "wine-mlp@v1.0.0", "production", monkeypatch)
            wait_for(lambda: server.state.current.version == "v1.0.0", 60, "roll back to v1.0.0")
            r = http.post("/v1/models/wine-mlp/versions/1000000:predict", json={"instances": [row]})
            assert r.status_code == 200 and r.headers["x-model-version"] == "v1.0.0"
            assert http.post("/v1/models/wine-mlp/versions/1000001:predict",
                             json={"instances": [row]}).status_code == 404


def test_serve_cli_rejects_unknown_refs_without_a_traceback(released_repo, monkeypatch):
    from typer.testing import CliRunner

    from gitops.cli import app

    monkeypatch.chdir(released_repo)
    for ref in ("wine-mlp@v9.0.0", "wine-mlp@canary", "no-such-model@production", "./missing-folder"):
        result = CliRunner().invoke(app, ["serve", ref, "--port", "0"])
        assert result.exit_code == 2, (ref, result.output)
        assert "Traceback" not in result.output


# --- the benchmark, as a smoke test -----------------------------------------------------------------


def test_benchmark_quick_prints_its_figures(trained_examples):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_latency.py"), "--quick",
                           "--run", str(trained_examples["wine-mlp"])],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in ("requests/s", "p50", "p99", "batch 1", "concurrency 16", "ratio"):
        assert figure in done.stdout, (figure, done.stdout)


def test_sigterm_stops_the_server_cleanly_with_exit_0(trained_examples, tmp_path):
    # Kubernetes stops a pod with SIGTERM: the server shuts down (uvicorn then re-raises the signal) and
    # the command says so, exit 0, no "error:" line
    import os
    import signal
    import urllib.request

    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "gitops.cli", "serve", str(trained_examples["wine-mlp"]),
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "not ready"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM): shut down cleanly" in err and "\nerror:" not in "\n" + err, err
