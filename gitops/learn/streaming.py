"""Streaming datasets on Grain: image folders, Parquet tables and ArrayRecord shards, pinned by a checksum list.

Where the in-memory sources (`gitops.learn.data`) put a whole training split on the device, these read
records from files while training, so memory does not grow with the dataset:

1. *Locate and verify* (`load`): the checksum list (`checksums:`) must hash to its pin
   (`checksums_sha256:`); every listed file must exist and match its SHA-256 (`gitops.learn.checksum_list`,
   parallel, remembered by path/size/mtime). A URL prefix (`file://`, https, s3, gs) fetches each listed
   file into the data cache by hash (`gitops.learn.remote_data`). All of it happens before a run folder exists.
2. *Records and splits*: a record index is a position in the list order (sorted paths; rows in file
   order), so re-encoding files keeps every split. Predefined splits come from folders
   (`<path>/<split>/<class>/<file>`), a `split_column` or files (`split_files`: globs per split);
   otherwise `data.splits` fractions cut the record indexes with the same function as the in-memory
   sources (`preprocessing.split_indexes`).
3. *Statistics* for `preprocessing.scale` from one streamed pass over the training split (or a seeded
   sample of `stats_sample` records), saved as `preprocessing.json` like every run (with, for Parquet,
   the feature column names, so predict picks a CSV's columns by name). The records that
   pass did not read are read for their labels (`_label_range`), so a bad one fails before the run.
4. *The pipeline* (`train_dataset`): a Grain `MapDataset` of whole batches: the order of Grain's global
   shuffle by the data seed (re-shuffled every epoch), per-process shard `[process_index::process_count]`
   and `batch(drop_remainder=True)`, computed a batch at a time (`ShuffledBatch`,
   `gitops.learn.index_shuffle`), then one `ReadBatch` map reads, decodes and scales the batch's records
   together (ArrayRecord: records read in file order, one view per array for the whole batch); read
   through `mp_prefetch` worker processes (`workers`) or reader threads (none for ArrayRecord, whose
   reads hold the GIL: `reader_threads`). `remainder: pad` extends each epoch to
   whole batches with weight-0 rows (position -1 in `ShuffledBatch`; `ReadBatch` then adds the weights
   `w`). Parquet visits row groups in a seeded order with rows shuffled inside each group (`BlockOrder`),
   so an epoch reads each row group once. `Feed` reads ahead in a thread that also places the next
   batches on the device while the step runs. The iterator's state (`get_state()`) after the last batch
   handed out is saved in each checkpoint's `meta` item; `--resume` sets it back, so the batches after a
   resume are those of an uninterrupted run.

Errors name the file and exit 1 (`GitopsError`); `skip_bad: true` drops undecodable images instead and
the count goes to `manifest.json` (`data.skipped`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from gitops.checksums import sha256_file
from gitops.errors import GitopsError, IntegrityError
from gitops.learn import checksum_list, sources
from gitops.learn.preprocessing import Preprocessing, split_indexes

SOURCES = frozenset({"image_folder", "parquet", "array_record"})
# dataset keys that change how fast data arrives, never which data: left out of the fingerprints
EXECUTION_KEYS = ("workers", "prefetch")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass
class StreamSplit:
    """Record indexes of one split (positions in the source)."""

    indexes: np.ndarray

    def __len__(self) -> int:
        return len(self.indexes)


@dataclass
class StreamingDataset:
    """What `gitops.learn.data.load` returns for a streaming source: splits as record indexes, not arrays."""

    source: Any
    train: StreamSplit
    val: StreamSplit
    test: StreamSplit
    preprocessing: Any
    seed: int
    workers: int
    prefetch: int
    block_starts: np.ndarray | None = None  # parquet: first record of each row group
    skipped: list[str] = field(default_factory=list)
    streaming: bool = True
    remainder: str = "drop"  # the epoch's last examples short of a batch: "drop" them or "pad" a last batch

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training batches in one epoch: whole batches only (`drop`), or one more padded batch (`pad`)."""
        n = len(self.train)
        return -(-n // batch_size) if self.remainder == "pad" else n // batch_size

    @property
    def task(self) -> str:
        """`classification`, `regression` or `language_modeling`, from the preprocessing."""
        return self.preprocessing.task

    # --- Grain pipelines ---
    def train_dataset(self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1) -> Any:
        """The endless, per-epoch re-shuffled (by `seed`) `MapDataset` of this process's training batches.

        Batch `s` holds this process's share (`batch_size // process_count` examples) of global batch `s`:
        `(x, y)`, or with `remainder: pad` `(x, y, w)`, where `w` (float32) is 0 for the rows that pad an
        epoch's last batch (zeros: they count in no loss, gradient or metric) and 1 for every real record.
        """
        import grain

        if batch_size % process_count:
            raise GitopsError(f"batch size {batch_size} does not split over {process_count} processes")
        local = batch_size // process_count
        n, pad = len(self.train), self.remainder == "pad"
        per_epoch = self.steps_per_epoch(batch_size) * batch_size  # pad: rounded up, the rest weight-0 rows
        if not per_epoch:
            raise GitopsError(f"batch size {batch_size} is larger than the training split ({n} records)")
        template = None
        if pad:  # the padding rows' shapes and dtypes, from one record
            x, y = self.source[int(self.train.indexes[0])]
            template = (np.zeros(np.shape(x), np.float32), np.zeros(np.shape(y), np.asarray(y).dtype))
        if self.block_starts is not None:  # parquet: row groups in a seeded order, rows shuffled inside
            if pad:
                order = PadEpochs(BlockOrder(self.train.indexes, self.block_starts, seed, n), n, per_epoch)
                ds = grain.MapDataset.range(per_epoch).repeat(None).map_with_index(order)
                ds = ds[process_index::process_count].map(PaddedLookup(self.source, *template))
            else:
                order = BlockOrder(self.train.indexes, self.block_starts, seed, per_epoch)
                ds = grain.MapDataset.range(per_epoch).repeat(None).map_with_index(order)
                ds = ds[process_index::process_count].map(Lookup(self.source))
            ds = ds.map(Scale(self.preprocessing.shift, self.preprocessing.divisor))
            return ds.batch(local, drop_remainder=True)
        # batch first, then read: each batch's positions at once (`ShuffledBatch`: the order of Grain's
        # `MapDataset.range(n).shuffle(seed)[:per_epoch][process_index::process_count].batch(local)`), then
        # one `ReadBatch` reads and decodes its records together (`sources.read_batch`: vectorised for
        # ArrayRecord) and scales them in one operation; the same batches, bit for bit, as Grain's
        # record-by-record pipeline, without its per-record Python calls. `remainder: pad`: positions past
        # the split (-1) are weight-0 rows, and each batch comes with its weights `w`
        positions = ShuffledBatch(n, seed, per_epoch, local, process_index, process_count)
        ds = grain.MapDataset.range(positions.per_epoch).repeat(None).map_with_index(positions)
        return ds.map(ReadBatch(self.source, self.train.indexes, self.preprocessing.shift, self.preprocessing.divisor,
                                pad=template))

    def iterator(self, dataset: Any, *, workers: int | None = None) -> Any:
        """A Grain iterator over `dataset`: `workers` processes (mp_prefetch) or reader threads.

        The worker processes end with this one however it dies (`gitops.learn.lifeline.ExitWithParent`).
        """
        import grain

        workers = self.workers if workers is None else workers
        it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=reader_threads(self.source),
                                                       prefetch_buffer_size=max(1, self.prefetch)))
        if workers > 0:
            from gitops.learn.lifeline import ExitWithParent

            _absl_flags_parsed()
            # each worker exits within a fraction of a second of this process dying, SIGKILL included
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                             per_worker_buffer_size=max(1, self.prefetch)),
                                worker_init_fn=ExitWithParent())
        return iter(it)

    def eval_batches(self, split: str, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(x, y, weights) batches of a split in record order; the last one padded with weight-0 rows."""
        import grain

        part = getattr(self, split)
        if not len(part):
            return
        indexes = np.sort(part.indexes)
        ds = grain.MapDataset.range(len(indexes)).batch(batch, batch_fn=np.asarray)  # batch first, then read
        ds = ds.map(ReadBatch(self.source, indexes, self.preprocessing.shift, self.preprocessing.divisor))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(4, os.cpu_count() or 1)),
                                                  prefetch_buffer_size=2))
        for x, y in _reraise(iter(it)):
            n = len(x)
            w = np.ones(batch, np.float32)
            if n < batch:
                w[n:] = 0
                x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros((batch - n, *y.shape[1:]), y.dtype)])
            yield x, y, w


def reader_threads(source: Any) -> int:
    """Grain's reader threads for `source`: up to 4 (one per CPU), or 0 (Grain reads in the thread that asks
    for the next batch) for a source whose reads hold the GIL (`ArrayRecordSource.threaded = False`), where
    more threads would only take turns, each switch costing CPU the training step's threads could use.
    """
    return max(1, min(4, os.cpu_count() or 1)) if getattr(source, "threaded", True) else 0


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; a program that never parsed them (ours) marks them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _reraise(it: Iterator) -> Iterator:
    """Yield from a Grain iterator, turning a record error raised in a worker into one clear GitopsError."""
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except GitopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - Grain re-raises worker errors wrapped
            raise record_error(exc) from None
        yield item


def record_error(exc: BaseException) -> GitopsError:
    """The clear message inside an exception Grain re-raised from a worker (its text names the file)."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "RecordError" in line or ": cannot " in line:
            return GitopsError(line.split("RecordError: ", 1)[-1].strip())
    return GitopsError(f"the input pipeline failed: {type(exc).__name__}: {text[:500]}")


