"""Losses and metrics, computed on device as sums and counts so nothing syncs with the host per step.

A metric accumulator is a dict `{name: (sum, count)}` of scalars; `accumulate` adds a batch's sums,
`finalize` (host side) divides. Padding rows in evaluation batches carry weight 0. Metrics of installed
plugins are computed beside the built-in ones for every model of their tasks.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from gitops.config import catalog

DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse", "language_modeling": "cross_entropy"}
EXP_OF_MEAN = frozenset({"perplexity"})  # finalized as exp(sum / count): accumulated like the loss


def cross_entropy(outputs: jnp.ndarray, labels: jnp.ndarray, *, label_smoothing: float = 0.0) -> jnp.ndarray:
    """Per-example softmax cross-entropy against integer labels, with optional label smoothing."""
    num_classes = outputs.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    loss = optax.softmax_cross_entropy(outputs, onehot)
    # sequences (language models): the mean over positions is the example's loss
    return jnp.mean(loss, axis=tuple(range(1, loss.ndim))) if loss.ndim > 1 else loss


def _regression_residual(outputs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    return outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1)


def mse(outputs: jnp.ndarray, targets: jnp.ndarray, **_) -> jnp.ndarray:
    """Per-example mean squared error: `outputs` and `targets` (batch, ...) are flattened after the batch axis; returns
    (batch,) float32. Extra keyword arguments (e.g. label_smoothing) are ignored.
    """
    return jnp.mean(_regression_residual(outputs, targets) ** 2, axis=-1)


def mae(outputs: jnp.ndarray, targets: jnp.ndarray, **_) -> jnp.ndarray:
    """Per-example mean absolute error over the flattened non-batch axes; returns (batch,) float32."""
    return jnp.mean(jnp.abs(_regression_residual(outputs, targets)), axis=-1)


def huber(outputs: jnp.ndarray, targets: jnp.ndarray, **_) -> jnp.ndarray:
    """Per-example mean Huber loss with delta=1.0 (`optax.huber_loss`: quadratic below 1, linear above) over the
    flattened non-batch axes; returns (batch,) float32.
    """
    return jnp.mean(optax.huber_loss(_regression_residual(outputs, targets), delta=1.0), axis=-1)


def metric_names(task: str, num_classes: int | None) -> list[str]:
    """The metrics a model of this task produces (loss first), matching `catalog.METRICS`."""
    if task == "regression":
        return ["loss", "mse", "mae"]
    if task == "language_modeling":
        return ["loss", "accuracy", "perplexity", "bits_per_byte"] + plugin_metric_names(task)
    names = ["loss", "accuracy"]
    for k in (3, 5):
        if num_classes is not None and num_classes > k:
            names.append(f"top{k}_accuracy")
    return names + plugin_metric_names(task)


def plugin_metric_names(task: str) -> list[str]:
    """Metrics plugins declare for this task (installed or the repository's package), sorted."""
    return [name for name in catalog.METRICS.plugin_names() if task in catalog.METRICS[name].tasks]


def _topk_hit(outputs: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
    # rank of the true class = number of classes scoring strictly higher; a hit when rank < k
    true_score = jnp.take_along_axis(outputs, labels[:, None], axis=-1)
    return (jnp.sum(outputs > true_score, axis=-1) < k).astype(jnp.float32)


def _argmax_hit(outputs: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """`argmax(outputs, -1) == labels` as float32, computed without an argmax.

    The label is the argmax when no class scores higher and no earlier class ties with it (argmax
    takes the first maximum), or, when NaNs are present, when it is the first NaN (as `jnp.argmax`).
    One compare-and-reduce pass over the scores instead of XLA's (value, index) reduction, which on CPU
    cost several times the whole cross-entropy with its gradient over a language model's
    (batch, length, vocab) logits.
    """
    true_score = jnp.take_along_axis(outputs, labels[..., None], axis=-1)
    earlier = jnp.arange(outputs.shape[-1]) < labels[..., None]
    nan = jnp.isnan(outputs)
    beaten = jnp.where(jnp.isnan(true_score), nan & earlier,
                       nan | (outputs > true_score) | ((outputs == true_score) & earlier))
    return (~jnp.any(beaten, axis=-1)).astype(jnp.float32)


def _per_example(values: jnp.ndarray) -> jnp.ndarray:
    """Mean over every axis but the first: a sequence's positions count as one example."""
    return jnp.mean(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values


def batch_sums(
    names: list[str], per_example_loss: jnp.ndarray, outputs: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray,
    token_bytes: jnp.ndarray | None = None,
) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
    """Sums and counts of each metric over a batch; rows with weight 0 (padding) don't count.

    Language models: `labels` are next tokens (batch, length); `token_bytes` (vocab,) gives each
    token's UTF-8 length, so bits per byte is (sum of cross-entropy in bits) / (sum of label bytes).
    """
    count = jnp.sum(weights)
    values: dict[str, jnp.ndarray] = {"loss": per_example_loss}
    special: dict[str, tuple[jnp.ndarray, jnp.ndarray]] = {}
    if "accuracy" in names:
        values["accuracy"] = _per_example(_argmax_hit(outputs, labels))
    if "perplexity" in names:
        values["perplexity"] = per_example_loss
    if "bits_per_byte" in names:
        positions = labels.shape[1] if labels.ndim > 1 else 1
        bits = per_example_loss * positions / jnp.log(2.0)
        table = jnp.ones((outputs.shape[-1],), jnp.float32) if token_bytes is None else token_bytes
        n_bytes = jnp.sum(table[labels].reshape(labels.shape[0], -1), axis=-1)
        special["bits_per_byte"] = (jnp.sum(bits * weights), jnp.sum(n_bytes * weights))
    for k in (3, 5):
        if f"top{k}_accuracy" in names:
            values[f"top{k}_accuracy"] = _topk_hit(outputs, labels, k)
    if "mse" in names:
        values["mse"] = mse(outputs, labels)
    if "mae" in names:
        values["mae"] = mae(outputs, labels)
    for name in names:
        if name not in values and name not in special:  # a plugin metric: fn(outputs, labels) -> per-example values
            values[name] = jnp.asarray(catalog.METRICS.get(name)(outputs, labels), jnp.float32).reshape(-1)
    return {n: special[n] if n in special else (jnp.sum(values[n] * weights), count) for n in names}


def zeros(names: list[str]) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
    """An empty accumulator for `names`: {name: (sum, count)} of float32 scalars at 0, the start of a scan's carry."""
    return {n: (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)) for n in names}


def accumulate(acc: Mapping, new: Mapping) -> dict:
    """Element-wise sum of two accumulators {name: (sum, count)} over the names of `acc`; jit-safe, no host sync. Raises
    KeyError when `new` lacks one of those names.
    """
    return {n: (acc[n][0] + new[n][0], acc[n][1] + new[n][1]) for n in acc}


def finalize(acc: Mapping, prefix: str = "") -> dict[str, float]:
    """Host-side means, e.g. {"val/accuracy": 0.97}; NaN where nothing was counted."""
    import math

    host = jax.device_get(dict(acc))
    out = {}
    for n, (s, c) in host.items():
        mean = float(s) / float(c) if float(c) else float("nan")
        out[f"{prefix}{n}"] = math.exp(min(mean, 700.0)) if n in EXP_OF_MEAN else mean
    return out
