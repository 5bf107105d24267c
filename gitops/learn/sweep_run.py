"""`gitops sweep MODEL`: run a sweep's trials locally, resumably, optionally with successive halving.

Each trial is `gitops train MODEL --trial N`: an ordinary run in `runs/<model>/<fingerprint>/`, so a
finished trial is a cache hit on the next invocation and an unfinished one resumes. `--parallel N`
runs N trials at once as separate processes (each its own JAX runtime; on one CPU they share cores).

Successive halving (Jamieson & Talwalkar, "Non-stochastic Best Arm Identification and
Hyperparameter Optimization", AISTATS 2016; the building block of Hyperband, Li et al. 2017), local
only: with n trials and eta = 2 there are floor(log2 n) rungs at total_steps / 2^(rungs - k) steps;
at each rung every surviving trial trains until its first validation evaluation at or after the
rung, and the better half by the validation version of the ranking metric goes on. A trial stopped
this way is left as an unfinished run folder (its manifest has no `finished_at`), recorded as
stopped in `<out>/.sweeps/<model>.json`: no report ranks it as finished and no release can reuse it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops import config, jsonio, scratch
from gitops.config import sweep
from gitops.errors import GitopsError
from gitops.learn import lifeline
from gitops.registry import gates, sweep_results
from gitops.registry.runs import RunFolder, run_path, write_json

STATE_DIR = ".sweeps"
HALVING_ETA = 2


class HalvingStop(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from the progress reporter to stop a trial at a rung (successive halving)."""


@dataclass
class _RungReporter:
    """Forwards progress, and stops training at the first validation record at or after `stop_at`.

    When a checkpoint is written at that step (`checkpoint_every`) the stop waits for it, so the step's
    history rows and checkpoint are on disk and a survivor resumes from there; otherwise it stops at
    once. `reached` keeps that validation record: the rung ranks the trial on it.
    """

    inner: Any
    stop_at: int | None
    checkpoint_every: int = 0
    reached: dict | None = None

    def note(self, text: str) -> None:
        self.inner.note(text)

    def start(self, total_steps: int, start_step: int) -> None:
        self.inner.start(total_steps, start_step)

    def log(self, step: int, record: Any, steps_per_second: float) -> None:
        self.inner.log(step, record, steps_per_second)
        if self.stop_at is not None and record.get("split") == "val" and step >= self.stop_at:
            self.reached = dict(record)
            if not (self.checkpoint_every and step % self.checkpoint_every == 0):
                raise HalvingStop(step)

    def timing(self, step: int, what: str, seconds: float) -> None:
        hook = getattr(self.inner, "timing", None)
        if hook is not None:
            hook(step, what, seconds)
        if self.reached is not None and what == "checkpoint" and step == self.reached.get("step"):
            raise HalvingStop(step)  # the rung's checkpoint is written (train.py waits for it on the way out)

    def finish(self) -> None:
        self.inner.finish()


def state_path(out_dir: Path, model: str) -> Path:
    """Path of a model's sweep state file, `<out_dir>/.sweeps/<model>.json`: the trials stopped at a rung by successive
    halving.
    """
    return Path(out_dir) / STATE_DIR / f"{model}.json"


def read_state(out_dir: Path, model: str) -> dict:
    """The model's sweep state, {"stopped": {fingerprint: reason}}; {"stopped": {}} when the file is missing,
    unreadable or malformed (a fresh sweep).
    """
    try:
        doc = jsonio.loads(state_path(out_dir, model).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"stopped": {}}
    return doc if isinstance(doc, dict) and isinstance(doc.get("stopped"), dict) else {"stopped": {}}


def run_folders(out_dir: Path, model: str, fingerprints: list[str]) -> dict[str, Path]:
    """Training fingerprint -> its run folder under `out_dir` (or $GITOPS_RUN_CACHE), where one exists."""
    from gitops.registry.runs import cache_dir

    found = {}
    roots = [Path(out_dir)] + ([cache_dir()] if cache_dir() else [])
    for fp in fingerprints:
        for base in roots:
            folder = run_path(base, model, fp)
            if (folder / "manifest.json").is_file():
                found[fp] = folder
                break
    return found