# --- picklable pieces of the pipeline (Grain workers rebuild them) --------------------------------------


class ShuffledBatch:
    """Batch number -> positions in the split of its records: Grain's global shuffle, a batch at a time.

    Batch `b` of epoch `e = b // per_epoch` holds, for this process, elements `process_index + r *
    process_count` (`r` over the batch's `local` rows) of Grain's shuffle of `n` positions with seed
    `seed + e` (`gitops.learn.index_shuffle`, the permutation `MapDataset.shuffle` uses): the batches of
    `MapDataset.range(n).shuffle(seed)[:kept][process_index::process_count].batch(local,
    drop_remainder=True).repeat(None)`, computed with array operations. With `kept > n` (`remainder:
    pad`: the split rounded up to whole batches) the positions from `n` on are padding, given as -1.
    """

    def __init__(self, n: int, seed: int, kept: int, local: int, process_index: int, process_count: int):
        self.n, self.seed, self.local, self.kept = int(n), int(seed), int(local), int(kept)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.per_epoch = len(range(process_index, kept, process_count)) // self.local

    def __call__(self, batch: int, _element: Any = None) -> np.ndarray:
        from gitops.learn.index_shuffle import index_shuffle

        epoch, within = divmod(int(batch), self.per_epoch)
        rows = within * self.local + np.arange(self.local, dtype=np.int64)
        at = self.process_index + rows * self.process_count
        if self.kept <= self.n:  # remainder: drop
            return index_shuffle(at, self.n - 1, (self.seed + epoch) % 2**32)
        out = np.full(len(at), -1, np.int64)
        real = at < self.n
        out[real] = index_shuffle(at[real], self.n - 1, (self.seed + epoch) % 2**32)
        return out


