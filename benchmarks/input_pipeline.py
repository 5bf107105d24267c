"""The streaming input pipeline (gitops.learn.streaming, Grain): memory, feed speed, decode scaling.

Every figure is a ratio of two measurements made in this same run:

1. memory: peak RSS of a whole `gitops train` process on a large Parquet table over the same on a
   table 10x smaller (784 float32 columns, same model, same steps). Goal: <= 1.2 (memory does not
   grow with the dataset; only the record-index arrays do, 8 bytes per row);
2. feed: training steps/s of a compute-bound MLP (784-1024-1024-10, batch 1024) fed from an ArrayRecord
   file on disk (20,480 np.savez records of 784 random float32 and a label, `group_size:1`) through
   the pipeline (`--workers` decode processes; 0, the default: the feed's read-ahead thread reads in
   the training process, which on 2 cores leaves the most CPU to XLA) over the same model fed from
   memory (the split on the device). Rounds of the two alternate; each round first runs untimed steps
   so the pipeline's buffers are in their steady state; printed: the median steps/s of each, the
   median of the per-round ratios and their spread. Goal: >= 0.9, with the records written
   `uncompressed`, as a user would write features zstd cannot shrink much (random floats: 15% smaller,
   twice the CPU to read) for a machine whose cores the step already fills: on 2 cores every ms of
   reading is taken from XLA's two threads, and zstd's decode alone is about 7 ms of CPU per batch.
   Printed beside it without a goal: the same with the writer's default zstd, and for a tiny MLP
   (64-128-10, batch 128, zstd), whose steps are far cheaper than reading a batch. On the 2-core
   development machine, 0 workers: uncompressed 0.956 and 0.962 (two runs), zstd 0.87-0.90 (0.864
   before reads stopped using array_record's thread pool and Grain's reader threads; docs/data.md);
3. decode: image-folder examples/s with N worker processes over N x one worker (models/shapes-cnn's
   PNGs; 1.0 is perfect scaling), in alternating rounds.

    .venv/bin/python benchmarks/input_pipeline.py [--quick] [--workers N] [--decode-workers N] [--pairs N] [--only PART]

`--quick` (the test suite's smoke run) uses 1 MB / 5 MB tables and a few steps: it checks that the
benchmark runs and prints its figures, not the goals.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

FEATURES = 784
CHILD = """
import resource, sys
sys.argv = ["gitops", *sys.argv[1:]]
from gitops.cli import app
try:
    app(prog_name="gitops")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code or 0)
"""


def _write_model(repo: Path, name: str, dataset: dict, train: dict, model: dict) -> None:
    folder = repo / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.yaml").write_text(json.dumps({"dataset": dataset, "splits": {"validation": 0.0, "test": 0.01},
                                                  "preprocessing": {"scale": "none"}}))
    (folder / "model.yaml").write_text(json.dumps(model))
    (folder / "train.yaml").write_text(json.dumps({"seed": 0, "optimizer": {"name": "adam", "learning_rate": 1e-3},
                                                   **train}))
    (folder / "release.yaml").write_text(json.dumps({"description": "benchmark"}))


def _pin(repo: Path, folder: str) -> dict:
    from gitops.learn import checksum_list

    text, _ = checksum_list.write(repo / folder, repo / f"{folder}.sha256")
    return {"path": folder, "checksums": f"{folder}.sha256", "checksums_sha256": hashlib.sha256(text.encode()).hexdigest()}


def _parquet(folder: Path, megabytes: float, seed: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = int(megabytes * 1024**2 / (FEATURES * 4))
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    schema = pa.schema([*(pa.field(f"p{i:03d}", pa.float32()) for i in range(FEATURES)), pa.field("label", pa.int64())])
    with pq.ParquetWriter(folder / "part-0.parquet", schema, compression="none") as writer:
        for start in range(0, rows, 8192):  # written in slices: the generator itself stays small
            n = min(8192, rows - start)
            x = rng.random((n, FEATURES), dtype=np.float32)
            cols = [pa.array(x[:, i]) for i in range(FEATURES)] + [pa.array(rng.integers(0, 10, n))]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=4096)
    return rows


def memory(quick: bool, pairs: int = 1) -> float:
    """Peak RSS of `gitops train` on the big table over the small one: `pairs` interleaved (small, big) runs,
    each a fresh process; prints each pair's ratio and returns the median."""
    small_mb, big_mb = (1, 5) if quick else (100, 1024)
    steps = 5 if quick else 200
    ratios = []
    with tempfile.TemporaryDirectory(prefix="gitops-bench-mem-") as tmp:
        repo = Path(tmp)
        (repo / "gitops.yaml").write_text("{}\n")
        rows = {}
        for label, size in (("small", small_mb), ("big", big_mb)):
            rows[label] = _parquet(repo / label, size, 1)
            _write_model(repo, f"pq-{label}", {"name": "parquet", **_pin(repo, label), "feature_prefix": "p",
                                              "label": "label", "num_classes": 10},
                         {"batch_size": 256, "steps": steps, "eval_every": steps, "checkpoint": {"every_steps": steps}},
                         {"architecture": "mlp", "hidden_sizes": [256]})
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1", "GITOPS_DATA_CACHE": str(repo / ".cache")}
        for pair in range(pairs):
            peaks = {}
            for label, size in (("small", small_mb), ("big", big_mb)):
                done = subprocess.run([sys.executable, "-c", CHILD, "train", f"pq-{label}", "--out", str(repo / "runs"),
                                       "--force"], cwd=repo, env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"train pq-{label} failed:\n{done.stderr[-3000:]}")
                peaks[label] = int(done.stdout.split("MAXRSS_KB")[-1].split()[0]) / 1024
                print(f"memory pair {pair + 1}: {size} MB Parquet ({rows[label]:,} rows x {FEATURES} columns): "
                      f"peak RSS {peaks[label]:,.0f} MiB", flush=True)
            ratios.append(peaks["big"] / peaks["small"])
    ratio = float(np.median(ratios))
    spread = f", pairs {min(ratios):.3f}..{max(ratios):.3f}" if len(ratios) > 1 else ""
    print(f"memory ratio (peak RSS {big_mb} MB table / {small_mb} MB table): {ratio:.3f} median of {len(ratios)}"
          f"{spread}  (goal <= 1.2)", flush=True)
    return ratio


