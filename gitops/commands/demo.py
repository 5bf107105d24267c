"""`gitops demo`: the whole local GitOps loop on a scratch repository (the README's first command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitops.cli_app import command


@command("demo")
def demo_cmd(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Build the scratch repository here (a new folder) instead of a temporary one."),
    ] = None,
) -> None:
    """Train, release, change, plan, report, merge, release, promote, pull and predict: the whole loop,
    on a scratch copy of this repository's digits-mlp and wine-mlp, with no GitHub (about a minute)."""
    from gitops.repo import demo

    demo.run(keep, invoke=_invoke)


def _invoke(args: list[str]) -> int:
    """Run `gitops ARGS` in this process (every command, whichever one this process was started for);
    its exit code. Output goes to sys.stdout/sys.stderr, which the demo captures."""
    from gitops.cli import app, every_command

    every_command()
    try:
        code = app(list(args), prog_name="gitops", standalone_mode=False)
    except SystemExit as exc:  # click's own usage errors
        code = exc.code
    return code if isinstance(code, int) else 0