class ReadBatch:
    """Positions in a split -> the scaled batch `(x, y)` of their records (`sources.read_batch`, then `Scale`).

    With `pad` (`remainder: pad`: zero rows `(x_row, y_row)` of one record's shapes and dtypes) the batch is
    `(x, y, w)`: position -1 is a padding row, zeros with weight 0; every record has weight 1 (float32).
    """

    def __init__(self, source: Any, indexes: np.ndarray, shift: list[float] | None, divisor: list[float] | None,
                 pad: tuple[np.ndarray, np.ndarray] | None = None):
        self.source, self.indexes = source, np.asarray(indexes, np.int64)
        self.scale = Scale(shift, divisor)
        self.pad = pad

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        positions = np.asarray(positions, np.int64)
        if self.pad is None:
            return self.scale(sources.read_batch(self.source, self.indexes[positions]))
        real = positions >= 0
        w = real.astype(np.float32)
        if real.all():
            x, y = self.scale(sources.read_batch(self.source, self.indexes[positions]))
            return x, y, w
        x_row, y_row = self.pad
        x = np.zeros((len(positions), *x_row.shape), np.float32)
        y = np.zeros((len(positions), *y_row.shape), y_row.dtype)
        if real.any():
            x[real], y[real] = self.scale(sources.read_batch(self.source, self.indexes[positions[real]]))
        return x, y, w


class Lookup:
    """record index -> record of `source` (for index streams built with `map_with_index`)."""

    def __init__(self, source: Any):
        self.source = source

    def __call__(self, index: int) -> Any:
        return self.source[int(index)]


