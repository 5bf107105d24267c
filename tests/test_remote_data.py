"""The `url` dataset against a real HTTP server on 127.0.0.1, and the pins of `file` datasets.

The server serves generated .npz bytes, counts requests per path and can answer 500 a given number of
times first. Training goes through the CLI (`gitops train`) in a temporary repository, with the data
cache in a temporary folder (`$GITOPS_DATA_CACHE`).
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gitops.cli import app
from gitops.errors import GitopsError, IntegrityError, ServiceError, UsageError
from gitops.learn import remote_data


def _npz_bytes(seed: int = 0, n: int = 240) -> bytes:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4)).astype(np.float32) + 2.5 * y[:, None]  # two separable blobs
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


class DataServer:
    """ThreadingHTTPServer on 127.0.0.1: `files` path -> bytes, `fail` path -> 500s still to send."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests[self.path] += 1
                if server.fail[self.path] > 0:
                    server.fail[self.path] -= 1
                    self.send_error(500, "try again")
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "no such file")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = DataServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


@pytest.fixture
def data_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "data-cache"
    monkeypatch.setenv(remote_data.CACHE_ENV, str(cache))
    monkeypatch.setenv(remote_data.BACKOFF_ENV, "0.01")
    monkeypatch.setenv(remote_data.RETRIES_ENV, "3")
    for proxy in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    return cache


def _write_model(repo: Path, name: str, dataset: str) -> None:
    folder = repo / "models" / name
    folder.mkdir(parents=True)
    files = {
        "model.yaml": "architecture: mlp\nhidden_sizes: [16]\n",
        "train.yaml": "seed: 0\nbatch_size: 32\nsteps: 60\noptimizer:\n  name: adam\n  learning_rate: 1e-2\n"
                      "eval_every: 30\nlog_every: 30\ncheckpoint:\n  every_steps: 60\n",
        "data.yaml": f"dataset:\n{dataset}splits:\n  validation: 0.2\n  test: 0.2\n",
    }
    for file, text in files.items():
        kind = file.removesuffix(".yaml")
        (folder / file).write_text(f"# yaml-language-server: $schema=../../schemas/{kind}.schema.json\n{text}")


def _url_model(repo: Path, url: str, sha: str, name: str = "remote-mlp") -> None:
    _write_model(repo, name, f"  name: url\n  url: {url}\n  sha256: {sha}\n")


def _train(repo: Path, *args: str):
    return CliRunner().invoke(app, ["train", *args, "--out", str(repo / "runs")])


def _manifests(repo: Path) -> list[Path]:
    return list((repo / "runs").glob("*/*/manifest.json"))


# --- end to end through `gitops train` ----------------------------------------------------------


@pytest.mark.slow
def test_right_hash_trains_and_a_second_run_reads_the_cache(example_repo, server, data_cache, monkeypatch):
    body = _npz_bytes()
    sha = hashlib.sha256(body).hexdigest()
    server.files["/d.npz"] = body
    _url_model(example_repo, server.url("/d.npz"), sha)
    monkeypatch.chdir(example_repo)
    assert CliRunner().invoke(app, ["validate", "models/remote-mlp"]).exit_code == 0

    done = _train(example_repo, "remote-mlp")
    assert done.exit_code == 0, done.output
    assert server.requests["/d.npz"] == 1
    assert (data_cache / sha).read_bytes() == body
    assert not list(data_cache.glob("*.part"))
    metrics = json.loads(next((example_repo / "runs").glob("remote-mlp/*/metrics.json")).read_text())
    assert metrics["test/accuracy"] > 0.9

    again = _train(example_repo, "remote-mlp", "--force")  # trains again, data from the cache
    assert again.exit_code == 0, again.output
    assert server.requests["/d.npz"] == 1


@pytest.mark.slow
def test_wrong_hash_is_refused_before_training(example_repo, server, data_cache, monkeypatch):
    body = _npz_bytes()
    actual = hashlib.sha256(body).hexdigest()
    server.files["/d.npz"] = body
    wrong = "ab" * 32
    _url_model(example_repo, server.url("/d.npz"), wrong)
    monkeypatch.chdir(example_repo)
    done = _train(example_repo, "remote-mlp")
    assert done.exit_code == 1, done.output
    assert "SHA-256 mismatch" in done.output and wrong in done.output and actual in done.output
    assert "Traceback" not in done.output
    assert not list((example_repo / "runs").glob("remote-mlp/*"))  # no run folder: the pin is checked first
    assert not data_cache.exists() or not any(data_cache.iterdir())  # nothing cached, no partial file


@pytest.mark.slow
def test_server_errors_until_the_retries_run_out_exit_3(example_repo, server, data_cache, monkeypatch):
    body = _npz_bytes()
    server.files["/d.npz"] = body
    server.fail["/d.npz"] = 100
    _url_model(example_repo, server.url("/d.npz"), hashlib.sha256(body).hexdigest())
    monkeypatch.chdir(example_repo)
    done = _train(example_repo, "remote-mlp")
    assert done.exit_code == 3, done.output
    assert "still failing after 3 attempts" in done.output and "HTTP 500" in done.output
    assert server.requests["/d.npz"] == 3
    assert _manifests(example_repo) == []


