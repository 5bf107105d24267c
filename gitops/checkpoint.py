"""The one module that talks to Orbax.

Layout of a run's checkpoints (an Orbax `CheckpointManager` directory)::

    <run>/checkpoints/<step>/state   params, optimizer state and BatchNorm statistics (StandardSave):
                                     {"model": {...}, "optimizer": {...}}
    <run>/checkpoints/<step>/meta    JSON: step, epoch, metrics at that step, elapsed time, early-stopping state

`<step>` is the number of optimizer steps done. The handed-on checkpoint's step is
`manifest.json["checkpoint_step"]`; anyone can read it with plain Orbax, without this package::

    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(f"{run}/checkpoints/{step}/state")
    tree["model"]["head"]["kernel"]   # nested dicts of arrays (list indexes become "0", "1", ...)

Retention: the last `keep` checkpoints AND the best one by the configured validation metric are kept
(`AnyPreservationPolicy([LatestN, BestN])`), so the checkpoint a run hands on is never deleted. Ties
go to the later step, in Orbax's BestN and in `best_step` alike. Saves are asynchronous;
`wait()` runs before anything reads the directory. Never create integer-named folders in a checkpoint
directory by hand: the manager trusts the rename that commits a step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class _QuietOcdbtMerge(logging.Filter):
    """Orbax warns on every save without OCDBT that it skips an OCDBT merge; we chose no OCDBT."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOcdbtMerge())

STATE = "state"
META = "meta"


def _portable(value: Any) -> Any:
    """A multi-device array as its host value, so the checkpoint records no mesh.

    Orbax stores an array's sharding; a plain `StandardCheckpointer().restore(...)` without a target
    re-creates it and fails on a machine with other devices ("Topology mismatch"). Arrays on a mesh
    (data parallel, fsdp, multi-host) are saved from host memory instead (Orbax writes host arrays from
    process 0 only; an fsdp-split array is gathered first, on every process, as save runs on all), so a
    run trained on 8 GPUs restores anywhere, and `restore_state` re-shards it onto the current mesh.
    """
    if not isinstance(value, jax.Array) or len(value.sharding.device_set) == 1:
        return value
    if value.is_fully_replicated:
        return np.asarray(value.addressable_data(0))
    if value.is_fully_addressable:
        return np.asarray(value)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def state_handler() -> ocp.StandardCheckpointHandler:
    """Orbax's StandardCheckpointHandler writing uncompressed arrays, one zarr folder per array (no OCDBT).

    Measured by benchmarks/checkpoint_overhead.py (100 MB, each save followed by os.sync()): Orbax's
    defaults (zstd level 3 + OCDBT) save at ~0.15-0.3x np.save's bandwidth on a 2-core CPU runner, since
    compressing float weights costs CPU time and gains ~8 % of space; without compression and OCDBT it
    is ~0.8-0.9x. The format stays plain Orbax: `StandardCheckpointer().restore(path)` reads it, and
    checkpoints written with the defaults (OCDBT, compressed) still restore through this handler.
    """
    handler = ocp.StandardCheckpointHandler()
    # StandardCheckpointHandler does not take these options; its PyTree implementation does (orbax 0.12)
    handler._impl = ocp.PyTreeCheckpointHandler(use_compression=False, use_ocdbt=False)  # noqa: SLF001
    return handler


def _signed(value: Any, higher_is_better: bool) -> float:
    """A score where larger is better; NaN ranks last."""
    value = float(value)
    if math.isnan(value):
        return -math.inf
    return value if higher_is_better else -value


class Checkpoints:
    """A run's checkpoint directory: save, list, restore, and choose the checkpoint to hand on.

    Args:
        directory: `<run>/checkpoints`.
        keep: most recent checkpoints kept.
        best_metric: e.g. "val/accuracy"; None hands on the last checkpoint.
        higher_is_better: direction of `best_metric`.
    """

    def __init__(self, directory: Path, *, keep: int = 2, best_metric: str | None = None, higher_is_better: bool = True,
                 asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.higher_is_better = higher_is_better
        keepers: list[Any] = [policies.LatestN(n=keep)]
        if best_metric:
            keepers.append(
                policies.BestN(
                    get_metric_fn=lambda m: _signed(m[best_metric], higher_is_better),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers={STATE: state_handler(), META: ocp.JsonCheckpointHandler()})

    # --- writing ---
    def save(self, step: int, state: Mapping, meta: Mapping, metrics: Mapping[str, float] | None = None) -> None:
        """Queue an asynchronous save of `state` (nested dict of arrays) and `meta` (JSON) at `step`.

        `metrics` must hold `best_metric` for the checkpoint to compete for "best"; others are kept
        only while they are among the last `keep`.
        """
        ranked = dict(metrics) if metrics and self.best_metric and self.best_metric in metrics else None
        state = jax.tree.map(_portable, dict(state))
        self.manager.save(
            step,
            args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(dict(meta))}),
            metrics=ranked,
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # --- reading ---
    def steps(self) -> list[int]:
        self.wait()
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int) -> dict:
        self.wait()
        return dict(self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])

    def restore_state(self, step: int, target: Mapping) -> dict:
        """Restore the state at `step` into the structure, shapes and dtypes of `target` (arrays or ShapeDtypeStructs)."""
        self.wait()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(target))
        restored = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))
        return restored[STATE]

    def best_step(self) -> int | None:
        """The checkpoint to hand on: the best by `best_metric` (ties: the later), else the last."""
        steps = self.steps()
        if not steps:
            return None
        if not self.best_metric:
            return steps[-1]
        scored = []
        for step in steps:
            value = self.meta(step).get("metrics", {}).get(self.best_metric)
            if value is not None:
                scored.append((_signed(value, self.higher_is_better), step))
        return max(scored)[1] if scored else steps[-1]


def restore_plain(step_dir: Path) -> dict:
    """What a user without this package does: plain Orbax, no target (nested dict, string list keys)."""
    return ocp.StandardCheckpointer().restore(Path(step_dir).absolute() / STATE)
