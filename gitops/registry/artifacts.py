"""Run folders and reports handed between workflow jobs and runs as GitHub Actions artifacts.

The PR workflow's train jobs upload `runs/` as `run-<model>-<fingerprint12>`; the report job uploads
`gitops-report` (report.md, report.json, pr-number, head-sha). Reading them back is done here, through
the REST API, so the workflows stay thin and the same code runs under `act`, where the runner-side run
cache (`$GITOPS_RUN_CACHE`) stands in for the artifacts:

- `fetch_runs`: the run folders of a plan's matrix into `runs/` (already there, the run cache, or the
  artifact of this workflow run / this head commit);
- `fetch_report`: the `gitops-report` artifact of one workflow run, taken as data (only its four files);
- `reuse_released_run`: for `ci release-pending`, the run of the merged same-repository PR that brought
  the released config (found by GitHub's commit-to-PR association), from a workflow run whose
  provenance GitHub's API vouches for (`trusted_training_run`); else the caller trains.

Artifacts are untrusted input (a fork PR's run writes them): zip members are checked (no absolute
paths, no `..`, no links, bounded sizes) and every run folder is checked against the fingerprint it
claims before anything uses it.
"""

from __future__ import annotations

import json
import re
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gitops.backends.base import ArtifactInfo, AssetNotFoundError, Backend, PullRequestInfo
from gitops.errors import GitopsError, UsageError
from gitops.registry import runs
from gitops.repo import gitutil

REPORT_ARTIFACT = "gitops-report"
REPORT_FILES = ("report.md", "report.json", "pr-number", "head-sha")
MAX_RUN_ARTIFACT_BYTES = 4 * 1024**3
MAX_REPORT_ARTIFACT_BYTES = 32 * 1024**2
_MODEL_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
_FP12_RE = re.compile(r"^[0-9a-f]{12}$")


def run_artifact_name(model: str, fingerprint: str) -> str:
    """The CI artifact name of a run folder: `run-<model>-<first 12 hex of its training fingerprint>`.

    PR workflows upload a finished run under this name; release and `ci fetch-runs` look it up to reuse it.
    """
    return f"run-{model}-{fingerprint[:12]}"


def _supports_artifacts(backend: Backend | None) -> bool:
    return backend is not None and backend.keeps_ci_artifacts


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
        names = [info.filename.rstrip("/") for info in members if not info.is_dir()]
        if len(names) != len(set(names)):
            raise GitopsError(f"{archive.name}: a member name appears twice")
        written_bytes = 0
        for info in members:
            if info.is_dir() or (only is not None and info.filename not in only):
                continue
            target = dest.joinpath(*PurePosixPath(info.filename).parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):  # the header's sizes may lie: count what comes out
                        written_bytes += len(chunk)
                        if written_bytes > max_bytes:
                            raise GitopsError(f"{archive.name}: more than {max_bytes} bytes unpacked")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:  # a lying size or CRC, a
                # file where a folder must go: this artifact is unusable, the caller tries the next one
                raise GitopsError(f"{archive.name}: member {info.filename!r} is damaged ({exc})") from None
            written.append(target)
    return written


# --- run folders -------------------------------------------------------------------------------------


@dataclass
class Fetched:
    """Where one needed run folder came from: `path` is None and `source` "" when it was not found (`note` says why).

    `fingerprint` is the training fingerprint's first 12 hex digits.
    """
    model: str
    fingerprint: str  # 12 hex
    path: Path | None
    source: str  # "present" | "run cache" | "artifact <id>" | "" (missing)
    note: str = ""


def _finished(folder: Path, fingerprint: str) -> bool:
    """A finished run whose own config.resolved.yaml hashes to `fingerprint` (a prefix of it); a folder
    whose manifest claims it but whose config does not is skipped with a warning (a forged cache entry
    or artifact, a copy of another run)."""
    return runs.trusted_run(folder, fingerprint) is not None


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


