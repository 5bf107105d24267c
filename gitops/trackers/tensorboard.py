"""TensorBoard sink: event files written with tensorboardX (no TensorFlow), from a finished run folder.

Per run, in `<run folder>/tensorboard/` (or `<logdir>/<model>/<fingerprint>/` when `logdir:` is set):
- a scalar per logged step for every history value (`train/loss`, `val/accuracy`, `train/learning_rate`),
  with the step and the wall-clock time it was logged at;
- the model summary (architecture, parameter shapes) and the run's lineage as text;
- `hparams/`: the flattened resolved config as hyperparameters with the final metrics (`final/...`), for
  TensorBoard's HParams view.

The folder is written whole into a temporary sibling and renamed into place, so a reader (or a killed
backfill) never sees half a log; a run whose manifest says it was logged there is matched, not rewritten.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from gitops.config.settings import TrackerSpec
from gitops.registry.runs import replace_dir
from gitops.trackers.base import Outcome, RunData, TrackerUnavailable, flatten, model_summary, scalar_text

DEFAULT_DIR = "tensorboard"


class TensorBoardSink:
    """The TensorBoard tracker: writes a finished run's scalars, summary and HParams as event files.

    Uses tensorboardX (no TensorFlow). `spec` is the `tensorboard` entry of gitops.yaml; `root` the
    repository, which a `logdir:` must stay inside.
    """

    name = "tensorboard"

    def __init__(self, spec: TrackerSpec, root: Path):
        self.spec, self.root = spec, Path(root)

    def logdir(self, run: RunData) -> Path:
        """Where the run's event files go: `<root>/<logdir>/<model>/<fp12>` when `logdir:` is set, else the run
        folder's `tensorboard/`.

        Raises TrackerUnavailable when `logdir:` leads outside the repository (e.g. through a symlink).
        """
        if self.spec.logdir:
            base = self.root / self.spec.logdir
            if not base.resolve().is_relative_to(self.root.resolve()):  # a symlink out of the repository
                raise TrackerUnavailable(f"trackers: tensorboard logdir {self.spec.logdir!r} leads outside the repository")
            return base / run.model / run.short_fingerprint
        return run.path / DEFAULT_DIR

    def _where(self, target: Path, run: RunData) -> str:
        for base in (run.path, self.root):
            try:
                return target.relative_to(base).as_posix()
            except ValueError:
                continue
        return str(target)

    def log_run(self, run: RunData, context: Mapping[str, str]) -> Outcome:
        """Write the run's event files (idempotent: an existing log of this fingerprint is matched)."""
        target = self.logdir(run)
        where = self._where(target, run)
        previous = (run.manifest.get("trackers") or {}).get(self.name) or {}
        if (previous.get("status") in ("logged", "matched") and previous.get("logdir") == where
                and any(target.glob("events.out.tfevents.*"))):
            return Outcome("matched", details={"logdir": where})
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            self._write(tmp, run, context)
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Outcome("logged", details={"logdir": where})

    def _write(self, folder: Path, run: RunData, context: Mapping[str, str]) -> None:
        from tensorboardX import SummaryWriter

        with SummaryWriter(logdir=str(folder), flush_secs=3600) as writer:
            for name, step, value, when in run.scalars():
                writer.add_scalar(name, value, step, walltime=when)
            writer.add_text("model/summary", model_summary(run), 0)
            keys = ("model", "training_fingerprint", "release_fingerprint", "data_fingerprint", "git_commit", "git_dirty")
            facts = {**{k: run.manifest.get(k) for k in keys}, **context}
            lineage = [f"| {k} | `{v}` |" for k, v in facts.items() if v not in (None, "")]
            writer.add_text("gitops/run", "\n".join(["| key | value |", "| --- | --- |", *lineage]), 0)
            hparams = {k: _hparam(v) for k, v in flatten(run.config).items()}
            final = {f"final/{k}": v for k, v in run.final_metrics().items()}
            writer.add_hparams(hparams, final, name="hparams")


def _hparam(value: object) -> bool | int | float | str:
    if isinstance(value, bool | int | float) and value is not None:
        return value
    return scalar_text(value)
