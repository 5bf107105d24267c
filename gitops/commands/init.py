"""`gitops init`: a thin adapter over `gitops.repo.init`. Imports no jax."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitops.cli_app import command, out


@command("init", rich_help_panel="Start")
def init_cmd(
    path: Annotated[Path, typer.Argument(help="Folder to set up (created if missing).", metavar="PATH")] = Path("."),
    example: Annotated[bool, typer.Option("--example", help="Also scaffold a first model, models/my-model.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace workflow files and schemas that differ.")] = False,
    package: Annotated[str | None, typer.Option(
        "--package", metavar="SPEC",
        help="What the workflows pip install (default: this gitops version, pinned).")] = None,
) -> None:
    """Set up a gitops repository: git, models/, schemas/, gitops.yaml, .gitignore, workflows.

    Safe to run again: files already right are left alone; a file that differs is never overwritten
    (workflows and schemas are, with --force).
    """
    from gitops.repo import init

    result = init.init(path, example=example, force=force, package=package)
    if result.git_initialized:
        out(f"initialized an empty git repository in {result.root}")
    for rel in result.written:
        out(f"wrote {rel}")
    for rel in result.updated:
        out(f"updated {rel}")
    if not result.written and not result.updated:
        out(f"{result.root} is already set up; nothing changed")
    typer.echo(f"workflows install {result.package}", err=True)
    existing = sorted(p.name for p in (result.root / "models").iterdir() if p.is_dir())
    first = result.example or (existing[0] if existing else "my-model")
    step_new = "" if result.example or existing else f"gitops new {first} && "
    typer.echo(f"next: {step_new}gitops validate && gitops train {first} --dry-run, then commit and open a PR",
               err=True)
