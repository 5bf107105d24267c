"""`gitops train`: a thin adapter over `gitops.learn.train`. jax, flax, optax and orbax load inside the body only."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from gitops import config
from gitops.cli_app import command, out

TrackOption = Annotated[
    bool | None,
    typer.Option("--track/--no-track", help="Send the run to the trackers of gitops.yaml (default: when it lists any)."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set train.optimizer.learning_rate=3e-4 (repeatable)."),
]


@command("train")
def train_cmd(
    model: Annotated[str, typer.Argument(help="Model name (folder under models/).")],
    overrides: SetOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of run folders.")] = Path("runs"),
    trial: Annotated[
        int | None,
        typer.Option("--trial", min=0, help="Train trial N of the model's sweep.yaml (its --set lines, applied first)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if a finished run with this fingerprint exists.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build, compile and time a few steps; estimate the run; write nothing.")
    ] = False,
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", help="Multi-host: HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)."),
    ] = None,
    num_processes: Annotated[
        int | None, typer.Option("--num-processes", min=1, help="Multi-host: processes in all (default: $JAX_NUM_PROCESSES).")
    ] = None,
    process_id: Annotated[
        int | None, typer.Option("--process-id", min=0, help="Multi-host: this process's index (default: $JAX_PROCESS_ID).")
    ] = None,
    track: TrackOption = None,
) -> None:
    """Train and evaluate a model into runs/<model>/<fingerprint>/ (a finished run is a cache hit).

    With several devices the run is data parallel; with --coordinator (or JAX_COORDINATOR_ADDRESS) every
    process runs this same command and they train as one (process 0 writes the run folder).
    """
    from gitops.learn import parallel

    parallel.initialize(parallel.cluster_from(coordinator, num_processes, process_id))  # before jax lists devices
    root = config.find_root()
    name = config.model_name_from_arg(model, root)
    if trial is not None:
        from gitops.config import sweep

        overrides = [*sweep.trial_overrides(name, root, trial), *(overrides or ())]
    cfg = config.load(name, root, overrides or ())
    if dry_run:
        _dry_run(cfg, root)
        return
    from gitops import trackers
    from gitops.errors import RunInterrupted
    from gitops.learn import dispatch

    sinks = trackers.specs_for(root, track) if parallel.is_primary() else []  # a missing extra fails before training
    reporter = _reporter()
    try:
        result = dispatch.train(cfg, out_dir, root=root, resume=resume, force=force, reporter=reporter)
    except RunInterrupted as exc:  # the command that resumes this very run: same model, overrides and --out
        args = [model, *(a for o in overrides or () for a in ("--set", o))]
        args += ["--out", str(out_dir)] if out_dir != Path("runs") else []
        raise exc.replace(train_args=args) from None
    if result.cache_hit:
        where = " (from $GITOPS_RUN_CACHE)" if result.source == "cache" else ""
        out(f"cache hit: {result.run.path}{where}")
    else:
        out(f"run: {result.run.path}")
    for name, value in sorted(result.metrics.items()):
        out(f"  {name}: {value:.4f}")
    for name, outcome in trackers.track_run(root, result.run.path, sinks).items():  # never fails the command
        if outcome.ok:
            out(f"  {name}: {outcome.status}" + (f" {outcome.url}" if outcome.url else ""))


def _input_advice(dataset: Any) -> str:
    """What speeds up a slow input pipeline of this source (docs/data.md, "Figures")."""
    more = "add data.dataset.workers (reader processes)"
    return {
        "image_folder": f"{more}, or a smaller image_size",
        "parquet": f"{more}, or fewer, larger row groups in the Parquet files",
        "array_record": f"{more}, or records written uncompressed (group_size:1,uncompressed): docs/data.md",
    }.get(str(dataset.get("name")), more)


def _dry_run(cfg: Any, root: Path) -> None:
    from gitops.learn import train

    report = train.dry_run(cfg, root=root)
    mib = 1024 * 1024
    out(f"model: {cfg.name} ({cfg.model.architecture}), device: {report['device_kind']}")
    out(f"parameters: {report['param_count']:,} ({report['param_bytes'] / mib:.3f} MiB); "
        f"optimizer state: {report['opt_state_bytes'] / mib:.3f} MiB")
    flops = report["flops_per_step"]
    out(f"FLOPs per step: {flops:,.0f}" if flops is not None else "FLOPs per step: not reported by XLA")
    for name, value in report["memory"].items():
        out(f"compiled memory {name.removesuffix('_in_bytes')}: {value / mib:.3f} MiB")
    out(f"compile: {report['compile_s']:.2f} s ({report['chunk']} steps per dispatch)")
    out(f"speed here: {report['steps_per_second']:,.0f} steps/s")
    if report.get("input_examples_per_second") is not None:
        workers = report["input_workers"]
        out(f"input pipeline: {report['input_examples_per_second']:,.0f} examples/s "
            f"({workers} worker process{'es' if workers != 1 else ''}); the step takes "
            f"{report['step_examples_per_second']:,.0f} examples/s")
        if report["bottleneck"] == "input pipeline":
            out(f"bottleneck: the input pipeline, not the model ({_input_advice(cfg.data.dataset)})")
        else:
            out("bottleneck: the model (the input pipeline keeps up)")
    out(f"estimated run: {report['total_steps']:,} steps in about {report['estimated_train_s']:.1f} s on this machine")
    parent = report.get("start_from")
    if parent:
        from gitops.registry import lineage

        out("start from: " + lineage.describe_parent(parent))
        out(f"  loaded ({len(parent['loaded'])}): {', '.join(parent['loaded'])}")
        if parent["skipped"]:
            out(f"  kept fresh ({len(parent['skipped'])}): {'; '.join(parent['skipped'])}")
        out(f"  frozen ({len(parent['frozen'])}): {', '.join(parent['frozen']) or 'none'}")
    out(f"dry run took {report['dry_run_s']:.1f} s; nothing written")


def _plain() -> bool:
    return bool(os.environ.get("CI")) or not sys.stdout.isatty()


def _fmt(record: Mapping[str, Any]) -> str:
    skip = {"step", "epoch", "split", "time"}
    return " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in skip and isinstance(v, float))


class Pace:
    """Percent done and ETA from the run's own pace; compile time is kept out of both.

    The ETA spreads evaluation and checkpoint time over the steps (they recur at a fixed interval), so
    it stays honest while `steps/s` reports training alone.
    """

    def __init__(self) -> None:
        self.total, self.first_step, self.t0, self.compile_s = 0, 0, time.perf_counter(), 0.0
        self.eval_s: float | None = None

    def start(self, total_steps: int, start_step: int) -> None:
        """Reset the clock: the run will go from `start_step` to `total_steps` (optimizer steps)."""
        self.total, self.first_step, self.t0 = total_steps, start_step, time.perf_counter()

    def percent(self, step: int) -> str:
        """Share of `total` done at `step`, e.g. "42%"; "?" before `start`."""
        return f"{100 * step / self.total:.0f}%" if self.total else "?"

    def eta(self, step: int) -> str:
        """Time left at `step`, e.g. "3m05s", from wall time per step since `start` less compile seconds; "0s" when
        done, "?" before the first step.
        """
        done = step - self.first_step
        if done <= 0 or step >= self.total:
            return "0s" if step >= self.total else "?"
        per_step = max(time.perf_counter() - self.t0 - self.compile_s, 0.0) / done
        return _duration((self.total - step) * per_step)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class PlainReporter:
    """One line per logged step (CI logs, pipes): percent, ETA, training steps/s; eval and saves apart."""

    def __init__(self) -> None:
        self.pace = Pace()

    def note(self, text: str) -> None:
        """Print `note: TEXT` to stderr."""
        typer.echo(f"note: {text}", err=True)

    def start(self, total_steps: int, start_step: int) -> None:
        """Start the pace clock and print `training N steps (from step S)` to stderr."""
        self.total = total_steps
        self.pace.start(total_steps, start_step)
        typer.echo(f"training {total_steps} steps" + (f" (from step {start_step})" if start_step else ""), err=True)

    def timing(self, step: int, what: str, seconds: float) -> None:
        """Hear `seconds` spent on "compile" (printed, kept out of the ETA), "eval" (shown with the next eval line) or
        "checkpoint" (printed).
        """
        if what == "compile":
            self.pace.compile_s += seconds
            typer.echo(f"step {step}: compiled the training step in {seconds:.2f} s (not counted in steps/s)", err=True)
        elif what == "eval":
            self.pace.eval_s = seconds
        elif what == "checkpoint":
            # the training thread's share (a copy of the state); Orbax writes and commits it in the background
            typer.echo(f"step {step}/{self.total}: checkpoint queued in {seconds:.2f} s (written in the background)",
                       err=True)

    def log(self, step: int, record: Mapping[str, Any], steps_per_second: float) -> None:
        """Print one stderr line per record: step, percent, metrics, then steps/s and ETA for train records or the
        evaluation time for val/test records.
        """
        where = f"step {step}/{self.total} ({self.pace.percent(step)})"
        if record["split"] == "train":
            rate = f"; {steps_per_second:,.0f} steps/s training" if steps_per_second else ""
            typer.echo(f"{where} train: {_fmt(record)}{rate}; ETA {self.pace.eta(step)}", err=True)
        else:
            took = f" (evaluated in {self.pace.eval_s:.2f} s)" if self.pace.eval_s is not None else ""
            typer.echo(f"{where} {record['split']}: {_fmt(record)}{took}", err=True)

    def finish(self) -> None:
        """Nothing to release (plain lines need no cleanup)."""
        pass


class RichReporter:
    """A progress bar with percent, loss, training steps/s and ETA on a terminal; eval and saves apart."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[info]}"), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, transient=False,
        )
        self.task: Any = None
        self.pace = Pace()
        self.last_save = ""

    def note(self, text: str) -> None:
        """Print `note: TEXT` on the console (stderr), above the bar."""
        self.console.print(f"note: {text}")

    def start(self, total_steps: int, start_step: int) -> None:
        """Start the pace clock and show the bar at `start_step` of `total_steps`."""
        self.pace.start(total_steps, start_step)
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="compiling...",
                                           eta="?")

    def timing(self, step: int, what: str, seconds: float) -> None:
        """Hear `seconds` spent on "compile" (printed), "eval" (shown with the next eval line) or "checkpoint" (shown in
        the bar as the last save).
        """
        if what == "compile":
            self.pace.compile_s += seconds
            self.progress.console.print(f"compiled the training step in {seconds:.2f} s")
        elif what == "eval":
            self.pace.eval_s = seconds
        elif what == "checkpoint":
            self.last_save = f"  last save {seconds:.2f} s"

    def log(self, step: int, record: Mapping[str, Any], steps_per_second: float) -> None:
        """Advance the bar with loss, steps/s and ETA for train records; print a line for val/test records."""
        if record["split"] == "train":
            info = f"loss {record.get('loss', float('nan')):.4f}  {steps_per_second:,.0f} steps/s{self.last_save}"
            self.progress.update(self.task, completed=step, info=info, eta=self.pace.eta(step))
        else:
            took = f" (evaluated in {self.pace.eval_s:.2f} s)" if self.pace.eval_s is not None else ""
            self.progress.console.print(f"step {step} {record['split']}: {_fmt(record)}{took}")

    def finish(self) -> None:
        """Stop the bar (leaving it on screen), if it was started."""
        if self.task is not None:
            self.progress.stop()


def _reporter() -> Any:
    return PlainReporter() if _plain() else RichReporter()