def _session(repo: Path, name: str, dataset: dict, batch: int, hidden: list[int], steps: int):
    from gitops import config
    from gitops.learn import data, train

    _write_model(repo, name, dataset, {"batch_size": batch, "steps": steps, "eval_every": steps,
                                       "checkpoint": {"every_steps": steps}},
                 {"architecture": "mlp", "hidden_sizes": hidden})
    cfg = config.load(name, repo)
    return train.build_session(cfg, data.load(cfg.data, repo))


class _Stepper:
    """Runs a session's training steps from where the last call stopped (the chunks `train` would run)."""

    def __init__(self, session):
        self.session, self.step = session, 0
        self.acc, self.bad = session.zero_metrics(), session.no_divergence()

    def run(self, steps: int) -> float:
        """Seconds to run `steps` more steps, up to the state being computed."""
        import jax

        t0 = time.perf_counter()
        end = self.step + steps
        while self.step < end:
            length = min(self.session.chunk, end - self.step)
            self.acc, self.bad = self.session.run_chunk(self.step, length, self.acc, self.bad)
            self.step += length
        jax.block_until_ready(self.session.state)
        return time.perf_counter() - t0


def _interleaved(ours, reference, steps: int, warm: int, rounds: int) -> tuple[float, float, list[float]]:
    """(median steps/s of `ours`, of `reference`, the ratio of each pair): rounds of ours then reference.

    Each round first runs `warm` untimed steps (the input pipeline's buffers reach their steady state,
    so a buffer filled while the other model ran gives no free batches), then times `steps` steps.
    """
    for stepper in (ours, reference):  # compiles every chunk length a round runs, starts the workers
        stepper.run(warm)
        stepper.run(steps if rounds > 1 else 0)  # (a smoke run's single round may compile while timed)
    mine, theirs = [], []
    for _ in range(rounds):
        for stepper, rates in ((ours, mine), (reference, theirs)):
            stepper.run(warm)
            rates.append(steps / stepper.run(steps))
    return float(np.median(mine)), float(np.median(theirs)), [a / b for a, b in zip(mine, theirs, strict=True)]


def _spread(ratios: list[float]) -> str:
    return f"pairs {min(ratios):.3f}..{max(ratios):.3f}, n={len(ratios)}"


