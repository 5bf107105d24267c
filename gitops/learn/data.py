"""Datasets, deterministic splits, preprocessing fitted on the training split, on-device augmentation.

Data flow: a registered loader returns raw arrays (inputs as float32 in the dataset's input shape,
labels as int32 class indexes or float32 targets) -> a shuffle seeded by `data.splits.seed` cuts
test, validation and train (in that order) -> the scaler is fitted on the train split only, and its
statistics (`Preprocessing`) are written to the run folder so `gitops.load(...).predict` can take raw
inputs -> the whole train split goes to the device once; every batch is a gather by indexes that are a
function of (seed, step) alone (`batch_indices`), so a resumed run sees the same batches.

Augmentations are pure jax functions `(key, x) -> x` on a batch, keyed by the step's RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gitops import config as config_lib
from gitops.checksums import sha256_file
from gitops.config import catalog
from gitops.errors import IntegrityError, TrainingError
from gitops.learn.preprocessing import Preprocessing, fit_preprocessing, split_indexes
from gitops.repo.tree import inside_repository

# Seed of generated datasets (moons, blobs, sequences): fixed, so the data is part of the spec, and
# kept apart from the split seed and the training seed.
GENERATOR_SEED = 0



# --- loaders -------------------------------------------------------------------------------------


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets as skd

    bunch = getattr(skd, f"load_{name}")()
    return np.asarray(bunch.data, np.float32), np.asarray(bunch.target)


def _digits(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = _sklearn("digits")
    return x.reshape(-1, 8, 8, 1), y.astype(np.int32)


def _bundled(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    """iris, wine, breast_cancer: scikit-learn's bundled classification tables, named by `params["name"]`."""
    x, y = _sklearn(params["name"])
    return x, y.astype(np.int32)


