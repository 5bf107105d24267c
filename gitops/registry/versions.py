"""Versions and stages: the release tag's message (written and read here), refs, promote/demote/deprecate,
history and garbage collection of run folders.

Everything a report, `history` or `gc` needs is in the annotated tags themselves (the release tag's
message carries fingerprints and metrics as a JSON block, `tag_message` writes it and
`release_metadata` reads it back), so none of them downloads anything. Tag names follow GTO
(`gitops.registry.tags`); run folders are `gitops.registry.runs`'s; the archive a release tag promises is
`gitops.registry.archive`'s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gitops import config, killpoints
from gitops.backends.base import Backend, TagExistsError
from gitops.errors import GitopsError, UsageError
from gitops.registry import archive, runs, tags
from gitops.registry.tag_message import (  # noqa: F401 (re-exported)
    RELEASE_JSON_RE,
    format_number,
    headline,
    release_metadata,
    tag_message,
)
from gitops.repo import gitutil


def missing_assets(backend: Backend, tag: str, meta: dict) -> list[str]:
    """The assets a release tag's metadata promises that its release lacks ([] for tags gitops did not make)."""
    wanted = archive.expected_assets(meta)
    if not wanted:
        return []
    have = set(backend.list_assets(tag))
    return [name for name in wanted if name not in have]


def state(backend: Backend, model: str) -> tags.ModelState:
    """`model`'s versions, stages and events, from the backend's tags."""
    return tags.model_state(backend.list_tags(), model)


def resolve(backend: Backend, ref: str | tags.Ref) -> tuple[tags.ModelState, tags.VersionState]:
    """`MODEL`, `MODEL@v1.2.0`, `MODEL@1.2.0` or `MODEL@STAGE` -> the version it names."""
    parsed = tags.parse_ref(ref) if isinstance(ref, str) else ref
    all_tags = backend.list_tags()
    st = tags.model_state(all_tags, parsed.model)
    if not st.events:
        hint = unknown_model_hint(all_tags, parsed.model)
        if hint:
            raise UsageError(f"{parsed.model} has no releases{hint}")
    return st, tags.resolve_ref(st, parsed)


def unknown_model_hint(all_tags: list, model: str) -> str:
    """" (did you mean 'x'?)" when another model with releases has a close name, else ""."""
    from gitops.config import did_you_mean

    return did_you_mean(model, names=tags.registry_state(all_tags))


# --- stages and lifecycle ------------------------------------------------------------------------


def _create_counted(backend: Backend, make_name, commit: str, message: str, model: str) -> str:
    """Create a GTO tag with a per-model counter; a lost race takes the next number."""
    for _ in range(10):
        name = make_name(tags.next_counter(backend.list_tags(), model))
        try:
            backend.create_tag(name, commit, message)
            return name
        except TagExistsError:
            continue
    raise GitopsError(f"could not create a tag for {model}: the counter kept being taken")


def promote(backend: Backend, ref: str, stage: str, note: str = "", *, root: Path | None = None) -> str:
    """Assign `stage` to a version: tag `<model>#<stage>#<N>` on the version's commit.

    With `root`, the stage must be one `<root>/.gto` allows (as `gto assign` checks).
    `note` is appended to the tag message (a protected stage's `promotion:`/`pull-request:` lines).
    """
    _check_stage(stage, root)
    st, version = resolve(backend, ref)
    if st.stages.get(stage) == version.version:  # e.g. a rerun of a promote killed after its tag: done
        assigned = [e.tag for e in st.events if e.stage == stage and e.version == version.version]
        return assigned[-1] if assigned else tags.assign_tag(st.model, stage, 0)
    missing = missing_assets(backend, version.tag, release_metadata(version.message))
    if missing:
        raise GitopsError(f"{version.tag} has no {', '.join(missing)}; repair it first "
                          f"(`gitops release {st.model} --repair {version.version}`)")
    message = f"Promote {st.model} {version.version} to {stage}\n\nversion: {version.version}\n{note}"
    killpoints.reached("promote.before_tag")
    tag = _create_counted(backend, lambda n: tags.assign_tag(st.model, stage, n), version.commit, message, st.model)
    killpoints.reached("promote.tagged")
    return tag