class Scale:
    """(x, y) -> (float32 (x - shift) / divisor, y): the fitted preprocessing, of one example or of a batch.

    `shift` and `divisor` have one value per input element; a batch `(n, *shape)` is scaled with the
    same float32 operations, element by element, as each of its examples alone (same bits).
    """

    def __init__(self, shift: list[float] | None, divisor: list[float] | None):
        self.shift = None if shift is None else np.asarray(shift, np.float32)
        self.divisor = None if divisor is None else np.asarray(divisor, np.float32)

    def __call__(self, record: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        x, *rest = record  # (x, y) or (x, y, weight): only x is scaled
        x = np.asarray(x, np.float32)
        if self.shift is not None:
            flat = x.reshape(-1) if x.size == self.shift.size else x.reshape(-1, self.shift.size)
            # one float32 buffer for both operations; a batch's 64-byte aligned (`jax.device_put` takes it as is)
            out = np.empty(flat.shape, np.float32) if flat.ndim == 1 else sources.aligned_empty(flat.shape, np.float32)
            np.subtract(flat, self.shift, out=out)
            x = np.divide(out, self.divisor, out=out).reshape(x.shape)
        return (x, *rest)


class PadEpochs:
    """Stream position -> record index (-1: padding): epochs of `padded` positions, the first `n` from
    `inner` (a position -> record order over epochs of `n`, e.g. `BlockOrder`), the rest padding."""

    def __init__(self, inner: Any, n: int, padded: int):
        self.inner, self.n, self.padded = inner, int(n), int(padded)

    def __call__(self, position: int, _element: Any = None) -> int:
        epoch, k = divmod(int(position), self.padded)
        return self.inner(epoch * self.n + k) if k < self.n else -1


class PaddedLookup:
    """Record index -> (x, y, 1.0); -1 -> (zeros, zeros, 0.0): the padding rows of `remainder: pad`."""

    def __init__(self, source: Any, x_pad: np.ndarray, y_pad: np.ndarray):
        self.source, self.x_pad, self.y_pad = source, x_pad, y_pad

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
        if int(index) < 0:
            return self.x_pad, self.y_pad, np.float32(0.0)
        x, y = self.source[int(index)]
        return x, y, np.float32(1.0)


class BlockOrder:
    """Global stream position -> record index: row groups in a seeded order, rows shuffled within each group.

    `indexes` (sorted record indexes of the split) are grouped by `block_starts`; epoch e visits the
    groups in `permutation(seed, e)` and each group's rows in `permutation(seed, e, group)`; an epoch is
    `per_epoch` positions (the split rounded down to whole batches). Deterministic, O(groups) memory.
    """

    def __init__(self, indexes: np.ndarray, block_starts: np.ndarray, seed: int, per_epoch: int):
        self.indexes = np.sort(np.asarray(indexes, np.int64))
        group = np.searchsorted(block_starts, self.indexes, side="right") - 1
        cuts = np.flatnonzero(np.diff(group)) + 1
        self.bounds = np.concatenate([[0], cuts, [len(self.indexes)]]).astype(np.int64)
        self.seed, self.per_epoch = int(seed), int(per_epoch)
        self._epoch: int | None = None
        self._lock = threading.Lock()  # Grain's reader threads share this object and its cached plan

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lock": None, "_epoch": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _plan(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(len(self.bounds) - 1)
        sizes = np.diff(self.bounds)[self._order]
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        self._epoch, self._group, self._perm = epoch, None, None

    def __call__(self, position: int, _element: Any = None) -> int:
        with self._lock:
            return self._index(position)

    def _index(self, position: int) -> int:
        epoch, k = divmod(int(position), self.per_epoch)
        if epoch != self._epoch:
            self._plan(epoch)
        slot = int(np.searchsorted(self._starts, k, side="right") - 1)
        group = int(self._order[slot])
        if group != self._group:
            size = int(self.bounds[group + 1] - self.bounds[group])
            self._perm = np.random.default_rng([self.seed, epoch, group + 1]).permutation(size)
            self._group = group
        return int(self.indexes[self.bounds[group] + self._perm[k - int(self._starts[slot])]])


# --- locating, verifying and indexing the files ------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _checksum_entries(ds: Mapping[str, Any], root: Path) -> tuple[list[checksum_list.Entry], str]:
    rel = ds["checksums"]
    path = root / rel
    if not path.is_file():
        raise GitopsError(f"data.dataset.checksums: no file {rel} in the repository (write it with "
                          f"`gitops data checksums {ds['path']} --out {rel}`)")
    actual = sha256_file(path)
    if actual != ds["checksums_sha256"]:
        raise IntegrityError(f"{rel}: SHA-256 mismatch (data.dataset.checksums_sha256 is {ds['checksums_sha256']}, "
                             f"the list has {actual}); nothing was trained. Update the pin if the list changed on purpose")
    return checksum_list.parse(path.read_text(encoding="utf-8"), rel), rel


def locate(ds: Mapping[str, Any], root: Path, check: Any = None) -> tuple[dict[str, Path], dict[str, str | None], str]:
    """Verified local files of a streaming dataset: (listed path -> local file, listed path -> problem, label).

    Local paths are verified in place (remembered between runs); a URL prefix fetches each listed file
    into the data cache, where its name is its SHA-256.
    """
    from gitops.learn import remote_data

    entries, label = _checksum_entries(ds, root)
    where = ds["path"]
    if _is_url(where):
        prefix = where.rstrip("/")

        def fetch(entry: checksum_list.Entry) -> tuple[Path, str | None]:
            local = remote_data.fetch(f"{prefix}/{entry.path}", entry.sha256)
            return local, (check(local) if check else None)

        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(fetch, entries))
        return ({e.path: p for e, (p, _) in zip(entries, got, strict=True)},
                {e.path: q for e, (_, q) in zip(entries, got, strict=True)}, label)
    base = (root / where).resolve()
    if not base.exists():
        raise GitopsError(f"data.dataset.path: {where} does not exist under {root}")
    problems = checksum_list.verify(base, entries, label=label, pin=ds["checksums_sha256"],
                                    cache=remote_data.cache_dir(), check=check)
    if base.is_file():  # a single listed file named by the path itself
        return {e.path: base for e in entries}, problems, label
    return {e.path: base / e.path for e in entries}, problems, label


