"""Datasets, splits, preprocessing and augmentations."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from gitops import config
from gitops.config import catalog
from gitops.errors import IntegrityError
from gitops.learn import data


def data_cfg(name: str, **params) -> dict:
    return {
        "dataset": {"name": name, **params},
        "splits": {"validation": 0.15, "test": 0.15, "seed": 0},
        "preprocessing": {"scale": "standardize"},
        "augmentation": [],
    }


def test_every_catalog_dataset_and_augmentation_is_registered() -> None:
    # language-modelling text loads through gitops.learn.text_data (packed once, then streamed), not the registry
    arrays = {n for n, e in catalog.DATASETS.items() if e.info.get("task") != "language_modeling"}
    assert arrays == set(catalog.DATASETS.names())
    assert set(catalog.AUGMENTATIONS) == set(catalog.AUGMENTATIONS.names())


def test_splits_are_deterministic_disjoint_and_sized_like_config() -> None:
    cfg = config.load("digits-mlp", REPO)
    a, b = data.load(cfg.data, REPO), data.load(cfg.data, REPO)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split).indexes, getattr(b, split).indexes)
        assert np.array_equal(getattr(a, split).x, getattr(b, split).x)
    sets = [set(a.train.indexes.tolist()), set(a.val.indexes.tolist()), set(a.test.indexes.tolist())]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == 1797
    assert len(a.train) == config.train_split_size(config.thaw({"dataset": cfg.data.dataset, "splits": cfg.data.splits}))
    other = data.load({**config.thaw({k: getattr(cfg.data, k) for k in ("dataset", "preprocessing", "augmentation")}),
                       "splits": {"validation": 0.15, "test": 0.15, "seed": 1}}, REPO)
    assert not np.array_equal(other.test.indexes, a.test.indexes)


def test_digits_shape_and_scaler_fitted_on_train_only() -> None:
    ds = data.load(data_cfg("digits"), REPO)
    assert ds.train.x.shape[1:] == (8, 8, 1) and ds.train.x.dtype == np.float32
    assert ds.train.y.dtype == np.int32 and ds.preprocessing.num_classes == 10
    flat = ds.train.x.reshape(len(ds.train), -1)
    varying = flat.std(axis=0) > 0
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=0)[varying], 1, atol=1e-3)
    # raw test inputs through the saved preprocessing give exactly the model inputs
    np.testing.assert_array_equal(ds.preprocessing.apply(ds.raw_test_x.reshape(-1, 64)), ds.test.x)
    restored = data.Preprocessing.from_dict(ds.preprocessing.as_dict())
    assert restored == ds.preprocessing


@pytest.mark.parametrize(
    "name,params,shape,classes",
    [
        ("iris", {}, (4,), 3),
        ("wine", {}, (13,), 3),
        ("breast_cancer", {}, (30,), 2),
        ("moons", {"n_samples": 200, "noise": 0.1}, (2,), 2),
        ("blobs", {"n_samples": 300, "centers": 4, "n_features": 5, "cluster_std": 1.0}, (5,), 4),
        ("sequences", {"n_samples": 200, "length": 6, "vocab_size": 4, "rule": "majority"}, (6,), 4),
    ],
)
def test_classification_datasets(name: str, params: dict, shape: tuple, classes: int) -> None:
    ds = data.load(data_cfg(name, **params), REPO)
    assert ds.train.x.shape[1:] == shape and ds.preprocessing.num_classes == classes
    assert ds.train.y.max() < classes
    again = data.load(data_cfg(name, **params), REPO)
    assert np.array_equal(ds.train.x, again.train.x)  # generated data is a function of the config


def test_diabetes_is_regression_and_minmax() -> None:
    cfg = data_cfg("diabetes")
    cfg["preprocessing"]["scale"] = "minmax"
    ds = data.load(cfg, REPO)
    assert ds.task == "regression" and ds.train.y.dtype == np.float32 and ds.train.y.shape[1:] == (1,)
    assert ds.train.x.min() >= -1e-6 and ds.train.x.max() <= 1 + 1e-6


def test_file_dataset_verifies_sha256(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 3)).astype(np.float32), y=rng.integers(0, 2, 60))
    digest = hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()
    params = {"path": "d.npz", "sha256": digest, "x_key": "x", "y_key": "y", "task": "classification"}
    ds = data.load(data_cfg("file", **params), tmp_path)
    assert ds.train.x.shape[1:] == (3,)
    with pytest.raises(IntegrityError, match=f"SHA-256 mismatch \\(expected {'0' * 64}, got {digest}\\)") as info:
        data.load(data_cfg("file", **{**params, "sha256": "0" * 64}), tmp_path)
    assert info.value.exit_code == 1


def test_batch_indices_cover_each_epoch_once() -> None:
    key = jax.random.key(3)
    perms = data.epoch_permutations(key, 0, 2, 10)
    first = [data.batch_indices(perms, 0, s, 3, 3) for s in range(3)]
    assert len(set(np.concatenate(first).tolist())) == 9
    again = data.epoch_permutations(key, 1, 1, 10)
    assert np.array_equal(perms[1], again[0])  # a permutation depends on (key, epoch) only


@pytest.mark.parametrize("name", sorted(catalog.AUGMENTATIONS))
def test_augmentations_keep_shape_and_are_keyed(name: str) -> None:
    fn = data.build_augmentation([{"name": name}])
    x = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
    a, b = fn(jax.random.key(0), x), fn(jax.random.key(0), x)
    assert a.shape == x.shape and np.array_equal(a, b)
    outs = [np.asarray(fn(jax.random.key(i), x)) for i in range(8)]
    assert any(not np.array_equal(o, x) for o in outs)