def demote(backend: Backend, model: str, stage: str, *, root: Path | None = None) -> str:
    """Unassign `stage` from the version holding it: `<model>#<stage>!#<N>` on that version's commit.

    With `root`, the stage must be one `<root>/.gto` allows (as `gto unassign` checks).
    """
    _check_stage(stage, root)
    st = state(backend, model)
    holder = st.stages.get(stage)
    if holder is None:
        hint = unknown_model_hint(backend.list_tags(), model) if not st.events else ""
        raise UsageError(f"no version of {model} is in stage {stage!r}{hint}")
    version = st.versions[holder]
    message = f"Demote {model} {holder} from {stage}\n\nversion: {holder}\n"
    return _create_counted(backend, lambda n: tags.unassign_tag(model, stage, n), version.commit, message, model)


def _check_stage(stage: str, root: Path | None) -> None:
    tags.check_stage(stage)
    if root is not None:
        from gitops.config import gto_config

        gto_config.load(root).check_stage(stage)


def deprecate(backend: Backend, ref: str, root: Path) -> str:
    """`MODEL@VERSION`: deregister that version (`<model>@vX.Y.Z!#N`); `MODEL`: deprecate the model."""
    parsed = tags.parse_ref(ref)
    if parsed.stage:
        raise UsageError("deprecate takes MODEL@VERSION (deregister one version) or MODEL (the whole model)")
    st = state(backend, parsed.model)
    if parsed.version:
        version = tags.resolve_ref(st, parsed)
        if not version.active:
            raise UsageError(f"{parsed.model}@{version.version} is already deregistered")
        message = f"Deregister {parsed.model} {version.version}\n"
        return _create_counted(backend, lambda n: tags.deregister_tag(parsed.model, version.version, n),
                               version.commit, message, parsed.model)
    if not st.events:
        raise UsageError(f"{parsed.model} has no registry tags{unknown_model_hint(backend.list_tags(), parsed.model)}")
    if st.deprecated:
        raise UsageError(f"{parsed.model} is already deprecated")
    message = f"Deprecate {parsed.model}\n"
    return _create_counted(backend, lambda n: tags.deprecate_tag(parsed.model, n),
                           gitutil.head_commit(root), message, parsed.model)


# --- history -------------------------------------------------------------------------------------


def history(backend: Backend, model: str) -> dict:
    """Versions and stage moves of `model`, from tags only."""
    all_tags = backend.list_tags()
    st = tags.model_state(all_tags, model)
    if not st.events:
        raise UsageError(f"{model} has no releases or stage tags{unknown_model_hint(all_tags, model)}")
    versions = []
    for v in sorted(st.versions.values(), key=lambda v: v.semver):
        meta = release_metadata(v.message)
        metrics = meta.get("metrics", {})
        versions.append({
            "version": v.version,
            "date": v.date,
            "author": v.tagger,
            "commit": v.commit,
            "tag": v.tag,
            "active": v.active,
            "prerelease": v.prerelease,
            "stages": sorted(v.stages),
            "bump": meta.get("bump"),
            "reason": meta.get("reason") or _first_line(v.message),
            "headline_metric": meta.get("headline_metric"),
            "headline": {k: metrics[k] for k in [meta.get("headline_metric")] if k in metrics},
            "metrics": metrics,
            "training_fingerprint": meta.get("training_fingerprint"),
            "release_fingerprint": meta.get("release_fingerprint"),
            "start_from": meta.get("start_from"),
        })
    events = [
        {"event": e.action.value, "tag": e.tag, "date": e.date, "author": e.tagger, "commit": e.commit,
         "version": e.version, "stage": e.stage}
        for e in st.events
    ]
    return {"model": model, "deprecated": st.deprecated, "stages": dict(sorted(st.stages.items())),
            "versions": versions, "events": events}


def describe_parent(record: dict | None) -> str:
    """`digits-mlp@v1.2.0 (digits-mlp@production, sha256 1a2b3c4d5e6f)` or the weights file and its pin."""
    if not record:
        return "-"
    sha = (record.get("sha256") or "")[:12]
    if record.get("model"):
        ref = record.get("ref")
        via = f"{ref}, " if ref and ref != f"{record['model']}@{record['version']}" else ""
        return f"{record['model']}@{record['version']} ({via}sha256 {sha or 'unknown'})"
    if record.get("format") == "orbax":
        return f"{record.get('path') or record.get('url')} (Orbax folder, checksum list sha256 {(record.get('checksums_sha256') or '')[:12]})"
    return f"{record.get('path') or record.get('url')} (sha256 {sha})"