def _image_records(ds: Mapping[str, Any], root: Path) -> tuple[Any, dict[str, np.ndarray] | None, list[str], list[str]]:
    files, problems, label = locate(ds, root, check=sources.image_problem)
    skipped = [p for p, q in problems.items() if q]
    if skipped and not ds.get("skip_bad"):
        first = skipped[0]
        raise GitopsError(f"{files[first]}: {problems[first]} (set data.dataset.skip_bad: true to skip such files)")
    paths = [p for p in sorted(files) if not problems.get(p)]
    depths = {len(PurePosixPath(p).parts) for p in paths}
    if len(depths) > 1:
        odd = next(p for p in paths if len(PurePosixPath(p).parts) != min(depths))
        raise GitopsError(f"{label}: {odd}: images must all be <class>/<file> or all <split>/<class>/<file>")
    depth = depths.pop() if depths else 2
    if depth not in (2, 3):
        raise GitopsError(f"{label}: {paths[0]}: expected <class>/<file> or <split>/<class>/<file>")
    parts = [PurePosixPath(p).parts for p in paths]
    if depth == 3:
        bad = sorted({s[0] for s in parts if s[0] not in SPLIT_NAMES})
        if bad:
            raise GitopsError(f"{label}: split folder {bad[0]!r} is not one of train, val, validation, test")
        classes = sorted({s[1] for s in parts})
        by_split: dict[str, set[str]] = {}
        for s in parts:
            by_split.setdefault(SPLIT_NAMES[s[0]], set()).add(s[1])
        for name in classes:
            holders = [sp for sp, cls in by_split.items() if name in cls]
            if len(holders) < len(by_split):
                missing = sorted(set(by_split) - set(holders))
                raise GitopsError(f"{Path(ds['path']) / next(p for p in paths if PurePosixPath(p).parts[1] == name)}: "
                                  f"the label folder {name!r} appears in split {', '.join(holders)} but not in "
                                  f"{', '.join(missing)}")
        splits = {sp: np.asarray([i for i, s in enumerate(parts) if SPLIT_NAMES[s[0]] == sp], np.int64)
                  for sp in ("train", "val", "test")}
    else:
        classes = sorted({s[0] for s in parts})
        splits = None
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[s[-2]] for s in parts], np.int32)
    source = sources.ImageFolderSource([str(files[p]) for p in paths], labels, ds["image_size"], ds["channels"])
    # named as listed under `path` (a URL prefix's files are cached under their hash: that name says nothing)
    return source, splits, classes, [f"{str(ds['path']).rstrip('/')}/{p}" for p in skipped]


def _parquet_records(ds: Mapping[str, Any], root: Path) -> tuple[Any, dict[str, np.ndarray] | None, np.ndarray]:
    import pyarrow.parquet as pq

    files, _, label = locate(ds, root)
    listed = sorted(files)
    paths = [files[p] for p in listed]
    group_rows, features = [], None
    for path in paths:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid and friends
            raise GitopsError(f"{path}: not a Parquet file ({exc})") from None
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        wanted = list(ds.get("features") or [n for n in names if n.startswith(ds.get("feature_prefix") or "\0")])
        if not wanted:
            raise GitopsError(f"{path}: no column starts with feature_prefix {ds.get('feature_prefix')!r} "
                              f"(columns: {', '.join(names[:20])})")
        for column in [*wanted, ds["label"], *([ds["split_column"]] if ds.get("split_column") else [])]:
            if column not in names:
                raise GitopsError(f"{path}: no column {column!r} (columns: {', '.join(names[:20])})")
        if features is not None and wanted != features:
            raise GitopsError(f"{path}: its feature columns differ from those of {paths[0]}")
        features = wanted
        group_rows.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        del meta  # a footer is row groups x columns of metadata: one alive at a time
    task = ds.get("task", "classification")
    source = sources.ParquetSource([str(p) for p in paths], group_rows, features or [], ds["label"], task)
    splits = _file_splits(ds, listed, [sum(rows) for rows in group_rows], label)
    if ds.get("split_column"):
        order = ("train", "val", "test")
        codes = []  # one byte per row (0 train, 1 val, 2 test): never the column's strings for the whole table
        for group, (f, g) in enumerate(source.groups):  # one column, one row group at a time, the source's files
            values = source.read_column(group, ds["split_column"])
            names, inverse = np.unique(values.astype(str), return_inverse=True)
            unknown = [n for n in names if n not in SPLIT_NAMES]
            if unknown:
                raise GitopsError(f"{paths[f]}: column {ds['split_column']!r} holds {unknown[0]!r} (row group {g}); "
                                  "expected train, val, validation or test")
            table = np.asarray([order.index(SPLIT_NAMES[n]) for n in names], np.int8)
            codes.append(table[inverse.reshape(-1)])
        split_of = np.concatenate(codes) if codes else np.zeros(0, np.int8)
        splits = {sp: np.flatnonzero(split_of == i).astype(np.int64) for i, sp in enumerate(order)}
    return source, splits, source.starts[:-1]


def _array_record_records(ds: Mapping[str, Any], root: Path) -> tuple[Any, dict[str, np.ndarray] | None]:
    from array_record.python.array_record_module import ArrayRecordReader

    files, _, label = locate(ds, root)
    listed = sorted(files)
    counts = []
    for p in listed:  # each file's record count (its footer): a file that is not ArrayRecord is named here
        try:
            reader = ArrayRecordReader(str(files[p]))
            counts.append(int(reader.num_records()))
            reader.close()
        except Exception as exc:  # noqa: BLE001 - array_record raises plain RuntimeErrors
            raise GitopsError(f"{files[p]}: not an ArrayRecord file ({str(exc).splitlines()[0][:200]})") from None
    source = sources.ArrayRecordSource([str(files[p]) for p in listed], ds["x_key"], ds["y_key"],
                                       ds.get("task", "classification"))
    return source, _file_splits(ds, listed, counts, label)


