"""Flax NNX architectures, each the implementation of an entry of `gitops.config.catalog.ARCHITECTURES`.

Every module takes its catalog parameters as keyword arguments plus the data's facts
(`input_shape`, `num_outputs`), builds its submodules in `__init__(..., *, rngs)` and computes in
`__call__(x, *, rngs=None)`; `rngs` feeds dropout during training (the train step passes a key derived
from (seed, step), so a resumed run draws the same masks). `model.train()` / `model.eval()` switch
dropout and BatchNorm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gitops.config import catalog
from gitops.learn.architectures.base import activation

__all__ = ["activation", "build_model"]


def build_model(
    architecture: str,
    params: Mapping[str, Any],
    *,
    input_shape: Sequence[int],
    num_outputs: int,
    rngs: Any,
    dtype: Any = None,
) -> Any:
    """Instantiate the registered module for `architecture` with the config's parameters."""
    cls = catalog.ARCHITECTURES.get(architecture)  # imports the module on first use
    return cls(input_shape=tuple(input_shape), num_outputs=num_outputs, dtype=dtype, rngs=rngs, **dict(params))