def results(name: str, root: Path, out_dir: Path) -> tuple[sweep.Sweep, str, list[sweep_results.TrialResult]]:
    """(sweep, ranking metric, every trial's result) from the run folders under `out_dir`."""
    from gitops.repo.tree import FsTree

    spec = sweep.load_valid(name, root)
    resolved, problems = sweep.resolve_trials(spec, FsTree(root))
    if problems:
        from gitops.errors import ConfigError

        raise ConfigError(problems)
    base_cfg = config.load(name, root)
    metric = sweep.metric_of(spec, base_cfg)
    fps = [cfg.training_fingerprint for _, cfg in resolved]
    stopped = read_state(out_dir, name)["stopped"]
    return spec, metric, sweep_results.collect(resolved, run_folders(out_dir, name, fps), metric, stopped)


def _train_one(name: str, root: Path, out_dir: Path, trial: sweep.Trial, reporter: Any,
               stop_at: int | None = None) -> tuple[str, dict | None]:
    """Train (or resume, or find cached) one trial in this process.

    Returns:
        ('finished' or 'stopped', the validation record at the rung when `stop_at` stopped it, else None).
    """
    from gitops.learn import dispatch

    cfg = config.load(name, root, trial.overrides())
    folder = RunFolder(run_path(out_dir, name, cfg.training_fingerprint))
    resume = folder.path.exists() and not folder.is_finished
    rung = _RungReporter(reporter, stop_at, int(cfg.train.checkpoint["every_steps"]))
    try:
        dispatch.train(cfg, out_dir, root=root, resume=resume, reporter=rung)
    except HalvingStop:
        return "stopped", rung.reached
    return "finished", None


def _train_many(name: str, root: Path, out_dir: Path, trials: list[sweep.Trial], parallel: int,
                on_done: Callable[[sweep.Trial, int], None]) -> None:
    """Train trials in `parallel` child processes (`gitops train MODEL --trial N`), logs in .sweeps/."""
    logs = Path(out_dir) / STATE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(trials)
    running: list[tuple[sweep.Trial, subprocess.Popen, Any]] = []
    # plain progress lines in the logs; each trial stops (SIGTERM, checkpoint) if this process dies (lifeline)
    env = {**os.environ, "CI": "1", lifeline.PARENT_ENV: str(os.getpid())}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                log = open(logs / f"{name}-trial{trial.index}.log", "w", encoding="utf-8")  # noqa: SIM115
                cmd = [sys.executable, "-m", "gitops.cli", "train", name, "--trial", str(trial.index),
                       "--out", str(out_dir)]
                folder = RunFolder(run_path(out_dir, name,
                                            config.load(name, root, trial.overrides()).training_fingerprint))
                if folder.path.exists() and not folder.is_finished:
                    cmd.append("--resume")
                running.append((trial, subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env),
                                log))
            time.sleep(0.2)
            for item in list(running):
                trial, proc, log = item
                if proc.poll() is not None:
                    log.close()
                    running.remove(item)
                    on_done(trial, proc.returncode)
    finally:
        for _trial, proc, log in running:
            proc.terminate()
            proc.wait()
            log.close()


