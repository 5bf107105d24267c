"""Entry point of the `gitops` console script: registers the command modules and runs typer."""

from __future__ import annotations

import importlib
import sys

from gitops.cli_app import app

# Each module registers its commands on import; none of them imports jax at module level.
_COMMAND_MODULES = ("init", "config", "training", "loop", "browse", "runner", "serving", "site", "demo", "sweep",
                    "data", "lineage")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"gitops.commands.{_name}")

# What every command module registered, before `only_invoked` trims `app` for one command's start-up.
_EVERY = (list(app.registered_commands), list(app.registered_groups),
          {id(g): list(g.typer_instance.registered_commands) for g in app.registered_groups})


def _command_name(info) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def only_invoked(argv: list[str]) -> None:
    """Keep on `app` just the command `argv` invokes, so typer builds one command's parameters.

    typer turns every registered command into a click command (evaluating all their annotations)
    before it runs any: with ~30 commands that is most of `gitops validate`'s start-up. When the
    first word after the global flags names a registered command (or `ci` and one of its commands),
    the others are dropped from this process's app; `--help`, no command and unknown or misspelled
    names keep them all, so the command list and click's "no such command" stay complete.
    """
    words = [a for a in argv if not a.startswith("-")]
    if not words or any(a in ("--help", "-h") for a in argv[: argv.index(words[0])]):
        return
    commands = [c for c in app.registered_commands if _command_name(c) == words[0]]
    if commands:
        app.registered_commands[:] = commands
        app.registered_groups[:] = []
        return
    groups = [g for g in app.registered_groups if g.name == words[0]]
    if len(groups) == 1 and len(words) > 1:
        sub = groups[0].typer_instance
        chosen = [c for c in sub.registered_commands if _command_name(c) == words[1]]
        if chosen:
            sub.registered_commands[:] = chosen
            app.registered_commands[:] = []
            app.registered_groups[:] = groups


def every_command() -> None:
    """Put back on `app` every command `only_invoked` dropped (`gitops demo` runs the others in-process)."""
    commands, groups, within = _EVERY
    app.registered_commands[:] = commands
    app.registered_groups[:] = groups
    for group in groups:
        group.typer_instance.registered_commands[:] = within[id(group)]


def main() -> None:
    """The `gitops` console-script entry point: installs the SIGTERM handler (so termination unwinds like Ctrl-C,
    exit 143), registers only the command invoked (fast start-up), then runs the Typer app; exits the process.
    """
    from gitops.learn.interrupt import install_terminate_handler
    from gitops.learn.lifeline import watch_env_parent

    install_terminate_handler()  # SIGTERM (systemd, Kubernetes) unwinds like Ctrl-C: cleanup runs, exit 143
    watch_env_parent()  # a `sweep --parallel` trial: SIGTERM ourselves if the sweep dies (kill -9 included)
    only_invoked(sys.argv[1:])
    app(prog_name="gitops")


if __name__ == "__main__":
    main()
