"""Help that reads like git's (issue 17, fault 9): plain value names, grouped commands never cut
short, examples in every command's help, and `gitops --version`."""

from __future__ import annotations

import importlib.metadata
import re

import typer
from typer.testing import CliRunner

from gitops import helptext
from gitops.cli import app

TYPER_FORMS = re.compile(r"\{[a-z_]+\}|<(list|int|float|str|path|bool|tuple)\b|range>")


def commands() -> list[tuple[str, object]]:
    """Every leaf command as (path, click command)."""
    root = typer.main.get_command(app)
    found = []

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            path = f"{prefix} {name}".strip()
            if hasattr(cmd, "commands"):
                found.append((path, cmd))
                walk(cmd, path)
            else:
                found.append((path, cmd))

    walk(root, "")
    return found


def help_of(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_command_help_names_values_plainly_and_shows_examples() -> None:
    paths = [p for p, _ in commands()]
    assert {"init", "ls", "runs", "pull", "ci plan"} <= set(paths)
    for path in paths:
        text = help_of(*path.split())
        assert not TYPER_FORMS.search(text), (path, TYPER_FORMS.search(text).group(0))
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: gitops {path} [OPTIONS]") and "{" not in usage, usage
        assert "\nExamples:\n" in text, f"gitops {path} --help shows no examples"
        examples = text.split("\nExamples:\n", 1)[1]
        assert f"gitops {path}" in examples, path


def test_examples_name_real_commands_and_docstring_examples_render_verbatim() -> None:
    paths = {p for p, _ in commands()}
    assert set(helptext.EXAMPLES) <= paths
    head, lines = helptext.split_examples("Do a thing.\n\n    Examples:\n      gitops x a   # one\n      gitops x b\n")
    assert head == "Do a thing." and lines == ["gitops x a   # one", "gitops x b"]


def test_top_level_list_is_grouped_and_never_cut_short() -> None:
    text = help_of()
    flat = " ".join(text.split()).replace("- ", "-")  # the wrapper may break a line after a hyphen
    assert "..." not in text.split("Commands", 1)[-1].replace("COMMAND [ARGS]...", "")
    for path, cmd in commands():
        if " " in path:
            continue
        paragraph = " ".join(cmd.help.split("\n\n")[0].split())
        first = re.split(r"(?<=\.) ", paragraph)[0].replace("- ", "-")  # its whole first sentence
        assert first in flat, (path, first)
    headings = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    for panel in ("Start", "Configure", "Train", "Review", "Release", "Use", "Inspect"):
        assert panel in headings, headings
    start = text.split("Start:", 1)[1].split("\n\n", 1)[0]
    assert "init" in start and "new" in start


def test_reference_commands_share_one_argument_name() -> None:
    for path in ("pull", "predict", "serve", "deploy", "promote"):
        usage = help_of(path).splitlines()[0]
        optional = path == "deploy"  # `gitops deploy --all --to-repo ...` names no ref
        assert usage == f"Usage: gitops {path} [OPTIONS] {'[REF]' if optional else 'REF'}", usage
        assert "MODEL@latest" in " ".join(help_of(path).split())


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"gitops {importlib.metadata.version('gitops-nn')} ")


def test_help_ls_runs_and_init_never_import_jax(example_repo, tmp_path) -> None:
    import subprocess
    import sys

    for args in (["--help"], ["ls"], ["runs", "digits-mlp"], ["init", str(tmp_path / "new")]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gitops.cli", *args], cwd=example_repo,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
        assert not imported & {"jax", "jaxlib", "flax", "optax", "orbax"}, (args, imported & {"jax", "flax"})


def test_readme_names_only_commands_that_exist_and_installs_that_resolve() -> None:
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    dist = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]
    paths = {p for p, _ in commands()}
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    used = [line.split() for line in lines if line.startswith("gitops ") and not line.startswith("gitops --")]
    assert used
    for words in used:
        path = " ".join(words[1:3]) if words[1] == "ci" else words[1]
        assert path in paths, words
    # there is no PyPI release: every install names a git URL or a wheel of the real distribution name
    installs = [line for line in lines if line.startswith("pip install")]
    assert installs and all((f'"{dist}' in line and " @ git+https://" in line) or ".whl" in line for line in installs)
    assert "gitops_nn-" in readme and dist == "gitops-nn"
