"""How much does gitops' training loop cost over a minimal hand-written JAX + Optax loop?

The same MLP, optimizer (clip + AdamW + warm-up/cosine), data and batch size run through
(a) gitops' loop: `gitops.learn.train.build_session` (split NNX state, K steps per dispatch under lax.scan,
    on-device batch gather from (seed, step), metrics summed on device and read back every
    `log_every` steps, divergence check at each read-back), and
(b) a minimal loop: pure functions of (params, opt_state), one jitted step per batch from a pre-staged
    device stack of batches, nothing read back.
Runs alternate (a, b, a, b, ...) in one process; each pair gives a ratio (a's steps/s over b's), and
the median of the ratios is printed, for the digits MLP (64-128-64-10, batch 64: overhead-bound) and
a compute-bound MLP (784-1024-1024-10, batch 1024, random data).

    .venv/bin/python benchmarks/train_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from gitops import config  # noqa: E402
from gitops.learn import data, metrics, optim, train  # noqa: E402


def bench_config(base: str, changes: dict) -> config.ResolvedConfig:
    """A variant of an example config built in memory (nothing written)."""
    doc = config.load(base, ROOT).as_dict()
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = doc
        for part in path:
            node = node[part]
        node[last] = value
    return config.build(f"bench-{base}", doc)


# --- (b) the hand-written loop ----------------------------------------------------------------------


def init_mlp(key, sizes):
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        k = jax.random.fold_in(key, i)
        params.append({"w": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(1.0 / n_in), "b": jnp.zeros(n_out)})
    return params


def mlp_apply(params, x):
    x = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def hand_loop(cfg, dataset, total_steps):
    sizes = [int(np.prod(dataset.train.x.shape[1:])), *cfg.model.params["hidden_sizes"], dataset.preprocessing.num_outputs]
    params = init_mlp(jax.random.key(0), sizes)
    tx = optim.build_optimizer(cfg.train, total_steps)  # the same optax chain
    opt_state = tx.init(params)
    bs = cfg.train.batch_size
    n = len(dataset.train) // bs * bs
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dataset.train))[:n]
    x_np, y_np = dataset.train.x[order], dataset.train.y[order]
    batches = [jax.device_put((x_np[i : i + bs], y_np[i : i + bs])) for i in range(0, n, bs)]  # pre-staged

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt": opt_state, "i": 0}

    def run(steps):
        p, o = state["params"], state["opt"]
        for j in range(steps):
            x, y = batches[(state["i"] + j) % len(batches)]
            p, o, loss = step(p, o, x, y)
        jax.block_until_ready(p)
        state.update(params=p, opt=o, i=state["i"] + steps)

    return run


# --- (a) gitops' loop ------------------------------------------------------------------------------


def gitops_loop(cfg, dataset):
    session = train.build_session(cfg, dataset)
    log_every = cfg.train.log_every
    state = {"step": 0, "acc": session.zero_metrics(), "bad": session.no_divergence(), "reset": False}

    def run(steps):
        step, acc, bad, reset = state["step"], state["acc"], state["bad"], state["reset"]
        end = step + steps
        while step < end:
            target = min(train._next_multiple(step, log_every), end)
            while step < target:
                length = min(session.chunk, target - step)
                acc, bad = session.run_chunk(step, length, acc, bad, reset)
                reset = False
                step += length
            if step % log_every == 0:  # what train_and_evaluate does at a logging step
                host_acc, host_bad = jax.device_get((acc, bad))
                train._divergence(host_bad)
                metrics.finalize(host_acc)
                reset = True
        jax.block_until_ready(session.state)
        state.update(step=step, acc=acc, bad=bad, reset=reset)

    return run, session


def measure(name, cfg, steps, repeats):
    dataset = data.load(cfg.data, ROOT)
    ours, session = gitops_loop(cfg, dataset)
    theirs = hand_loop(cfg, dataset, session.total_steps)
    warm = max(session.chunk, cfg.train.log_every) * 2
    ours(warm)
    theirs(warm)
    rates_a, rates_b, ratios = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours(steps)
        a = steps / (time.perf_counter() - t)
        t = time.perf_counter()
        theirs(steps)
        b = steps / (time.perf_counter() - t)
        rates_a.append(a)
        rates_b.append(b)
        ratios.append(a / b)
    print(f"{name}: gitops {statistics.median(rates_a):,.0f} steps/s, hand-written {statistics.median(rates_b):,.0f} steps/s "
          f"({steps} steps x {repeats} pairs, {session.chunk} steps per dispatch)")
    print(f"{name}: median ratio {statistics.median(ratios):.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)})")
    sys.stdout.flush()
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test, noisy numbers")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    digits = bench_config("digits-mlp", {"model.dropout": 0.0})
    measure("digits-mlp (64-128-64-10, batch 64)", digits, 500 if args.quick else 20000, 2 if args.quick else 7)
    big = bench_config(
        "digits-mlp",
        {
            "model.dropout": 0.0,
            "model.hidden_sizes": [1024, 1024],
            "train.batch_size": 1024,
            "train.log_every": 10,
            "train.eval_every": 10,
            "train.checkpoint.every_steps": 10,
            "data.dataset": {"name": "blobs", "n_samples": 4096, "centers": 10, "n_features": 784, "cluster_std": 1.0},
            "data.splits": {"validation": 0.0, "test": 0.0, "seed": 0},
        },
    )
    measure("compute-bound (784-1024-1024-10, batch 1024)", big, 4 if args.quick else 100, 2 if args.quick else 5)


if __name__ == "__main__":
    main()
