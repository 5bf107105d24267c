"""Lineage across models and versions, read from release tags only (no jax, no downloads).

A release records its parent in the tag message's JSON block and in release.json (`start_from`:
model, version, sha256 or a weights file's pin, which parameters loaded, which were frozen). From
those: `gitops lineage MODEL@VERSION` (ancestors up the chain, descendants down it), the parent
column of `gitops history`, the reason of a bump when the parent changed, and `gitops ci stale`:
children whose parent *stage* now resolves to another version than their latest release used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gitops import config
from gitops.config import parent_ref
from gitops.errors import UsageError
from gitops.registry import tags
from gitops.registry.versions import describe_parent, release_metadata  # noqa: F401 - describe_parent: re-exported


def parent_change(latest_meta: dict, cfg: Any) -> str | None:
    """'parent digits-mlp@production moved v1.2.0 -> v1.3.0' when `cfg`'s resolved parent differs
    from the one the latest release recorded (None: same parent, or none either side)."""
    now = parent_ref.parent_of(cfg)
    was = latest_meta.get("start_from") or None
    if now is None and not (was and was.get("model")):
        return None
    if now is None:
        return f"parent {was['model']}@{was['version']} removed"
    ref = dict(cfg.train.start_from).get("model", now["model"])
    if not was or not was.get("model"):
        return f"parent set to {now['model']}@{now['version']}"
    if (was.get("model"), was.get("version"), was.get("sha256")) == (now["model"], now["version"], now["sha256"]):
        return None
    if was["model"] != now["model"]:
        return f"parent changed {was['model']}@{was['version']} -> {now['model']}@{now['version']}"
    if tags.parse_ref(ref).stage:
        return f"parent {ref} moved {was['version']} -> {now['version']}"
    return f"parent {now['model']} changed {was['version']} -> {now['version']}"  # a pinned version edited


def parents_first(names: list[str], tree: Any) -> list[str]:
    """`names` reordered so a model whose start_from names another of them comes after it (stable)."""
    parent: dict[str, str] = {}
    loader = config._Loader(tree)
    for name in names:
        merged = loader.merged(f"{config.MODELS_DIR}/{name}", "train")
        spec = merged.data.get("start_from") if merged is not None and isinstance(merged.data, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("model"), str):
            parent[name] = spec["model"].partition("@")[0]
    ordered: list[str] = []

    def visit(name: str, path: tuple) -> None:
        if name in ordered or name in path:
            return
        if parent.get(name) in names:
            visit(parent[name], (*path, name))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


# --- the chain ---------------------------------------------------------------------------------------


def _node(states: dict[str, tags.ModelState], model: str, version: str) -> dict:
    st = states.get(model) or tags.ModelState(model)
    found = st.find(version)
    if found is None:
        return {"model": model, "version": version, "missing": True, "parent": None}
    meta = release_metadata(found.message)
    return {"model": model, "version": found.version, "sha256": meta.get("sha256"), "date": found.date,
            "active": found.active, "deprecated": st.deprecated, "stages": sorted(found.stages),
            "parent": meta.get("start_from") or None, "missing": False}


def lineage(tag_list: list, ref_text: str) -> dict:
    """{node, ancestors (nearest first), descendants (tree)} of the version `ref_text` names."""
    ref = tags.parse_ref(ref_text)
    states = tags.registry_state(tag_list)
    if ref.model not in states or not states[ref.model].versions:
        raise UsageError(f"{ref.model} has no releases")
    version = tags.resolve_ref(states[ref.model], ref)
    node = _node(states, ref.model, version.version)
    ancestors, seen = [], {(ref.model, version.version)}
    parent = node["parent"]
    while parent and parent.get("model"):
        key = (parent["model"], parent["version"])
        if key in seen:
            break
        seen.add(key)
        up = _node(states, *key)
        ancestors.append(up)
        parent = up["parent"]
    children: dict[tuple, list[tuple]] = {}
    for st in states.values():
        for v in st.versions.values():
            p = release_metadata(v.message).get("start_from") or {}
            if p.get("model"):
                children.setdefault((p["model"], p["version"]), []).append((st.model, v.version))

    def down(key: tuple, path: set) -> list[dict]:
        out = []
        for child in sorted(children.get(key, []), key=lambda mv: (mv[0], tags.SemVer.parse(mv[1]))):
            if child in path:
                continue
            out.append({**_node(states, *child), "children": down(child, path | {child})})
        return out

    return {"node": node, "ancestors": ancestors,
            "descendants": down((ref.model, version.version), {(ref.model, version.version)})}


def _label(node: dict) -> str:
    flags = []
    if node.get("missing"):
        flags.append("not in the registry")
    if node.get("deprecated"):
        flags.append("model deprecated")
    if node.get("active") is False:
        flags.append("deregistered")
    flags += [f"[{s}]" for s in node.get("stages", [])]
    return f"{node['model']}@{node['version']}" + (f"  {' '.join(flags)}" if flags else "")


def format_lineage(doc: dict) -> str:
    """Ancestors root-first, the version itself, then its descendants indented."""
    lines = []
    chain = list(reversed(doc["ancestors"])) + [doc["node"]]
    for depth, node in enumerate(chain):
        parent = node.get("parent")
        how = ""
        if parent and depth:
            how = f"  (loaded {parent.get('params', 'all')}" + (
                f", frozen {', '.join(parent['frozen'])}" if parent.get("frozen") else "") + ")"
        elif parent and not parent.get("model"):
            lines.append(describe_parent(parent).replace(" (sha256", " (weights file, sha256"))
            depth_marker = "  "
            lines.append(f"{depth_marker}-> {_label(node)}")
            continue
        prefix = "  " * depth + ("-> " if depth else "")
        lines.append(prefix + _label(node) + (" <" if node is doc["node"] else "") + how)

    def down(nodes: list[dict], depth: int) -> None:
        for child in nodes:
            lines.append("  " * depth + "-> " + _label(child))
            down(child["children"], depth + 1)

    down(doc["descendants"], len(chain))
    return "\n".join(lines)


# --- stale children ------------------------------------------------------------------------------


def moved_parents(configs: dict[str, Any], tag_list: list) -> list[dict]:
    """Of these resolved configs, those whose `start_from` now resolves to another parent version than
    their latest release recorded: [{model, parent_ref, was, now, latest_release, reason}].

    Models never released, or whose parent does not resolve now, are left out (`train`/`ci plan`
    report the latter). A fixed version reference only moves with an edit, which plans anyway.
    """
    states = tags.registry_state(tag_list)
    out = []
    for name, cfg in sorted(configs.items()):
        spec = dict(cfg.train.start_from or {})
        now = parent_ref.parent_of(cfg)
        latest = (states.get(name) or tags.ModelState(name)).latest()
        if "model" not in spec or now is None or latest is None:
            continue
        was = release_metadata(latest.message).get("start_from") or {}
        if was.get("model") == now["model"] and was.get("version") == now["version"]:
            continue
        was_text = was.get("version") or "none"
        out.append({"model": name, "parent_ref": spec["model"], "was": was_text, "now": now["version"],
                    "latest_release": latest.version,
                    "reason": f"parent {spec['model']} moved {was_text} -> {now['version']}"})
    return out


def stale(root: Path) -> list[dict]:
    """`gitops ci stale`: `moved_parents` over the working tree's models and the repository's tags."""
    from gitops.repo.tree import FsTree

    tree = FsTree(root)
    tag_list = parent_ref.registry_tags(root)
    if tag_list is None:
        return []
    configs = {}
    for name in config.model_names(tree):
        cfg, _ = config.resolve(name, tree)
        if cfg is not None and cfg.train.start_from:
            configs[name] = cfg
    return moved_parents(configs, tag_list)
