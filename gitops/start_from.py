"""`train.start_from`: initialise a run from a released version or a pinned weights file.

Two halves with one owner:
- jax-free (config loading, `validate`, `ci plan`): the reference's form, cycles across the working
  tree's models, and resolving `MODEL@VERSION|@STAGE` through the registry's git tags to
  `{model, version, sha256}` (the archive checksum the release tag recorded). `config.resolve` writes
  that under `start_from.resolved`, so the training fingerprint covers the parent's bytes.
- at training time (`prepare`, `apply`, `freeze`): pull and verify the parent (as `gitops pull`
  does), read the pinned file, or verify a pinned Orbax folder against its pinned checksum list, match its parameters to the new model by path and shape, load
  them before the first step, and freeze path patterns with `optax.multi_transform`.

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
from pathlib import Path, PurePosixPath
from typing import Any

from gitops import tags
from gitops.errors import GitopsError, IntegrityError, ServiceError, UsageError

# The final layer each architecture's backbone leaves out (None: no separate head).
HEADS: dict[str, str | None] = {"mlp": "head", "cnn": "head", "resnet": "head", "transformer": "head",
                                "decoder": None}
DEFAULT_HEAD = "head"  # plugin architectures: a top-level `head` module if they have one


# --- form (validate: no tags, no jax) --------------------------------------------------------------


def parse_model_ref(text: str) -> tags.Ref:
    """`MODEL@vX.Y.Z` or `MODEL@STAGE` (never a bare model or `latest`: a parent must be named).

    Raises:
        UsageError: any other form.
    """
    ref = tags.parse_ref(text)
    if not ref.version and not ref.stage:
        raise UsageError(f"{text!r} must name a version (MODEL@v1.2.0) or a stage (MODEL@production); "
                         "'latest' would change under a run without anyone deciding it")
    return ref


def safe_relpath(path: str) -> str | None:
    """A repository-relative POSIX path with no `..` and not absolute, or None."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path or not p.parts:
        return None
    return p.as_posix()


def form_problems(spec: Any, architecture: str, tree: Any = None) -> list[tuple[tuple, str]]:
    """What is wrong with a `start_from` mapping's form; [(path inside start_from, message)]."""
    problems: list[tuple[tuple, str]] = []
    if "model" in spec:
        try:
            parse_model_ref(spec["model"])
        except GitopsError as exc:
            problems.append((("model",), str(exc)))
        for key in ("format", "sha256"):
            if key in spec:
                problems.append(((key,), f"{key} belongs to a weights file (path or url), not to start_from.model"))
    folder = spec.get("format") == "orbax"
    if not folder and ("checksums" in spec or "checksums_sha256" in spec):
        problems.append((("checksums",), "a checksum list pins an Orbax folder: add format: orbax (a single "
                                         "safetensors/npz file is pinned by sha256)"))
    if folder:
        if "sha256" in spec:
            problems.append((("sha256",), "an Orbax folder is pinned by its checksum list (checksums + "
                                          "checksums_sha256), not by sha256"))
        for key in ("checksums", "checksums_sha256"):
            if key not in spec and ("path" in spec or "url" in spec):
                problems.append(((key,), f"format: orbax needs {key} (`gitops data checksums FOLDER --out LIST` "
                                         "writes the list; its own sha256 is the pin)"))
        if "checksums" in spec:
            rel = safe_relpath(spec["checksums"])
            if rel is None:
                problems.append((("checksums",), f"{spec['checksums']!r} must be a path inside the repository"))
            elif tree is not None and tree.read(rel) is None:
                problems.append((("checksums",), f"no file {rel} in the repository"))
    if "path" in spec:
        rel = safe_relpath(spec["path"])
        if rel is None:
            problems.append((("path",), f"{spec['path']!r} must be a path inside the repository (no '..', not absolute)"))
        elif tree is not None and not folder and tree.read(rel) is None:
            problems.append((("path",), f"no file {rel} in the repository"))
    return problems


