"""Latency and throughput of `gitops serve` against calling the jitted predict directly.

Starts `gitops serve RUN` in a subprocess on 127.0.0.1 (a free port), sends a bounded load from a
second process (a fixed number of requests, bounded concurrency, a hard time cap), and in this
process calls the same jitted predict directly on the same inputs. Prints requests/s, p50/p99 latency
and the ratio of served to direct throughput, at batch 1 (one client) and with dynamic batching
(16 concurrent clients).

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


def run_load(url: str, body: str, requests: int, concurrency: int, time_cap: float) -> dict:
    done = subprocess.run([sys.executable, __file__, "--load", url, "--requests", str(requests),
                           "--concurrency", str(concurrency), "--time-cap", str(time_cap)],
                          input=body, capture_output=True, text=True, timeout=time_cap + 120)
    if done.returncode != 0:
        raise SystemExit(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def direct(run: Path, x, repeats: int, batch: int) -> float:
    """Instances per second calling the loaded model's predict (jitted forward) on `batch` rows."""
    import numpy as np

    from gitops import api

    loaded = api.load(run)
    xb = np.repeat(x[:1], batch, axis=0)
    for _ in range(5):
        loaded.predict(xb)
    t0 = time.perf_counter()
    n = max(1, repeats // batch)
    for _ in range(n):
        loaded.predict(xb)
    return n * batch / (time.perf_counter() - t0)


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
    args = ap.parse_args()
    if args.load:
        load_main(args.load, sys.stdin.read(), args.requests, args.concurrency, args.time_cap)
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
            url = f"{base}/v1/models/{model}:predict"
            one = run_load(url, body, args.requests, 1, args.time_cap)
            many = run_load(url, body, args.requests, args.concurrency, args.time_cap)
            batch_mean = mean_batch(base)
        finally:
            serve.terminate()
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                serve.kill()
        direct1 = direct(run, x, min(args.requests * 5, 5000), 1)
        direct16 = direct(run, x, min(args.requests * 5, 20000), args.concurrency)

    print(f"model {model} ({run}); server ready (loaded + warmed) in {ready_s:.1f}s")
    print(f"direct jitted predict, batch 1: {direct1:,.0f} requests/s")
    print(f"direct jitted predict, batch {args.concurrency}: {direct16:,.0f} instances/s")
    for label, res, ref in (("served batch 1 (concurrency 1)", one, direct1),
                            (f"served concurrency {args.concurrency} (dynamic batching)", many, direct1)):
        n = len(res["latencies"])
        rps = n / res["elapsed"] if res["elapsed"] else 0.0
        p50 = percentile(res["latencies"], 50) * 1000
        p99 = percentile(res["latencies"], 99) * 1000
        print(f"{label}: {n} ok, {res['errors']} errors, {rps:,.0f} requests/s, p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms, ratio to direct batch 1: {rps / ref:.3f}")
    rps16 = len(many["latencies"]) / many["elapsed"] if many["elapsed"] else 0.0
    print(f"dynamic batching: mean executed batch {batch_mean:.1f} rows; served concurrency "
          f"{args.concurrency} / direct batch {args.concurrency} ratio: {rps16 / direct16:.3f}")
    print(f"median latency {statistics.median(one['latencies']) * 1000:.2f} ms at concurrency 1")


if __name__ == "__main__":
    main()
