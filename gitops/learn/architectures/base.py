"""What every architecture module shares: the activation names of the catalog, the token lookup.

A leaf apart from the package's `__init__` (which reaches the modules through `gitops.config.catalog.ARCHITECTURES`),
so the modules never import their own package: no import circle.
"""

from __future__ import annotations

from typing import Any


def activation(name: str) -> Any:
    """The jax function of the catalog's activation `name` (relu, gelu, silu, tanh, sigmoid, elu, leaky_relu).

    Raises:
        KeyError: an unknown name (the config schema lists the valid ones, so validation catches it first).
    """
    import jax

    return {
        "relu": jax.nn.relu,
        "gelu": jax.nn.gelu,
        "silu": jax.nn.silu,
        "tanh": jax.numpy.tanh,
        "sigmoid": jax.nn.sigmoid,
        "elu": jax.nn.elu,
        "leaky_relu": jax.nn.leaky_relu,
    }[name]


def embed_tokens(embed: Any, tokens: Any) -> Any:
    """Rows of an `nnx.Embed`'s float32 table for int32 `tokens` (any shape), cast to the layer's dtype afterwards.

    `nnx.Embed.__call__` casts the whole table to the compute dtype before the lookup, so under bf16 the
    gradient's scatter-add sums every occurrence of a token in bf16 (thousands per batch for a byte
    vocabulary: lossy, and on GPUs a contended bf16 atomic). Looking up first keeps that sum in the
    parameter's float32, as a hand-written `table[tokens].astype(bf16)` does. Identical values in float32.
    """
    import jax.numpy as jnp

    rows = jnp.take(embed.embedding[...], tokens, axis=0)
    return rows if embed.dtype is None else rows.astype(embed.dtype)