def _from_artifact(backend: Backend, artifact: ArtifactInfo, model: str, fp: str, workdir: Path,
                   full_fingerprint: str | None = None) -> Path | None:
    """The run folder <model>/<fp> inside one downloaded run artifact, checked; None if absent or wrong."""
    zpath = workdir / f"artifact-{artifact.id}.zip"
    backend.download_artifact_zip(artifact, zpath, MAX_RUN_ARTIFACT_BYTES)
    unpacked = workdir / f"artifact-{artifact.id}"
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
            ranked = [a for a in candidates if run_id and a.run_id == run_id]
            ranked += [a for a in candidates if a not in ranked and head_sha and a.head_sha == head_sha]
            fetched.note = f"no artifact {name} of this run" + (f" or of head {head_sha[:12]}" if head_sha else "")
            for artifact in ranked[:3]:
                with tempfile.TemporaryDirectory(prefix="gitops-artifact-") as tmp:
                    try:
                        found = _from_artifact(backend, artifact, model, fp, Path(tmp))  # type: ignore[arg-type]
                    except (GitopsError, AssetNotFoundError) as exc:
                        fetched.note = f"artifact {name} (id {artifact.id}): {exc}"
                        continue
                    if found is None:
                        fetched.note = f"artifact {name} (id {artifact.id}) holds no finished run {model}/{fp}"
                        continue
                    runs.copy_tree_atomic(found, target)
                fetched = Fetched(model, fp, target, f"artifact {artifact.id}")
                break
        results.append(fetched)
    return results


# --- provenance of PR runs, read from GitHub's API only ------------------------------------------------

# The one workflow whose runs may feed a release: the base-branch PR training workflow, triggered by
# `pull_request_target` (its definition always comes from the default branch, see docs/workflows.md).
TRAINING_WORKFLOW = ".github/workflows/pr-train.yml"
TRAINING_EVENT = "pull_request_target"


def trusted_training_run(backend: Backend, run_id: Any, *, head_sha: str) -> tuple[bool, str]:
    """Whether workflow run `run_id` is a trusted PR training run of `head_sha`: (ok, why).

    Decided only from GitHub's record of the run (GET /repos/{o}/{r}/actions/runs/{id}), never from
    anything the run wrote: its `event` must be `pull_request_target`, its `path` the training workflow
    (`.github/workflows/pr-train.yml`), its `head_repository` this repository (a fork's run is untrusted
    whatever it uploaded) and its `head_sha` the PR head being released. Call it before reusing a run.
    """
    if not isinstance(run_id, int) or run_id <= 0 or not backend.keeps_ci_artifacts:
        return False, f"no workflow run id ({run_id!r})"
    run = backend.workflow_run(run_id)
    if run is None:
        return False, f"GitHub has no workflow run {run_id}"
    repository = backend.repository
    event, path, head_repo = run.event, run.path, run.head_repository
    run_repo = run.repository or repository
    if run_repo != repository:
        return False, f"run {run_id} belongs to {run_repo or 'another repository'}, not {repository}"
    if event != TRAINING_EVENT or path != TRAINING_WORKFLOW:
        return False, (f"run {run_id} is a {event or '?'} run of {path or '?'}, not a {TRAINING_EVENT} run of "
                       f"{TRAINING_WORKFLOW}")
    if head_repo != repository:
        return False, f"run {run_id} built code from {head_repo or 'an unknown repository'} (a fork): untrusted"
    if run.head_sha != head_sha:
        return False, f"run {run_id} built {(run.head_sha or '?')[:12]}, not the PR head {head_sha[:12]}"
    return True, f"run {run_id}: {event} of {path} at {head_sha[:12]} in {repository}"


def _commits_to_ask(root: Path, model: str, commit: str) -> list[str]:
    """The released commit and the last commit at or before it that touched `models/<model>/`."""
    shas = [commit]
    touched = gitutil.run(root, "log", "-1", "--format=%H", commit, "--", f"models/{model}/", check=False)
    sha = touched.stdout.strip() if touched.returncode == 0 else ""
    if re.fullmatch(r"[0-9a-f]{40}", sha) and sha not in shas:
        shas.insert(0, sha)
    return shas


