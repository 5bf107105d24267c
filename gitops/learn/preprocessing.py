"""The preprocessing a run folder records (`preprocessing.json`) and the deterministic split of a dataset.

`Preprocessing` is the one owner of `preprocessing.json`: what prediction needs to turn raw inputs into
model inputs (the scaler's statistics, fitted on the train split only, the input shape, the task, the
tokenizer of a language model, class names, the feature column names of a table). `split_indexes` cuts a shuffled 0..n-1 into train,
validation and test; the in-memory sources (`gitops.learn.data`) and the streaming ones (`gitops.learn.streaming`)
both use it, so a dataset splits the same way whichever reader loads it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gitops.errors import GitopsError


@dataclass(frozen=True)
class Preprocessing:
    """What prediction needs to turn raw inputs into model inputs; saved as preprocessing.json."""

    scale: str  # standardize | minmax | none
    shift: list[float] | None  # subtracted (mean or min), per flattened feature
    divisor: list[float] | None  # divided by (std or max-min), per flattened feature
    input_shape: list[int]
    task: str
    num_classes: int | None
    num_outputs: int
    tokenizer: dict | None = None  # language models: gitops.learn.tokenize's saved spec (with the file's JSON text)
    labels: list[str] | None = None  # class names (image folders: the sorted label folders), for predict
    # feature column names in model input order (Parquet: `features`, or the columns `feature_prefix` matched),
    # so predict picks a CSV's columns by name; None where the data has no column names
    features: list[str] | None = None

    def as_dict(self) -> dict:
        """The JSON object saved as preprocessing.json (every field, lists as lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Preprocessing:
        """Read preprocessing.json back; keys it lacks (files from older versions) become None."""
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})

    @functools.cached_property
    def scaling(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(shift, divisor) as float32 arrays of shape (features,), made once (not from the lists on every
        `apply`); None without scaling. Model input = (raw - shift) / divisor, here and in
        `LoadedModel.compiled_predict`."""
        if self.shift is None:
            return None
        return np.asarray(self.shift, np.float32), np.asarray(self.divisor, np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw inputs (any shape with the right number of features per example) -> float32 model inputs."""
        x = np.asarray(x, np.float32)
        if self.task == "language_modeling":  # token ids of any length: the model's context bounds them
            return x.reshape(1, -1) if x.ndim == 1 else x
        features = math.prod(self.input_shape)
        if x.size % features:
            raise GitopsError(f"inputs of shape {x.shape} do not hold examples of shape {tuple(self.input_shape)}")
        flat = x.reshape(-1, features)
        if self.scaling is not None:
            shift, divisor = self.scaling
            flat = (flat - shift) / divisor
        return flat.reshape(-1, *self.input_shape).astype(np.float32)


def fit_preprocessing(scale: str, x_train: np.ndarray, *, task: str, num_classes: int | None, num_outputs: int) -> Preprocessing:
    """The scaling fitted on the training inputs only (so validation and test never leak into it).

    x_train: (n, *input_shape) numbers. `standardize` stores per-feature mean and std, `minmax` min and
    max-min (float32 lists over flattened features, computed in float64); a feature whose divisor is
    below 1e-8 gets 1.0 (constant features such as blank pixels pass through centred). `none` stores neither.
    """
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    shift = divisor = None
    if scale == "standardize":
        shift, divisor = flat.mean(axis=0), flat.std(axis=0)
    elif scale == "minmax":
        shift, divisor = flat.min(axis=0), flat.max(axis=0) - flat.min(axis=0)
    if divisor is not None:
        divisor = np.where(divisor > 1e-8, divisor, 1.0)  # constant features (blank pixels) pass through centred
        shift, divisor = shift.astype(np.float32).tolist(), divisor.astype(np.float32).tolist()
    return Preprocessing(scale, shift, divisor, list(x_train.shape[1:]), task, num_classes, num_outputs)



def split_indexes(n: int, validation: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle 0..n-1 with `seed`, then cut test, validation, train (sizes as config.train_split_size)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = math.ceil(n * test), math.ceil(n * validation)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]
