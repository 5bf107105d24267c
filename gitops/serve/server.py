"""The ASGI app of `gitops serve`: TF Serving's REST API over one model, batched and followed.

Routes (TF Serving's shapes, https://www.tensorflow.org/tfx/serving/api_rest):

    POST /v1/models/<name>[/versions/<v> | /labels/<stage>]:predict   {"instances": [...]} | {"inputs": ...}
    GET  /v1/models/<name>[/versions/<v> | /labels/<stage>]           {"model_version_status": [...]}
    GET  /v1/models/<name>[/versions/<v> | /labels/<stage>]/metadata  signature, version, fingerprint
    GET  /healthz   the process answers          GET /readyz   a warmed version is serving (else 503)
    GET  /metrics   Prometheus text format

A model trained on an image folder also takes image files, as TF Serving's REST API sends binary
data: `{"instances": [{"b64": "<base64 of a PNG/JPEG>"}, ...]}` (or `{"inputs": [{"b64": ...}]}`),
each decoded and resized like the training images (`decode_images`), off the event loop.

Every request failure is a JSON `{"error": "..."}` with a 4xx code (any other path too, `GET
/v1/models` included: TF Serving has no model list); a 500 means the model itself failed. Each
predict response names the version that computed it in `X-Model-Version`.

Edges (`Limits`): a body must arrive whole within `body_timeout_s` (else 408 and the connection is
closed: a stalled client cannot hold its bytes for ever); bodies being received or parsed at once may
hold at most `max_inflight_body_bytes` (else 503 with Retry-After), so memory stays bounded whatever
the number of slow clients; uvicorn's `limit_concurrency` caps connections plus requests
(`max_connections`), generously, so long-lived streaming responses keep their room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gitops import jsonio
from gitops.errors import UsageError
from gitops.serve.batcher import Batcher, Overloaded
from gitops.serve.follower import Follower, ServingState
from gitops.serve.metrics import ServerMetrics
from gitops.serve.version import ServedVersion, Signature

log = logging.getLogger("gitops.serve")

_PATH_RE = re.compile(  # fullmatch only: `$` would also match before a final newline
    r"(?P<name>[^/:]+)(?:/(?P<kind>versions|labels)/(?P<sel>[^/:]+))?(?P<tail>/metadata|:[a-z]+)?"
)


LONE_GAP_S = 0.005  # another connection's predict this recent means several clients are sending


@dataclass(frozen=True)
class Limits:
    """What requests may carry and hold; beyond these a JSON 413, 408, 503 or 400, never a crash.

    Attributes:
        max_body_bytes: largest body of one request (413 above).
        max_instances: most instances in one request (413 above).
        max_image_pixels: largest image (width x height) a `{"b64": ...}` instance may hold; checked
            from its header, before its pixels are decoded (400 above).
        body_timeout_s: seconds a request's body may take to arrive, from its first read (408 after;
            TF Serving's REST timeout, `--rest_api_timeout_in_ms`, defaults to 30 s for a whole request).
        max_inflight_body_bytes: bytes of bodies being received or parsed at one time across all
            requests (503 above): the memory slow clients can pin.
        max_connections: uvicorn's `limit_concurrency` (connections plus running requests; plain
            503 above it); room for long-lived streaming responses.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_instances: int = 1024
    max_image_pixels: int = 4096 * 4096
    body_timeout_s: float = 30.0
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    max_connections: int = 2048


