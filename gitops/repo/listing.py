"""`gitops ls` and `gitops runs`: what the repository holds, as data (no jax).

`ls` joins three sources per model: the configs under `models/` (working tree), the registry's tags
(latest version, stages) and the run folders under `runs/` (finished runs whose training fingerprint
no release has used yet: trained but not released). `runs MODEL` lists one model's run folders with
their headline metrics, newest first, like MLflow's run list.
"""

from __future__ import annotations

import json
from dataclasses import field
from pathlib import Path
from typing import Any

from gitops import config
from gitops.records import record
from gitops.registry import runs, tags, versions
from gitops.repo.tree import FsTree


@record
class RunRow:
    """One run folder, read as data."""

    model: str
    run: str  # runs/<model>/<fp12>
    training_fingerprint: str
    status: str  # finished | unfinished | broken
    started_at: str | None
    finished_at: str | None
    steps: int | None
    metrics: dict[str, Any]
    released_as: list[str] = field(default_factory=list)
    current: bool = False  # trained from the model's config in the working tree now

    def as_dict(self) -> dict:
        """The row as a JSON object (every field), for `gitops ls --json`."""
        return dict(self.__dict__)


def _released(backend, model: str | None = None) -> tuple[dict[str, tags.ModelState], dict[tuple[str, str], list[str]]]:
    states = tags.registry_state(backend.list_tags(), only=model)
    by_fp: dict[tuple[str, str], list[str]] = {}
    for st in states.values():
        for v in st.active_versions():
            fp = versions.release_metadata(v.message).get("training_fingerprint")
            if fp:
                by_fp.setdefault((st.model, fp), []).append(v.version)
    return states, by_fp


def _current_fingerprints(root: Path, names: list[str]) -> dict[str, str | None]:
    tree = FsTree(root)
    found: dict[str, str | None] = {}
    for name in names:
        try:
            cfg, _ = config.resolve(name, tree)
        except Exception:  # an unreadable model folder: `validate` reports it; listing goes on
            cfg = None
        found[name] = cfg.training_fingerprint if cfg is not None else None
    return found


def run_rows(root: Path, model: str, by_fp: dict[tuple[str, str], list[str]], current: str | None) -> list[RunRow]:
    """Every run folder of `model` under `runs/`, newest first."""
    folder = root / runs.RUNS_DIR / model
    rows = []
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        rel = f"{runs.RUNS_DIR}/{model}/{run_dir.name}"
        try:
            manifest = json.loads((run_dir / runs.MANIFEST_FILE).read_text(encoding="utf-8"))
            metrics_path = run_dir / runs.METRICS_FILE
            metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        except (OSError, ValueError):
            rows.append(RunRow(model, rel, "", "broken", None, None, None, {}))
            continue
        fp = str(manifest.get("training_fingerprint") or "")
        status = "finished" if runs.is_finished(manifest, metrics) else "unfinished"
        rows.append(RunRow(model, rel, fp, status, manifest.get("started_at"), manifest.get("finished_at"),
                           manifest.get("steps"), metrics if isinstance(metrics, dict) else {},
                           sorted(by_fp.get((model, fp), []), key=tags.SemVer.parse), bool(fp) and fp == current))
    rows.sort(key=lambda r: (r.finished_at or r.started_at or "", r.run), reverse=True)
    return rows


def list_models(root: Path, backend) -> list[dict]:
    """One entry per model (configs and registry together): name, latest version, stages, unreleased runs."""
    names = config.model_names(FsTree(root))
    states, by_fp = _released(backend)
    current = _current_fingerprints(root, names)
    entries = []
    for name in sorted(set(names) | set(states)):
        st = states.get(name, tags.ModelState(name))
        latest = st.latest()
        unreleased = [r.run for r in run_rows(root, name, by_fp, current.get(name))
                      if r.status == "finished" and not r.released_as]
        entries.append({
            "model": name,
            "in_repository": name in names,
            "valid": current.get(name) is not None if name in names else None,
            "latest": latest.version if latest else None,
            "stages": dict(sorted(st.stages.items())),
            "deprecated": st.deprecated,
            "unreleased_runs": unreleased,
        })
    return entries


def list_runs(root: Path, backend, model: str) -> tuple[str, list[RunRow]]:
    """The model's headline metric name and its run folders (newest first)."""
    _, by_fp = _released(backend, model)
    current = _current_fingerprints(root, [model]).get(model) if (root / config.MODELS_DIR / model).is_dir() else None
    headline = None
    if current is not None:
        headline = config.load(model, root).headline_metric()
    return headline or "", run_rows(root, model, by_fp, current)


def format_models(entries: list[dict]) -> str:
    """The `gitops ls` table: model, latest version, stages, unreleased runs; a hint when there are no models.

    `entries` are the dicts `gitops ls --json` prints (keys model, latest, stages, deprecated, in_repository,
    valid, unreleased_runs).
    """
    if not entries:
        return "no models yet (create one: gitops new NAME)"
    rows = [("MODEL", "LATEST", "STAGES", "UNRELEASED RUNS")]
    for e in entries:
        stages = ", ".join(f"{s}={v}" for s, v in e["stages"].items()) or "-"
        name = e["model"] + (" (deprecated)" if e["deprecated"] else "") + ("" if e["in_repository"] else " (removed)")
        if e["valid"] is False:
            name += " (invalid)"
        rows.append((name, e["latest"] or "-", stages, str(len(e["unreleased_runs"])) if e["unreleased_runs"] else "-"))
    return _table(rows)


def format_runs(model: str, headline: str, rows: list[RunRow]) -> str:
    """The `gitops ls MODEL` table: one row per run with status, finish time (UTC), steps, the headline and
    common test metrics and the versions released from it; `*` marks runs of the working tree's config.
    """
    if not rows:
        return f"no runs of {model} under runs/ (train one: gitops train {model})"
    shown = _metric_columns(headline, rows)
    table = [("RUN", "STATUS", "FINISHED", "STEPS", *shown, "RELEASED")]
    for r in rows:
        status = r.status + (" *" if r.current else "")
        finished = (r.finished_at or "")[:19].replace("T", " ") or "-"
        values = [versions.format_number(r.metrics[m]) if m in r.metrics else "-" for m in shown]
        table.append((r.run, status, finished, str(r.steps) if r.steps is not None else "-", *values,
                      ", ".join(r.released_as) or "-"))
    note = "\n* trained from the config in the working tree" if any(r.current for r in rows) else ""
    return _table(table) + note


def _metric_columns(headline: str, rows: list[RunRow]) -> list[str]:
    """The headline metric first, then the test metrics every finished run has (at most three in all)."""
    names = [headline] if headline else []
    common = None
    for r in rows:
        if r.status == "finished":
            keys = {k for k in r.metrics if k.startswith("test/")}
            common = keys if common is None else common & keys
    for name in sorted(common or ()):
        if name not in names:
            names.append(name)
    return names[:3]


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
