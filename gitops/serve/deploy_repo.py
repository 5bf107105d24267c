"""`gitops deploy MODEL@STAGE --to-repo PATH|URL`: keep a Kustomize deploy repository equal to the registry.

The deploy repository is what Argo CD or Flux syncs a cluster to. Its layout (Kustomize's base +
overlays, so users add their own patches beside ours):

```
<deploy root>/
  base/<model>/            Deployment, Service, HorizontalPodAutoscaler for the generic serving image
                           (version-free: the same for every stage), kustomization.yaml
  overlays/<stage>/        kustomization.yaml listing (under `bases:`) one folder per model the stage serves
                           (`--path` picks another folder, e.g. envs/production)
  overlays/<stage>/<model>/
                           configmap.yaml (GITOPS_MODEL/VERSION/SHA256/STAGE/STAGE_TAG: what the pod
                           pulls and verifies at start-up) and kustomization.yaml (the base plus the
                           ConfigMap; its commonAnnotations carry version and sha256, so a new version
                           changes the pod template and rolls the Deployment)
```
One commit per stage move (the message names model, version, stage and the stage tag); a stage whose
files already say the same writes no commit; a demoted stage (GTO's `<model>#<stage>!#<N>`) removes
the model's folder and its entry from the overlay in a commit that says so. Only our own entries in
an overlay's `resources:` are touched; other keys (the user's patches, namespace) are kept.

`--to-repo` is a folder (committed in the git repository that holds it; `git init` when there is
none) or a URL (cloned shallow into a temporary folder, committed, pushed; a rejected push is retried
on a fresh clone).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gitops import jsonio
from gitops.errors import GitopsError, UsageError
from gitops.registry import tags
from gitops.repo import gitutil
from gitops.serve import deploy

KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
ANNOTATION = "gitops.dev"
GENERIC_IMAGE = "ghcr.io/gitops-nn/gitops-serve"  # built by .github/workflows/image.yml from docker/Dockerfile
PUSH_ATTEMPTS = 3
ARTIFACTS_SECRET = "gitops-artifacts"
_URL_RE = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.I)


@dataclass(frozen=True)
class StageMove:
    """What a stage should serve: `version` None means the model leaves the stage."""

    model: str
    stage: str
    version: str | None
    sha256: str
    stage_tag: str  # the newest assign/unassign tag of this stage, or "" when none


@dataclass(frozen=True)
class DeployResult:
    """What one stage move did to the deploy repository: the move, the new commit (None when the files
    already said so) and the commit message.
    """

    move: StageMove
    commit: str | None  # None: the deploy repository already said this (no commit)
    message: str


def default_image() -> str:
    """The generic serving image of this gitops version."""
    import gitops

    return f"{GENERIC_IMAGE}:v{gitops.__version__}"


def is_url(target: str) -> bool:
    """True when `target` is a git URL (`scheme://...` or scp-like `user@host:path`), not a folder."""
    return bool(_URL_RE.match(target))


def overlay_path(stage: str, path: str | None) -> str:
    """The stage's overlay folder inside the deploy root: `overlays/<stage>` or a relative `--path`."""
    rel = path or f"overlays/{stage}"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in rel:
        raise UsageError(f"--path {rel!r} must be a relative folder inside the deploy repository (no '..')")
    return pure.as_posix()


# --- what a stage should serve -------------------------------------------------------------------


def stage_move(state: tags.ModelState, stage: str) -> StageMove:
    """The stage's current holder (or None after a demote) and the tag that made it so."""
    from gitops.registry.versions import release_metadata

    tags.check_stage(stage)
    moves = [e for e in state.events if e.stage == stage and e.action in (tags.Action.ASSIGN, tags.Action.UNASSIGN)]
    stage_tag = moves[-1].tag if moves else ""
    holder = state.stages.get(stage)
    if holder is None:
        return StageMove(state.model, stage, None, "", stage_tag)
    version = state.versions[holder]
    sha = release_metadata(version.message).get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise GitopsError(f"{version.tag}: the release tag records no archive sha256; a deployed pod could not "
                          "verify what it pulls (re-release it with gitops)")
    return StageMove(state.model, stage, holder, sha, stage_tag)


# --- manifests -----------------------------------------------------------------------------------


def release_configmap_name(model: str) -> str:
    """The name of the ConfigMap that tells a model's pods which release to pull: `<model>-release`."""
    return f"{model}-release"


