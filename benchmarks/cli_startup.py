"""Import cost of the commands that never train, beside typer + PyYAML + fastjsonschema alone.

Each command (`validate`, `show`, `diff`, `ci plan`, `ls`, `--help`) runs in a fresh interpreter
with `python -X importtime` on a temporary copy of the example repository; its import time is the
sum of the cumulative times of the top-level imports it makes (everything it imports, lazily or
not), less what a bare interpreter imports by itself. The reference is a process that imports
`typer`, `yaml` and `fastjsonschema` and nothing else, measured the same way, interleaved with the
commands in the same run so machine load affects both alike. Prints the best and the median of each
and the ratio of the bests (the least disturbed by other load on the machine); the goal is a ratio
of at most 1.5 for every command (exit 1 otherwise with --check). Imports are timed from .pyc files
(a warm-up run writes them), as an installed package runs. On a loaded machine wall times swing;
each command's top-level imports are also replayed in a fresh process and timed in CPU time
(`time.process_time`), which load barely moves: the goal is judged on that CPU ratio.

    python benchmarks/cli_startup.py [--repeats 9] [--check] [--top 8]

`--top N` also lists the N most expensive top-level imports of each command (where to cut next).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.5
REFERENCE = "import typer, yaml, fastjsonschema"
COMMANDS = {
    "validate": ["validate"],
    "show": ["show", "digits-mlp"],
    "diff": ["diff", "--base", "HEAD", "--head", "HEAD"],
    "ci plan": ["ci", "plan", "--base", "HEAD", "--head", "HEAD"],
    "ls": ["ls"],
    "--help": ["--help"],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.pop("GITHUB_ACTIONS", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure imports from .pyc files, as an installed package runs
    return env


def importtime(code: str, cwd: Path) -> tuple[float, dict[str, float], int]:
    """(ms of top-level imports, {module: cumulative ms}, exit code) of `python -X importtime -c code`."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=cwd, env=_env(),
                          capture_output=True, text=True, check=False)
    tops: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line[len("import time:"):].split("|")
        cumulative, name = parts[1], parts[2]
        if name[1:].startswith(" "):  # nested inside another import: already in its parent's cumulative time
            continue
        tops[name.strip()] = tops.get(name.strip(), 0.0) + int(cumulative) / 1000
    return sum(tops.values()), tops, done.returncode


def cpu_ms(modules: list[str], cwd: Path) -> float:
    """CPU time (ms) a fresh process spends importing `modules` in order: steady under machine load."""
    code = ("import time\nt = time.process_time()\n"
            + "".join(f"try:\n    import {m}\nexcept ImportError:\n    pass\n" for m in modules)
            + "print((time.process_time() - t) * 1000)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


def command_code(args: list[str]) -> str:
    return (f"import sys; sys.argv = ['gitops', *{args!r}]\nfrom gitops.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n")


def make_repo(target: Path) -> Path:
    for folder in ("models", "schemas"):
        shutil.copytree(REPO / folder, target / folder)
    if (REPO / "gitops.yaml").is_file():
        shutil.copyfile(REPO / "gitops.yaml", target / "gitops.yaml")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "models"]):
        subprocess.run(["git", "-C", str(target), *args], check=True, capture_output=True, env=env)
    return target


def available(name: str, args: list[str], cwd: Path) -> bool:
    done = subprocess.run([sys.executable, "-c", command_code([*args[:1], "--help"] if args[0] != "--help"
                                                              else args)],
                          cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    return "No such command" not in done.stdout + done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when a command's ratio exceeds {GOAL}")
    parser.add_argument("--top", type=int, default=0, help="list each command's N most expensive imports")
    parser.add_argument("--only", action="append", choices=sorted(COMMANDS), help="measure just these commands")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitops-startup-") as tmp:
        repo = make_repo(Path(tmp) / "repo")
        commands = {n: a for n, a in COMMANDS.items() if (n in opts.only if opts.only else available(n, a, repo))}
        skipped = sorted(set(COMMANDS) - set(commands))
        bare_tops = importtime("pass", repo)[1]
        samples: dict[str, list[float]] = {"reference": [], **{n: [] for n in commands}}
        tops: dict[str, dict[str, float]] = {}
        for name in samples:  # warm-up: writes the .pyc files the timed runs read
            importtime(REFERENCE if name == "reference" else command_code(commands[name]), repo)
        for _ in range(opts.repeats):  # interleaved: load on the machine hits every row alike
            for name in samples:
                code = REFERENCE if name == "reference" else command_code(commands[name])
                _total, found, _rc = importtime(code, repo)
                own = {m: t for m, t in found.items() if m not in bare_tops}
                samples[name].append(sum(own.values()))
                tops[name] = own
        cpu: dict[str, list[float]] = {name: [] for name in samples}  # the same imports, replayed, CPU time
        for _ in range(opts.repeats):
            for name in samples:
                cpu[name].append(cpu_ms(list(tops[name]) if name != "reference" else ["typer", "yaml",
                                                                                       "fastjsonschema"], repo))
        ref, ref_med = min(samples["reference"]), statistics.median(samples["reference"])
        print(f"import time over {opts.repeats} fresh processes each, best (median) in ms; reference: {REFERENCE}")
        print(f"  {'reference':<10} {ref:7.1f} ({ref_med:6.1f})                        CPU "
              f"{statistics.median(cpu['reference']):6.1f} ms")
        worst = 0.0
        for name in commands:
            best, med = min(samples[name]), statistics.median(samples[name])
            ratio = best / ref if ref else float("inf")
            cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu["reference"])
            worst = max(worst, cpu_ratio)
            print(f"  {name:<10} {best:7.1f} ({med:6.1f})   {ratio:4.2f}x (median {med / ref_med:4.2f}x); CPU "
                  f"{statistics.median(cpu[name]):6.1f} ms, {cpu_ratio:4.2f}x "
                  f"{'ok' if cpu_ratio <= GOAL else f'over the {GOAL}x goal'}")
            if opts.top:
                for module, ms in sorted(tops[name].items(), key=lambda kv: -kv[1])[: opts.top]:
                    print(f"      {ms:7.1f}  {module}")
        if skipped:
            print(f"  not measured (no such command in this version): {', '.join(skipped)}")
        print(f"worst CPU ratio {worst:.2f}x (goal <= {GOAL}x; the wall-clock ratios agree on a quiet machine)")
    return 1 if opts.check and worst > GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
