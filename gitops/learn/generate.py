"""Text generation from a trained decoder: prefill the prompt once, then one cached step per token.

`generate_ids` takes a batch of prompts of any lengths (right-padded to one width), runs the whole
prompt batch through the model once to fill a KV cache, and then decodes all rows together, each row
at its own position (a row's padding sits past its position, where the causal mask never looks, and is
overwritten as the row grows). Prefill and the decoding loop are one jitted function per
(batch, prompt width, new tokens) shape; prompt widths are rounded up to a power of two so a server
compiles few shapes.

Sampling: temperature 0 is greedy (argmax); otherwise softmax(logits / temperature), optionally
restricted to the `top_k` most likely tokens (Fan et al., "Hierarchical Neural Story Generation",
2018). Keys are folded from (the row's seed, step), so a request gives the same text alone or batched.

`use_cache=False` recomputes the whole sequence at every step (the reference the benchmark measures
the cache against; greedy outputs of both agree on the `plain` attention path).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from gitops.errors import UsageError

MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def check(self, vocab: int | None = None) -> None:
        """Raises UsageError (exit 2) for values no generation can use (top_k only once `vocab` is known)."""
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UsageError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not self.temperature >= 0 or self.temperature != self.temperature or self.temperature == float("inf"):
            raise UsageError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and not 1 <= self.top_k <= (vocab or self.top_k):
            raise UsageError(f"top_k must be between 1 and the vocabulary size {vocab}, got {self.top_k}")


def _bucket(n: int) -> int:
    width = 8
    while width < n:
        width *= 2
    return width


def _pick(logits: Any, key: Any, temperature: float, top_k: int | None) -> Any:
    import jax
    import jax.numpy as jnp

    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=64)
def _compiled(graphdef: Any, batch: int, width: int, new: int, temperature: float, top_k: int | None,
              use_cache: bool) -> Any:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    total = width + new

    def cached(state, prompts, lengths, seeds):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(batch, total)
        logits, cache = model.decode(prompts.astype(jnp.float32), cache, 0)
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (batch, vocab)

        def row_step(token, row_cache, start):
            row_logits, row_cache = model.decode(token[None, None].astype(jnp.float32),
                                                 [(k[None], v[None]) for k, v in row_cache], start)
            return row_logits[0, 0], [(k[0], v[0]) for k, v in row_cache]

        def body(t, carry):
            last, cache, out = carry
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), t))(seeds)
            token = jax.vmap(lambda lg, k: _pick(lg, k, temperature, top_k))(last, keys)
            out = out.at[:, t].set(token)
            last, cache = jax.vmap(row_step)(token, cache, lengths + t)
            return last, cache, out

        out = jnp.zeros((batch, new), jnp.int32)
        _, _, out = jax.lax.fori_loop(0, new, body, (last, cache, out))
        return out

    def uncached(state, prompts, lengths, seeds):
        model = nnx.merge(graphdef, state)
        buffer = jnp.zeros((batch, total), jnp.int32).at[:, :width].set(prompts)

        def body(t, carry):
            buffer, out = carry
            logits = model(buffer.astype(jnp.float32))
            last = jnp.take_along_axis(logits, (lengths + t - 1)[:, None, None], axis=1)[:, 0]
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), t))(seeds)
            token = jax.vmap(lambda lg, k: _pick(lg, k, temperature, top_k))(last, keys)
            buffer = jax.vmap(lambda row, pos, tok: row.at[pos].set(tok))(buffer, lengths + t, token)
            return buffer, out.at[:, t].set(token)

        _, out = jax.lax.fori_loop(0, new, body, (buffer, jnp.zeros((batch, new), jnp.int32)))
        return out

    return jax.jit(cached if use_cache else uncached)


def generate_ids(model: Any, prompts: list[list[int]], sampling: Sampling, *, use_cache: bool = True,
                 seeds: list[int] | None = None) -> list[list[int]]:
    """New token ids for each prompt (all `max_new_tokens` of them; the caller cuts at end-of-text).

    Args:
        model: a `Decoder` in eval mode (from `gitops.load`).
        prompts: token ids per prompt, each non-empty and at most the model's context long.
        sampling: how to pick tokens.
        use_cache: False recomputes the whole sequence each step (reference path).
        seeds: one sampling seed per prompt (default: `sampling.seed` for all); a row's tokens depend on
            its own prompt and seed only, not on the other rows of the batch.

    Raises:
        UsageError: an empty prompt, a prompt longer than the context, or bad sampling values.
    """
    import jax
    from flax import nnx

    vocab = int(model.vocab_size)
    sampling.check(vocab)
    context = int(model.context)
    for i, ids in enumerate(prompts):
        if not ids:
            raise UsageError(f"prompt {i}: empty; give at least one token of text")
        if len(ids) > context:
            raise UsageError(f"prompt {i}: {len(ids)} tokens is longer than the model's context ({context} tokens)")
    batch = len(prompts)
    width = _bucket(max(len(p) for p in prompts))
    padded = np.zeros((batch, width), np.int32)
    for i, ids in enumerate(prompts):
        padded[i, : len(ids)] = ids
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    graphdef, state = nnx.split(model)
    fn = _compiled(graphdef, batch, width, int(sampling.max_new_tokens), float(sampling.temperature),
                   sampling.top_k, use_cache)
    row_seeds = np.asarray(seeds if seeds is not None else [sampling.seed] * batch, np.uint32)
    out = fn(state, padded, lengths, row_seeds)
    return np.asarray(jax.device_get(out)).tolist()


def generate_text(loaded: Any, prompts: list[str], sampling: Sampling, *, use_cache: bool = True) -> list[dict]:
    """[{"prompt", "text", "tokens"}] per prompt; generation stops at the tokenizer's end-of-text token.

    Raises:
        UsageError: the model is not a language model, or a prompt/sampling value is unusable.
    """
    from gitops.learn.tokenize import from_saved

    prep = loaded.preprocessing
    if prep.task != "language_modeling" or not getattr(prep, "tokenizer", None):
        raise UsageError(f"{loaded.config.name} is a {prep.task} model; --prompt needs a language model")
    tokenizer = from_saved(prep.tokenizer)
    encoded = [tokenizer.encode(p) for p in prompts]
    new = generate_ids(loaded.model, encoded, sampling, use_cache=use_cache)
    results = []
    for prompt, ids in zip(prompts, new, strict=True):
        if tokenizer.eos_id is not None and tokenizer.eos_id in ids:
            ids = ids[: ids.index(tokenizer.eos_id)]
        results.append({"prompt": prompt, "text": tokenizer.decode(ids), "tokens": len(ids)})
    return results


@functools.lru_cache(maxsize=32)
def _step_fns(graphdef: Any, width: int, total: int, temperature: float, top_k: int | None) -> tuple[Any, Any]:
    """Jitted (prefill, one decoding step) for a single prompt: what streaming calls token by token."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @jax.jit
    def prefill(state, prompt, length):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(1, total)
        logits, cache = model.decode(prompt[None].astype(jnp.float32), cache, 0)
        return logits[0, length - 1], cache

    @jax.jit
    def step(state, last, cache, position, seed, t):
        model = nnx.merge(graphdef, state)
        token = _pick(last, jax.random.fold_in(jax.random.key(seed), t), temperature, top_k)
        logits, cache = model.decode(token[None, None].astype(jnp.float32), cache, position)
        return token, logits[0, 0], cache

    return prefill, step


def stepper(model: Any, ids: list[int], sampling: Sampling):
    """Yield one new token id at a time (the same tokens `generate_ids` makes for this prompt and seed).

    Raises:
        UsageError: an empty prompt, one longer than the context, or bad sampling values.
    """
    import jax
    from flax import nnx

    sampling.check(int(model.vocab_size))
    if not ids or len(ids) > int(model.context):
        raise UsageError(f"the prompt must have 1 to {int(model.context)} tokens, got {len(ids)}")
    width = _bucket(len(ids))
    padded = np.zeros((width,), np.int32)
    padded[: len(ids)] = ids
    graphdef, state = nnx.split(model)
    prefill, step = _step_fns(graphdef, width, width + int(sampling.max_new_tokens), float(sampling.temperature),
                              sampling.top_k)
    last, cache = prefill(state, padded, np.int32(len(ids)))
    for t in range(int(sampling.max_new_tokens)):
        token, last, cache = step(state, last, cache, np.int32(len(ids) + t), np.uint32(sampling.seed), np.int32(t))
        yield int(jax.device_get(token))
