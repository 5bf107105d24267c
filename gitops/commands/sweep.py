"""`gitops sweep MODEL` and `gitops sweep apply MODEL`: thin adapters over `gitops.learn.sweep_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitops import config, jsonio
from gitops.cli_app import command, out
from gitops.errors import UsageError


@command("sweep")
def sweep_cmd(
    words: Annotated[list[str], typer.Argument(help="MODEL to run its sweep, or `apply MODEL` to commit a trial.",
                                               metavar="[apply] MODEL")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of run folders.")] = Path("runs"),
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Trials to train at once (processes).")] = 1,
    halving: Annotated[
        bool, typer.Option("--halving", help="Successive halving: stop the worse half at each rung (local only).")
    ] = False,
    trial: Annotated[
        int | None, typer.Option("--trial", min=0, help="apply: the trial to write (default: the best finished one).")
    ] = None,
    commit: Annotated[bool, typer.Option("--commit", help="apply: also git-commit the changed files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranked trials as JSON.")] = False,
) -> None:
    """Run the trials of models/MODEL/sweep.yaml and rank them, or write one trial into the model's files."""
    from gitops.learn import sweep_run
    from gitops.registry import sweep_results

    if len(words) == 2 and words[0] == "apply":
        root = config.find_root()
        name = config.model_name_from_arg(words[1], root)
        chosen, files, sha = sweep_run.apply(name, root, out_dir, trial, commit=commit)
        typer.echo(f"applied trial #{chosen.index}: "
                   + " ".join(f"--set {line}" for line in chosen.overrides()), err=True)
        for path in files:
            out(str(path.relative_to(root)))
        if sha:
            typer.echo(f"committed {sha[:12]}", err=True)
        return
    if len(words) != 1:
        raise UsageError("expected `gitops sweep MODEL` or `gitops sweep apply MODEL`")
    if trial is not None or commit:
        raise UsageError("--trial and --commit belong to `gitops sweep apply MODEL`")
    root = config.find_root()
    name = config.model_name_from_arg(words[0], root)
    from gitops.commands.training import _reporter

    ranked = sweep_run.run(name, root, out_dir, parallel=parallel, halving=halving, reporter_factory=_reporter,
                           echo=lambda text: typer.echo(text, err=True))
    spec, metric, _ = sweep_run.results(name, root, out_dir)
    if as_json:
        out(jsonio.dumps(sweep_results.as_json(spec, ranked, metric), indent=2))
        return
    header, rows = sweep_results.table_rows(spec, ranked, metric)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    winner = sweep_results.best(ranked, metric)
    if winner is not None:
        typer.echo(f"best: trial #{winner.trial.index}; commit it with: gitops sweep apply {name} "
                   f"--trial {winner.trial.index} --commit", err=True)
