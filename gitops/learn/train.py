"""Training and evaluation of one resolved config (one seed) into a run folder.

`train_and_evaluate(cfg, workdir)` is the loop itself (`gitops.learn.dispatch` decides whether it runs at all:
run-cache hits, `train.repeats` seeds, `--force`):

- the (model, optimizer) graph is split once; `steps.make_train_chunk` runs K steps per dispatch;
- batches, dropout and augmentation draw from keys that are functions of (seed, step), and the data
  order from (data seed, epoch), so a resume needs only the step of the last checkpoint;
- training metrics stay on the device until a logging step, validation runs every `eval_every`
  steps, checkpoints every `checkpoint.every_steps` (plus at every new best and at the end);
- the test split is evaluated once, on the checkpoint handed on (best by `checkpoint.best_metric`,
  else the last), restored from disk.

`dry_run(cfg)` builds the same objects, compiles the same step, runs a few chunks and estimates the run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import math
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gitops import config as config_lib
from gitops import killpoints
from gitops.config import catalog, registries
from gitops.config.yamlio import dump_yaml
from gitops.errors import TrainingError
from gitops.learn import parallel
from gitops.registry import gates
from gitops.registry.runs import (
    PREPROCESSING_FILE,
    RunFolder,
    write_json,
)

MAX_CHUNK = 100  # most steps per dispatch (lax.scan length)
EVAL_BATCH = 512
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
DEFAULT_JAX_CACHE = Path.home() / ".cache" / "gitops" / "jax"


# --- progress reporting ---------------------------------------------------------------------------


class Reporter(Protocol):
    """What the loop tells the outside world; the CLI implements a rich bar and plain CI lines."""

    def note(self, text: str) -> None:
        """Hear a one-line remark for the user (e.g. a resume or a cache hit); not a metric."""

    def start(self, total_steps: int, start_step: int) -> None:
        """Training is about to run steps [start_step, total_steps) (in optimizer steps; start_step > 0 on resume)."""

    def log(self, step: int, record: Mapping[str, Any], steps_per_second: float) -> None:
        """Hear a metrics `record` (with "split" and "step") at `step`; `steps_per_second` counts training only
        (compile, evaluation and checkpoint time excluded).
        """

    def finish(self) -> None:
        """The run finished (not called when it raises): release the terminal, e.g. stop a progress bar."""
    # Optional: `timing(step, what, seconds)` hears how long each evaluation ("eval") and checkpoint
    # save ("checkpoint") took; those seconds are never counted in the steps/s `log` receives.


def _timing(reporter: Any, step: int, what: str, seconds: float) -> None:
    hook = getattr(reporter, "timing", None)
    if hook is not None:
        hook(step, what, seconds)


class SilentReporter:
    """A Reporter that says nothing: library callers and tests that want no output."""

    def note(self, text: str) -> None:
        """Ignore the note."""
        pass

    def start(self, total_steps: int, start_step: int) -> None:
        """Ignore the start."""
        pass

    def log(self, step: int, record: Mapping[str, Any], steps_per_second: float) -> None:
        """Ignore the record."""
        pass

    def finish(self) -> None:
        """Nothing to release."""
        pass


# --- environment -------------------------------------------------------------------------------


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across processes (tests and CI re-use each other's steps)."""
    import jax

    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(DEFAULT_JAX_CACHE)
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def package_versions() -> dict[str, str | None]:
    """Installed versions of jax, jaxlib, flax, optax, orbax-checkpoint and numpy (None where not installed) plus
    "python": recorded in the run manifest so a result can be reproduced.
    """
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_state(root: Path, model_paths: list[str] | None = None) -> tuple[str | None, bool | None, list[str]]:
    """(HEAD commit, dirty, uncommitted paths) of the repository at `root` (see `gitutil.lineage`)."""
    from gitops.repo import gitutil

    try:
        return gitutil.lineage(root, model_paths or [])
    except OSError:  # no git executable
        return None, None, []


def model_folders(cfg: Any) -> list[str]:
    """`models/<name>` and every folder its files' `extends` chains read, relative to the repository root."""
    import re

    folders = {f"models/{cfg.name}"}
    for chain in dict(getattr(cfg, "files", None) or {}).values():
        for label in chain:
            found = re.search(r"(?:^|/|:)models/([a-z][a-z0-9-]*)/[a-z]+\.yaml$", str(label))
            if found:
                folders.add(f"models/{found.group(1)}")
    return sorted(folders)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the objects a run is made of -----------------------------------------------------------------


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


# Architectures whose steps run fast inside `lax.scan`. Measured on XLA:CPU (jax 0.10.2): an MLP step
# gains 1.5-3x from scanning 50 steps per dispatch, while a small CNN's step gets ~8x *slower* inside a
# while-loop body (convolutions lose their fast path), so those dispatch one step at a time.
SCAN_FRIENDLY = frozenset({"mlp"})


