"""What do checkpoints cost? (a) training time with a checkpoint every ~0.75 s over training time without,
(b) Orbax's save bandwidth over `np.save` of the same arrays.

(a) The same config (digits MLP widened to 64-1024-1024-10, AdamW: ~13.5 MB of params and optimizer
    state per checkpoint) trains the same steps through `gitops.learn.train.train_and_evaluate` three
    ways per round: with `checkpoint.every_steps` set so a save falls every `--interval` seconds (to the
    nearest LOG_EVERY steps, from a probe run's steps/s), with only the final save (which every run
    makes), and, as a reference measured in the same run, on the same save schedule with Orbax replaced
    by `np.save` of the same host arrays (no fsync): the cost of copying the bytes out at all, which no
    checkpoint writer can go below. Saves are asynchronous (a save thread hands the arrays to Orbax,
    which writes them while the next chunks run). Log/eval intervals are equal in all three, so all
    dispatch the same chunks. Time is the run's training time, `manifest.json["wall_time_s"]`: from the
    first step to the end, including waiting for every save to commit (and the final evaluation, equal
    in all), not the set-up and compilation before the first step, which would dilute the ratio. The
    order of the three rotates every round; run folders are deleted only at the end (deleting thousands
    of files between runs makes the next run's file creations slower on ext4, which would be charged to
    whichever run creates more files). The median of the per-round ratios and every round are printed.
    Goal: <= 1.03. Also printed: the same ratio of the process's CPU time (user + system, whole call),
    the time the training thread spent in `save()` per checkpoint (`manifest.json["checkpoint_time_s"]`),
    and the load average (other processes on the machine make wall-time pairs spread).
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

LOG_EVERY = 25  # the granularity of the checkpoint interval (steps); all runs log and evaluate alike


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
        "train.eval_every": LOG_EVERY * 20,
        "train.checkpoint.every_steps": every,
        "train.checkpoint.best_metric": None,
    })


def _numpy_writer(final_step: int):
    """`Checkpoints._save_now` for the reference runs: every save but the final one writes the snapshot's
    host arrays with `np.save` (one file per array, no fsync, no Orbax) and deletes all but the last two
    such folders (as Orbax's retention does); the final one goes to Orbax, so the run hands on a real
    checkpoint as every run does."""
    orbax_save = Checkpoints._save_now

    def save_now(self, step, snapshot, meta, ranked):
        if step == final_step:
            return orbax_save(self, step, snapshot, meta, ranked)
        folder = self.directory.parent / "npy" / str(step)
        folder.mkdir(parents=True)
        for i, leaf in enumerate(jax.tree.leaves(snapshot)):
            np.save(folder / f"{i}.npy", np.asarray(leaf))
        for old in sorted(folder.parent.iterdir(), key=lambda p: int(p.name))[:-2]:
            shutil.rmtree(old)
        return None

    return save_now


def timed_run(cfg: config.ResolvedConfig, dataset, scratch: Path, writer=None) -> tuple[float, int, float, float]:
    """(training seconds, checkpoints saved, CPU seconds of the whole call, seconds the training thread
    spent in save()) of one train_and_evaluate call; `writer` replaces `Checkpoints._save_now`. The run
    folder stays (the caller deletes `scratch` at the end)."""
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    saves: list[int] = []
    original, original_writer = Checkpoints.save, Checkpoints._save_now

    def counting(self, step, *args, **kwargs):
        saves.append(step)
        return original(self, step, *args, **kwargs)

    Checkpoints.save = counting
    if writer is not None:
        Checkpoints._save_now = writer
    try:
        before = os.times()
        train.train_and_evaluate(cfg, folder, root=ROOT, dataset=dataset)
        after = os.times()
    finally:
        Checkpoints.save, Checkpoints._save_now = original, original_writer
    run = RunFolder(folder)
    assert run.is_finished
    manifest = run.manifest
    cpu = (after.user - before.user) + (after.system - before.system)
    return float(manifest["wall_time_s"]), len(saves), cpu, float(manifest["checkpoint_time_s"])


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def training_overhead(scratch: Path, seconds: float | None, interval: float, pairs: int) -> float:
    """`seconds` None (quick): 150 steps, a checkpoint every 50, no rate probe."""
    dataset = data.load(training_config(LOG_EVERY, LOG_EVERY).data, ROOT)
    probe_steps = LOG_EVERY * (6 if seconds is None else 40)
    timed_run(training_config(probe_steps, probe_steps), dataset, scratch)  # compile, warm caches
    if seconds is None:
        steps, every = probe_steps, LOG_EVERY * 2
    else:
        t = timed_run(training_config(probe_steps, probe_steps), dataset, scratch)[0]
        rate = probe_steps / t
        steps = max(LOG_EVERY * 8, round(rate * seconds / LOG_EVERY) * LOG_EVERY)
        every = max(LOG_EVERY, round(rate * interval / LOG_EVERY) * LOG_EVERY)
    arms = {"orbax": (training_config(steps, every), None),
            "without": (training_config(steps, steps), None),
            "np.save": (training_config(steps, every), _numpy_writer(steps))}
    load = os.getloadavg()[0]
    got: dict[str, list[tuple[float, int, float, float]]] = {name: [] for name in arms}
    names = list(arms)
    for i in range(pairs):
        for name in names[i % 3:] + names[:i % 3]:
            cfg, writer = arms[name]
            got[name].append(timed_run(cfg, dataset, scratch, writer))
    walls = {name: [r[0] for r in runs] for name, runs in got.items()}
    cpus = {name: [r[2] for r in runs] for name, runs in got.items()}
    ratios = [a / b for a, b in zip(walls["orbax"], walls["without"], strict=True)]
    floor = [a / b for a, b in zip(walls["np.save"], walls["without"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(cpus["orbax"], cpus["without"], strict=True)]
    saves = [r[1] for r in got["orbax"]]
    in_save = [r[3] / r[1] for r in got["orbax"]]
    rate = steps / statistics.median(walls["without"])
    print(f"training: {steps} steps, a checkpoint every {every} steps (~{every / rate:.2f} s, "
          f"{statistics.median(saves):.0f} saves) vs only the final save; "
          f"{statistics.median(walls['orbax']):.2f} s vs {statistics.median(walls['without']):.2f} s ({pairs} rounds; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"training thread in save(): {statistics.median(in_save) * 1e3:.1f} ms per checkpoint (median)")
    print(f"CPU time with checkpoints / without: median ratio {statistics.median(cpu_ratios):.3f} "
          f"(rounds: {_spread(cpu_ratios)})")
    print(f"reference, np.save instead of Orbax on the same schedule / without: median ratio "
          f"{statistics.median(floor):.3f} (rounds: {_spread(floor)})")
    ratio = statistics.median(ratios)
    print(f"training time with checkpoints / without: median ratio {ratio:.3f} "
          f"(rounds: {_spread(ratios)}; goal <= 1.03)")
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