def _who(tagger: str) -> str:
    return tagger.split(" <")[0] if tagger else "unknown"


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Rows of cells as aligned text: each column as wide as its widest cell, two spaces apart."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))).rstrip() for row in rows]


def format_history(doc: dict) -> str:
    """`gitops history` as text: aligned columns under a header, so no value runs into the next."""
    lines = [f"{doc['model']}" + ("  (deprecated)" if doc["deprecated"] else "")]
    if doc["stages"]:
        lines.append("stages: " + ", ".join(f"{s} -> {v}" for s, v in doc["stages"].items()))
    lines.append("")
    lines.append("versions:")
    rows = [["VERSION", "DATE (UTC)", "COMMIT", "HEADLINE", "BUMP", "REASON", "AUTHOR", "STATUS"]]
    for v in reversed(doc["versions"]):
        head = ", ".join(f"{k} {format_number(x)}" for k, x in v["headline"].items()) or "-"
        flags = []
        if not v["active"]:
            flags.append("deregistered")
        if v.get("prerelease"):
            flags.append("pre-release")
        flags += [f"[{s}]" for s in v["stages"]]
        rows.append([v["version"], (v["date"] or "")[:19].replace("T", " "), (v["commit"] or "")[:10], head,
                     v["bump"] or "-", v["reason"] or "-", _who(v["author"]), " ".join(flags)])
    lines += columns(rows)
    parents = [v for v in reversed(doc["versions"]) if v.get("start_from")]
    if parents:
        lines.append("")
        lines.append("parents (train.start_from):")
        lines += columns([["VERSION", "PARENT"], *([v["version"], describe_parent(v["start_from"])] for v in parents)])
    moves = [e for e in doc["events"] if e["event"] != "register"]
    if moves:
        lines.append("")
        lines.append("stage moves and lifecycle (the #N in a tag counts every registry event of the model):")
        rows = [["DATE (UTC)", "EVENT", "TAG", "AUTHOR"]]
        unapproved: list[str | None] = []
        for e in reversed(moves):
            if e["event"] == "assign":
                what = f"{e['stage']} <- {e['version']}"
            elif e["event"] == "unassign":
                what = f"{e['stage']} removed from {e['version']}"
            elif e["event"] == "deregister":
                what = f"deregistered {e['version']}"
            elif e["event"] == "deprecate":
                what = "model deprecated"
            else:
                what = e["event"]
            rows.append([(e["date"] or "")[:19].replace("T", " "), what, e["tag"], _who(e["author"])])
            unapproved.append(e.get("unapproved"))
        for line, why in zip(columns(rows), [None, *unapproved], strict=True):
            lines.append(line)
            if why:
                lines.append(f"    UNAPPROVED: {why}")
    return "\n".join(lines)


# --- garbage collection ----------------------------------------------------------------------------


def referenced_fingerprints(backend: Backend) -> set[str]:
    """Training fingerprints (first 12 hex) of every released version (stages point at versions)."""
    keep = set()
    for model_state in tags.registry_state(backend.list_tags()).values():
        for v in model_state.versions.values():
            fp = release_metadata(v.message).get("training_fingerprint")
            if fp:
                keep.add((model_state.model, fp[:12]))
    return keep


def gc(root: Path, backend: Backend, dry_run: bool = False, keep_current: bool = True) -> list[Path]:
    """Remove run folders under runs/ that no release (and so no stage) refers to.

    With `keep_current`, runs matching a model's config in the working tree stay too (the run a PR
    is about to report on or release).
    """
    keep = referenced_fingerprints(backend)
    if keep_current:
        from gitops.repo.tree import FsTree

        tree = FsTree(root)
        for name in config.model_names(tree):
            cfg, _ = config.resolve(name, tree)
            if cfg is not None:
                keep.add((name, cfg.short_fingerprint))
    removed = []
    folder = root / runs.RUNS_DIR
    if not folder.is_dir():
        return removed
    for model_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for run_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            if (model_dir.name, run_dir.name) in keep:
                continue
            removed.append(run_dir)
            if not dry_run:
                shutil.rmtree(run_dir)
    return removed
