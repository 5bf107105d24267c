"""`gitops predict`'s input files -> a float32 batch of raw inputs (the saved preprocessing comes after).

Formats, by suffix (case-insensitive):

- `.npy`, `.npz` (`key` picks the array), `.json` (a list, or `{"instances": [...]}`): one example per
  first-axis entry;
- `.csv`: one example per row. A first row with any cell that is not a number is a header. With a
  header and the model's feature names known (`InputSpec.features`: what training recorded in
  preprocessing.json, or the config's `data.dataset.features`), columns are picked and ordered by
  name and any others (a label column, an id) ignored; a missing feature column is an error naming
  it. Otherwise columns are taken by position (a header is skipped, and must then have exactly as
  many columns as the model takes features);
- an image file (any format Pillow opens: `.png`, `.jpg`/`.jpeg`, `.gif`, `.bmp`, `.tif`, `.webp`,
  ...; `image_suffixes`), for a model trained on an `image_folder`: one example, decoded, converted
  and resized by `gitops.learn.sources.decode_image` with the training data's `image_size` and
  `channels`, the very function training reads records with; pixel values 0..255.

Every problem with an input file is a `UsageError` (exit 2) naming the file.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gitops.errors import UsageError

MAX_INPUT_BYTES = 512 * 1024**2
ARRAY_SUFFIXES = (".npy", ".npz", ".json", ".csv")


@dataclass(frozen=True)
class InputSpec:
    """What a model takes as raw inputs, for reading files into them.

    model: how messages name the model (the reference given to predict).
    input_shape: one example's shape, e.g. (16,) or (16, 16, 1); None for a language model (any length).
    features: the feature column names in input order (tables), None where unknown.
    image_size: (height, width) training resized images to, None unless trained on an image folder.
    channels: 1 (grayscale) or 3 (RGB) with `image_size`.
    dataset: the training data's `data.dataset.name`, for messages.
    """

    model: str = "the model"
    input_shape: tuple[int, ...] | None = None
    features: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    channels: int = 3
    dataset: str | None = None

    @property
    def n_features(self) -> int | None:
        """Numbers per example (the product of `input_shape`), None for a language model."""
        return math.prod(self.input_shape) if self.input_shape is not None else None


def spec_of(loaded: Any, model: str = "the model") -> InputSpec:
    """The `InputSpec` of a loaded model (`gitops.api.load`): its preprocessing and resolved data config.

    Feature names come from preprocessing.json (`features`, recorded since training writes it), else
    from an explicit `data.dataset.features` list; a run trained before, on `feature_prefix`, has none.
    """
    from gitops import config as config_lib

    pre = getattr(loaded, "preprocessing", None)
    data = getattr(getattr(loaded, "config", None), "data", None)
    ds = config_lib.thaw(getattr(data, "dataset", None) or {})
    task = getattr(pre, "task", None)
    shape = tuple(int(d) for d in pre.input_shape) if pre is not None and task != "language_modeling" else None
    names = getattr(pre, "features", None) or (ds.get("features") if ds.get("name") == "parquet" else None)
    image_size = tuple(int(s) for s in ds["image_size"]) if ds.get("name") == "image_folder" else None
    return InputSpec(model, shape, tuple(names) if names else None, image_size, int(ds.get("channels") or 3),
                     ds.get("name"))


@functools.cache
def image_suffixes() -> frozenset[str]:
    """Suffixes of the image formats Pillow can open (`.png`, `.jpg`, ...): what an image folder trains on.

    Pillow's stub formats (HDF5 `.h5`, GRIB, BUFR, WMF), which open only through a handler an
    application registers, are left out: an `.h5` is far likelier an array file than an image.
    """
    from PIL import Image, ImageFile

    def real(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        return factory is not None and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if real(fmt))


def is_image(path: Path) -> bool:
    """True when `path`'s suffix is an image format (and not one of the array formats)."""
    suffix = Path(path).suffix.lower()
    return suffix not in ARRAY_SUFFIXES and suffix in image_suffixes()


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (inputs must be finite)")


def read_inputs(path: Path, key: str | None = None, spec: InputSpec | None = None) -> np.ndarray:
    """A float32 batch from a file (one example per row / first axis; one per image file).

    `spec` (from `spec_of`) decides how a CSV header and an image are read; without it a CSV is read by
    position and an image is refused.

    Raises UsageError for a missing, oversized or unreadable file, an image for a model not trained on
    images, a CSV without a named feature column, and non-finite values (NaN, Infinity, a number too
    large for float32) in any format: the same rule as the server's 400.
    """
    spec = spec or InputSpec()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such input file")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise UsageError(f"{path}: larger than {MAX_INPUT_BYTES} bytes")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if not names:
                    raise UsageError(f"{path}: the .npz holds no arrays")
                if key is not None and key not in names:
                    raise UsageError(f"{path}: no array {key!r} (arrays: {', '.join(names)})")
                array = archive[key or names[0]]
        elif suffix == ".json":
            doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
            if isinstance(doc, dict):
                if "instances" not in doc:
                    raise UsageError(f"{path}: expected a list or {{\"instances\": [...]}}")
                doc = doc["instances"]
            array = np.asarray(doc, dtype=np.float32)
        elif suffix == ".csv":
            array = read_csv(path, spec)
        elif is_image(path):
            array = read_image(path, spec)
        else:
            raise UsageError(f"{path}: unknown input format {suffix!r}; use .npy, .npz, .json, .csv or, for a "
                             "model trained on images, an image file (.png, .jpg, ...)")
    except (ValueError, OSError) as exc:
        raise UsageError(f"{path}: cannot read inputs: {exc}") from None
    if array.dtype == object:
        raise UsageError(f"{path}: inputs must be numbers")
    if array.dtype.kind in "fiub":
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        first = [int(i) for i in np.argwhere(~np.isfinite(array))[0]]
        raise UsageError(f"{path}: non-finite input at index {first} (NaN, Infinity or beyond float32's range; "
                         "inputs must be finite, as the server requires)")
    return array


