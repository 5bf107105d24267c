"""Latency and throughput of `gitops serve` against a bare endpoint plus the direct predict call.

Starts `gitops serve RUN` in a subprocess on 127.0.0.1 (a free port), and beside it a *bare* Starlette
endpoint on the same uvicorn stack (same loop and HTTP parser) that parses the same JSON body and
answers a same-shaped body (the same number of floats, printed as long, and the same headers)
without a model. One load generator (the same code for both servers, in its own process) sends a
fixed number of requests per round; this process calls the same model's `gitops.load(...).predict`
directly on the same input between rounds. All in one run, so the figures share the machine's state.

The headline is the ratio of served batch-1 throughput (one client) to the ideal
1 / (bare endpoint latency + direct predict call): what a server that added nothing to HTTP and the
model would do. Goal: >= 0.8. Rounds interleave the two servers (bare, served; then served, bare;
...), each round gives one ratio, and the median over rounds is the figure (with the spread), so
drift in the machine's load hits both sides alike. With 16 concurrent clients the served throughput
is printed beside the bare endpoint's, interleaved the same way (dynamic batching should keep up).

    .venv/bin/python benchmarks/serve_latency.py [--run RUN_DIR] [--requests 1000] [--rounds 7] [--quick]

Without --run it trains digits-mlp into a temporary folder first (a short run: the speed of the model
does not depend on its accuracy). Not a timed test: the suite runs `--quick` and checks the figures
are printed, not their values.
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
    import numpy as np
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # probabilities as the model prints them (float32 values, shortest round-trip repr: ~20 characters)
    logits = np.arange(outputs, dtype=np.float32) / 3.0
    answer = (np.exp(logits) / np.exp(logits).sum()).astype(np.float32).tolist()
    headers = {"X-Model-Version": "run-0123456789ab", "X-Model-Version-Number": "0",
               "X-Model-Fingerprint": "0123456789ab"}

    async def predict(request: Request) -> Response:
        payload = json.loads(await request.body())
        rows = len(payload["instances"])
        return Response(json.dumps({"predictions": [answer] * rows}, separators=(",", ":")),
                        media_type="application/json", headers=headers)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route("/readyz", ready), Route("/v1/models/{rest:path}", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the driver ---------------------------------------------------------------------------------------


def train_example(out: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "gitops.cli", "train", "digits-mlp", "--out", str(out),
                           "--set", "train.steps=200"], cwd=REPO, capture_output=True, text=True, check=True)
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


def direct_calls(predict, x, calls: int, batch: int) -> tuple[float, float]:
    """(instances per second, median seconds per call) of `predict` on `batch` copies of `x`'s first row."""
    import numpy as np

    xb = np.repeat(x[:1], batch, axis=0)
    for _ in range(5):
        predict(xb)
    times = []
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        predict(xb)
        times.append(time.perf_counter() - t)
    return calls * batch / (time.perf_counter() - t0), statistics.median(times)