def base_manifests(model: str, image: str, opts: deploy.DeployOptions) -> dict[str, dict]:
    """`base/<model>/`: Deployment/Service/HPA of the generic image, configured by the stage's ConfigMap.

    The container's own command (the image's CMD) pulls GITOPS_MODEL@GITOPS_VERSION, checks its
    sha256 and serves it; /healthz is liveness, /readyz (a warmed version) readiness.
    """
    docs = deploy.kubernetes(model, "generic", image, opts)
    for doc in docs.values():
        _drop_version_labels(doc)
    container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": release_configmap_name(model)}},
                            # the artifact store's credentials (AWS_*, AZURE_STORAGE_*), when the cluster
                            # has no workload identity for it
                            {"secretRef": {"name": ARTIFACTS_SECRET, "optional": True}}]
    container["env"] = [
        {"name": "GITHUB_REPOSITORY", "valueFrom": {"configMapKeyRef": {
            "name": release_configmap_name(model), "key": "GITHUB_REPOSITORY", "optional": True}}},
        {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "gitops-github", "key": "token",
                                                                "optional": True}}},
    ]
    files = dict(docs)
    files["kustomization.yaml"] = {"apiVersion": KUSTOMIZE_API, "kind": "Kustomization",
                                   "resources": ["deployment.yaml", "service.yaml", "hpa.yaml"]}
    return files


def _drop_version_labels(doc) -> None:
    if isinstance(doc, dict):
        labels = doc.get("labels")
        if isinstance(labels, dict):
            labels.pop("app.kubernetes.io/version", None)
        for value in doc.values():
            _drop_version_labels(value)
    elif isinstance(doc, list):
        for value in doc:
            _drop_version_labels(value)


def pod_env(github_repository: str = "", store=None) -> dict[str, str]:
    """What the pods need besides the version to pull it: the GitHub repository (github backend) and, for an
    S3-compatible artifact store with its own endpoint, `AWS_ENDPOINT_URL_S3` (botocore's variable; the
    store's credentials come from the optional Secret `gitops-artifacts`, never from a ConfigMap)."""
    env = {}
    if github_repository:
        env["GITHUB_REPOSITORY"] = github_repository
    if store is not None and store.endpoint_url and store.url.lower().startswith("s3://"):
        env["AWS_ENDPOINT_URL_S3"] = store.endpoint_url
    return env


def configmap(move: StageMove, env: dict[str, str] | None = None) -> dict:
    """The ConfigMap naming the version (and its archive's sha256) the stage serves, plus `pod_env()`."""
    data = {"GITOPS_MODEL": move.model, "GITOPS_VERSION": move.version or "", "GITOPS_SHA256": move.sha256,
            "GITOPS_STAGE": move.stage, "GITOPS_STAGE_TAG": move.stage_tag}
    data.update(sorted((env or {}).items()))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": release_configmap_name(move.model),
                         "labels": {"app.kubernetes.io/name": move.model, "app.kubernetes.io/managed-by": "gitops"}},
            "data": data}


