"""Multi-layer perceptron: flatten, then Linear -> (LayerNorm) -> activation -> dropout per hidden layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from gitops.learn.architectures.base import activation


class MLP(nnx.Module):
    """Multi-layer perceptron, registered as `mlp`: any input shape is flattened per example.

    Input (batch, *input_shape) float; output (batch, num_outputs) float32. Each of `hidden_sizes` is
    Linear -> LayerNorm (if `layer_norm`) -> activation -> dropout (if `dropout` > 0); then a linear head.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden_sizes: Sequence[int] = (128,),
        activation: str = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        sizes = [math.prod(input_shape), *hidden_sizes]
        self.hidden = nnx.List(
            [nnx.Linear(i, o, dtype=dtype, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.norms = nnx.List([nnx.LayerNorm(o, dtype=dtype, rngs=rngs) for o in hidden_sizes] if layer_norm else [])
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.head = nnx.Linear(sizes[-1], num_outputs, dtype=dtype, rngs=rngs)
        self.activation_name = activation

    def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        act = activation(self.activation_name)
        x = x.reshape((x.shape[0], -1))
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = act(x)
            if self.dropout is not None:
                x = self.dropout(x, rngs=rngs)
        return self.head(x).astype(jnp.float32)
