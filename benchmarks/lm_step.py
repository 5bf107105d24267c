"""Language-model speed: our training step against a hand-written JAX + Optax decoder step, and
generation with the KV cache against recomputing the whole sequence.

(a) gitops' loop: `gitops.learn.train.build_session` on the `decoder` architecture (NNX, split state, the
    batch gathered on device from (seed, step), metrics summed on device), one step per dispatch;
(b) a hand-written decoder of the same shapes (RMSNorm, rotary positions, causal attention through
    `jax.nn.dot_product_attention`, SwiGLU, tied embeddings) as pure functions of a params dict, with
    the same optax chain, one jitted step per pre-staged batch, nothing read back.
Runs alternate (a, b, a, b, ...); the median of the per-pair ratios of tokens/s is printed (goal >=
0.97). On a GPU it also prints model FLOPs utilisation: 6 x parameters x tokens plus the attention
matmuls (12 x layers x length x width per token, halved for causality), per second, over the device's
peak dense bf16 rate (H100/H200: 989 TFLOP/s; the size is chosen to fill the device).

Generation: tokens/s of 256 new tokens after a 16-token prompt, with the cache over without.

    .venv/bin/python benchmarks/lm_step.py [--quick] [--size small|gpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from gitops import config  # noqa: E402
from gitops.learn import data, optim, train  # noqa: E402

SIZES = {  # layers, heads, width, mlp, length, batch, precision
    "small": dict(num_layers=2, num_heads=4, embed_dim=128, mlp_dim=384, length=128, batch=16, precision="float32"),
    "gpu": dict(num_layers=12, num_heads=16, embed_dim=1024, mlp_dim=2816, length=1024, batch=32, precision="bfloat16"),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def bench_config(size: dict, steps: int) -> config.ResolvedConfig:
    doc = config.load("stdlib-lm", ROOT).as_dict()
    doc["model"].update(num_layers=size["num_layers"], num_heads=size["num_heads"], embed_dim=size["embed_dim"],
                        mlp_dim=size["mlp_dim"], attention="auto")
    doc["data"]["dataset"]["sequence_length"] = size["length"]
    doc["train"].update(batch_size=size["batch"], steps=steps, precision=size["precision"], log_every=steps,
                        eval_every=steps)
    doc["train"]["schedule"]["warmup_steps"] = 1
    return config.build("bench-lm", doc)


# --- (b) the hand-written decoder --------------------------------------------------------------------


def init_params(key, vocab, size):
    d, f, layers = size["embed_dim"], size["mlp_dim"], size["num_layers"]
    norm = lambda k, shape: jax.random.normal(k, shape) * 0.02  # noqa: E731
    keys = iter(jax.random.split(key, 4 + 7 * layers))
    params = {"embed": norm(next(keys), (vocab, d)), "final": jnp.ones(d), "layers": []}
    for _ in range(layers):
        params["layers"].append({
            "n1": jnp.ones(d), "n2": jnp.ones(d),
            "q": norm(next(keys), (d, d)), "k": norm(next(keys), (d, d)), "v": norm(next(keys), (d, d)),
            "o": norm(next(keys), (d, d)), "gate": norm(next(keys), (d, f)), "up": norm(next(keys), (d, f)),
            "down": norm(next(keys), (f, d)),
        })
    return params


def rms(x, scale):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6) * scale).astype(x.dtype)


def rope(x, base=10000.0):
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * freqs
    sin, cos = jnp.sin(angles)[None, :, None], jnp.cos(angles)[None, :, None]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def forward(params, tokens, heads, dtype):
    h = params["embed"][tokens].astype(dtype)
    b, t, d = h.shape
    for layer in params["layers"]:
        x = rms(h, layer["n1"])
        q, k, v = (x @ layer[n].astype(dtype) for n in ("q", "k", "v"))
        q, k, v = (a.reshape(b, t, heads, d // heads) for a in (q, k, v))
        y = jax.nn.dot_product_attention(rope(q), rope(k), v, is_causal=True)
        h = h + y.reshape(b, t, d) @ layer["o"].astype(dtype)
        x = rms(h, layer["n2"])
        h = h + (jax.nn.silu(x @ layer["gate"].astype(dtype)) * (x @ layer["up"].astype(dtype))) @ layer["down"].astype(dtype)
    return (rms(h, params["final"]) @ params["embed"].T.astype(dtype)).astype(jnp.float32)


def hand_loop(cfg, dataset, size, steps):
    vocab = dataset.preprocessing.num_outputs
    dtype = jnp.bfloat16 if size["precision"] == "bfloat16" else jnp.float32
    params = init_params(jax.random.key(0), vocab, size)
    tx = optim.build_optimizer(cfg.train, steps)
    opt_state = tx.init(params)
    bs = size["batch"]
    x_all, y_all = dataset.train.x, dataset.train.y
    batches = [jax.device_put((x_all[i * bs:(i + 1) * bs].astype(np.int32), y_all[i * bs:(i + 1) * bs]))
               for i in range(min(8, len(x_all) // bs))]

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = forward(p, x, size["num_heads"], dtype)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state, loss = step(params, opt_state, *batches[0])
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, *batches[i % len(batches)])
    jax.block_until_ready(loss)
    return steps / (time.perf_counter() - start)


def ours(cfg, dataset, steps):
    session = train.build_session(cfg, dataset)
    acc, bad = session.zero_metrics(), session.no_divergence()
    acc, bad = session.run_chunk(0, 1, acc, bad)
    jax.block_until_ready(acc)
    start = time.perf_counter()
    for s in range(1, steps + 1):
        acc, bad = session.run_chunk(s, 1, acc, bad)
    jax.block_until_ready(acc)
    return steps / (time.perf_counter() - start), session.param_count


def model_flops_per_token(params: int, size: dict) -> float:
    attention = 12 * size["num_layers"] * size["length"] * size["embed_dim"] / 2  # causal: half the matmuls
    return 6 * params + attention


def generation(cfg, dataset, new_tokens: int) -> tuple[float, float]:
    from flax import nnx

    from gitops.learn.architectures import build_model
    from gitops.learn.generate import Sampling, generate_ids

    model = build_model("decoder", config.thaw(cfg.model.params), input_shape=[cfg.data.dataset["sequence_length"]],
                        num_outputs=dataset.preprocessing.num_outputs, rngs=nnx.Rngs(params=0))
    model.eval()
    prompt = [list(range(32, 48))]
    sampling = Sampling(max_new_tokens=new_tokens, temperature=0.0)
    rates = []
    for use_cache in (True, False):
        generate_ids(model, prompt, sampling, use_cache=use_cache)  # compile
        start = time.perf_counter()
        generate_ids(model, prompt, sampling, use_cache=use_cache)
        rates.append(new_tokens / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A few steps, one pair: a smoke run.")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="Default: gpu on a GPU, else small.")
    args = parser.parse_args()
    device = jax.devices()[0]
    size = SIZES[args.size or ("gpu" if device.platform == "gpu" else "small")]
    steps, pairs = (5, 1) if args.quick else (30, 5)
    train.enable_compilation_cache()
    cfg = bench_config(size, steps + 1)
    dataset = data.load(cfg.data, ROOT)
    tokens_per_step = size["batch"] * size["length"]
    print(f"device: {device.device_kind} ({device.platform}); decoder {size['num_layers']} layers x "
          f"{size['embed_dim']} wide, {size['num_heads']} heads, length {size['length']}, batch {size['batch']}, "
          f"{size['precision']}")
    ratios, our_rates, hand_rates = [], [], []
    params = 0
    for _ in range(pairs):
        a, params = ours(cfg, dataset, steps)
        b = hand_loop(cfg, dataset, size, steps)
        our_rates.append(a * tokens_per_step)
        hand_rates.append(b * tokens_per_step)
        ratios.append(a / b)
    print(f"parameters: {params:,}")
    print(f"tokens/s  gitops {statistics.median(our_rates):,.0f}  hand-written {statistics.median(hand_rates):,.0f}  "
          f"ratio {statistics.median(ratios):.3f} (median of {pairs} pairs; goal >= 0.97)")
    if device.platform == "gpu":
        flops = model_flops_per_token(params, size) * statistics.median(our_rates)
        peak = next((v for k, v in PEAK_BF16.items() if k in device.device_kind), None)
        shown = f"{flops / peak * 100:.1f} % of {peak / 1e12:.0f} TFLOP/s peak bf16" if peak else "peak unknown"
        print(f"model FLOPs: {flops / 1e12:.1f} TFLOP/s, MFU {shown} (goal >= 40 %)")
    new = 32 if args.quick else 256
    with_cache, without = generation(cfg, dataset, new)
    print(f"generation of {new} tokens: {with_cache:,.0f} tokens/s with the KV cache, {without:,.0f} without, "
          f"ratio {with_cache / without:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
