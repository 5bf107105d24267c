"""`train.start_from` at training time: initialise a run from a released version or a pinned weights file.

The jax-free half (the reference's form, cycles, resolving it through the registry's tags; what config
loading, `validate` and `ci plan` need) is `gitops.config.parent_ref`. This half (`prepare`, `apply`, `freeze`)
pulls and verifies the parent (as `gitops pull` does), reads the pinned file, or verifies a pinned
Orbax folder against its pinned checksum list, matches its parameters to the new model by path and
shape, loads them before the first step, and freezes path patterns with `optax.multi_transform`.
Parameter paths are the model's `nnx.Param` paths joined by "/" (`hidden/0/kernel`). `params:
backbone` loads every path but the final head (see `HEADS`); decoders tie their output to the
embedding, so their backbone is every parameter. Borrowed idea: timm's / Hugging Face's
"load_state_dict(strict=False)" report of missing and mismatched keys.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops.config.parent_ref import require_resolved, safe_relpath
from gitops.errors import GitopsError, IntegrityError, ServiceError, UsageError

# The final layer each architecture's backbone leaves out (None: no separate head).
HEADS: dict[str, str | None] = {"mlp": "head", "cnn": "head", "resnet": "head", "transformer": "head",
                                "decoder": None}
DEFAULT_HEAD = "head"  # plugin architectures: a top-level `head` module if they have one


# --- weights (training time) -----------------------------------------------------------------------


@dataclass
class Init:
    """What `apply` loads and `freeze` freezes, and the lineage record the manifest and release keep."""

    values: dict[str, Any]  # parameter path -> numpy array
    frozen: list[str]
    record: dict = field(default_factory=dict)


def path_str(path: tuple) -> str:
    """A jax key path (or a plain key tuple) as `hidden/0/kernel` (Variable `.value` steps dropped)."""
    parts = []
    for k in path:
        key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(key))
    while parts and parts[-1] in ("value", "raw_value"):
        parts.pop()
    return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    """A nested dict of arrays (`nnx.to_pure_dict`) as {path: array}."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*prefix, k))
        else:
            out["/".join(str(p) for p in prefix)] = node

    walk(tree, ())
    return out


def _sha256(path: Path) -> str:
    from gitops.checksums import sha256_file  # the one streamed file hasher

    return sha256_file(path)


def _weights_file(spec: Any, root: Path) -> Path:
    """The pinned file, verified (a URL is downloaded once into the cache, by checksum)."""
    want = spec["sha256"]
    if "path" in spec:
        rel = safe_relpath(spec["path"])
        path = (root / rel).resolve() if rel else None
        if path is None or not path.is_relative_to(root.resolve()):
            raise UsageError(f"start_from.path {spec['path']!r} is not inside the repository")
        if not path.is_file():
            raise GitopsError(f"start_from.path: no file {rel} in the repository")
    else:
        import urllib.request

        from gitops.registry.pull import cache_dir

        path = cache_dir() / "weights" / want
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            import tempfile  # not at start-up (tests/test_startup.py)

            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".download-")
            try:
                try:
                    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec["url"], timeout=60) as resp:  # noqa: S310
                        shutil.copyfileobj(resp, out)
                except OSError as exc:  # URLError, HTTPError, timeouts: the outside service, not the config
                    raise ServiceError(f"start_from.url {spec['url']}: download failed ({exc})") from None
                got = _sha256(Path(tmp))
                if got != want:
                    raise IntegrityError(f"start_from.url {spec['url']}: sha256 is {got}, the config pins {want}")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    got = _sha256(path)
    if got != want:
        raise IntegrityError(f"start_from: {spec.get('path') or spec.get('url')} has sha256 {got}, "
                             f"the config pins {want}")
    return path


def read_weights(path: Path, fmt: str) -> dict[str, Any]:
    """{path: numpy array} from a safetensors or npz file; `.` in keys reads as `/` (PyTorch-style names)."""
    import numpy as np

    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
        else:
            from safetensors.numpy import load_file

            raw = load_file(str(path))
    except Exception as exc:  # a corrupt or wrong-format file
        raise GitopsError(f"start_from: cannot read {path.name} as {fmt}: {exc}") from None
    return {k.replace(".", "/"): np.asarray(v) for k, v in raw.items()}


def _inside(path: Path, folder: Path, what: str) -> Path:
    """`path` resolved (symlinks followed), refused unless it stays inside `folder`."""
    real = path.resolve()
    if not real.is_relative_to(folder.resolve()):
        raise UsageError(f"start_from: {what} resolves outside {folder} (a link out of it?)")
    return real


