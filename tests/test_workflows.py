"""The GitHub Actions workflows: linted (actionlint, zizmor) and the properties users rely on.

The properties checked here are the ones a repository owner depends on for safety and for branch
protection: pinned actions, least privilege, no `pull_request` workflow ever scheduling a self-hosted
job (directly or through a local reusable workflow), fork PRs reaching a GPU runner only from the
base-branch workflow and only after a maintainer's approval, PR code never checked out before the gate
or in a job that may write, releases never cancelled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / ".github"
WORKFLOWS = GITHUB / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
ACTION_FILES = sorted((GITHUB / "actions").glob("*/action.yml"))

# The first command of every `run:` script is `gitops ...`. These are the only exceptions, each a
# small shell set-up step: (workflow file, job id, first command) -> why.
ALLOWED_NON_GITOPS_RUN = {
    ("pr-train.yml", "approve", "echo"): "the approval job needs one step; it logs the approved head SHA",
    ("pr-train.yml", "report", "printf"): "records the PR number and head SHA next to the report artifact",
    ("ci.yml", "test", "bash"): "the project's own test suite: bash .ci/run",
}

USES_PINNED = re.compile(
    r"^\s*(?:-\s+)?uses:\s+(?P<action>[\w.-]+/[\w.-]+(?:/[\w./-]+)?)@(?P<sha>[0-9a-f]{40})"
    r"\s+#\s+v\d+\.\d+\.\d+\s*$"
)
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s+(?P<target>\S+)")


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return path


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # PyYAML follows YAML 1.1, where the key `on` reads as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def workflow(name: str) -> dict:
    return load(WORKFLOWS / name)


def all_jobs():
    for path in WORKFLOW_FILES:
        for job_id, job in load(path)["jobs"].items():
            yield path.name, job_id, job


def all_steps():
    for wf, job_id, job in all_jobs():
        for step in job.get("steps", []):
            yield wf, job_id, step
    for path in ACTION_FILES:
        for step in load(path)["runs"]["steps"]:
            yield str(path.relative_to(GITHUB)), "(composite)", step


# --- a small evaluator for GitHub expressions, enough for the `if:` conditions of our jobs ---------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>&&|\|\||==|!=|!|\(|\))"
    r"|(?P<call>[A-Za-z_][\w-]*)\(\)|(?P<name>[A-Za-z_][\w.-]*))"
)


def evaluate(expr: str, context: dict[str, str], *, cancelled: bool = False) -> bool:
    """Evaluate a GitHub Actions condition over a flat context like {"needs.plan.result": "success"}."""
    expr = expr.strip()
    if expr.startswith("${{") and expr.endswith("}}"):
        expr = expr[3:-2]
    functions = {"cancelled": cancelled, "always": True, "success": not cancelled, "failure": False}
    python: list[str] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise ValueError(f"cannot parse {expr[pos:]!r}")
        pos = match.end()
        if match["str"] is not None:
            python.append(repr(match["str"][1:-1].replace("''", "'")))
        elif match["op"] is not None:
            python.append({"&&": " and ", "||": " or ", "!": " not "}.get(match["op"], match["op"]))
        elif match["call"] is not None:
            python.append(repr(functions[match["call"]]))
        else:
            if match["name"] not in context:
                raise KeyError(f"context has no {match['name']!r} (expression: {expr})")
            python.append(repr(context[match["name"]]))
    return bool(eval("".join(python), {"__builtins__": {}}, {}))  # noqa: S307 - our own token stream


# --- linters -------------------------------------------------------------------------------------


def test_actionlint_clean():
    result = subprocess.run(
        [_tool("actionlint"), "-no-color"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_offline_no_findings():
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("GH_TOKEN", None)
    env.pop("GITHUB_TOKEN", None)
    result = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-progress", "--persona", "auditor", ".github/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Each zizmor suppression: (file, audit) -> what the line must be about.
ALLOWED_SUPPRESSIONS = {
    ("pr-train.yml", "dangerous-triggers"): "on:",
    ("pr-train.yml", "self-hosted-runner"): "runs-on:",
    ("release.yml", "self-hosted-runner"): "runs-on:",
}


def test_zizmor_suppressions_are_few_and_each_gives_a_reason():
    found = set()
    for path in [*WORKFLOW_FILES, *ACTION_FILES]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "zizmor:" not in line:
                continue
            match = re.search(r"zizmor: ignore\[([^\]]+)\]\s+(.*)", line)
            assert match, line
            key = (path.name, match[1])
            assert key in ALLOWED_SUPPRESSIONS, f"{path.name}: unexpected suppression {match[1]}"
            assert line.strip().startswith(ALLOWED_SUPPRESSIONS[key]), line
            assert len(match[2]) > 30, "a suppression states its reason"
            found.add(key)
    assert found == set(ALLOWED_SUPPRESSIONS)


# --- every workflow --------------------------------------------------------------------------------


def test_expected_workflows_exist():
    assert {p.name for p in WORKFLOW_FILES} >= {"pr.yml", "pr-train.yml", "release.yml", "ci.yml"}
    assert (GITHUB / "actions/setup-gitops/action.yml") in ACTION_FILES


def test_every_remote_action_is_pinned_to_a_commit_with_a_version_comment():
    shas: dict[str, set[str]] = {}
    for path in [*WORKFLOW_FILES, *ACTION_FILES]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            uses = USES_LINE.match(line)
            if not uses:
                continue
            target = uses["target"]
            if target.startswith(("./", "$/")):
                continue  # this repository's own composite action
            pinned = USES_PINNED.match(line)
            assert pinned, f"{path.name}:{number}: pin `{target}` to a 40-hex commit with `# vX.Y.Z`"
            shas.setdefault(pinned["action"], set()).add(pinned["sha"])
    assert "actions/checkout" in shas
    inconsistent = {action: s for action, s in shas.items() if len(s) > 1}
    assert not inconsistent, f"one commit per action across the repository: {inconsistent}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_top_level_permissions_are_empty(path):
    assert load(path)["permissions"] == {}


def test_every_job_has_a_timeout_and_explicit_permissions():
    for wf, job_id, job in all_jobs():
        assert isinstance(job.get("timeout-minutes"), int) and job["timeout-minutes"] > 0, (wf, job_id)
        assert "permissions" in job, f"{wf}:{job_id} needs explicit (least) permissions"
        assert job["permissions"] is not None


def test_pull_request_target_only_in_the_training_workflow():
    for path in WORKFLOW_FILES:
        assert ("pull_request_target" in load(path)["on"]) == (path.name == "pr-train.yml"), path.name


def test_every_checkout_drops_its_credentials():
    for wf, job_id, step in all_steps():
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, (wf, job_id)


def test_run_scripts_never_interpolate_expressions():
    """Values reach scripts through `env:`, never `${{ }}` inside the script (template injection)."""
    for wf, job_id, step in all_steps():
        if "run" in step:
            assert "${{" not in step["run"], f"{wf}:{job_id}: {step.get('name')}"


def _first_command(script: str) -> str:
    for line in script.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.split()[0]
    raise AssertionError("empty run script")


def test_run_steps_call_gitops_or_an_allowed_setup_command():
    for path in WORKFLOW_FILES:
        for job_id, job in load(path)["jobs"].items():
            for step in job.get("steps", []):
                if "run" not in step:
                    continue
                first = _first_command(step["run"])
                if first == "gitops":
                    continue
                assert (path.name, job_id, first) in ALLOWED_NON_GITOPS_RUN, (
                    f"{path.name}:{job_id}: step {step.get('name')!r} starts with {first!r}; workflows "
                    "stay thin (every step is a `gitops ...` call), see ALLOWED_NON_GITOPS_RUN"
                )


# --- trust: pull_request never reaches a self-hosted runner ----------------------------------------


def _labels(runs_on) -> list[str] | None:
    """The labels of a job's runs-on; None when they cannot be known statically (expression, group)."""
    if isinstance(runs_on, str):
        return None if "${{" in runs_on else [runs_on]
    if isinstance(runs_on, list) and all(isinstance(x, str) and "${{" not in x for x in runs_on):
        return list(runs_on)
    return None  # {group: ..., labels: ...} or an expression: a runner group, not GitHub-hosted