def cycle_problems(name: str, spec: Any, tree: Any) -> list[tuple[tuple, str]]:
    """A model starting from itself or from one of its descendants (followed through the working tree)."""
    if "model" not in spec:
        return []
    from gitops import config

    chain = [name]
    try:
        current: str | None = parse_model_ref(spec["model"]).model
    except GitopsError:
        return []
    loader = config._Loader(tree)
    while current:
        if current in chain:
            return [(("start_from", "model"), "start_from forms a cycle: " + " -> ".join([*chain, current]))]
        chain.append(current)
        rel = f"{config.MODELS_DIR}/{current}"
        if not tree.is_dir(rel):
            return []
        merged = loader.merged(rel, "train")
        parent = (merged.data or {}).get("start_from") if merged is not None and isinstance(merged.data, dict) else None
        try:
            current = parse_model_ref(parent["model"]).model if isinstance(parent, dict) and "model" in parent else None
        except (GitopsError, TypeError):
            return []
    return []


# --- resolving through the registry's tags (no jax) ------------------------------------------------


def registry_tags(root: Path | None) -> list | None:
    """Every tag of the repository at `root` (the local registry view), or None without a git repository."""
    if root is None or not (Path(root) / ".git").exists():
        return None
    from gitops import git_tags  # the local backend's tag reader, without its asset machinery

    try:
        return git_tags.list_tags(Path(root).resolve())
    except GitopsError:
        return None


def resolve_ref(ref_text: str, tag_list: list) -> dict:
    """`{model, version, sha256}` of the active version `ref_text` names in `tag_list`.

    Raises:
        UsageError: no such model, version or stage, or the version is deregistered.
    """
    from gitops.registry_ops import release_metadata

    ref = parse_model_ref(ref_text)
    state = tags.model_state(tag_list, ref.model)
    if not state.versions:
        raise UsageError(f"parent {ref_text}: {ref.model} has no releases in this repository's tags "
                         "(fetch them: git fetch --tags)")
    try:
        version = tags.resolve_ref(state, ref)
    except UsageError as exc:
        raise UsageError(f"parent {ref_text}: {exc}") from None
    if not version.active:
        raise UsageError(f"parent {ref_text}: {ref.model}@{version.version} is deregistered")
    meta = release_metadata(version.message)
    return {"model": ref.model, "version": version.version, "sha256": meta.get("sha256")}


def resolve_into(train_doc: dict, tree: Any) -> str | None:
    """Write `start_from.resolved` into a validated train document; the reason when it can't (None: done).

    A version reference is fixed; a stage reference resolves to the version holding the stage now.
    """
    spec = train_doc.get("start_from")
    if not isinstance(spec, dict) or "model" not in spec:
        return None
    spec.pop("resolved", None)
    tag_list = registry_tags(getattr(tree, "root", None))
    if tag_list is None:
        return f"parent {spec['model']}: no git repository to read the registry's tags from"
    try:
        spec["resolved"] = resolve_ref(spec["model"], tag_list)
    except GitopsError as exc:
        return str(exc)
    return None


def require_resolved(cfg: Any) -> None:
    """Refuse to train a config whose parent is not resolved (exit 1, before any run folder exists)."""
    spec = cfg.train.start_from
    if spec and "model" in spec and "resolved" not in spec:
        raise GitopsError(f"{cfg.name}: train.start_from: {cfg.parent_error or 'parent not resolved'}")


def parent_of(cfg_or_doc: Any) -> dict | None:
    """The resolved parent identity of a config or a resolved train document (None: none or a file)."""
    train = cfg_or_doc.train.start_from if hasattr(cfg_or_doc, "train") else (cfg_or_doc or {}).get("start_from")
    if not train:
        return None
    resolved = train.get("resolved")
    return dict(resolved) if resolved else None


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

        from gitops.pull import cache_dir

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
    writes it) is pinned by `checksums_sha256:`, as streaming datasets are (gitops.checksum_list). A
    local `path:` is verified in place and may hold no file the list leaves out (Orbax would read it
    unverified); a `url:` prefix fetches each listed file by its checksum into the cache and assembles
    the folder there (`<cache>/weights/orbax-<pin>/`), once.

    Raises:
        IntegrityError: the list or a file has another SHA-256 than pinned (exit 1).
        GitopsError: a listed file is missing, or the folder holds unlisted files (exit 1).
        ServiceError: a download still failing after retries (exit 3).
    """
    from gitops import checksum_list, remote_data
    from gitops.pull import cache_dir

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

    from gitops import checkpoint

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

        from gitops import api, pull
        from gitops.backends import get_backend

        resolved = dict(spec["resolved"])
        folder = pull.pull(root, get_backend(None, root), f"{resolved['model']}@{resolved['version']}")
        loaded = api.load(folder)
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
    from gitops.architectures import build_model

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