def _diabetes(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = _sklearn("diabetes")
    return x, y.astype(np.float32).reshape(-1, 1)


def _moons(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=params["n_samples"], noise=params["noise"], random_state=GENERATOR_SEED)
    return x.astype(np.float32), y.astype(np.int32)


def _blobs(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=params["n_samples"],
        centers=params["centers"],
        n_features=params["n_features"],
        cluster_std=params["cluster_std"],
        random_state=GENERATOR_SEED,
    )
    return x.astype(np.float32), y.astype(np.int32)


def _sequences(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences (as float32 token ids) whose label is a function of the tokens."""
    rng = np.random.default_rng(GENERATOR_SEED)
    n, length, vocab, rule = params["n_samples"], params["length"], params["vocab_size"], params["rule"]
    tokens = rng.integers(0, vocab, size=(n, length))
    if rule == "majority":
        counts = np.stack([(tokens == v).sum(axis=1) for v in range(vocab)], axis=1)
        labels = counts.argmax(axis=1)  # ties go to the smallest token
    elif rule == "first_last_equal":
        half = rng.random(n) < 0.5  # balance the classes: make half of them equal on purpose
        tokens[half, -1] = tokens[half, 0]
        labels = (tokens[:, 0] == tokens[:, -1]).astype(np.int64)
    else:  # sorted
        half = rng.random(n) < 0.5
        tokens[half] = np.sort(tokens[half], axis=1)
        labels = np.all(np.diff(tokens, axis=1) >= 0, axis=1).astype(np.int64)
    return tokens.astype(np.float32), labels.astype(np.int32)


def _file(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A .npz (arrays named x_key/y_key) or .npy (2-D; the last column is the label) in the repository."""
    path = inside_repository(root, params["path"], "data file")
    if not path.is_file():
        raise TrainingError(f"data file {params['path']} not found under {root}")
    actual = sha256_file(path)
    if actual != params["sha256"]:
        raise IntegrityError(
            f"data file {params['path']}: SHA-256 mismatch (expected {params['sha256']}, got {actual}); "
            "nothing was trained. Update data.dataset.sha256 if the change is intended"
        )
    return _read_arrays(path, params, f"data file {params['path']}")


def _url(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A remote .npz/.npy, fetched into the data cache and verified against its pin (`gitops.learn.remote_data`)."""
    from gitops.learn import remote_data

    path = remote_data.fetch(params["url"], params["sha256"])
    return _read_arrays(path, params, f"data URL {params['url']}")


def _streamed(params: Mapping[str, Any], root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Streaming sources are never loaded whole: `load` hands them to `gitops.learn.streaming`."""
    raise TrainingError(f"dataset {params['name']} streams from files; load it with gitops.learn.data.load")


def _read_arrays(path: Path, params: Mapping[str, Any], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels from a verified .npz or .npy (told apart by content, since cached files have no suffix)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise TrainingError(f"{what}: not a .npz or .npy file ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded as npz:
            missing = [k for k in (params["x_key"], params["y_key"]) if k not in npz]
            if missing:
                raise TrainingError(f"{what} has no array {missing[0]!r} (has: {', '.join(npz.files)})")
            x, y = npz[params["x_key"]], npz[params["y_key"]]
    else:
        table = loaded
        if table.ndim != 2 or table.shape[1] < 2:
            raise TrainingError(f"{what}: a .npy must be 2-D with the label in the last column")
        x, y = table[:, :-1], table[:, -1]
    task = params.get("task", "classification")
    y = y.astype(np.int32) if task == "classification" else y.astype(np.float32).reshape(len(y), -1)
    return np.asarray(x, np.float32), y


# --- splits and preprocessing ------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One split's examples: `x` (n, *input_shape) float32 model inputs; `y` (n,) int32 class indexes,
    (n, outputs) float32 targets or (n, length) int32 next-token ids; `indexes` (n,) their positions.
    """

    x: np.ndarray  # preprocessed model inputs
    y: np.ndarray
    indexes: np.ndarray  # positions in the loaded dataset (to check splits never overlap)

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Dataset:
    """An in-memory dataset: train/val/test splits, the fitted preprocessing, and the raw test inputs."""

    train: Split
    val: Split
    test: Split
    preprocessing: Preprocessing
    raw_test_x: np.ndarray  # the test inputs before scaling (what a user would feed `predict`)

    @property
    def task(self) -> str:
        """`classification`, `regression` or `language_modeling`, from the preprocessing."""
        return self.preprocessing.task


def load(data: Any, root: Path) -> Any:
    """Load, split and preprocess the data a `DataConfig` (or its dict) describes.

    In-memory sources return a `Dataset` (arrays); streaming sources (`image_folder`, `parquet`,
    `array_record`) a `gitops.learn.streaming.StreamingDataset` (verified files and record indexes), and so
    does language-modelling text (`text`, or a `text:` column), over its packed token rows.
    """
    doc = config_lib.thaw(data) if isinstance(data, Mapping) else config_lib.thaw(
        {k: getattr(data, k) for k in data.__dataclass_fields__}
    )
    ds = doc["dataset"]
    from gitops.learn import streaming

    task = catalog.dataset_task(doc)
    if task == "language_modeling":  # text, or a text column: packed once, then streamed (gitops.learn.text_data)
        from gitops.learn import text_data

        return text_data.load(doc, Path(root))
    if ds["name"] in streaming.SOURCES:  # read while training, never whole (gitops.learn.streaming)
        return streaming.load(doc, Path(root))
    x, y = catalog.DATASETS.get(ds["name"])(ds, Path(root))
    if len(x) != len(y):
        raise TrainingError(f"dataset {ds['name']}: {len(x)} inputs but {len(y)} labels")
    classes = config_lib.num_classes(doc)
    if task == "classification":
        if classes is None:
            classes = int(y.max()) + 1 if len(y) else 0
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise TrainingError(f"dataset {ds['name']}: labels must be class indexes 0..{classes - 1}")
        outputs = classes
    else:
        classes, outputs = None, int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
    splits = doc["splits"]
    tr, va, te = split_indexes(len(x), splits["validation"], splits["test"], splits["seed"])
    if len(tr) == 0:
        raise TrainingError("the training split is empty")
    prep = fit_preprocessing(doc["preprocessing"]["scale"], x[tr], task=task, num_classes=classes, num_outputs=outputs)
    make = lambda idx: Split(prep.apply(x[idx]) if len(idx) else x[idx], y[idx], idx)  # noqa: E731
    return Dataset(make(tr), make(va), make(te), prep, x[te])


# --- device-side batching and augmentation ------------------------------------------------------


def batch_indices(perms, first_epoch, step, steps_per_epoch: int, batch_size: int):
    """Indexes of the batch at `step`: slice (step mod steps_per_epoch) of epoch step//steps_per_epoch's permutation.

    `perms` holds the permutations of consecutive epochs from `first_epoch` on (see `epoch_permutations`).
    """
    import jax

    epoch = step // steps_per_epoch
    perm = perms[epoch - first_epoch]
    return jax.lax.dynamic_slice_in_dim(perm, (step % steps_per_epoch) * batch_size, batch_size)


def epoch_permutations(key, first_epoch, count: int, n: int):
    """Permutations of 0..n-1 for epochs first_epoch .. first_epoch+count-1; each a function of (key, epoch)."""
    import jax
    import jax.numpy as jnp

    epochs = first_epoch + jnp.arange(count)
    return jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(epochs)


def _shift(max_pixels: int = 1, **_: Any) -> Callable:
    return _random_crop(max_pixels)


def _crop(padding: int = 1, **_: Any) -> Callable:
    return _random_crop(padding)


def _random_crop(pad: int) -> Callable:
    """Zero-pad by `pad` pixels and cut back at a random offset per example: a shift of up to `pad`."""
    import jax
    import jax.numpy as jnp

    def augment(key, x):
        n, h, w, c = x.shape
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
        cut = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))  # noqa: E731
        return jax.vmap(cut)(padded, offsets)

    return augment


def _flip(probability: float = 0.5, **_: Any) -> Callable:
    import jax
    import jax.numpy as jnp

    def augment(key, x):
        flip = jax.random.bernoulli(key, probability, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(flip, x[:, :, ::-1, :], x)

    return augment


def _noise(stddev: float = 0.1, **_: Any) -> Callable:
    import jax

    def augment(key, x):
        return x + stddev * jax.random.normal(key, x.shape, x.dtype)

    return augment


def build_augmentation(specs: Sequence[Mapping[str, Any]]) -> Callable | None:
    """Compose the config's augmentations in order; each gets its own key folded from the step key."""
    fns = [catalog.AUGMENTATIONS.get(spec["name"])(**{k: v for k, v in spec.items() if k != "name"}) for spec in specs]
    if not fns:
        return None

    def augment(key, x):
        import jax

        for i, fn in enumerate(fns):
            x = fn(jax.random.fold_in(key, i), x)
        return x

    return augment
