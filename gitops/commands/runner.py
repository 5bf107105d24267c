"""`gitops doctor`: check what a runner needs before it trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gitops import jsonio
from gitops.cli_app import command, finite, out


@command("doctor")
def doctor_cmd(
    expect_gpu: Annotated[
        bool | None,
        typer.Option("--expect-gpu/--no-expect-gpu", help="Fail unless JAX sees a GPU (default: $GITOPS_EXPECT_GPU)."),
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs", help="Where run folders are written.")] = Path("runs"),
    min_free_gib: Annotated[float, typer.Option(callback=finite, help="Free disk space required, GiB.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
    github: Annotated[
        bool,
        typer.Option("--github", help="Instead: check the repository's GitHub settings the trust model needs "
                     "(fork approval, gpu-fork-approval reviewers, runner groups); exit 0 safe, 1 unsafe or "
                     "unknown, 3 GitHub unreachable. Uses GITHUB_TOKEN, GITHUB_REPOSITORY, GITHUB_API_URL."),
    ] = False,
) -> None:
    """Check devices, versions, disk, caches and the multi-host coordinator; exit 1 with the reason."""
    if github:
        _doctor_github(as_json)
        return
    from gitops.repo import doctor

    if expect_gpu is None:
        expect_gpu = os.environ.get("GITOPS_EXPECT_GPU", "").lower() in ("1", "true", "yes")
    checks = doctor.run_checks(expect_gpu=expect_gpu, runs_dir=runs_dir, min_free_gib=min_free_gib)
    approvals = _approvals_check()
    if approvals is not None:
        checks.append(approvals)
    failed = [c for c in checks if not c.ok and c.required]
    if as_json:
        out(jsonio.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for check in checks:
            mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
            out(f"{mark} {check.name}: {check.detail}")
            if check.fix and (not check.ok or not check.required):
                out(f"     -> {check.fix}")
        out("runner ready" if not failed else f"{len(failed)} check(s) failed")
    if failed:
        raise typer.Exit(1)


def _approvals_check():
    """Protected stages (gitops.yaml): unapproved stage tags, as a warning; None outside a repository."""
    from gitops import config
    from gitops.backends import get_backend
    from gitops.config.settings import load_settings
    from gitops.errors import GitopsError
    from gitops.registry import promotions
    from gitops.repo.tree import FsTree

    try:
        root = config.find_root()
        settings = load_settings(FsTree(root))
        if not settings.protected_stages:
            return None
        return promotions.doctor_check(root, get_backend(None, root), settings)
    except GitopsError:
        return None


def _doctor_github(as_json: bool) -> None:
    from gitops import config
    from gitops.backends.github import GitHubBackend
    from gitops.errors import UsageError
    from gitops.repo import doctor_github

    try:
        root: Path | None = config.find_root()
    except UsageError:
        root = None
    groups = doctor_github.expected_groups(root)
    backend = GitHubBackend.from_env(seconds_between_writes=0)
    findings = doctor_github.run_github_checks(backend, groups)
    code = doctor_github.exit_code(findings)
    if as_json:
        out(jsonio.dumps({"repository": backend.repository, "safe": code == 0,
                        "findings": [f.as_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            out(f"{f.state:<7} {f.name}: {f.detail}")
            if f.fix and f.state != doctor_github.SAFE:
                out(f"        -> {f.fix}")
        unsafe = sum(f.state == doctor_github.UNSAFE for f in findings)
        unknown = sum(f.state == doctor_github.UNKNOWN for f in findings)
        out(f"{backend.repository}: " + ("every setting is safe" if code == 0
                                        else f"{unsafe} unsafe, {unknown} unknown (unknown is never safe)"))
    if code:
        raise typer.Exit(code)