def spread(values: list[float], fmt: str = "{:.3f}", unit: str = "rounds") -> str:
    """`median (min-max over n unit)` of a list of per-round (or per-block) figures."""
    return (f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))} "
            f"over {len(values)} {unit})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="A trained run folder (default: train digits-mlp into a temp folder).")
    ap.add_argument("--blocks", type=int, default=40, help="Interleaved blocks at concurrency 1 (per server).")
    ap.add_argument("--block", type=int, default=50, help="Requests (and direct calls) per block.")
    ap.add_argument("--requests", type=int, default=1500, help="Requests per server per round at --concurrency.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds at --concurrency.")
    ap.add_argument("--concurrency", type=int, default=16, help="Clients in the batched scenario.")
    ap.add_argument("--time-cap", type=float, default=60.0, help="Hard cap per load, seconds.")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="A smoke run: 4 blocks of 15, 1 round of 60, 20 s caps.")
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
        args.blocks, args.block, args.requests, args.rounds, args.time_cap = 4, 15, 60, 1, 20.0
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import numpy as np

    from gitops import api

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
        loaded = api.load(run)  # the direct call: what a user of the model gets without a server
        direct_calls(loaded.predict, x, 50, 1)

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
        sides = {"bare": (bare, f"{bare_base}/v1/models/{model}:predict"),
                 "served": (serve, f"{base}/v1/models/{model}:predict")}
        many: dict[str, list[dict]] = {"bare": [], "served": []}
        try:
            t0 = time.perf_counter()
            wait_ready(base, serve, 120)
            ready_s = time.perf_counter() - t0
            wait_ready(bare_base, bare, 60)
            one = alternate({name: (proc.pid, url) for name, (proc, url) in sides.items()}, body, args.blocks,
                            args.block, lambda: loaded.predict(x))

            def measure(name: str, concurrency: int) -> dict:
                proc, url = sides[name]
                c0 = cpu_seconds(proc.pid)
                res = run_load(url, body, args.requests, concurrency, args.time_cap)
                c1 = cpu_seconds(proc.pid)
                res["cpu"] = None if None in (c0, c1) else (c1 - c0) / max(1, len(res["latencies"]))
                return res

            for r in range(args.rounds):  # interleaved: bare, served; served, bare; ...
                for name in (("bare", "served") if r % 2 == 0 else ("served", "bare")):
                    many[name].append(measure(name, args.concurrency))
            batch_mean = mean_batch(base)
        finally:
            for proc in (serve, bare):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        direct1, _ = direct_calls(loaded.predict, x, max(500, args.block * 10), 1)
        direct16, _ = direct_calls(loaded.predict, x, max(100, args.requests // 4), args.concurrency)
        sync_p50 = synchronous_direct_p50(loaded, x, max(500, args.block * 10))

    def rate(res: dict) -> float:
        return len(res["latencies"]) / res["elapsed"] if res["elapsed"] and res["latencies"] else 0.0

    def line(label: str, results: list[dict]) -> str:
        lat = [v for res in results for v in res["latencies"]]
        errors = sum(res["errors"] for res in results)
        return (f"{label}: {len(lat)} ok, {errors} errors, {spread([rate(r) for r in results], '{:,.0f}')} "
                f"requests/s, p50 {percentile(lat, 50) * 1000:.2f} ms, p99 {percentile(lat, 99) * 1000:.2f} ms")

    # per block pair: the ideal from that block's bare endpoint and direct calls, against that block's server
    ratios, p50_ratios = [], []
    for b, s_, d in zip(one["bare"], one["served"], one["direct"], strict=True):
        ratios.append((statistics.mean(b) + statistics.median(d)) / statistics.mean(s_))
        p50_ratios.append((statistics.median(b) + statistics.median(d)) / statistics.median(s_))
    pooled = {name: [v for block in one[name] for v in block] for name in ("bare", "served", "direct")}
    bare_mean, served_mean = statistics.mean(pooled["bare"]), statistics.mean(pooled["served"])
    d50 = statistics.median(pooled["direct"])
    print(f"model {model} ({run}); server ready (loaded + warmed) in {ready_s:.1f}s")
    print(f"direct gitops.load(...).predict, batch 1: {d50 * 1e6:.0f} us a call (median, interleaved with the "
          f"requests); {direct1:,.0f} calls/s after them; with jax's synchronous CPU dispatch, as the server "
          f"runs it: {sync_p50 * 1e6:.0f} us")
    print(f"direct predict, batch {args.concurrency}: {direct16:,.0f} instances/s")
    for name, label in (("bare", "bare endpoint"), ("served", "served")):
        lat = pooled[name]
        print(f"{label} batch 1 (concurrency 1): {len(lat)} ok, {one['errors'][name]} errors, "
              f"{1.0 / statistics.mean(lat):,.0f} requests/s, p50 {percentile(lat, 50) * 1000:.2f} ms, "
              f"p99 {percentile(lat, 99) * 1000:.2f} ms; server CPU "
              f"{'n/a' if one['cpu'][name] is None else format(one['cpu'][name] * 1e6, '.0f')} us a request")
    print(f"ideal batch 1 = 1 / (bare latency {bare_mean * 1e6:.0f} us + direct call {d50 * 1e6:.0f} us) "
          f"= {1.0 / (bare_mean + d50):,.0f} requests/s; served {1.0 / served_mean:,.0f} requests/s")
    print(f"served / ideal ratio at batch 1: {spread(ratios, unit='blocks')} (goal >= 0.8; median over "
          f"interleaved blocks of {args.block} requests, with their spread)")
    print(f"the same from p50 latencies: {spread(p50_ratios, unit='blocks')}; pooled: "
          f"{(statistics.median(pooled['bare']) + d50) / statistics.median(pooled['served']):.3f}")
    if one["cpu"]["bare"] is not None and one["cpu"]["served"]:
        print(f"server CPU per request at batch 1, (bare + direct call) / served: "
              f"{(one['cpu']['bare'] + d50) / one['cpu']['served']:.3f} (steadier than latency on a busy machine)")
    print(line(f"bare endpoint concurrency {args.concurrency}", many["bare"]))
    print(line(f"served concurrency {args.concurrency} (dynamic batching)", many["served"]))
    many_ratios = [rate(s_) / rate(b) for b, s_ in zip(many["bare"], many["served"], strict=True) if rate(b)]
    print(f"dynamic batching: mean executed batch {batch_mean:.1f} rows; served / bare ratio at concurrency "
          f"{args.concurrency}: {spread(many_ratios) if many_ratios else 'n/a'}; served concurrency "
          f"{args.concurrency} / direct batch {args.concurrency} ratio: "
          f"{statistics.median(rate(r) for r in many['served']) / direct16:.3f}")
    print(f"median latency {statistics.median(pooled['served']) * 1000:.2f} ms at concurrency 1")


def alternate(sides: dict[str, tuple[int, str]], body: str, blocks: int, block: int, direct) -> dict:
    """One client, keep-alive to each server, in alternating blocks (A, B, direct; B, A, direct; ...).

    `sides` maps a name to (server pid, predict URL); `direct()` is one direct predict call. Returns
    {name: [[seconds per request] per block]}, "direct": [[seconds per call] per block], "cpu":
    {name: server CPU seconds per request over its blocks, or None}, "errors": {name: count}.
    """
    import httpx

    headers = {"content-type": "application/json"}
    out: dict = {name: [] for name in sides} | {"direct": [], "cpu": {}, "errors": {name: 0 for name in sides}}
    cpu = {name: 0.0 for name in sides}
    clients = {name: httpx.Client(timeout=30) for name in sides}
    try:
        for name, (_, url) in sides.items():  # warm both (connections, caches) outside the measurement
            for _ in range(max(50, block)):
                clients[name].post(url, content=body, headers=headers)
        for _ in range(5):
            direct()
        names = list(sides)
        for i in range(blocks):
            for name in (names if i % 2 == 0 else names[::-1]):
                pid, url = sides[name]
                http, lat = clients[name], []
                c0 = cpu_seconds(pid)
                for _ in range(block):
                    t = time.perf_counter()
                    try:
                        ok = http.post(url, content=body, headers=headers).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        lat.append(time.perf_counter() - t)
                    else:
                        out["errors"][name] += 1
                c1 = cpu_seconds(pid)
                cpu[name] = None if None in (c0, c1, cpu[name]) else cpu[name] + (c1 - c0)
                out[name].append(lat or [float("nan")])
            calls = []
            for _ in range(block):
                t = time.perf_counter()
                direct()
                calls.append(time.perf_counter() - t)
            out["direct"].append(calls)
    finally:
        for http in clients.values():
            http.close()
    for name in sides:
        n = sum(len(b) for b in out[name])
        out["cpu"][name] = cpu[name] / n if cpu[name] is not None and n else None
    return out


def synchronous_direct_p50(loaded, x, calls: int) -> float:
    """Median seconds of `loaded.predict` on one row with jax's synchronous CPU dispatch (as `gitops serve`
    runs it); called last, since it changes a process-wide jax setting."""
    from gitops.serve.server import synchronous_cpu_dispatch

    synchronous_cpu_dispatch()
    return direct_calls(loaded.predict, x, calls, 1)[1]


if __name__ == "__main__":
    main()
