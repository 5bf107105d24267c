"""Architectures: every catalog name has an NNX module (or is listed in NOT_YET), shapes, modes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gitops import catalog
from gitops.architectures import ARCHITECTURES, NOT_YET, _load_all, build_model
from gitops.errors import GitopsError

_load_all()


def defaults(name: str) -> dict:
    return {k: v["default"] for k, v in catalog.ARCHITECTURES[name].params.items() if "default" in v}


def test_catalog_and_registry_agree() -> None:
    assert set(ARCHITECTURES.names()) == set(catalog.ARCHITECTURES) - NOT_YET
    assert NOT_YET <= set(catalog.ARCHITECTURES)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(GitopsError, match="valid: cnn, mlp"):
        ARCHITECTURES.get("vit")


@pytest.mark.parametrize("name", sorted(set(catalog.ARCHITECTURES) - NOT_YET))
def test_builds_with_catalog_defaults(name: str) -> None:
    model = build_model(name, defaults(name), input_shape=(8, 8, 1), num_outputs=10, rngs=nnx.Rngs(params=0))
    out = model(jnp.ones((3, 8, 8, 1)), rngs=nnx.Rngs(dropout=1))
    assert out.shape == (3, 10) and out.dtype == jnp.float32


def test_dropout_only_in_train_mode_and_keyed() -> None:
    model = build_model("mlp", {"hidden_sizes": [32], "dropout": 0.5}, input_shape=(6,), num_outputs=2, rngs=nnx.Rngs(params=0))
    x = jnp.ones((4, 6))
    a = model(x, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    b = model(x, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    c = model(x, rngs=nnx.Rngs(dropout=jax.random.key(2)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    model.eval()
    assert np.array_equal(model(x), model(x))


def test_cnn_batch_norm_statistics_update_in_train_mode() -> None:
    model = build_model("cnn", {**defaults("cnn"), "batch_norm": True}, input_shape=(8, 8, 1), num_outputs=3,
                        rngs=nnx.Rngs(params=0))
    before = np.asarray(model.norms[0].mean[...])
    model(jax.random.normal(jax.random.key(0), (4, 8, 8, 1)))
    assert not np.array_equal(before, np.asarray(model.norms[0].mean[...]))
    model.eval()
    frozen = np.asarray(model.norms[0].mean[...])
    model(jax.random.normal(jax.random.key(1), (4, 8, 8, 1)))
    assert np.array_equal(frozen, np.asarray(model.norms[0].mean[...]))


def test_bfloat16_compute_keeps_float32_params() -> None:
    model = build_model("mlp", {"hidden_sizes": [16]}, input_shape=(4,), num_outputs=2, rngs=nnx.Rngs(params=0),
                        dtype=jnp.bfloat16)
    assert model.head.kernel[...].dtype == jnp.float32
    assert model(jnp.ones((2, 4))).dtype == jnp.float32