def _file_splits(ds: Mapping[str, Any], listed: list[str], counts: list[int], label: str) -> dict[str, np.ndarray] | None:
    """Predefined splits from files (`split_files`: split -> glob patterns over the listed paths), as record indexes.

    Every listed file must match the patterns of exactly one split, and every pattern some file; records
    keep their positions in the list order (so re-encoding a file moves nothing). None without `split_files`.

    Raises:
        GitopsError: a file in no split or in two, a pattern that matches nothing (exit 1, naming them).
    """
    wanted = ds.get("split_files")
    if not wanted:
        return None
    if "val" in wanted and "validation" in wanted:
        raise GitopsError("data.dataset.split_files: give val or validation, not both")
    assigned, problems = checksum_list.assign_splits(wanted, listed, label)
    if problems:
        key, message = problems[0]
        raise GitopsError(f"data.dataset.split_files.{key}: {message}" if key else message)
    starts = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))]).astype(np.int64)
    chosen: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for i, path in enumerate(listed):
        chosen[SPLIT_NAMES[assigned[path]]].append(np.arange(starts[i], starts[i + 1], dtype=np.int64))
    return {split: np.concatenate(parts) if parts else np.zeros(0, np.int64) for split, parts in chosen.items()}


# --- statistics ---------------------------------------------------------------------------------------


def _label_range(source: Any, indexes: np.ndarray) -> tuple[float, float]:
    """(lowest, highest) label of the records `indexes`, read before a run folder exists so that a record
    the statistics pass did not read (validation, test, a sampled-out training record) fails here, named,
    and not at the first evaluation. Parquet reads only the label column; ArrayRecord decodes each record;
    image labels are folder names (the images were verified with the checksums).

    Raises:
        GitopsError: an undecodable record or a missing label (exit 1, naming the file).
    """
    import grain

    low, high = math.inf, -math.inf
    indexes = np.sort(np.asarray(indexes, np.int64))
    if not len(indexes) or isinstance(source, sources.ImageFolderSource):
        return low, high
    if isinstance(source, sources.ParquetSource):  # through the source's open files: no second copy of a footer
        cuts = np.searchsorted(indexes, source.starts)
        for g, (f, group) in enumerate(source.groups):
            if cuts[g] == cuts[g + 1]:
                continue
            try:
                y = source.read_column(g, source.label).astype(np.float64)[indexes[cuts[g]:cuts[g + 1]] - source.starts[g]]
            except (ValueError, TypeError) as exc:
                raise GitopsError(f"{source.files[f]}: row group {group}: the label column {source.label!r} is not "
                                  f"numbers ({exc})") from None
            if np.isnan(y).any():
                raise GitopsError(f"{source.files[f]}: row group {group}: the label column {source.label!r} has missing values")
            low, high = min(low, float(y.min())), max(high, float(y.max()))
        return low, high
    ds = grain.MapDataset.range(len(indexes)).batch(256, batch_fn=np.asarray).map(ReadBatch(source, indexes, None, None))
    for _, y in _reraise(iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(4, os.cpu_count() or 1)),
                                                                prefetch_buffer_size=2)))):
        if y.size:
            low, high = min(low, float(y.min())), max(high, float(y.max()))
    return low, high


def _first_label_outside(source: Any, indexes: np.ndarray, n_classes: int) -> str | None:
    """Where the first of records `indexes` (in file order) whose label is not in 0..n_classes-1 is:
    "<file>: row group G, row R: label V" (Parquet) or "<file>: record R: label V" (ArrayRecord); None
    for other sources. Only called once a label is known to be out of range (a second read)."""
    indexes = np.sort(np.asarray(indexes, np.int64))

    def outside(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, np.float64).reshape(len(y), -1)[:, 0]
        return np.flatnonzero((y < 0) | (y >= n_classes))

    if isinstance(source, sources.ParquetSource):
        cuts = np.searchsorted(indexes, source.starts)
        for g, (f, group) in enumerate(source.groups):
            rows = indexes[cuts[g]:cuts[g + 1]] - source.starts[g]
            if len(rows):
                y = source.read_column(g, source.label)[rows]
                bad = outside(y)
                if len(bad):
                    return f"{source.files[f]}: row group {group}, row {int(rows[bad[0]])}: label {float(y[bad[0]]):g}"
    elif isinstance(source, sources.ArrayRecordSource):
        for start in range(0, len(indexes), 256):
            chunk = indexes[start:start + 256]
            _, y = source.read_batch(chunk)
            bad = outside(y)
            if len(bad):
                index = int(chunk[bad[0]])
                f = int(np.searchsorted(source.starts, index, side="right")) - 1
                return f"{source.files[f]}: record {index - int(source.starts[f])}: label {float(y[bad[0]]):g}"
    return None


