"""Commands that read configs only: validate, show, new, schemas. None of them imports jax."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gitops import config, jsonio
from gitops.cli_app import command, out
from gitops.errors import GitopsError

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set train.optimizer.learning_rate=3e-4 (repeatable)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


@command("validate")
def validate_cmd(
    paths: Annotated[list[Path] | None, typer.Argument(help="Model folders or names (default: every folder under models/).")] = None,
    as_json: JsonFlag = False,
    annotations: Annotated[
        bool, typer.Option("--annotations", help="Also print GitHub Actions ::error annotations.")
    ] = False,
) -> None:
    """Validate model folders; print every problem as file:line:col: key.path: message."""
    from gitops.config import validation

    root = config.find_root()
    names = validation.models_for_paths(root, paths) if paths else None
    result = validation.validate(root, names)
    if as_json:
        out(jsonio.dumps({"ok": result.ok, "models": {n: [p.as_dict() for p in ps] for n, ps in result.models.items()}}, indent=2))
    else:
        for problem in result.problems:
            out(str(problem))
        if annotations:
            for problem in result.problems:
                out(validation.annotation(problem))
        bad = sum(1 for ps in result.models.values() if ps)
        summary = (
            f"{len(result.models)} model(s) valid" if result.ok
            else f"{len(result.problems)} problem(s) in {bad} of {len(result.models)} model(s)"
        )
        typer.echo(summary, err=True)
    if not result.ok:
        raise typer.Exit(1)


@command("show")
def show_cmd(
    model: Annotated[str, typer.Argument(help="Model name (folder under models/).")],
    overrides: SetOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print the resolved config and its training and release fingerprints."""
    from gitops.config.yamlio import dump_yaml

    root = config.find_root()
    cfg = config.load(config.model_name_from_arg(model, root), root, overrides or ())
    doc = {
        "config": cfg.as_dict(),
        "training_fingerprint": cfg.training_fingerprint,
        "release_fingerprint": cfg.release_fingerprint,
        "data_fingerprint": cfg.data_fingerprint,
    }
    if as_json:
        out(jsonio.dumps(doc, indent=2))
        return
    out(f"# {cfg.name}")
    out(f"# training fingerprint: {cfg.training_fingerprint}")
    out(f"# release fingerprint:  {cfg.release_fingerprint}")
    out(f"# data fingerprint:     {cfg.data_fingerprint}")
    if cfg.parent_error:  # validate-level fine; train/ci plan would refuse
        out(f"# start_from not resolved ({cfg.parent_error}): the training fingerprint covers the reference only")
    out(dump_yaml(doc["config"]))


@command("new")
def new_cmd(
    name: Annotated[str, typer.Argument(help="Name of the new model folder.")],
    from_model: Annotated[str | None, typer.Option("--from", help="Copy this model's files.")] = None,
) -> None:
    """Scaffold a model folder that validates at once."""
    from gitops.repo.scaffold import new_model

    root = config.find_root()
    target = new_model(root, name, from_model)
    out(f"created {target} (try: gitops show {name}; gitops train {name} --dry-run)")


@command("schemas")
def schemas_cmd(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if schemas/ differs from the code.")] = False,
) -> None:
    """Write schemas/*.schema.json from the registries (or check they are current)."""
    from gitops.config import schema_files

    root = config.find_root()
    directory = root / "schemas"
    if check:
        rendered = schema_files.rendered_files()
        missing = [name for name in rendered if not (directory / name).is_file()]
        stale = [name for name, text in rendered.items()
                 if name not in missing and (directory / name).read_text(encoding="utf-8") != text]
        if missing or stale:
            found = ([f"missing: {', '.join(f'schemas/{n}' for n in missing)}"] if missing else []) + \
                    ([f"out of date: {', '.join(f'schemas/{n}' for n in stale)}"] if stale else [])
            raise GitopsError(f"schemas {'; '.join(found)} (run: gitops schemas)")
        out("schemas are current")
        return
    for path in schema_files.write_schemas(directory):
        out(f"wrote {path}")


@command("migrate")
def migrate_cmd(
    paths: Annotated[list[Path] | None, typer.Argument(help="Model folders (default: all under models/).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Only report files that need migrating (exit 1 if any).")] = False,
) -> None:
    """Rewrite model files written for older schemas to the current one, keeping comments."""
    from gitops.config import migrate, validation

    root = config.find_root()
    names = validation.models_for_paths(root, paths) if paths else config.model_names(config.FsTree(root))
    changed = migrate.migrate_tree(root, names, write=not check)
    for path, steps in changed.items():
        out(f"{'needs migrating' if check else 'migrated'}: {path}: {'; '.join(steps)}")
    if not changed:
        out(f"all files are at schema_version {migrate.current_version()}")
    elif check:
        raise typer.Exit(1)
