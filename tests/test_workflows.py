"""The GitHub Actions workflows: linted (actionlint, zizmor) and the properties users rely on.

The properties checked here are the ones a repository owner depends on for safety and for branch
protection: pinned actions, least privilege, fork PRs never reaching a self-hosted GPU runner without
a maintainer's approval, the comment workflow never touching PR code, releases never cancelled.
"""

from __future__ import annotations

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
    ("pr.yml", "approve", "echo"): "the approval job needs one step; it logs the approved head SHA",
    ("pr.yml", "report", "printf"): "records the PR number and head SHA next to the report artifact",
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
        [_tool("zizmor"), "--offline", "--no-progress", ".github/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_dangerous_triggers_is_suppressed_and_only_in_comment_yml():
    for path in [*WORKFLOW_FILES, *ACTION_FILES]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "zizmor:" not in line:
                continue
            assert path.name == "comment.yml", f"{path}: {line}"
            match = re.search(r"zizmor: ignore\[([^\]]+)\]\s+(.*)", line)
            assert match and match[1] == "dangerous-triggers", line
            assert len(match[2]) > 20, "a suppression states its reason"


# --- every workflow --------------------------------------------------------------------------------


def test_expected_workflows_exist():
    assert {p.name for p in WORKFLOW_FILES} >= {"pr.yml", "comment.yml", "release.yml", "ci.yml"}
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


def test_no_pull_request_target_anywhere():
    for path in WORKFLOW_FILES:
        assert "pull_request_target" not in load(path)["on"], path.name


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


# --- pr.yml ----------------------------------------------------------------------------------------

SAME_REPO = "octo/models"
PR_CONTEXT = {
    "github.repository": SAME_REPO,
    "github.event.pull_request.head.repo.full_name": SAME_REPO,
    "needs.plan.result": "success",
    "needs.plan.outputs.has_train": "true",
    "needs.approve.result": "skipped",
    "needs.train.result": "success",
}


def test_pr_workflow_triggers_and_concurrency():
    pr = workflow("pr.yml")
    assert "pull_request" in pr["on"] and "workflow_call" in pr["on"]
    assert pr["concurrency"]["group"].startswith("pr-${{ github.event.pull_request.number")
    assert pr["concurrency"]["cancel-in-progress"] is True


def test_pr_has_no_secrets():
    assert "secrets." not in (WORKFLOWS / "pr.yml").read_text(encoding="utf-8")


def test_plan_always_runs_on_a_github_hosted_runner():
    plan = workflow("pr.yml")["jobs"]["plan"]
    assert plan["runs-on"] == "ubuntu-latest"
    assert "if" not in plan and "needs" not in plan, "a required check must never be skipped or hang"
    assert plan["permissions"] == {"contents": "read"}
    assert set(plan["outputs"]) == {"matrix", "has_train"}
    runs = [s["run"] for s in plan["steps"] if "run" in s]
    assert "gitops validate --annotations" in runs
    assert any(r.startswith("gitops ci plan") and "--github-output" in r for r in runs)
    checkout = plan["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0


def test_approve_job_guards_fork_prs_with_a_protected_environment():
    approve = workflow("pr.yml")["jobs"]["approve"]
    assert approve["environment"] == "gpu-fork-approval"
    assert approve["permissions"] == {}
    assert "self-hosted" not in str(approve["runs-on"])
    fork = {**PR_CONTEXT, "github.event.pull_request.head.repo.full_name": "mallory/models"}
    assert evaluate(approve["if"], fork) is True
    assert evaluate(approve["if"], PR_CONTEXT) is False, "same-repo PRs skip the approval"
    assert evaluate(approve["if"], {**fork, "needs.plan.outputs.has_train": "false"}) is False


def test_train_runs_on_self_hosted_gpu_only_when_same_repo_or_approved():
    jobs = workflow("pr.yml")["jobs"]
    train = jobs["train"]
    assert train["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert set(train["needs"]) == {"plan", "approve"}
    assert train["permissions"] == {"contents": "read"}
    assert train["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"

    cond = train["if"]
    fork = {**PR_CONTEXT, "github.event.pull_request.head.repo.full_name": "mallory/models"}
    assert evaluate(cond, PR_CONTEXT) is True, "same-repo PR trains without approval"
    for approval in ("skipped", "failure", "cancelled"):
        assert evaluate(cond, {**fork, "needs.approve.result": approval}) is False, approval
    assert evaluate(cond, {**fork, "needs.approve.result": "success"}) is True
    # Not a pull_request event (e.g. a workflow_call from a push): no head repo, so approval is needed.
    no_pr = {**fork, "github.event.pull_request.head.repo.full_name": ""}
    assert evaluate(cond, no_pr) is False
    assert evaluate(cond, {**PR_CONTEXT, "needs.plan.outputs.has_train": "false"}) is False
    assert evaluate(cond, {**PR_CONTEXT, "needs.plan.result": "failure"}) is False
    assert evaluate(cond, PR_CONTEXT, cancelled=True) is False


def test_pr_self_hosted_jobs_all_depend_on_the_approval_gate():
    for job_id, job in workflow("pr.yml")["jobs"].items():
        if "self-hosted" in str(job["runs-on"]):
            assert "approve" in job["needs"], job_id
            assert "needs.approve.result == 'success'" in job["if"], job_id


def test_train_checks_out_the_exact_head_and_uploads_the_run_by_fingerprint():
    steps = workflow("pr.yml")["jobs"]["train"]["steps"]
    checkout = steps[0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.head.sha }}"
    train = next(s for s in steps if s.get("run", "").startswith("gitops train"))
    assert train["run"] == 'gitops train "$MODEL" --out runs'
    assert train["env"]["MODEL"] == "${{ matrix.model }}"
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "run-${{ matrix.model }}-${{ matrix.fingerprint }}"
    assert upload["if"] == "${{ !env.ACT }}"


def test_report_runs_after_training_whatever_its_result_and_uploads_the_report():
    job = workflow("pr.yml")["jobs"]["report"]
    assert job["runs-on"] == "ubuntu-latest"
    assert set(job["needs"]) == {"plan", "train"}
    assert job["permissions"] == {"contents": "read", "actions": "read"}
    for train in ("success", "failure", "skipped"):
        assert evaluate(job["if"], {**PR_CONTEXT, "needs.train.result": train}) is True, train
    assert evaluate(job["if"], {**PR_CONTEXT, "needs.plan.outputs.has_train": "false"}) is False
    assert evaluate(job["if"], PR_CONTEXT, cancelled=True) is False
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert "gitops report runs/*/* --out report.md --json-out report.json" in runs
    fetch = next(s for s in job["steps"] if s.get("run", "").startswith("gitops ci fetch-runs"))
    assert fetch["env"]["MATRIX"] == "${{ needs.plan.outputs.matrix }}"
    assert "if" not in fetch, "the same step runs on GitHub (artifacts) and under act (run cache)"
    assert runs.index(fetch["run"]) < runs.index("gitops report runs/*/* --out report.md --json-out report.json")
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "gitops-report"
    assert set(upload["with"]["path"].split()) == {"report.md", "report.json", "pr-number", "head-sha"}
    assert "!cancelled()" in upload["if"], "a failed gate still uploads its report"


# --- comment.yml -----------------------------------------------------------------------------------


def test_comment_runs_after_the_pr_workflow_by_name():
    comment = workflow("comment.yml")
    assert comment["on"]["workflow_run"]["workflows"] == [workflow("pr.yml")["name"]]
    assert comment["on"]["workflow_run"]["types"] == ["completed"]
    job = comment["jobs"]["comment"]
    assert job["permissions"] == {"pull-requests": "write", "actions": "read"}
    run = {"github.event.workflow_run.event": "pull_request", "github.event.workflow_run.conclusion": ""}
    for conclusion in ("success", "failure"):  # a failed gate still gets its comment
        assert evaluate(job["if"], {**run, "github.event.workflow_run.conclusion": conclusion}) is True
    assert evaluate(job["if"], {**run, "github.event.workflow_run.conclusion": "cancelled"}) is False
    assert evaluate(job["if"], {**run, "github.event.workflow_run.event": "push"}) is False


def test_comment_never_checks_out_pr_code():
    text = (WORKFLOWS / "comment.yml").read_text(encoding="utf-8")
    steps = workflow("comment.yml")["jobs"]["comment"]["steps"]
    for step in steps:
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            with_ = step.get("with", {})
            assert "ref" not in with_ and "repository" not in with_, "default branch only"
    for forbidden in ("workflow_run.head_branch", "workflow_run.head_repository.clone_url"):
        assert forbidden not in "".join(str(s) for s in steps), forbidden
    # head_sha may only be handed to `gitops comment` as the value the report must match.
    assert text.count("workflow_run.head_sha") == 1
    comment_step = next(s for s in steps if s.get("run", "").startswith("gitops comment"))
    assert comment_step["env"]["HEAD_SHA"] == "${{ github.event.workflow_run.head_sha }}"
    for flag in ("--pr", "--file", "--head-sha", "--report-json"):
        assert flag in comment_step["run"]


def test_comment_downloads_only_the_report_artifact_outside_the_workspace():
    steps = workflow("comment.yml")["jobs"]["comment"]["steps"]
    assert not [s for s in steps if str(s.get("uses", "")).startswith("actions/download-artifact@")]
    fetch = next(s for s in steps if s.get("run", "").startswith("gitops ci fetch-report"))
    assert fetch["env"]["RUN_ID"] == "${{ github.event.workflow_run.id }}"
    assert '--run-id "$RUN_ID"' in fetch["run"] and "--github-output" in fetch["run"]
    assert '--out "$RUNNER_TEMP/gitops-report"' in fetch["run"], "outside the workspace"
    comment_step = next(s for s in steps if s.get("run", "").startswith("gitops comment"))
    assert comment_step["if"] == f"${{{{ steps.{fetch['id']}.outputs.found == 'true' }}}}"
    assert "$RUNNER_TEMP/gitops-report/report.json" in comment_step["run"]


# --- release.yml -----------------------------------------------------------------------------------


def test_release_is_never_cancelled_and_runs_on_push_to_main():
    release = workflow("release.yml")
    assert release["on"]["push"]["branches"] == ["main"]
    assert "workflow_call" in release["on"]
    assert release["concurrency"] == {"group": "release", "cancel-in-progress": False}


def test_release_job_permissions_and_steps():
    jobs = workflow("release.yml")["jobs"]
    job = jobs["release"]
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert job["permissions"] == {
        "contents": "write",
        "actions": "read",
        "id-token": "write",
        "attestations": "write",
    }
    assert job["steps"][0]["with"]["fetch-depth"] == 0
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert any(r.startswith("gitops ci release-pending") for r in runs)
    assert "gitops site --out site" in runs
    uses = [str(s.get("uses", "")) for s in job["steps"]]
    assert any(u.startswith("actions/attest-build-provenance@") for u in uses)
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)


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
