"""`gitops demo`: the whole GitOps loop on a scratch copy of this repository, in about half a minute.

It builds a fresh git repository (branch `main`, one commit) from this checkout's `models/digits-mlp`,
`models/wine-mlp`, `schemas/` and `gitops.yaml`, then runs, through the real CLI in this process and
on the embedded local backend (git tags + `.gitops/`):

    train + release the baselines (v1.0.0) -> branch, change digits-mlp's learning rate -> ci plan
    (only digits-mlp) -> train -> the PR report -> sticky comment -> merge -> ci release-pending
    (v1.1.0) -> promote to production -> pull -> predict -> history -> add digits-mlp-finetune (starts
    from digits-mlp@production, first layer frozen) -> release-pending -> lineage

Each step prints the command a user would type and its key output. The scratch repository is kept
(to look around in) and the summary says where it is and how to delete it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gitops
from gitops import jsonio
from gitops.errors import GitopsError, UsageError

MODELS = ("digits-mlp", "wine-mlp")  # digits-mlp changes; wine-mlp shows that unchanged models are left alone
MODEL = "digits-mlp"
FINETUNE = "digits-mlp-finetune"  # starts from digits-mlp@production (train.start_from), added once that exists
BRANCH = "tune-digits-lr"
# Environment that would point the demo at GitHub or at a CI job's files; unset while it runs.
_CI_ENV = ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_EVENT_PATH", "GITOPS_BACKEND")


@dataclass
class DemoResult:
    """What `run` leaves behind: the scratch repository it built, each step's printed output (keyed by step)
    and the whole demo's wall time in seconds.
    """
    repo: Path
    outputs: dict[str, str] = field(default_factory=dict)  # step key -> what the command printed
    seconds: float = 0.0


def source_root() -> Path:
    """The checkout the demo copies from: the repository around the working folder, else this package's."""
    from gitops import config

    candidates = []
    with contextlib.suppress(UsageError):
        candidates.append(config.find_root())
    candidates.append(Path(gitops.__file__).resolve().parents[1])  # a source checkout
    for root in candidates:
        if all((root / "models" / m / "model.yaml").is_file() for m in MODELS) and (root / "schemas").is_dir():
            return root
    raise UsageError("gitops demo copies models/digits-mlp, models/wine-mlp and schemas/ from a checkout of the "
                     "gitops repository: run it there (make demo)")


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GitopsError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def make_repo(source: Path, target: Path) -> Path:
    """A fresh git repository at `target` (branch main, one commit) with the demo's models."""
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} exists and is not empty; give --keep a new folder")
    target.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        shutil.copytree(source / "models" / name, target / "models" / name)
    shutil.copytree(source / "schemas", target / "schemas")
    if (source / "gitops.yaml").is_file():
        shutil.copyfile(source / "gitops.yaml", target / "gitops.yaml")
    (target / ".gitignore").write_text("runs/\n.gitops/\n*.npy\nreport.md\nreport.json\n", encoding="utf-8")
    _git(target, "init", "-q", "-b", "main")
    _git(target, "config", "user.name", "gitops demo")
    _git(target, "config", "user.email", "demo@gitops.invalid")
    _git(target, "config", "commit.gpgsign", "false")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "Models: digits-mlp and wine-mlp")
    return target


class _Runner:
    """Runs `gitops ...` in this process and prints a step header, the command and its key output."""

    def __init__(self, console, repo: Path, result: DemoResult, invoke: Callable[[list[str]], int]):
        self.console, self.repo, self.result, self.step = console, repo, result, 0
        self.invoke = invoke

    def header(self, title: str) -> None:
        self.step += 1
        self.console.print()
        self.console.rule(f"[bold cyan]Step {self.step}: {title}", align="left")

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def show(self, text: str, style: str = "") -> None:
        for line in text.rstrip("\n").splitlines():
            self.console.print(f"  {line}", markup=False, highlight=False, style=style or None, soft_wrap=True)

    def git(self, *args: str) -> str:
        self.console.print(f"[dim]$ git {' '.join(args)}[/dim]", highlight=False)
        return _git(self.repo, *args)

    def gitops(self, key: str, *args: str, show: str | None = "all") -> str:
        """Run `gitops args...`; raise GitopsError (with its output) unless it exits 0."""
        self.console.print(f"[bold]$ gitops {' '.join(args)}[/bold]", highlight=False)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = self.invoke(list(args))
        text = stdout.getvalue()
        self.result.outputs[key] = text
        if code != 0:
            self.show(stderr.getvalue() + text, style="red")
            raise GitopsError(f"the demo stopped: `gitops {' '.join(args)}` exited {code}")
        if show == "all":
            self.show(text)
        elif show is not None:  # only the lines matching this pattern
            self.show("\n".join(line for line in text.splitlines() if re.search(show, line)))
        return text