def run(name: str, root: Path, out_dir: Path, *, parallel: int = 1, halving: bool = False,
        reporter_factory: Callable[[], Any] | None = None,
        echo: Callable[[str], None] = print) -> list[sweep_results.TrialResult]:
    """Run every trial of the model's sweep that has no finished run yet; returns the ranked results.

    Raises:
        ConfigError: sweep.yaml or a trial's config is invalid (nothing trains).
        UsageError: the model has no sweep.yaml, or --halving with --parallel.
        TrainingError: a trial failed (in-process runs; with --parallel the failure is reported and
            the other trials go on).
    """
    from gitops.errors import UsageError
    from gitops.learn.train import SilentReporter

    reporter_factory = reporter_factory or SilentReporter
    out_dir = Path(out_dir)
    spec, metric, current = results(name, root, out_dir)
    trials = spec.expand()
    state = read_state(out_dir, name)
    todo = [r.trial for r in current if r.status != "finished" and r.fingerprint not in state["stopped"]]
    echo(f"sweep {name}: {len(trials)} trial(s), {len(trials) - len(todo) - len(state['stopped'])} already "
         f"finished, {len(todo)} to run; ranked by {metric}")
    if halving and parallel > 1:
        raise UsageError("--halving runs trials one rung at a time in this process; drop --parallel")
    if halving and todo:
        _halving(name, root, out_dir, spec, metric, todo, reporter_factory, echo)
    elif parallel > 1 and todo:
        failed: list[str] = []

        def done(trial: sweep.Trial, code: int) -> None:
            if code == 0:
                echo(f"trial #{trial.index} finished")
            else:
                failed.append(f"#{trial.index} (exit {code})")
                echo(f"trial #{trial.index} failed with exit code {code}; see {out_dir / STATE_DIR / 'logs'}")

        _train_many(name, root, out_dir, todo, parallel, done)
        if failed:
            echo("failed trials: " + ", ".join(failed))
    else:
        for trial in todo:
            echo(f"trial #{trial.index}: " + " ".join(f"--set {line}" for line in trial.overrides()))
            _train_one(name, root, out_dir, trial, reporter_factory())
    _, _, final = results(name, root, out_dir)
    return sweep_results.ranked(final, metric)


