"""Random-access record sources of the streaming datasets (Grain's `RandomAccessDataSource` protocol).

Each source is `len()` + `[index] -> (x, y)` with `x` float32 raw inputs (pixels 0..255, table values)
and `y` an int32 class index or float32 targets; they are picklable, so Grain's worker processes
rebuild them, and open files lazily in each worker. None of them reads a whole dataset into memory:

- `ImageFolderSource`: one PNG/JPEG per record, decoded and resized by Pillow;
- `ParquetSource`: rows of Parquet files read one row group at a time (pyarrow), the last two row
  groups kept per worker; the index order `block_order` visits row groups in a shuffled order and
  rows shuffled inside each group, so a shuffled epoch reads every row group once;
- `ArrayRecordSource`: records of ArrayRecord files (Grain's native format), each an `.npz`
  (arrays `x_key`, `y_key`) as written by `numpy.savez`.

Errors name the file: `RecordError` (a `GitopsError`, exit 1).
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gitops.errors import GitopsError

IMAGE_MODES = {1: "L", 3: "RGB"}
_NPZ_LOCK = threading.Lock()


class RecordError(GitopsError):
    """A record that cannot be read (undecodable image, missing column); the message names the file."""


def decode_image(path: Path, size: Sequence[int], channels: int) -> np.ndarray:
    """Decode and resize one image to float32 `(H, W, C)` with values 0..255 (Pillow, bilinear)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(IMAGE_MODES[channels])
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RecordError(f"{path}: cannot decode the image ({exc})") from None
    return array.reshape(size[0], size[1], channels)


def image_problem(path: Path) -> str | None:
    """None when Pillow recognises and verifies the file (header and PNG CRCs), else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        return f"cannot decode the image ({type(exc).__name__}: {exc})"
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


class ArrayRecordSource:
    """Records of ArrayRecord files, each an `.npz` holding arrays `x_key` (inputs) and `y_key` (label)."""

    def __init__(self, files: Sequence[str], x_key: str, y_key: str, task: str):
        self.files = list(files)
        self.x_key, self.y_key, self.task = x_key, y_key, task
        self._source: Any = None
        self._length = len(self._open())
        self._source = None

    def _open(self) -> Any:
        if self._source is None:
            from grain.sources import ArrayRecordDataSource

            try:
                self._source = ArrayRecordDataSource(self.files)
            except Exception as exc:  # noqa: BLE001 - array_record raises plain RuntimeErrors
                raise RecordError(f"{', '.join(self.files[:3])}: not ArrayRecord files ({exc})") from None
        return self._source

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raw = self._open()[int(index)]
        try:
            # one decode at a time per process: numpy parses .npy headers with ast.literal_eval, and
            # CPython 3.11's parser fails under concurrent threads ("AST constructor recursion depth mismatch")
            with _NPZ_LOCK, np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                x, y = npz[self.x_key], npz[self.y_key]
        except (KeyError, ValueError, OSError) as exc:
            raise RecordError(f"record {index} of {', '.join(self.files[:3])}: not an .npz with arrays "
                              f"{self.x_key!r} and {self.y_key!r} ({exc})") from None
        x = np.asarray(x, np.float32)
        y = np.asarray(y).astype(np.int32) if self.task == "classification" else np.asarray(y, np.float32).reshape(-1)
        return x, y
