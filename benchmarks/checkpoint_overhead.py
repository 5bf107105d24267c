"""What do checkpoints cost? (a) training time with a checkpoint every ~1 s over training time without,
(b) Orbax's save bandwidth over `np.save` of the same arrays.

(a) The same config (digits MLP widened to 64-1024-1024-10, AdamW: ~13 MB of params and optimizer
    state per checkpoint) trains the same steps through `gitops.learn.train.train_and_evaluate` twice per
    pair: with `checkpoint.every_steps` set so a save falls about every `--interval` seconds, and with
    only the final save (which both runs make). Saves are asynchronous (Orbax writes in a background
    thread while the next chunks run). Log/eval intervals are equal in both, so both dispatch the same
    chunks. Time is the whole call, data already loaded, including waiting for every save to commit.
    Pairs alternate in one process (the order flips every pair); the median of the per-pair ratios is
    printed. Goal: <= 1.03.
(b) ~100 MB of float32 arrays saved by `gitops.learn.checkpoint.Checkpoints` (Orbax CheckpointManager,
    StandardSave) and by `np.save` (one .npy per array), into the same folder (same disk), each
    followed by `os.sync()` so neither is credited for data still in the page cache. Pairs alternate;
    the median ratio of bandwidths (Orbax over np.save) is printed. Goal: >= 0.8.

    .venv/bin/python benchmarks/checkpoint_overhead.py [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gitops import config  # noqa: E402
from gitops.learn import data, train  # noqa: E402
from gitops.learn.checkpoint import Checkpoints  # noqa: E402
from gitops.registry.runs import RunFolder  # noqa: E402

LOG_EVERY = 100


def bench_config(changes: dict) -> config.ResolvedConfig:
    doc = config.load("digits-mlp", ROOT).as_dict()
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = doc
        for part in path:
            node = node[part]
        node[last] = value
    return config.build("bench-checkpoints", doc)


def training_config(steps: int, every: int) -> config.ResolvedConfig:
    return bench_config({
        "model.hidden_sizes": [1024, 1024],
        "model.dropout": 0.0,
        "train.steps": steps,
        "train.log_every": LOG_EVERY,
        "train.eval_every": LOG_EVERY * 10,
        "train.checkpoint.every_steps": every,
        "train.checkpoint.best_metric": None,
    })


def timed_run(cfg: config.ResolvedConfig, dataset, scratch: Path) -> tuple[float, int]:
    """Seconds for one whole train_and_evaluate call, and how many checkpoints it saved."""
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    saves: list[int] = []
    original = Checkpoints.save

    def counting(self, step, *args, **kwargs):
        saves.append(step)
        return original(self, step, *args, **kwargs)

    Checkpoints.save = counting
    try:
        t = time.perf_counter()
        train.train_and_evaluate(cfg, folder, root=ROOT, dataset=dataset)
        seconds = time.perf_counter() - t
    finally:
        Checkpoints.save = original
    assert RunFolder(folder).is_finished
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, len(saves)


def training_overhead(scratch: Path, seconds: float | None, interval: float, pairs: int) -> float:
    """`seconds` None (quick): 300 steps, a checkpoint every 100, no rate probe."""
    dataset = data.load(training_config(LOG_EVERY, LOG_EVERY).data, ROOT)
    probe_steps = LOG_EVERY * (3 if seconds is None else 10)
    t, _ = timed_run(training_config(probe_steps, probe_steps), dataset, scratch)  # compile, warm caches
    if seconds is None:
        steps, every = probe_steps, LOG_EVERY
    else:
        t, _ = timed_run(training_config(probe_steps, probe_steps), dataset, scratch)
        rate = probe_steps / t
        steps = max(LOG_EVERY * 4, round(rate * seconds / LOG_EVERY) * LOG_EVERY)
        every = max(LOG_EVERY, round(rate * interval / LOG_EVERY) * LOG_EVERY)
    with_ckpt, without = training_config(steps, every), training_config(steps, steps)
    ratios, times_with, times_without, counts = [], [], [], []
    for i in range(pairs):
        order = [(with_ckpt, times_with), (without, times_without)]
        for cfg, out in order if i % 2 == 0 else order[::-1]:
            t, n = timed_run(cfg, dataset, scratch)
            out.append(t)
            if cfg is with_ckpt:
                counts.append(n)
        ratios.append(times_with[-1] / times_without[-1])
    rate = steps / statistics.median(times_without)
    print(f"training: {steps} steps, a checkpoint every {every} steps (~{every / rate:.2f} s, "
          f"{statistics.median(counts):.0f} saves) vs only the final save; "
          f"{statistics.median(times_with):.2f} s vs {statistics.median(times_without):.2f} s ({pairs} pairs)")
    ratio = statistics.median(ratios)
    print(f"training time with checkpoints / without: median ratio {ratio:.3f} "
          f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)}; goal <= 1.03)")
    sys.stdout.flush()
    return ratio


def _tree(total_bytes: int) -> dict:
    pieces = 4
    n = total_bytes // 4 // pieces
    rng = np.random.default_rng(0)
    return {"model": {f"w{i}": jax.device_put(rng.standard_normal(n, dtype=np.float32)) for i in range(pieces)}}


def _nbytes(tree: dict) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def save_bandwidth(scratch: Path, total_bytes: int, pairs: int) -> float:
    tree = _tree(total_bytes)
    size = _nbytes(tree)

    def orbax_once() -> float:
        folder = Path(tempfile.mkdtemp(prefix="orbax-", dir=scratch))
        ckpt = Checkpoints(folder / "checkpoints", keep=1)
        t = time.perf_counter()
        ckpt.save(1, tree, {"step": 1})
        ckpt.wait()
        os.sync()
        seconds = time.perf_counter() - t
        ckpt.close()
        shutil.rmtree(folder, ignore_errors=True)
        return seconds

    def numpy_once() -> float:
        folder = Path(tempfile.mkdtemp(prefix="npy-", dir=scratch))
        t = time.perf_counter()
        for name, leaf in tree["model"].items():
            np.save(folder / f"{name}.npy", np.asarray(leaf))
        os.sync()
        seconds = time.perf_counter() - t
        shutil.rmtree(folder, ignore_errors=True)
        return seconds

    orbax_once(), numpy_once()  # warm-up: thread pools, first-touch allocations
    os.sync()
    ratios, orbax_bw, numpy_bw = [], [], []
    for i in range(pairs):
        first, second = (orbax_once, numpy_once) if i % 2 == 0 else (numpy_once, orbax_once)
        a = first()
        os.sync()
        b = second()
        os.sync()
        t_orbax, t_numpy = (a, b) if first is orbax_once else (b, a)
        orbax_bw.append(size / t_orbax / 1e6)
        numpy_bw.append(size / t_numpy / 1e6)
        ratios.append(t_numpy / t_orbax)
    print(f"save: {size / 1e6:.0f} MB in 4 arrays, each save followed by os.sync(); Orbax "
          f"{statistics.median(orbax_bw):,.0f} MB/s, np.save {statistics.median(numpy_bw):,.0f} MB/s ({pairs} pairs)")
    ratio = statistics.median(ratios)
    print(f"save bandwidth Orbax / np.save: median ratio {ratio:.3f} "
          f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)}; goal >= 0.8)")
    sys.stdout.flush()
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test, noisy numbers")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: the system's temp folder)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checkpoints in (a)")
    args = parser.parse_args()
    train.enable_compilation_cache()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {os.cpu_count()} CPUs")
    scratch = Path(tempfile.mkdtemp(prefix="gitops-ckpt-bench-", dir=args.dir))
    try:
        if args.quick:
            training_overhead(scratch, seconds=None, interval=0.0, pairs=1)
            save_bandwidth(scratch, 8 * 1024**2, pairs=2)
        else:
            training_overhead(scratch, seconds=10.0, interval=args.interval, pairs=5)
            save_bandwidth(scratch, 100 * 1000**2, pairs=5)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
