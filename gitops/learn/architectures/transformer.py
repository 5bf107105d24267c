"""Small Transformer encoder classifier over token sequences (pre-LayerNorm, as in ViT and GPT-2).

Inputs are token ids of shape (batch, length) (the loaders hand them over as float32; they are cast
to integers here, so the data must not be scaled: `preprocessing.scale: none`). Token embedding plus
a learned position embedding -> `num_layers` blocks of [LN -> self-attention -> dropout -> residual,
LN -> MLP (GELU) -> dropout -> residual] -> LN -> mean over positions -> linear head.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gitops.learn.architectures.base import embed_tokens


class EncoderBlock(nnx.Module):
    """One pre-LayerNorm encoder block: x + self-attention(LN(x)), then + MLP(LN(x)) with GELU; dropout on both
    residual branches. (batch, length, embed_dim) -> same shape.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, dropout: float, *, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads, embed_dim, dtype=dtype, decode=False, keep_rngs=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(embed_dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, embed_dim, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None

    def _drop(self, x: jnp.ndarray, rngs: nnx.Rngs | None) -> jnp.ndarray:
        return x if self.dropout is None else self.dropout(x, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        x = x + self._drop(self.attention(self.norm1(x)), rngs)
        y = self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x))))
        return x + self._drop(y, rngs)


class Transformer(nnx.Module):
    """Transformer encoder classifier over token sequences, registered as `transformer`.

    Input (batch, length) token ids (float, rounded and clipped to [0, vocab_size)); output
    (batch, num_outputs) float32, from the mean over positions. `input_shape` must be `(length,)`
    (ValueError otherwise).
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        vocab_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        embed_dim: int = 64,
        mlp_dim: int = 128,
        dropout: float = 0.0,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if len(input_shape) != 1:
            raise ValueError(f"transformer reads token sequences of shape (length,), got {tuple(input_shape)}")
        length = input_shape[0]
        self.vocab_size = vocab_size
        self.embed = nnx.Embed(vocab_size, embed_dim, dtype=dtype, rngs=rngs)
        self.position = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (length, embed_dim)))
        self.blocks = nnx.List(
            [EncoderBlock(embed_dim, num_heads, mlp_dim, dropout, dtype=dtype, rngs=rngs) for _ in range(num_layers)]
        )
        self.norm = nnx.LayerNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(embed_dim, num_outputs, dtype=dtype, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        tokens = jnp.clip(jnp.round(x).astype(jnp.int32), 0, self.vocab_size - 1)
        h = embed_tokens(self.embed, tokens)
        h = h + self.position[...].astype(h.dtype)
        for block in self.blocks:
            h = block(h, rngs=rngs)
        h = jnp.mean(self.norm(h), axis=1)
        return self.head(h).astype(jnp.float32)
