"""How `gitops --help` and `gitops COMMAND --help` read: like git's and DVC's.

- Usage lines name values the way man pages do (`gitops pull [OPTIONS] REF`, `--out DIR`), never
  typer's internal forms (`{name}`, `<list[Path]>`, `<int range>`).
- The top-level list is grouped by what the user is doing (Start, Configure, Train, Review,
  Release, Use, Inspect, Operate) and shows each command's whole first sentence, never cut with "...".
- Every command ends with worked examples (`EXAMPLES` below, one place for all of them).

The command classes plug into typer (`cls=`), so nothing here runs until help is printed, and
nothing imports jax or rich.
"""

from __future__ import annotations

import inspect
from typing import Any

from typer import core as typer_core

# command path -> its panel in `gitops --help` (a command's own rich_help_panel wins)
GROUPS: dict[str, str] = {
    "init": "Start", "new": "Start", "demo": "Start",
    "validate": "Configure", "show": "Configure", "schemas": "Configure", "migrate": "Configure",
    "train": "Train", "sweep": "Train", "doctor": "Train",
    "diff": "Review", "report": "Review", "comment": "Review",
    "release": "Release", "promote": "Release", "demote": "Release", "deprecate": "Release",
    "rollback": "Release", "gc": "Release",
    "pull": "Use", "predict": "Use", "serve": "Use", "deploy": "Use",
    "ls": "Inspect", "runs": "Inspect", "history": "Inspect", "site": "Inspect", "track": "Inspect",
    "data": "Configure",
    "ci": "Automation",
}
GROUP_ORDER = ("Start", "Configure", "Train", "Review", "Release", "Use", "Inspect", "Automation", "Commands")

# command path -> example lines, shown verbatim at the end of its help
EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": ("gitops init                      # set up the current folder",
             "gitops init my-models --example  # a new repository with a first model",
             "gitops init --force              # take this gitops version's workflows"),
    "new": ("gitops new my-model", "gitops new my-cnn --from digits-cnn"),
    "demo": ("gitops demo",),
    "validate": ("gitops validate", "gitops validate models/my-model --json", "gitops validate --annotations   # in CI"),
    "show": ("gitops show digits-mlp", "gitops show digits-mlp --set train.optimizer.learning_rate=3e-4 --json"),
    "schemas": ("gitops schemas", "gitops schemas --check"),
    "migrate": ("gitops migrate --check", "gitops migrate models/old-model"),
    "train": ("gitops train digits-mlp --dry-run", "gitops train digits-mlp",
              "gitops train digits-mlp --resume", "gitops train digits-mlp --set train.steps=200 --out /tmp/runs"),
    "sweep": ("gitops sweep digits-mlp                  # every trial, one after another (finished ones are cached)",
              "gitops sweep digits-mlp --parallel 2     # two trials at a time",
              "gitops sweep digits-mlp --halving        # stop clearly losing trials early",
              "gitops sweep apply digits-mlp --commit   # write the best trial's values and commit them"),
    "doctor": ("gitops doctor", "gitops doctor --expect-gpu --json"),
    "diff": ("gitops diff", "gitops diff --base main --head HEAD"),
    "report": ("gitops report runs/digits-mlp/*", "gitops report runs/*/* --out report.md --json-out report.json"),
    "comment": ("gitops comment --pr 7 --file report.md",),
    "release": ("gitops release digits-mlp", "gitops release digits-mlp --bump major --push"),
    "promote": ("gitops promote digits-mlp@v1.1.0 --to production", "gitops promote digits-mlp@staging --to production"),
    "demote": ("gitops demote digits-mlp --from staging",),
    "deprecate": ("gitops deprecate digits-mlp@v1.0.0", "gitops deprecate old-model"),
    "rollback": ("gitops rollback digits-mlp --to v1.0.0",),
    "gc": ("gitops gc --dry-run", "gitops gc"),
    "pull": ("gitops pull digits-mlp", "gitops pull digits-mlp@production --to model/", "dir=$(gitops pull digits-mlp@v1.2.0)"),
    "predict": ("gitops predict digits-mlp --input x.npy", "gitops predict tabular-mlp@production --input rows.csv",
                "gitops predict shapes-cnn@production --input a.png --input b.jpg",
                "gitops predict runs/digits-mlp/af2ccc96e466 --input x.json --output y.json"),
    "serve": ("gitops serve digits-mlp@production --port 8501", "gitops serve runs/digits-mlp/af2ccc96e466"),
    "deploy": ("gitops deploy digits-mlp@v1.1.0 --render deploy/", "gitops deploy digits-mlp --render deploy/ --gpu"),
    "ls": ("gitops ls", "gitops ls --json"),
    "runs": ("gitops runs digits-mlp", "gitops runs digits-mlp --json"),
    "history": ("gitops history digits-mlp", "gitops history digits-mlp --json"),
    "site": ("gitops site --out site", "gitops site --serve"),
    "track": ("gitops track digits-mlp", "gitops track --all --tracker mlflow"),
    "data": ("gitops data tokenizer corpus.jsonl.gz --out tokenizer.json", "gitops data checksums data/images --out SHA256SUMS"),
    "data checksums": ("gitops data checksums data/images --out data/images.sha256",),
    "ci": ("gitops ci plan --base main --head HEAD",),
    "ci plan": ("gitops ci plan", "gitops ci plan --base \"$BASE_SHA\" --head \"$HEAD_SHA\" --github-output"),
    "ci release-pending": ("gitops ci release-pending --dist dist", "gitops ci release-pending --spool spool"),
    "ci publish": ("gitops ci publish --spool spool --dist dist", "gitops ci publish --spool spool --run-id 123"),
    "ci fetch-runs": ("gitops ci fetch-runs --matrix \"$MATRIX\" --out runs",),
    "ci fetch-report": ("gitops ci fetch-report --run-id 123 --out report/",),
}
REFERENCE_NOTE = ("A model REF is MODEL (its latest release), MODEL@latest, MODEL@vX.Y.Z, MODEL@X.Y.Z, "
                  "MODEL@STAGE or a run folder; an existing path wins over a model name.")


