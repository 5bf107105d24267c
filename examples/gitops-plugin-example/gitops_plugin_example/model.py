"""tiny-linear: one Linear layer, over the inputs and (optionally) their pairwise products."""

import jax.numpy as jnp
from flax import nnx


class TinyLinear(nnx.Module):
    def __init__(self, *, input_shape, num_outputs, pairwise=True, dtype=None, rngs: nnx.Rngs):
        features = 1
        for size in input_shape:
            features *= size
        self.pairwise = pairwise
        width = features + (features * (features - 1) // 2 if pairwise else 0)
        self.linear = nnx.Linear(width, num_outputs, dtype=dtype, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        x = x.reshape((x.shape[0], -1))
        if self.pairwise:
            i, j = jnp.triu_indices(x.shape[1], k=1)
            x = jnp.concatenate([x, x[:, i] * x[:, j]], axis=1)
        return self.linear(x).astype(jnp.float32)
