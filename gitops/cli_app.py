"""The typer application and the one decorator that turns library errors into exit codes.

Command modules (`gitops/commands/*.py`) register on `app` with `@command()`. They import heavy
libraries (jax, flax, optax, orbax) inside the command body only, so `validate`, `show`, `diff` and
`ci plan` start in about a tenth of a second.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gitops import cli_params
from gitops.errors import EXIT_INTERRUPTED, GitopsError
from gitops.helptext import GitopsCommand, GitopsGroup

cli_params.install()  # plain str/Path parameters without pydantic: start-up (see gitops/cli_params.py)

app = typer.Typer(
    name="gitops",
    help="GitOps for neural-network models: validate, train, report, release, pull, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=GitopsGroup,
)
ci_app = typer.Typer(help="Commands the CI workflows call.", no_args_is_help=True, cls=GitopsGroup,
                     rich_markup_mode=None)
app.add_typer(ci_app, name="ci")

_DEBUG_ENV = "GITOPS_DEBUG"


def version_text() -> str:
    """`gitops X.Y.Z (gitops-nn, Python A.B.C)`: the installed distribution's version when there is one."""
    import importlib.metadata
    import platform

    from gitops import __version__

    try:
        version = importlib.metadata.version("gitops-nn")
    except importlib.metadata.PackageNotFoundError:
        version = __version__
    return f"gitops {version} (gitops-nn, Python {platform.python_version()})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True, callback=_show_version)] = False,
) -> None:
    if debug:
        os.environ[_DEBUG_ENV] = "1"
    from gitops import logs

    # library warnings (e.g. an unreadable registry tag) as `warning: ...` lines, for this command
    ctx.call_on_close(logs.setup_command())


def debug_enabled() -> bool:
    """True when `--debug` was given (GITOPS_DEBUG is set to anything but empty or "0"): errors then show
    Python tracebacks instead of one `error:` line.
    """
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
        except Exception as exc:  # plugin code that raised outside a guarded call (dry run, predict, serve)
            from gitops.config.registries import plugin_failure

            failure = plugin_failure(exc)
            if failure is None or debug_enabled():
                raise
            raise fail(failure.message, failure.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (interrupt.Terminated)
            if debug_enabled():
                raise
            from gitops.errors import EXIT_TERMINATED
            from gitops.learn.interrupt import Terminated

            if isinstance(exc, Terminated):
                raise fail("terminated (SIGTERM)", EXIT_TERMINATED) from None
            raise fail("interrupted", EXIT_INTERRUPTED) from None

    return wrapper


def command(*args: Any, group: typer.Typer | None = None, **kwargs: Any) -> Callable[[Callable], Callable]:
    """`@app.command()` with error handling; `group=ci_app` registers a `gitops ci ...` command."""

    def decorate(fn: Callable) -> Callable:
        kwargs.setdefault("cls", GitopsCommand)
        return (group or app).command(*args, **kwargs)(handle_errors(fn))

    return decorate


def finite(value: float | None) -> float | None:
    """Option callback for numbers: `inf`/`nan` (which Python's float() accepts) are usage errors (exit 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def out(text: str = "") -> None:
    """Write to stdout (kept in one place so machine-readable output stays clean)."""
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
