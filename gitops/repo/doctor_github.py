"""`gitops doctor --github`: the GitHub settings the trust model of docs/workflows.md relies on.

The workflows keep fork code away from self-hosted GPU runners by construction, but three settings
live outside the repository and only an administrator can set them. This reads what the REST API lets
the token read and judges each setting:

- fork PR approval (`GET /repos/{o}/{r}/actions/permissions/fork-pr-contributor-approval`): workflows
  of every outside contributor wait for approval (`all_external_contributors`); for a private
  repository also `.../fork-pr-workflows-private-repos` (no write tokens, no secrets, approval on);
- the environment `gpu-fork-approval` (`GET /repos/{o}/{r}/environments/{name}`): it exists and has
  required reviewers (GitHub creates a missing environment *without* protection when a job first
  names it);
- the organisation runner groups of `runners/runner-groups.yaml`
  (`GET /orgs/{org}/actions/runner-groups`): each restricted to "selected workflows", and those only
  the listed base-branch workflows of this repository at `refs/heads/main`.

Each finding is "safe", "unsafe" or "unknown" (the API would not tell: 403, 404 of an organisation
endpoint). A setting that cannot be read is never reported safe. `exit_code`: 0 all safe, 1 anything
unsafe or unknown; the command exits 3 (ServiceError) when GitHub cannot be reached after retries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gitops.errors import UsageError

APPROVAL_ENVIRONMENT = "gpu-fork-approval"
SAFE_APPROVAL_POLICY = "all_external_contributors"
RUNNER_GROUPS_FILE = Path("runners/runner-groups.yaml")
# Used when the checkout has no runners/runner-groups.yaml (the same content as the shipped file).
DEFAULT_GROUPS: list[dict[str, Any]] = [
    {"name": "gitops-gpu", "selected_workflows": [".github/workflows/pr-train.yml@refs/heads/main",
                                                  ".github/workflows/release.yml@refs/heads/main"]},
    {"name": "gitops-gpu-untrusted", "selected_workflows": [".github/workflows/pr-train.yml@refs/heads/main"]},
]

SAFE, UNSAFE, UNKNOWN = "safe", "unsafe", "unknown"


@dataclass(frozen=True)
class Finding:
    """One setting: `state` is "safe", "unsafe" or "unknown"; `fix` says what to change."""

    name: str
    state: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        """The finding as a JSON-ready dict of its fields (the GitHub doctor's JSON output)."""
        return asdict(self)


def expected_groups(root: Path | None) -> list[dict[str, Any]]:
    """The runner groups (name, selected_workflows) from `runners/runner-groups.yaml` under `root`.

    Raises ConfigError/UsageError for a malformed file; the built-in defaults when there is none.
    """
    path = (root / RUNNER_GROUPS_FILE) if root is not None else None
    if path is None or not path.is_file():
        return [dict(g) for g in DEFAULT_GROUPS]
    from gitops.config.yamlio import load_yaml_file

    data = load_yaml_file(path, display_name=str(RUNNER_GROUPS_FILE)).data
    groups = data.get("groups")
    if not isinstance(groups, list) or not groups:
        raise UsageError(f"{RUNNER_GROUPS_FILE}: groups: expected a list of runner groups")
    out = []
    for i, group in enumerate(groups):
        name = group.get("name") if isinstance(group, dict) else None
        workflows = group.get("selected_workflows") if isinstance(group, dict) else None
        if not isinstance(name, str) or not isinstance(workflows, list) or not all(
                isinstance(w, str) and "@" in w for w in workflows):
            raise UsageError(f"{RUNNER_GROUPS_FILE}: groups[{i}]: expected name and selected_workflows "
                             "(paths like .github/workflows/x.yml@refs/heads/main)")
        out.append({"name": name, "selected_workflows": list(workflows)})
    return out


def _normalise_workflow(entry: str) -> str:
    """`owner/repo/path@main` and `...@refs/heads/main` name the same thing."""
    path, _, ref = entry.partition("@")
    if ref and not ref.startswith("refs/") and len(ref) != 40:
        ref = f"refs/heads/{ref}"
    return f"{path}@{ref}"


def check_fork_approval(backend: Any, private: bool | None) -> list[Finding]:
    """Approval policy for fork PR workflows (and, for a private repository, what fork runs receive)."""
    repo = backend.repository
    findings = []
    status, data = backend.get_json("read the fork PR approval policy",
                                    f"/repos/{repo}/actions/permissions/fork-pr-contributor-approval",
                                    missing=(403, 404))
    name = "fork PR approval"
    fix = "Settings -> Actions -> General -> Fork pull request workflows: require approval for all external contributors"
    if status != 200 or not isinstance(data, dict):
        findings.append(Finding(name, UNKNOWN, f"cannot read it (HTTP {status}); the token needs Administration: read",
                                fix))
    else:
        policy = str(data.get("approval_policy") or "")
        ok = policy == SAFE_APPROVAL_POLICY
        findings.append(Finding(name, SAFE if ok else UNSAFE, f"approval_policy={policy or '?'}", "" if ok else fix))
    if private:
        status, data = backend.get_json("read the fork PR settings of a private repository",
                                        f"/repos/{repo}/actions/permissions/fork-pr-workflows-private-repos",
                                        missing=(403, 404, 422))
        name = "fork PR workflows (private repository)"
        fix = ("Settings -> Actions -> General -> Fork pull request workflows in private repositories: no write "
               "tokens, no secrets, require approval")
        if status != 200 or not isinstance(data, dict):
            findings.append(Finding(name, UNKNOWN, f"cannot read it (HTTP {status})", fix))
        else:
            bad = [k for k in ("send_write_tokens_to_workflows", "send_secrets_and_variables") if data.get(k)]
            if data.get("run_workflows_from_fork_pull_requests") and not data.get("require_approval_for_fork_pr_workflows"):
                bad.append("require_approval_for_fork_pr_workflows=false")
            findings.append(Finding(name, UNSAFE if bad else SAFE,
                                    ("unsafe: " + ", ".join(bad)) if bad else "no write tokens, no secrets, approval on",
                                    fix if bad else ""))
    return findings


def check_environment(backend: Any, name: str = APPROVAL_ENVIRONMENT) -> Finding:
    """The approval environment exists and has required reviewers."""
    label = f"environment {name}"
    fix = (f"Settings -> Environments -> {name}: add required reviewers (maintainers) and prevent self-review")
    status, data = backend.get_json(f"read environment {name}", f"/repos/{backend.repository}/environments/{name}",
                                    missing=(403, 404))
    if status == 404:
        return Finding(label, UNSAFE, "does not exist: GitHub would create it without protection on first use", fix)
    if status != 200 or not isinstance(data, dict):
        return Finding(label, UNKNOWN, f"cannot read it (HTTP {status})", fix)
    rules = [r for r in data.get("protection_rules") or [] if isinstance(r, dict)]
    reviewers = next((r for r in rules if r.get("type") == "required_reviewers"), None)
    count = len((reviewers or {}).get("reviewers") or [])
    if not count:
        return Finding(label, UNSAFE, "no required reviewers: a fork PR's training would start unapproved", fix)
    notes = [f"{count} required reviewer(s)"]
    notes.append("self-review prevented" if reviewers.get("prevent_self_review") else "self-review allowed")
    if data.get("can_admins_bypass"):
        notes.append("admins can bypass")
    return Finding(label, SAFE, ", ".join(notes))


def check_runner_groups(backend: Any, groups: list[dict[str, Any]]) -> list[Finding]:
    """Each expected org runner group exists and runs only its selected base-branch workflows."""
    repo = backend.repository
    org = repo.split("/", 1)[0]
    status, data = backend.get_json("list the organisation's runner groups", f"/orgs/{org}/actions/runner-groups",
                                    missing=(403, 404))
    if status != 200 or not isinstance(data, dict):
        why = ("not an organisation, or the token cannot read its runner groups" if status == 404
               else "the token cannot read runner groups (needs organisation Administration: read)")
        return [Finding(f"runner group {g['name']}", UNKNOWN, f"{why} (HTTP {status})",
                        "run with an organisation admin's token; see runners/README.md") for g in groups]
    live = {g.get("name"): g for g in data.get("runner_groups") or [] if isinstance(g, dict)}
    findings = []
    for group in groups:
        label = f"runner group {group['name']}"
        fix = (f"restrict {group['name']} to selected workflows: "
               + ", ".join(f"{repo}/{w}" for w in group["selected_workflows"]) + " (runners/README.md)")
        found = live.get(group["name"])
        if found is None:
            findings.append(Finding(label, UNSAFE, "missing: GPU runners outside it (Default group) take any workflow",
                                    fix))
            continue
        if not found.get("restricted_to_workflows"):
            findings.append(Finding(label, UNSAFE, "accepts every workflow (restricted_to_workflows=false)", fix))
            continue
        allowed = {_normalise_workflow(f"{repo}/{w}") for w in group["selected_workflows"]}
        selected = {_normalise_workflow(str(w)) for w in found.get("selected_workflows") or []}
        extra = sorted(selected - allowed)
        if extra:
            findings.append(Finding(label, UNSAFE, "also accepts " + ", ".join(extra), fix))
            continue
        missing = sorted(allowed - selected)
        detail = "only " + (", ".join(sorted(selected)) or "no workflow")
        if missing:
            detail += f"; jobs of {', '.join(missing)} will not find a runner"
        if found.get("allows_public_repositories"):
            detail += "; also open to public repositories (leave it off unless this repository is public)"
        findings.append(Finding(label, SAFE, detail))
    return findings


def run_github_checks(backend: Any, groups: list[dict[str, Any]]) -> list[Finding]:
    """All findings, in a fixed order. ServiceError (exit 3) when GitHub cannot be reached."""
    status, repo = backend.get_json("read the repository", f"/repos/{backend.repository}", missing=(403, 404))
    private = bool(repo.get("private")) if status == 200 and isinstance(repo, dict) else None
    findings = check_fork_approval(backend, private)
    if private is None:
        findings.append(Finding("repository visibility", UNKNOWN, f"cannot read {backend.repository} (HTTP {status})"))
    findings.append(check_environment(backend))
    findings += check_runner_groups(backend, groups)
    return findings


def exit_code(findings: list[Finding]) -> int:
    """0 when every finding is safe; 1 when anything is unsafe or could not be read."""
    return 0 if findings and all(f.state == SAFE for f in findings) else 1