def model_overlay(move: StageMove, base_rel: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    """`overlays/<stage>/<model>/`: the base plus the ConfigMap; annotations roll the pods on a change."""
    return {
        "configmap.yaml": configmap(move, env),
        "kustomization.yaml": {
            "apiVersion": KUSTOMIZE_API, "kind": "Kustomization",
            "bases": [base_rel],
            "resources": ["configmap.yaml"],
            "commonAnnotations": {f"{ANNOTATION}/version": move.version or "",
                                  f"{ANNOTATION}/sha256": move.sha256,
                                  f"{ANNOTATION}/stage-tag": move.stage_tag},
        },
    }


def _dump(doc: dict) -> str:
    import yaml

    return "# Written by gitops deploy; edit the stage's kustomization.yaml (patches) instead.\n" + \
        yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# --- applying a move to a folder ---------------------------------------------------------------------


def plan_files(root: Path, move: StageMove, opts: deploy.DeployOptions, image: str, path: str | None,
               env: dict[str, str] | None = None) -> dict[str, str | None]:
    """Relative path -> new text (None: remove) that bring the deploy root `root` to `move`."""
    from gitops.config.yamlio import load_yaml_text

    overlay = overlay_path(move.stage, path)
    model_dir = f"{overlay}/{move.model}"
    changes: dict[str, str | None] = {}
    stage_kust = root / overlay / "kustomization.yaml"
    if stage_kust.is_file():
        doc = load_yaml_text(stage_kust.read_bytes(), str(stage_kust)).data or {}
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k) or [], list) for k in ("resources", "bases")):
            raise UsageError(f"{stage_kust}: expected a Kustomization whose `resources:` and `bases:` are lists")
    else:
        doc = {"apiVersion": KUSTOMIZE_API, "kind": "Kustomization"}
    # Folders go under `bases:` (deprecated in kustomize v5 but still read there, and the only way
    # kustomize v2.0 -- Debian's kubectl 1.20 -- accepts a folder); a user who moved our entry to
    # `resources:` (`kustomize edit fix`) keeps it there.
    bases = list(doc.get("bases") or [])
    resources = list(doc.get("resources") or [])
    if move.version is None:
        bases = [b for b in bases if b != move.model]
        resources = [r for r in resources if r != move.model]
        for existing in sorted((root / model_dir).rglob("*")) if (root / model_dir).is_dir() else []:
            if existing.is_file():
                changes[existing.relative_to(root).as_posix()] = None
    else:
        if move.model not in bases and move.model not in resources:
            bases = sorted([*bases, move.model])
        base_dir = f"base/{move.model}"
        for name, body in base_manifests(move.model, image, opts).items():
            changes[f"{base_dir}/{name}"] = _dump(body)
        base_rel = os.path.relpath(base_dir, model_dir).replace(os.sep, "/")
        for name, body in model_overlay(move, base_rel, env).items():
            changes[f"{model_dir}/{name}"] = _dump(body)
    if stage_kust.is_file() or move.version is not None:
        doc["bases"] = bases
        if resources or "resources" in doc:
            doc["resources"] = resources
        changes[f"{overlay}/kustomization.yaml"] = _dump(doc)
    # keep only real changes
    out: dict[str, str | None] = {}
    for rel, text in changes.items():
        target = root / rel
        _inside(root, target)
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current != text:
            out[rel] = text
    return out


def _inside(root: Path, target: Path) -> None:
    """Refuse a path that leaves the deploy root through a symlink."""
    resolved_root = root.resolve()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.resolve().is_relative_to(resolved_root):
        raise UsageError(f"{target} leaves the deploy repository {root} (a symlink?); refusing to write there")


def write_files(root: Path, changes: dict[str, str | None]) -> None:
    """Apply `changes` (path relative to `root` -> text, or None to delete) to the deploy repository.

    Each file is written through a temporary sibling and renamed; a deletion also removes folders it
    leaves empty. The paths are checked to stay inside `root` when the changes are planned.
    """
    for rel, text in changes.items():
        target = root / rel
        if text is None:
            if target.exists():
                target.unlink()
            parent = target.parent
            while parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)


def commit_message(move: StageMove) -> str:
    """Names model, version, stage and the stage tag (the deploy repository's log is the deploy log)."""
    if move.version is None:
        head = f"Remove {move.model} from {move.stage}"
        if move.stage_tag:
            head += f" (demoted: {move.stage_tag})"
        body = f"model: {move.model}\nstage: {move.stage}\nstage-tag: {move.stage_tag or '-'}\naction: remove\n"
    else:
        head = f"Deploy {move.model} {move.version} to {move.stage}"
        if move.stage_tag:
            head += f" ({move.stage_tag})"
        body = (f"model: {move.model}\nversion: {move.version}\nstage: {move.stage}\n"
                f"stage-tag: {move.stage_tag or '-'}\nsha256: {move.sha256}\naction: deploy\n")
    return f"{head}\n\n{body}"


# --- the deploy repository ----------------------------------------------------------------------------


def _commit(repo: Path, root: Path, changes: dict[str, str | None], message: str) -> str:
    write_files(root, changes)
    paths = [str((root / rel).relative_to(repo)) for rel in changes]
    gitutil.run(repo, "add", "-A", "--", *paths)
    gitutil.run(repo, "commit", "--quiet", "--no-verify", "-m", message, "--", *paths,
                env=gitutil.identity_env(repo))
    return gitutil.head_commit(repo)