@pytest.mark.slow
def test_file_dataset_hash_mismatch_exits_1_before_training(example_repo, monkeypatch):
    body = _npz_bytes()
    (example_repo / "data").mkdir(exist_ok=True)  # the repository has a data/ folder too
    (example_repo / "data" / "d.npz").write_bytes(body)
    wrong = "cd" * 32
    _write_model(example_repo, "file-mlp", f"  name: file\n  path: data/d.npz\n  sha256: {wrong}\n")
    monkeypatch.chdir(example_repo)
    done = _train(example_repo, "file-mlp")
    assert done.exit_code == 1, done.output
    assert "SHA-256 mismatch" in done.output and wrong in done.output
    assert hashlib.sha256(body).hexdigest() in done.output
    assert not list((example_repo / "runs").glob("file-mlp/*"))


# --- fetch() on its own -----------------------------------------------------------------------------


def test_500s_then_success_is_retried_with_growing_waits(server, tmp_path):
    body = _npz_bytes(1)
    server.files["/r.npz"] = body
    server.fail["/r.npz"] = 2
    waits: list[float] = []
    path = remote_data.fetch(server.url("/r.npz"), hashlib.sha256(body).hexdigest(), cache=tmp_path,
                             attempts=4, backoff=0.5, sleep=waits.append)
    assert path.read_bytes() == body and server.requests["/r.npz"] == 3
    assert waits == [0.5, 1.0]


def test_cache_hit_makes_no_request_and_a_corrupt_copy_is_fetched_again(server, tmp_path):
    body = _npz_bytes(2)
    sha = hashlib.sha256(body).hexdigest()
    server.files["/c.npz"] = body
    remote_data.fetch(server.url("/c.npz"), sha, cache=tmp_path)
    remote_data.fetch(server.url("/other-name.npz"), sha, cache=tmp_path)  # same pin: same bytes, no request
    assert sum(server.requests.values()) == 1
    (tmp_path / sha).write_bytes(b"flipped bits")
    assert remote_data.fetch(server.url("/c.npz"), sha, cache=tmp_path).read_bytes() == body
    assert server.requests["/c.npz"] == 2


def test_not_found_is_an_answer_not_an_outage(server, tmp_path):
    with pytest.raises(GitopsError, match="HTTP 404") as info:
        remote_data.fetch(server.url("/missing.npz"), "0" * 64, cache=tmp_path, attempts=3, sleep=lambda s: None)
    assert info.value.exit_code == 1 and not isinstance(info.value, ServiceError)
    assert server.requests["/missing.npz"] == 1


def test_connection_refused_is_retried_then_service_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    with pytest.raises(ServiceError, match="still failing after 2 attempts") as info:
        remote_data.fetch(f"http://127.0.0.1:{port}/x.npz", "0" * 64, cache=tmp_path, attempts=2, backoff=0.1,
                          sleep=waits.append)
    assert info.value.exit_code == 3 and waits == [0.1]


def test_file_url_through_fsspec_and_mismatch(tmp_path):
    body = _npz_bytes(3)
    source = tmp_path / "src.npz"
    source.write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    cached = remote_data.fetch(source.as_uri(), sha, cache=tmp_path / "cache")
    assert cached == tmp_path / "cache" / sha and cached.read_bytes() == body
    with pytest.raises(IntegrityError, match=f"expected {'1' * 64}, got {sha}"):
        remote_data.fetch(source.as_uri(), "1" * 64, cache=tmp_path / "cache")
    with pytest.raises(GitopsError, match="FileNotFoundError"):
        remote_data.fetch((tmp_path / "nope.npz").as_uri(), sha, cache=tmp_path / "other")


@pytest.mark.parametrize("scheme,package", [("s3", "s3fs"), ("gs", "gcsfs")])
def test_cloud_schemes_name_the_package_to_install(tmp_path, scheme, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(UsageError, match=f"pip install {package}"):
        remote_data.fetch(f"{scheme}://bucket/data.npz", "0" * 64, cache=tmp_path)


def test_url_dataset_loads_npy_tables_too(server, data_cache):
    from gitops.learn import data

    table = np.concatenate([np.random.default_rng(0).normal(size=(50, 3)), np.arange(50)[:, None] % 2], axis=1)
    buffer = io.BytesIO()
    np.save(buffer, table)
    server.files["/t.npy"] = buffer.getvalue()
    params = {"name": "url", "url": server.url("/t.npy"), "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
              "x_key": "x", "y_key": "y", "task": "classification"}
    cfg = {"dataset": params, "splits": {"validation": 0.2, "test": 0.2, "seed": 0},
           "preprocessing": {"scale": "none"}, "augmentation": []}
    ds = data.load(cfg, data_cache)
    assert ds.train.x.shape[1:] == (3,) and ds.preprocessing.num_classes == 2
