"""The one module that talks to Orbax.

Layout of a run's checkpoints (an Orbax `CheckpointManager` directory)::

    <run>/checkpoints/<step>/state   params, optimizer state and BatchNorm statistics (StandardSave,
                                     OCDBT, uncompressed; see `state_handler`):
                                     {"model": {...}, "optimizer": {...}}
    <run>/checkpoints/<step>/meta    JSON: step, epoch, metrics at that step, elapsed time, early-stopping state

`<step>` is the number of optimizer steps done. The handed-on checkpoint's step is
`manifest.json["checkpoint_step"]`; anyone can read it with plain Orbax, without this package::

    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(f"{run}/checkpoints/{step}/state")
    tree["model"]["head"]["kernel"]   # nested dicts of arrays (list indexes become "0", "1", ...)

Retention: the last `keep` checkpoints AND the best one by the configured validation metric are kept
(`AnyPreservationPolicy([LatestN, BestN])`), so the checkpoint a run hands on is never deleted. Ties
go to the later step, in Orbax's BestN and in `best_step` alike (the rule of `gitops.registry.gates`).

Saves are asynchronous: the training thread only snapshots the arrays (an on-device copy, dispatched
without waiting); a save thread copies them to host memory and hands them to Orbax, whose own threads
write them (benchmarks/checkpoint_overhead.py). `wait()` runs before anything reads the directory. Never create integer-named folders in a checkpoint
directory by hand: the manager trusts the rename that commits a step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from gitops.registry import gates


class _QuietOrbax(logging.Filter):
    """Orbax warnings that are expected here, not news to the user: a skipped OCDBT merge (the `meta`
    item is JSON), a save between evaluations with no metric to rank by, and a restored step folder
    without `_CHECKPOINT_METADATA` (a release archive ships the `state` item alone: `predict`, `load`)."""

    QUIET = ("Skipping merge of OCDBT checkpoints", "did not provide metrics", "Metadata file does not exist")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.QUIET)


logging.getLogger("absl").addFilter(_QuietOrbax())

STATE = "state"
META = "meta"


class _Snapshot(np.ndarray):
    """A host array that only the checkpoint holds (a view of a private copy of one step's state).

    Orbax's NumpyHandler deep-copies every host array on the caller's thread before its background
    write, in case the caller changes it meanwhile (orbax 0.12 can switch that off, 0.11 cannot); no one
    changes a snapshot, so its deep copy is itself. Saved and restored as a plain `np.ndarray`.
    """

    def __deepcopy__(self, memo: dict) -> _Snapshot:
        return self


def _snapshot(tree: Mapping) -> dict:
    """Main thread, at the step being saved: a private copy of every array, taken without waiting.

    A single-device array (or one replica of a replicated one) and an array split over this process's
    devices are copied on their devices by one `jax.device_put(..., may_alias=False)`: dispatched
    asynchronously and ordered before the next training step, which donates (overwrites) the live
    buffers. An array split over several processes is gathered here, on every process in the same
    order (a collective), as `_to_host` could not do it from the save thread. Non-arrays pass through.
    """
    leaves, treedef = jax.tree.flatten(dict(tree))
    out: list[Any] = list(leaves)
    on_device: dict[int, jax.Array] = {}
    for i, value in enumerate(leaves):
        if isinstance(value, np.ndarray):
            out[i] = np.array(value, copy=True)  # the caller's host array may change after save() returns
        if not isinstance(value, jax.Array):
            continue
        if len(value.sharding.device_set) == 1 or value.is_fully_replicated:
            on_device[i] = value.addressable_data(0)
        elif value.is_fully_addressable:
            on_device[i] = value
        else:
            from jax.experimental import multihost_utils

            out[i] = np.asarray(multihost_utils.process_allgather(value, tiled=True))
    copies = jax.device_put(list(on_device.values()), may_alias=False)
    for i, copy in zip(on_device, copies, strict=True):
        out[i] = copy
    return jax.tree.unflatten(treedef, out)


def _to_host(value: Any) -> Any:
    """Save thread: a snapshot's array as a host (numpy) array, so the checkpoint records no device and no mesh.

    Orbax stores a jax.Array's sharding (even a single device's: `cuda:0`); a plain
    `StandardCheckpointer().restore(...)` without a target re-creates it and fails on a machine with
    other devices ("Topology mismatch", "Device cpu:0 was not found"). So every array is saved from host
    memory, and a run trained on 8 GPUs restores on a laptop; `restore_state` places it on the current
    devices or mesh from its target. On a CPU device this is a view of the snapshot's buffer (no copy);
    on an accelerator, the device-to-host copy, made here rather than on the training thread.
    """
    if isinstance(value, jax.Array):
        value = np.asarray(value)
    return value.view(_Snapshot) if isinstance(value, np.ndarray) and type(value) is np.ndarray else value


SAVE_NICENESS = 5


def _yield_cpu() -> None:
    """Lower the calling thread's CPU priority by SAVE_NICENESS (Linux: a thread's nice value is its own,
    and threads it starts inherit it: Orbax's writers and its commit thread).

    On a CPU-only runner the training step keeps the cores busy, and a save costs ~45-60 ms of CPU per
    13.5 MB (Orbax's bookkeeping, tensorstore's writes and fsyncs; `np.save` of the same bytes ~7 ms):
    the save thread then runs mostly in the gaps the step leaves instead of taking equal turns with
    it. A mild 5, not 19: when the next save has to wait for this one (the step idle meanwhile), the
    save competes with the machine's other processes, and a shared runner's load would starve a 19.
    Elsewhere (or without permission) a no-op.
    """
    import os
    import sys
    import threading

    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + SAVE_NICENESS))


def restore_anywhere(item_dir: Path) -> dict:
    """Plain-Orbax restore of a `state` item on this machine's default device, whatever device or mesh
    its metadata names: checkpoints saved before arrays were saved from the host carry `cuda:0` (or a
    mesh) and restore without a target only where that device exists.

    Returns the nested dict of arrays `StandardCheckpointer().restore(item_dir)` returns.
    """
    checkpointer = ocp.StandardCheckpointer()
    item_dir = Path(item_dir).absolute()
    metadata = checkpointer.metadata(item_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(leaf: Any) -> Any:
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=here) if shape is not None and dtype is not None \
            else leaf

    return checkpointer.restore(item_dir, jax.tree.map(target, tree))


DATA_FILE_BYTES = 8 << 20  # OCDBT's target size of one data file; see state_handler


class _SplitDataFiles(ocp.PyTreeCheckpointHandler):
    """Orbax's PyTree handler with OCDBT data files cut at DATA_FILE_BYTES (`ocdbt_target_data_file_size`),
    which `StandardSave` has no field for."""

    async def async_save(self, directory, *args, **kwargs):  # noqa: ANN001, ANN201 - Orbax's signature
        given = kwargs.get("args")
        if given is not None and given.ocdbt_target_data_file_size is None:
            import dataclasses

            kwargs["args"] = dataclasses.replace(given, ocdbt_target_data_file_size=DATA_FILE_BYTES)
        return await super().async_save(directory, *args, **kwargs)


def state_handler() -> ocp.StandardCheckpointHandler:
    """Orbax's StandardCheckpointHandler writing uncompressed arrays into OCDBT data files of ~8 MiB.

    Why these settings (benchmarks/checkpoint_overhead.py, 2-core CPU runner, ext4):
    - no compression: zstd over float weights costs CPU and gains ~8 % of space; with it a save ran at
      ~0.15-0.3x `np.save`'s bandwidth.
    - OCDBT: a step of the 64-1024-1024-10 MLP with AdamW (19 arrays) creates ~33 files and folders
      instead of ~106 with one zarr folder per array (each array: a folder, `.zarray`, a chunk, and
      tensorstore's lock file). File creation was a third of a save's CPU: with old checkpoints deleted
      every save, ext4 (without a journal, as on these runners) scans past every recently deleted inode
      on each create. Measured: 74-83 ms of CPU per save instead of 88-118 ms (isolated, interleaved; in
      the training benchmark the difference is inside its run-to-run spread).
    - data files cut at 8 MiB: one OCDBT data file per save wrote 100 MB at 0.87x the bandwidth of one
      zarr file per array; 8 MiB files are written in parallel and match it (540 vs 530 MB/s).
    The format stays plain Orbax (OCDBT is Orbax's default): `StandardCheckpointer().restore(path)` reads
    it, and checkpoints written before (zarr per array, or compressed) still restore through this handler.
    """
    handler = ocp.StandardCheckpointHandler()
    # StandardCheckpointHandler does not take these options; its PyTree implementation does (orbax 0.12)
    handler._impl = _SplitDataFiles(use_compression=False, use_ocdbt=True)  # noqa: SLF001
    return handler


class Checkpoints:
    """A run's checkpoint directory: save, list, restore, and choose the checkpoint to hand on.

    Args:
        directory: `<run>/checkpoints`.
        keep: most recent checkpoints kept.
        best_metric: e.g. "val/accuracy"; None hands on the last checkpoint.
        higher_is_better: direction of `best_metric` (`gates.higher_is_better`); values are ranked by
            `gates.score`, so a NaN is never the best.
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
                    get_metric_fn=lambda m: gates.score(m[best_metric], higher_is_better),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            # best_fn makes the manager write each step's metrics to disk (`<step>/metrics/metrics`): without
            # it they live only in memory, a resumed run's manager sees the old steps without metrics, and
            # BestN deletes the best one (issue 13, fault 2). Ranking stays BestN's job above.
            best_fn=(lambda m: gates.score(m[best_metric], higher_is_better)) if best_metric else None,
            best_mode="max",
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers={STATE: state_handler(), META: ocp.JsonCheckpointHandler()})
        # the save thread: one, so saves reach the manager in order; multi-process runs save on the calling
        # thread (Orbax's barriers and the gather of split arrays expect every process's main thread)
        self._thread = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitops-checkpoint", initializer=_yield_cpu)
                        if asynchronous and jax.process_count() == 1 else None)
        self._queued: Future | None = None

    # --- writing ---
    def save(self, step: int, state: Mapping, meta: Mapping, metrics: Mapping[str, float] | None = None) -> None:
        """Queue an asynchronous save of `state` (nested dict of arrays) and `meta` (JSON) at `step`.

        `metrics` must hold `best_metric` for the checkpoint to compete for "best"; others are kept
        only while they are among the last `keep`. Returns once the arrays are snapshotted (`_snapshot`:
        an asynchronous copy on their devices, so the caller may donate or change them); the copy to
        host memory and Orbax's own work (metadata, folders, its wait for the previous save, the writes)
        run on the save thread. A save still being handed to Orbax is waited for first, so at most two
        snapshots exist; an error of an earlier save is raised here or by `wait`.
        """
        ranked = dict(metrics) if metrics and self.best_metric and self.best_metric in metrics else None
        snapshot, meta = _snapshot(state), dict(meta)
        self._handed_on()
        if self._thread is None:
            self._save_now(step, snapshot, meta, ranked)
        else:
            self._queued = self._thread.submit(self._save_now, step, snapshot, meta, ranked)

    def _save_now(self, step: int, snapshot: dict, meta: dict, ranked: dict | None) -> None:
        state = jax.tree.map(_to_host, snapshot)
        self.manager.save(
            step,
            args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
            metrics=ranked,
            force=True,
        )

    def _handed_on(self) -> None:
        """Wait until the queued save (if any) is handed to Orbax; re-raise its error."""
        queued, self._queued = self._queued, None
        if queued is not None:
            queued.result()

    def wait(self) -> None:
        """Block until queued asynchronous saves are committed to disk (Orbax `CheckpointManager.wait_until_finished`);
        call before reading or before the process exits.
        """
        self._handed_on()
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves, then close the Orbax manager (its background threads); the object is unusable
        afterwards. Raises the error of a save that failed (after closing).
        """
        try:
            self.wait()
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)
            self.manager.close()

    # --- reading ---
    def steps(self) -> list[int]:
        """Steps (ascending, in optimizer steps) of the committed checkpoints on disk, after waiting for pending saves
        and re-reading the directory (another process may have written or deleted some).
        """
        self.wait()
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The highest committed checkpoint step, or None when the directory holds none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int) -> dict:
        """The JSON `meta` saved beside the state at `step` (e.g. the early-stopping and best-metric bookkeeping);
        raises Orbax's/OS errors if `step` has no checkpoint.
        """
        self.wait()
        return dict(self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])

    def restore_state(self, step: int, target: Mapping) -> dict:
        """Restore the state at `step` into the structure, shapes and dtypes of `target` (arrays or ShapeDtypeStructs)."""
        self.wait()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(target))
        restored = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))
        return restored[STATE]

    def restore_latest(self, target: Mapping, note=lambda text: None) -> tuple[int, dict, dict] | None:
        """(step, state, meta) of the newest checkpoint that restores; None when there is none.

        A step that fails to restore (a truncated or missing array file: a disk that filled up, a copy
        cut short) is moved out of the directory with `quarantine`, so later saves don't collide with
        it, and the step before is tried; `note` gets one line per damaged step naming the file.
        """
        for step in reversed(self.steps()):
            # checked before the restore: a restore that fails leaves its other reads to fail later, and
            # their tracebacks would print long after the one line below
            cut = truncated_file(self.directory / str(step))
            why = "missing or not the size its .zarray says" if cut is not None else None
            if cut is None:
                cut, why = unreadable_value(self.directory / str(step))
            if cut is not None:
                moved = self.quarantine(step)
                note(f"checkpoint {step} is damaged ({cut}: {why}); moved it to {moved} and resuming from the step before")
                continue
            try:
                with _quiet_logs():  # orbax logs the tensorstore traceback itself; we say it in one line
                    state = self.restore_state(step, target)
                    meta = self.meta(step)
            except Exception as exc:  # noqa: BLE001 - tensorstore/orbax raise bare Exceptions
                _drop_failed_reads()
                culprit = damaged_file(self.directory / str(step), exc)
                moved = self.quarantine(step)
                note(f"checkpoint {step} is damaged ({culprit}: {_first_line(exc)}); moved it to {moved} and "
                     "resuming from the step before")
                continue
            return step, state, meta
        return None

    def quarantine(self, step: int) -> Path:
        """Move step `step` to `<run>/checkpoints.damaged/<step>[-N]` and forget it; returns the new path."""
        self.wait()
        aside = self.directory.parent / f"{self.directory.name}.damaged"
        aside.mkdir(parents=True, exist_ok=True)
        dest = aside / str(step)
        n = 1
        while dest.exists():
            dest, n = aside / f"{step}-{n}", n + 1
        (self.directory / str(step)).rename(dest)
        self.manager.reload()
        return dest

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
                scored.append((gates.score(value, self.higher_is_better), step))
        return max(scored)[1] if scored else steps[-1]


def restore_plain(step_dir: Path) -> dict:
    """What a user without this package does: plain Orbax, no target (nested dict, string list keys)."""
    return ocp.StandardCheckpointer().restore(Path(step_dir).absolute() / STATE)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first (tensorstore's own message is inside)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def damaged_file(step_dir: Path, exc: BaseException) -> str:
    """The file of a checkpoint step that failed to restore, as best it can be told: an empty file, else
    the array an OCDBT read names (`<state folder>: array model.w`), else the first array path the error
    names, else the step folder itself."""
    import re

    empty = sorted(p for p in Path(step_dir).rglob("*") if p.is_file() and p.stat().st_size == 0)
    if empty:
        return str(empty[0])
    text = "\n".join(str(e) for e in _chain(exc))
    ocdbt = re.search(r'Error reading "([^"]+)" in OCDBT database at local file "([^"]+)"', text)
    if ocdbt:
        array = ocdbt.group(1).rsplit("/", 1)[0]
        return f"{ocdbt.group(2).rstrip('/')}: array {array}"
    found = re.search(r"'path': '([^']+)'", text)
    return found.group(1).rstrip("/") if found else str(step_dir)


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost message in `exc`'s chain (tensorstore's, e.g. "OUT_OF_RANGE: ..."),
    not Orbax's wrapper, which embeds a whole TensorStore spec."""
    for e in reversed(_chain(exc)):
        text = str(e).strip().splitlines()
        if text:
            return text[0][:160]
    return type(exc).__name__


