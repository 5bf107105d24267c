"""The pure, jitted functions of training: a chunk of train steps and an evaluation pass.

Speed on small models comes from three choices (see FACTS.md and benchmarks/train_overhead.py):
the (model, optimizer) graph is split once outside the loop and the jitted functions take and return
the plain `nnx.State` (merging inside the trace costs nothing at run time); several steps run per
dispatch under `jax.lax.scan`; and the training data lives on the device, each batch a gather by
indexes that depend on (seed, step) only; an epoch's shuffle (a sort of the whole training split) is
computed once per epoch by `make_permutations`, not in every dispatch. Metrics accumulate on device
as sums and counts, and the first step whose loss or gradient norm is not finite is recorded on
device, so the host reads anything back only at logging, evaluation and checkpoint boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gitops.learn import data as data_lib
from gitops.learn import metrics as metrics_lib


@dataclass(frozen=True)
class StepSpec:
    """Static facts the step functions close over (hashable; no config object reaches the trace)."""

    loss: Callable[..., jnp.ndarray]
    label_smoothing: float
    metric_names: tuple[str, ...]
    augment: Callable | None
    accumulate: int
    batch_size: int
    n_train: int
    steps_per_epoch: int
    batch_sharding: Any = None  # NamedSharding of a batch over the mesh's data axis (gitops.learn.parallel); None: one device
    token_bytes: Any = None  # language models: (vocab,) float32 UTF-8 length of each token, for bits per byte

    def epochs_spanned(self, length: int) -> int:
        """Most epochs a chunk of `length` consecutive steps can touch."""
        return math.ceil((length - 1) / self.steps_per_epoch) + 1 if length > 1 else 1


def _micro_update(graphdef, spec: StepSpec, state, x, y, key):
    """One forward/backward pass and optimizer call on a (micro-)batch; returns (state, loss, grad-norm, sums)."""
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
        outputs = model(x, rngs=nnx.Rngs(dropout=key))
        per_example = spec.loss(outputs, y, label_smoothing=spec.label_smoothing)
        return jnp.mean(per_example), (per_example, outputs)

    (loss, (per_example, outputs)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    sums = metrics_lib.batch_sums(list(spec.metric_names), per_example, outputs, y, jnp.ones_like(per_example),
                                  spec.token_bytes)
    _, new_state = nnx.split((model, optimizer))
    return new_state, loss, optax.tree.norm(grads), sums


def train_step(graphdef, spec: StepSpec, state, acc, bad, step, x_all, y_all, perms, first_epoch, base_key):
    """One optimizer step (pure): gather the step's batch, augment, update, accumulate metrics.

    `bad` is {"step": -1, ...} until a step sees a non-finite loss or gradient norm; then it holds
    that step's number (1-based: the step count after it), loss and gradient norm, and keeps them.
    """
    idx = data_lib.batch_indices(perms, first_epoch, step, spec.steps_per_epoch, spec.batch_size)
    if spec.batch_sharding is not None:  # data parallel: each device gathers and trains on its slice
        idx = jax.lax.with_sharding_constraint(idx, spec.batch_sharding)
    return train_on_batch(graphdef, spec, state, acc, bad, step, x_all[idx], y_all[idx], base_key)


def train_on_batch(graphdef, spec: StepSpec, state, acc, bad, step, x, y, base_key):
    """One optimizer step (pure) on a given batch: augment, update, accumulate metrics (see `train_step`)."""
    key = jax.random.fold_in(base_key, step)
    if spec.augment is not None:
        x = spec.augment(jax.random.fold_in(key, 2), x)
    dropout_key = jax.random.fold_in(key, 1)
    k = spec.accumulate
    if k == 1:
        state, loss, gnorm, sums = _micro_update(graphdef, spec, state, x, y, dropout_key)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    else:
        xs = x.reshape((k, x.shape[0] // k, *x.shape[1:]))
        ys = y.reshape((k, y.shape[0] // k, *y.shape[1:]))
        if spec.batch_sharding is not None:  # every micro-batch split over all devices
            micro = NamedSharding(spec.batch_sharding.mesh, PartitionSpec(None, *spec.batch_sharding.spec))
            xs, ys = jax.lax.with_sharding_constraint((xs, ys), (micro, micro))

        def micro(carry, inputs):
            state, ok, sums = carry
            i, xm, ym = inputs
            state, loss, gnorm, new = _micro_update(graphdef, spec, state, xm, ym, jax.random.fold_in(dropout_key, i))
            return (state, ok & jnp.isfinite(loss) & jnp.isfinite(gnorm), metrics_lib.accumulate(sums, new)), (loss, gnorm)

        init = (state, jnp.bool_(True), metrics_lib.zeros(list(spec.metric_names)))
        (state, finite, sums), (losses, gnorms) = jax.lax.scan(micro, init, (jnp.arange(k), xs, ys))
        loss, gnorm = jnp.mean(losses), jnp.max(gnorms)
    acc = metrics_lib.accumulate(acc, sums)
    first = (bad["step"] < 0) & ~finite
    bad = {
        "step": jnp.where(first, step + 1, bad["step"]),
        "loss": jnp.where(first, loss, bad["loss"]),
        "grad_norm": jnp.where(first, gnorm, bad["grad_norm"]),
    }
    return state, acc, bad


def make_permutations(spec: StepSpec, out_sharding: Any = None) -> Callable:
    """`perms(data_key, first_epoch, count=C)`: the shuffles of epochs first_epoch .. first_epoch+C-1, (C, n_train) int32.

    Jitted on its own so a run computes each epoch's permutation once (the Session keeps the last one)
    instead of sorting the whole training split again in every dispatch: with one step per dispatch
    (every architecture but the MLP) that sort cost a few percent of a small language model's step and
    grows with the data. `out_sharding` replicates the result over a mesh.
    """
    pinned = {} if out_sharding is None else {"out_shardings": out_sharding}

    @partial(jax.jit, static_argnames=("count",), **pinned)
    def perms(data_key, first_epoch, *, count: int):
        return data_lib.epoch_permutations(data_key, first_epoch, count, spec.n_train)

    return perms


def make_train_chunk(graphdef, spec: StepSpec, out_shardings: Any = None) -> Callable:
    """`run(state, acc, bad, start, x_all, y_all, perms, base_key, reset, length=K)`: K steps in one dispatch.

    `perms` are the permutations of the epochs from `start // steps_per_epoch` on, at least
    `spec.epochs_spanned(K)` of them (from `make_permutations`); state, metric sums and the divergence
    flag are donated so XLA updates them in place. `out_shardings` (state, acc, bad) pins where
    results live on a mesh, so a donated state keeps its sharding from chunk to chunk.
    """
    pinned = {} if out_shardings is None else {"out_shardings": out_shardings}

    @partial(jax.jit, static_argnames=("length",), donate_argnums=(0, 1, 2), **pinned)
    def run(state, acc, bad, start, x_all, y_all, perms, base_key, reset, *, length: int):
        # `reset` zeroes the metric sums on device (after a logging read-back) without another dispatch
        acc = jax.tree.map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), acc)
        first_epoch = start // spec.steps_per_epoch

        def body(carry, step):
            state, acc, bad = carry
            return train_step(graphdef, spec, state, acc, bad, step, x_all, y_all, perms, first_epoch, base_key), None

        if length == 1:  # no loop at all: XLA:CPU runs convolutions inside while-loops several times slower
            return train_step(graphdef, spec, state, acc, bad, start, x_all, y_all, perms, first_epoch, base_key)
        (state, acc, bad), _ = jax.lax.scan(body, (state, acc, bad), start + jnp.arange(length))
        return state, acc, bad

    return run


def make_batch_step(graphdef, spec: StepSpec, out_shardings: Any = None) -> Callable:
    """`run(state, acc, bad, step, x, y, base_key, reset)`: one step on a batch fed from the host.

    The streaming pipeline (`gitops.learn.streaming`) uses it: batches come from Grain, not from a split held
    on the device. Keys are folded from (seed, step) exactly as in `make_train_chunk`.
    """
    pinned = {} if out_shardings is None else {"out_shardings": out_shardings}

    @partial(jax.jit, donate_argnums=(0, 1, 2), **pinned)
    def run(state, acc, bad, step, x, y, base_key, reset):
        acc = jax.tree.map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), acc)
        return train_on_batch(graphdef, spec, state, acc, bad, step, x, y, base_key)

    return run


def eval_step(model_graphdef, spec: StepSpec, model_state, xs, ys, ws) -> dict[str, Any]:
    """Sums and counts of every metric over a padded split `(batches, batch, ...)`; padding has weight 0."""

    def body(acc, batch):
        x, y, w = batch
        model = nnx.merge(model_graphdef, model_state)
        outputs = model(x)
        per_example = spec.loss(outputs, y, label_smoothing=spec.label_smoothing)
        sums = metrics_lib.batch_sums(list(spec.metric_names), per_example, outputs, y, w, spec.token_bytes)
        return metrics_lib.accumulate(acc, sums), None

    acc, _ = jax.lax.scan(body, metrics_lib.zeros(list(spec.metric_names)), (xs, ys, ws))
    return acc


def make_eval(model_graphdef, spec: StepSpec) -> Callable:
    """Jitted `eval_step` for a model graph in eval mode (dropout off, BatchNorm running averages)."""
    return jax.jit(partial(eval_step, model_graphdef, spec))
