"""Architectures: every catalog name has an NNX module, shapes, modes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gitops.config import catalog
from gitops.config.catalog import ARCHITECTURES
from gitops.errors import GitopsError
from gitops.learn.architectures import build_model


def defaults(name: str) -> dict:
    return {k: v["default"] for k, v in catalog.ARCHITECTURES[name].params.items() if "default" in v}


def test_catalog_and_registry_agree() -> None:
    assert set(ARCHITECTURES.names()) == set(catalog.ARCHITECTURES)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(GitopsError, match="valid: cnn, decoder, mlp, resnet, transformer"):
        ARCHITECTURES.get("vit")


@pytest.mark.parametrize("name", sorted(catalog.ARCHITECTURES))
def test_builds_with_catalog_defaults(name: str) -> None:
    shape = (12,) if catalog.ARCHITECTURES[name].info.get("inputs") == "tokens" else (8, 8, 1)
    model = build_model(name, defaults(name), input_shape=shape, num_outputs=10, rngs=nnx.Rngs(params=0))
    out = model(jnp.ones((3, *shape)), rngs=nnx.Rngs(dropout=1))
    per_position = "language_modeling" in catalog.ARCHITECTURES[name].info.get("tasks", ())  # next-token logits
    assert out.shape == ((3, 12, 10) if per_position else (3, 10)) and out.dtype == jnp.float32


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


@pytest.mark.parametrize("name", ["decoder", "transformer"])
def test_bfloat16_token_embeddings_sum_their_gradient_in_float32(name: str) -> None:
    # 1000 uses of one token: a bf16 sum of their gradients stalls far below 1000 (8-bit mantissa)
    model = build_model(name, {"num_layers": 1, "embed_dim": 16, "num_heads": 2, "mlp_dim": 16}, input_shape=(1000,),
                        num_outputs=16, rngs=nnx.Rngs(params=0), dtype=jnp.bfloat16)
    tokens = jnp.full((1, 1000), 7.0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def rows_sum(params):
        from gitops.learn.architectures.base import embed_tokens

        embed = nnx.merge(graphdef, params, rest).embed
        return jnp.sum(embed_tokens(embed, tokens.astype(jnp.int32)).astype(jnp.float32))

    grad = jax.grad(rows_sum)(params)["embed"]["embedding"][...]
    assert grad.dtype == jnp.float32 and np.all(np.asarray(grad[7]) == 1000.0) and not np.any(np.asarray(grad[8]))


def test_accuracy_is_a_hit_exactly_where_argmax_is_the_label() -> None:
    from gitops.learn import metrics

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (64, 5, 6)).astype(np.float32)  # many ties: argmax takes the first
    scores[rng.random(scores.shape) < 0.1] = np.nan  # NaN counts as the largest, as in jnp.argmax
    scores[rng.random(scores.shape) < 0.05] = np.inf
    labels = rng.integers(0, 6, (64, 5))
    sums = metrics.batch_sums(["loss", "accuracy"], jnp.zeros(64), jnp.asarray(scores), jnp.asarray(labels), jnp.ones(64))
    expected = (np.asarray(jnp.argmax(jnp.asarray(scores), axis=-1)) == labels).mean()
    assert float(sums["accuracy"][0]) / 64 == pytest.approx(expected, abs=1e-6)


def test_resnet_batch_statistics_update_only_in_train_mode_and_are_not_params() -> None:
    model = build_model("resnet", defaults("resnet"), input_shape=(8, 8, 1), num_outputs=10, rngs=nnx.Rngs(params=0))
    stats = nnx.state(model, nnx.BatchStat)
    assert jax.tree.leaves(stats) and not set(map(id, jax.tree.leaves(stats))) & set(
        map(id, jax.tree.leaves(nnx.state(model, nnx.Param))))
    before = np.asarray(model.stem_norm.mean[...])
    model(jax.random.normal(jax.random.key(0), (4, 8, 8, 1)))
    assert not np.array_equal(before, np.asarray(model.stem_norm.mean[...]))
    model.eval()
    frozen = np.asarray(model.stem_norm.mean[...])
    a = model(jax.random.normal(jax.random.key(1), (4, 8, 8, 1)))
    assert np.array_equal(frozen, np.asarray(model.stem_norm.mean[...]))
    # eval mode uses the running averages: an example's output does not depend on its batch-mates
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    np.testing.assert_allclose(model(x)[:1], model(x[:1]), rtol=1e-5, atol=1e-5)
    assert a.shape == (4, 10)


def test_resnet_stages_halve_the_image_and_double_the_width() -> None:
    model = build_model("resnet", {"stage_sizes": [2, 1, 1], "width": 8, "activation": "relu"}, input_shape=(8, 8, 3),
                        num_outputs=4, rngs=nnx.Rngs(params=0))
    assert len(model.blocks) == 4 and model.head.in_features == 32
    assert model.blocks[0].proj is None and model.blocks[2].proj is not None
    assert model(jnp.ones((2, 8, 8, 3))).shape == (2, 4)


def test_transformer_reads_token_ids_and_sees_every_position() -> None:
    params = {**defaults("transformer"), "vocab_size": 5, "embed_dim": 16, "num_heads": 2, "mlp_dim": 32}
    model = build_model("transformer", params, input_shape=(6,), num_outputs=2, rngs=nnx.Rngs(params=0))
    model.eval()
    x = jnp.array([[0, 1, 2, 3, 4, 0]], jnp.float32)
    changed_last = x.at[0, -1].set(4.0)
    assert not np.allclose(model(x), model(changed_last))  # the last token reaches the output
    swapped = x.at[0, 0].set(1.0).at[0, 1].set(0.0)
    assert not np.allclose(model(x), model(swapped))  # positions matter (learned position embedding)


def test_transformer_dropout_is_keyed_and_off_in_eval() -> None:
    params = {**defaults("transformer"), "vocab_size": 5, "embed_dim": 16, "num_heads": 2, "mlp_dim": 32, "dropout": 0.3}
    model = build_model("transformer", params, input_shape=(6,), num_outputs=2, rngs=nnx.Rngs(params=0))
    x = jnp.tile(jnp.arange(6, dtype=jnp.float32) % 5, (3, 1))
    a = model(x, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    b = model(x, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    c = model(x, rngs=nnx.Rngs(dropout=jax.random.key(2)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    model.eval()
    assert np.array_equal(model(x), model(x))
