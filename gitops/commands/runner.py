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
) -> None:
    """Check devices, versions, disk, caches and the multi-host coordinator; exit 1 with the reason."""
    from gitops import doctor

    if expect_gpu is None:
        expect_gpu = os.environ.get("GITOPS_EXPECT_GPU", "").lower() in ("1", "true", "yes")
    checks = doctor.run_checks(expect_gpu=expect_gpu, runs_dir=runs_dir, min_free_gib=min_free_gib)
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