def _lower_learning_rate(repo: Path) -> tuple[str, str]:
    path = repo / "models" / MODEL / "train.yaml"
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^(\s*learning_rate:\s*)(\S+)", text, re.M)
    if not match:
        raise GitopsError(f"{path}: no learning_rate to change")
    old = match.group(2)
    new = "2e-3" if old != "2e-3" else "1e-3"
    path.write_text(text[: match.start(2)] + new + text[match.end(2):], encoding="utf-8")
    return old, new


def _sample_inputs(repo: Path, n: int = 8) -> tuple[Path, list[int]]:
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    path = repo / "digits-sample.npy"
    np.save(path, x[-n:].astype("float32"))
    return path, [int(v) for v in y[-n:]]


def run(keep: Path | None = None, console=None, *, invoke: Callable[[list[str]], int]) -> DemoResult:
    """Run the demo (see the module docstring); returns the scratch repository and each step's output.

    Args:
        keep: build the scratch repository here (a new or empty folder), else in a temporary folder.
        console: a `rich.console.Console` to print to (default: stdout).
        invoke: runs one `gitops ARGS` command line in this process and returns its exit code (the
            command layer's; this module never imports it).

    Raises:
        UsageError: `keep` is not empty.
        GitopsError: a step's command failed (its output is printed first).
    """
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    started = time.monotonic()
    source = source_root()
    target = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="gitops-demo-"))
    saved_env = {k: os.environ.pop(k) for k in _CI_ENV if k in os.environ}
    os.environ["GITOPS_BACKEND"] = "local"
    cwd = Path.cwd()
    result = DemoResult(target)
    r = _Runner(console, target, result, invoke)
    try:
        console.rule("[bold]gitops demo: the whole loop, locally (no GitHub)")
        r.header("A scratch repository")
        make_repo(source, target)
        os.chdir(target)
        r.say(f"{target}: branch main, one commit with models/{MODELS[0]} and models/{MODELS[1]}")

        r.header(f"Train the baseline of {MODEL}")
        r.gitops("train-baseline", "train", MODEL, show=r"^(run:|cache hit:)|test/")

        r.header("Release every model that has no release yet")
        r.say("(wine-mlp has no run yet: release-pending trains it)")
        r.gitops("release-baseline", "ci", "release-pending", show=r"^released")

        r.header("A pull request: change one config value")
        r.git("switch", "-q", "-c", BRANCH)
        old, new = _lower_learning_rate(target)
        r.say(f"models/{MODEL}/train.yaml: train.optimizer.learning_rate {old} -> {new}")
        r.git("commit", "-q", "-am", f"{MODEL}: learning rate {old} -> {new}")
        head = _git(target, "rev-parse", "HEAD")

        r.header("Plan: which models does the PR train?")
        plan_text = r.gitops("plan", "ci", "plan", "--base", "main", "--head", head, show=None)
        plan = json.loads(plan_text)
        for change in plan["train"]:
            r.show(f"train {change['model']} ({change['reason']}), fingerprint {change['fingerprint']}")
        r.show(f"job matrix: {jsonio.dumps(plan['matrix'])}")
        if [c["model"] for c in plan["train"]] != [MODEL]:
            raise GitopsError(f"the plan should name only {MODEL}: {plan['train']}")

        r.header(f"Train {MODEL} as the PR's GPU job would")
        r.gitops("train-pr", "train", MODEL, show=r"^(run:|cache hit:)|test/")
        run_dir = Path("runs") / MODEL / plan["train"][0]["fingerprint"]

        r.header("The PR report (Markdown; on GitHub the sticky comment)")
        r.gitops("report", "report", str(run_dir), "--out", "report.md", "--json-out", "report.json", "--pr", "1",
                 show=None)
        report_text = (target / "report.md").read_text(encoding="utf-8")
        result.outputs["report"] = report_text
        r.show(report_text)

        r.header("Post it as the one sticky comment on PR #1 (a local file here)")
        r.gitops("comment", "comment", "--pr", "1", "--file", "report.md", "--head-sha", head,
                 "--report-json", "report.json")

        r.header("Merge the PR into main")
        r.git("switch", "-q", "main")
        r.git("merge", "-q", "--no-ff", BRANCH, "-m", f"Merge branch '{BRANCH}'")

        r.header("Release what changed on main (the merge's CI job)")
        r.gitops("release", "ci", "release-pending", show=r"^released|nothing to release")

        r.header("Promote the new version to production")
        r.gitops("promote", "promote", f"{MODEL}@v1.1.0", "--to", "production")

        r.header("Pull production back: download, verify checksums, unpack")
        r.gitops("pull", "pull", f"{MODEL}@production")

        r.header("Predict with production on a few digits")
        sample, labels = _sample_inputs(target)
        doc = jsonio.loads(r.gitops("predict", "predict", f"{MODEL}@production", "--input", sample.name, show=None))
        predicted = [p.get("class") for p in doc["predictions"]]
        result.outputs["predictions"] = jsonio.dumps(predicted)
        r.show(f"predicted: {' '.join(str(p) for p in predicted)}")
        r.show(f"true:      {' '.join(str(v) for v in labels)}")
        right = sum(str(p) == str(v) for p, v in zip(predicted, labels, strict=True))
        r.show(f"{right} of {len(labels)} right")

        r.header(f"History of {MODEL}")
        r.gitops("history", "history", MODEL)

        if (source / "models" / FINETUNE / "train.yaml").is_file():
            r.header(f"Fine-tune production: {FINETUNE} starts from {MODEL}@production")
            shutil.copytree(source / "models" / FINETUNE, target / "models" / FINETUNE)
            r.say(f"models/{FINETUNE}/train.yaml: start_from: {{model: {MODEL}@production, freeze: [hidden/0]}}; "
                  "data.yaml: shifted, noisy training images")
            r.git("add", f"models/{FINETUNE}")
            r.git("commit", "-q", "-m", f"{FINETUNE}: fine-tune {MODEL}@production")
            r.gitops("release-finetune", "ci", "release-pending", show=r"^released|nothing to release")
            r.header(f"Lineage: {FINETUNE} grew from {MODEL}")
            r.gitops("lineage", "lineage", f"{FINETUNE}@v1.0.0")
    finally:
        os.chdir(cwd)
        os.environ.pop("GITOPS_BACKEND", None)
        os.environ.update(saved_env)
    result.seconds = time.monotonic() - started
    console.print()
    console.rule(f"[bold green]Done in {result.seconds:.0f} s")
    lines = [
        f"The scratch repository is kept at {target}",
        f"  look around:  cd {target} && git log --oneline --all && git tag -n1",
        f"  delete it:    rm -rf {target}",
        "",
        f"What to try next (inside {target}):",
        *(f"  {cmd:<46}  # {why}" for cmd, why in (
            (f"gitops serve {MODEL}@production", "HTTP inference server (TF Serving's REST shapes)"),
            ("gitops site --out site", "the static registry site; open site/index.html"),
            (f"gitops rollback {MODEL} --to v1.0.0", "restore v1.0.0's config on a new branch"),
            (f"gitops show {MODEL} --json", "the resolved config and its fingerprints"),
            (f"gitops train {MODEL} --set train.steps=3000", "an override, without editing a file"),
        )),
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return result