def _path(ctx: Any) -> str:
    parts = []
    while ctx is not None and ctx.parent is not None:
        parts.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(parts))


# argument name -> what usage calls it (one name per kind of value across all commands)
ARGUMENT_NAMES = {"ref": "REF", "target": "REF", "model": "MODEL", "runs": "RUN", "paths": "PATH", "path": "PATH"}
OPTION_NAMES = {"--set": "KEY=VALUE"}


def value_name(param: Any) -> str:
    """The metavar a parameter shows: its own; for an argument the shared name of its kind (`ref` -> REF);
    for an option its long flag in capitals (`--max-wait-ms` -> MAX_WAIT_MS), as argparse and DVC do."""
    if param.metavar:
        return str(param.metavar)
    if param.param_type_name == "argument":
        return ARGUMENT_NAMES.get(param.name or "", (param.name or "value").upper())
    longs = [o for o in param.opts if o.startswith("--")]
    if longs and longs[0] in OPTION_NAMES:
        return OPTION_NAMES[longs[0]]
    return (longs[0][2:] if longs else (param.name or "value")).replace("-", "_").upper()


def usage_piece(param: Any) -> str:
    """How an argument shows in a usage line: `NAME`, `[NAME]` when optional, `NAME...` when repeated."""
    name = value_name(param)
    if param.metavar and (" " in param.metavar or "[" in param.metavar):  # spelled out by the command
        return name
    if param.nargs != 1:
        return f"{name}..." if param.required else f"[{name}]..."
    return name if param.required else f"[{name}]"


def split_examples(help_text: str | None) -> tuple[str | None, list[str]]:
    """A docstring's text before an `Examples:` line, and the example lines after it (shown verbatim)."""
    if not help_text:
        return help_text, []
    text = inspect.cleandoc(help_text)
    head, sep, tail = text.partition("\nExamples:\n")
    if not sep:
        return help_text, []
    return head.rstrip(), [line.strip() for line in tail.splitlines() if line.strip()]


class GitopsCommand(typer_core.TyperCommand):
    """A command whose help names values plainly and ends with examples (`EXAMPLES`, or its docstring's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help, self.doc_examples = split_examples(self.help)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line's parts: `[OPTIONS]` then every argument (see `usage_piece`)."""
        pieces = ["[OPTIONS]"]
        pieces += [usage_piece(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """The Arguments and Options sections, each value named by `value_name`."""
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            text = record[1]
            if param.param_type_name == "argument":
                name = value_name(param) if param.metavar else usage_piece(param).strip("[]").replace("]...", "...")
                args.append((name, text))
                continue
            names = ", ".join(param.opts)
            if getattr(param, "secondary_opts", None):
                names += " / " + ", ".join(param.secondary_opts)
            if not (getattr(param, "is_flag", False) or getattr(param, "count", False)):
                names += f" {value_name(param)}"
            opts.append((names, text))
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        """The epilog, then the command's examples, then the reference grammar note when it takes a REF."""
        super().format_epilog(ctx, formatter)
        write_examples(_path(ctx), formatter, self.doc_examples)
        if any(p.param_type_name == "argument" and value_name(p) == "REF" for p in self.get_params(ctx)):
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(REFERENCE_NOTE)


def write_examples(path: str, formatter: Any, more: list[str] | None = None) -> None:
    """Write an Examples section: `EXAMPLES[path]` then `more` (duplicates dropped), verbatim; nothing if none."""
    lines = list(dict.fromkeys([*EXAMPLES.get(path, ()), *(more or ())]))
    if not lines:
        return
    with formatter.section("Examples"):
        for line in lines:
            formatter.write(f"{' ' * formatter.current_indent}{line}\n")


class GitopsGroup(typer_core.TyperGroup):
    """A group whose command list is grouped into panels and never cut short."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line's parts: `[OPTIONS] COMMAND [ARGS]...`."""
        return ["[OPTIONS]", "COMMAND [ARGS]..."]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The command list in panels (`GROUPS`, ordered by `GROUP_ORDER`), with whole short help texts."""
        panels: dict[str, list[tuple[str, str]]] = {}
        prefix = _path(ctx)
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            path = f"{prefix} {name}".strip()
            panel = getattr(cmd, "rich_help_panel", None) or GROUPS.get(path) or "Commands"
            panels.setdefault(panel, []).append((name, cmd.get_short_help_str(limit=10_000)))
        order = [p for p in GROUP_ORDER if p in panels] + sorted(p for p in panels if p not in GROUP_ORDER)
        for panel in order:
            with formatter.section(panel):
                formatter.write_dl(panels[panel])

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        """The epilog, the group's examples, and how to get a command's own help."""
        super().format_epilog(ctx, formatter)
        write_examples(_path(ctx), formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(f"Run '{ctx.command_path} COMMAND --help' for a command's options and examples.")
