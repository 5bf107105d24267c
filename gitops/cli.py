"""Entry point of the `gitops` console script: registers the command modules and runs typer."""

from __future__ import annotations

import importlib

from gitops.cli_app import app

# Each module registers its commands on import; none of them imports jax at module level.
_COMMAND_MODULES = ("config", "training", "loop", "runner", "serving", "site", "demo", "sweep", "data")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"gitops.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command group not built yet
        if exc.name != f"gitops.commands.{_name}":
            raise


def main() -> None:
    from gitops.interrupt import install_terminate_handler

    install_terminate_handler()  # SIGTERM (systemd, Kubernetes) unwinds like Ctrl-C: cleanup runs, exit 143
    app(prog_name="gitops")


if __name__ == "__main__":
    main()