def orbax_folder(spec: Any, root: Path) -> Path:
    """The pinned Orbax folder, every file verified against the pinned checksum list.

    The list (`checksums:`, sha256sum format, paths relative to the folder; `gitops data checksums`
    writes it) is pinned by `checksums_sha256:`, as streaming datasets are (gitops.learn.checksum_list). A
    local `path:` is verified in place and may hold no file the list leaves out (Orbax would read it
    unverified); a `url:` prefix fetches each listed file by its checksum into the cache and assembles
    the folder there (`<cache>/weights/orbax-<pin>/`), once.

    Raises:
        IntegrityError: the list or a file has another SHA-256 than pinned (exit 1).
        GitopsError: a listed file is missing, or the folder holds unlisted files (exit 1).
        ServiceError: a download still failing after retries (exit 3).
    """
    from gitops.learn import checksum_list, remote_data
    from gitops.registry.pull import cache_dir

    rel = safe_relpath(spec["checksums"])
    list_path = _inside(root / rel, root, f"checksums {spec['checksums']}") if rel else None
    if list_path is None or not list_path.is_file():
        raise GitopsError(f"start_from.checksums: no file {spec['checksums']} in the repository")
    pin = spec["checksums_sha256"]
    got = _sha256(list_path)
    if got != pin:
        raise IntegrityError(f"start_from.checksums {rel}: sha256 is {got}, the config pins {pin}")
    entries = checksum_list.parse(list_path.read_text(encoding="utf-8"), rel)
    if "path" in spec:
        prel = safe_relpath(spec["path"])
        base = _inside(root / prel, root, f"path {spec['path']}") if prel else None
        if base is None or not base.is_dir():
            raise GitopsError(f"start_from.path: no folder {spec['path']} in the repository")
        for entry in entries:
            _inside(base / entry.path, base, f"{spec['path']}/{entry.path}")
        extra = sorted(set(checksum_list.list_files(base)) - {e.path for e in entries})
        if extra:
            raise GitopsError(f"start_from.path {spec['path']}: {', '.join(extra[:5])} not in the checksum list {rel} "
                              "(every file Orbax reads must be pinned; regenerate the list and its pin)")
        checksum_list.verify(base, entries, label=rel, pin=pin, cache=remote_data.cache_dir())
        return base
    folder = cache_dir() / "weights" / f"orbax-{pin}"
    if folder.is_dir():
        checksum_list.verify(folder, entries, label=rel, pin=pin, cache=None)
        return folder
    prefix = spec["url"].rstrip("/")
    import tempfile  # not at start-up (tests/test_startup.py)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".orbax-"))
    try:
        for entry in entries:  # checksum_list.parse refused absolute and '..' paths
            blob = remote_data.fetch(f"{prefix}/{entry.path}", entry.sha256)
            (staging / entry.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob, staging / entry.path)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_orbax(folder: Path) -> dict[str, Any]:
    """{path: numpy array} of a plain Orbax pytree checkpoint (what `StandardCheckpointer().save` writes).

    A gitops run's `checkpoints/<step>/state` item reads too (its `model` subtree); `value` leaves of a
    saved `nnx.State` are dropped from the paths.
    """
    import numpy as np

    from gitops.learn import checkpoint

    if not ((folder / "_METADATA").is_file() or (folder / "_CHECKPOINT_METADATA").is_file()):
        raise GitopsError(f"start_from: {folder} is not an Orbax pytree checkpoint (no _METADATA); name the item "
                          "folder StandardCheckpointer saved (for a CheckpointManager: <step>/<item>)")
    try:
        tree = checkpoint.restore_anywhere(folder)
    except Exception as exc:  # a truncated or foreign folder
        raise GitopsError(f"start_from: cannot restore {folder} with Orbax: {type(exc).__name__}: {exc}") from None
    if isinstance(tree, dict) and isinstance(tree.get("model"), dict) and "optimizer" in tree:
        tree = tree["model"]
    out = {}
    for key, value in flatten(tree).items():
        parts = key.split("/")
        while parts and parts[-1] in ("value", "raw_value"):
            parts.pop()
        out["/".join(parts)] = np.asarray(value)
    return out


