"""Decoder-only Transformer language model (the LLaMA recipe at small scale).

Pre-norm blocks of [RMSNorm -> causal self-attention with rotary position embeddings -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> logits over the vocabulary, with the output
projection tied to the token embedding unless `tie_embeddings: false`.

Sources: RMSNorm (Zhang & Sennrich 2019), rotary embeddings (Su et al., "RoFormer", 2021), SwiGLU
(Shazeer, "GLU Variants Improve Transformer", 2020), grouped-query attention (Ainslie et al., "GQA",
2023), and their combination in LLaMA (Touvron et al. 2023).

Shapes: inputs are token ids (batch, length) (float32 from the loaders, cast to int32 here); the
output is float32 logits (batch, length, vocab). Attention runs through `jax.nn.dot_product_attention`
(`attention: auto`: cuDNN's fused flash attention on a GPU under bf16, XLA's elsewhere; `fused_attention`) or a plain
einsum-softmax path (`attention: plain`), which is the reference for bit-stable CPU results and for
decoding with a KV cache.

Generation (`gitops.learn.generate`) calls `prefill` and `decode_step`, which read and write a KV cache of
shape (batch, max_length, kv_heads, head_dim) per layer, so each new token costs one position's work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gitops.learn.architectures.base import embed_tokens


def rope_tables(positions: jnp.ndarray, head_dim: int, base: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sin, cos) of the rotary angles, float32 (batch or 1, length, 1, head_dim // 2), for `rotary`.

    positions: (batch or 1, length) int32. Computed once per forward pass and shared by every layer's
    queries and keys (a per-call, per-row table cost transcendental work in each layer).
    """
    half = head_dim // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs  # (batch, length, half)
    return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]