def _stats(source: Any, indexes: np.ndarray, scale: str, sample: int, seed: int) -> tuple[Any, Any, list[int], Any]:
    """(shift, divisor, input shape, label range) from one streamed pass (float64 sums) over `indexes`."""
    import grain

    if sample and sample < len(indexes):
        indexes = np.sort(np.random.default_rng([seed, 7]).choice(indexes, sample, replace=False))
    indexes = np.sort(indexes)
    if hasattr(source, "read_group"):  # Parquet: whole row groups, the split's rows picked out (vectorised)
        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            cuts = np.searchsorted(indexes, source.starts)
            for g in range(len(source.groups)):
                rows = indexes[cuts[g]:cuts[g + 1]] - source.starts[g]
                if len(rows):
                    x, y = source.read_group(g)
                    yield x[rows], y[rows]
        stream: Iterator = batches()
    else:
        ds = grain.MapDataset.range(len(indexes)).batch(256, batch_fn=np.asarray).map(ReadBatch(source, indexes, None, None))
        stream = _reraise(iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(4, os.cpu_count() or 1)),
                                                                    prefetch_buffer_size=2))))
    count, total, squares, low, high, shape = 0, None, None, None, None, None
    y_low, y_high = math.inf, -math.inf
    for x, y in stream:
        shape = list(x.shape[1:])
        flat = x.reshape(len(x), -1).astype(np.float64)
        if total is None:
            total, squares = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
            low, high = np.full(flat.shape[1], np.inf), np.full(flat.shape[1], -np.inf)
        count += len(flat)
        total += flat.sum(0)
        squares += (flat * flat).sum(0)
        low, high = np.minimum(low, flat.min(0)), np.maximum(high, flat.max(0))
        if y.size:
            y_low, y_high = min(y_low, float(y.min())), max(y_high, float(y.max()))
    shift = divisor = None
    if scale == "standardize":
        mean = total / count
        shift, divisor = mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    elif scale == "minmax":
        shift, divisor = low, high - low
    if divisor is not None:
        divisor = np.where(divisor > 1e-8, divisor, 1.0)
        shift, divisor = shift.astype(np.float32).tolist(), divisor.astype(np.float32).tolist()
    return shift, divisor, shape or [], (y_low, y_high)


# --- the entry point ------------------------------------------------------------------------------------


def load(doc: Mapping[str, Any], root: Path) -> StreamingDataset:
    """Verify, index, split and fit the preprocessing of a streaming dataset (`data.yaml` as a dict)."""
    ds = doc["dataset"]
    name = ds["name"]
    root = Path(root)
    classes: list[str] | None = None
    block_starts, skipped = None, []
    if name == "image_folder":
        source, splits, classes, skipped = _image_records(ds, root)
        task = "classification"
    elif name == "parquet":
        source, splits, block_starts = _parquet_records(ds, root)
        task = ds.get("task", "classification")
    else:
        source, splits = _array_record_records(ds, root)
        task = ds.get("task", "classification")
    if len(source) == 0:
        raise GitopsError(f"{ds['checksums']}: the dataset {ds['path']} holds no records")
    cfg_splits = doc["splits"]
    if splits is None:
        tr, va, te = split_indexes(len(source), cfg_splits["validation"], cfg_splits["test"], cfg_splits["seed"])
    else:
        tr, va, te = splits["train"], splits["val"], splits["test"]
        if not len(va) and cfg_splits["validation"]:  # no val folder/rows: a fraction of train, by record index
            keep, va, _ = split_indexes(len(tr), cfg_splits["validation"], 0.0, cfg_splits["seed"])
            tr, va = tr[np.sort(keep)], tr[np.sort(va)]
    if len(tr) == 0:
        raise GitopsError(f"{ds['path']}: the training split is empty")
    sample = int(ds.get("stats_sample", 0))
    shift, divisor, shape, (y_low, y_high) = _stats(source, tr, doc["preprocessing"]["scale"], sample, cfg_splits["seed"])
    rest = np.concatenate([va, te, tr if sample and sample < len(tr) else tr[:0]])  # records the pass did not read
    rest_low, rest_high = _label_range(source, rest)
    y_low, y_high = min(y_low, rest_low), max(y_high, rest_high)
    declared = ds.get("num_classes")
    if task == "classification":
        found = len(classes) if classes is not None else int(y_high) + 1
        if declared is not None and classes is not None and declared != len(classes):
            raise GitopsError(f"{ds['path']}: data.dataset.num_classes is {declared} but there are {len(classes)} "
                              f"label folders ({', '.join(classes[:10])})")
        n_classes = declared or found
        if y_low < 0 or y_high >= n_classes:
            where = _first_label_outside(source, np.concatenate([tr, rest]), n_classes)
            raise GitopsError(f"{where or ds['path']}: labels must be class indexes 0..{n_classes - 1} "
                              f"(found {y_low:g}..{y_high:g})")
        outputs = n_classes
    else:
        n_classes, outputs = None, int(np.prod(source[int(tr[0])][1].shape) or 1)
    prep = Preprocessing(doc["preprocessing"]["scale"], shift, divisor, shape, task, n_classes, outputs,
                         labels=classes, features=list(source.features) if name == "parquet" else None)
    return StreamingDataset(source, StreamSplit(np.asarray(tr, np.int64)), StreamSplit(np.asarray(va, np.int64)),
                            StreamSplit(np.asarray(te, np.int64)), prep, seed=int(cfg_splits["seed"]),
                            workers=int(ds.get("workers", 0)), prefetch=int(ds.get("prefetch", 2)),
                            block_starts=block_starts, skipped=skipped, remainder=ds.get("remainder", "drop"))


