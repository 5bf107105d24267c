"""The GitOps loop on the command line: diff, ci plan, report, comment, release, stages, pull, predict.

Each command parses its flags and calls one library function (`gitops.registry.plan`, `gitops.registry.report`,
`gitops.registry.release`, `gitops.registry.versions`, `gitops.registry.rollback`, `gitops.registry.pull`, `gitops.serve.predict`). Nothing here imports
jax: `ci plan` and `diff` must start fast on a GitHub-hosted runner.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import typer

from gitops import config, jsonio
from gitops.cli_app import ci_app, command, out
from gitops.errors import GitopsError, UsageError

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
BackendOption = Annotated[
    str | None,
    typer.Option("--backend", help="Registry backend: local (default) or github (default inside GitHub Actions)."),
]


DeployOption = Annotated[
    bool | None,
    typer.Option("--deploy/--no-deploy", help="Also commit the stage to gitops.yaml's deploy repository (default: when "
                                              "it names one and the backend is local; on GitHub the workflows deploy)."),
]
TrackOption = Annotated[
    bool | None,
    typer.Option("--track/--no-track", help="Also update the trackers of gitops.yaml (default: when it lists any)."),
]


def _backend(name: str | None, root: Path):
    from gitops.backends import get_backend

    return get_backend(name, root)


def _is_terminal() -> bool:
    """stdout is an interactive terminal (not a pipe, file or CI log)."""
    import sys

    try:
        return sys.stdout.isatty() and not os.environ.get("CI")
    except (AttributeError, ValueError):
        return False


def _echo_err(text: str) -> None:
    typer.echo(text, err=True)


# --- what changed -----------------------------------------------------------------------------------


@command("diff")
def diff_cmd(
    base: Annotated[str | None, typer.Option("--base", help="Base ref (default: merge-base with main, or HEAD~).")] = None,
    head: Annotated[str | None, typer.Option("--head", help="Head ref (default: the working tree).")] = None,
) -> None:
    """Which models changed between two refs, and how (changed keys, old -> new)."""
    from gitops.registry import plan
    from gitops.repo import gitutil

    root = config.find_root()
    result = plan.plan(root, base or gitutil.default_base(root), head)
    out(plan.format_diff(result))


@command("plan", group=ci_app)
def plan_cmd(
    base: Annotated[str | None, typer.Option(
        "--base", help="Base commit, the PR's base SHA (default: merge-base with main, or HEAD~, like diff).")] = None,
    head: Annotated[str | None, typer.Option(
        "--head", help="Head commit, the PR's head SHA (default: the working tree, like diff).")] = None,
    github_output: Annotated[
        bool, typer.Option("--github-output", help="Also append matrix=... and has_train=... to $GITHUB_OUTPUT.")
    ] = False,
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="PR labels (default: from $GITHUB_EVENT_PATH); the override label lifts budgets."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Also write the JSON to this file (the PR workflow uploads it).")
    ] = None,
) -> None:
    """JSON: the models to train (with why), to release only, and deleted; plus the job matrix.

    Refuses (exit 1) a plan over the budgets in gitops.yaml unless the PR carries the override label.
    """
    from gitops.config import settings
    from gitops.registry import budget, plan
    from gitops.repo import ci_event, gitutil
    from gitops.repo.tree import FsTree, GitTree

    root = config.find_root()
    result = plan.plan(root, base or gitutil.default_base(root), head)
    doc = result.as_dict()
    budgets = settings.load_settings(GitTree(root, head) if head else FsTree(root)).budgets
    costs = budget.fit_sweeps(budget.plan_costs(root, head, [c.model for c in result.train]), result.sweeps,
                              budgets, lambda sp: budget.trial_costs(root, head, sp.model, sp.trials))
    doc = result.as_dict()  # again: sampling may have cut a sweep's trials
    found, lifted = budget.enforce(
        costs,
        budgets,
        labels if labels is not None else ci_event.pr_labels(),
    )
    doc["budget"] = {"violations": found, "lifted_by_label": budgets.override_label if lifted else None}
    if found and not lifted:
        out(jsonio.dumps(doc, indent=2))
        raise GitopsError(
            "over budget: " + "; ".join(found)
            + f" (a maintainer can add the label {budgets.override_label!r} to allow it)"
        )
    if github_output:
        plan.write_github_output(result)
    text = jsonio.dumps(doc, indent=2)
    if out_file is not None:
        from gitops.registry.runs import write_text

        write_text(out_file, text + "\n")
    out(text)


# --- report and comment -------------------------------------------------------------------------------


@command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (runs/<model>/<fingerprint>/).")],
    baseline: Annotated[
        str, typer.Option("--baseline", help="auto: each model's newest release; or a run/release folder.")
    ] = "auto",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the Markdown here (default: stdout).")] = None,
    as_json: JsonFlag = False,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write the JSON form here.")] = None,
    head_sha: Annotated[str | None, typer.Option("--head-sha", help="Head commit the report is for (default HEAD).")] = None,
    pr: Annotated[int | None, typer.Option("--pr", help="PR number (default: from $GITHUB_EVENT_PATH).")] = None,
    backend_name: BackendOption = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown on a terminal too (default there: a "
                                                               "plain-text view without Mermaid or sparklines).")] = False,
) -> None:
    """Compare runs with their baselines; Markdown (or --json). Exit 1 when a quality gate fails."""
    from gitops.registry import report

    root = config.find_root()
    backend = _backend(backend_name, root) if baseline == "auto" else None
    built = report.build(root, runs, backend, baseline, head_sha=head_sha, pr=pr)
    text = report.markdown(built)
    data = report.as_json(built)
    if out_file:
        out_file.write_text(text, encoding="utf-8")
    if json_out:
        json_out.write_text(jsonio.dumps(data, indent=2) + "\n", encoding="utf-8")
    if as_json:
        out(jsonio.dumps(data, indent=2))
    elif not out_file:
        out(report.terminal(built) if not markdown and _is_terminal() else text)
    report.write_step_summary(text)
    if not built.ok:
        failed = ", ".join(m.model for m in built.models if not m.ok)
        _echo_err(f"quality gate failed: {failed}")
        raise typer.Exit(1)


@command("comment")
def comment_cmd(
    pr: Annotated[int, typer.Option("--pr", help="Pull request number.", min=1)],
    file: Annotated[Path, typer.Option("--file", help="The report Markdown (from gitops report --out).")],
    head_sha: Annotated[str | None, typer.Option("--head-sha", help="The PR head SHA the report must be for.")] = None,
    report_json: Annotated[
        Path | None, typer.Option("--report-json", help="report.json to validate (as data) before posting.")
    ] = None,
    backend_name: BackendOption = None,
) -> None:
    """Create or update the one sticky report comment on a PR."""
    from gitops.registry import report

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    body = report.cap(file.read_text(encoding="utf-8", errors="replace"))  # GitHub's 65,536 characters
    report.check_markdown(body)
    if report_json is not None:
        if not report_json.is_file():
            raise UsageError(f"{report_json}: no such file")
        report.validate_report_json(report_json.read_text(encoding="utf-8", errors="replace"),
                                    head_sha=head_sha, pr=pr)
    elif head_sha is not None:
        raise UsageError("--head-sha needs --report-json (the report's recorded head is what is checked)")
    try:
        root = config.find_root()
    except UsageError:  # the comment workflow may run outside any checkout
        root = Path.cwd()
    backend = _backend(backend_name, root)
    actual = backend.pull_head_sha(pr) if head_sha is not None else None
    if actual is not None:
        # The PR number comes from an artifact (a fork's run writes it): post only where GitHub says
        # that PR's head is the commit the report was made for.
        if actual != head_sha:
            raise GitopsError(f"PR #{pr} is at {actual[:12] or '(unknown)'}, not {head_sha[:12]}; refusing to post "
                              "a report for another commit (or another PR)")
    out(backend.upsert_comment(pr, body))


# --- releases -------------------------------------------------------------------------------------------


@command("release")
def release_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    run: Annotated[Path | None, typer.Option("--run", help="The finished run folder to release.")] = None,
    bump: Annotated[str, typer.Option("--bump", help="auto | major | minor | patch.")] = "auto",
    push: Annotated[bool, typer.Option("--push", help="Push the new tag to origin (local backend).")] = False,
    backend_name: BackendOption = None,
    dist: Annotated[Path | None, typer.Option("--dist", help="Also copy the assets into this folder.")] = None,
    repair: Annotated[str | None, typer.Option(
        "--repair", metavar="VERSION",
        help="Re-publish VERSION's missing assets (from --run DIR or the run with its fingerprint); when they "
             "can't be rebuilt with the bytes its tag records, retire VERSION and release HEAD as a new version.",
    )] = None,
    as_json: JsonFlag = False,
    track: TrackOption = None,
) -> None:
    """Tag and publish a version of MODEL at HEAD (reusing the run with the same training fingerprint)."""
    from gitops import api

    root = config.find_root()
    result = api.release(root, _backend(backend_name, root), config.model_name_from_arg(model, root),
                         run=run, bump=bump, push=push, dist=dist, track=track, repair_version=repair)
    out(jsonio.dumps(result.as_dict(), indent=2) if as_json else result.message)


@command("release-pending", group=ci_app)
def release_pending_cmd(
    push: Annotated[bool, typer.Option("--push", help="Push new tags to origin (local backend).")] = False,
    backend_name: BackendOption = None,
    dist: Annotated[Path | None, typer.Option("--dist", help="Also copy the assets into this folder.")] = None,
    track: TrackOption = None,
    spool_dir: Annotated[Path | None, typer.Option(
        "--spool", help="Write nothing to the registry: record the releases in this folder for `gitops ci publish` "
                        "(release.yml's read-only prepare job).")] = None,
) -> None:
    """Release every model whose release fingerprint differs from its latest release."""
    from gitops import api
    from gitops.repo import gitutil

    root = config.find_root()
    backend = _backend(backend_name, root)
    if spool_dir is not None:
        from gitops.registry.spool import SpoolBackend

        backend = SpoolBackend(backend, spool_dir, gitutil.head_commit(root))
    results, failures = api.release_pending(root, backend, push=push, dist=dist, track=track)
    for result in results:
        out(result.message)
    if not results and not failures:
        out("nothing to release: every model's latest release matches HEAD")
    for name, message in failures:
        _echo_err(f"error: {name}: {message}")
    if failures:
        raise typer.Exit(1)


@command("publish", group=ci_app)
def publish_cmd(
    spool_dir: Annotated[Path, typer.Option("--spool", help="The spool folder `ci release-pending --spool` wrote "
                                                            "(fetched from --run-id's artifact when given).")],
    run_id: Annotated[int | None, typer.Option(
        "--run-id", help="Download this workflow run's gitops-release-spool artifact into --spool first.", min=1)] = None,
    dist: Annotated[Path | None, typer.Option("--dist", help="Also copy the assets into this folder.")] = None,
    backend_name: BackendOption = None,
) -> None:
    """Make the registry writes a release spool recorded: stage assets, create tags, publish releases.

    Runs where the write token is (release.yml's publish job) and never imports repository code: it
    resolves no config; it checks each recorded tag, commit and file (docs/workflows.md).
    """
    from gitops.registry import spool

    root = config.find_root()
    backend = _backend(backend_name, root)
    if run_id is not None and spool.fetch(backend, run_id, spool_dir) is None:
        out(f"run {run_id} uploaded no {spool.SPOOL_ARTIFACT}: nothing to publish")
        return
    for line in spool.publish(spool_dir, backend, root, dist=dist):
        out(line)


@command("fetch-runs", group=ci_app)
def fetch_runs_cmd(
    matrix: Annotated[str, typer.Option("--matrix", help="The plan's matrix JSON (ci plan's `matrix`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the run folders go.")] = Path("runs"),
    run_id: Annotated[int | None, typer.Option("--run-id", help="Workflow run whose artifacts to prefer (default $GITHUB_RUN_ID).")] = None,
    head_sha: Annotated[str | None, typer.Option("--head-sha", help="Also accept artifacts of runs at this commit.")] = None,
    backend_name: BackendOption = None,
) -> None:
    """Put the matrix's run folders into --out: already there, from $GITOPS_RUN_CACHE, or from the
    `run-<model>-<fingerprint>` artifacts (github backend). Exit 1 when none is found."""
    from gitops.registry import artifacts

    root = config.find_root()
    if run_id is None and re.fullmatch("[0-9]+", os.environ.get("GITHUB_RUN_ID", "")):
        run_id = int(os.environ["GITHUB_RUN_ID"])
    items = artifacts.matrix_items(matrix)
    backend = None
    if items:
        try:
            backend = _backend(backend_name, root)
        except UsageError as exc:  # no token: the run cache can still serve
            _echo_err(f"note: {exc.message}")
    results = artifacts.fetch_runs(root, matrix, root / out_dir if not out_dir.is_absolute() else out_dir,
                                   backend, run_id=run_id, head_sha=head_sha)
    annotate = os.environ.get("GITHUB_ACTIONS") == "true"
    for r in results:
        if r.path is not None:
            out(f"{r.model}/{r.fingerprint}: {r.source}")
        else:
            _echo_err(f"{'::error::' if annotate else 'missing: '}{r.model}/{r.fingerprint}: {r.note}")
    if items and not any(r.path for r in results):
        raise GitopsError("no run folder of the plan was found (did training fail?)")


@command("fetch-report", group=ci_app)
def fetch_report_cmd(
    run_id: Annotated[int, typer.Option("--run-id", help="The PR workflow run that uploaded gitops-report.", min=1)],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.md, report.json, pr-number, head-sha.")],
    github_output: Annotated[
        bool, typer.Option("--github-output", help="Append found=true|false to $GITHUB_OUTPUT.")
    ] = False,
    backend_name: BackendOption = None,
) -> None:
    """Download the `gitops-report` artifact of a workflow run as data (its four files only)."""
    from gitops.registry import artifacts

    try:
        root = config.find_root()
    except UsageError:
        root = Path.cwd()
    found = artifacts.fetch_report(_backend(backend_name, root), run_id, out_dir)
    out(f"report of run {run_id} -> {found}" if found else f"run {run_id} uploaded no {artifacts.REPORT_ARTIFACT}: "
        "nothing to post")
    if github_output:
        target = os.environ.get("GITHUB_OUTPUT")
        if not target:
            raise UsageError("--github-output needs $GITHUB_OUTPUT to name a file")
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(f"found={'true' if found else 'false'}\n")


@command("pull")
def pull_cmd(
    ref: Annotated[str, typer.Argument(help="MODEL, MODEL@VERSION or MODEL@STAGE.")],
    to: Annotated[Path | None, typer.Option("--to", help="Target folder (default .gitops/pulled/<model>/v<version>/).")] = None,
    sha256: Annotated[str, typer.Option("--sha256", help="The archive checksum the release must have "
                                                         "(a deployment's GITOPS_SHA256).")] = "",
    backend_name: BackendOption = None,
) -> None:
    """Download a release, verify its checksums, and unpack it safely."""
    from gitops.registry import pull

    root = config.find_root()
    target = pull.pull(root, _backend(backend_name, root), ref, to, say=_echo_err, expect_sha256=sha256)
    out(str(target))  # stdout: the folder alone, so `$(gitops pull ...)` keeps working


@command("history")
def history_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonFlag = False,
    backend_name: BackendOption = None,
) -> None:
    """Every version and stage move: date, author, commit, bump reason, headline metrics."""
    from gitops.config.settings import load_settings
    from gitops.registry import promotions, versions
    from gitops.repo.tree import FsTree

    root = config.find_root()
    backend = _backend(backend_name, root)
    doc = promotions.annotate_history(root, backend, versions.history(backend, model),
                                      load_settings(FsTree(root)))
    out(jsonio.dumps(doc, indent=2) if as_json else versions.format_history(doc))


@command("promote")
def promote_cmd(
    ref: Annotated[str, typer.Argument(help="MODEL@VERSION (or MODEL@STAGE to copy a stage).")],
    to: Annotated[str, typer.Option("--to", help="Stage to assign, e.g. production.")],
    backend_name: BackendOption = None,
    push: Annotated[bool, typer.Option("--push", help="Push the stage tag to origin (local backend).")] = False,
    track: TrackOption = None,
    deploy: DeployOption = None,
) -> None:
    """Assign a stage to a version (GTO tag <model>#<stage>#<N>); a protected stage opens a promotion PR instead."""
    from gitops import trackers
    from gitops.config.settings import load_settings
    from gitops.registry import promotions, tags, versions
    from gitops.repo.tree import FsTree
    from gitops.serve import deploy_repo

    root = config.find_root()
    backend = _backend(backend_name, root)
    settings = load_settings(FsTree(root))
    deploys = deploy_repo.deploys_on_stage_moves(settings, backend, deploy)
    if settings.approvers(to) is not None:  # no stage moves yet: the trackers follow the tag, after the merge
        req = promotions.request(root, backend, ref, to, settings)
        out(f"stage {to} is protected: promotion branch {req.branch} at {req.commit[:12]} "
            f"({promotions.promotion_path(req.model)}: {req.model} {req.version})")
        out(f"pull request: {req.pull_request}" if req.pull_request else
            f"next: review and merge {req.branch} into main, then `gitops ci promote-approved` writes the stage "
            "tag and deploys it (on GitHub the release workflow runs it after the merge)")
        return
    sinks = trackers.specs_for(root, track)
    st, version = versions.resolve(backend, ref)
    before = st.stages.get(to)
    tag = versions.promote(backend, ref, to, root=root)
    pushed = push and backend.push_tags([tag])
    counter = tag.rsplit("#", 1)[-1]
    _echo_err(f"promoted {st.model} {version.version} to {to}"
              + (f" (it replaces {before})" if before else "")
              + f": {st.model}@{to} now resolves to {version.version}.\n"
              f"tag {tag} is on commit {version.commit[:12]}; #{counter} counts every stage and lifecycle event "
              f"of {st.model} (one counter shared by all stages, as in GTO), not the versions of {to}"
              + ("; pushed to origin" if pushed else ""))
    out(tag)
    model = tags.parse_ref(ref).model
    trackers.sync_stages(sinks, model, versions.state(backend, model).stages)
    if deploys:
        deploy_repo.deploy_after_stage_move(root, backend, settings, [(st.model, to)], f"{tag} is written",
                                            say=_echo_err)


@command("promote-approved", group=ci_app)
def promote_approved_cmd(
    push: Annotated[bool, typer.Option("--push", help="Push new tags to origin (local backend).")] = False,
    backend_name: BackendOption = None,
    track: TrackOption = None,
    deploy: DeployOption = None,
) -> None:
    """Write the stage tag of every merged promotion file (promotions/<model>.yaml) not tagged yet.

    Examples:
      gitops ci promote-approved
      gitops ci promote-approved --backend github
    """
    from gitops import trackers
    from gitops.config.settings import load_settings
    from gitops.registry import promotions, tags, versions
    from gitops.repo.tree import FsTree
    from gitops.serve import deploy_repo

    root = config.find_root()
    backend = _backend(backend_name, root)
    settings = load_settings(FsTree(root))
    deploys = deploy_repo.deploys_on_stage_moves(settings, backend, deploy)
    sinks = trackers.specs_for(root, track)
    written = promotions.approve_merged(root, backend, settings)
    if push:
        backend.push_tags(written)
    for tag in written:
        out(tag)
    for model in sorted({tags.parse(t).model for t in written}):
        trackers.sync_stages(sinks, model, versions.state(backend, model).stages)
    if not written:
        out("no merged promotion waits for its stage tag")
    elif deploys:
        moved = sorted({(tags.parse(t).model, tags.parse(t).stage) for t in written})
        deploy_repo.deploy_after_stage_move(root, backend, settings, moved, f"{', '.join(written)} written",
                                            say=_echo_err)


@command("demote")
def demote_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    stage: Annotated[str, typer.Option("--from", help="Stage to unassign.")],
    backend_name: BackendOption = None,
    track: TrackOption = None,
    deploy: DeployOption = None,
) -> None:
    """Unassign a stage (GTO tag <model>#<stage>!#<N>)."""
    from gitops import trackers
    from gitops.config.settings import load_settings
    from gitops.registry import versions
    from gitops.repo.tree import FsTree
    from gitops.serve import deploy_repo

    root = config.find_root()
    backend = _backend(backend_name, root)
    settings = load_settings(FsTree(root))
    deploys = deploy_repo.deploys_on_stage_moves(settings, backend, deploy)
    sinks = trackers.specs_for(root, track)
    tag = versions.demote(backend, model, stage, root=root)
    _echo_err(f"removed stage {stage} from {model}: {model}@{stage} resolves to nothing now (tag {tag})")
    out(tag)
    trackers.sync_stages(sinks, model, versions.state(backend, model).stages)
    if deploys:
        deploy_repo.deploy_after_stage_move(root, backend, settings, [(model, stage)], f"{tag} is written",
                                            say=_echo_err)


@command("deprecate")
def deprecate_cmd(
    ref: Annotated[str, typer.Argument(help="MODEL@VERSION (deregister that version) or MODEL (deprecate it).")],
    backend_name: BackendOption = None,
) -> None:
    """Deregister a version (<model>@vX.Y.Z!#N) or deprecate a whole model (<model>@deprecated#N)."""
    from gitops.registry import versions

    root = config.find_root()
    out(versions.deprecate(_backend(backend_name, root), ref, root))


@command("rollback")
def rollback_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[str, typer.Option("--to", help="Version whose config to restore, e.g. v1.0.0.")],
    branch: Annotated[str | None, typer.Option("--branch", help="Branch name (default rollback/<model>-v<version>).")] = None,
    backend_name: BackendOption = None,
) -> None:
    """Restore a version's config files on a new branch (and open a PR on GitHub)."""
    from gitops.registry import rollback
    from gitops.repo import gitutil

    root = config.find_root()
    was = gitutil.current_branch(root)
    result = rollback.rollback(root, _backend(backend_name, root), model, to, branch)
    _echo_err(f"switched your checkout to the new branch {result.branch}"
              + (f" (from {was}); go back with `git switch {was}`" if was else "") + ".")
    out(f"branch {result.branch} at {result.commit[:12]} restores {model} {result.version} "
        f"(training fingerprint {result.training_fingerprint[:12]})")
    if result.inlined:
        out(f"inlined (their parents changed since): {', '.join(result.inlined)}")
    if result.pull_request:
        out(f"pull request: {result.pull_request}")
    else:
        out(f"next: merge it and run `gitops release {model}` (reuses the old run)")


