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
    from gitops import demo

    demo.run(keep)
