"""Latency and throughput of `gitops serve` against a bare endpoint plus the direct predict call.

Starts `gitops serve RUN` in a subprocess on 127.0.0.1 (a free port), and beside it a *bare* Starlette
endpoint on the same uvicorn stack (same loop and HTTP parser) that parses the same JSON body and
answers a same-shaped body without a model. A second process sends a bounded load (a fixed number of
requests, bounded concurrency, a hard time cap) to each; this process calls the same jitted predict
directly on the same inputs. All in one run, so the figures share the machine's state.

The headline is the ratio of served batch-1 throughput (one client) to the ideal
1 / (bare endpoint latency + direct predict call): what a server that added nothing to HTTP and the
model would do. Goal: >= 0.8. With 16 concurrent clients the served throughput is printed beside the
bare endpoint's at the same concurrency (dynamic batching should keep up with it).

    .venv/bin/python benchmarks/serve_latency.py [--run RUN_DIR] [--requests 2000] [--quick]

Without --run it trains wine-mlp into a temporary folder first (a few seconds). Not a timed test:
the suite runs `--quick` and checks the figures are printed, not their values.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# --- the load generator (runs in its own process) --------------------------------------------------


def load_main(url: str, body: str, requests: int, concurrency: int, time_cap: float) -> None:
    """Send `requests` POSTs from `concurrency` threads (keep-alive), stop at `time_cap`; print JSON."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    counter = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + time_cap

    def worker() -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                with lock:
                    if counter[0] >= requests or time.monotonic() > deadline:
                        return
                    counter[0] += 1
                t0 = time.perf_counter()
                try:
                    r = http.post(url, content=body, headers={"content-type": "application/json"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    # warm the connection path once, outside the measurement
    with httpx.Client(timeout=30) as http:
        http.post(url, content=body, headers={"content-type": "application/json"})
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_cap + 30)
    elapsed = time.perf_counter() - started
    print(json.dumps({"latencies": latencies, "errors": errors[0], "elapsed": elapsed}))


# --- the bare endpoint (runs in its own process) ------------------------------------------------------


def bare_main(port: int, outputs: int) -> None:
    """A Starlette app on uvicorn that parses the predict JSON and answers a same-shaped body."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    answer = [1.0 / outputs] * outputs

    async def predict(request: Request) -> Response:
        payload = json.loads(await request.body())
        rows = len(payload["instances"])
        return Response(json.dumps({"predictions": [answer] * rows}, separators=(",", ":")),
                        media_type="application/json")

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route("/readyz", ready), Route("/v1/models/{rest:path}", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the driver ---------------------------------------------------------------------------------------


def train_example(out: Path) -> Path:
    done = subprocess.run([str(Path(sys.executable).parent / "gitops"), "train", "wine-mlp", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return Path(done.stdout.split("run: ", 1)[1].split()[0]) if "run: " in done.stdout else \
        Path(done.stdout.split("cache hit: ", 1)[1].split()[0])


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gitops serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("gitops serve did not become ready in time")


def mean_batch(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("gitops_serve_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("gitops_serve_batch_size_count"):
            count = float(line.split()[-1])
    return total / count if count else float("nan")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its threads so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_load(url: str, body: str, requests: int, concurrency: int, time_cap: float) -> dict:
    done = subprocess.run([sys.executable, __file__, "--load", url, "--requests", str(requests),
                           "--concurrency", str(concurrency), "--time-cap", str(time_cap)],
                          input=body, capture_output=True, text=True, timeout=time_cap + 120)
    if done.returncode != 0:
        raise SystemExit(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def direct(run: Path, x, repeats: int, batch: int) -> tuple[float, float]:
    """(instances per second, median seconds per call) calling the loaded model's predict on `batch` rows."""
    import numpy as np

    from gitops import api

    loaded = api.load(run)
    xb = np.repeat(x[:1], batch, axis=0)
    for _ in range(5):
        loaded.predict(xb)
    n = max(1, repeats // batch)
    calls = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        loaded.predict(xb)
        calls.append(time.perf_counter() - t)
    return n * batch / (time.perf_counter() - t0), statistics.median(calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="A trained run folder (default: train wine-mlp into a temp folder).")
    ap.add_argument("--requests", type=int, default=2000, help="Requests per scenario.")
    ap.add_argument("--concurrency", type=int, default=16, help="Clients in the batched scenario.")
    ap.add_argument("--time-cap", type=float, default=60.0, help="Hard cap per scenario, seconds.")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="A smoke run: 60 requests, 20 s cap.")
    ap.add_argument("--load", help=argparse.SUPPRESS)  # internal: be the load generator for this URL
    ap.add_argument("--bare", type=int, help=argparse.SUPPRESS)  # internal: be the bare endpoint on this port
    ap.add_argument("--bare-outputs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        load_main(args.load, sys.stdin.read(), args.requests, args.concurrency, args.time_cap)
        return
    if args.bare:
        bare_main(args.bare, args.bare_outputs)
        return
    if args.quick:
        args.requests, args.time_cap = 60, 20.0
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        run = args.run or train_example(Path(tmp) / "runs")
        pre = json.loads((run / "preprocessing.json").read_text())
        shape = pre["input_shape"]
        rng = np.random.default_rng(0)
        if pre.get("shift"):
            x = (np.asarray(pre["shift"]) + rng.normal(size=(1, len(pre["shift"]))) * np.asarray(pre["divisor"]))
            x = x.reshape(1, *shape).astype(np.float32)
        else:
            x = rng.normal(size=(1, *shape)).astype(np.float32)
        body = json.dumps({"instances": x.tolist()})
        manifest = json.loads((run / "manifest.json").read_text())
        model = manifest["model"]

        outputs = int(pre.get("num_outputs") or pre.get("num_classes") or 1)
        bare_port = free_port()
        bare_base = f"http://127.0.0.1:{bare_port}"
        bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port), "--bare-outputs", str(outputs)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = subprocess.Popen(
            [sys.executable, "-m", "gitops.cli", "serve", str(run), "--host", "127.0.0.1", "--port", str(port),
             "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
             "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            t0 = time.perf_counter()
            wait_ready(base, serve, 120)
            ready_s = time.perf_counter() - t0
            wait_ready(bare_base, bare, 60)
            url = f"{base}/v1/models/{model}:predict"
            bare_url = f"{bare_base}/v1/models/{model}:predict"
            # interleaved, so drift in the machine's load hits both sides alike
            c0 = cpu_seconds(bare.pid)
            bare_one = run_load(bare_url, body, args.requests, 1, args.time_cap)
            c1 = cpu_seconds(bare.pid)
            s0 = cpu_seconds(serve.pid)
            one = run_load(url, body, args.requests, 1, args.time_cap)
            s1 = cpu_seconds(serve.pid)
            cpu = None if None in (c0, c1, s0, s1) else (
                (c1 - c0) / max(1, len(bare_one["latencies"])), (s1 - s0) / max(1, len(one["latencies"])))
            bare_many = run_load(bare_url, body, args.requests, args.concurrency, args.time_cap)
            many = run_load(url, body, args.requests, args.concurrency, args.time_cap)
            batch_mean = mean_batch(base)
        finally:
            for proc in (serve, bare):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        direct1, direct1_p50 = direct(run, x, min(args.requests * 5, 5000), 1)
        direct16, _ = direct(run, x, min(args.requests * 5, 20000), args.concurrency)

    def rate(res: dict) -> float:
        return len(res["latencies"]) / res["elapsed"] if res["elapsed"] and res["latencies"] else 0.0

    def line(label: str, res: dict) -> str:
        p50 = percentile(res["latencies"], 50) * 1000
        p99 = percentile(res["latencies"], 99) * 1000
        return (f"{label}: {len(res['latencies'])} ok, {res['errors']} errors, {rate(res):,.0f} requests/s, "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    bare_latency = 1.0 / rate(bare_one) if rate(bare_one) else float("inf")  # seconds per request, one client
    ideal = 1.0 / (bare_latency + 1.0 / direct1)
    print(f"model {model} ({run}); server ready (loaded + warmed) in {ready_s:.1f}s")
    print(f"direct jitted predict, batch 1: {direct1:,.0f} requests/s ({1e6 / direct1:.0f} us a call)")
    print(f"direct jitted predict, batch {args.concurrency}: {direct16:,.0f} instances/s")
    print(line("bare endpoint batch 1 (concurrency 1)", bare_one))
    print(line("served batch 1 (concurrency 1)", one))
    print(f"ideal batch 1 = 1 / (bare latency {bare_latency * 1e6:.0f} us + direct call {1e6 / direct1:.0f} us) "
          f"= {ideal:,.0f} requests/s; served / ideal ratio: {rate(one) / ideal:.3f} (goal >= 0.8)")
    bare_p50 = percentile(bare_one["latencies"], 50)
    ideal_p50 = bare_p50 + direct1_p50
    served_p50 = percentile(one["latencies"], 50)
    print(f"the same from medians (robust on a busy machine): ideal {ideal_p50 * 1e6:.0f} us = bare p50 "
          f"{bare_p50 * 1e6:.0f} us + direct p50 {direct1_p50 * 1e6:.0f} us; served p50 {served_p50 * 1e6:.0f} us; "
          f"ratio {ideal_p50 / served_p50:.3f}")
    if cpu is not None:  # what a request costs the server's CPU: steady even when the machine is busy
        print(f"server CPU per request at batch 1: bare {cpu[0] * 1e6:.0f} us, served {cpu[1] * 1e6:.0f} us "
              f"(ideal {cpu[0] * 1e6 + direct1_p50 * 1e6:.0f} us with the direct call; ratio "
              f"{(cpu[0] + direct1_p50) / cpu[1] if cpu[1] else 0.0:.3f})")
    print(line(f"bare endpoint concurrency {args.concurrency}", bare_many))
    print(line(f"served concurrency {args.concurrency} (dynamic batching)", many))
    print(f"dynamic batching: mean executed batch {batch_mean:.1f} rows; served / bare ratio at concurrency "
          f"{args.concurrency}: {rate(many) / rate(bare_many) if rate(bare_many) else 0.0:.3f}; served concurrency "
          f"{args.concurrency} / direct batch {args.concurrency} ratio: {rate(many) / direct16:.3f}")
    print(f"median latency {statistics.median(one['latencies']) * 1000:.2f} ms at concurrency 1")


if __name__ == "__main__":
    main()
