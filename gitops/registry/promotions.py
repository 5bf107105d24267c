"""Protected stages: a promotion is a reviewed pull request, and only its merge writes the stage tag.

`gitops.yaml` names the protected stages and their approvers:

```yaml
protected_stages:
  production:
    approvers: ["@acme/ml-leads", "@alice"]   # GitHub teams or users (CODEOWNERS syntax)
```
`gitops promote MODEL@VERSION --to production` then does not tag: it commits `promotions/<model>.yaml`
(model, version, stage; one committed file per model at the repository root) on a branch
`promote/<model>-<stage>-<version>` without touching the working tree, and (github backend) pushes it
and opens a pull request. `.github/CODEOWNERS` gets a managed block making the approvers required
reviewers of `promotions/` (GitHub reads CODEOWNERS from the base branch: merge that block first).
After the merge, `gitops ci promote-approved` (the release workflow) writes the stage tag; its
message names the promotion commit and PR. A protected-stage tag whose message names no promotion
commit reachable from main is *unapproved*: `gitops history` and `gitops doctor` say so.

This answers GTO's open question of who may assign stages (iterative/gto#334) with the review rules
GitHub already enforces; the allowed stages come from `.gto` (GTO's config, read by `gitops.config.gto_config`) when there is one.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gitops.config.settings import Settings
from gitops.errors import UsageError
from gitops.registry import tags
from gitops.repo import gitutil

PROMOTIONS_DIR = "promotions"
CODEOWNERS = ".github/CODEOWNERS"
BEGIN = "# >>> gitops protected stages (managed by gitops promote; edit gitops.yaml instead)"
END = "# <<< gitops protected stages"
PROMOTION_RE = re.compile(r"^promotion: ([0-9a-f]{40})$", re.M)


@dataclass(frozen=True)
class PromotionRequest:
    """One opened promotion: model, version and stage, the branch and commit of `promotions/<model>.yaml`,
    and the pull request's URL (None when none was opened).
    """

    model: str
    version: str
    stage: str
    branch: str
    commit: str
    pull_request: str | None


def check_protected(root: Path, settings: Settings) -> None:
    """Every protected stage must be a valid stage name and allowed by `.gto` (when it lists stages).

    `.gto` is read by its one owner, `gitops.config.gto_config` (so `$GTO_STAGES` counts here too, as in GTO).

    Raises:
        UsageError: a protected stage is not a valid stage name or not an allowed stage.
        ConfigError: `.gto` is malformed.
    """
    from gitops.config import gto_config

    gto = gto_config.load(root)
    where = gto_config.GTO_FILE if gto.source.startswith(gto_config.GTO_FILE) else gto.source
    for stage, _ in settings.protected_stages:
        tags.check_stage(stage)
        if gto.stages is not None and stage not in gto.stages:
            raise UsageError(f"gitops.yaml: protected_stages.{stage}: not an allowed stage in {where} "
                             f"(stages: {', '.join(gto.stages) or 'none'})")


def promotion_path(model: str) -> str:
    """The repository-relative promotion file of a model, `promotions/<model>.yaml`."""
    return f"{PROMOTIONS_DIR}/{model}.yaml"


def promotion_text(model: str, version: str, stage: str, requested_by: str, approvers: tuple[str, ...]) -> str:
    """The YAML of a promotion file: a comment saying what merging it does and who approves, then model,
    version, stage and requested_by.
    """
    return (f"# Promotion request (gitops promote): merging this into main after review makes the release\n"
            f"# workflow tag {model}#{stage}#N on {version}'s commit and deploy it. Approvers: {' '.join(approvers)}\n"
            f"model: {model}\nversion: {version}\nstage: {stage}\nrequested_by: {requested_by}\n")


def read_promotion(text: bytes, label: str) -> dict:
    """A promotion file's mapping (`label` names it in errors).

    Raises ConfigError for YAML that is not safe to load and UsageError when model, version or stage is
    missing or not a string.
    """
    from gitops.config.yamlio import load_yaml_text

    data = load_yaml_text(text, label).data
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("model", "version", "stage")):
        raise UsageError(f"{label}: expected a promotion file with string keys model, version and stage")
    return data


def codeowners_block(settings: Settings) -> str:
    """The managed CODEOWNERS lines: the approvers of every protected stage own `promotions/`."""
    owners: list[str] = []
    for _, approvers in settings.protected_stages:
        owners += [a for a in approvers if a not in owners]
    lines = [BEGIN]
    if owners:
        lines.append(f"/{PROMOTIONS_DIR}/ {' '.join(owners)}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def codeowners_text(current: str | None, settings: Settings) -> str:
    """`current` CODEOWNERS with the managed block replaced (or appended); other lines kept."""
    block = codeowners_block(settings)
    current = current or ""
    if BEGIN in current and END in current:
        start = current.index(BEGIN)
        end = current.index(END, start) + len(END)
        rest = current[end:].lstrip("\n")
        return current[:start] + block + rest
    sep = "" if not current or current.endswith("\n") else "\n"
    return current + sep + block


def _blob(root: Path, text: str) -> str:
    return gitutil.run(root, "hash-object", "-w", "--stdin", input=text).stdout.strip()


def _commit_on_branch(root: Path, branch: str, files: dict[str, str], message: str) -> str:
    """Commit `files` on a new branch from HEAD with a private index: the working tree is not touched."""
    head = gitutil.head_commit(root)
    with tempfile.TemporaryDirectory(prefix="gitops-promote-") as tmp:
        env = {**gitutil.identity_env(root), "GIT_INDEX_FILE": os.path.join(tmp, "index")}
        gitutil.run(root, "read-tree", head, env=env)
        for rel, text in files.items():
            gitutil.run(root, "update-index", "--add", "--cacheinfo", f"100644,{_blob(root, text)},{rel}", env=env)
        tree = gitutil.run(root, "write-tree", env=env).stdout.strip()
    commit = gitutil.run(root, "commit-tree", tree, "-p", head, "-F", "-", input=message,
                         env=gitutil.identity_env(root)).stdout.strip()
    gitutil.run(root, "update-ref", f"refs/heads/{branch}", commit, "")  # "" : the branch must not exist
    return commit


def request(root: Path, backend, ref: str, stage: str, settings: Settings) -> PromotionRequest:
    """Open a promotion for `ref` to the protected `stage` (a branch; on GitHub also a pull request).

    Raises:
        UsageError: the stage is not protected, not allowed by `.gto`, already held by that version,
            or the branch exists already.
    """
    from gitops.registry import versions

    approvers = settings.approvers(stage)
    if approvers is None:
        raise UsageError(f"stage {stage!r} is not protected in gitops.yaml")
    check_protected(root, settings)
    st, version = versions.resolve(backend, ref)
    if st.stages.get(stage) == version.version:
        raise UsageError(f"{st.model}@{version.version} is already in stage {stage!r}")
    branch = f"promote/{st.model}-{stage}-{version.version}"
    if gitutil.branch_exists(root, branch):
        raise UsageError(f"branch {branch!r} already exists (an open promotion?); delete it to request again")
    files = {promotion_path(st.model): promotion_text(st.model, version.version, stage, gitutil.author(root),
                                                      approvers)}
    owners = root / CODEOWNERS
    current = owners.read_text(encoding="utf-8") if owners.is_file() else None
    wanted = codeowners_text(current, settings)
    if wanted != current:
        files[CODEOWNERS] = wanted
    title = f"Promote {st.model} {version.version} to {stage}"
    body = (f"{title}\n\nStage `{stage}` is protected (gitops.yaml); required reviewers: {' '.join(approvers)}.\n"
            f"Merging writes the stage tag `{st.model}#{stage}#N` on {version.version}'s commit "
            f"({version.commit[:12]}) and deploys it.\n")
    commit = _commit_on_branch(root, branch, files, body)
    pr = None
    if backend.hosts_pull_requests:
        base = gitutil.current_branch(root) or "main"
        gitutil.run(root, "push", "origin", f"refs/heads/{branch}")
        pr = backend.open_pull_request(branch, base, title, body)
    return PromotionRequest(st.model, version.version, stage, branch, commit, pr)


# --- after the merge: write the tags --------------------------------------------------------------------


def _pull_request_of(root: Path, backend, commit: str) -> str:
    """The PR that merged `commit` into main: GitHub's commit-to-PR association, else the merge message."""
    for pr in backend.pulls_for_commit(commit):
        if pr.merged:
            return f"#{pr.number}"
    log = gitutil.run(root, "log", "--format=%H %s", "--ancestry-path", f"{commit}..HEAD", check=False).stdout
    for line in reversed(log.splitlines()):
        m = re.search(r"Merge pull request #(\d+)|\(#(\d+)\)$|Merge branch '(promote/[^']+)'", line)
        if m:
            return f"#{m[1] or m[2]}" if (m[1] or m[2]) else m[3]
    subject = gitutil.run(root, "log", "-1", "--format=%s", commit).stdout.strip()
    m = re.search(r"\(#(\d+)\)$", subject)
    return f"#{m[1]}" if m else "-"