class BadRequest(Exception):
    """A request the server refuses; `status` is the HTTP code answered (400 unless told: 408, 413, 503)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The JSON error response every failure uses: `{"error": message}` with `status` (TF Serving's shape)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- request parsing ------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise BadRequest(f"non-finite number {name} in the request (inputs must be finite)")


# One decoder for every request: `json.loads(body, parse_constant=...)` would build a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(body: bytes) -> Any:
    """The decoded JSON body of a request (UTF-8, -16 or -32, as `json.loads` reads bytes).

    Raises BadRequest (400) for an empty body, malformed JSON, nesting too deep for Python's parser,
    or a NaN/Infinity literal (inputs must be finite).
    """
    if not body.strip():
        raise BadRequest("empty request body; send {\"instances\": [...]} or {\"inputs\": ...}")
    try:
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def _tensor(value: Any, what: str) -> np.ndarray:
    if isinstance(value, dict):
        if set(value) != {"inputs"}:
            raise BadRequest(f"{what}: named inputs must be exactly {{\"inputs\": ...}} (got {sorted(value)})")
        value = value["inputs"]
    if isinstance(value, (str, bytes)) or value is None:
        raise BadRequest(f"{what} must be numbers, not {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{what} is ragged or mixes types (every instance needs the same shape)") from None
    if arr.dtype.kind not in "iuf":
        kinds = {"b": "booleans", "U": "strings", "S": "strings", "O": "null, objects, mixed or huge values"}
        raise BadRequest(f"{what} must be numbers (got {kinds.get(arr.dtype.kind, arr.dtype.name)})")
    return arr


def parse_inputs(payload: Any, signature: Signature, limits: Limits) -> tuple[np.ndarray, str]:
    """Validate a predict body against the signature.

    Returns:
        (float32 array of shape (n, *input_shape), "predictions" for row format or "outputs" for columnar).
    """
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object with \"instances\" or \"inputs\"")
    keys = set(payload) - {"signature_name"}
    if payload.get("signature_name", "serving_default") not in ("serving_default", ""):
        raise BadRequest(f"unknown signature_name {payload['signature_name']!r}; this model has serving_default")
    if keys == {"instances"}:
        raw, out_key, what = payload["instances"], "predictions", "instances"
        if not isinstance(raw, list):
            raise BadRequest("\"instances\" must be a list (one entry per instance)")
        if raw and all(isinstance(r, dict) and set(r) != {"b64"} for r in raw):
            raw = [_single_named(r) for r in raw]
    elif keys == {"inputs"}:
        raw, out_key, what = payload["inputs"], "outputs", "inputs"
    else:
        raise BadRequest("the body needs exactly one of \"instances\" (row format) or \"inputs\" (columnar); "
                         f"got {sorted(payload) or 'nothing'}")
    if isinstance(raw, list) and raw and all(_is_b64(r) for r in raw):
        if len(raw) > limits.max_instances:
            raise BadRequest(f"{len(raw)} instances in one request; at most {limits.max_instances}", 413)
        return decode_images(raw, signature, limits, what), out_key
    arr = _tensor(raw, what)
    if arr.ndim == 0:
        raise BadRequest(f"{what} needs a batch dimension: a list of instances")
    n = arr.shape[0]
    if n == 0:
        raise BadRequest(f"{what} is empty")
    if n > limits.max_instances:
        raise BadRequest(f"{n} instances in one request; at most {limits.max_instances}", 413)
    shape = signature.input_shape
    if tuple(arr.shape[1:]) != shape:
        if arr.ndim == 2 and arr.shape[1] == signature.input_size:
            arr = arr.reshape(n, *shape)  # flattened instances are accepted
        else:
            raise BadRequest(f"each instance must have shape {list(shape)} (or {signature.input_size} flat "
                             f"numbers); got {list(arr.shape[1:])}")
    # Range-check before the cast (no np.errstate context per request: it costs more than the check).
    if arr.size and (arr.dtype.kind == "f" or arr.dtype.itemsize > 4) and not (
            np.abs(arr).max() <= _FLOAT32_MAX):  # also False for NaN
        raise BadRequest(f"{what} must be finite numbers within float32 range (found NaN, inf or overflow)")
    return arr.astype(np.float32, copy=False), out_key


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_b64(item: Any) -> bool:
    """An instance given as binary data, TF Serving's way: {"b64": ...}, also named ({"inputs": {"b64": ...}})."""
    if isinstance(item, dict) and set(item) == {"inputs"}:
        item = item["inputs"]
    return isinstance(item, dict) and set(item) == {"b64"}