def _folder_repo(folder: Path) -> tuple[Path, Path]:
    """(git top level, deploy root) for a folder target; `git init` a new folder outside any repository."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = gitutil.run(folder, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        gitutil.run(folder, "init", "--quiet", "-b", "main")
        return folder.resolve(), folder.resolve()
    return Path(proc.stdout.strip()).resolve(), folder.resolve()


def apply(target: str, move: StageMove, opts: deploy.DeployOptions, *, image: str | None = None,
          path: str | None = None, env: dict[str, str] | None = None, branch: str = "main") -> DeployResult:
    """Bring the deploy repository `target` (folder or URL) to `move`; one commit, or none when unchanged.

    Raises:
        UsageError: a bad --path, a path escaping the repository, an overlay that is not a Kustomization.
        ServiceError: a URL that cannot be cloned or pushed after retries.
    """
    image = image or default_image()
    message = commit_message(move)
    if not is_url(target):
        repo, root = _folder_repo(Path(target))
        changes = plan_files(root, move, opts, image, path, env)
        if not changes:
            return DeployResult(move, None, message)
        return DeployResult(move, _commit(repo, root, changes, message), message)
    from gitops.errors import ServiceError

    env = _auth_env(target)
    last = ""
    for _ in range(PUSH_ATTEMPTS):
        work = Path(tempfile.mkdtemp(prefix="gitops-deploy-"))
        try:
            clone = gitutil.run(work, "clone", "--quiet", "--depth", "1", "--branch", branch, target, "repo",
                                check=False, env=env)
            if clone.returncode != 0:
                raise ServiceError(f"could not clone the deploy repository: {_scrub(clone.stderr)}")
            repo = work / "repo"
            changes = plan_files(repo, move, opts, image, path, env)
            if not changes:
                return DeployResult(move, None, message)
            commit = _commit(repo, repo, changes, message)
            pushed = gitutil.run(repo, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", check=False,
                                 env=env)
            if pushed.returncode == 0:
                return DeployResult(move, commit, message)
            last = _scrub(pushed.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise ServiceError(f"could not push to the deploy repository after {PUSH_ATTEMPTS} attempts: {last}")


def _scrub(text: str) -> str:
    """Git's message, last 300 characters, with any `user:password@` of a URL blanked."""
    return re.sub(r"//[^/@\s]+@", "//***@", text.strip())[-300:]


def _auth_env(url: str) -> dict[str, str] | None:
    """Git config (GIT_CONFIG_* variables, never on the command line or in the clone's config) sending
    $GITOPS_DEPLOY_TOKEN to an https deploy repository, as actions/checkout sends its token."""
    import base64
    import urllib.parse

    token = os.environ.get("GITOPS_DEPLOY_TOKEN", "").strip()
    parts = urllib.parse.urlsplit(url)
    if not token or parts.scheme != "https" or not parts.hostname:
        return None
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.https://{parts.hostname}/.extraheader",
            "GIT_CONFIG_VALUE_0": f"AUTHORIZATION: basic {basic}", "GIT_TERMINAL_PROMPT": "0"}


def stage_from_ref(ref: str) -> tags.Ref:
    """`MODEL@STAGE`, `MODEL#STAGE`, or a stage tag (`MODEL#STAGE#N`, `MODEL#STAGE!#N`) -> a stage ref."""
    parsed = tags.parse(ref.strip())
    if parsed is not None and parsed.action in (tags.Action.ASSIGN, tags.Action.UNASSIGN):
        return tags.Ref(parsed.model, stage=parsed.stage)
    r = tags.parse_ref(ref)
    if not r.stage:
        raise UsageError(f"{ref}: --to-repo deploys a stage: give MODEL@STAGE (e.g. {r.model}@staging) or a stage tag")
    return r


def stages_to_sync(states: dict[str, tags.ModelState]) -> list[tuple[str, str]]:
    """(model, stage) for every stage any tag ever assigned or unassigned, sorted."""
    found = set()
    for model, state in states.items():
        for e in state.events:
            if e.stage and e.action in (tags.Action.ASSIGN, tags.Action.UNASSIGN):
                found.add((model, e.stage))
    return sorted(found)


# --- deploying stages from the registry ------------------------------------------------------------