GITHUB_HOSTED = re.compile(r"^(ubuntu|windows|macos)-[\w.-]+$")


def self_hosted_jobs(workflow_path: Path, seen: frozenset = frozenset()) -> list[str]:
    """Jobs of a workflow that may land on a non-GitHub-hosted runner, following `uses:` into every
    local reusable workflow (`./.github/workflows/x.yml`, `$/.github/workflows/x.yml`)."""
    found = []
    root = workflow_path.parents[2]
    for job_id, job in load(workflow_path)["jobs"].items():
        where = f"{workflow_path.name}:{job_id}"
        uses = job.get("uses")
        if isinstance(uses, str):
            local = re.match(r"^(?:\./|\$/)(\.github/workflows/[\w.-]+\.ya?ml)$", uses)
            assert local or "@" in uses, f"{where}: cannot resolve uses: {uses}"
            if local:
                target = root / local[1]
                assert target.is_file(), f"{where}: {uses} does not exist"
                assert target not in seen, f"{where}: reusable workflow cycle"
                found += [f"{where} -> {j}" for j in self_hosted_jobs(target, seen | {workflow_path})]
            else:
                found.append(f"{where} (remote reusable workflow {uses}: cannot be checked)")
            continue
        labels = _labels(job.get("runs-on"))
        if labels is None or "self-hosted" in labels or not all(GITHUB_HOSTED.match(x) for x in labels):
            found.append(where)
    return found


