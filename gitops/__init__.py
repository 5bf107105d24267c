"""GitOps for neural-network models.

`gitops.load("digits-mlp@v1.2.0")` (or a stage, or a run folder) returns the trained model with its
params and resolved config. Importing this package is cheap: heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(ref: str, **kwargs: Any) -> Any:
    """Load a released version (`name@v1.2.0`, `name@1.2.0`, `name@stage`) or a run folder."""
    from gitops.api import load as _load

    return _load(ref, **kwargs)
