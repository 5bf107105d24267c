"""What every architecture module shares: the registry they register on, and the activation names.

Kept apart from the package's `__init__` (which imports the architecture modules to register them) so the
modules import this leaf and never their own package: no import circle.
"""

from __future__ import annotations

from typing import Any

from gitops.registry import Registry

ARCHITECTURES: Registry = Registry("architecture")


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