@command("predict")
def predict_cmd(
    ref: Annotated[str, typer.Argument(help="MODEL@VERSION, MODEL@STAGE or a run folder.")],
    input_file: Annotated[list[Path] | None, typer.Option(
        "--input", help=".npy, .npz, .json or .csv inputs, or an image file for a model trained on images "
                        "(repeatable: the files' examples are predicted in order).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the JSON here instead of stdout.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Array name inside a .npz (default: the first).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="Language models: text to continue (repeatable).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 is greedy; higher is more random.")] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sample among the k most likely tokens.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling.")] = 0,
) -> None:
    """Run a released model on inputs (--input), or continue text with a language model (--prompt); JSON out.

    Examples:
      gitops predict digits-mlp@v1.0.0 --input digits.npy
      gitops predict shapes-cnn@v1.0.0 --input a.png --input b.jpg
      gitops predict stdlib-lm@latest --prompt "def main(" --max-new-tokens 80 --temperature 0.8 --top-k 20
    """
    from gitops.serve import predict

    if (not input_file) == (not prompt):
        raise UsageError("give exactly one of --input FILE or --prompt TEXT")
    if prompt:
        doc = predict.generate_prompts(ref, list(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_k=top_k, seed=seed)
    else:
        doc = predict.predict_file(ref, list(input_file or ()), key)
    text = jsonio.dumps(doc, indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        out(text)


@command("gc")
def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
    artifacts: Annotated[bool, typer.Option(
        "--artifacts", help="Instead: remove objects in gitops.yaml's artifact store that no tag references.")] = False,
    grace: Annotated[str, typer.Option(
        "--grace", help="With --artifacts: keep objects younger than this (24h, 30m, 2d; an in-flight release's "
                        "uploads are never taken).")] = "24h",
    backend_name: BackendOption = None,
) -> None:
    """Remove run folders under runs/ that no release (or stage) refers to, nor the current configs."""
    from gitops.registry import versions

    root = config.find_root()
    if artifacts:
        from gitops.registry import artifact_store

        grace_s = artifact_store.parse_duration(grace)
        store = artifact_store.for_root(root)
        if store is None:
            raise UsageError("gc --artifacts: gitops.yaml has no artifacts: store")
        messages = [t.message for t in _backend(backend_name, root).list_tags()]
        gone = artifact_store.gc(store, messages, grace_s=grace_s, dry_run=dry_run)
        for url in gone:
            out(f"{'would remove' if dry_run else 'removed'} {url}")
        if not gone:
            out("nothing to remove")
        return
    removed = versions.gc(root, _backend(backend_name, root), dry_run=dry_run)
    for path in removed:
        out(f"{'would remove' if dry_run else 'removed'} {path.relative_to(root)}")
    if not removed:
        out("nothing to remove")



@command("track")
def track_cmd(
    model: Annotated[str | None, typer.Argument(help="Model name (with --all: every model).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every model with run folders or releases.")] = False,
    tracker: Annotated[
        list[str] | None,
        typer.Option("--tracker", help="Send to this tracker (tensorboard, mlflow) instead of gitops.yaml's list; repeatable."),
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs", help="Folder of run folders.")] = Path("runs"),
    backend_name: BackendOption = None,
) -> None:
    """Send existing run folders and releases to the trackers (backfill; a run already there is matched by
    its training fingerprint, not sent twice). Exit 3 when a tracker still failed after its retries."""
    from gitops import trackers
    from gitops.errors import ServiceError

    if (model is None) == (not every):
        raise UsageError("name one MODEL or pass --all")
    root = config.find_root()
    specs = trackers.specs_for(root, None, tracker or ())
    if not specs:
        raise UsageError("no trackers: list them under `trackers:` in gitops.yaml, or pass --tracker NAME")
    runs = root / runs_dir if not runs_dir.is_absolute() else runs_dir
    try:
        backend = _backend(backend_name, root)
    except UsageError as exc:  # no registry here (e.g. no token): run folders still go
        _echo_err(f"note: {exc.message}; releases are not sent")
        backend = None
    if every:
        from gitops.registry import tags
        from gitops.repo.tree import FsTree

        names = set(config.model_names(FsTree(root)))
        names |= {p.name for p in runs.iterdir() if p.is_dir()} if runs.is_dir() else set()
        if backend is not None:
            names |= set(tags.registry_state(backend.list_tags()))
        models = sorted(n for n in names if tags.MODEL_RE.fullmatch(n))
    else:
        models = [config.model_name_from_arg(model, root)]
    result = trackers.backfill(root, backend, specs, models, runs_dir=runs)
    for name, fp, outcomes in result.runs:
        for sink, o in outcomes.items():
            out(f"{name}/{fp} -> {sink}: {o.status}" + (f" {o.url}" if o.url else ""))
    for name, version, outcomes in result.versions:
        for sink, o in outcomes.items():
            number = o.details.get("model_version")
            out(f"{name}@{version} -> {sink}: {o.status}" + (f" (model version {number})" if number else ""))
    if not result.runs and not result.versions:
        out("nothing to send: no finished run folders or releases")
    if result.skipped:
        raise ServiceError(f"{result.skipped} item(s) could not be sent after retries (see the warnings); "
                           "run `gitops track` again later")
