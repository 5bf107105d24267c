"""`gitops ls` and `gitops runs`: thin adapters over `gitops.repo.listing`. Neither imports jax."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from gitops import config
from gitops.cli_app import command, out

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
BackendOption = Annotated[
    str | None,
    typer.Option("--backend", metavar="NAME",
                 help="Registry backend: local (default) or github (default inside GitHub Actions)."),
]


@command("ls", rich_help_panel="Inspect")
def ls_cmd(as_json: JsonFlag = False, backend_name: BackendOption = None) -> None:
    """List models: latest version, stages, and finished runs not yet released.
    """
    from gitops.backends import get_backend
    from gitops.repo import listing

    root = config.find_root()
    entries = listing.list_models(root, get_backend(backend_name, root))
    out(json.dumps(entries, indent=2, allow_nan=False) if as_json else listing.format_models(entries))


@command("runs", rich_help_panel="Inspect")
def runs_cmd(
    model: Annotated[str, typer.Argument(help="Model name.", metavar="MODEL")],
    as_json: JsonFlag = False,
    backend_name: BackendOption = None,
) -> None:
    """List a model's run folders under runs/, newest first, with headline metrics.

    A run marked * was trained from the model's config in the working tree; RELEASED names the
    versions that ship it.
    """
    from gitops.backends import get_backend
    from gitops.repo import listing

    root = config.find_root()
    name = config.model_name_from_arg(model, root)
    headline, rows = listing.list_runs(root, get_backend(backend_name, root), name)
    if as_json:
        out(json.dumps({"model": name, "headline_metric": headline or None,
                        "runs": [r.as_dict() for r in rows]}, indent=2, allow_nan=False))
    else:
        out(listing.format_runs(name, headline, rows))
