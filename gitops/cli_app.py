"""The typer application and the one decorator that turns library errors into exit codes.

Command modules (`gitops/commands/*.py`) register on `app` with `@command()`. They import heavy
libraries (jax, flax, optax, orbax) inside the command body only, so `validate`, `show`, `diff` and
`ci plan` start in about a tenth of a second.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gitops.errors import EXIT_INTERRUPTED, GitopsError

app = typer.Typer(
    name="gitops",
    help="GitOps for neural-network models: validate, train, report, release, pull, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
ci_app = typer.Typer(help="Commands the CI workflows call.", no_args_is_help=True)
app.add_typer(ci_app, name="ci")

_DEBUG_ENV = "GITOPS_DEBUG"


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
) -> None:
    if debug:
        os.environ[_DEBUG_ENV] = "1"


def debug_enabled() -> bool:
    return os.environ.get(_DEBUG_ENV, "") not in ("", "0")


def fail(message: str, exit_code: int) -> typer.Exit:
    """Print `message` to stderr and return the Exit to raise (keeps call sites one line)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(exit_code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map GitopsError to its exit code and Ctrl-C to 130; no traceback unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GitopsError as exc:
            if debug_enabled():
                raise
            raise fail(exc.message, exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (interrupt.Terminated)
            if debug_enabled():
                raise
            from gitops.interrupt import EXIT_TERMINATED, Terminated

            if isinstance(exc, Terminated):
                raise fail("terminated (SIGTERM)", EXIT_TERMINATED) from None
            raise fail("interrupted", EXIT_INTERRUPTED) from None

    return wrapper


def command(*args: Any, group: typer.Typer | None = None, **kwargs: Any) -> Callable[[Callable], Callable]:
    """`@app.command()` with error handling; `group=ci_app` registers a `gitops ci ...` command."""

    def decorate(fn: Callable) -> Callable:
        return (group or app).command(*args, **kwargs)(handle_errors(fn))

    return decorate


def out(text: str = "") -> None:
    """Write to stdout (kept in one place so machine-readable output stays clean)."""
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