@contextlib.contextmanager
def _quiet_logs():
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _QuietAbandonedReads(logging.Filter):
    """asyncio's "Task exception was never retrieved" for a read task of a failed restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_read_array_index" not in record.getMessage()


def _drop_failed_reads() -> None:
    """Keep Python from printing the traceback of each read a failed restore abandoned when it is
    garbage-collected, possibly much later: the damaged step was already reported in one line. A
    coroutine never awaited goes to `sys.unraisablehook` ("Exception ignored in: <coroutine object
    _read_array_index_and_device_put ...>"); a task whose error no one retrieved (with OCDBT every array
    of a cut data file fails, and the first error ends the gather) is logged by asyncio's logger."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_gitops_drops_reads", False):
        return
    logging.getLogger("asyncio").addFilter(_QuietAbandonedReads())

    def hook(unraisable) -> None:
        name = getattr(getattr(unraisable, "object", None), "__qualname__", "") or ""
        if "_read_array_index" in name or "_read_array_index" in repr(getattr(unraisable, "object", "")):
            return
        previous(unraisable)

    hook._gitops_drops_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def unreadable_value(step_dir: Path) -> tuple[str | None, str | None]:
    """(where, why) for the first value of an OCDBT item of a checkpoint step that cannot be read whole
    (a data file cut short or emptied); (None, None) when all read, or the step has no OCDBT item.

    Reads every value once through tensorstore's OCDBT key-value store, one at a time (a resume reads
    them again to restore; the second read comes from the page cache). `where` names the empty file if
    there is one, else `<item folder>: array <name>`.
    """
    import tensorstore as ts

    for item in sorted(p for p in Path(step_dir).iterdir() if (p / "manifest.ocdbt").is_file()):
        try:
            store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{item.absolute()}/"}).result()
            keys = store.list().result()
        except Exception as exc:  # noqa: BLE001 - tensorstore raises ValueError/RuntimeError with a status
            return str(item / "manifest.ocdbt"), _first_line(exc)
        for key in keys:
            try:
                store.read(key).result()
            except Exception as exc:  # noqa: BLE001
                empty = sorted(p for p in item.rglob("*") if p.is_file() and p.stat().st_size == 0)
                name = key.decode("utf-8", "replace").rsplit("/", 1)[0]
                return (str(empty[0]) if empty else f"{item}: array {name}"), _first_line(exc)
    return None, None


