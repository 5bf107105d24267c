"""What do checkpoints cost? (a) training time with a checkpoint every ~0.75 s over training time without,
(b) Orbax's save bandwidth over `np.save` of the same arrays.

(a) The same config (digits MLP widened to 64-1024-1024-10, AdamW: ~13.5 MB of params and optimizer
    state per checkpoint) trains the same steps through `gitops.learn.train.train_and_evaluate` twice per
    pair: with `checkpoint.every_steps` set so a save falls about every `--interval` seconds, and with
    only the final save (which both runs make). Saves are asynchronous (a save thread hands the arrays
    to Orbax, which writes them while the next chunks run). Log/eval intervals are equal in both, so
    both dispatch the same chunks. Time is the run's training time, `manifest.json["wall_time_s"]`: from
    the first step to the end, including waiting for every save to commit (and the final evaluation,
    equal in both), not the set-up and compilation before the first step, which would dilute the ratio.
    Pairs alternate in one process (the order flips every pair); the median of the per-pair ratios and
    every pair are printed. Goal: <= 1.03. Also printed: the same ratio of the process's CPU time
    (user + system, whole call; steadier than wall time on a shared machine), the time the training
    thread spent in `save()` per checkpoint (`manifest.json["checkpoint_time_s"]`), and the load average
    (other processes on the machine make wall-time pairs spread).
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

LOG_EVERY = 50  # the granularity of the checkpoint interval (steps); both runs log and evaluate alike


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


def timed_run(cfg: config.ResolvedConfig, dataset, scratch: Path) -> tuple[float, int, float, float]:
    """(training seconds, checkpoints saved, CPU seconds of the whole call, seconds the training thread
    spent in save()) of one train_and_evaluate call."""
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    saves: list[int] = []
    original = Checkpoints.save

    def counting(self, step, *args, **kwargs):
        saves.append(step)
        return original(self, step, *args, **kwargs)

    Checkpoints.save = counting
    try:
        before = os.times()
        train.train_and_evaluate(cfg, folder, root=ROOT, dataset=dataset)
        after = os.times()
    finally:
        Checkpoints.save = original
    run = RunFolder(folder)
    assert run.is_finished
    manifest = run.manifest
    shutil.rmtree(folder, ignore_errors=True)
    cpu = (after.user - before.user) + (after.system - before.system)
    return float(manifest["wall_time_s"]), len(saves), cpu, float(manifest["checkpoint_time_s"])


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def training_overhead(scratch: Path, seconds: float | None, interval: float, pairs: int) -> float:
    """`seconds` None (quick): 150 steps, a checkpoint every 50, no rate probe."""
    dataset = data.load(training_config(LOG_EVERY, LOG_EVERY).data, ROOT)
    probe_steps = LOG_EVERY * (3 if seconds is None else 10)
    timed_run(training_config(probe_steps, probe_steps), dataset, scratch)  # compile, warm caches
    if seconds is None:
        steps, every = probe_steps, LOG_EVERY
    else:
        t = timed_run(training_config(probe_steps, probe_steps), dataset, scratch)[0]
        rate = probe_steps / t
        steps = max(LOG_EVERY * 4, round(rate * seconds / LOG_EVERY) * LOG_EVERY)
        every = max(LOG_EVERY, round(rate * interval / LOG_EVERY) * LOG_EVERY)
    with_ckpt, without = training_config(steps, every), training_config(steps, steps)
    load = os.getloadavg()[0]
    ratios, cpu_ratios, times_with, times_without, counts, in_save = [], [], [], [], [], []
    for i in range(pairs):
        order = [with_ckpt, without]
        got = {}
        for cfg in order if i % 2 == 0 else order[::-1]:
            got[cfg is with_ckpt] = timed_run(cfg, dataset, scratch)
        (t_with, n, cpu_with, saving), (t_without, _, cpu_without, _) = got[True], got[False]
        times_with.append(t_with)
        times_without.append(t_without)
        counts.append(n)
        in_save.append(saving / n)
        ratios.append(t_with / t_without)
        cpu_ratios.append(cpu_with / cpu_without)
    rate = steps / statistics.median(times_without)
    print(f"training: {steps} steps, a checkpoint every {every} steps (~{every / rate:.2f} s, "
          f"{statistics.median(counts):.0f} saves) vs only the final save; "
          f"{statistics.median(times_with):.2f} s vs {statistics.median(times_without):.2f} s ({pairs} pairs; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"training thread in save(): {statistics.median(in_save) * 1e3:.1f} ms per checkpoint (median)")
    print(f"CPU time with checkpoints / without: median ratio {statistics.median(cpu_ratios):.3f} "
          f"(pairs: {_spread(cpu_ratios)})")
    ratio = statistics.median(ratios)
    print(f"training time with checkpoints / without: median ratio {ratio:.3f} "
          f"(pairs: {_spread(ratios)}; goal <= 1.03)")
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
    parser.add_argument("--interval", type=float, default=0.75, help="seconds between checkpoints in (a)")
    parser.add_argument("--pairs", type=int, default=10, help="interleaved pairs in (a)")
    parser.add_argument("--seconds", type=float, default=6.0, help="training seconds per run in (a)")
    parser.add_argument("--part", choices=("both", "training", "bandwidth"), default="both", help="run (a), (b) or both")
    args = parser.parse_args()
    train.enable_compilation_cache()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {os.cpu_count()} CPUs")
    scratch = Path(tempfile.mkdtemp(prefix="gitops-ckpt-bench-", dir=args.dir))
    try:
        if args.quick:
            training_overhead(scratch, seconds=None, interval=0.0, pairs=1)
            save_bandwidth(scratch, 8 * 1024**2, pairs=2)
        else:
            if args.part != "bandwidth":
                training_overhead(scratch, seconds=args.seconds, interval=args.interval, pairs=args.pairs)
            if args.part != "training":
                save_bandwidth(scratch, 100 * 1000**2, pairs=5)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