def decode_images(items: list, signature: Signature, limits: Limits, what: str) -> np.ndarray:
    """Instances `{"b64": <base64 of an image file>}` -> float32 `(n, H, W, C)`, 0..255, decoded and
    resized by `gitops.learn.sources.decode_image`, the function training reads the image folder with.

    Raises BadRequest (400) naming the instance: a model not trained on images, text that is not
    base64, bytes Pillow cannot decode, an image over `limits.max_image_pixels`.
    """
    import base64
    import binascii
    import io

    if signature.image is None:
        raise BadRequest(f"{what}: base64 (b64) instances are images, and this model was not trained on an image "
                         "folder; send its inputs as numbers")
    from gitops.learn import sources

    height, width, channels = signature.image
    out = np.empty((len(items), height, width, channels), np.float32)
    for i, item in enumerate(items):
        value = (item["inputs"] if "inputs" in item else item)["b64"]
        if not isinstance(value, str):
            raise BadRequest(f"{what}[{i}].b64 must be a string of base64")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{what}[{i}].b64 is not base64") from None
        try:
            out[i] = sources.decode_image(io.BytesIO(data), (height, width), channels, label=f"{what}[{i}]",
                                          max_pixels=limits.max_image_pixels)
        except sources.RecordError as exc:
            raise BadRequest(str(exc)) from None
    return out


def _single_named(row: dict) -> Any:
    if set(row) != {"inputs"}:
        raise BadRequest(f"named instances must be {{\"inputs\": ...}}; got keys {sorted(row)}")
    return row["inputs"]


class BodyBudget:
    """Bytes of request bodies held at once (being received or parsed), across all requests."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        """Reserve `n` bytes; raises BadRequest (503) when that would pass `limit` (`n` <= 0 always passes)."""
        if n > 0 and self.held + n > self.limit:
            raise BadRequest(f"the server is receiving {self.held} bytes of other request bodies (limit "
                             f"{self.limit}); retry later", 503)
        self.held += n

    def give(self, n: int) -> None:
        """Release `n` bytes taken earlier (every `take` is matched by a `give`, also on errors)."""
        self.held -= n


def content_length(scope: dict) -> bytes | None:
    """The raw Content-Length header of an ASGI HTTP scope (names are lower-case in ASGI), or None."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value
    return None


async def read_body(request: Request, limits: Limits, budget: BodyBudget | None = None) -> tuple[bytes, int]:
    """`receive_body` for a Starlette request (the same limits, errors and budget)."""
    return await receive_body(request.receive, content_length(request.scope), limits, budget)


async def receive_body(receive: Any, declared: bytes | str | None, limits: Limits,
                       budget: BodyBudget | None = None) -> tuple[bytes, int]:
    """The whole body from an ASGI `receive`; returns (body, bytes taken from `budget`: give them back).

    `declared` is the request's Content-Length (None when absent). Raises BadRequest: 413 too large,
    408 not received within `limits.body_timeout_s`, 503 when the budget of in-flight body bytes is
    spent, 400 for a bad Content-Length or a client that went away.
    """
    limit = limits.max_body_bytes
    size = 0
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if size > limit:
            raise BadRequest(f"request body of {size} bytes exceeds the limit of {limit}", 413)
    taken = 0
    try:
        if budget is not None:
            budget.take(size)  # reserve what was announced before reading any of it
            taken = size
        chunks, total = [], 0
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                if chunk:
                    total += len(chunk)
                    if total > limit:
                        raise BadRequest(f"request body exceeds the limit of {limit} bytes", 413)
                    if budget is not None and total > taken:
                        budget.take(total - taken)
                        taken = total
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        if budget is not None:
            budget.give(taken)
        raise BadRequest(f"request body not received within {limits.body_timeout_s:g} s", 408) from None
    except ClientDisconnect:
        if budget is not None:
            budget.give(taken)
        raise BadRequest("the client disconnected while sending the body") from None
    except BaseException:
        if budget is not None:
            budget.give(taken)
        raise
    return chunks[0] if len(chunks) == 1 else b"".join(chunks), taken


# --- the app --------------------------------------------------------------------------------------


def _tf_dims(shape: tuple[int, ...]) -> dict:
    return {"dim": [{"size": "-1", "name": ""}] + [{"size": str(d), "name": ""} for d in shape],
            "unknown_rank": False}