def approve_merged(root: Path, backend, settings: Settings) -> list[str]:
    """Write the stage tag of every merged promotion file not yet tagged (idempotent); return the tags.

    The promotion commit is the last commit on HEAD that changed `promotions/<model>.yaml`; a stage
    event whose message names it already exists when the promotion was applied before.
    """
    from gitops.registry import versions

    folder = root / PROMOTIONS_DIR
    written: list[str] = []
    if not folder.is_dir():
        return written
    all_tags = None
    for path in sorted(folder.glob("*.yaml")):
        rel = f"{PROMOTIONS_DIR}/{path.name}"
        data = read_promotion(path.read_bytes(), rel)
        model, version, stage = data["model"], data["version"], data["stage"]
        if settings.approvers(stage) is None:
            raise UsageError(f"{rel}: stage {stage!r} is not protected in gitops.yaml; promote it directly")
        commit = gitutil.run(root, "log", "-1", "--format=%H", "--", rel).stdout.strip()
        if not commit:
            continue  # not committed yet
        all_tags = all_tags if all_tags is not None else backend.list_tags()
        st = tags.model_state(all_tags, model)
        if any(_promotion_of(e.message) == commit for e in st.events if e.stage == stage):
            continue
        if st.stages.get(stage) == tags.parse_ref(f"{model}@{version}").version:
            continue
        pr = _pull_request_of(root, backend, commit)
        note = f"promotion: {commit}\npull-request: {pr}\n"
        written.append(versions.promote(backend, f"{model}@{version}", stage, note=note))
        all_tags = None
    return written


