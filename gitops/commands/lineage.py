"""`gitops lineage` and `gitops ci stale`: the tree of versions across models, and children whose
parent stage moved (both read tags only: no jax, no downloads)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from gitops import config
from gitops.cli_app import ci_app, command, out
from gitops.errors import GitopsError

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


@command("lineage")
def lineage_cmd(
    ref: Annotated[str, typer.Argument(help="MODEL@VERSION, MODEL@STAGE or MODEL (its latest version).")],
    as_json: JsonFlag = False,
) -> None:
    """The chain a version grew from (across models) and the versions grown from it.

    Examples:
      gitops lineage digits-mlp-finetune@v1.0.0
      gitops lineage digits-mlp@production --json
    """
    from gitops.config import parent_ref
    from gitops.registry import lineage

    root = config.find_root()
    tag_list = parent_ref.registry_tags(root)
    if tag_list is None:
        raise GitopsError(f"{root} is not a git repository: no registry tags to read")
    doc = lineage.lineage(tag_list, ref)
    out(json.dumps(doc, indent=2, allow_nan=False) if as_json else lineage.format_lineage(doc))


@command("stale", group=ci_app)
def stale_cmd(as_json: JsonFlag = False) -> None:
    """Children whose start_from stage now resolves to another version than their latest release used
    (a scheduled workflow runs this; `ci plan` plans the same models for retraining).

    Examples:
      gitops ci stale
      gitops ci stale --json
    """
    from gitops.registry import lineage

    found = lineage.stale(config.find_root())
    if as_json:
        out(json.dumps({"stale": found}, indent=2, allow_nan=False))
        return
    for entry in found:
        out(f"{entry['model']}: {entry['reason']} (latest release {entry['latest_release']})")
    if not found:
        out("no child's parent stage has moved")