def rotary(x: jnp.ndarray, tables: tuple[jnp.ndarray, jnp.ndarray]) -> jnp.ndarray:
    """Rotate pairs of features (first half with second half) by position-dependent angles (Su et al. 2021).

    x: (batch, length, heads, head_dim); tables: `rope_tables` of x's positions. Returns x's shape and
    dtype; the rotation itself runs in float32 (one fused elementwise pass).
    """
    sin, cos = tables
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def fused_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """Causal `jax.nn.dot_product_attention`: cuDNN's fused flash attention on a GPU for bf16/fp16 inputs with a
    head size it takes (a multiple of 8, at most 128), XLA's implementation elsewhere.

    q: (B, T, H, D); k, v: (B, T, K, D), H a multiple of K. JAX's own default (`implementation=None`)
    is XLA's, which on a GPU writes the whole (B, H, T, T) float32 score matrix to memory; cuDNN never
    does. A GPU whose cuDNN lacks the kernel (checked while tracing) falls back to XLA.
    """
    if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128):
        try:
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
        except (RuntimeError, ValueError, NotImplementedError):
            pass
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def plain_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d) + mask) v with grouped KV heads; the softmax in float32.

    q: (B, T, H, D); k, v: (B, S, K, D) with H a multiple of K; mask: bool (B or 1, T, S), True = attend.
    """
    b, t, h, d = q.shape
    groups = h // k.shape[2]
    q = q.reshape(b, t, k.shape[2], groups, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v)
    return out.reshape(b, t, h, d)


class Attention(nnx.Module):
    """Causal multi-head self-attention with rotary positions and grouped KV heads (GQA, Ainslie et al. 2023).

    x: (batch, length, embed_dim) -> (batch, length, embed_dim). `num_heads` must be a multiple of
    `num_kv_heads`; `implementation` is `plain` (einsum-softmax, used with a KV cache) or `auto`
    (`jax.nn.dot_product_attention`).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int, implementation: str, *, dtype,
                 rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.implementation = implementation
        init = nnx.initializers.normal(0.02)
        self.q = nnx.Linear(embed_dim, num_heads * self.head_dim, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.k = nnx.Linear(embed_dim, num_kv_heads * self.head_dim, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.v = nnx.Linear(embed_dim, num_kv_heads * self.head_dim, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.out = nnx.Linear(num_heads * self.head_dim, embed_dim, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)

    def _qkv(self, x: jnp.ndarray, rope: tuple) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        return rotary(q, rope), rotary(k, rope), v

    def __call__(self, x: jnp.ndarray, rope: tuple) -> jnp.ndarray:
        """x: (batch, length, embed_dim); rope: `rope_tables` of positions 0..length-1. Same shape out."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, rope)
        if self.implementation == "plain":
            causal = jnp.tril(jnp.ones((t, t), bool))[None]
            y = plain_attention(q, k, v, causal)
        else:
            y = fused_attention(q, k, v)
        return self.out(y.reshape(b, t, -1))

    def cached(self, x: jnp.ndarray, rope: tuple, cache: tuple, start: jnp.ndarray) -> tuple:
        """Attend from x's positions [start, start+T) (their `rope_tables` in `rope`) to the cache plus x; returns
        (y, new cache).
        """
        b, t, _ = x.shape
        q, k, v = self._qkv(x, rope)
        ck, cv = cache
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
        key_pos = jnp.arange(ck.shape[1])
        mask = key_pos[None, None, :] <= (start + jnp.arange(t))[None, :, None]  # (1, T, S)
        y = plain_attention(q, ck, cv, mask)
        return self.out(y.reshape(b, t, -1)), (ck, cv)


class SwiGLU(nnx.Module):
    """The gated MLP of LLaMA: down(silu(gate(x)) * up(x)) (Shazeer 2020), (..., embed_dim) -> same shape."""

    def __init__(self, embed_dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.gate = nnx.Linear(embed_dim, hidden, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.up = nnx.Linear(embed_dim, hidden, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
        self.down = nnx.Linear(hidden, embed_dim, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
    """One pre-norm decoder block: x + attention(RMSNorm(x)), then + SwiGLU(RMSNorm(x)); dropout on both
    residual branches while training. (batch, length, embed_dim) -> same shape.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int, mlp_dim: int, dropout: float,
                 implementation: str, *, dtype, rngs: nnx.Rngs):
        self.attn_norm = nnx.RMSNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.attention = Attention(embed_dim, num_heads, num_kv_heads, implementation, dtype=dtype, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.mlp = SwiGLU(embed_dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None

    def _drop(self, x: jnp.ndarray, rngs: nnx.Rngs | None) -> jnp.ndarray:
        return x if self.dropout is None else self.dropout(x, rngs=rngs)

    def __call__(self, x: jnp.ndarray, rope: tuple, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        """x: (batch, length, embed_dim); rope: `rope_tables` of x's positions. Same shape out."""
        x = x + self._drop(self.attention(self.attn_norm(x), rope), rngs)
        return x + self._drop(self.mlp(self.mlp_norm(x)), rngs)

    def cached(self, x: jnp.ndarray, rope: tuple, cache: tuple, start: jnp.ndarray) -> tuple:
        """The block on new positions with a KV cache (no dropout: decoding only); returns (y, new cache).

        x: (batch, T, embed_dim); rope: `rope_tables` of the new positions; cache: (keys, values), each
        (batch, max_length, kv_heads, head_dim).
        """
        y, cache = self.attention.cached(self.attn_norm(x), rope, cache, start)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), cache


class Decoder(nnx.Module):
    """Decoder-only language model (LLaMA-style, see the module docstring), registered as `decoder`.

    Input (batch, length) token ids, length <= context (float from the loaders, rounded and clipped to
    [0, vocab)); output (batch, length, vocab) float32 next-token logits. `input_shape` is `(context,)`
    and `num_outputs` the vocabulary size; raises ValueError for any other input rank.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        embed_dim: int = 128,
        mlp_dim: int = 256,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        rope_base: float = 10000.0,
        attention: str = "auto",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if len(input_shape) != 1:
            raise ValueError(f"decoder reads token sequences of shape (length,), got {tuple(input_shape)}")
        num_kv_heads = num_kv_heads or num_heads
        self.vocab_size = num_outputs
        self.context = int(input_shape[0])
        self.num_kv_heads, self.head_dim = num_kv_heads, embed_dim // num_heads
        self.rope_base = rope_base
        self.dtype = dtype
        self.embed = nnx.Embed(num_outputs, embed_dim, dtype=dtype, embedding_init=nnx.initializers.normal(0.02),
                               rngs=rngs)
        self.blocks = nnx.List([
            Block(embed_dim, num_heads, num_kv_heads, mlp_dim, dropout, attention, dtype=dtype, rngs=rngs)
            for _ in range(num_layers)
        ])
        self.norm = nnx.RMSNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.head = None if tie_embeddings else nnx.Linear(
            embed_dim, num_outputs, use_bias=False, dtype=dtype, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def _tokens(self, x: jnp.ndarray) -> jnp.ndarray:
        return jnp.clip(jnp.round(x).astype(jnp.int32), 0, self.vocab_size - 1)

    def _logits(self, h: jnp.ndarray) -> jnp.ndarray:
        h = self.norm(h)
        logits = self.embed.attend(h) if self.head is None else self.head(h)
        return logits.astype(jnp.float32)

    def _embed(self, tokens: jnp.ndarray) -> jnp.ndarray:
        # Look up in the float32 table, then cast: the gradient's scatter-add then accumulates in float32
        # (nnx.Embed casts the table first, so under bf16 thousands of tokens would add up in bf16).
        return embed_tokens(self.embed, tokens)

    def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        tokens = self._tokens(x)
        rope = rope_tables(jnp.arange(tokens.shape[1])[None], self.head_dim, self.rope_base)
        h = self._embed(tokens)
        for block in self.blocks:
            h = block(h, rope, rngs=rngs)
        return self._logits(h)

    # --- decoding with a KV cache (gitops.learn.generate) ---
    def init_cache(self, batch: int, max_length: int) -> list[tuple[jnp.ndarray, jnp.ndarray]]:
        """Zeroed (keys, values) per layer, each (batch, max_length, kv_heads, head_dim)."""
        dtype = self.dtype or jnp.float32
        shape = (batch, max_length, self.num_kv_heads, self.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

    def decode(self, tokens: jnp.ndarray, cache: list, start: Any) -> tuple[jnp.ndarray, list]:
        """Logits for `tokens` (batch, T) placed at positions [start, start+T), reading and filling `cache`."""
        tokens = self._tokens(tokens)
        rope = rope_tables(start + jnp.arange(tokens.shape[1])[None], self.head_dim, self.rope_base)
        h = self._embed(tokens)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            h, layer_cache = block.cached(h, rope, layer_cache, start)
            new_cache.append(layer_cache)
        return self._logits(h), new_cache
