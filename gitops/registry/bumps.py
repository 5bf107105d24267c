"""The bump rules: which part of SemVer a new release config takes against the latest release.

- same training fingerprint (only release.yaml changed): patch;
- parameter shapes differ (by abstract evaluation, `nnx.eval_shape`: no FLOPs, no memory; a jax-free
  structural signature where the input shape can't be known without the data): major;
- any other training change (model, train, data, a parent release moved): minor.

Kept apart from `gitops.registry.release` because it is the one part of releasing that builds a model (flax,
imported lazily) and a pure function of two configs, easy to read and test on its own.
"""

from __future__ import annotations

from typing import Any

from gitops import config
from gitops.registry import lineage
from gitops.registry.plan import config_diff

BUMPS = ("auto", "major", "minor", "patch")


def param_shapes(cfg: config.ResolvedConfig) -> dict[str, tuple] | None:
    """Parameter shapes by abstract evaluation (`nnx.eval_shape`): no FLOPs, no memory.

    None when the input shape can't be known without loading the data, or the model builder is
    not available; then `structural_signature` decides.
    """
    docs = cfg.as_dict()
    shape = config.input_shape(docs["data"])
    if shape is None:
        return None
    outputs = config.num_classes(docs["data"]) if cfg.task == "classification" else 1
    try:
        from flax import nnx

        from gitops.learn.architectures import build_model  # the training code's one model factory
    except ImportError:
        return None
    abstract = nnx.eval_shape(lambda: build_model(
        cfg.model.architecture, config.thaw(cfg.model.params), input_shape=shape, num_outputs=outputs or 1,
        rngs=nnx.Rngs(0)))
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))
    out = {}
    for path, leaf in leaves:
        out[jax.tree_util.keystr(path)] = tuple(getattr(leaf, "shape", ()))
    return out


_NON_SHAPE_KEYS = {"activation", "dropout", "pool", "norm_eps"}


def structural_signature(cfg: config.ResolvedConfig) -> Any:
    """A jax-free stand-in for shapes: architecture params that size weights, input shape, classes."""
    data = config.thaw(cfg.data)
    model = {k: v for k, v in cfg.as_dict()["model"].items() if k not in _NON_SHAPE_KEYS}
    docs = cfg.as_dict()
    return {"model": model, "input_shape": config.input_shape(docs["data"]),
            "classes": config.num_classes(docs["data"]), "_data": data is not None}


def shapes_differ(old: config.ResolvedConfig, new: config.ResolvedConfig) -> bool:
    """Whether the two configs build parameters of different shapes (`param_shapes`, else the signature)."""
    a, b = param_shapes(old), param_shapes(new)
    if a is not None and b is not None:
        return a != b
    return structural_signature(old) != structural_signature(new)


def choose_bump(latest_meta: dict, old_cfg: config.ResolvedConfig | None, cfg: config.ResolvedConfig,
                requested: str) -> tuple[str, str]:
    """(bump, reason) against the latest release (`latest_meta`: its tag metadata; `old_cfg`: its config,
    None when it no longer resolves). A `requested` bump other than "auto" wins, with the rules' choice
    in the reason."""
    if latest_meta.get("training_fingerprint") == cfg.training_fingerprint:
        auto, reason = "patch", "release.yaml changed; same training run"
        if old_cfg is not None:
            keys = [k for k, _, _ in config_diff(old_cfg.as_dict().get("release"), cfg.as_dict()["release"])]
            if keys:
                reason = "release.yaml changed: " + ", ".join(f"release.{k}" for k in keys[:6])
    elif old_cfg is None:
        auto, reason = "minor", "training config changed (previous config unavailable)"
    else:
        old_d, new_d = old_cfg.as_dict(), cfg.as_dict()
        keys = [k for k, _, _ in config_diff({k: old_d[k] for k in ("model", "train", "data")},
                                             {k: new_d[k] for k in ("model", "train", "data")})]
        what = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        if shapes_differ(old_cfg, cfg):
            auto, reason = "major", f"parameter shapes changed: {what or 'data or architecture'}"
        else:
            auto, reason = "minor", f"training config changed: {what or 'data fingerprint'}"
    if auto == "minor" and (moved := lineage.parent_change(latest_meta, cfg)):
        auto, reason = "minor", moved + ("" if old_cfg is None or not what else f"; {what}")
    if requested != "auto" and requested != auto:
        return requested, f"{requested} requested ({auto} by the rules: {reason})"
    return auto, reason
