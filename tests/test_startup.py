"""Start-up of the commands that never train (issue 17, fault 14).

The time goal lives in `benchmarks/cli_startup.py` (ratios against typer + PyYAML + fastjsonschema
measured in the same run); these tests hold the mechanisms it relies on: what those commands
import, the pydantic-free parameter path, the one-command app, and the dist-info reader matching
importlib.metadata.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from gitops import distinfo
from gitops.config import plugins

HEAVY = ("jax", "flax", "optax", "orbax", "pydantic", "importlib.metadata", "hashlib", "rich", "jsonschema",
         "tempfile", "email")


def _imported(repo: Path, args: list[str]) -> tuple[set[str], subprocess.CompletedProcess]:
    code = (f"import sys\nsys.argv = ['gitops', *{args!r}]\nfrom gitops.cli import main\ntry:\n    main()\n"
            "except SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
            "print('\\nMODULES', ' '.join(sorted(sys.modules)), 'RC', code)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=env, timeout=120)
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:-2]), done


@pytest.mark.parametrize("args", [["validate", "models/wine-mlp", "--json"], ["--debug", "show", "wine-mlp"],
                                  ["ci", "plan", "--base", "HEAD", "--head", "HEAD"], ["--help"]])
def test_commands_that_never_train_import_nothing_heavy(example_repo, args):
    modules, done = _imported(example_repo, args)
    assert done.stdout.rstrip().endswith("RC 0"), done.stderr[-2000:]
    heavy = set(HEAVY)
    if args[0] == "ci":  # checks checksum-list pins (hashlib) and reads release tags for parents and budgets
        heavy -= {"hashlib", "tempfile"}
    assert not {m for m in modules if m.split(".")[0] in heavy or m in heavy}, sorted(
        m for m in modules if m.split(".")[0] in heavy or m in heavy)
    if args == ["--help"]:  # the full command list, although one-command runs build only theirs
        for name in ("validate", "train", "release", "promote", "serve", "ci"):
            assert f"  {name} " in done.stdout


def test_one_command_app_keeps_help_and_suggestions_whole(example_repo):
    """Only the invoked command is built; a misspelled one still gets click's did-you-mean over all."""
    _, done = _imported(example_repo, ["valdate"])
    assert "No such command 'valdate'. Did you mean 'validate'?" in done.stderr
    _, done = _imported(example_repo, ["ci", "plam"])
    assert "Did you mean 'plan'?" in done.stderr


def test_plain_parameters_convert_like_typer(example_repo, monkeypatch):
    """str/Path/list values through the fast path; ints and ranges still typer's (with its messages)."""
    from typer.testing import CliRunner

    from gitops.cli import app

    monkeypatch.chdir(example_repo)
    runner = CliRunner()
    result = runner.invoke(app, ["validate", "models/wine-mlp", "models/digits-mlp"])
    assert result.exit_code == 0 and "2 model(s) valid" in result.stderr
    result = runner.invoke(app, ["serve", "wine-mlp", "--port", "notaport"])
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.output and "integer" in result.output
    result = runner.invoke(app, ["train", "wine-mlp", "--num-processes", "0"])
    assert result.exit_code == 2 and "Invalid value for '--num-processes'" in result.output


def test_distinfo_matches_importlib_metadata():
    """Versions and entry points read from dist-info folders equal importlib.metadata's, for every package."""
    distinfo.refresh()
    seen = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        key = distinfo.normalize(name)
        if key in seen:
            continue
        seen.add(key)
        assert distinfo.version(name) == importlib.metadata.version(name), name
    assert distinfo.version("no-such-package-anywhere") is None
    for group in (*plugins.GROUPS.values(), "console_scripts", "pytest11"):
        ours = sorted((e.name, e.value, e.dist.name) for e in distinfo.entry_points(group))
        theirs = sorted((e.name, e.value, e.dist.name) for e in importlib.metadata.entry_points(group=group))
        assert ours == theirs, group


def test_startup_benchmark_runs_and_prints_ratios():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cli_startup.py"), "--repeats", "1",
                           "--only", "validate"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reference" in done.stdout and "validate" in done.stdout and "worst CPU ratio" in done.stdout


def test_gitops_demo_runs_every_command_although_its_process_trimmed_the_app(example_repo, monkeypatch, capsys):
    """`gitops demo` (`make demo`) starts as a one-command app, then runs train, release, plan... in-process."""
    from gitops import cli
    from gitops.commands.demo import _invoke

    monkeypatch.chdir(example_repo)
    try:
        cli.only_invoked(["demo", "--keep", "scratch"])  # what main() does for `gitops demo`
        assert [cli._command_name(c) for c in cli.app.registered_commands] == ["demo"]
        assert _invoke(["validate", "models/wine-mlp"]) == 0
        assert _invoke(["ci", "plan", "--base", "HEAD", "--head", "HEAD"]) == 0
        captured = capsys.readouterr()
        assert "1 model(s) valid" in captured.err and '"matrix"' in captured.out
    finally:
        cli.every_command()
    assert len(cli.app.registered_commands) > 20
