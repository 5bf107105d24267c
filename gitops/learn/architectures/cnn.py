"""Convolutional network for images: [conv -> (BatchNorm) -> activation -> pool] per block, then dense layers."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from gitops.learn.architectures.base import activation


class CNN(nnx.Module):
    """Convolutional classifier/regressor for images, registered as `cnn`.

    Input (batch, height, width, channels) float; output (batch, num_outputs) float32 logits or values.
    Each of `channels` is a `kernel_size` conv -> BatchNorm (if `batch_norm`) -> activation -> 2x2 pool
    (`max`, `avg` or `none`); then `dense_sizes` Linear layers, dropout once, and a linear head.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        pool: str = "max",
        dense_sizes: Sequence[int] = (128,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        height, width, in_ch = input_shape
        chans = [in_ch, *channels]
        self.convs = nnx.List(
            [nnx.Conv(i, o, (kernel_size, kernel_size), dtype=dtype, rngs=rngs) for i, o in zip(chans[:-1], chans[1:], strict=True)]
        )
        self.norms = nnx.List([nnx.BatchNorm(o, dtype=dtype, rngs=rngs) for o in channels] if batch_norm else [])
        self.pool_kind = pool
        for _ in channels:
            if pool != "none":
                height, width = max(1, height // 2), max(1, width // 2)
        sizes = [height * width * chans[-1], *dense_sizes]
        self.dense = nnx.List(
            [nnx.Linear(i, o, dtype=dtype, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.head = nnx.Linear(sizes[-1], num_outputs, dtype=dtype, rngs=rngs)
        self.activation_name = activation

    def _pool(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.pool_kind == "none":
            return x
        window = (min(2, x.shape[1]), min(2, x.shape[2]))
        if self.pool_kind == "max":
            return nnx.max_pool(x, window, strides=window)
        return nnx.avg_pool(x, window, strides=window)

    def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        act = activation(self.activation_name)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = self._pool(act(x))
        x = x.reshape((x.shape[0], -1))
        for layer in self.dense:
            x = act(layer(x))
        if self.dropout is not None:
            x = self.dropout(x, rngs=rngs)
        return self.head(x).astype(jnp.float32)