def uses_secrets(path: Path) -> bool:
    """A `secrets.X` context or `secrets: inherit` anywhere in the file (comments aside)."""
    code = "\n".join(line.split(" #", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("#"))
    return bool(re.search(r"\bsecrets\.[A-Za-z_]|\bsecrets\s*:", code))


def _triggers(path: Path) -> set[str]:
    on = load(path)["on"]
    return {on} if isinstance(on, str) else set(on)


def test_no_pull_request_workflow_schedules_a_self_hosted_job():
    """GitHub runs a `pull_request` workflow from the PR's merge commit: a fork could edit any gate in
    it. So none may reach a self-hosted runner, directly or through a local reusable workflow."""
    checked = 0
    for path in WORKFLOW_FILES:
        if "pull_request" in _triggers(path):
            assert self_hosted_jobs(path) == [], path.name
            checked += 1
    assert checked >= 2  # pr.yml and ci.yml


def test_the_self_hosted_check_follows_local_reusable_workflows(tmp_path):
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "gpu.yml").write_text("on: {workflow_call: {}}\npermissions: {}\njobs:\n"
                                "  t: {runs-on: [self-hosted, gpu], steps: [{run: 'true'}]}\n")
    (wf / "mid.yml").write_text("on: {workflow_call: {}}\npermissions: {}\njobs:\n"
                                "  m: {uses: ./.github/workflows/gpu.yml}\n")
    (wf / "evil.yml").write_text("on: pull_request\npermissions: {}\njobs:\n"
                                 "  ok: {runs-on: ubuntu-latest, steps: [{run: 'true'}]}\n"
                                 "  call: {uses: $/.github/workflows/mid.yml}\n"
                                 "  group: {runs-on: {group: gpus}, steps: [{run: 'true'}]}\n"
                                 "  dyn: {runs-on: '${{ inputs.runner }}', steps: [{run: 'true'}]}\n")
    assert self_hosted_jobs(wf / "evil.yml") == ["evil.yml:call -> mid.yml:m -> gpu.yml:t", "evil.yml:group",
                                                 "evil.yml:dyn"]
    assert self_hosted_jobs(wf / "gpu.yml") == ["gpu.yml:t"]


def test_self_hosted_jobs_come_only_from_base_branch_workflows():
    """Every workflow that can reach a self-hosted runner is triggered only by events whose workflow
    definition GitHub takes from the default branch (or by a push to main)."""
    base_branch_events = {"pull_request_target", "push", "workflow_run", "workflow_dispatch", "schedule",
                          "workflow_call"}
    for path in WORKFLOW_FILES:
        if self_hosted_jobs(path):
            assert _triggers(path) <= base_branch_events, path.name


def test_runner_groups_select_exactly_the_self_hosted_workflows_at_main():
    groups = yaml.safe_load((ROOT / "runners/runner-groups.yaml").read_text(encoding="utf-8"))["groups"]
    selected = {w for g in groups for w in g["selected_workflows"]}
    assert all(w.endswith("@refs/heads/main") for w in selected)
    uses_self_hosted = {f".github/workflows/{p.name}@refs/heads/main" for p in WORKFLOW_FILES if self_hosted_jobs(p)}
    assert selected == uses_self_hosted == {".github/workflows/pr-train.yml@refs/heads/main",
                                           ".github/workflows/release.yml@refs/heads/main"}
    for group in groups:
        assert group["restricted_to_workflows"] is True and group["allows_public_repositories"] is False
    untrusted = next(g for g in groups if g["trust"] == "untrusted")
    assert untrusted["selected_workflows"] == [".github/workflows/pr-train.yml@refs/heads/main"], \
        "release.yml never runs on the runners that build fork code"
    fork_job = workflow("pr-train.yml")["jobs"]["train-fork"]
    assert fork_job["runs-on"] == untrusted["labels"]
    trusted_labels = {tuple(g["labels"]) for g in groups if g["trust"] == "trusted"}
    assert tuple(workflow("pr-train.yml")["jobs"]["train"]["runs-on"]) in trusted_labels
    assert tuple(workflow("release.yml")["jobs"]["prepare"]["runs-on"]) in trusted_labels