def merged_pull_requests(root: Path, backend: Backend, model: str, commit: str) -> list[PullRequestInfo]:
    """The merged PRs that brought `model`'s current files into `commit`, by GitHub's commit-to-PR
    association (GET /repos/{o}/{r}/commits/{sha}/pulls), so merge, squash and rebase merges all count."""
    if not backend.hosts_pull_requests:
        return []
    found: dict[int, PullRequestInfo] = {}
    for sha in _commits_to_ask(root, model, commit):
        for pr in backend.pulls_for_commit(sha):
            # merged (merged_at), not merge_commit_sha: an open PR has a merge_commit_sha too (its test merge)
            if pr.merged and pr.number not in found:
                found[pr.number] = pr
    return list(found.values())


def reuse_released_run(root: Path, backend: Backend, model: str, training_fingerprint: str, commit: str,
                       out: Path) -> tuple[Path | None, str]:
    """For a release of `commit`: the run of the merged PR that brought this config, unpacked to
    `out/<model>/<fp12>/`, or (None, why) and the caller retrains.

    The PR is found through GitHub's commit-to-PR association; only a same-repository PR's run is
    considered, and only an artifact `run-<model>-<fp12>` of a workflow run that
    `trusted_training_run` accepts (GitHub's record: pull_request_target run of pr-train.yml at the
    PR head in this repository). The run folder is then checked against the training fingerprint.
    """
    if not _supports_artifacts(backend) or not backend.hosts_pull_requests:
        return None, "the backend keeps no PR runs"
    fp = training_fingerprint[:12]
    name = run_artifact_name(model, fp)
    prs = merged_pull_requests(root, backend, model, commit)
    if not prs:
        return None, f"GitHub associates no merged pull request with {commit[:12]}: no PR run to reuse"
    repository = backend.repository
    why = ""
    artifacts_by_name: list[ArtifactInfo] | None = None
    for pr in prs:
        number, head_repo, head_sha = pr.number, pr.head_repository, pr.head_sha
        if head_repo != repository:
            why = f"PR #{number} came from {head_repo or 'a deleted fork'}: a fork's runs never feed a release"
            continue
        if artifacts_by_name is None:
            artifacts_by_name = backend.list_artifacts(name)
        candidates = [a for a in artifacts_by_name if a.head_sha == head_sha]
        why = f"PR #{number}: no artifact {name} of a run at its head {head_sha[:12]}"
        for artifact in candidates[:5]:
            trusted, reason = trusted_training_run(backend, artifact.run_id, head_sha=head_sha)
            if not trusted:
                why = f"PR #{number}: artifact {name} (id {artifact.id}) not reused: {reason}"
                continue
            with tempfile.TemporaryDirectory(prefix="gitops-artifact-") as tmp:
                try:
                    found = _from_artifact(backend, artifact, model, fp, Path(tmp), training_fingerprint)
                except (GitopsError, AssetNotFoundError) as exc:
                    why = f"PR #{number}: artifact {name} (id {artifact.id}): {exc}"
                    continue
                if found is None:
                    why = f"PR #{number}: artifact {name} (id {artifact.id}) holds no finished run of fingerprint {fp}"
                    continue
                target = Path(out) / model / fp
                runs.copy_tree_atomic(found, target)
            return target, f"reused the run of PR #{number} from artifact {name} ({reason})"
    return None, why


# --- the report artifact -------------------------------------------------------------------------------


def fetch_report(backend: Backend, run_id: int, out: Path) -> Path | None:
    """The `gitops-report` artifact of workflow run `run_id`, its four files only, into `out`; None if absent."""
    if not _supports_artifacts(backend):
        raise UsageError("fetching the report artifact needs the github backend")
    found = backend.list_artifacts(REPORT_ARTIFACT, run_id=run_id)
    found = [a for a in found if a.run_id in (None, run_id)]
    if not found:
        return None
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="gitops-report-") as tmp:
        zpath = Path(tmp) / "report.zip"
        backend.download_artifact_zip(found[0], zpath, MAX_REPORT_ARTIFACT_BYTES)
        written = safe_extract_zip(zpath, out, max_bytes=MAX_REPORT_ARTIFACT_BYTES, only=REPORT_FILES)
    missing = sorted(set(REPORT_FILES) - {p.name for p in written})
    if missing:
        raise GitopsError(f"artifact {REPORT_ARTIFACT} of run {run_id} lacks {', '.join(missing)}")
    return out