def _chunk_length(train: Any, architecture: str = "mlp") -> int:
    """Steps per dispatch: the largest divisor of the event period (gcd of log/eval/checkpoint intervals)
    up to MAX_CHUNK, so every chunk between events has the same length (one compilation) and chunk
    boundaries are a function of the step (a resumed run replays the same chunks, bit for bit)."""
    if architecture not in SCAN_FRIENDLY:
        return 1
    period = math.gcd(train.log_every, train.eval_every, train.checkpoint["every_steps"])
    return max(d for d in range(1, min(period, MAX_CHUNK) + 1) if period % d == 0)


@dataclass
class Session:
    """Model, optimizer, split state, jitted functions and device data of one training run."""

    cfg: Any
    dataset: Any
    total_steps: int
    graphdef: Any
    state: Any
    eval_graphdef: Any
    spec: Any
    chunk_fn: Any
    eval_fn: Any
    device: dict[str, Any]
    schedule: Any
    chunk: int
    param_count: int
    metric_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Any = None  # gitops.learn.parallel.Layout when training over several devices
    feed: Any = None  # gitops.learn.streaming.Feed for a streaming dataset (batches from Grain, not the device)
    batch_fn: Any = None  # steps.make_batch_step, with `feed`
    eval_batch: int = EVAL_BATCH
    perms_fn: Any = None  # steps.make_permutations: one epoch's shuffle, computed once per epoch
    _perms: Any = field(default=None, repr=False)
    _perms_key: tuple | None = field(default=None, repr=False)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training split (from the data spec)."""
        return self.spec.steps_per_epoch

    # checkpoint trees: {"model": ..., "optimizer": ...} of plain nested dicts
    def state_tree(self) -> dict:
        """The checkpoint tree {"model": ..., "optimizer": ...} of plain nested dicts of arrays (Flax NNX
        `nnx.to_pure_dict`): what Orbax saves.
        """
        from flax import nnx

        return {"model": nnx.to_pure_dict(self.state[0]), "optimizer": nnx.to_pure_dict(self.state[1])}

    def load_state_tree(self, tree: Mapping) -> None:
        """Write a checkpoint tree {"model": ..., "optimizer": ...} back into the live state in place (Flax NNX
        `nnx.replace_by_pure_dict`); raises on structure mismatch.
        """
        from flax import nnx

        nnx.replace_by_pure_dict(self.state[0], tree["model"])
        nnx.replace_by_pure_dict(self.state[1], tree["optimizer"])

    def run_chunk(self, step: int, length: int, acc: Any, bad: Any, reset: bool = False) -> tuple[Any, Any]:
        """Run steps [step, step+length) in one dispatch; `reset` zeroes the metric sums first."""
        import numpy as np

        d = self.device
        if self.feed is not None:  # streaming: one dispatch per batch, placed on the device by the feed's read-ahead
            for i in range(length):
                x, y, *weights = self.feed.next()  # weights: remainder: pad only
                self.state, acc, bad = self.batch_fn(
                    self.state, acc, bad, np.int32(step + i), x, y, d["base_key"], np.bool_(reset and i == 0), *weights)
            return acc, bad
        self.state, acc, bad = self.chunk_fn(
            self.state, acc, bad, np.int32(step), d["x_train"], d["y_train"], self.permutations(step, length),
            d["base_key"], np.bool_(reset), length=length,
        )
        return acc, bad

    def permutations(self, step: int, length: int) -> Any:
        """The epoch shuffles a chunk of `length` steps from `step` reads, (epochs, n_train) int32 on device.

        Computed once per (first epoch, count) and kept: every chunk of an epoch reuses them (the values
        are those the chunk would compute itself, so runs stay bit-identical).
        """
        import numpy as np

        key = (step // self.spec.steps_per_epoch, self.spec.epochs_spanned(length))
        if self._perms_key != key:
            self._perms = None  # the old epoch's array goes before the new one is made
            self._perms = self.perms_fn(self.device["data_key"], np.int32(key[0]), count=key[1])
            self._perms_key = key
        return self._perms

    def evaluate(self, split: str, model_state: Any = None) -> dict[str, float]:
        """Metrics of the current (or given) model state on a split; {} for an empty split."""
        from gitops.learn import metrics as metrics_lib

        if self.feed is not None:
            return self._evaluate_streamed(split, model_state)
        padded = self.device.get(split)
        if padded is None:
            return {}
        sums = self.eval_fn(self.state[0] if model_state is None else model_state, *padded)
        return metrics_lib.finalize(parallel.fetch(sums))

    def place_batch(self, *arrays: Any) -> tuple[Any, ...]:
        """A host batch ((x, y) or (x, y, weights)) where the step wants it: on the one device (`jax.device_put`),
        or split over the mesh's data axis (`jax.make_array_from_process_local_data`). The streaming feed calls
        it from its read-ahead thread, so the copy overlaps the step running on the device.
        """
        import jax

        if self.layout is None:
            return tuple(jax.device_put(a) for a in arrays)
        return tuple(jax.make_array_from_process_local_data(self.layout.batch, a) for a in arrays)

    def _evaluate_streamed(self, split: str, model_state: Any) -> dict[str, float]:
        from gitops.learn import metrics as metrics_lib

        total = None
        model_state = self.state[0] if model_state is None else model_state
        for x, y, w in self.dataset.eval_batches(split, self.eval_batch):
            batch = (x[None], y[None], w[None])
            if self.layout is not None:
                batch = self.layout.put(batch, (self.layout.eval_batches,) * 3)
            sums = self.eval_fn(model_state, *batch)
            total = sums if total is None else metrics_lib.accumulate(total, sums)
        return {} if total is None else metrics_lib.finalize(parallel.fetch(total))

    def zero_metrics(self) -> Any:
        """An empty metric accumulator {name: (sum, count)} for this run's metrics, replicated over the mesh when
        training on several devices.
        """
        from gitops.learn import metrics as metrics_lib

        zeros = metrics_lib.zeros(self.metric_names)
        return self.layout.replicate(zeros) if self.layout else zeros

    def no_divergence(self) -> Any:
        """The divergence carry before any bad step: {step: int32 -1, loss: float32 0, grad_norm: float32 0}; the step
        function records the first non-finite loss or gradient norm in it.
        """
        import jax.numpy as jnp

        none = {"step": jnp.int32(-1), "loss": jnp.float32(0), "grad_norm": jnp.float32(0)}
        return self.layout.replicate(none) if self.layout else none


def _padded_split(split: Any, batch: int, layout: Any = None) -> tuple | None:
    import jax
    import numpy as np

    n = len(split)
    if n == 0:
        return None
    batch = min(n, batch) if layout is None else parallel.round_up(min(n, batch), layout.device_count)
    batches = math.ceil(n / batch)
    pad = batches * batch - n
    x = np.concatenate([split.x, np.zeros((pad, *split.x.shape[1:]), split.x.dtype)])
    y = np.concatenate([split.y, np.zeros((pad, *split.y.shape[1:]), split.y.dtype)])
    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    padded = (x.reshape(batches, batch, *x.shape[1:]), y.reshape(batches, batch, *y.shape[1:]), w.reshape(batches, batch))
    return jax.device_put(padded) if layout is None else layout.put(padded, (layout.eval_batches,) * 3)


def _token_bytes(prep: Any) -> Any:
    """(vocab,) float32 UTF-8 length of each token of a language model's tokenizer; None otherwise."""
    if getattr(prep, "tokenizer", None) is None:
        return None
    import jax.numpy as jnp

    from gitops.learn.tokenize import from_saved

    return jnp.asarray(from_saved(prep.tokenizer).token_bytes(), jnp.float32)