def read_image(path: Path, spec: InputSpec) -> np.ndarray:
    """One image as a batch of one: float32 (1, H, W, C), pixel values 0..255, decoded like training's records.

    Raises UsageError when the model was not trained on an image folder, or the file does not decode.
    """
    from PIL import Image

    from gitops.learn import sources

    if spec.image_size is None:
        trained = f" (it was trained on {spec.dataset!r} data)" if spec.dataset else ""
        raise UsageError(f"{path}: an image, but {spec.model} was not trained on image files{trained}; "
                         "give its inputs as .npy, .npz, .json or .csv")
    try:
        return sources.decode_image(path, spec.image_size, spec.channels)[None]
    except sources.RecordError as exc:
        raise UsageError(str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise UsageError(f"{path}: cannot decode the image ({exc})") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv(path: Path, spec: InputSpec) -> np.ndarray:
    """Rows of a CSV as float32 (rows, columns), columns picked by header name when the model's are known.

    See the module docstring for the rules. Blank lines are skipped; a UTF-8 byte-order mark is not
    part of the first cell.

    Raises UsageError: a feature column missing from the header (named), a header whose width differs
    from the model's feature count when names are unknown, rows of different widths, a cell that is not
    a number (line and cell named).
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        return np.zeros((0, spec.n_features or 0), np.float32)
    header: list[str] | None = None
    if not all(_is_number(cell) for cell in rows[0][1]):
        header = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
    columns: list[int] | None = None  # None: every column, by position
    if header is not None and spec.features:
        missing = [name for name in spec.features if name not in header]
        if missing:
            raise UsageError(f"{path}: no column {missing[0]!r} in the header ({', '.join(header[:20])}); "
                             f"{spec.model} takes the columns {', '.join(spec.features)}")
        twice = [name for name in spec.features if header.count(name) > 1]
        if twice:
            raise UsageError(f"{path}: the header names the column {twice[0]!r} more than once")
        columns = [header.index(name) for name in spec.features]
    elif header is not None and spec.n_features is not None and len(header) != spec.n_features:
        if spec.image_size is not None:
            raise UsageError(f"{path}: {spec.model} was trained on images: give the image files, or rows of "
                             f"{spec.n_features} pixel values (0..255)")
        raise UsageError(f"{path}: the header has {len(header)} columns but {spec.model} takes {spec.n_features} "
                         "features, and its feature names are not recorded, so columns are read by position: "
                         "keep only the feature columns, in training order")
    width = len(header) if header is not None else len(rows[0][1]) if rows else 0
    values = np.empty((len(rows), len(columns) if columns is not None else width), np.float32)
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            what = "the header" if header is not None else f"line {rows[0][0]}"
            raise UsageError(f"{path}: line {line} has {len(row)} cells, {what} {width}")
        cells = [row[c] for c in columns] if columns is not None else row
        try:
            values[i] = [float(cell) for cell in cells]
        except ValueError:
            bad = next(cell for cell in cells if not _is_number(cell))
            raise UsageError(f"{path}: line {line}: {bad!r} is not a number") from None
    return values


def as_examples(array: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    """`array` as (n, *input_shape): examples of the model's input shape, or rows of that many numbers.

    Accepted: trailing dimensions equal to the input shape ((n, 16, 16, 1) or one (16, 16, 1)), rows of
    flattened examples ((n, 256)), or one flattened example ((256,)). Anything else (a 24x24 image for a
    16x16 model, even when its size happens to be a multiple) is refused rather than cut into examples.
    A language model's token ids pass unchanged.

    Raises UsageError naming the file, with a hint for models trained on image files.
    """
    shape = spec.input_shape
    if shape is None:
        return array
    n = math.prod(shape)
    if tuple(array.shape[-len(shape):]) == shape or (array.ndim >= 1 and math.prod(array.shape[1:]) == n) \
            or (array.ndim == 1 and array.size == n):
        return array.reshape(-1, *shape)
    hint = ""
    if spec.image_size is not None:
        h, w = spec.image_size
        hint = (f"; {spec.model} was trained on image files: give the images themselves (.png, .jpg, ...) and "
                f"predict decodes and resizes them as training did, or arrays already resized to {h}x{w} with "
                f"{spec.channels} channel{'s' if spec.channels > 1 else ''} (pixel values 0..255)")
    raise UsageError(f"{path}: inputs of shape {tuple(array.shape)} do not hold examples of shape {shape}{hint}")