# --- pr.yml: unprivileged, validate + plan ---------------------------------------------------------


def test_pr_workflow_triggers_and_concurrency():
    pr = workflow("pr.yml")
    assert "pull_request" in pr["on"] and "workflow_call" in pr["on"]
    assert pr["concurrency"]["group"].startswith("pr-${{ github.event.pull_request.number")
    assert pr["concurrency"]["cancel-in-progress"] is True


def test_pr_has_no_secrets_and_only_the_plan_job():
    assert not uses_secrets(WORKFLOWS / "pr.yml")
    assert set(workflow("pr.yml")["jobs"]) == {"plan"}


def test_plan_always_runs_on_a_github_hosted_runner_and_uploads_the_plan():
    plan = workflow("pr.yml")["jobs"]["plan"]
    assert plan["runs-on"] == "ubuntu-latest"
    assert "if" not in plan and "needs" not in plan, "a required check must never be skipped or hang"
    assert plan["permissions"] == {"contents": "read"}
    assert set(plan["outputs"]) == {"matrix", "has_train"}
    runs = [s["run"] for s in plan["steps"] if "run" in s]
    assert "gitops validate --annotations" in runs
    assert any(r.startswith("gitops ci plan") and "--github-output" in r and "--out gitops-plan.json" in r
               for r in runs)
    assert plan["steps"][0]["with"]["fetch-depth"] == 0
    upload = next(s for s in plan["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "gitops-plan" and upload["with"]["path"] == "gitops-plan.json"


# --- pr-train.yml: base-branch definition, gated ---------------------------------------------------

SAME_REPO = "octo/models"
PR_CONTEXT = {
    "github.repository": SAME_REPO,
    "github.event.pull_request.head.repo.full_name": SAME_REPO,
    "needs.plan.result": "success",
    "needs.plan.outputs.has_train": "true",
    "needs.approve.result": "skipped",
    "needs.train.result": "success",
    "needs.report.result": "success",
}
FORK = {**PR_CONTEXT, "github.event.pull_request.head.repo.full_name": "mallory/models"}
HEAD_REF = "${{ github.event.pull_request.head.sha }}"


def train_jobs() -> dict:
    return workflow("pr-train.yml")["jobs"]


def _checks_out_pr_code(job: dict) -> bool:
    return any(str(s.get("uses", "")).startswith("actions/checkout@") and "ref" in s.get("with", {})
               for s in job.get("steps", []))


def test_pr_train_runs_from_the_base_branch_on_pull_request_target():
    wf = workflow("pr-train.yml")
    assert set(wf["on"]) == {"pull_request_target"}
    assert wf["on"]["pull_request_target"]["branches"] == ["main"]
    assert wf["concurrency"] == {"group": "pr-train-${{ github.event.pull_request.number }}",
                                 "cancel-in-progress": True}
    assert not uses_secrets(WORKFLOWS / "pr-train.yml")


def test_pr_code_is_checked_out_only_after_the_gate_in_read_only_jobs():
    jobs = train_jobs()
    for job_id, job in jobs.items():
        perms = job["permissions"]
        writes = {k for k, v in perms.items() if v != "read"}
        if _checks_out_pr_code(job):
            assert not writes, f"{job_id} checks out PR code with write permissions {writes}"
            checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@"))
            assert checkout["with"]["ref"] == HEAD_REF, "the exact head SHA from GitHub's event"
            assert "plan" in job["needs"]
            cond = job["if"]
            # a fork's code runs only when `approve` succeeded, whatever else happened
            for approval in ("skipped", "failure", "cancelled"):
                assert evaluate(cond, {**FORK, "needs.approve.result": approval}) is False, (job_id, approval)
            assert evaluate(cond, {**FORK, "needs.approve.result": "success"}) is (job_id != "train"), job_id
            assert evaluate(cond, PR_CONTEXT) is (job_id != "train-fork"), job_id
        else:
            for step in job.get("steps", []):
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert "ref" not in step.get("with", {}) and "repository" not in step.get("with", {}), job_id
    assert {j for j, job in jobs.items() if _checks_out_pr_code(job)} == {"train", "train-fork", "report"}


def test_plan_reads_the_pr_head_as_data_with_base_branch_code():
    plan = train_jobs()["plan"]
    assert plan["runs-on"] == "ubuntu-latest" and plan["permissions"] == {"contents": "read"}
    assert not _checks_out_pr_code(plan)
    step = next(s for s in plan["steps"] if s.get("run", "").startswith("gitops ci plan"))
    assert step["env"]["HEAD_SHA"] == HEAD_REF and "--github-output" in step["run"]


def test_approve_job_guards_fork_prs_with_a_protected_environment():
    approve = train_jobs()["approve"]
    assert approve["environment"] == "gpu-fork-approval"
    assert approve["permissions"] == {}
    assert "self-hosted" not in str(approve["runs-on"])
    assert evaluate(approve["if"], FORK) is True
    assert evaluate(approve["if"], PR_CONTEXT) is False, "same-repo PRs skip the approval"
    assert evaluate(approve["if"], {**FORK, "needs.plan.outputs.has_train": "false"}) is False


def test_trusted_and_untrusted_training_run_on_separate_runners():
    jobs = train_jobs()
    train, fork = jobs["train"], jobs["train-fork"]
    assert train["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert fork["runs-on"] == ["self-hosted", "linux", "gpu-untrusted"]
    assert set(fork["needs"]) == {"plan", "approve"}
    for job in (train, fork):
        assert job["permissions"] == {"contents": "read"}
        assert job["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
        steps = job["steps"]
        run = next(s for s in steps if s.get("run", "").startswith("gitops train"))
        assert run["run"] == 'gitops train "$MODEL" --out runs ${TRIAL:+--trial "$TRIAL"}'
        # the read-only token (permissions above) pulls a train.start_from parent's release assets
        assert run["env"] == {"MODEL": "${{ matrix.model }}", "TRIAL": "${{ matrix.trial }}",
                              "GITHUB_TOKEN": "${{ github.token }}"}
        upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
        assert upload["with"]["name"] == "run-${{ matrix.model }}-${{ matrix.fingerprint }}"
    assert evaluate(train["if"], FORK) is False and evaluate(train["if"], {**FORK, "needs.approve.result": "success"}) is False
    assert evaluate(train["if"], {**PR_CONTEXT, "needs.plan.outputs.has_train": "false"}) is False


def test_report_runs_after_training_whatever_its_result_and_uploads_the_report():
    job = train_jobs()["report"]
    assert job["runs-on"] == "ubuntu-latest"
    assert set(job["needs"]) == {"plan", "approve", "train", "train-fork"}
    assert job["permissions"] == {"contents": "read", "actions": "read"}
    for train in ("success", "failure", "skipped"):
        assert evaluate(job["if"], {**PR_CONTEXT, "needs.train.result": train}) is True, train
    assert evaluate(job["if"], {**PR_CONTEXT, "needs.plan.outputs.has_train": "false"}) is False
    assert evaluate(job["if"], PR_CONTEXT, cancelled=True) is False
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert "gitops report runs/*/* --out report.md --json-out report.json" in runs
    fetch = next(s for s in job["steps"] if s.get("run", "").startswith("gitops ci fetch-runs"))
    assert fetch["env"]["MATRIX"] == "${{ needs.plan.outputs.matrix }}"
    assert "if" not in fetch
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "gitops-report"
    assert set(upload["with"]["path"].split()) == {"report.md", "report.json", "pr-number", "head-sha"}
    assert "!cancelled()" in upload["if"], "a failed gate still uploads its report"


def test_comment_job_writes_but_never_touches_pr_code():
    job = train_jobs()["comment"]
    assert job["needs"] == "report"
    assert job["permissions"] == {"pull-requests": "write", "actions": "read"}
    assert not _checks_out_pr_code(job)
    for result in ("success", "failure"):  # a failed gate still gets its comment
        assert evaluate(job["if"], {**PR_CONTEXT, "needs.report.result": result}) is True
    assert evaluate(job["if"], {**PR_CONTEXT, "needs.report.result": "skipped"}) is False
    steps = job["steps"]
    fetch = next(s for s in steps if s.get("run", "").startswith("gitops ci fetch-report"))
    assert fetch["env"]["RUN_ID"] == "${{ github.run_id }}"
    assert '--out "$RUNNER_TEMP/gitops-report"' in fetch["run"], "outside the workspace"
    comment = next(s for s in steps if s.get("run", "").startswith("gitops comment"))
    assert comment["if"] == f"${{{{ steps.{fetch['id']}.outputs.found == 'true' }}}}"
    assert comment["env"]["PR_NUMBER"] == "${{ github.event.pull_request.number }}", "from GitHub, not the artifact"
    assert comment["env"]["HEAD_SHA"] == HEAD_REF
    for flag in ("--pr", "--file", "--head-sha", "--report-json"):
        assert flag in comment["run"]


# --- release.yml -----------------------------------------------------------------------------------


def test_release_is_never_cancelled_and_runs_on_push_to_main():
    release = workflow("release.yml")
    assert release["on"]["push"]["branches"] == ["main"]
    assert "workflow_call" in release["on"]
    assert release["concurrency"] == {"group": "release", "cancel-in-progress": False}


def test_release_prepares_read_only_and_publishes_with_the_write_token_in_another_job():
    """The merged commit's code (its plugins too) runs in `prepare`, which holds no write permission;
    `release` holds the write token, never imports repository code and publishes what the spool recorded."""
    jobs = workflow("release.yml")["jobs"]
    prepare, job = jobs["prepare"], jobs["release"]
    assert prepare["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert prepare["permissions"] == {"contents": "read", "actions": "read", "pull-requests": "read"}
    assert "GITOPS_REPO_PLUGINS" not in prepare.get("env", {}), "main's merged plugins load where nothing can write"
    assert prepare["steps"][0]["with"]["fetch-depth"] == 0
    runs = [s["run"] for s in prepare["steps"] if "run" in s]
    assert runs == ["gitops ci release-pending --spool gitops-spool"]
    (upload,) = [s for s in prepare["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload["with"]["name"] == "gitops-release-spool" and upload["with"]["path"] == "gitops-spool"

    assert job["needs"] == "prepare" and job["runs-on"] == "ubuntu-latest"
    # one model's failure does not hold back the others (as when one job released them all)
    assert job["if"] == "${{ !cancelled() }}" and upload["if"].startswith("${{ !cancelled() && hashFiles(")
    assert job["permissions"] == {
        "contents": "write",
        "actions": "read",
        "pull-requests": "read",
        "id-token": "write",
        "attestations": "write",
    }
    assert job["env"]["GITOPS_REPO_PLUGINS"] == "off"
    assert job["steps"][0]["with"]["fetch-depth"] == 0
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs[0].startswith("gitops ci publish --run-id ") and "--dist dist" in runs[0]
    assert "gitops site --out site" in runs
    uses = [str(s.get("uses", "")) for s in job["steps"]]
    assert any(u.startswith("actions/attest-build-provenance@") for u in uses)
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)


# Commands that resolve no model config (so import no repository plugin code) and may run with a write token.
REPO_CODE_FREE = {"ci publish", "ci promote-approved", "site", "comment", "ci fetch-report", "deploy"}


# Secrets that write nothing to the repository or a deployment (experiment-tracker credentials).
TRACKER_SECRETS = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"}


def test_jobs_holding_a_write_token_run_only_commands_that_import_no_repository_code():
    """A write permission of GITHUB_TOKEN, or a secret such as the deploy repository's token: the job
    runs only commands that resolve no model config, and sets GITOPS_REPO_PLUGINS=off besides."""
    for path in WORKFLOW_FILES:
        for job_id, job in load(path)["jobs"].items():
            writes = sorted(k for k, v in (job.get("permissions") or {}).items()
                            if v == "write" and k not in ("id-token", "attestations", "pages"))
            secrets = set(re.findall(r"secrets\.([A-Za-z_]+)", json.dumps(job))) - TRACKER_SECRETS
            writes += sorted(secrets)
            runs_gitops = any(str(s.get("run", "")).startswith("gitops") for s in job.get("steps", []))
            if not writes or not runs_gitops:
                continue
            for step in job["steps"]:
                if "run" not in step:
                    continue
                words = step["run"].split()
                command = " ".join(words[1:3]) if words[1] == "ci" else words[1]
                assert command in REPO_CODE_FREE, (path.name, job_id, writes, step["run"])
            assert job.get("env", {}).get("GITOPS_REPO_PLUGINS") == "off", (path.name, job_id)


def test_pages_deploy_is_a_separate_least_privilege_job():
    pages = workflow("release.yml")["jobs"]["pages"]
    assert pages["needs"] == "release"
    assert pages["permissions"] == {"pages": "write", "id-token": "write"}
    assert pages["environment"]["name"] == "github-pages"
    assert any(str(s.get("uses", "")).startswith("actions/deploy-pages@") for s in pages["steps"])


# --- ci.yml, the composite action, pre-commit ------------------------------------------------------


def test_ci_runs_the_project_suite():
    ci = workflow("ci.yml")
    assert "push" in ci["on"] and "pull_request" in ci["on"]
    runs = [s["run"] for s in ci["jobs"]["test"]["steps"] if "run" in s]
    assert runs == ["bash .ci/run"]


def test_setup_gitops_composite_action():
    action = load(GITHUB / "actions/setup-gitops/action.yml")
    assert action["runs"]["using"] == "composite"
    assert action["inputs"]["path"]["default"] == "."
    steps = action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    install = steps[-1]["run"]
    assert "pip install" in install and '"$GITOPS_PATH"' in install
    assert "GITHUB_ENV" not in install and "GITHUB_PATH" not in install


def test_workflows_use_the_composite_action_for_gitops():
    for wf, job_id, job in all_jobs():
        if any(str(s.get("run", "")).startswith("gitops") for s in job.get("steps", [])):
            uses = [str(s.get("uses", "")) for s in job["steps"]]
            assert "$/.github/actions/setup-gitops" in uses, (wf, job_id)


def test_pre_commit_hook():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    hook = next(h for h in hooks if h["id"] == "gitops-validate")
    assert hook["entry"] == "gitops validate"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert files.search("models/digits-mlp/model.yaml")
    assert files.search("models/digits-mlp/train.yml")
    assert not files.search("gitops/cli.py")
    assert not files.search("docs/models/x.yaml")


def test_expression_evaluator_understands_operators():
    ctx = {"a": "x", "b": "y"}
    assert evaluate("${{ a == 'x' && !(b == 'x') }}", ctx) is True
    assert evaluate("a != 'x' || b == 'y'", ctx) is True
    assert evaluate("!cancelled() && a == 'x'", ctx, cancelled=True) is False
    with pytest.raises(KeyError):
        evaluate("c == 'x'", ctx)


# --- deploys (issue 22) -----------------------------------------------------------------------------


def test_deploy_workflow_runs_on_stage_tags_and_by_hand():
    deploy = workflow("deploy.yml")
    assert deploy["on"]["push"] == {"tags": ["*#*"]} and "branches" not in deploy["on"]["push"]
    assert deploy["on"]["workflow_dispatch"]["inputs"]["stage"]["required"] is True
    assert deploy["concurrency"] == {"group": "deploy", "cancel-in-progress": False}
    (job,) = deploy["jobs"].values()
    assert job["permissions"] == {"contents": "read"} and job["environment"] == "gitops-deploy"
    assert job["runs-on"] == "ubuntu-latest"
    (step,) = [s for s in job["steps"] if "run" in s]
    assert step["run"] == 'gitops deploy "$STAGE_REF"'
    assert step["env"]["STAGE_REF"] == "${{ inputs.stage || github.ref_name }}"


def test_release_writes_approved_stage_tags_then_deploys_in_a_later_job():
    jobs = workflow("release.yml")["jobs"]
    runs = [s["run"] for s in jobs["release"]["steps"] if "run" in s]
    assert runs.index("gitops ci promote-approved") > next(i for i, r in enumerate(runs) if r.startswith("gitops ci publish"))
    deploy = jobs["deploy"]
    assert deploy["needs"] == "release" and deploy["permissions"] == {"contents": "read"}
    assert deploy["environment"] == "gitops-deploy" and deploy["runs-on"] == "ubuntu-latest"
    assert [s["run"] for s in deploy["steps"] if "run" in s] == ["gitops deploy --all"]


def test_serving_image_is_built_with_build_push_action_from_the_repository_dockerfile():
    image = workflow("image.yml")
    (job,) = image["jobs"].values()
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    (build,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert build["with"]["file"] == "docker/Dockerfile" and (ROOT / "docker/Dockerfile").is_file()