def source_weights(spec: Any, root: Path) -> tuple[dict[str, Any], dict]:
    """The parent's parameters {path: array} and its identity for the lineage record."""
    if "model" in spec:
        from flax import nnx

        from gitops.backends import get_backend
        from gitops.learn.loaded import load_folder
        from gitops.registry import pull

        resolved = dict(spec["resolved"])
        folder = pull.pull(root, get_backend(None, root), f"{resolved['model']}@{resolved['version']}")
        loaded = load_folder(folder)
        values = {k: v for k, v in flatten(nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))).items()}
        return values, {"ref": spec["model"], **resolved}
    where = {"path": spec["path"]} if "path" in spec else {"url": spec["url"]}
    if spec.get("format") == "orbax":
        values = read_orbax(orbax_folder(spec, root))
        return values, {**where, "checksums": spec["checksums"], "checksums_sha256": spec["checksums_sha256"],
                        "format": "orbax"}
    path = _weights_file(spec, root)
    fmt = spec.get("format") or "safetensors"
    return read_weights(path, fmt), {**where, "sha256": spec["sha256"], "format": fmt}


def head_of(architecture: str, paths: list[str]) -> str | None:
    """The output head's parameter prefix for `architecture` (`HEADS`, else `head`) when `paths` has it;
    None when the model has no such module (`params: backbone` then copies everything).
    """
    head = HEADS.get(architecture, DEFAULT_HEAD)
    return head if head and any(p == head or p.startswith(head + "/") for p in paths) else None


def matches(path: str, pattern: str) -> bool:
    """fnmatch on the path or any of its prefixes (`hidden/0` freezes `hidden/0/kernel` and `/bias`)."""
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def prepare(cfg: Any, root: Path, preprocessing: Any) -> Init | None:
    """Fetch, verify and match the parent's parameters to `cfg`'s model (built abstractly); None: no start_from.

    Raises:
        GitopsError (exit 1): unresolved parent, a checksum mismatch, shapes that don't fit under
        `strict: true`, no parameter in common, or a freeze pattern matching nothing.
    """
    spec = cfg.train.start_from
    if not spec:
        return None
    require_resolved(cfg)
    import jax
    import numpy as np
    from flax import nnx

    from gitops import config as config_lib
    from gitops.learn.architectures import build_model

    abstract = nnx.eval_shape(lambda: build_model(
        cfg.model.architecture, config_lib.thaw(cfg.model.params), input_shape=preprocessing.input_shape,
        num_outputs=preprocessing.num_outputs, rngs=nnx.Rngs(params=0)))
    target = flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    frozen = sorted(p for p in target if any(matches(p, pat) for pat in spec.get("freeze", ())))
    unused = [pat for pat in spec.get("freeze", ()) if not any(matches(p, pat) for p in target)]
    if unused:
        raise GitopsError(f"{cfg.name}: train.start_from.freeze: {', '.join(unused)} match no parameter "
                          f"(paths: {', '.join(sorted(target)[:12])})")
    source, identity = source_weights(spec, root)
    head = head_of(cfg.model.architecture, list(target)) if spec.get("params", "all") == "backbone" else None
    scope = sorted(p for p in target if not (head and (p == head or p.startswith(head + "/"))))
    values, skipped = {}, []
    for p in scope:
        want = tuple(target[p].shape)
        if p not in source:
            skipped.append(f"{p} (not in the parent)")
        elif tuple(np.shape(source[p])) != want:
            skipped.append(f"{p} (parent {tuple(np.shape(source[p]))}, this model {want})")
        else:
            values[p] = np.asarray(source[p], dtype=jax.numpy.dtype(target[p].dtype))
    if skipped and spec.get("strict", True):
        raise GitopsError(f"{cfg.name}: train.start_from (strict: true): parameters don't fit: "
                          + "; ".join(skipped[:8]) + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
                          + (". Use params: backbone for a new head, or strict: false to keep these freshly "
                             "initialised"))
    if not values:
        raise GitopsError(f"{cfg.name}: train.start_from: no parameter of the parent fits this model")
    record = {**identity, "params": spec.get("params", "all"), "strict": bool(spec.get("strict", True)),
              "loaded": sorted(values), "skipped": skipped, "frozen": frozen}
    return Init(values, frozen, record)


def apply(model: Any, init: Init) -> None:
    """Overwrite `model`'s parameters in place with `init.values` (before the optimizer is built)."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)

    def walk(node: Any, prefix: tuple) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*prefix, k)) for k, v in node.items()}
        key = "/".join(str(p) for p in prefix)
        return jnp.asarray(init.values[key]) if key in init.values else node

    nnx.replace_by_pure_dict(state, walk(pure, ()))
    nnx.update(model, state)


def freeze(tx: Any, frozen: list[str]) -> Any:
    """`tx` for trainable parameters, `optax.set_to_zero()` for the frozen paths (optax.multi_transform)."""
    if not frozen:
        return tx
    import jax
    import optax

    frozen_set = set(frozen)

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if path_str(path) in frozen_set else "trainable", params)

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
