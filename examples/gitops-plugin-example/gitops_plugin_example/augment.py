"""feature-dropout: a pure jax function of (key, batch)."""

import jax


def feature_dropout(probability=0.1, **_):
    def augment(key, x):
        keep = jax.random.bernoulli(key, 1.0 - probability, x.shape)
        return x * keep.astype(x.dtype)

    return augment
