"""The public surface the CLI, workflows and notebooks share: `load` a trained model, `release` a model.

`LoadedModel` and the folder loader live in `gitops.learn.loaded` (below both `api` and `start_from`).

`gitops.load(ref)`: a trained model back in Python, ready to predict on raw inputs.

A ref is resolved to a folder by `resolve_ref`: a run folder (or an unpacked release, which has the
same files), or `name@version` / `name@stage`, pulled and verified by `resolve_to_folder`. The folder
is read by `gitops.registry.runs`; its `config.resolved.yaml` rebuilds the config (its training fingerprint
must match the manifest's), the architecture is built abstractly and the handed-on checkpoint
(`manifest.json["checkpoint_step"]`) restored into it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitops import config as config_lib
from gitops.learn.loaded import LoadedModel, load_folder
from gitops.registry import runs


def resolve_to_folder(ref: str, root: Path | None = None, backend_name: str | None = None) -> Path:
    """`name@v1.2.0`, `name@1.2.0` or `name@stage` -> the verified, unpacked release folder.

    Pulls into `.gitops/pulled/<model>/v<version>/` of the repository (`root`, default: found from
    the working folder) through `backend_name` (default: gitops.yaml's); a folder already holding that
    release is reused.

    Raises:
        UsageError: an unknown model, version or stage. IntegrityError: a checksum that differs.
    """
    from gitops.backends import get_backend
    from gitops.registry import pull

    root = root or config_lib.find_root()
    return pull.pull(root, get_backend(backend_name, root), ref)


def train_on_demand(root: Path) -> Callable[[Any], tuple[Path, bool]]:
    """The `train` callable `gitops.registry.release` takes: train `cfg` now into `<root>/runs/` (a line on stderr
    says so first); returns (the finished run folder, False when it was a run-cache hit)."""

    def train_now(cfg: Any) -> tuple[Path, bool]:
        from gitops.learn import dispatch  # heavy: jax, flax, optax, orbax

        sys.stderr.write(f"{cfg.name}: no finished run with fingerprint {cfg.short_fingerprint}; training it now\n")
        result = dispatch.train(cfg, Path(root) / runs.RUNS_DIR, root=root)
        return Path(result.run.path), not result.cache_hit

    return train_now


def release(root: Path, backend: Any, model: str, **options: Any) -> Any:
    """`gitops release MODEL`: `gitops.registry.release.release` (same `options`), training the model first when no
    finished run of HEAD's config exists anywhere (runs/, the run cache, the latest release, a PR's run).

    Returns the `gitops.registry.release.ReleaseResult`; raises what `gitops.registry.release.release` raises.
    """
    from gitops.registry import release as releasing

    return releasing.release(Path(root), backend, model, train=train_on_demand(Path(root)), **options)


def release_pending(root: Path, backend: Any, **options: Any) -> Any:
    """`gitops ci release-pending`: `gitops.registry.release.release_pending` (same `options`), training on demand
    as `release` does. Returns (releases made, (model, error) of each failure)."""
    from gitops.registry import release as releasing

    return releasing.release_pending(Path(root), backend, train=train_on_demand(Path(root)), **options)


def resolve_ref(ref: str | Path) -> Path:
    """The folder a reference names (`gitops.config.refs`: a run folder, MODEL, MODEL@latest|VERSION|STAGE).

    A released version is pulled (verified) into `.gitops/pulled/` of the repository first.
    """
    from gitops.config.refs import parse_target

    target = parse_target(ref)
    if target.path is not None:
        return target.path
    return Path(resolve_to_folder(str(target.ref)))


def load(ref: str | Path, **_: Any) -> LoadedModel:
    """Load a trained model from a run folder or a release (`name`, `name@v1.2.0`, `name@stage`; pulled first).

    Raises:
        UsageError: the reference names no run folder, model, version or stage.
        GitopsError: the run has not finished, or its manifest names no checkpoint step.
        IntegrityError: the folder's config does not hash to its manifest's training fingerprint, or a
            pulled release does not verify.
    """
    folder = resolve_ref(ref)  # first: a wrong reference fails before jax, flax and orbax load (~1.5 s)
    return load_folder(folder)

