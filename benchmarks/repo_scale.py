"""The GitOps loop's read paths on a large repository: validate, ci plan, and tag reading.

Builds a temporary git repository of N generated models (commit A), changes K of them (commit B),
and writes T GTO-style annotated release and stage tags (`<model>@vX.Y.Z`, `<model>#<stage>#<n>`,
each with the release JSON block `gitops release` writes) with one `git fast-import`. Then times,
best of R fresh processes each:

- `gitops validate`                       (goal < 1 s for 1,000 models)
- `gitops ci plan --base A --head B`      (goal < 3 s: resolves every model at both commits)
- `gitops history MODEL`                  (goal well under 1 s with 5,000 tags)
- `LocalBackend.list_tags()` in-process   (the one `git for-each-ref` every registry read starts with)

    python benchmarks/repo_scale.py [--models 1000] [--changed 10] [--tags 5000] [--repeats 3]

Exit status 1 when a goal is missed (figures vary +-30-50 % on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_scale import generate  # noqa: E402

STAGES = ("staging", "production")


def git(root: Path, *args: str, data: str | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], input=data, check=True, capture_output=True,
                          text=True).stdout


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


def change_models(root: Path, count: int) -> list[str]:
    """Change the learning rate of `count` models (a training-fingerprint change each)."""
    names = sorted(p.name for p in (root / "models").iterdir())[:count]
    for name in names:
        path = root / "models" / name / "train.yaml"
        text = path.read_text()
        lines = [line.replace("learning_rate:", "learning_rate: 0.00123  # was:", 1) if "learning_rate:" in line else line
                 for line in text.splitlines()]
        path.write_text("\n".join(lines) + "\n")
    return names


def write_tags(root: Path, commit: str, total: int) -> str:
    """`total` annotated tags, five releases plus stage moves per model, via one git fast-import."""
    models = sorted(p.name for p in (root / "models").iterdir())
    chunks: list[str] = []
    made, when = 0, 1_700_000_000
    per_model = 8  # 5 versions + 3 stage assignments
    for model in models:
        if made >= total:
            break
        for i in range(min(per_model, total - made)):
            if i < 5:
                version = f"v1.{i}.0"
                name = f"{model}@{version}"
                meta = {"bump": "minor" if i else "major", "reason": "benchmark", "headline_metric": "test/accuracy",
                        "metrics": {"test/accuracy": 0.9 + i / 100, "test/loss": 0.3 - i / 100}}
                message = (f"{model} {version}: test/accuracy {0.9 + i / 100:.4f}\n\n```json\n"
                           f"{json.dumps(meta, sort_keys=True, indent=1)}\n```\n")
            else:
                counter = i - 4
                name = f"{model}#{STAGES[counter % 2]}#{counter}"
                message = f"Promote {model} v1.{counter}.0 to {STAGES[counter % 2]}\n"
            when += 1
            body = message.encode()
            chunks.append(f"tag {name}\nfrom {commit}\ntagger Bench <bench@example.com> {when} +0000\n"
                          f"data {len(body)}\n{message}\n")
            made += 1
    git(root, "fast-import", "--quiet", data="".join(chunks))
    return models[0]


def best_time(cmd: list[str], cwd: Path, repeats: int) -> tuple[float, int, str]:
    best, code, output = float("inf"), 0, ""
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=300)
        best = min(best, time.perf_counter() - start)
        code, output = proc.returncode, proc.stdout
        if code != 0:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    return best, code, output


def time_in_process(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gitops = str(Path(sys.executable).parent / "gitops")
    results: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="gitops-repo-scale-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root, args.models)
        (root / ".gitignore").write_text("runs/\n.gitops/\n")
        git(root, "init", "-q", "-b", "main")
        for key, value in (("user.name", "Bench"), ("user.email", "bench@example.com"), ("commit.gpgsign", "false")):
            git(root, "config", key, value)
        base = commit_all(root, "models")
        changed = change_models(root, args.changed)
        head = commit_all(root, f"change {len(changed)} models")
        model = write_tags(root, base, args.tags)
        tag_count = len(git(root, "tag").splitlines())
        print(f"repository: {args.models} models, {len(changed)} changed, {tag_count} tags "
              f"(set up in {time.perf_counter() - t0:.1f} s)")

        seconds, code, _ = best_time([gitops, "validate"], root, args.repeats)
        results.append((f"gitops validate ({args.models} models)", seconds, 1.0, f"exit {code}"))
        seconds, code, output = best_time([gitops, "ci", "plan", "--base", base, "--head", head], root, args.repeats)
        planned = len(json.loads(output)["train"]) if code == 0 else None
        results.append((f"gitops ci plan ({len(changed)} of {args.models} changed)", seconds, 3.0,
                        f"exit {code}, {planned} to train"))
        seconds, code, output = best_time([gitops, "history", model], root, args.repeats)
        results.append((f"gitops history {model} ({tag_count} tags)", seconds, 1.0, f"exit {code}"))

        from gitops.backends.local import LocalBackend

        backend = LocalBackend(root)
        listed = len(backend.list_tags())
        seconds = time_in_process(backend.list_tags, args.repeats)
        results.append((f"LocalBackend.list_tags ({listed} tags, in-process)", seconds, 0.5, ""))

    missed = 0
    for label, seconds, goal, note in results:
        ok = seconds < goal
        missed += not ok
        print(f"{label:<48} {seconds:7.3f} s   goal < {goal:g} s  {'ok' if ok else 'MISSED'}  {note}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