class _Failure:
    """An exception raised in the read-ahead thread, handed to the consumer to raise."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class Feed:
    """The training batches of one run: a Grain iterator whose state goes into every checkpoint.

    `next()` returns this process's (x, y) of the next global batch ((x, y, w) with `remainder: pad`),
    passed through `place` (for training: onto the device, `jax.device_put` or the mesh's
    `make_array_from_process_local_data`).
    With `ahead > 0` a read-ahead thread takes batches from Grain and places them while the step runs,
    keeping up to `ahead` placed batches ready (the pattern of flax's `prefetch_to_device`); the Grain
    iterator's state is noted with each batch, so `state()` describes the batches handed out, not
    those read ahead. `state()` is what a checkpoint keeps:
    `{"grain": <the iterator's get_state()>, "workers": N, "batches": <batches taken>}`;
    `restore(state)` makes the next `next()` continue from there: through Grain's `set_state` when the
    worker count is the same, else (workers are not part of the fingerprint, so a resume may change
    them) by starting the random-access pipeline at that batch, which yields the same batches.
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, workers: int | None = None, place: Any = None, ahead: int = 2):
        self.dataset = dataset
        self.pipeline = dataset.train_dataset(batch_size, seed, process_index, process_count)
        self.workers = dataset.workers if workers is None else workers
        self.place, self.ahead = place, int(ahead)
        self._it: Any = None
        self._pending: Mapping | None = None
        self._start = 0  # batch the current iterator started at
        self.taken = 0  # batches handed out since the start of training
        self._thread: threading.Thread | None = None
        self._queue: Any = None
        self._stop = threading.Event()
        self._grain_state: Any = None  # the iterator's state after the last batch handed out (read-ahead mode)

    def restore(self, state: Mapping | None) -> None:
        """Continue from a checkpoint's `state()` (None: from the first batch); closes the current iterator.

        The next `next()` resumes exactly there, as the class docstring explains.
        """
        self.close()
        self._pending = state
        self.taken = int(state["batches"]) if state else 0

    def _iterator(self) -> Any:
        if self._it is None:
            pending, self._pending = self._pending, None
            if pending is not None and int(pending.get("workers", -1)) == self.workers:
                self._start = 0
                self._it = self.dataset.iterator(self.pipeline, workers=self.workers)
                self._it.set_state(dict(pending["grain"]))
            else:
                self._start = self.taken
                pipeline = self.pipeline[self._start:] if self._start else self.pipeline
                self._it = self.dataset.iterator(pipeline, workers=self.workers)
        return self._it

    def _read_ahead(self, it: Any, out: Any, stop: threading.Event) -> None:
        """The read-ahead thread: (placed batch, the iterator's state after it) into `out` until `stop`."""
        import queue

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        try:
            while not stop.is_set():
                batch = next(it)
                noted = None if self._start else it.get_state()
                put((self.place(*batch) if self.place is not None else batch, noted))
        except BaseException as exc:  # noqa: BLE001 - handed to next(), which raises it in the training thread
            if not stop.is_set():
                put((_Failure(exc), None))

    def next(self) -> tuple[Any, ...]:
        """This process's next training batch: (x, y), x (batch_size // process_count, *input_shape), placed;
        with `remainder: pad` (x, y, w), `w` float32 0 on padding rows (`StreamingDataset.train_dataset`).

        Raises GitopsError naming the bad file when a record cannot be read (Grain wraps worker errors;
        `record_error` unwraps them).
        """
        it = self._iterator()
        try:
            if self.ahead <= 0:
                batch = next(it)
                batch = self.place(*batch) if self.place is not None else batch
            else:
                if self._thread is None:
                    import queue

                    self._grain_state = None if self._start else it.get_state()
                    self._stop = threading.Event()
                    self._queue = queue.Queue(maxsize=self.ahead)
                    self._thread = threading.Thread(target=self._read_ahead, args=(it, self._queue, self._stop),
                                                    name="gitops-feed-read-ahead", daemon=True)
                    self._thread.start()
                batch, noted = self._queue.get()
                if isinstance(batch, _Failure):
                    raise batch.exc
                self._grain_state = noted
        except GitopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - Grain re-raises worker errors wrapped
            raise record_error(exc) from None
        self.taken += 1
        return batch

    def state(self) -> dict:
        """The JSON state a checkpoint keeps (see the class docstring)."""
        if self._it is None:
            if self._pending is not None:
                return dict(self._pending)
            self._iterator()
        if self._start:  # an iterator started mid-stream: its own state counts from there
            return {"grain": None, "workers": -1, "batches": self.taken}
        grain = self._grain_state if self._thread is not None else self._it.get_state()
        return {"grain": grain, "workers": self.workers, "batches": self.taken}

    def close(self) -> None:
        """Stop the read-ahead thread, the iterator and its worker processes (best effort; safe to call twice)."""
        import queue

        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            while True:  # unblock a producer waiting for room
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001, S110 - closing worker processes is best effort
                pass
        if thread is not None:
            thread.join(timeout=5)