def deploy_stages(root: Path, backend, settings, pairs: list[tuple[str, str]], *, target: str = "",
                  path: str | None = None, image: str = "", gpu: bool = False, replicas: int | None = None,
                  github_repository: str = "", say=None) -> None:
    """Bring each (model, stage) of `pairs` in the deploy repository (`target`, else gitops.yaml's
    `deploy.repository`) to what the registry says; one commit per changed stage, a line to `say` each.
    A stage that fails does not stop the others; a protected stage whose holder is unapproved
    (`promotions.approval`) is not deployed.

    Raises:
        UsageError: no deploy repository, or a `--path` outside it (before any commit).
        ServiceError: every failed stage failed on the deploy repository's server (clone/push; exit 3).
        GitopsError: any other failure, one line per stage (exit 1).
    """
    from gitops.registry import promotions

    say = say or (lambda text: None)
    target = target or settings.deploy.repository
    if not target:
        raise UsageError("no deploy repository: pass --to-repo PATH|URL (or set deploy.repository in gitops.yaml), "
                         "or --render DIR")
    if not is_url(target) and not Path(target).is_absolute():
        target = str(Path(root) / target)
    paths = {stage: path or settings.deploy.path.replace("{stage}", stage) for _, stage in pairs}
    for stage, rel in paths.items():  # a bad --path is the command line's fault: refuse before any commit
        overlay_path(stage, rel)
    states = tags.registry_state(backend.list_tags())
    opts = deploy.DeployOptions(gpu=gpu or settings.deploy.gpu, replicas=replicas or settings.deploy.replicas)
    env = pod_env(github_repository, settings.artifacts)
    failures: list[tuple[str, GitopsError]] = []
    for model, stage in pairs:
        state = states.get(model, tags.ModelState(model))
        try:
            move = stage_move(state, stage)
            if move.version is not None and settings.approvers(stage) is not None:
                holder = [e for e in state.events if e.stage == stage and e.action == tags.Action.ASSIGN
                          and e.version == move.version]
                why = promotions.approval(root, holder[-1], settings) if holder else "no assign tag found"
                if why:
                    raise GitopsError(f"not deployed: {move.version} is unapproved ({why})")
            result = apply(target, move, opts, image=image or settings.deploy.image or None, path=paths[stage],
                           env=env)
        except UsageError:
            raise
        except GitopsError as exc:
            failures.append((f"{model}@{stage}: {exc.message}", exc))
            continue
        what = result.message.splitlines()[0]
        say(f"{what}: commit {result.commit[:12]}" if result.commit else f"{model}@{stage}: unchanged (no commit)")
    if failures:
        from gitops.errors import ServiceError

        cls = ServiceError if all(isinstance(exc, ServiceError) for _, exc in failures) else GitopsError
        raise cls("\n".join(line for line, _ in failures))


def deploys_on_stage_moves(settings, backend, wanted: bool | None) -> bool:
    """Whether `promote`, `demote` and `ci promote-approved` also deploy the stage they moved.

    `wanted` None (no --deploy/--no-deploy): when gitops.yaml names a deploy repository and the backend is
    local (on GitHub, deploy.yml and release.yml's `deploy` job do it). Raises UsageError for --deploy
    without a deploy repository (before any tag is written)."""
    if wanted and not settings.deploy.repository:
        raise UsageError("--deploy: gitops.yaml names no deploy repository (deploy.repository)")
    if wanted is None:
        return bool(settings.deploy.repository) and not backend.hosted
    return wanted


def deploy_after_stage_move(root: Path, backend, settings, pairs: list[tuple[str, str]], tag_note: str,
                            say=None) -> None:
    """`deploy_stages` for the stages a command just moved; a failure names the tags already written and the
    command that completes the deploy (the same class, so the exit code stays)."""
    try:
        deploy_stages(root, backend, settings, pairs, github_repository=os.environ.get("GITHUB_REPOSITORY", ""),
                      say=say)
    except GitopsError as exc:
        again = " ".join(f"gitops deploy {model}@{stage}" for model, stage in pairs)
        raise type(exc)(f"{tag_note}, but the deploy failed:\n{exc.message}\nRerun `{again}` to deploy it",
                        exit_code=exc.exit_code) from None


# --- `deploy --render DIR` without --bake: the same layout, in a plain folder ---------------------------


def render(backend, ref: str, out_dir: Path, opts: deploy.DeployOptions, *, image: str | None = None,
           env: dict[str, str] | None = None, force: bool = False) -> tuple[Path, str]:
    """Write the Kustomize layout for one version (`base/` + `overlays/<stage or default>/`) into `out_dir`;
    return (out_dir, stage).

    The folder is written beside and renamed into place (never half written); an existing non-empty
    folder must be an earlier render (or `force`).
    """

    from gitops.registry import versions
    from gitops.registry.runs import replace_dir
    from gitops.registry.versions import release_metadata

    parsed = tags.parse_ref(ref)
    st, version = versions.resolve(backend, parsed)
    stage = parsed.stage or "default"
    sha = release_metadata(version.message).get("sha256") or ""
    move = StageMove(st.model, stage, version.version, sha, "")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / deploy.MARKER).is_file()
                                                       and not force)):
        raise UsageError(f"{out_dir} is not empty and not an earlier `gitops deploy` render; pick another "
                         "--render folder (or --force)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write_files(tmp, plan_files(tmp, move, opts, image or default_image(), None, env))
        (tmp / deploy.MARKER).write_text(jsonio.dumps({"model": st.model, "version": version.version,
                                                       "stage": stage, "layout": "kustomize"}, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, stage
