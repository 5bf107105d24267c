"""What every architecture module shares: the activation names of the catalog.

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
