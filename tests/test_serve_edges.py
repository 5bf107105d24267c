"""`gitops serve` at its edges (issue 14, fault 11; issue 17, fault 13): stalled clients on real
sockets, `GET /v1/models`, a busy port, the lone-client fast path, and one log format.

A toy model (no jax) behind the real ASGI app on uvicorn in a thread on 127.0.0.1; every socket has a
timeout, so no test can hang.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import numpy as np
import pytest
from test_serve import W, toy, toy_server, wait_for
from typer.testing import CliRunner

from gitops.cli import app
from gitops.serve.server import Limits, bind, make_uvicorn


@contextlib.contextmanager
def live(server, *, log_json: bool = False):
    """The server's own uvicorn set-up (`make_uvicorn`) in a thread on a bound 127.0.0.1 socket."""
    sock = bind("127.0.0.1", 0)
    uv = make_uvicorn(server, sock, log_level="info", log_json=log_json)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: uv.started, 30, "uvicorn to start")
    wait_for(lambda: server.state.ready, 30, "the toy version to warm")
    try:
        yield sock.getsockname()[1]
    finally:
        uv.should_exit = True
        thread.join(15)
        sock.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(10)
    return s


def _response(s: socket.socket) -> tuple[int, dict, dict]:
    """Read one HTTP/1.1 response (status, headers, JSON body); the server closes or sends a length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, json.loads(body) if body else {}


def _stall(port: int, declared: int, sent: int) -> socket.socket:
    s = _connect(port)
    s.sendall(f"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {declared}\r\n\r\n".encode() + b" " * sent)
    return s


def test_stalled_bodies_get_408_and_cannot_pin_more_than_the_in_flight_budget():
    limits = Limits(max_body_bytes=400_000, body_timeout_s=1.0, max_inflight_body_bytes=700_000)
    server = toy_server(limits=limits)
    with live(server) as port:
        stalled = [_stall(port, 300_000, 200_000), _stall(port, 300_000, 250_000)]  # 600,000 reserved
        wait_for(lambda: server.bodies.held == 600_000, 10, "both bodies to be reserved")
        extra = _stall(port, 300_000, 10)  # would pass 700,000: refused at once, not after the deadline
        status, headers, body = _response(extra)
        assert status == 503 and headers.get("retry-after") == "1" and "retry later" in body["error"]
        # meanwhile a normal client is served
        ok = _connect(port)
        payload = json.dumps({"instances": [[1, 2, 3]]}).encode()
        ok.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload)
                   + payload)
        status, headers, body = _response(ok)
        assert status == 200 and np.allclose(body["predictions"], [[1, 2, 3]] @ W)
        for s in stalled:  # the deadline answers the stalled ones with a JSON 408 and closes them
            status, headers, body = _response(s)
            assert status == 408 and "not received within 1 s" in body["error"]
            assert headers.get("connection") == "close"
            assert s.recv(1) == b""  # closed by the server
        assert server.bodies.held == 0
        metrics = socket.create_connection(("127.0.0.1", port), timeout=10)
        metrics.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := metrics.recv(65536):
            text += chunk
        assert b'gitops_serve_errors_total{kind="timeout"} 2.0' in text
        for s in [*stalled, extra, ok, metrics]:
            s.close()


def test_get_v1_models_is_one_json_404():
    from starlette.testclient import TestClient

    with TestClient(toy_server().app, follow_redirects=False) as c:
        for path in ("/v1/models", "/v1/models/", "/v1", "/nothing/here/"):
            r = c.get(path)
            assert r.status_code == 404 and "error" in r.json(), (path, r.status_code, r.text)
        assert "no model list" in c.get("/v1/models").json()["error"]


def test_a_busy_port_fails_at_once_with_one_line_before_anything_is_resolved(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        # an unknown model: resolving it first would say so; binding first says the port is busy
        result = CliRunner().invoke(app, ["serve", "no-such-model@production", "--port", str(port)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"], lines


def test_a_lone_small_request_runs_inline_and_concurrent_ones_still_batch():
    calls: list[int] = []
    version = toy(max_batch=8, calls=calls)
    server = toy_server(version)
    with live(server) as port:
        import httpx

        url = f"http://127.0.0.1:{port}/v1/models/toy:predict"
        with httpx.Client(timeout=10) as http:
            assert version.predict_seconds and all(t >= 0 for t in version.predict_seconds.values())
            before = len(calls)
            assert http.post(url, json={"instances": [[1, 2, 3]]}).status_code == 200
            assert calls[before:] == [1]  # one predict of one row, no padding
        assert server.batcher._executor._threads == set()  # never used: no thread hop for a lone client



def test_requests_arriving_together_still_share_one_batch():
    """The inline path is for a lone client only: requests that arrive together are batched."""
    import asyncio

    calls: list[int] = []
    version = toy(max_batch=8, calls=calls)
    server = toy_server(version)
    server.follower.check_once()  # load and warm now (no lifespan in a bare ASGI call)
    body = json.dumps({"instances": [[1, 2, 3]]}).encode()

    async def call() -> int:
        sent: list[dict] = []
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(30)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/models/toy:predict", "raw_path": b"/v1/models/toy:predict",
                 "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        await server.app(scope, receive, send)
        return sent[0]["status"]

    async def main() -> list[int]:
        before = len(calls)
        statuses = await asyncio.wait_for(asyncio.gather(*(call() for _ in range(8))), 30)
        await server.batcher.close()
        return statuses, calls[before:]

    statuses, batches = asyncio.run(main())
    assert statuses == [200] * 8
    assert batches == [8], batches  # one padded batch of 8, not eight inline calls


def test_serve_logs_ours_and_uvicorns_lines_in_one_json_format(capfd):
    server = toy_server()
    with live(server, log_json=True):
        pass
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line, uvicorn's included, is one JSON object
    loggers = {d["logger"] for d in docs}
    assert "uvicorn.error" in loggers and "gitops.serve" in loggers, loggers
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert any("Uvicorn running" in d["message"] or "Application startup complete" in d["message"] for d in docs)


@pytest.fixture(autouse=True)
def _quiet_logging():
    """Each test starts and ends with no serve handlers left from another test."""
    import logging

    from gitops import logs

    yield
    for name in logs.SERVE_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, "_gitops_owned", False):
                logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    time.sleep(0)