def metadata(version: ServedVersion, stage: str | None) -> dict:
    """The body of `GET .../metadata`: TF Serving's `model_spec` and `signature_def`, plus a `gitops` part.

    Tensors are DT_FLOAT with a leading -1 (any batch size); the `gitops` part adds the SemVer, the
    training fingerprint, the stage and the batching settings (`max_wait_ms` in milliseconds).
    """
    sig = version.signature
    tensor = {"dtype": "DT_FLOAT", "tensor_shape": _tf_dims(sig.input_shape), "name": "inputs"}
    output = {"dtype": "DT_FLOAT", "tensor_shape": _tf_dims(sig.output_shape), "name": sig.output_name}
    return {
        "model_spec": {"name": version.model, "signature_name": "", "version": str(version.number)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {"inputs": tensor},
            "outputs": {sig.output_name: output},
            "method_name": "tensorflow/serving/predict",
        }}}},
        "gitops": {
            "model": version.model,
            "version": version.version,
            "version_number": version.number,
            "training_fingerprint": version.training_fingerprint,
            "stage": stage,
            "signature": sig.as_dict(),
            "max_batch_size": version.max_batch_size,
            "max_wait_ms": version.max_wait_s * 1000.0,
        },
    }


def _matches(version: ServedVersion, sel: str) -> bool:
    if sel == str(version.number) and version.number:
        return True
    from gitops.registry.tags import SemVer  # `1.2.0-rc.1` and `v1.2.0-rc.1` name the same version

    a, b = SemVer.try_parse(sel), SemVer.try_parse(version.version)
    if a is not None and b is not None:
        return str(a) == str(b)
    return sel == version.version


