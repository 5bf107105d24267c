"""Kill sweep: SIGKILL `gitops release`, `pull`, `promote` and `train` at many moments, then check the state.

Not part of the test suite (it takes minutes); tests/test_kill_points.py holds the fast named-point
checks. For each trial the script builds a fresh repository (the example models, one git commit, a
finished stand-in run of wine-mlp), kills the command, then looks for a *broken state*:

- a version tag whose assets are missing (what `pull` / `load` / `serve` then fail on);
- scratch still there after the next command (`.pull-*`, `.stage-*`, `.gitops/tmp/release-*`,
  `gitops-release-*` in TMPDIR): a kill leaves it, the next run must remove it;
- the next command not completing: the rerun of the killed command fails, or `gitops pull MODEL`
  (the latest version) fails after it;
- for `train`: the rerun does not finish, or its metrics.json differs from an uninterrupted run.

Two kinds of trial: *named points* (`GITOPS_TEST_KILL_AT`, gitops/killpoints.py; only code that has
them) and *timed* kills (SIGKILL after d seconds, d spread over the command's measured duration),
which work on any version of the code, so `--code DIR` can measure an older checkout for comparison.

`train` runs wine-mlp into `sweep-runs/` with a checkpoint every 16 steps; a killed run is run again
with the same command (no --resume) and compared with an uninterrupted run.

    python benchmarks/kill_sweep.py                   # this checkout: named points + 12 timed kills each
    python benchmarks/kill_sweep.py --code /old/tree  # another checkout of gitops (timed kills only)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
GOOD = {"test/accuracy": 0.95, "test/loss": 0.2}


def sh(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class Sweep:
    def __init__(self, code: Path, work: Path):
        self.code, self.work = code, work
        self.n = 0
        self.tried = 0
        self.broken: list[tuple[str, str]] = []

    def env(self, tmp: Path, **extra: str) -> dict:
        return {**os.environ, "PYTHONPATH": f"{self.code}:{self.code / 'tests'}", "JAX_PLATFORMS": "cpu",
                "CI": "1", "TMPDIR": str(tmp), **extra}

    def gitops(self, repo: Path, args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
        return sh([sys.executable, "-m", "gitops.cli", *args], repo, env, timeout)

    def fresh_repo(self, *, released: bool = False) -> tuple[Path, Path]:
        self.n += 1
        base = self.work / f"t{self.n}"
        repo, tmp = base / "repo", base / "tmp"
        tmp.mkdir(parents=True)
        setup = (
            "import sys; from pathlib import Path; from conftest import make_example_repo; "
            "from loop_support import fake_run; r = make_example_repo(Path(sys.argv[1])); "
            f"fake_run(r, 'wine-mlp', {GOOD!r})"
        )
        done = sh([sys.executable, "-c", setup, str(repo)], HERE, self.env(tmp))
        if done.returncode != 0:
            raise SystemExit(f"could not set up a repository: {done.stderr[-2000:]}")
        if released:
            assert self.gitops(repo, ["release", "wine-mlp"], self.env(tmp)).returncode == 0
        return repo, tmp

    def killed(self, repo: Path, args: list[str], env: dict, delay: float | None) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "gitops.cli", *args], cwd=repo, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if delay is None:
            proc.wait(timeout=300)
            return
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def problems(self, repo: Path, tmp: Path) -> list[str]:
        found = []
        refs = subprocess.run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname:strip=2)", "refs/tags"],
                              capture_output=True, text=True).stdout.split()
        for tag in refs:
            if "@v" not in tag or "#" in tag or "!" in tag:
                continue
            model, version = tag.split("@", 1)
            folder = repo / ".gitops" / "releases" / model / version
            if not (folder / "SHA256SUMS").is_file() or not (folder / f"{model}-{version}.tar.gz").is_file():
                found.append(f"tag {tag} without assets")
        deregistered = {t.split("!")[0] for t in refs if "!" in t}
        found = [f for f in found if f.split()[1] not in deregistered]
        leftovers = [p for p in (repo / ".gitops").rglob("*") if p.name.startswith((".pull-", ".stage-"))] \
            if (repo / ".gitops").is_dir() else []
        leftovers += [p for p in (repo / ".gitops" / "tmp").glob("release-*")] if (repo / ".gitops" / "tmp").is_dir() else []
        leftovers += list(tmp.glob("gitops-release-*"))
        if leftovers:
            found.append(f"scratch left: {', '.join(p.name for p in leftovers[:3])}")
        return found

    def trial(self, name: str, args: list[str], *, released: bool, point: str | None = None,
              delay: float | None = None, then_pull: bool = True) -> None:
        repo, tmp = self.fresh_repo(released=released)
        env = self.env(tmp, **({"GITOPS_TEST_KILL_AT": point} if point else {}))
        self.killed(repo, args, env, delay)
        # right after the kill, scratch is expected (SIGKILL runs no cleanup): the next command removes it
        issues = [p for p in self.problems(repo, tmp) if p.startswith("tag")]
        rerun = self.gitops(repo, args, self.env(tmp))
        if rerun.returncode != 0 and "already in stage" not in rerun.stderr:
            issues.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1][:120]}")
        if then_pull:
            pulled = self.gitops(repo, ["pull", "wine-mlp", "--to", "check"], self.env(tmp))
            if pulled.returncode != 0:
                issues.append(f"pull of latest fails: {pulled.stderr.strip().splitlines()[-1][:120]}")
        issues += [f"after rerun: {p}" for p in self.problems(repo, tmp)]
        self.tried += 1
        label = f"{name} " + (f"at {point}" if point else f"after {delay:.2f} s")
        if issues:
            self.broken.append((label, "; ".join(issues)))
        print(f"  {label}: {'BROKEN: ' + '; '.join(issues) if issues else 'ok'}", flush=True)
        shutil.rmtree(repo.parent, ignore_errors=True)

    def train_trial(self, args: list[str], reference: dict, *, point: str | None = None,
                    delay: float | None = None) -> None:
        """Kill `gitops train`, run the same command again (no --resume: an unfinished run is resumed), and
        compare the run with an uninterrupted one: metrics.json and the handed-on checkpoint step."""
        repo, tmp = self.fresh_repo()
        env = self.env(tmp, **({"GITOPS_TEST_KILL_AT": point} if point else {}))
        self.killed(repo, args, env, delay)
        saved = [c for c in (repo / "sweep-runs").glob("wine-mlp/*/checkpoints/*") if c.name.isdigit()]
        issues = []
        rerun = self.gitops(repo, args, self.env(tmp))
        if rerun.returncode != 0:
            issues.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1][:120]}")
        elif "Traceback" in rerun.stderr:
            issues.append("rerun printed a traceback")
        else:
            got = _train_result(repo)
            if got != reference:
                issues.append(f"differs from the uninterrupted run: {got} vs {reference}")
        self.tried += 1
        label = "train " + (f"at {point}" if point else f"after {delay:.2f} s") + f" ({len(saved)} checkpoints on disk)"
        if issues:
            self.broken.append((label, "; ".join(issues)))
        print(f"  {label}: {'BROKEN: ' + '; '.join(issues) if issues else 'ok'}", flush=True)
        shutil.rmtree(repo.parent, ignore_errors=True)

    def duration(self, args: list[str], *, released: bool) -> float:
        repo, tmp = self.fresh_repo(released=released)
        t0 = time.perf_counter()
        done = self.gitops(repo, args, self.env(tmp))
        assert done.returncode == 0, done.stderr
        shutil.rmtree(repo.parent, ignore_errors=True)
        return time.perf_counter() - t0


TRAIN = ["train", "wine-mlp", "--out", "sweep-runs", "--set", "train.epochs=40", "--set",
         "train.checkpoint.every_steps=16", "--set", "train.eval_every=16", "--set", "train.log_every=8"]


def _train_result(repo: Path) -> dict:
    """metrics.json and checkpoint_step of the one run under sweep-runs/wine-mlp/."""
    (run,) = (repo / "sweep-runs" / "wine-mlp").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    return {"metrics": json.loads((run / "metrics.json").read_text()), "checkpoint_step": manifest["checkpoint_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=HERE, help="the gitops checkout to test (default: this one)")
    parser.add_argument("--timed", type=int, default=12, help="timed kills per command")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kill-sweep-"))
    sweep = Sweep(args.code.resolve(), work)
    commands = {
        "release": (["release", "wine-mlp"], False),
        "promote": (["promote", "wine-mlp@v1.0.0", "--to", "production"], True),
        "pull": (["pull", "wine-mlp@v1.0.0"], True),
    }
    try:
        killpoints_file = args.code / "gitops" / "killpoints.py"
        if killpoints_file.is_file():
            sys.path.insert(0, str(args.code))
            from gitops import killpoints

            print("named points:")
            for command, (cmd_args, released) in commands.items():
                for point in killpoints.POINTS[command]:
                    sweep.trial(command, cmd_args, released=released, point=point)
        repo, tmp = sweep.fresh_repo()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gitops.cli", *TRAIN], cwd=repo, env=sweep.env(tmp),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first_checkpoint = None
        while proc.poll() is None:
            if first_checkpoint is None and any(c.name.isdigit() for c in repo.glob("sweep-runs/wine-mlp/*/checkpoints/*")):
                first_checkpoint = time.perf_counter() - t0
            time.sleep(0.01)
        train_seconds = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr.read()
        reference = _train_result(repo)
        # timed kills of train spread from a little before its first checkpoint to its end (start-up is
        # a third to a half of a short run, and a kill there only tests that nothing was written)
        train_from = 0.8 * (first_checkpoint or 0.0)
        shutil.rmtree(repo.parent, ignore_errors=True)
        if killpoints_file.is_file():
            for point in killpoints.POINTS["train"]:
                sweep.train_trial(TRAIN, reference, point=point)
        print("timed kills:")
        for command, (cmd_args, released) in commands.items():
            total = sweep.duration(cmd_args, released=released)
            for i in range(args.timed):
                sweep.trial(command, cmd_args, released=released, delay=total * (i + 0.5) / args.timed)
        for i in range(args.timed):
            sweep.train_trial(TRAIN, reference, delay=train_from + (train_seconds - train_from) * (i + 0.5) / args.timed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for label, why in sweep.broken:
        print(f"broken: {label}: {why}")
    print(json.dumps({"code": str(args.code), "points_tried": sweep.tried, "broken_states": len(sweep.broken)}))


if __name__ == "__main__":
    main()
