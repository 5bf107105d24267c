"""Random-access record sources of the streaming datasets (Grain's `RandomAccessDataSource` protocol).

Each source is `len()` + `[index] -> (x, y)` with `x` float32 raw inputs (pixels 0..255, table values)
and `y` an int32 class index or float32 targets; they are picklable, so Grain's worker processes
rebuild them, and open files lazily in each worker. None of them reads a whole dataset into memory:

- `ImageFolderSource`: one PNG/JPEG per record, decoded and resized by Pillow;
- `ParquetSource`: rows of Parquet files read one row group at a time (pyarrow), the last two row
  groups kept per worker; the index order `block_order` visits row groups in a shuffled order and
  rows shuffled inside each group, so a shuffled epoch reads every row group once;
- `ArrayRecordSource`: records of ArrayRecord files (Grain's native format), each an `.npz`
  (arrays `x_key`, `y_key`) as written by `numpy.savez`; `read_batch` reads and decodes a whole batch
  at once (`NpzLayout`).

`read_batch(source, indexes)` is how the pipeline reads: a batch of records, stacked.

Errors name the file: `RecordError` (a `GitopsError`, exit 1).
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gitops.errors import GitopsError

IMAGE_MODES = {1: "L", 3: "RGB"}
_NPZ_LOCK = threading.Lock()


class RecordError(GitopsError):
    """A record that cannot be read (undecodable image, missing column); the message names the file."""


def decode_image(path: Path | BinaryIO, size: Sequence[int], channels: int, *, label: str | None = None,
                 max_pixels: int | None = None) -> np.ndarray:
    """Decode and resize one image to float32 `(H, W, C)` with values 0..255 (Pillow, bilinear).

    `path` is a file or an open binary file object (a server's request bytes); `label` names it in
    messages (default: `path`). `max_pixels` refuses a larger image before its pixels are decoded.
    Raises RecordError naming it when Pillow cannot decode it or it is too large.
    """
    from PIL import Image, UnidentifiedImageError

    label = label or str(path)
    try:  # DecompressionBombError: over twice Pillow's MAX_IMAGE_PIXELS (image_problem refuses it in training)
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise RecordError(f"{label}: the image is {img.width}x{img.height} pixels; at most {max_pixels}")
            img = img.convert(IMAGE_MODES[channels])
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, np.float32)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) if isinstance(path, (str, Path)) else str(exc).replace(repr(path), "these bytes")
        raise RecordError(f"{label}: cannot decode the image ({reason})") from None
    return array.reshape(size[0], size[1], channels)


def image_problem(path: Path) -> str | None:
    """None when Pillow recognises and verifies the file (header and PNG CRCs), else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        reason = str(exc).replace(repr(str(path)), "").replace(str(path), "").strip()  # the caller names the file
        return f"cannot decode the image ({type(exc).__name__}: {reason})"
    return None


class ImageFolderSource:
    """Images `files[i]` with class `labels[i]`, decoded to `image_size` with `channels` channels."""

    def __init__(self, files: Sequence[str], labels: np.ndarray, image_size: Sequence[int], channels: int):
        self.files = list(files)
        self.labels = np.asarray(labels, np.int32)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        return decode_image(Path(self.files[index]), self.image_size, self.channels), self.labels[index]


@functools.cache  # once per process (and threshold)
def fix_mmap_threshold(threshold: int = 4 << 20) -> bool:
    """Serve allocations of `threshold` bytes (default 4 MiB) or more from their own mappings (glibc only).

    glibc's malloc raises its mmap threshold after a large block is freed (up to 32 MiB), so from then
    on row-group sized buffers come from the heap, whose freed space is kept by the process: peak RSS
    then grows with the number of row groups read, i.e. with the dataset. A fixed threshold (which
    also turns the dynamic one off; mallopt(3), `M_MMAP_THRESHOLD`) returns each such buffer to the
    system when it is freed. Once per process; False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):
        return False


class ParquetSource:
    """Rows of Parquet files as (features, label); reads one row group at a time.

    Args:
        files: local Parquet files, in order.
        group_rows: per file, the row count of each row group (from the footers).
        features: feature column names (their values are concatenated, float32).
        label: the label column.
        task: classification (int32 labels) or regression (float32, shape (1,)).
    """

    CACHED_GROUPS = 2
    OPEN_FILES = 4  # open files kept per process: each holds its footer (row groups x columns of metadata)

    def __init__(self, files: Sequence[str], group_rows: Sequence[Sequence[int]], features: Sequence[str], label: str,
                 task: str):
        self.files = list(files)
        self.features = list(features)
        self.label = label
        self.task = task
        self.groups = [(f, g) for f, rows in enumerate(group_rows) for g in range(len(rows))]
        sizes = np.asarray([r for rows in group_rows for r in rows], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"], state["_handles"], state["_lock"] = OrderedDict(), OrderedDict(), None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def group_of(self, index: int) -> int:
        """The row group (index into `groups`) holding record `index`, by binary search over the group starts."""
        return int(np.searchsorted(self.starts, index, side="right") - 1)

    def _read(self, group: int, columns: list[str]) -> Any:
        """The pyarrow Table of `columns` of one row group, through this process's few open files."""
        import pyarrow.parquet as pq

        f, g = self.groups[group]
        fix_mmap_threshold()  # in every process that reads row groups (Grain workers included)
        handle = self._handles.get(f)
        if handle is None:
            handle = self._handles[f] = pq.ParquetFile(self.files[f])
            while len(self._handles) > self.OPEN_FILES:  # a table of thousands of files: memory stays flat
                self._handles.popitem(last=False)
        self._handles.move_to_end(f)
        # use_threads=False: Grain's reader threads call in here; pyarrow's own pool under them can deadlock
        return handle.read_row_group(g, columns=columns, use_threads=False)

    def read_group(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """Features `(rows, F)` float32 and labels of one row group.

        Raises:
            RecordError: the row group cannot be read or converted (naming the file and the group).
        """
        f, g = self.groups[group]
        try:
            table = self._read(group, [*self.features, self.label])
            # one (rows, F) array filled column by column: no per-column float32 copies, no stacking temporaries
            x = np.empty((table.num_rows, len(self.features)), np.float32)
            for i, c in enumerate(self.features):
                x[:, i] = table.column(c).to_numpy(zero_copy_only=False)
            y = table.column(self.label).to_numpy(zero_copy_only=False)
            del table
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise RecordError(f"{self.files[f]}: cannot read row group {g}: {exc}") from None
        y = y.astype(np.int32) if self.task == "classification" else y.astype(np.float32).reshape(-1, 1)
        return x, y

    def read_column(self, group: int, column: str) -> np.ndarray:
        """One column of one row group as NumPy (numbers with a missing value come as float NaN, strings as
        objects); reads nothing else, through the same open files as the records.

        Raises:
            RecordError: the row group cannot be read (naming the file and the group).
        """
        f, g = self.groups[group]
        try:
            return self._read(group, [column]).column(0).to_numpy(zero_copy_only=False)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise RecordError(f"{self.files[f]}: cannot read row group {g}: {exc}") from None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        group = self.group_of(index)
        with self._lock:  # reader threads share the cache and the open files
            if group not in self._cache:
                self._cache[group] = self.read_group(group)
                while len(self._cache) > self.CACHED_GROUPS:
                    self._cache.popitem(last=False)
            x, y = self._cache[group]
        row = index - int(self.starts[group])
        # copies: a view would keep its whole row group alive for as long as the record lives (in a batch
        # being assembled, in a prefetch buffer), so a batch drawn from many groups held all of them
        return x[row].copy(), y[row].copy()


def aligned_empty(shape: Sequence[int], dtype: Any, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts at a multiple of `alignment` bytes.

    XLA's CPU client takes a host array of 64-byte aligned data as the device buffer itself;
    `jax.device_put` copies any other (NumPy's own allocations are 16-byte aligned), 3 MB per batch of
    the feed.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    block = np.empty(nbytes + alignment, np.uint8)
    skip = -block.ctypes.data % alignment
    return block[skip:skip + nbytes].view(dtype).reshape(tuple(shape))


def read_batch(source: Any, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Records `indexes` of `source` stacked into `(x, y)` batches, in that order.

    A source with its own `read_batch` (one vectorised read: `ArrayRecordSource`) answers itself; any
    other is read record by record and stacked as Grain's default `batch` does (`np.stack`).
    """
    own = getattr(source, "read_batch", None)
    if own is not None:
        return own(indexes)
    records = [source[int(i)] for i in indexes]
    return np.stack([r[0] for r in records]), np.stack([r[1] for r in records])


class NpzLayout:
    """Where the arrays of an uncompressed `.npz` record (as `numpy.savez` writes it) lie in its bytes.

    Records written by the same `np.savez` call with arrays of the same shapes and dtypes have the same
    bytes everywhere but in the arrays' data and each member's CRC-32 and modification time (in the
    local and the central zip headers). `fixed` lists those same-in-every-record byte spans; a batch
    whose records all have this length and these bytes is decoded with one `np.frombuffer` view per
    array (`decode`), the same values `np.load` gives record by record. Anything else (compressed
    members, Fortran order, object arrays, other zip layouts) has no layout: `of` returns None.
    """

    def __init__(self, length: int, fixed: list[tuple[int, int]], reference: bytes,
                 arrays: dict[str, tuple[int, tuple[int, ...], np.dtype]]):
        self.length, self.fixed, self.arrays = length, fixed, arrays
        self.reference = np.frombuffer(reference, np.uint8)

    @classmethod
    def of(cls, raw: bytes, keys: Sequence[str]) -> NpzLayout | None:
        """The layout of one record holding arrays `keys` (the others' bytes are fixed too); None if it has none."""
        import struct
        import zipfile

        try:
            archive = zipfile.ZipFile(io.BytesIO(raw))
            infos = archive.infolist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError):
            return None
        names = {i.filename: i for i in infos}
        if any(f"{k}.npy" not in names for k in keys) or any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            return None
        varying, arrays = [], {}
        for info in infos:
            at = info.header_offset
            if raw[at:at + 4] != b"PK\x03\x04":
                return None
            varying.append((at + 10, at + 18))  # local header: modification time and date, CRC-32
            name_len, extra_len = struct.unpack_from("<HH", raw, at + 26)
            start = at + 30 + name_len + extra_len
            member = io.BytesIO(raw[start:start + info.file_size])
            try:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    return None
            except ValueError:
                return None
            if not info.filename.endswith(".npy") or fortran or dtype.hasobject:
                return None
            data = start + member.tell()
            if member.tell() + math.prod(shape) * dtype.itemsize != info.file_size:
                return None
            arrays[info.filename[:-4]] = (data, tuple(shape), dtype)
            varying.append((data, data + math.prod(shape) * dtype.itemsize))
        at = archive.start_dir  # central directory: each entry's time, date and CRC-32 vary too
        for _ in infos:
            if raw[at:at + 4] != b"PK\x01\x02":
                return None
            varying.append((at + 12, at + 20))
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, at + 28)
            at += 46 + name_len + extra_len + comment_len
        fixed, cursor = [], 0
        for a, b in sorted(varying):
            if a > cursor:
                fixed.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < len(raw):
            fixed.append((cursor, len(raw)))
        return cls(len(raw), fixed, raw, arrays)

    def matches(self, rows: np.ndarray) -> bool:
        """Whether every row of `rows` (records as uint8 rows of `length` bytes) has this layout's fixed bytes."""
        return all(bool((rows[:, a:b] == self.reference[a:b]).all()) for a, b in self.fixed)

    def decode(self, rows: np.ndarray, key: str, order: np.ndarray | None = None) -> np.ndarray:
        """Array `key` of every row, stacked: `(rows, *shape)` in the stored dtype (a copy, `aligned_empty`);
        with `order` (row numbers), of rows `order` in that order (`rows[order]`, in the same one copy)."""
        start, shape, dtype = self.arrays[key]
        size = math.prod(shape) * dtype.itemsize
        order = np.arange(len(rows)) if order is None else order
        out = aligned_empty((len(order), size), np.uint8)
        np.take(rows[:, start:start + size], order, axis=0, out=out)
        return out.view(dtype).reshape(len(order), *shape)


class ArrayRecordSource:
    """Records of ArrayRecord files, each an `.npz` holding arrays `x_key` (inputs) and `y_key` (label).

    `read_batch` reads a batch of records in file order in the calling thread (`read_sorted`) and, when
    the records share one `NpzLayout` (what `np.savez` writes for fixed shapes), decodes the whole
    batch with one view per array instead of an `np.load` per record (about 100 us each: the
    bottleneck of a streamed compute-bound model). `[i]` is a batch of one.
    """

    threaded = False  # reads hold the GIL (`read_sorted`): Grain reads it from the thread asking, not a pool

    def __init__(self, files: Sequence[str], x_key: str, y_key: str, task: str):
        self.files = list(files)
        self.x_key, self.y_key, self.task = x_key, y_key, task
        self._readers: list[Any] = [None] * len(self.files)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._layout: NpzLayout | None = None
        counts = [self._reader(f).num_records() for f in range(len(self.files))]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._readers = [None] * len(self.files)  # opened again in each Grain worker process

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_readers": [None] * len(self.files), "_lock": None, "_read_lock": None, "_layout": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._read_lock = threading.Lock(), threading.Lock()

    def _reader(self, f: int) -> Any:
        reader = self._readers[f]
        if reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            with self._lock:
                reader = self._readers[f]
                if reader is None:
                    problem = None
                    try:  # random access, no read-ahead, no reader pool: records are read one by one in the
                        # calling thread (`read_sorted`), each chunk straight from the file (riegeli's default buffer)
                        reader = ArrayRecordReader(self.files[f], "readahead_buffer_size:0,max_parallelism:0")
                        if not reader.ok():  # a broken file opens "not ok"; closing it raises the reason
                            problem = "unreadable"
                            reader.close()
                    except Exception as exc:  # noqa: BLE001 - array_record raises plain RuntimeErrors
                        problem = str(exc)
                    if problem is not None:
                        raise RecordError(f"{self.files[f]}: not an ArrayRecord file ({problem})")
                    self._readers[f] = reader
        return reader

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.read_batch([index])
        return x[0], y[0]

    def read_sorted(self, indexes: Sequence[int]) -> tuple[list[bytes], np.ndarray]:
        """`(records, rank)`: the bytes of records `indexes` in file order (sorted by index), and `rank`,
        where each of `indexes` is in that list (`records[rank[i]]` is record `indexes[i]`; int64).

        Reading in file order visits each file's chunks forward and decodes a chunk holding several of
        them once; one `seek` + `read` per record in the calling thread. Not array_record's batch
        `read(indices)`: that hands every chunk to a task on its global pool of 64 threads, whose
        wake-ups and spinning cost more CPU than the reads on a machine of few cores, CPU taken from the
        training step's own threads (on 2 cores: 12.5 ms against 16 ms per 1024 zstd records of 3 KB,
        5 ms against 7 ms uncompressed). One reader per file keeps the position, so reads of one source
        take turns (`_read_lock`); the calls hold the GIL anyway.
        """
        indexes = np.asarray(indexes, np.int64).reshape(-1)
        if len(indexes) and (indexes.min() < 0 or indexes.max() >= len(self)):
            raise RecordError(f"{', '.join(self.files[:3])}: no record {int(indexes.max())} (they hold {len(self)})")
        order = np.argsort(indexes, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        wanted = indexes[order]
        cuts = np.searchsorted(wanted, self.starts)  # the sorted records of file f: wanted[cuts[f]:cuts[f + 1]]
        records: list[bytes] = []
        keep = records.append
        for f in np.flatnonzero(np.diff(cuts)).tolist():
            reader = self._reader(f)
            seek, read = reader.seek, reader.read
            try:
                with self._read_lock:
                    for position in (wanted[cuts[f]:cuts[f + 1]] - self.starts[f]).tolist():
                        seek(position)
                        keep(read())
            except Exception as exc:  # noqa: BLE001 - array_record raises plain RuntimeErrors
                raise RecordError(f"{self.files[f]}: cannot read records ({exc})") from None
        return records, rank

    def read_batch(self, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Records `indexes` as `(x, y)`: x `(n, *shape)` float32, y `(n,)` int32 classes or `(n, k)` float32 targets.

        The records come in file order (`read_sorted`); the layout's decode puts them back in the order
        asked with the copy it makes anyway. Raises RecordError naming the files when a record is not an
        `.npz` with both arrays.
        """
        raws, rank = self.read_sorted(indexes)
        x = y = None
        lengths = list(map(len, raws))
        if raws and min(lengths) == max(lengths):
            layout = self._layout
            if layout is None or layout.length != len(raws[0]):
                with _NPZ_LOCK:  # .npy headers are parsed with ast.literal_eval (see `_load`)
                    layout = self._layout = NpzLayout.of(raws[0], (self.x_key, self.y_key))
            if layout is not None:
                rows = np.frombuffer(b"".join(raws), np.uint8).reshape(len(raws), layout.length)
                if layout.matches(rows):
                    x, y = layout.decode(rows, self.x_key, rank), layout.decode(rows, self.y_key, rank)
        if x is None:  # records of other layouts: np.load, one at a time
            asked = np.asarray(indexes).reshape(-1).tolist()
            pairs = [self._load(raws[r], i) for r, i in zip(rank.tolist(), asked, strict=True)]
            try:
                x, y = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            except ValueError as exc:
                raise RecordError(f"{', '.join(self.files[:3])}: records of one batch differ in shape ({exc})") from None
        x = x.astype(np.float32, copy=False)
        if self.task == "classification":
            return x, y.astype(np.int32, copy=False)
        return x, y.astype(np.float32, copy=False).reshape(len(y), -1)

    def _load(self, raw: bytes, index: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            # one decode at a time per process: numpy parses .npy headers with ast.literal_eval, and
            # CPython 3.11's parser fails under concurrent threads ("AST constructor recursion depth mismatch")
            with _NPZ_LOCK, np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                x, y = npz[self.x_key], npz[self.y_key]
        except (KeyError, ValueError, OSError, EOFError) as exc:
            raise RecordError(f"record {index} of {', '.join(self.files[:3])}: not an .npz with arrays "
                              f"{self.x_key!r} and {self.y_key!r} ({exc})") from None
        return np.asarray(x), np.asarray(y)