def _halving(name: str, root: Path, out_dir: Path, spec: sweep.Sweep, metric: str, todo: list[sweep.Trial],
             reporter_factory: Callable[[], Any], echo: Callable[[str], None]) -> None:
    cfg = config.load(name, root)
    total = config.total_steps(config.thaw(cfg.as_dict()["train"]), cfg.as_dict()["data"]) or 0
    val_metric = "val/" + metric.split("/", 1)[1]
    higher = gates.higher_is_better(val_metric)
    alive = list(todo)
    rungs = int(math.floor(math.log(len(alive), HALVING_ETA))) if len(alive) > 1 else 0
    state = read_state(out_dir, name)
    for k in range(rungs):
        stop_at = max(1, total // HALVING_ETA ** (rungs - k))
        echo(f"rung {k + 1}/{rungs}: {len(alive)} trial(s) to step {stop_at}")
        scores = []
        for trial in alive:
            _, reached = _train_one(name, root, out_dir, trial, reporter_factory(), stop_at=stop_at)
            value = (reached or {}).get(val_metric.split("/", 1)[1])  # ranked on the rung's own evaluation
            value = value if isinstance(value, int | float) and math.isfinite(value) else None
            scores.append((value if reached else _latest_val(name, root, out_dir, trial, val_metric), trial))
        keep = max(1, math.ceil(len(alive) / HALVING_ETA))
        scores.sort(key=lambda st: (*gates.rank_key(st[0], higher), st[1].index))
        for value, trial in scores[keep:]:
            fp = config.load(name, root, trial.overrides()).training_fingerprint
            shown = "no value" if value is None else f"{val_metric} {value:.4g}"
            state["stopped"][fp] = f"stopped by successive halving at rung {k + 1} (step {stop_at}, {shown})"
            echo(f"trial #{trial.index} stopped ({shown})")
        write_json(state_path(out_dir, name), state)
        alive = [trial for _, trial in scores[:keep]]
    for trial in alive:
        echo(f"trial #{trial.index}: training to the end")
        _train_one(name, root, out_dir, trial, reporter_factory())


def _latest_val(name: str, root: Path, out_dir: Path, trial: sweep.Trial, val_metric: str) -> float | None:
    cfg = config.load(name, root, trial.overrides())
    folder = RunFolder(run_path(out_dir, name, cfg.training_fingerprint))
    key = val_metric.split("/", 1)[1]
    values = [r.get(key) for r in folder.history("val") if isinstance(r.get(key), int | float)]
    finite = [v for v in values if math.isfinite(v)]
    return finite[-1] if finite else None


# --- sweep apply -----------------------------------------------------------------------------------


def apply(name: str, root: Path, out_dir: Path, trial_index: int | None = None, *,
          commit: bool = False) -> tuple[sweep.Trial, list[Path], str | None]:
    """Write a trial's values into the model's YAML files (comments kept); optionally commit them.

    Without `trial_index` the best finished trial under `out_dir` is chosen. Values are written to
    the model's own files (a key inherited through `extends` is set here, overriding the parent).

    Returns:
        (trial, files written, commit SHA or None).

    Raises:
        UsageError: no such trial, or no finished trial to choose from.
        GitopsError: after writing, the model's fingerprint differs from the trial's (the files were
            restored), or the commit failed.
    """
    from gitops.errors import UsageError

    spec, metric, found = results(name, root, out_dir)
    trials = spec.expand()
    if trial_index is None:
        winner = sweep_results.best(found, metric)
        if winner is None:
            raise UsageError(f"no finished trial of models/{name}/sweep.yaml under {out_dir}; run `gitops sweep "
                             f"{name}` first, or name one with --trial N")
        trial = winner.trial
    elif 0 <= trial_index < len(trials):
        trial = trials[trial_index]
    else:
        raise UsageError(f"models/{name}/sweep.yaml has {len(trials)} trials (0-{len(trials) - 1}); "
                         f"no trial {trial_index}")
    want = config.load(name, root, trial.overrides()).training_fingerprint
    by_kind: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
    for path, value in trial.values:
        kind, *keys = path.split(".")
        by_kind.setdefault(kind, []).append((tuple(keys), value))
    originals = {}
    written = []
    for kind, items in by_kind.items():
        path = Path(root) / "models" / name / f"{kind}.yaml"
        originals[path] = path.read_bytes() if path.is_file() else None
        _set_keys(path, kind, items)
        written.append(path)
    got = config.load(name, root).training_fingerprint
    if got != want:
        for path, raw in originals.items():
            if raw is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(raw)
        raise GitopsError(f"after writing trial #{trial.index}, models/{name} resolves to fingerprint {got[:12]}, "
                          f"not the trial's {want[:12]}; the files were restored")
    sha = None
    if commit:
        from gitops.repo import gitutil

        rel = [str(p.relative_to(root)) for p in written]
        subprocess.run(["git", "add", "--", *rel], cwd=root, check=True, capture_output=True)
        message = (f"{name}: apply sweep trial #{trial.index} ({metric})\n\n"
                   + "\n".join(f"--set {line}" for line in trial.overrides())
                   + f"\n\nTraining fingerprint: {want}\n")
        proc = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=root, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise GitopsError(f"git commit failed: {(proc.stderr or proc.stdout).strip()[:300]}")
        sha = gitutil.head_commit(root)
    return trial, written, sha


def _set_keys(path: Path, kind: str, items: list[tuple[tuple[str, ...], Any]]) -> None:
    """Set nested keys in a YAML file with ruamel's round-trip mode (comments and order survive)."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    if path.is_file():
        data = yaml.load(path.read_text(encoding="utf-8"))
        if data is None:
            data = CommentedMap()
    else:
        data = CommentedMap()
        data.yaml_set_start_comment(f"yaml-language-server: $schema=../../schemas/{kind}.schema.json")
    for keys, value in items:
        node = data
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = CommentedMap()
            node = node[key]
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            value = seq
        node[keys[-1]] = value
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    scratch.write_text_atomic(path, buffer.getvalue())
