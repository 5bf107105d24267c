"""Run folders and reports handed between workflow jobs and runs as GitHub Actions artifacts.

The PR workflow's train jobs upload `runs/` as `run-<model>-<fingerprint12>`; the report job uploads
`gitops-report` (report.md, report.json, pr-number, head-sha). Reading them back is done here, through
the REST API, so the workflows stay thin and the same code runs under `act`, where the runner-side run
cache (`$GITOPS_RUN_CACHE`) stands in for the artifacts:

- `fetch_runs`: the run folders of a plan's matrix into `runs/` (already there, the run cache, or the
  artifact of this workflow run / this head commit);
- `fetch_report`: the `gitops-report` artifact of one workflow run, taken as data (only its four files);
- `reuse_released_run`: for `ci release-pending`, a PR run whose artifact was built from a commit that
  is an ancestor of the one being released (else the caller trains).

Artifacts are untrusted input (a fork PR's run writes them): zip members are checked (no absolute
paths, no `..`, no links, bounded sizes) and every run folder is checked against the fingerprint it
claims before anything uses it.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gitops import gitutil, registry_ops, runs
from gitops.backends.base import AssetNotFoundError, Backend
from gitops.errors import GitopsError, UsageError

REPORT_ARTIFACT = "gitops-report"
REPORT_FILES = ("report.md", "report.json", "pr-number", "head-sha")
MAX_RUN_ARTIFACT_BYTES = 4 * 1024**3
MAX_REPORT_ARTIFACT_BYTES = 32 * 1024**2
_MODEL_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
_FP12_RE = re.compile(r"^[0-9a-f]{12}$")


def run_artifact_name(model: str, fingerprint: str) -> str:
    return f"run-{model}-{fingerprint[:12]}"


def _supports_artifacts(backend: Backend | None) -> bool:
    return backend is not None and hasattr(backend, "list_artifacts") and hasattr(backend, "download_artifact_zip")


# --- zip archives, taken as data ------------------------------------------------------------------


def safe_extract_zip(archive: Path, dest: Path, *, max_bytes: int, only: tuple[str, ...] | None = None) -> list[Path]:
    """Extract regular files of `archive` under `dest`; GitopsError on unsafe members or sizes.

    With `only`, just those top-level file names are extracted (everything else is ignored).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise GitopsError(f"{archive.name}: not a zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
        total = 0
        for info in members:
            name = info.filename
            path = PurePosixPath(name)
            mode = info.external_attr >> 16
            if name.startswith(("/", "\\")) or "\\" in name or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
                raise GitopsError(f"{archive.name}: unsafe member name {name!r}")
            if stat.S_ISLNK(mode):
                raise GitopsError(f"{archive.name}: member {name!r} is a link")
            if info.is_dir():
                continue
            if only is not None and name not in only:
                continue
            total += info.file_size
            if total > max_bytes:
                raise GitopsError(f"{archive.name}: more than {max_bytes} bytes unpacked")
        for info in members:
            if info.is_dir() or (only is not None and info.filename not in only):
                continue
            target = dest.joinpath(*PurePosixPath(info.filename).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            written.append(target)
    return written


# --- run folders -------------------------------------------------------------------------------------


@dataclass
class Fetched:
    model: str
    fingerprint: str  # 12 hex
    path: Path | None
    source: str  # "present" | "run cache" | "artifact <id>" | "" (missing)
    note: str = ""


def _finished(folder: Path, fingerprint: str) -> bool:
    try:
        info = registry_ops.read_run(folder)
    except GitopsError:
        return False
    return info.finished and info.training_fingerprint.startswith(fingerprint)


def matrix_items(matrix: Any) -> list[tuple[str, str]]:
    """(model, fingerprint12) pairs of a `ci plan` matrix ({"include": [...]}), checked."""
    if isinstance(matrix, str):
        try:
            matrix = json.loads(matrix)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--matrix is not JSON: {exc}") from None
    include = matrix.get("include") if isinstance(matrix, dict) else matrix
    if not isinstance(include, list):
        raise UsageError('--matrix must be {"include": [{"model": ..., "fingerprint": ...}, ...]}')
    items = []
    for entry in include:
        model = entry.get("model") if isinstance(entry, dict) else None
        fp = str(entry.get("fingerprint") or "")[:12] if isinstance(entry, dict) else ""
        if not isinstance(model, str) or not _MODEL_RE.fullmatch(model) or not _FP12_RE.fullmatch(fp):
            raise UsageError(f"--matrix entry {entry!r} needs a model name and a 12-hex fingerprint")
        items.append((model, fp))
    return items


def _from_artifact(backend: Backend, artifact: dict, model: str, fp: str, workdir: Path,
                   full_fingerprint: str | None = None) -> Path | None:
    """The run folder <model>/<fp> inside one downloaded run artifact, checked; None if absent or wrong."""
    zpath = workdir / f"artifact-{artifact['id']}.zip"
    backend.download_artifact_zip(artifact, zpath, MAX_RUN_ARTIFACT_BYTES)  # type: ignore[attr-defined]
    unpacked = workdir / f"artifact-{artifact['id']}"
    safe_extract_zip(zpath, unpacked, max_bytes=MAX_RUN_ARTIFACT_BYTES)
    zpath.unlink(missing_ok=True)
    for candidate in (unpacked / model / fp, unpacked / "runs" / model / fp):
        if _finished(candidate, full_fingerprint or fp):
            return candidate
    return None


def fetch_runs(root: Path, matrix: Any, out: Path, backend: Backend | None, *, run_id: int | None = None,
               head_sha: str | None = None) -> list[Fetched]:
    """Put the finished run folder of every matrix entry at `out/<model>/<fp12>/` (see the module docstring).

    On GitHub, artifacts of workflow run `run_id` are taken first, then any whose run was at `head_sha`.
    Entries found nowhere come back with `path=None`.
    """
    out = Path(out)
    cache = runs.cache_dir()
    results = []
    for model, fp in matrix_items(matrix):
        target = out / model / fp
        if _finished(target, fp):
            results.append(Fetched(model, fp, target, "present"))
            continue
        if cache is not None and _finished(cache / model / fp, fp):
            runs.copy_tree_atomic(cache / model / fp, target)
            results.append(Fetched(model, fp, target, "run cache"))
            continue
        fetched = Fetched(model, fp, None, "", "no finished run in runs/ or $GITOPS_RUN_CACHE")
        if _supports_artifacts(backend):
            name = run_artifact_name(model, fp)
            candidates = backend.list_artifacts(name)  # type: ignore[union-attr]
            ranked = [a for a in candidates if run_id and (a.get("workflow_run") or {}).get("id") == run_id]
            ranked += [a for a in candidates if a not in ranked and head_sha
                       and (a.get("workflow_run") or {}).get("head_sha") == head_sha]
            fetched.note = f"no artifact {name} of this run" + (f" or of head {head_sha[:12]}" if head_sha else "")
            for artifact in ranked[:3]:
                with tempfile.TemporaryDirectory(prefix="gitops-artifact-") as tmp:
                    try:
                        found = _from_artifact(backend, artifact, model, fp, Path(tmp))  # type: ignore[arg-type]
                    except (GitopsError, AssetNotFoundError) as exc:
                        fetched.note = f"artifact {name} (id {artifact['id']}): {exc}"
                        continue
                    if found is None:
                        fetched.note = f"artifact {name} (id {artifact['id']}) holds no finished run {model}/{fp}"
                        continue
                    runs.copy_tree_atomic(found, target)
                fetched = Fetched(model, fp, target, f"artifact {artifact['id']}")
                break
        results.append(fetched)
    return results


def reuse_released_run(root: Path, backend: Backend, model: str, training_fingerprint: str, commit: str,
                       out: Path) -> tuple[Path | None, str]:
    """For a release of `commit`: the newest unexpired PR run artifact of this exact training fingerprint
    whose workflow run's head commit is an ancestor of `commit` (so the run was built from code that is
    in the released history), unpacked to `out/<model>/<fp12>/`. (None, why) when there is none.
    """
    if not _supports_artifacts(backend):
        return None, "the backend keeps no artifacts"
    fp = training_fingerprint[:12]
    name = run_artifact_name(model, fp)
    why = f"no artifact {name}"
    for artifact in backend.list_artifacts(name)[:5]:  # type: ignore[attr-defined]
        sha = str((artifact.get("workflow_run") or {}).get("head_sha") or "")
        if not re.fullmatch(r"[0-9a-f]{40}", sha) or not gitutil.commit_exists(root, sha):
            why = f"artifact {name} (id {artifact['id']}) was built from {sha[:12] or 'an unknown commit'}, not in this history"
            continue
        if gitutil.run(root, "merge-base", "--is-ancestor", sha, commit, check=False).returncode != 0:
            why = f"artifact {name} (id {artifact['id']}) was built from {sha[:12]}, not an ancestor of {commit[:12]}"
            continue
        with tempfile.TemporaryDirectory(prefix="gitops-artifact-") as tmp:
            try:
                found = _from_artifact(backend, artifact, model, fp, Path(tmp), training_fingerprint)
            except (GitopsError, AssetNotFoundError) as exc:
                why = f"artifact {name} (id {artifact['id']}): {exc}"
                continue
            if found is None:
                why = f"artifact {name} (id {artifact['id']}) holds no finished run of fingerprint {fp}"
                continue
            target = Path(out) / model / fp
            runs.copy_tree_atomic(found, target)
        return target, f"reused the PR run from artifact {name} (id {artifact['id']}, built at {sha[:12]})"
    return None, why


# --- the report artifact -------------------------------------------------------------------------------


def fetch_report(backend: Backend, run_id: int, out: Path) -> Path | None:
    """The `gitops-report` artifact of workflow run `run_id`, its four files only, into `out`; None if absent."""
    if not _supports_artifacts(backend):
        raise UsageError("fetching the report artifact needs the github backend")
    found = backend.list_artifacts(REPORT_ARTIFACT, run_id=run_id)  # type: ignore[attr-defined]
    found = [a for a in found if (a.get("workflow_run") or {}).get("id") in (None, run_id)]
    if not found:
        return None
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="gitops-report-") as tmp:
        zpath = Path(tmp) / "report.zip"
        backend.download_artifact_zip(found[0], zpath, MAX_REPORT_ARTIFACT_BYTES)  # type: ignore[attr-defined]
        written = safe_extract_zip(zpath, out, max_bytes=MAX_REPORT_ARTIFACT_BYTES, only=REPORT_FILES)
    missing = sorted(set(REPORT_FILES) - {p.name for p in written})
    if missing:
        raise GitopsError(f"artifact {REPORT_ARTIFACT} of run {run_id} lacks {', '.join(missing)}")
    return out