def feed(quick: bool, workers: int) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    with tempfile.TemporaryDirectory(prefix="gitops-bench-feed-") as tmp:
        repo = Path(tmp)
        (repo / "gitops.yaml").write_text("{}\n")
        os.environ["GITOPS_DATA_CACHE"] = str(repo / ".cache")
        for label, options, n, width, batch, hidden, steps, rounds, goal in (
            ("compute-bound 784-1024-1024-10, batch 1024", "group_size:1,uncompressed", 2048 if quick else 20_480, 784,
             1024, [1024, 1024], 2 if quick else 10, 1 if quick else 15, True),
            ("compute-bound 784-1024-1024-10, batch 1024, zstd records", "group_size:1", 2048 if quick else 20_480, 784,
             1024, [1024, 1024], 2 if quick else 10, 1 if quick else 15, False),
            ("tiny 64-128-10, batch 128", "group_size:1", 1024 if quick else 8192, 64, 128, [128], 10 if quick else 300,
             1 if quick else 9, False),
        ):
            rng = np.random.default_rng(0)
            x = rng.random((n, width), dtype=np.float32)
            y = rng.integers(0, 10, n)
            key = f"{width}{'u' if 'uncompressed' in options else ''}"
            (repo / f"ar{key}").mkdir()
            writer = ArrayRecordWriter(str(repo / f"ar{key}" / "part-0.array_record"), options)
            for i in range(n):
                buf = io.BytesIO()
                np.savez(buf, x=x[i], y=y[i])
                writer.write(buf.getvalue())
            writer.close()
            (repo / f"mem{key}").mkdir()
            np.savez(repo / f"mem{key}" / "all.npz", x=x, y=y)
            digest = hashlib.sha256((repo / f"mem{key}" / "all.npz").read_bytes()).hexdigest()
            total = 10**6  # the schedule's length; the steppers stop long before
            memory_session = _session(repo, f"mem{key}", {"name": "file", "path": f"mem{key}/all.npz", "sha256": digest},
                                      batch, hidden, total)
            prefetch = 2
            streamed = _session(repo, f"ar{key}", {"name": "array_record", **_pin(repo, f"ar{key}"), "input_shape": [width],
                                                    "num_classes": 10, "workers": workers, "prefetch": prefetch},
                                batch, hidden, total)
            warm = 0 if quick else 2 * prefetch * max(1, workers) + 2  # batches the pipeline can hold, and some
            a, b, ratios = _interleaved(_Stepper(streamed), _Stepper(memory_session), steps, warm, rounds)
            streamed.feed.close()
            print(f"feed {label}: ArrayRecord + {workers} workers {a:,.1f} steps/s, from memory {b:,.1f} steps/s, "
                  f"ratio {float(np.median(ratios)):.3f} ({_spread(ratios)})  ({'goal >= 0.9' if goal else 'no goal'}; "
                  f"records written with {options!r})", flush=True)


def decode(quick: bool, workers: int) -> None:
    """Image-folder examples/s with `workers` processes over `workers` x one process (perfect scaling: 1.0)."""
    from gitops import config
    from gitops.learn import data, streaming

    os.environ.setdefault("GITOPS_DATA_CACHE", tempfile.mkdtemp(prefix="gitops-bench-cache-"))
    cfg = config.load("shapes-cnn", ROOT)
    ds = data.load(cfg.data, ROOT)
    batches, rounds = (4, 1) if quick else (30, 3)
    feeds = {n: streaming.Feed(ds, 64, seed=0, workers=n, ahead=0) for n in sorted({1, workers})}
    rates: dict[int, list[float]] = {n: [] for n in feeds}
    for f in feeds.values():
        f.next()  # workers started
    for _ in range(rounds):
        for n, f in feeds.items():
            for _ in range(0 if quick else 2 * n * ds.prefetch + 2):  # drain what filled while the other was timed
                f.next()
            t0 = time.perf_counter()
            for _ in range(batches):
                f.next()
            rates[n].append(batches * 64 / (time.perf_counter() - t0))
    for f in feeds.values():
        f.close()
    one, many = float(np.median(rates[1])), float(np.median(rates[workers]))
    print(f"decode image folder: 1 worker {one:,.0f} examples/s, {workers} workers {many:,.0f} examples/s, "
          f"ratio {workers} workers / ({workers} x 1 worker) {many / (workers * one):.2f} (speed-up {many / one:.2f}x; "
          f"on {os.cpu_count()} CPUs)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--workers", type=int, default=0, help="decode worker processes of the streamed runs (0: threads)")
    parser.add_argument("--decode-workers", type=int, default=2, help="N of the image-folder decode scaling")
    parser.add_argument("--pairs", type=int, default=None, help="interleaved (small, big) memory runs (default 3; 1 with --quick)")
    parser.add_argument("--only", choices=("memory", "feed", "decode"), action="append", help="run only these parts")
    args = parser.parse_args()
    parts = args.only or ["memory", "feed", "decode"]
    if "memory" in parts:
        memory(args.quick, args.pairs or (1 if args.quick else 3))
    if "feed" in parts:
        feed(args.quick, args.workers)
    if "decode" in parts:
        decode(args.quick, args.decode_workers)


if __name__ == "__main__":
    main()