class ModelServer:
    """Holds the pieces one running server shares: state, batcher, metrics, follower, limits."""

    def __init__(self, state: ServingState, follower: Follower | None = None, *, limits: Limits = Limits(),
                 max_queue_rows: int = 8192):
        self.state = state
        self.follower = follower
        self.limits = limits
        max_batch = state.current.max_batch_size if state.current else 32
        self.metrics = ServerMetrics(max(max_batch, 1024))
        self.batcher = Batcher(max_queue_rows=max_queue_rows, on_batch=self._on_batch)
        self.bodies = BodyBudget(limits.max_inflight_body_bytes)
        self._last_client: Any = None  # (host, port) of the connection of the last predict
        self._last_arrival = float("-inf")
        # the hot path's metric children, looked up once
        self._predict_latency = self.metrics.latency.labels("predict")
        self._predict_ok = self.metrics.requests.labels("predict", "200")
        from gitops.serve.generation import GenerationBatcher

        self._generation_batcher = GenerationBatcher()
        state.on_switch = self._on_switch
        if state.current is not None:
            self._on_switch(state.current)
        if follower is not None:
            previous = follower.on_failure
            follower.on_failure = lambda v, m: (self.metrics.errors.labels("version_refused").inc(),
                                                previous and previous(v, m))
        self.starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.prom, methods=["GET"]),
                Route("/v1/models", self.no_model_list, methods=["GET", "POST"]),
                Route("/v1/models/{rest:path}", self.models, methods=["GET", "POST"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._internal_error},
            lifespan=self._lifespan,
        )
        # One answer per request: an unknown path is a JSON 404, never a 307 to the same path with '/'.
        self.starlette.router.redirect_slashes = False
        self._version_headers: tuple[ServedVersion | None, list] = (None, [])

    @property
    def app(self) -> ModelServer:
        """The ASGI app to hand to uvicorn (or a test client): this server itself (see `__call__`)."""
        return self

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """The ASGI app. `POST /v1/models/<name>[...]:predict` for the served model
        is answered here directly; everything else (lifespan included) goes through Starlette's routes.

        The predict path is the one a model server spends its time on: without Starlette's routing,
        middleware, Request and Response objects it costs a fraction of the same request through them
        (`benchmarks/serve_latency.py` measures it against a bare Starlette endpoint).
        """
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path.endswith(":predict") and path.startswith("/v1/models/"):
                m = _PATH_RE.fullmatch(path, 11)
                if m is not None and m["name"] == self.state.model and m["tail"] == ":predict":
                    try:
                        await self._predict(scope, receive, send, m["kind"], m["sel"])
                    except Exception as exc:
                        log.exception("internal error on %s", path)
                        self.metrics.errors.labels("internal").inc()
                        await self._count("predict", error(500, f"internal error: {type(exc).__name__}"))(
                            scope, receive, send)
                    return
        await self.starlette(scope, receive, send)

    # --- lifecycle ---
    @asynccontextmanager
    async def _lifespan(self, app):
        if self.follower is not None:
            self.follower.start()
        try:
            yield
        finally:
            if self.follower is not None:
                self.follower.stop()
            await self.batcher.close()

    def _on_batch(self, rows: int) -> None:
        self.metrics.batch_size.observe(rows)

    def _on_switch(self, version: ServedVersion) -> None:
        self.metrics.set_version(version.model, version.version, version.number, version.training_fingerprint)
        self.metrics.switches.inc()

    # --- small routes ---
    def _count(self, route: str, response: Response) -> Response:
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    async def healthz(self, request: Request) -> Response:
        """`GET /healthz`: 200 whenever the process answers (liveness; a Kubernetes livenessProbe target)."""
        return self._count("healthz", JSONResponse({"status": "ok"}))

    async def readyz(self, request: Request) -> Response:
        """`GET /readyz`: 200 with the version once a warmed one serves, else 503 with why (readinessProbe)."""
        current = self.state.current
        if current is not None and current.warmed:
            body = {"ready": True, "model": self.state.model, "version": current.version}
            return self._count("readyz", JSONResponse(body))
        why = "loading" if not (self.follower and self.follower.failed) else "; ".join(
            f"{v}: {m}" for v, m in self.follower.failed.items())
        return self._count("readyz", JSONResponse({"ready": False, "model": self.state.model, "error": why},
                                                  status_code=503))

    async def prom(self, request: Request) -> Response:
        """`GET /metrics`: the Prometheus text exposition of `ServerMetrics`."""
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        route = "predict" if request.url.path.endswith(":predict") else "other"
        return self._count(route, error(exc.status_code, exc.detail or "error"))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        self.metrics.errors.labels("internal").inc()
        return self._count("other", error(500, f"internal error: {type(exc).__name__}"))

    # --- /v1/models/... ---
    async def no_model_list(self, request: Request) -> Response:
        """`/v1/models`: a JSON 404 (TF Serving's REST API has no model list); a POST body is read first."""
        if request.method == "POST":
            await _drain(request, self.limits, self.bodies)
        return self._fail("status", 404, f"no such endpoint /v1/models (TF Serving's REST API has no model list); "
                                         f"use GET /v1/models/{self.state.model}")

    async def models(self, request: Request) -> Response:
        """`/v1/models/<name>...`: dispatch to predict, generate, metadata or status (TF Serving's REST paths).

        Unknown paths and verbs answer JSON 404/405, another model's name 404; the body of a refused POST
        is drained so a kept-alive connection stays in step.
        """
        rest = request.path_params["rest"]
        m = _PATH_RE.fullmatch(rest)
        is_predict = rest.endswith(":predict") or rest.endswith(":generate")
        route = "predict" if is_predict else ("metadata" if rest.endswith("/metadata") else "status")
        if not m:
            return self._fail(route, 404, f"no such endpoint /v1/models/{rest}")
        tail = m["tail"] or ""
        if tail.startswith(":") and tail not in (":predict", ":generate"):
            return self._fail(route, 404, f"{tail[1:]} is not supported; use :predict (or :generate)")
        want = "POST" if is_predict else "GET"
        if request.method != want:
            if is_predict:  # read the body so a kept-alive connection stays in step
                await _drain(request, self.limits, self.bodies)
            return self._fail(route, 405, f"use {want} for /v1/models/{rest}")
        if m["name"] != self.state.model:
            if is_predict:
                await _drain(request, self.limits, self.bodies)
            return self._fail(route, 404, f"model {m['name']!r} is not served here (serving {self.state.model!r})")
        if tail == ":generate":
            return await self._generate(request, m["kind"], m["sel"])
        if is_predict:
            kind, sel = m["kind"], m["sel"]
            return _Asgi(lambda scope, receive, send: self._predict(scope, receive, send, kind, sel))
        if tail == "/metadata":
            return self._metadata(m["kind"], m["sel"])
        return self._status(m["kind"], m["sel"])

    def _lone(self, client: Any) -> bool:
        """True while one client is sending: `client` (the ASGI scope's (host, port)) is the connection
        of the last predict, or nobody else came for `LONE_GAP_S`. Several clients interleave
        connections, and then batching pays."""
        now = time.monotonic()
        lone = client == self._last_client or now - self._last_arrival > LONE_GAP_S
        self._last_client, self._last_arrival = client, now
        return lone

    def _fail(self, route: str, status: int, message: str, headers: dict | None = None) -> Response:
        kind = {400: "bad_request", 404: "not_found", 405: "bad_method", 408: "timeout", 413: "too_large",
                503: "unavailable"}.get(status, "predict")
        self.metrics.errors.labels(kind).inc()
        return self._count(route, error(status, message, headers))

    def _select(self, kind: str | None, sel: str | None) -> tuple[ServedVersion | None, str | None]:
        """The serving version a path names, or (None, why) for 404/503."""
        current = self.state.current
        if current is None:
            return None, None
        if kind == "versions" and not _matches(current, sel):
            return None, f"version {sel} of {self.state.model} is not being served (serving {current.version}, " \
                         f"number {current.number})"
        if kind == "labels" and sel != self.state.stage:
            label = f"label {self.state.stage!r}" if self.state.stage else "no labels"
            return None, f"label {sel!r} is not served here ({label})"
        return current, None

    def _status(self, kind: str | None, sel: str | None) -> Response:
        statuses = self.state.statuses()
        if kind == "versions":
            statuses = [s for s in statuses if sel in (str(s.number), s.version, s.version.lstrip("v"))]
        elif kind == "labels":
            if sel != self.state.stage:
                return self._fail("status", 404, f"label {sel!r} is not served here")
            statuses = [s for s in statuses if self.state.current and s.version == self.state.current.version]
        if kind and not statuses:
            return self._fail("status", 404, f"{kind[:-1]} {sel} of {self.state.model} is not known here")
        return self._count("status", JSONResponse({"model_version_status": [s.as_tf() for s in statuses]}))

    def _metadata(self, kind: str | None, sel: str | None) -> Response:
        version, why = self._select(kind, sel)
        if version is None:
            return self._fail("metadata", 404 if why else 503, why or "no version is loaded yet")
        return self._count("metadata", JSONResponse(metadata(version, self.state.stage)))

    def _headers(self, version: ServedVersion) -> list:
        """The raw response headers of a predict answered by `version` (built once per version)."""
        cached, headers = self._version_headers
        if cached is not version:
            headers = [(b"content-type", b"application/json"),
                       (b"x-model-version", version.version.encode()),
                       (b"x-model-version-number", str(version.number).encode()),
                       (b"x-model-fingerprint", version.training_fingerprint[:12].encode())]
            self._version_headers = (version, headers)
        return headers

    async def _predict(self, scope: dict, receive: Any, send: Any, kind: str | None, sel: str | None) -> None:
        started = time.perf_counter()
        version, why = self._select(kind, sel)  # pinned: this request runs on this version only
        self.batcher.arriving += 1  # tells the batcher a request may join the batch it is filling
        taken = 0
        try:
            try:
                body, taken = await receive_body(receive, content_length(scope), self.limits, self.bodies)
            except BadRequest as exc:
                headers = {"Connection": "close"}
                if exc.status == 503:
                    headers["Retry-After"] = "1"
                return await self._fail("predict", exc.status, str(exc), headers)(scope, receive, send)
            if version is None:
                return await self._fail("predict", 404 if why else 503,
                                        why or "no version is loaded yet; see /readyz")(scope, receive, send)
            try:
                payload = parse_json(body)
                if version.signature.image is not None and b'"b64"' in body:  # image decoding: off the event loop
                    x, out_key = await asyncio.to_thread(parse_inputs, payload, version.signature, self.limits)
                else:
                    x, out_key = parse_inputs(payload, version.signature, self.limits)
            except BadRequest as exc:
                return await self._fail("predict", exc.status, str(exc))(scope, receive, send)
            del body
            self.bodies.give(taken)
            taken = 0
            # Let requests that arrived with this one reach this point too: they then join one batch
            # instead of each running alone (a lone request pays one event-loop turn).
            await asyncio.sleep(0)
        finally:
            self.bodies.give(taken)
            self.batcher.arriving -= 1
        try:
            y = await self.batcher.submit(version, x, lone=self._lone(scope.get("client")))
        except Overloaded as exc:
            return await self._fail("predict", 503, f"server overloaded ({exc}); retry later",
                                    {"Retry-After": "1"})(scope, receive, send)
        except Exception as exc:
            log.exception("predict failed on %s %s", version.model, version.version)
            return await self._fail("predict", 500, f"prediction failed: {type(exc).__name__}: {exc}")(
                scope, receive, send)
        payload = _dumps({out_key: y.tolist()})
        self.metrics.instances.inc(x.shape[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*self._headers(version), (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})
        self._predict_latency.observe(time.perf_counter() - started)
        self._predict_ok.inc()

    async def _generate(self, request: Request, kind: str | None, sel: str | None) -> Response:
        """Language models: text from prompts (gitops.serve.generation), batched or streamed."""
        from starlette.responses import StreamingResponse

        from gitops.serve import generation

        started = time.perf_counter()
        version, why = self._select(kind, sel)
        try:
            body, taken = await read_body(request, self.limits, self.bodies)
        except BadRequest as exc:
            headers = {"Connection": "close", **({"Retry-After": "1"} if exc.status == 503 else {})}
            return self._fail("generate", exc.status, str(exc), headers)
        self.bodies.give(taken)  # the body is small next to the stream; only its reading is bounded
        if version is None:
            return self._fail("generate", 404 if why else 503, why or "no version is loaded yet; see /readyz")
        loaded = version.extra.get("loaded")
        if loaded is None:
            return self._fail("generate", 400, f"{version.model} {version.version} is not a language model; use :predict")
        try:
            req = generation.parse_request(parse_json(body))
            headers = {"X-Model-Version": version.version, "X-Model-Version-Number": str(version.number),
                       "X-Model-Fingerprint": version.training_fingerprint[:12]}
            if req.stream:
                events = generation.stream(loaded, req)
                first = await events.__anext__()  # a bad prompt fails here, as a 400, before any event

                async def body_events():
                    yield first
                    async for event in events:
                        yield event

                return self._count("generate", StreamingResponse(body_events(), media_type="text/event-stream",
                                                                 headers=headers))
            done = await generation.generate(self._generation_batcher, loaded, req)
        except (BadRequest, UsageError) as exc:
            return self._fail("generate", 400, str(exc))
        self.metrics.latency.labels("generate").observe(time.perf_counter() - started)
        return self._count("generate", Response(_dumps({"generations": done}), media_type="application/json",
                                                headers=headers))


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # one encoder, not one per response


def _dumps(obj: Any) -> bytes:
    try:  # json's C encoder, strict: a NaN output raises and takes jsonio's way (null + non_finite)
        return _ENCODER.encode(obj).encode()
    except ValueError:
        return jsonio.dumps(obj, separators=(",", ":")).encode()


class _Asgi:
    """An ASGI callable where Starlette expects a Response (an endpoint that answers by itself)."""

    def __init__(self, call: Any):
        self.call = call

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Run the wrapped ASGI call."""
        await self.call(scope, receive, send)


async def _drain(request: Request, limits: Limits, budget: BodyBudget) -> None:
    try:
        _, taken = await read_body(request, limits, budget)
        budget.give(taken)
    except BadRequest:
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed; may race)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




# --- building and running a server ----------------------------------------------------------------


def build(target: str, *, root=None, backend: str | None = None, max_batch_size: int | None = None,
          max_wait_ms: float | None = None, poll_seconds: float = 10.0, limits: Limits = Limits(),
          cache_dir=None) -> ModelServer:
    """A server for `target`: a run folder / pulled release, `MODEL@VERSION`, `MODEL@STAGE` or `MODEL`.

    A stage (or a bare model name, meaning the latest release) is followed: polled every
    `poll_seconds`. Resolving the reference happens here, so an unknown model, version or stage fails
    before anything listens (UsageError, exit 2).
    """
    from pathlib import Path

    from gitops.config.refs import parse_target
    from gitops.serve.follower import FixedSource, RegistrySource
    from gitops.serve.version import folder_identity, load_version

    parsed = parse_target(target)
    if parsed.path is not None:
        path = parsed.path
        model, version = folder_identity(path)
        source = FixedSource(path, version)
        stage = None
    else:
        from gitops import config
        from gitops.backends import get_backend

        root = Path(root) if root is not None else config.find_root()
        source = RegistrySource(root, str(parsed.ref), cache_dir, backend=get_backend(backend, root))
        source.current()  # fail now on an unknown model, version or stage
        model, stage = source.ref.model, source.ref.stage

    def load(folder: Path, version: str) -> ServedVersion:
        return load_version(folder, version=version, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    state = ServingState(model, stage)
    follower = Follower(state, source, load, poll_seconds=poll_seconds)
    return ModelServer(state, follower, limits=limits)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a busy port fails at once (UsageError, exit 2), before any
    model is loaded. Hand it to `run`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "busy"
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def make_uvicorn(server: ModelServer, sock: socket.socket, *, log_level: str = "info", log_json: bool = False):
    """The uvicorn server for `server` on the bound `sock` (start it with `.run(sockets=[sock])`).

    Logging is set up first (`gitops.logs.setup_serve`) and uvicorn is told to keep it
    (`log_config=None`), so its lines come out in our format.
    """
    import uvicorn

    from gitops import logs

    logs.setup_serve(log_level, as_json=log_json)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(server.app, host=host, port=port, log_level=log_level, log_config=None,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                            limit_concurrency=server.limits.max_connections)
    return uvicorn.Server(config)


def synchronous_cpu_dispatch() -> None:
    """Run CPU computations on the calling thread (jax's `jax_cpu_enable_async_dispatch=False`).

    With async dispatch a batch-1 predict hands the computation to an XLA worker thread and waits for
    it to wake: on a busy host that hand-over costs more than the forward pass of a small model (a
    20 us predict became 100-200 us once the server did other work between calls). A serving
    process only ever waits for each result, so nothing is lost. Process-wide: called by `run`
    (the `gitops serve` process), never by training.
    """
    try:
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", False)
    except (ImportError, AttributeError, ValueError):  # an older jax without the option: keep its default
        pass


def run(server: ModelServer, host: str = "127.0.0.1", port: int = 8501, *, log_level: str = "info",
        log_json: bool = False, sock: socket.socket | None = None) -> int:
    """Serve until interrupted. Returns 0, or 1 when a fixed version could not be loaded at all.

    Our log lines and uvicorn's share one format (`gitops.logs.setup_serve`): text, or one JSON
    object per line with `log_json`. `sock` is a socket from `bind` (bound here when None).
    """
    sock = sock if sock is not None else bind(host, port)
    synchronous_cpu_dispatch()
    uv = make_uvicorn(server, sock, log_level=log_level, log_json=log_json)
    bound_host, bound_port = sock.getsockname()[:2]  # uvicorn names no URL for a socket it was handed
    log.info("listening on http://%s:%d", f"[{bound_host}]" if ":" in bound_host else bound_host, bound_port)
    failed = []
    follower = server.follower
    if follower is not None and not follower.source.follows:
        previous = follower.on_failure

        def give_up(version: str, message: str) -> None:  # nothing else will ever be served
            if previous:
                previous(version, message)
            if server.state.current is None:
                failed.append(message)
                uv.should_exit = True

        follower.on_failure = give_up
    try:
        uv.run(sockets=[sock])
    finally:
        sock.close()
    return 1 if failed else 0