def _promotion_of(message: str) -> str | None:
    m = PROMOTION_RE.search(message or "")
    return m[1] if m else None


def _main_ref(root: Path) -> str:
    for ref in ("refs/remotes/origin/main", "refs/heads/main", "HEAD"):
        if gitutil.run(root, "rev-parse", "--verify", "--quiet", ref, check=False).returncode == 0:
            return ref
    return "HEAD"


def approval(root: Path, event: tags.Event, settings: Settings) -> str | None:
    """Why a protected-stage assignment is unapproved, or None (approved, or the stage is not protected)."""
    if event.action != tags.Action.ASSIGN or settings.approvers(event.stage or "") is None:
        return None
    commit = _promotion_of(event.message)
    if commit is None:
        return "its tag names no promotion commit (pushed directly, not through a reviewed promotion PR)"
    if not gitutil.commit_exists(root, commit):
        return f"promotion commit {commit[:12]} is not in this repository"
    main = _main_ref(root)
    if gitutil.run(root, "merge-base", "--is-ancestor", commit, main, check=False).returncode != 0:
        return f"promotion commit {commit[:12]} is not reachable from main"
    raw = gitutil.run(root, "show", f"{commit}:{promotion_path(event.model)}", check=False)
    if raw.returncode != 0:
        return f"promotion commit {commit[:12]} has no {promotion_path(event.model)}"
    data = read_promotion(raw.stdout.encode(), f"{commit[:12]}:{promotion_path(event.model)}")
    if data["stage"] != event.stage or data["version"] != event.version:
        return (f"promotion commit {commit[:12]} promotes {data['version']} to {data['stage']}, "
                f"not {event.version} to {event.stage}")
    return None


def annotate_history(root: Path, backend, doc: dict, settings: Settings) -> dict:
    """Add `unapproved` (the reason) to each protected-stage assign event of a `history` document."""
    if not settings.protected_stages:
        return doc
    st = tags.model_state(backend.list_tags(), doc["model"])
    by_tag = {e.tag: e for e in st.events}
    for e in doc["events"]:
        event = by_tag.get(e["tag"])
        if event is not None:
            why = approval(root, event, settings)
            if why:
                e["unapproved"] = why
    return doc


def unapproved(root: Path, backend, settings: Settings) -> list[tuple[str, str]]:
    """(tag, reason) for every unapproved protected-stage assignment in the registry."""
    found = []
    for st in tags.registry_state(backend.list_tags()).values():
        for e in st.events:
            why = approval(root, e, settings)
            if why:
                found.append((e.tag, why))
    return found


def doctor_check(root: Path, backend, settings: Settings):
    """`gitops doctor`'s line on protected stages: every assignment approved (a warning otherwise)."""
    from gitops.repo.doctor import Check

    if not settings.protected_stages:
        return None
    bad = unapproved(root, backend, settings)
    stages = ", ".join(s for s, _ in settings.protected_stages)
    if not bad:
        return Check("stage approvals", True, f"every assignment of {stages} came through a merged promotion PR",
                     required=False)
    detail = "; ".join(f"{tag} UNAPPROVED: {why}" for tag, why in bad)
    return Check("stage approvals", False, detail, "demote it (gitops demote MODEL --from STAGE) and promote through "
                 "a reviewed promotion PR (gitops promote MODEL@VERSION --to STAGE)", required=False)