def truncated_file(step_dir: Path) -> Path | None:
    """The first array chunk file of a checkpoint step that is missing or not its full size (a write cut
    short, a disk that filled up); None when every uncompressed zarr chunk is whole. Reads no array.

    Only checkpoints with one zarr folder per array (written before OCDBT was used) have such files; an
    OCDBT step has none, and a cut data file of one fails the restore, which `restore_latest` reports."""
    import itertools
    import json

    for zarray in sorted(Path(step_dir).glob("*/*/.zarray")):  # <step>/<item>/<array>/.zarray
        try:
            meta = json.loads(zarray.read_text(encoding="utf-8"))
            if meta.get("compressor") is not None:
                continue  # compressed chunks have no fixed size; the restore itself checks them
            itemsize = np.dtype(meta["dtype"]).itemsize
            shape, chunks = list(meta["shape"]), list(meta["chunks"])
            separator = meta.get("dimension_separator") or "."
        except (OSError, ValueError, KeyError, TypeError):
            return zarray
        expected = int(np.prod(chunks)) * itemsize if chunks else itemsize
        counts = [math.ceil(n / c) if c else 1 for n, c in zip(shape, chunks, strict=False)]
        for index in itertools.product(*(range(n) for n in counts)):
            chunk = zarray.parent / (separator.join(map(str, index)) if index else "0")
            if not chunk.is_file() or chunk.stat().st_size != expected:
                return chunk
    return None