def _config_file(cfg: Any, kind: str) -> str:
    """The file of `kind` ("model", "data", ...) that `cfg` was read from last (its own, after `extends`)."""
    files = cfg.files.get(kind) or (f"models/{cfg.name}/{kind}.yaml",)
    return files[-1]


def _augmentation(cfg: Any) -> Any:
    """The config's augmentations composed (`data.build_augmentation`); a plugin's failure names data.yaml."""
    from gitops.learn import data as data_lib

    with registries.used_in(f"{_config_file(cfg, 'data')}: augmentation"):
        return data_lib.build_augmentation(config_lib.thaw(cfg.data.augmentation))


def build_session(cfg: Any, dataset: Any, init: Any = None) -> Session:
    """Build model, optimizer, jitted step and device data for `cfg` on already loaded `dataset`.

    `init`: the `start_from.Init` prepared before the run folder existed (None: prepared here when
    train.start_from is set); its parameters load before the first step, its frozen paths get no updates.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from gitops.learn import metrics as metrics_lib
    from gitops.learn import optim, start_from, steps
    from gitops.learn.architectures import build_model

    train = cfg.train  # repeats > 1: gitops.learn.repeats builds one session per seed; this builds the first
    prep = dataset.preprocessing
    streamed = bool(getattr(dataset, "streaming", False))
    n_train = len(dataset.train)
    if train.batch_size > n_train:
        raise TrainingError(f"batch size {train.batch_size} is larger than the training split ({n_train} examples)")
    accumulate = int(train.gradient_accumulation)
    if train.batch_size % accumulate:
        raise TrainingError(
            f"batch size {train.batch_size} is not divisible by gradient_accumulation {accumulate} (micro-batches must be equal)"
        )
    layout = parallel.layout(parallel.strategy_of(train))  # None on one device
    if layout:
        layout.check_batch(int(train.batch_size), accumulate)
    # streaming sources may pad an epoch's last batch (data.dataset.remainder: pad): one more step per epoch
    per_epoch = getattr(dataset, "steps_per_epoch", None)
    steps_per_epoch = per_epoch(int(train.batch_size)) if callable(per_epoch) else n_train // train.batch_size
    total = int(train.steps) if train.steps else int(train.epochs) * steps_per_epoch

    root_key = jax.random.key(train.seed)
    dtype = jnp.bfloat16 if train.precision == "bfloat16" else None
    with registries.used_in(f"{_config_file(cfg, 'model')}: architecture {cfg.model.architecture!r}"):
        model = build_model(
            cfg.model.architecture,
            config_lib.thaw(cfg.model.params),
            input_shape=prep.input_shape,
            num_outputs=prep.num_outputs,
            rngs=nnx.Rngs(params=jax.random.fold_in(root_key, 0)),
            dtype=dtype,
        )
    if init is None and cfg.train.start_from:
        init = start_from.prepare(cfg, config_lib.find_root(), prep)
    if init is not None:
        start_from.apply(model, init)
    tx = start_from.freeze(optim.build_optimizer(train, total), init.frozen if init is not None else [])
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    model.eval()
    eval_graphdef, _ = nnx.split(model)
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    param_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))

    task = dataset.task
    names = metrics_lib.metric_names(task, prep.num_classes)
    loss_name = train.loss or metrics_lib.DEFAULT_LOSS[task]
    spec = steps.StepSpec(
        loss=catalog.LOSSES.get(loss_name),
        label_smoothing=float(train.label_smoothing),
        metric_names=tuple(names),
        augment=_augmentation(cfg),
        accumulate=accumulate,
        batch_size=int(train.batch_size),
        n_train=n_train,
        steps_per_epoch=steps_per_epoch,
        batch_sharding=layout.batch if layout else None,
        token_bytes=_token_bytes(prep),
    )
    eval_batch = max(EVAL_BATCH, int(train.batch_size))
    if streamed:
        return _streaming_session(cfg, dataset, total, graphdef, state, eval_graphdef, spec, root_key, eval_batch,
                                  param_count, names, layout, optim.learning_rate_schedule(train, total))
    device = {
        "x_train": jax.device_put(dataset.train.x),
        "y_train": jax.device_put(dataset.train.y),
        "data_key": jax.random.fold_in(root_key, 1),
        "base_key": jax.random.fold_in(root_key, 2),
        "val": _padded_split(dataset.val, eval_batch, layout),
        "test": _padded_split(dataset.test, eval_batch, layout),
    }
    chunk_out = None
    if layout:  # data/keys replicated, state replicated (or fsdp-split) over the mesh
        state = layout.place_state(state)
        device.update(layout.replicate({k: device[k] for k in ("x_train", "y_train", "data_key", "base_key")}))
        replicated = layout.replicated
        chunk_out = (layout.shardings_like(state), replicated, replicated)
    session = Session(
        cfg=cfg,
        dataset=dataset,
        total_steps=total,
        graphdef=graphdef,
        state=state,
        eval_graphdef=eval_graphdef,
        spec=spec,
        chunk_fn=steps.make_train_chunk(graphdef, spec, chunk_out),
        perms_fn=steps.make_permutations(spec, layout.replicated if layout else None),
        eval_fn=steps.make_eval(eval_graphdef, spec),
        device=device,
        schedule=jax.jit(optim.learning_rate_schedule(train, total)),  # one dispatch per logged learning rate
        chunk=_chunk_length(train, cfg.model.architecture),
        param_count=param_count,
        metric_names=names,
        layout=layout,
    )
    if init is not None:
        session.extra["start_from"] = init.record
    return session


def _streaming_session(cfg: Any, dataset: Any, total: int, graphdef: Any, state: Any, eval_graphdef: Any, spec: Any,
                       root_key: Any, eval_batch: int, param_count: int, names: list[str], layout: Any,
                       schedule: Any) -> Session:
    """The Session of a streaming dataset: batches from a Grain `Feed`, one dispatch per step."""
    import jax

    from gitops.learn import steps, streaming

    device = {"data_key": jax.random.fold_in(root_key, 1), "base_key": jax.random.fold_in(root_key, 2)}
    batch_out = None
    if layout:
        state = layout.place_state(state)
        device.update(layout.replicate(device))
        batch_out = (layout.shardings_like(state), layout.replicated, layout.replicated)
        eval_batch = parallel.round_up(eval_batch, layout.device_count)
    feed = streaming.Feed(dataset, int(cfg.train.batch_size), int(cfg.train.seed), jax.process_index(),
                          jax.process_count())
    session = Session(
        cfg=cfg, dataset=dataset, total_steps=total, graphdef=graphdef, state=state, eval_graphdef=eval_graphdef,
        spec=spec, chunk_fn=None, eval_fn=steps.make_eval(eval_graphdef, spec), device=device,
        schedule=jax.jit(schedule), chunk=1, param_count=param_count, metric_names=names, layout=layout,
        feed=feed, batch_fn=steps.make_batch_step(graphdef, spec, batch_out), eval_batch=eval_batch,
    )
    feed.place = session.place_batch  # batches reach the device from the feed's read-ahead thread
    return session


# --- early stopping and "best" bookkeeping (kept in checkpoint meta so a resume continues them) ---


@dataclass
class Watch:
    """Tracks one metric's best value; `improved` follows the metric's direction and a minimum change."""

    metric: str
    higher_is_better: bool
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    stale: int = 0

    def offer(self, value: float, step: int) -> bool:
        """Consider `value` of the metric at `step`: True (and `best`, `best_step` set, `stale` reset) when it beats
        the best by more than `min_delta` in the metric's direction (the first finite value always does; ties and
        NaN/inf never do), else False and `stale` counts one more.
        """
        signed = gates.score(value, self.higher_is_better)  # `best` is kept on this axis (checkpoint meta)
        better = gates.improves(signed, self.best, min_delta=self.min_delta)  # a tie is no progress
        if better:
            self.best, self.best_step, self.stale = signed, step, 0
        else:
            self.stale += 1
        return better

    def as_dict(self) -> dict:
        """{best, best_step, stale} as JSON for checkpoint meta, so a resumed run continues the count; `best` is on the
        signed axis of `gates.score`.
        """
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load(self, raw: Mapping | None) -> None:
        """Restore `best`, `best_step` and `stale` from `as_dict` output; None or {} leaves the fresh state."""
        if raw:
            self.best, self.best_step, self.stale = raw.get("best"), raw.get("best_step"), int(raw.get("stale", 0))


# --- the loop -----------------------------------------------------------------------------------


def _manifest(cfg: Any, root: Path, session: Session, started_at: str) -> dict:
    import jax

    commit, dirty, uncommitted = git_state(root, model_folders(cfg))
    devices = jax.devices()
    return {
        "model": cfg.name,
        "task": cfg.task,
        "training_fingerprint": cfg.training_fingerprint,
        "release_fingerprint": cfg.release_fingerprint,
        "data_fingerprint": cfg.data_fingerprint,
        "git_commit": commit,
        "git_dirty": dirty,
        "git_uncommitted": uncommitted,
        "packages": package_versions(),
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "parallelism": session.layout.describe() if session.layout else None,
        "xla_flags": os.environ.get("XLA_FLAGS") or None,
        "seed": cfg.train.seed,
        "started_at": started_at,
        "finished_at": None,
        "steps": session.total_steps,
        "steps_done": 0,
        "param_count": session.param_count,
        "checkpoint_step": None,
        "wall_time_s": None,
        "steps_per_second": None,
        "start_from": session.extra.get("start_from"),  # the parent: identity, loaded, skipped, frozen
        **({"data": {"skipped": len(session.dataset.skipped), "skipped_files": session.dataset.skipped[:20],
                     "workers": session.feed.workers}} if session.feed is not None else {}),
    }


def _divergence(bad: Any) -> None:
    """Raise TrainingError if the on-device divergence record names a step."""
    import jax

    host = jax.device_get(bad)
    if int(host["step"]) >= 0:
        loss = float(host["loss"])
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {float(host['grad_norm'])} (loss {loss:.4g})"
        raise TrainingError(f"training diverged at step {int(host['step'])}: {what}")


def train_and_evaluate(
    cfg: Any,
    workdir: Path,
    *,
    root: Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    dataset: Any = None,
) -> dict[str, float]:
    """Train `cfg` into the run folder `workdir` and evaluate it; returns the final metrics.

    Args:
        cfg: a ResolvedConfig.
        workdir: the run folder (created; its files are those of DESIGN.md's "Run folder").
        root: the repository root (data files, git commit); default: found from the working directory.
        resume: continue from the latest checkpoint in `workdir/checkpoints` if there is one.
        reporter: progress sink (the CLI's bar or plain lines); silent by default.
        dataset: an already loaded `gitops.learn.data.Dataset` (tests share one), else loaded here.

    Raises:
        TrainingError: the loss or gradients became NaN/inf ("training diverged at step N: ...").
        Interrupted: Ctrl-C; a checkpoint of the current step was written first, so --resume continues.
    """
    if cfg.train.repeats > 1:  # N seeds in one run folder: gitops.learn.dispatch sends them to gitops.learn.repeats
        raise TrainingError(f"{cfg.name}: train.repeats is {cfg.train.repeats}; gitops.learn.train trains one seed "
                            "(gitops.learn.dispatch.run_training trains every seed)")

    from gitops.learn import data as data_lib
    from gitops.learn import metrics as metrics_lib
    from gitops.learn.checkpoint import Checkpoints

    enable_compilation_cache()
    reporter = reporter or SilentReporter()
    root = Path(root) if root else config_lib.find_root()
    run = RunFolder(workdir, writer=parallel.is_primary())  # multi-host: process 0 writes the files
    dataset = dataset or data_lib.load(cfg.data, root)  # first: a data pin mismatch leaves no run folder behind
    from gitops.learn import start_from

    init = start_from.prepare(cfg, root, dataset.preprocessing)  # a parent that doesn't fit: no run folder either
    session = build_session(cfg, dataset, init)  # a model or optimizer that cannot be built: no run folder
    run.path.mkdir(parents=True, exist_ok=True)
    skipped = list(getattr(dataset, "skipped", None) or [])
    if skipped:  # data.dataset.skip_bad: said here too, not only in manifest.json
        reporter.note(f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} that did not decode "
                      f"(data.dataset.skip_bad; manifest.json lists them): {', '.join(skipped[:3])}"
                      + (", ..." if len(skipped) > 3 else ""))
    train = cfg.train
    total = session.total_steps

    best_metric = train.checkpoint["best_metric"]
    ckpt = Checkpoints(
        run.checkpoints_dir,
        keep=int(train.checkpoint["keep"]),
        best_metric=best_metric,
        higher_is_better=gates.higher_is_better(best_metric) if best_metric else True,
    )
    es = train.early_stopping
    if es and not es["metric"].startswith("val/"):
        raise TrainingError(f"early_stopping.metric {es['metric']!r}: only val/ metrics can stop a run")
    stopper = Watch(es["metric"], gates.higher_is_better(es["metric"]), float(es["min_delta"])) if es else None
    best = Watch(best_metric, gates.higher_is_better(best_metric)) if best_metric else None

    step, elapsed_before, stopped = 0, 0.0, False
    started_at = _now()
    found = ckpt.restore_latest(session.state_tree(), reporter.note) if resume else None
    latest = found[0] if found else None
    if found is not None:
        latest, restored, meta = found
        session.load_state_tree(restored)
        if session.feed is not None:  # the input pipeline continues where the checkpoint's batches ended
            if meta.get("data_iterator") is None:
                raise TrainingError(f"the checkpoint at step {latest} holds no input-pipeline state; train again without --resume")
            session.feed.restore(meta["data_iterator"])
        step, elapsed_before, stopped = latest, float(meta.get("elapsed_s", 0.0)), bool(meta.get("stopped"))
        if stopper:
            stopper.load(meta.get("early_stopping"))
        if best:
            best.load(meta.get("best"))
        if run.manifest_path.is_file():
            started_at = run.manifest.get("started_at") or started_at
        run.truncate_history(step)
        reporter.note(f"resuming from step {step} of {total}")
    else:
        if ckpt.steps():
            raise TrainingError(f"{run.checkpoints_dir} already holds checkpoints; resume or remove the run folder")
        run.clear_history()

    if run.writer:
        (run.path / "config.resolved.yaml").write_text(dump_yaml(cfg.as_dict()), encoding="utf-8")
        write_json(run.path / PREPROCESSING_FILE, dataset.preprocessing.as_dict())
    manifest = _manifest(cfg, root, session, started_at)
    run.write_manifest(manifest)

    log_every, eval_every, ckpt_every = train.log_every, train.eval_every, train.checkpoint["every_steps"]
    acc, bad, reset = session.zero_metrics(), session.no_divergence(), False
    t0 = time.perf_counter()
    start_step = step
    window_train_s, window_step = 0.0, step  # steps/s counts training time only (not eval or saves)
    spent = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0}
    compiled: set[int] = set()  # chunk lengths whose step is compiled
    reporter.start(total, step)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def save(at: int, val_metrics: Mapping[str, float], stop: bool) -> None:
        meta = {
            "step": at,
            "epoch": at / session.steps_per_epoch,
            "metrics": {f"val/{k}": v for k, v in val_metrics.items()},
            "elapsed_s": elapsed(),
            "stopped": stop,
            "early_stopping": stopper.as_dict() if stopper else None,
            "best": best.as_dict() if best else None,
        }
        if session.feed is not None:
            meta["data_iterator"] = session.feed.state()  # Grain's iterator state: a resume replays no batch
        ckpt.save(at, session.state_tree(), meta, meta["metrics"])
        killpoints.reached("train.checkpoint_queued")

    from gitops.errors import RunInterrupted
    from gitops.learn.interrupt import StopFlag, StopRequested

    ctrl_c = StopFlag().install()  # Ctrl-C is read at chunk boundaries, where state and step agree
    try:
        while step < total and not stopped:
            target = min(_next_multiple(step, log_every), _next_multiple(step, eval_every),
                         _next_multiple(step, ckpt_every), total)
            t_train = time.perf_counter()
            while step < target and not ctrl_c.requested:
                length = min(session.chunk, target - step)
                t_call = time.perf_counter()
                acc, bad = session.run_chunk(step, length, acc, bad, reset)
                if length not in compiled:  # a new chunk length compiles (synchronously): apart from steps/s
                    compiled.add(length)
                    t_train += (compile_s := time.perf_counter() - t_call)
                    _timing(reporter, step, "compile", compile_s)
                reset = False
                step += length
            if ctrl_c.requested and step < target:  # at an event step, the event runs first
                raise StopRequested
            host_acc, host_bad = parallel.fetch((acc, bad))  # the one sync per event
            window_train_s += time.perf_counter() - t_train
            spent["train"] += time.perf_counter() - t_train
            _divergence(host_bad)
            records = []
            epoch = round(step / session.steps_per_epoch, 4)
            if step % log_every == 0 or step == total:
                train_metrics = metrics_lib.finalize(host_acc)
                reset = True
                rate = (step - window_step) / max(window_train_s, 1e-9)
                window_train_s, window_step = 0.0, step
                record = {"step": step, "epoch": epoch, "split": "train", **train_metrics,
                          "learning_rate": float(session.schedule(step)), "time": round(elapsed(), 4)}
                records.append(record)
                reporter.log(step, record, rate)
            val_metrics: dict[str, float] = {}
            is_best = False
            if step % eval_every == 0 or step == total:
                t_eval = time.perf_counter()
                val_metrics = session.evaluate("val")
                spent["eval"] += (eval_s := time.perf_counter() - t_eval)
                _timing(reporter, step, "eval", eval_s)
                if val_metrics:
                    records.append({"step": step, "epoch": epoch, "split": "val", **val_metrics, "time": round(elapsed(), 4)})
                    reporter.log(step, records[-1], 0.0)
                    if best and best.metric.split("/", 1)[1] in val_metrics:
                        value = val_metrics[best.metric.split("/", 1)[1]]
                        # ties count as a new best (the later checkpoint), as in checkpoint.Checkpoints
                        signed = gates.score(value, best.higher_is_better)
                        is_best = gates.improves(signed, best.best, ties=True)
                        if is_best:
                            best.best, best.best_step = signed, step
                    if stopper and stopper.metric.split("/", 1)[1] in val_metrics:
                        stopper.offer(val_metrics[stopper.metric.split("/", 1)[1]], step)
                        if stopper.stale >= int(es["patience"]):
                            stopped = True
                            reporter.note(f"early stopping at step {step}: {stopper.metric} has not improved "
                                          f"for {stopper.stale} evaluations")
            if records:
                run.append_history(records)
            if step % ckpt_every == 0 or step == total or stopped or is_best:
                t_save = time.perf_counter()
                save(step, val_metrics, stopped)
                spent["checkpoint"] += (save_s := time.perf_counter() - t_save)
                _timing(reporter, step, "checkpoint", save_s)
    except StopRequested:  # the first Ctrl-C (a second one raises KeyboardInterrupt: no checkpoint)
        _divergence(parallel.fetch(bad))  # a diverged state is not worth resuming from
        try:
            if ckpt.latest_step() != step:  # the event at this step may have saved it already
                save(step, {}, False)
            ckpt.close()  # waits for the save to commit
        except Exception as exc:  # noqa: BLE001 - reported to the user, who resumes from an older step
            with contextlib.suppress(Exception):
                ckpt.close()
            raise RunInterrupted(cfg.name, step, saved=False, reason=str(exc)[:200], signum=ctrl_c.signum) from None
        raise RunInterrupted(cfg.name, step, signum=ctrl_c.signum) from None
    except BaseException:
        with contextlib.suppress(Exception):
            ckpt.close()
        raise
    finally:
        ctrl_c.restore()
        if session.feed is not None:
            session.feed.close()
    loop_time = time.perf_counter() - t0

    handed = ckpt.best_step()
    if handed is None:
        raise TrainingError("no checkpoint was written")
    if handed != step:
        session.load_state_tree(ckpt.restore_state(handed, session.state_tree()))
    ckpt.close()
    final = {f"test/{k}": v for k, v in session.evaluate("test").items()}
    final.update({f"val/{k}": v for k, v in session.evaluate("val").items()})
    killpoints.reached("train.evaluated")
    run.write_metrics(final)
    killpoints.reached("train.metrics_written")
    manifest.update(
        steps_done=step,
        checkpoint_step=handed,
        finished_at=_now(),
        wall_time_s=round(elapsed(), 3),
        steps_per_second=round((step - start_step) / loop_time, 2) if step > start_step and loop_time > 0 else None,
        train_steps_per_second=(round((step - start_step) / spent["train"], 2)
                                if step > start_step and spent["train"] > 0 else None),
        eval_time_s=round(spent["eval"], 3),
        checkpoint_time_s=round(spent["checkpoint"], 3),
        stopped_early=stopped and step < total,
    )
    run.write_manifest(manifest)
    reporter.finish()
    return final


# --- dry run --------------------------------------------------------------------------------------


def dry_run(cfg: Any, *, root: Path | None = None, probe_chunks: int = 3) -> dict[str, Any]:
    """Build everything, compile the step, time a few chunks, estimate the run; writes nothing under runs/.

    Returns a dict: param_count, param_bytes, opt_state_bytes, total_steps, chunk, flops_per_step,
    memory (XLA's memory analysis, bytes), compile_s, steps_per_second, estimated_train_s.
    """
    import jax
    import numpy as np

    from gitops.learn import data as data_lib

    enable_compilation_cache()
    t_start = time.perf_counter()
    root = Path(root) if root else config_lib.find_root()
    dataset = data_lib.load(cfg.data, root)
    from gitops.learn import start_from

    init = start_from.prepare(cfg, root, dataset.preprocessing)
    session = build_session(cfg, dataset, init)

    def nbytes(tree: Any) -> int:
        return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))

    from flax import nnx

    param_bytes = nbytes(session.state_tree()["model"])
    opt_bytes = nbytes(nnx.to_pure_dict(session.state[1]))
    length = min(session.chunk, session.total_steps)
    acc, bad = session.zero_metrics(), session.no_divergence()
    d = session.device
    input_rate = None
    if session.feed is not None:  # time the input pipeline alone, then the step on one fixed batch
        try:
            input_rate, batch = _probe_input(session, probe_chunks + 2)
        finally:
            session.feed.close()
        fixed = batch  # already placed by the feed
        lower = lambda n: session.batch_fn.lower(  # noqa: E731
            session.state, acc, bad, np.int32(0), *fixed[:2], d["base_key"], np.bool_(False), *fixed[2:])
    else:
        lower = lambda n: session.chunk_fn.lower(  # noqa: E731
            session.state, acc, bad, np.int32(0), d["x_train"], d["y_train"], session.permutations(0, n), d["base_key"],
            np.bool_(False), length=n)
    t0 = time.perf_counter()
    compiled = lower(length).compile()
    compile_s = time.perf_counter() - t0
    flops = None
    with contextlib.suppress(Exception):
        # XLA counts a loop body once, so FLOPs come from the one-step program (no scan)
        single = compiled if length == 1 else lower(1).compile()
        cost = single.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        if cost and cost.get("flops") is not None:
            flops = float(cost["flops"])
    memory: dict[str, int] = {}
    with contextlib.suppress(Exception):
        mem = compiled.memory_analysis()
        for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes"):
            if hasattr(mem, name):
                memory[name] = int(getattr(mem, name))
    # warm-up chunk (fills caches), then timed chunks; the state is a throwaway copy of the fresh one
    step = 0
    if session.feed is not None:
        run = lambda at, acc, bad: session.batch_fn(  # noqa: E731
            session.state, acc, bad, np.int32(at), *fixed[:2], d["base_key"], np.bool_(False), *fixed[2:])
    else:
        def run(at: int, acc: Any, bad: Any) -> tuple[Any, Any, Any]:
            acc, bad = session.run_chunk(at, length, acc, bad)
            return session.state, acc, bad
    session.state, acc, bad = run(step, acc, bad)
    jax.block_until_ready(session.state)
    step += length
    t1 = time.perf_counter()
    for _ in range(probe_chunks):
        session.state, acc, bad = run(step % max(1, session.total_steps), acc, bad)
        step += length
    jax.block_until_ready(session.state)
    rate = probe_chunks * length / max(time.perf_counter() - t1, 1e-9)
    compute_rate = rate * int(cfg.train.batch_size)  # examples/s the step could take
    if input_rate is not None:
        rate = min(rate, input_rate / int(cfg.train.batch_size))  # the run goes at the slower of the two
    t2 = time.perf_counter()
    session.evaluate("val")
    eval_s = time.perf_counter() - t2
    evals = session.total_steps // cfg.train.eval_every + 2
    return {
        "param_count": session.param_count,
        "param_bytes": param_bytes,
        "opt_state_bytes": opt_bytes,
        "total_steps": session.total_steps,
        "chunk": length,
        "flops_per_step": flops,
        "memory": memory,
        "compile_s": compile_s,
        "steps_per_second": rate,
        "estimated_train_s": (session.total_steps / rate + evals * eval_s) * cfg.train.repeats + compile_s,
        "repeats": cfg.train.repeats,
        "dry_run_s": time.perf_counter() - t_start,
        "start_from": init.record if init is not None else None,  # frozen parameters listed here
        "device_kind": jax.devices()[0].device_kind,
        "input_examples_per_second": input_rate,  # None: the split lives on the device (no input pipeline)
        "step_examples_per_second": compute_rate,
        "bottleneck": None if input_rate is None else ("input pipeline" if input_rate < compute_rate else "model"),
        "input_workers": session.feed.workers if session.feed is not None else None,
    }


def _probe_input(session: Session, batches: int) -> tuple[float, tuple[Any, ...]]:
    """(examples/s of the input pipeline after its first batch, the first batch)."""
    first = session.feed.next()  # starts the workers: not timed
    feed = session.feed
    for _ in range(feed.workers * max(1, feed.dataset.prefetch)):  # every worker up and its buffer drained once
        feed.next()
    t0 = time.perf_counter()
    examples = taken = 0
    while taken < batches or (time.perf_counter() - t0 < 1.0 and taken < 64):  # at least ~1 s of reading
        examples += len(feed.next()[0])
        taken += 1
    return examples / max(time.perf_counter() - t0, 1e-9), first

